"""Memory stays flat: a long ``imap`` of tiny tasks, purging as it goes, keeps client RSS in bounds.

What a user does with an endless stream of tasks: ``lv.imap(f, inputs, max_outstanding=1000)``
and, every 5,000 results, purges what has finished (``rc.purge_results(jobs=finished)``, which
also prunes the views' histories; ``'all'`` refuses while tasks are outstanding, as in ipyparallel).
The 1,000,000-task version is the ``imap_memory`` benchmark workload (tests/benchmarks/run.py);
this is the same loop over 50,000 tasks, on the session's 2 engines (without the purges its
client would grow by ~100 MB).

Bound asserted: client RSS (after ``gc.collect()``) grows by less than 50 MB from a warmed-up
start, just before every purge (its peak) and at the end.
"""

import gc

import psutil
import pytest

import ipyparallel_ext as ipp

MB = 1_000_000
N_TASKS = 50_000
PURGE_EVERY = 5_000


@ipp.interactive
def inc(x):
    """Runs on an engine: ``x + 1``."""
    return x + 1


def purge_finished(rc):
    """Forget every finished result (what a user can purge while an imap still runs)."""
    finished = set(rc.history) - rc.outstanding
    if finished:
        rc.purge_results(jobs=list(finished))


def _rss():
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.timeout(180)
def test_long_imap_with_purging_keeps_rss_flat(rc, measure):
    lv = rc.load_balanced_view()
    # Warm up (imports, the scheduler's estimates, zmq buffers), then start counting.
    assert list(lv.imap(inc, range(2_000), max_outstanding=1000)) == list(range(1, 2_001))
    rc.purge_results("all")
    start = _rss()
    before, after = [], []  # growth just before and just after each purge
    expected = 1
    for i, value in enumerate(lv.imap(inc, range(N_TASKS), max_outstanding=1000), 1):
        assert value == expected
        expected += 1
        if i % PURGE_EVERY == 0:
            before.append(_rss() - start)
            purge_finished(rc)
            after.append(_rss() - start)
    assert expected == N_TASKS + 1
    rc.purge_results("all")
    end = _rss()
    measure(f"client RSS growth over a {N_TASKS}-task imap, before / after each purge",
            [[round(b / MB, 1), round(a / MB, 1)] for b, a in zip(before, after)], "MB")
    measure("client RSS at start / end", [round(start / MB, 1), round(end / MB, 1)], "MB")
    assert max(before) < 50 * MB
    assert end - start < 50 * MB
    assert len(rc.history) < PURGE_EVERY and len(lv.history) < PURGE_EVERY
