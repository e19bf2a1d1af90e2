"""imap, the concurrent.futures executor and the joblib backend, on real engines."""

import concurrent.futures
import itertools
import time

import pytest
from conftest import double, fail_at, wait_for_file, wait_until

import ipyparallel_ext as ipp

T = 30


@pytest.fixture
def lv(rc):
    view = rc.load_balanced_view()
    yield view
    rc.wait(list(view.outstanding), timeout=T)


def _counting(iterable, seen):
    for item in iterable:
        seen.append(item)
        yield item


def test_imap_ordered_and_unordered(lv):
    assert list(lv.imap(double, range(30))) == [2 * i for i in range(30)]
    assert sorted(lv.imap(double, range(30), ordered=False)) == [2 * i for i in range(30)]
    assert list(lv.imap(pow, [2, 3], [3, 2], max_outstanding=0)) == [8, 9]
    assert list(lv.imap(double, [])) == []


def test_imap_errors(lv):
    it = lv.imap(fail_at, range(5), [2] * 5)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ipp.RemoteError):
        next(it)
    assert list(it) == [3, 4]
    results = list(lv.imap(fail_at, range(4), [1] * 4, return_exceptions=True))
    assert isinstance(results[1], ipp.RemoteError) and results[::2] == [0, 2]

    def broken_input():
        yield 1
        raise KeyError("input broke")

    it = lv.imap(double, broken_input())
    assert next(it) == 2
    with pytest.raises(KeyError):
        next(it)


def test_imap_consumes_inputs_only_as_tasks_finish(lv, tmp_path):
    go = tmp_path / "go"
    seen = []
    it = lv.imap(wait_for_file, _counting(itertools.repeat(str(go)), seen), max_outstanding=3)
    try:
        assert wait_until(lambda: len(seen) >= 3)
        time.sleep(0.3)
        assert len(seen) == 3, "read ahead of max_outstanding"
    finally:
        go.touch()
    assert [next(it) for _ in range(10)] == [True] * 10
    it.cancel()  # stop reading the endless input
    rest = list(it)  # what was already sent still comes back, then it ends
    assert rest == [True] * len(rest)
    n = len(seen)
    time.sleep(0.3)
    assert len(seen) == n


def test_executor_submit_map_and_shutdown(rc, lv):
    ex = lv.executor
    assert isinstance(ex, concurrent.futures.Executor)
    assert ex.submit(pow, 2, 5).result(timeout=T) == 32
    assert list(ex.map(double, range(10))) == [2 * i for i in range(10)]
    futures = [ex.submit(double, i) for i in range(10)]
    done, _ = concurrent.futures.wait(futures, timeout=T)
    assert len(done) == 10
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=T)) == [
        2 * i for i in range(10)]
    with rc.executor() as ex2:
        futures = [ex2.submit(double, i) for i in range(5)]
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        ex2.submit(double, 1)


def test_executor_map_timeout(lv, tmp_path):
    go = tmp_path / "go"
    results = lv.executor.map(wait_for_file, [str(go)], timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            next(results)
    finally:
        go.touch()


def test_joblib_backend(lv):
    joblib = pytest.importorskip("joblib")
    lv.register_joblib_backend("ipp-ext-test")
    with joblib.parallel_backend("ipp-ext-test"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(double)(i) for i in range(40))
    assert out == [2 * i for i in range(40)]
    ipp.register_joblib_backend("ipp-ext-test2", view=lv)
    with pytest.raises(ipp.RemoteError):
        joblib.Parallel(backend="ipp-ext-test2")(joblib.delayed(fail_at)(i, 3) for i in range(5))
