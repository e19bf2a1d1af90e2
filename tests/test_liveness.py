"""Liveness and progress: a stalled client is not dead engines; lost replies and restarts are noticed."""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from jupyter_client import KernelManager

import ipyparallel_ext as ipp
from ipyparallel_ext import _engine
from ipyparallel_ext.error import EngineError, ReplyLost

from conftest import getpid, snooze, wait_until

T = 60  # deadline of every wait (a slow shared machine); never a timing assertion

# libc called through PyDLL keeps the GIL: every other Python thread, the
# I/O thread included, stands still -- as in a long C-extension call.
_libc_holding_gil = ctypes.PyDLL(None)


def hold_gil(seconds):
    _libc_holding_gil.usleep(int(seconds * 1e6))


STALL = _engine.HEARTBEAT_TIMEOUT + 1.5


# -- a stalled client --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["gil", "io_thread"])
def test_a_stalled_client_does_not_declare_engines_dead(make_cluster, how):
    _cluster, rc = make_cluster(2)
    running = rc[0].apply_async(snooze, STALL + 2)  # in flight through the stall; engine 1 idle
    assert wait_until(lambda: running.sent, timeout=T)
    if how == "gil":
        hold_gil(STALL)
    else:  # the I/O thread itself is busy (a slow callback)
        rc.call_in_loop(time.sleep, STALL, timeout=STALL + 30)
    assert running.get(timeout=T) == STALL + 2
    assert rc.ids == [0, 1]
    assert rc[:].apply_async(lambda: "alive").get(timeout=T) == ["alive", "alive"]
    assert rc.io_loop.stalled >= STALL - 1  # the loop saw its own stall


# -- a kernel we attach to, restarted by its own manager ----------------------------------------


@pytest.fixture
def kernel():
    """A kernel started by a jupyter_client KernelManager, as a notebook server would."""
    km = KernelManager()
    km.start_kernel(env=dict(os.environ))
    yield km
    km.shutdown_kernel(now=True)


def attach(km):
    info = km.get_connection_info(session=False)
    info["key"] = info["key"].decode() if isinstance(info["key"], bytes) else info["key"]
    rc = ipp.Client(connection_info=[info])
    rc.wait_for_engines(1, timeout=T)
    return rc


def test_restart_by_someone_else_fails_running_work_and_reinstalls(kernel, caplog):
    rc = attach(kernel)
    try:
        old_pid = rc[0].apply_async(getpid).get(timeout=T)
        running = rc[0].apply_async(snooze, 120)
        assert wait_until(lambda: running.sent, timeout=T)
        with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
            kernel.restart_kernel(now=True)
            with pytest.raises(EngineError, match="engine 0 was restarted"):
                running.get(timeout=T)
            assert wait_until(lambda: rc.ids == [0], timeout=T)
            new_pid = rc[0].apply_async(getpid).get(timeout=T)  # helpers back: no ModuleNotFoundError
        assert new_pid != old_pid
        assert any("namespace" in r.getMessage() for r in caplog.records)
    finally:
        rc.close()


def test_restart_of_an_idle_engine_is_noticed(kernel, caplog):
    rc = attach(kernel)
    try:
        rc[0].push({"a": 1}, block=True)
        old_pid = rc[0].apply_async(getpid).get(timeout=T)
        with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
            kernel.restart_kernel(now=False)
            # Sent before the client may have noticed: it fails as lost, or runs once
            # the helpers are back; never a ModuleNotFoundError from the fresh kernel.
            try:
                assert rc[0].apply_async(getpid).get(timeout=T) != old_pid
            except EngineError as exc:
                assert "engine 0 was restarted" in str(exc)
            assert wait_until(lambda: any("restarted" in r.getMessage() for r in caplog.records), timeout=T)
        assert rc[0].apply_async(getpid).get(timeout=T) != old_pid
        assert rc.ids == [0]
        with pytest.raises(ipp.RemoteError, match="NameError"):
            rc[0].pull("a", block=False).get(timeout=T)  # its namespace is gone, as the warning said
    finally:
        rc.close()


def test_a_cluster_restart_is_seen_by_other_clients_of_the_engine(make_cluster, caplog):
    cluster, rc = make_cluster(2)
    with ipp.Client(connection_files=cluster.connection_files) as other:  # attached: not told by the Cluster
        other.wait_for_engines(2, timeout=T)
        old_pid = other[0].apply_async(getpid).get(timeout=T)
        running = other[0].apply_async(snooze, 120)
        assert wait_until(lambda: running.sent, timeout=T)
        with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
            rc.shutdown(targets=[0], restart=True)
            with pytest.raises(EngineError, match="engine 0 was restarted"):
                running.get(timeout=T)
            assert wait_until(lambda: other.ids == [0, 1], timeout=T)
            assert other[0].apply_async(getpid).get(timeout=T) not in (old_pid, None)
        assert any("namespace is gone" in r.getMessage() for r in caplog.records)


# -- lost replies ----------------------------------------------------------------------------------

# Runs on the engine: this request's own execute_reply never leaves the kernel
# (``how='drop'``), or sending it is interrupted (``how='interrupt'``: what a
# SIGINT landing just as a request finishes does).
LOSE_MY_REPLY = """
def _lose_reply(how):
    kernel = get_ipython().kernel
    session = kernel.session
    send = session.send
    def once(stream, msg_or_type, *args, **kwargs):
        if msg_or_type == "execute_reply":
            session.send = send
            if how == "interrupt":
                raise KeyboardInterrupt
            return None
        return send(stream, msg_or_type, *args, **kwargs)
    session.send = once
_lose_reply({how!r})
"""


@pytest.mark.parametrize("how", ["drop", "interrupt"])
def test_a_lost_reply_fails_the_request_and_the_engine_goes_on(make_cluster, how):
    _cluster, rc = make_cluster(1)
    pid = rc[0].apply_async(getpid).get(timeout=T)
    lost = rc[0].execute(LOSE_MY_REPLY.format(how=how), block=False)
    after = rc[0].apply_async(getpid)  # queued behind it (max_inflight=1)
    with pytest.raises(ReplyLost, match=f"engine 0.*{lost.msg_ids[0]}"):
        lost.get(timeout=T)
    assert after.get(timeout=T) == pid
    assert rc.ids == [0]


def test_a_long_request_is_not_mistaken_for_a_lost_reply(make_cluster):
    _cluster, rc = make_cluster(1)
    ar = rc[0].apply_async(snooze, 3 * _engine.REPLY_CHECK_AFTER + 1)
    assert ar.get(timeout=T) == 3 * _engine.REPLY_CHECK_AFTER + 1


# -- interrupts an engine ignores ------------------------------------------------------------------


@ipp.interactive
def ignore_interrupts(t):
    """Runs on an engine: keep running for ``t`` seconds whatever interrupts arrive."""
    import time

    end = time.monotonic() + t
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass
    return t


def test_re_interrupts_are_capped(make_cluster):
    from ipyparallel_ext import _scheduler

    _cluster, rc = make_cluster(1)
    lv = rc.load_balanced_view()
    with lv.temp_flags(time_limit=0.5):
        ar = lv.apply_async(ignore_interrupts, 120)
    with pytest.raises(ipp.TaskTimeout, match=f"ignored {_scheduler.INTERRUPT_TRIES} interrupts"):
        ar.get(timeout=T)


CHILD = """
import sys, time
import ipyparallel_ext as ipp
rc = ipp.Client(connection_files=sys.argv[1:])
rc.wait_for_engines(2, timeout=60)
running = rc[0].apply_async(lambda: __import__("time").sleep({run}) or "done")
rc[1].apply_sync(lambda: None)
print("ready", flush=True)
sys.stdin.readline()  # the test stops us (SIGSTOP) and lets us go on (SIGCONT), then writes a line
try:
    print(running.get(timeout=60), rc[:].apply_async(lambda: "alive").get(timeout=60), rc.ids, flush=True)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
"""


def test_a_stopped_client_process_does_not_declare_engines_dead(cluster):
    # The whole client process stands still (Ctrl-Z, a paused VM): zmq's own
    # threads too, so replies are not even in its queues when the loop wakes.
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(run=STALL + 3), *cluster.connection_files],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(STALL)
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate("go\n", timeout=T)
        assert out == "done ['alive', 'alive'] [0, 1]\n", err
    finally:
        child.kill()
        child.wait(T)
