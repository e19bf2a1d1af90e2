"""A hung engine (``SIGSTOP``) and a hung client.

The rule these tests enforce (today's code: ``_engine.py`` heartbeats, ``_scheduler.py``):

- An engine that stops answering heartbeats is declared dead after ``HEARTBEAT_TIMEOUT`` (4 s) of
  silence, judged every ``HEARTBEAT_PERIOD`` (1 s): within 5 s, asserted within 15 s (a slow,
  shared machine).  Its process is still there (stopped), so the process probe cannot tell sooner.
- Its work goes elsewhere: the tasks of its batch that had not run go back to the queue, the one
  it was running fails (or is retried, with ``retries``), and the map completes on the others.
- After ``SIGCONT`` it does **not** rejoin by itself: its connection is closed, and any work it
  finishes is dropped.  ``rc.shutdown(targets=[i], restart=True)`` replaces it: the old process is
  stopped and a fresh kernel takes the same id.
- A client process that is itself stopped (a stall of the client, not of the engines) does not
  declare its engines dead when it resumes.

Sizes: 2 engines, a load-balanced map of 200 tasks of 20 ms; one client subprocess with 1 engine.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ipyparallel_ext as ipp

from conftest import alive, readline, wait_until


@ipp.interactive
def pid_after(x, seconds):
    """Runs on an engine: ``(x, pid)`` after ``seconds`` of sleep."""
    import os
    import time

    time.sleep(seconds)
    return x, os.getpid()


@pytest.mark.timeout(120)
def test_stopped_engine_is_dropped_and_its_work_runs_elsewhere(make_cluster, measure):
    cluster, rc = make_cluster(2)
    pids = rc[:].apply_sync(os.getpid)
    lv = rc.load_balanced_view()
    lv.retries = 1  # the task the stopped engine was running runs again elsewhere
    n = 200
    ar = lv.map_async(pid_after, range(n), [0.02] * n)
    assert wait_until(lambda: ar.progress >= 20, timeout=60)
    os.kill(pids[0], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        stuck = rc.queue_status(targets=[0], verbose=True)[0]["queue"]  # sent to it, not done
        assert stuck, "nothing was on the stopped engine"
        assert wait_until(lambda: 0 not in rc.ids, timeout=15), "a stopped engine was never declared dead"
        detected = time.monotonic() - t0
        results = ar.get(timeout=60)
        assert [x for x, _ in results] == list(range(n))  # each once, in order
        assert {rc.metadata[m]["engine_id"] for m in stuck} == {1}  # its tasks went elsewhere
        assert {pid for _, pid in results[-20:]} == {pids[1]}
        measure("SIGSTOP'ed engine declared dead after", round(detected, 3), "s")
    finally:
        os.kill(pids[0], signal.SIGCONT)

    # Resumed, it stays out: its connection is gone and nothing reconnects it.
    time.sleep(2.0)  # two heartbeat periods: time enough for a rejoin, if there were one
    assert rc.ids == [1]
    assert alive(pids[0])
    rc.shutdown(targets=[0], restart=True)  # replaced: a fresh kernel under the same id
    assert rc.ids == [0, 1]
    assert rc[0].apply_sync(os.getpid) not in pids
    assert wait_until(lambda: not alive(pids[0]), timeout=15)
    assert lv.map_sync(pid_after, range(4), [0] * 4)[-1][0] == 3


_STALLED_CLIENT = textwrap.dedent("""
    import json, os, sys, time
    import ipyparallel_ext as ipp

    @ipp.interactive
    def snooze(t):
        import time
        time.sleep(t)
        return t

    cluster = ipp.Cluster(n=1)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(1, timeout=60)
        running = rc[0].apply_async(snooze, 10)
        # Quiet first: a reply already on its way when we stop would hide the stall (it is read
        # before the heartbeat timer runs), and the test would pass by luck.
        time.sleep(1.5)
        print("ready", flush=True)
        sys.stdin.readline()  # the test stops and resumes us before this returns
        time.sleep(1.5)  # let the I/O thread catch up after the resume
        report = {"ids": rc.ids}
        try:
            report["result"] = running.get(timeout=30)
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(report), flush=True)
    finally:
        cluster.stop_cluster_sync()
""")


@pytest.mark.timeout(120)
def test_stalled_client_keeps_its_engines():
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_CLIENT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert readline(proc, timeout=90).strip() == "ready"
        os.kill(proc.pid, signal.SIGSTOP)  # the client stalls 6 s; its engine does not
        time.sleep(6)
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        report = json.loads(readline(proc, timeout=60))
        assert report == {"ids": [0], "result": 10}
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)
