"""Completion apart from waiting: cancel(), listeners, callbacks off the I/O thread, the value race.

Each test here reproduces a way the client used to hang or lose a result
(issue 8, point 1 and the review list); they run on real engines.
"""

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading

import pytest

import ipyparallel_ext as ipp
from ipyparallel_ext.error import DeadlockError, InvalidStateError, TaskAborted

from conftest import snooze, wait_for_file, wait_until

IO_THREAD = "ipyparallel_ext-io"


def engine_works(rc, engine_id, timeout=15):
    """True if engine ``engine_id`` still answers requests (its queue did not stall)."""
    return rc[engine_id].apply_async(lambda: "alive").get(timeout=timeout) == "alive"


# -- cancel() ---------------------------------------------------------------------------------


def test_cancel_queued_request(rc, tmp_path):
    go = tmp_path / "go"
    running = rc[0].apply_async(wait_for_file, str(go), "ran")
    queued = rc[0].apply_async(lambda: "never")  # waits in the client: the engine is busy
    try:
        assert queued.cancel() is True
        assert queued.cancelled() and queued.done()
        assert queued.cancel() is True  # again: still cancelled
        done, _ = concurrent.futures.wait([queued], timeout=10)  # waiters are woken
        assert done == {queued}
        with pytest.raises(concurrent.futures.CancelledError):
            queued.get(timeout=1)
        assert queued.status == "aborted"
    finally:
        go.touch()
    assert running.get(timeout=30) == "ran"
    assert engine_works(rc, 0)


def test_cancel_running_request_returns_false_and_the_engine_goes_on(rc, tmp_path):
    go = tmp_path / "go"
    running = rc[0].apply_async(wait_for_file, str(go), "ran")
    running.wait_for_send(timeout=10)
    try:
        assert running.cancel() is False  # already on the engine: Future contract
        assert not running.cancelled() and not running.done()
    finally:
        go.touch()
    assert running.get(timeout=30) == "ran"
    assert engine_works(rc, 0)


def test_cancel_partly_queued_result(rc, tmp_path):
    """Two requests, one running: the queued one is aborted, cancel() says False."""
    go = tmp_path / "go"
    blocker = rc[1].apply_async(wait_for_file, str(go), "blocker")
    blocker.wait_for_send(timeout=10)
    both = rc[:].apply_async(lambda: "x")  # engine 0 runs it, engine 1's copy is queued
    wait_until(lambda: both._records[0].state != "pending", timeout=10)
    try:
        assert both.cancel() is False
    finally:
        go.touch()
    assert blocker.get(timeout=30) == "blocker"
    assert both.get(timeout=30, return_exceptions=True)[0] == "x"
    assert isinstance(both.get(timeout=0, return_exceptions=True)[1], TaskAborted)
    assert engine_works(rc, 1)


def test_cancel_queued_load_balanced_task(rc, tmp_path):
    go = tmp_path / "go"
    lview = rc.load_balanced_view()
    blockers = [lview.apply_async(wait_for_file, str(go), i) for i in range(2)]
    queued = lview.apply_async(lambda: "ran")  # both engines busy: it stays in the scheduler
    try:
        assert wait_until(lambda: all(b.sent for b in blockers), timeout=10)
        assert queued.cancel() is True
        assert queued.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result(timeout=1)
    finally:
        go.touch()
    assert sorted(b.get(timeout=30) for b in blockers) == [0, 1]
    assert lview.apply_async(lambda: "next").get(timeout=30) == "next"
    assert queued._records[0].status == "aborted"  # it never ran
    assert engine_works(rc, 0) and engine_works(rc, 1)


def test_cancelling_a_task_in_a_running_batch_spares_its_siblings(rc):
    """Several tasks travel in one request; cancelling one used to stop the others' results."""
    lview = rc.load_balanced_view()
    for _ in range(2):
        lview.apply_sync(snooze, 0.05)  # the scheduler learns the run time: then tasks go in batches
    ars = [lview.apply_async(snooze, 0.05) for _ in range(40)]
    assert wait_until(lambda: any(a._records[0].state == "sent" and not a.done() for a in ars[4:]), timeout=30)
    running = next(a for a in ars[4:] if a._records[0].state == "sent" and not a.done())
    cancelled = running.cancel()
    others = [a for a in ars if a is not running]
    _, not_done = concurrent.futures.wait(others, timeout=30)
    assert not not_done, f"{len(not_done)} tasks never finished"  # before the fix: its batch stalled
    assert cancelled is False  # it was running: the Future contract
    assert [a.get(timeout=30) for a in ars] == [0.05] * 40
    assert engine_works(rc, 0) and engine_works(rc, 1)


def test_wait_for_timing_out_does_not_stall_the_engine(rc, tmp_path):
    """asyncio.wait_for cancels what it waits for: that used to stop the engine's queue."""
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go), "late")

    async def impatient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ar, 0.3)

    try:
        asyncio.run(impatient())
    finally:
        go.touch()
    assert ar.get(timeout=30) == "late"
    assert not ar.cancelled()
    assert engine_works(rc, 0)


def test_completing_from_outside_is_fenced(rc, tmp_path):
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go), "real")
    try:
        for attempt in (lambda: ar.set_result("fake"), lambda: ar.set_exception(ValueError("fake"))):
            with pytest.raises(InvalidStateError):
                attempt()
        with pytest.raises(concurrent.futures.InvalidStateError):  # what a Future raises, too
            ar.set_result("fake")
    finally:
        go.touch()
    assert ar.get(timeout=30) == "real"
    assert engine_works(rc, 0)


# -- listeners on the I/O thread ----------------------------------------------------------


def test_a_failing_listener_does_not_stop_the_others_or_the_engine(rc, tmp_path, caplog):
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go), "ok")
    record = ar._records[0]
    heard = []

    def broken(_record):
        raise RuntimeError("a listener bug")

    record.add_done_listener(broken)
    record.add_done_listener(heard.append)
    with caplog.at_level(logging.ERROR, logger="ipyparallel_ext"):
        go.touch()
        assert ar.get(timeout=30) == "ok"
        assert wait_until(lambda: heard == [record], timeout=10)
        assert engine_works(rc, 0)  # the engine's queue moved on
    assert "a listener bug" in caplog.text


def test_a_failing_listener_does_not_keep_a_dead_engine_in_ids(make_cluster, tmp_path):
    """Engine death finishes its records, then drops the engine: a listener error used to stop that."""
    _cluster, client = make_cluster(1)
    pid = client[0].apply_sync(os.getpid)
    ar = client[0].apply_async(wait_for_file, str(tmp_path / "never"), 1, 60)
    ar.wait_for_send(timeout=10)

    def broken(_record):
        raise RuntimeError("a listener bug")

    ar._records[0].add_done_listener(broken)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ipp.EngineError):
        ar.get(timeout=15)
    assert wait_until(lambda: client.ids == [], timeout=10)


def test_waiting_on_the_io_thread_raises_instead_of_hanging(rc, tmp_path):
    go0, go1 = tmp_path / "go0", tmp_path / "go1"
    pending = rc[0].apply_async(wait_for_file, str(go0), "pending")
    other = rc[1].apply_async(wait_for_file, str(go1), "other")
    caught = []

    def listener(_record):  # runs on the I/O thread when ``pending`` finishes
        try:
            other.get(timeout=3)  # before the fix: the I/O thread stalls, then TimeoutError
        except Exception as exc:
            caught.append(exc)

    try:
        pending._records[0].add_done_listener(listener)
        go0.touch()
        assert pending.get(timeout=30) == "pending"
        assert wait_until(lambda: caught, timeout=10)
        assert isinstance(caught[0], DeadlockError), caught
        assert "I/O thread" in str(caught[0])
    finally:
        go0.touch()
        go1.touch()
    assert other.get(timeout=30) == "other"


# -- user callbacks on the callback thread --------------------------------------------------


def test_done_callbacks_run_on_the_callback_thread(rc, tmp_path):
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go), 1)
    threads = []
    ar.add_done_callback(lambda f: threads.append(threading.current_thread().name))
    go.touch()
    assert ar.get(timeout=30) == 1
    assert wait_until(lambda: threads, timeout=10)
    assert threads[0] != IO_THREAD and threads[0] == "ipyparallel_ext-callbacks"
    # Already done: called at once, in this thread, as a Future does.
    ar.add_done_callback(lambda f: threads.append(threading.current_thread().name))
    assert threads[1] == threading.current_thread().name


def test_a_callback_may_wait_for_another_result(rc, tmp_path):
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    first = rc[0].apply_async(wait_for_file, str(go1), "first")
    second = rc[1].apply_async(wait_for_file, str(go2), "second")
    started = threading.Event()
    got = []

    def callback(ar):
        started.set()
        try:
            got.append((ar.get(), second.get(timeout=10)))
        except Exception as exc:  # before the fix: TimeoutError, the I/O thread being blocked
            got.append(exc)

    first.add_done_callback(callback)
    try:
        go1.touch()
        assert started.wait(15)
        go2.touch()  # the I/O thread must be free to deliver this
        assert wait_until(lambda: got, timeout=15)
    finally:
        go1.touch()
        go2.touch()
    assert got == [("first", "second")]
    assert engine_works(rc, 0) and engine_works(rc, 1)


def test_a_failing_callback_does_not_stop_other_callbacks(rc):
    ar = rc[0].apply_async(wait_for_file, "/nonexistent", "x", 0.5)
    heard = []

    def broken(_ar):
        raise RuntimeError("callback bug")

    ar.add_done_callback(broken)
    ar.add_done_callback(heard.append)
    assert ar.get(timeout=30) == "x"
    assert wait_until(lambda: heard == [ar], timeout=10)


def test_await_and_wrap_future_still_work(rc):
    async def main():
        direct = await rc[0].apply_async(lambda: "awaited")
        wrapped = await asyncio.wrap_future(rc[1].apply_async(lambda: "wrapped"))
        return direct, wrapped

    assert asyncio.run(asyncio.wait_for(main(), 60)) == ("awaited", "wrapped")


def test_joblib_callbacks_run_off_the_io_thread(rc):
    joblib = pytest.importorskip("joblib")
    from ipyparallel_ext._joblib import _backend_class

    lview = rc.load_balanced_view()
    backend = _backend_class()(view=lview)
    seen = []

    def callback(out):
        seen.append((threading.current_thread().name, backend.retrieve_result_callback(out)))

    # (It must not finish before the callback is added: then it would run here, as a Future does.)
    backend.submit(lambda: __import__("time").sleep(0.5) or 42, callback=callback)
    assert wait_until(lambda: seen, timeout=30)
    assert seen == [("ipyparallel_ext-callbacks", 42)]
    lview.register_joblib_backend("ipyparallel-completion-test")
    with joblib.parallel_backend("ipyparallel-completion-test"):
        assert joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(20)) == list(range(20))


# -- the value() race ----------------------------------------------------------------------


@ipp.interactive
def _many_floats(n):
    """Runs on an engine: a result whose unpickling takes a while."""
    return [float(i) for i in range(n)]


def test_one_result_read_by_many_threads_at_once(rc):
    """Threads reading one result at once (ar.get() beside rc.results) get the one value, unpickled once.

    Without a lock, two readers could both unpickle it (and hold different
    objects), and where threads switch between the check and the read of
    the frames (free-threaded Python), one could see the frames already
    cleared and return None.
    """
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that the race shows if it is there
    try:
        for _ in range(20):
            ar = rc[0].apply_async(_many_floats, 20_000)
            ar.wait(30)
            msg_id = ar.msg_ids[0]
            barrier = threading.Barrier(6)

            def read(i):
                barrier.wait(10)
                if i % 2:
                    return rc.results[msg_id]
                return rc.get_result(msg_id).get(timeout=10)

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                values = list(pool.map(read, range(6)))
            assert all(v is not None and len(v) == 20_000 for v in values), [type(v) for v in values]
            assert all(v is values[0] for v in values), "unpickled more than once"
            rc.purge_results(msg_id)
    finally:
        sys.setswitchinterval(old)
