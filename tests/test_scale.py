"""Many engines: bounded parallel starts, port collisions retried, interrupted starts cleaned up, fd limits.

The scale itself (128 engines, timings) is measured by ``tests/benchmarks/run.py --scale``; these
tests check the mechanisms with a few real kernels.
"""

import asyncio
import os
import signal
import socket

import psutil
import pytest
import zmq

import ipyparallel_ext as ipp
from ipyparallel_ext import _iothread
from ipyparallel_ext.cluster import _local
from conftest import wait_until


def _cluster_processes(cluster):
    """Kernel processes (alive, not zombies) whose connection file is in ``cluster``'s folder."""
    marker = f"cluster-{cluster.cluster_id}-"
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if marker in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


@pytest.fixture
def counted_starts(monkeypatch):
    """Count kernels waiting to listen at once (inside their start slot), and call hooks on each start."""
    state = {"now": 0, "max": 0, "listening": 0, "on_listening": None}
    original = _local._wait_listening

    async def counting(km, *args):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        try:
            result = await original(km, *args)
        finally:
            state["now"] -= 1
        state["listening"] += 1
        if state["on_listening"] is not None:
            state["on_listening"](state["listening"])
        return result

    monkeypatch.setattr(_local, "_wait_listening", counting)
    return state


def test_more_engines_than_start_slots_all_start_and_stop(monkeypatch, counted_starts):
    monkeypatch.setattr(_local, "start_slot_count", lambda: 2)
    cluster = ipp.Cluster(n=5)
    try:
        rc = cluster.start_and_connect_sync()
        assert counted_starts["max"] == 2  # never more than the slots, and they were used in parallel
        assert rc.ids == [0, 1, 2, 3, 4]
        pids = rc[:].apply_sync(os.getpid)
        assert len(set(pids)) == 5
        rc.close()
    finally:
        cluster.stop_cluster_sync()
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_an_interrupted_start_kills_the_kernels_it_started(monkeypatch, counted_starts):
    monkeypatch.setattr(_local, "start_slot_count", lambda: 2)
    cluster = ipp.Cluster(n=6)

    def ctrl_c(listening):  # Ctrl-C as the second kernel answers: others are still starting
        if listening == 2:
            os.kill(os.getpid(), signal.SIGINT)

    counted_starts["on_listening"] = ctrl_c
    try:
        with pytest.raises(KeyboardInterrupt):
            cluster.start_cluster_sync()
        assert counted_starts["listening"] >= 2
        assert not cluster.engines
        assert _cluster_processes(cluster) == []  # started, starting and queued: none left
    finally:
        cluster.stop_cluster_sync()


@pytest.mark.parametrize("port", ["shell_port", "hb_port"])
def test_a_kernel_whose_port_was_taken_is_started_again_on_new_ports(tmp_path, port):
    # Another process took the port between jupyter_client's choice and the kernel's bind. A taken
    # shell port kills the kernel; a taken heartbeat port does not: ipykernel binds it in a thread,
    # which dies, and the kernel lives on, deaf to heartbeats.
    from jupyter_client import AsyncKernelManager

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    log_path = tmp_path / "kernel.log"
    managers = []

    async def start(fresh):
        km = AsyncKernelManager(kernel_name="python3")
        km.ip = "127.0.0.1"
        km.connection_file = str(tmp_path / "kernel.json")
        if not fresh:
            km.cache_ports = False  # keep the port given here
            setattr(km, port, taken.getsockname()[1])
        managers.append(km)
        await km.start_kernel(stdout=log, stderr=log)
        return km

    async def main():
        try:
            km = await _local.start_listening(start, str(log_path), 60)
            return km, await km.is_alive(), managers[0].provisioner is None or not await managers[0].is_alive()
        finally:
            for km in managers:
                await km.shutdown_kernel(now=True)

    with open(log_path, "ab") as log:
        try:
            km, alive_after, first_gone = asyncio.run(main())
        finally:
            taken.close()
    assert len(managers) == 2 and km is managers[1]
    assert b"Address already in use" in log_path.read_bytes()
    assert alive_after and first_gone


def test_the_open_file_limit_is_raised_for_many_sockets():
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sockets = 1100  # more than zmq's default socket limit (1023), too
    needed = sockets * _iothread.FDS_PER_SOCKET + _iothread.FD_SPARE
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit ({hard}) is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(psutil.Process().num_fds() + 64, 512), hard))
    loop = _iothread.IOLoop()
    socks = []

    def make_and_add():  # on the I/O thread, as an engine connection opens its sockets
        sock = loop.context.socket(zmq.DEALER)
        socks.append(sock)
        loop.add_socket(sock, lambda frames: None)

    try:
        for _ in range(sockets):  # as many sockets as 275 engines: each needs a descriptor
            loop.call_soon(make_and_add)
        assert wait_until(lambda: len(loop._handlers) == sockets, timeout=30)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed
    finally:
        for sock in socks:
            loop.call_soon(loop.remove_socket, sock)
        loop.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@ipp.interactive  # sent by value: engines cannot import this test module
def _hold_out(path):
    """Ignore interrupts and SIGTERM and keep running (having said so in ``path``): only SIGKILL stops it."""
    import os
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(path, str(os.getpid())), "w").close()
    while True:
        time.sleep(0.01)


def test_ctrl_c_while_stopping_kills_the_engines_at_once(tmp_path):
    import threading

    cluster = ipp.Cluster(n=3)
    try:
        rc = cluster.start_and_connect_sync()
        pids = rc[:].apply_sync(os.getpid)
        rc[:].apply_async(_hold_out, str(tmp_path))
        assert wait_until(lambda: len(os.listdir(tmp_path)) == 3, timeout=30)
        rc.close()
        # Engines that hold out would be waited for (grace, SIGTERM, SIGKILL); Ctrl-C cuts that short.
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            cluster.stop_cluster_sync()
        assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        cluster.stop_cluster_sync()
    assert _cluster_processes(cluster) == []
