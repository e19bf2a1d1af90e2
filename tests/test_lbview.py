"""LoadBalancedView on the session's two real engines: apply, map, batching, abort, memory."""

import gc
import weakref

import pytest
from conftest import double, fail_at, snooze, wait_for_file, wait_until

import ipyparallel_ext as ipp

T = 30  # generous deadline for any single wait


@ipp.interactive
def echo(x):
    print(f"out {x}")
    return x


@pytest.fixture
def lv(rc):
    view = rc.load_balanced_view()
    yield view
    rc.wait(list(view.outstanding), timeout=T)  # (view.wait() would also name purged tasks)


def test_apply_flavours_return_one_value(rc, lv):
    assert lv.apply_sync(double, 21) == 42
    ar = lv.apply_async(double, 2)
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get(timeout=T) == 4
    assert ar.engine_id in rc.ids
    assert len(ar.msg_ids) == 1 and ar.msg_ids[0] in lv.history
    assert isinstance(lv.apply(double, 1), ipp.AsyncResult)  # block=False by default
    with lv.temp_flags(block=True):
        assert lv.apply(double, 1) == 2
    assert repr(lv) == "<LoadBalancedView None>"
    assert len(lv) == 2


def test_remote_error_is_raised_as_is(lv):
    ar = lv.apply_async(fail_at, 3, 3)
    with pytest.raises(ipp.RemoteError) as info:
        ar.get(timeout=T)
    assert info.value.ename == "ValueError"
    assert "bad 3" in str(info.value)


def test_map_ordered_chunked_and_several_sequences(lv):
    assert lv.map_sync(double, range(100)) == [2 * i for i in range(100)]
    amr = lv.map_async(double, range(23), chunksize=5)
    assert amr._chunk_sizes == [5, 5, 5, 5, 3]
    assert amr.get(timeout=T) == [2 * i for i in range(23)]
    assert lv.map_sync(pow, [2, 3, 4], [5, 2]) == [32, 9]  # shortest sequence wins
    assert lv.map_sync(double, []) == []
    assert lv.map_sync(double, (x for x in "ab")) == ["aa", "bb"]  # any iterable
    with pytest.raises(ValueError):
        lv.map_async(double, range(3), chunksize=0)


def test_map_unordered_yields_as_tasks_finish(lv):
    amr = lv.map_async(snooze, [1.0] + [0.01] * 10, ordered=False)
    results = list(amr)
    assert sorted(results) == [0.01] * 10 + [1.0]
    assert results[0] == 0.01  # a 1 s task does not come before ten 10 ms ones


def test_one_failure_does_not_affect_its_batch_neighbours(rc, lv):
    lv.map_sync(fail_at, range(20), [-1] * 20)  # learn that it is quick: big batches follow
    scheduler = lv._scheduler
    before = dict(scheduler.stats)
    amr = lv.map_async(fail_at, range(300), [150] * 300, return_exceptions=True)
    results = amr.get(timeout=T)
    assert [r for i, r in enumerate(results) if i != 150] == [i for i in range(300) if i != 150]
    assert isinstance(results[150], ipp.RemoteError) and results[150].ename == "ValueError"
    batches = scheduler.stats["batches"] - before.get("batches", 0)
    assert batches < 100, "tiny tasks should share requests"
    with pytest.raises(ipp.CompositeError):
        lv.map_sync(fail_at, range(10), [4] * 10)


def test_each_task_keeps_its_own_outputs_and_metadata(lv):
    lv.map_sync(echo, range(5))
    amr = lv.map_async(echo, range(40))
    assert amr.get(timeout=T) == list(range(40))
    assert amr.stdout == [f"out {i}\n" for i in range(40)]
    for record in amr._records:
        assert record.status == "ok" and record.started <= record.completed


def test_work_is_spread_over_engines(rc, lv):
    amr = lv.map_async(snooze, [0.02] * 40)
    amr.get(timeout=T)
    used = [r.engine_id for r in amr._records]
    for eid in rc.ids:
        assert used.count(eid) >= 5, f"engine {eid} got too little of the work: {used}"


def test_slow_task_does_not_hold_up_fast_ones(lv, tmp_path):
    go = tmp_path / "go"

    def blocker(path):  # a fresh function: the scheduler knows nothing of its run time
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return "slow"

    slow = lv.apply_async(blocker, str(go))
    try:
        fast = lv.map_async(double, range(200))
        assert fast.get(timeout=T) == [2 * i for i in range(200)]
        assert not slow.ready()
    finally:
        go.touch()
    assert slow.get(timeout=T) == "slow"


def test_targets_restrict_the_engines(rc):
    lv = rc.load_balanced_view(targets=[1])
    amr = lv.map_async(double, range(20))
    assert amr.get(timeout=T) == [2 * i for i in range(20)]
    assert {r.engine_id for r in amr._records} == {1}
    with pytest.raises(IndexError):
        rc.load_balanced_view(targets=[7]).apply_async(double, 1)


def test_abort_queued_tasks_and_queue_status(rc, tmp_path):
    lv = rc.load_balanced_view(targets=[0])
    go = tmp_path / "go"

    def gate(path):  # unknown run time: nothing is queued behind it on the engine
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)

    blocker = lv.apply_async(gate, str(go))
    try:
        queued = [lv.apply_async(double, i) for i in range(6)]
        assert wait_until(lambda: rc.queue_status()["unassigned"] >= 6)
        status = rc.queue_status(verbose=True)
        assert set(ar.msg_ids[0] for ar in queued) <= set(status["unassigned"])
        assert blocker.msg_ids[0] in status[0]["queue"]  # its batch is on engine 0
        lv.abort(queued[:3])
        queued[3].abort()
        for ar in queued[:4]:
            with pytest.raises(ipp.TaskAborted):
                ar.get(timeout=T)
    finally:
        go.touch()
    assert [ar.get(timeout=T) for ar in queued[4:]] == [8, 10]
    assert lv.wait(timeout=T)
    assert rc.queue_status()["unassigned"] == 0


def test_wait_and_outstanding(lv):
    ars = [lv.apply_async(snooze, 0.05) for _ in range(4)]
    assert lv.wait(ars, timeout=T)
    assert not (set(a.msg_ids[0] for a in ars) & lv.outstanding)
    assert all(ar.get() == 0.05 for ar in ars)


def test_nothing_is_held_after_tasks_are_done_and_purged(rc, lv):
    amr = lv.map_async(double, range(300))
    singles = [lv.apply_async(double, i) for i in range(50)]
    assert amr.get(timeout=T) == [2 * i for i in range(300)]
    assert rc.wait(singles, timeout=T)
    refs = [weakref.ref(r) for r in amr._records + [ar._records[0] for ar in singles]]
    scheduler = lv._scheduler
    assert wait_until(lambda: scheduler.n_ready == 0 and not scheduler.held and not scheduler.waiting
                      and not any(slot.batches for slot in scheduler.slots.values()))
    rc.purge_results(jobs=[amr, *singles])
    del amr, singles
    # Engine connections keep a reply's records a couple of seconds for late outputs.
    assert wait_until(lambda: gc.collect() is not None and all(r() is None for r in refs), timeout=15)


def test_wait_interactive_shows_progress(lv, capsys):
    amr = lv.map_async(snooze, [0.01] * 20)
    amr.wait_interactive(interval=0.05, widget=False)
    assert amr.ready()
    err = capsys.readouterr().err
    assert "20/20" in err and "snooze" in err


def test_flags_are_checked(lv):
    with pytest.raises(ValueError):
        lv.set_flags(retries=-1)
    with pytest.raises(ValueError):
        lv.set_flags(time_limit=0)
    with pytest.raises(ValueError):
        lv.set_flags(after=[1.5])
    with pytest.raises(KeyError):
        lv.set_flags(no_such_flag=1)
    with pytest.raises(TypeError):
        lv.map(double, range(3), no_such_option=1)
    lv.set_flags(retries=2, timeout=1.5, time_limit=3)
    assert (lv.retries, lv.timeout, lv.time_limit) == (2, 1.5, 3)


def test_wait_for_file_helper_runs_load_balanced(lv, tmp_path):
    go = tmp_path / "go"
    go.touch()
    assert lv.apply_sync(wait_for_file, str(go), "ok") == "ok"


def test_map_with_an_unpicklable_element_raises_and_leaves_nothing_behind(rc, lv):
    import threading

    items = list(range(50)) + [threading.Lock()] + list(range(50))
    with pytest.raises(ipp.error.SerializationError):
        lv.map_async(double, items)
    scheduler = lv._scheduler
    assert wait_until(lambda: scheduler.n_ready == 0 and not scheduler.held)
    assert rc.wait(list(lv.outstanding), timeout=T)  # nothing left hanging


def test_track_and_wait_for_send(lv):
    with lv.temp_flags(track=True):
        ar = lv.apply_async(double, b"x" * 100_000)
    assert ar.wait_for_send(timeout=T)
    assert ar.get(timeout=T) == b"x" * 200_000


def test_remote_and_parallel_decorators(lv):
    remote_double = lv.remote(block=True)(double)
    assert remote_double(4) == 8
    assert remote_double.map(range(4)) == [0, 2, 4, 6]
