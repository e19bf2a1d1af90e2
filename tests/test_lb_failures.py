"""Load balancing when things go wrong: killed engines, time limits, interrupts.

Each test starts its own small cluster (``make_cluster``), so killing or
interrupting engines never disturbs the session's engines.
"""

import os
import signal
import time

import pytest
from conftest import alive, double, getpid, snooze, wait_until

import ipyparallel_ext as ipp

T = 60


def _pids(rc):
    return dict(zip(rc.ids, rc[:].apply_sync(getpid)))


@pytest.mark.parametrize("retries", [0, 1])
def test_engine_killed_during_map(make_cluster, retries):
    _cluster, rc = make_cluster(2)
    pids = _pids(rc)
    lv = rc.load_balanced_view()
    lv.map_sync(snooze, [0.01] * 4)  # known run time: batches of several tasks
    with lv.temp_flags(retries=retries):
        amr = lv.map_async(snooze, [0.05] * 60, return_exceptions=True)
    assert wait_until(lambda: amr.progress >= 6, timeout=T)
    os.kill(pids[1], signal.SIGKILL)
    results = amr.get(timeout=T)  # nothing lost, nothing hangs
    failed = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, ipp.EngineError) for r in failed)
    # Only the task that was running when the engine died may fail (if not retried);
    # the tasks queued behind it moved to the surviving engine.
    assert len(failed) <= (1 if retries == 0 else 0)
    assert results.count(0.05) == 60 - len(failed)
    assert rc.ids == [0]
    assert lv.map_sync(double, range(5)) == [0, 2, 4, 6, 8]  # the view goes on with engine 0
    assert rc.queue_status()["unassigned"] == 0


def test_tasks_bound_to_a_dead_engine_fail(make_cluster, tmp_path):
    _cluster, rc = make_cluster(2)
    pids = _pids(rc)
    go = tmp_path / "go"

    def gate(path):
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)

    lv = rc.load_balanced_view(targets=[1])
    running = lv.apply_async(gate, str(go))
    queued = lv.apply_async(double, 1)  # waits in the client: nothing queues behind gate
    assert wait_until(lambda: running.sent, timeout=T)
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(ipp.EngineError):
        running.get(timeout=T)
    with pytest.raises(ipp.ImpossibleDependency):
        queued.get(timeout=T)


def test_time_limit_interrupts_the_task_and_the_engine_goes_on(make_cluster):
    _cluster, rc = make_cluster(2)
    pids = _pids(rc)
    lv = rc.load_balanced_view(targets=[0])
    t0 = time.monotonic()
    with lv.temp_flags(time_limit=1):
        ar = lv.apply_async(snooze, 60)
    with pytest.raises(ipp.TaskTimeout) as info:
        ar.get(timeout=T)
    assert time.monotonic() - t0 < 30, "interrupted well before the sleep would end"
    assert "time_limit of 1 s" in str(info.value)
    assert isinstance(info.value.__cause__, ipp.RemoteError)
    assert info.value.__cause__.ename == "KeyboardInterrupt"
    # The same engine process goes on with the next task.
    assert lv.apply_sync(getpid) == pids[0]
    assert alive(pids[0])


def test_time_limit_in_a_map_fails_only_the_slow_task(make_cluster):
    _cluster, rc = make_cluster(2)
    lv = rc.load_balanced_view()
    lv.map_sync(snooze, [0.01] * 4)
    with lv.temp_flags(time_limit=2, retries=0):
        amr = lv.map_async(snooze, [0.01] * 10 + [60] + [0.01] * 10, return_exceptions=True)
    results = amr.get(timeout=T)
    assert isinstance(results[10], ipp.TaskTimeout)
    assert results[:10] + results[11:] == [0.01] * 20
    # Tasks with no limit still share requests afterwards.
    assert lv.map_sync(double, range(50)) == [2 * i for i in range(50)]


def test_time_limit_with_retries_retries_elsewhere(make_cluster):
    _cluster, rc = make_cluster(2)
    pids = _pids(rc)

    def slow_on(pid):
        import os
        import time

        if os.getpid() == pid:
            time.sleep(60)
        return os.getpid()

    lv = rc.load_balanced_view()
    with lv.temp_flags(time_limit=1, retries=1):
        ars = [lv.apply_async(slow_on, pids[0]) for _ in range(2)]
    assert [ar.get(timeout=T) for ar in ars] == [pids[1]] * 2


def test_interrupting_a_batch_requeues_the_tasks_it_did_not_reach(make_cluster, tmp_path):
    _cluster, rc = make_cluster(2)
    go = tmp_path / "go"

    def quick_or_gate(x, path):
        import os
        import time

        while x == 0 and not os.path.exists(path):
            time.sleep(0.01)
        return x

    lv = rc.load_balanced_view(targets=[0])
    assert lv.map_sync(quick_or_gate, range(1, 9), [""] * 8) == list(range(1, 9))  # learn: quick
    amr = lv.map_async(quick_or_gate, range(20), [str(go)] * 20, return_exceptions=True)
    first = amr._records[0]
    assert wait_until(lambda: first.state == "sent", timeout=T)
    batch = first.batch
    assert len(batch.task) > 1, "the gated task should share its request with others"
    time.sleep(0.2)  # let the engine start running it
    rc.interrupt(targets=0)
    results = amr.get(timeout=T)
    assert isinstance(results[0], ipp.RemoteError) and results[0].ename == "KeyboardInterrupt"
    assert results[1:] == list(range(1, 20))  # the rest of its batch ran after all


def test_closing_the_client_fails_outstanding_tasks(make_cluster, tmp_path):
    _cluster, rc = make_cluster(2)
    go = tmp_path / "go"

    def gate(path):
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)

    lv = rc.load_balanced_view()
    running = [lv.apply_async(gate, str(go)) for _ in range(2)]
    queued = lv.map_async(double, range(10))
    assert wait_until(lambda: all(ar.sent for ar in running), timeout=T)
    rc.close()
    for ar in [*running, queued]:
        with pytest.raises((ipp.EngineError, ipp.CompositeError)):
            ar.get(timeout=T)
    go.touch()
