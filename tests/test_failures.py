"""Failures on purpose-built engines: killed, hung, restarted; bad signatures; leaks; exposure."""

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import zmq
from jupyter_client.session import Session

import ipyparallel_ext as ipp
from ipyparallel_ext import _wire
from ipyparallel_ext.error import EngineError

from conftest import alive, readline, wait_until


@ipp.interactive  # sent by value: engines cannot import this test module
def start_then(path, what="sleep"):
    """Runs on an engine: touch ``path`` (so the test knows it runs), then sleep or spin."""
    import time

    open(path, "w").close()
    if what == "spin":
        while True:  # a hung kernel: only an interrupt gets it out
            pass
    time.sleep(120)


# -- a dead engine ---------------------------------------------------------------------------


def test_killed_engine_fails_its_work_fast(make_cluster, tmp_path):
    cluster, rc = make_cluster(2)
    # A client attached by connection files has no process to watch: it relies on heartbeats.
    attached = ipp.Client(connection_files=cluster.connection_files)
    try:
        attached.wait_for_engines(2, timeout=30)
        pids = rc[:].apply_sync(os.getpid)
        started = tmp_path / "started"
        running = rc[0].apply_async(start_then, str(started))
        queued = rc[0].apply_async(lambda: "queued")
        attached_running = attached[0].apply_async(lambda: __import__("time").sleep(120))
        assert wait_until(started.exists, timeout=30)

        os.kill(pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="engine 0"):
            running.get(timeout=10)
        assert time.monotonic() - t0 < 10
        with pytest.raises(EngineError):
            queued.get(timeout=5)
        with pytest.raises(EngineError):
            attached_running.get(timeout=15)  # heartbeat timeout, not a process probe
        assert time.monotonic() - t0 < 15

        # The other engine still answers; the dead one is gone from the ids.
        assert rc[1].apply_sync(lambda: "alive") == "alive"
        assert attached[1].apply_sync(lambda: "alive") == "alive"
        assert wait_until(lambda: rc.ids == [1] and attached.ids == [1], timeout=10)
        assert rc[:].apply_sync(lambda: 1) == [1]  # 'all' follows the live engines
        with pytest.raises(EngineError, match="engine 0"):
            rc[0].apply_async(lambda: 1)
        with pytest.raises(EngineError, match="engine 0"):
            rc.direct_view([0, 1]).apply_async(lambda: 1)
        assert "killed by SIGKILL" in str(running.exception())
    finally:
        attached.close()
    cluster.stop_cluster_sync()
    assert not alive(pids[1])


# -- a hung engine -------------------------------------------------------------------------------


def test_interrupt_a_hung_engine(make_cluster, tmp_path):
    _cluster, rc = make_cluster(1)
    started = tmp_path / "started"
    ar = rc[0].apply_async(start_then, str(started), "spin")
    queued = rc[0].apply_async(lambda: "after")
    assert wait_until(started.exists, timeout=30)
    with pytest.raises(TimeoutError):
        ar.get(timeout=0.3)
    rc.interrupt(targets=[0])
    with pytest.raises(ipp.RemoteError) as info:
        ar.get(timeout=10)
    assert info.value.ename == "KeyboardInterrupt"
    assert queued.get(timeout=10) == "after"  # the queue goes on
    # Code run by execute is interruptible too.
    started.unlink()
    ar = rc[0].execute(f"open({str(started)!r}, 'w').close()\nwhile True: pass", block=False)
    assert wait_until(started.exists, timeout=30)
    rc.interrupt()
    with pytest.raises(ipp.RemoteError, match="KeyboardInterrupt"):
        ar.get(timeout=10)
    assert rc[0].apply_sync(lambda: "fine") == "fine"


def test_restart_brings_engine_back_under_same_id(make_cluster, tmp_path, caplog):
    _cluster, rc = make_cluster(2)
    pids = rc[:].apply_sync(os.getpid)
    rc[:].push({"before_restart": 1}, block=True)
    started = tmp_path / "started"
    running = rc[0].apply_async(start_then, str(started))
    assert wait_until(started.exists, timeout=30)
    with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
        rc.shutdown(targets=[0], restart=True)  # blocks until the engine is back
    assert not caplog.records  # asked for: no "engine died" warning
    assert rc.ids == [0, 1]
    with pytest.raises(EngineError, match="engine 0 was restarted"):
        running.get(timeout=10)
    new_pid = rc[0].apply_sync(os.getpid)
    assert new_pid != pids[0]
    assert wait_until(lambda: not alive(pids[0]), timeout=10)
    with pytest.raises(ipp.RemoteError, match="NameError"):
        rc[0].pull("before_restart", block=True)  # a fresh kernel
    assert rc[1].pull("before_restart", block=True) == 1  # the other one untouched
    assert rc[:].apply_sync(lambda: "both") == ["both", "both"]


def test_restart_brings_a_dead_engine_back(make_cluster):
    _cluster, rc = make_cluster(2)
    pid = rc[1].apply_sync(os.getpid)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: rc.ids == [0], timeout=10)
    with pytest.raises(IndexError):
        rc.shutdown(targets=[7], restart=True)
    rc.shutdown(targets=[1], restart=True)  # the dead engine, by its id
    assert rc.ids == [0, 1]
    assert rc[1].apply_sync(os.getpid) not in (pid, None)


def test_restart_needs_a_cluster(cluster):
    with ipp.Client(connection_files=cluster.connection_files) as attached:
        attached.wait_for_engines(2, timeout=30)
        with pytest.raises(ValueError, match="Cluster"):
            attached.shutdown(targets=[0], restart=True)


# -- message signatures ---------------------------------------------------------------------------


def test_codec_rejects_bad_signatures():
    key = b"secret-key"
    good = _wire.MessageCodec(key)
    forger = _wire.MessageCodec(b"wrong-key")
    frames = [zmq.Frame(f) for f in good.pack("status", {"execution_state": "idle"})]
    assert good.unpack(frames)["content"] == {"execution_state": "idle"}
    with pytest.raises(ValueError, match="replayed"):
        good.unpack(frames)
    forged = [zmq.Frame(f) for f in forger.pack("status", {"execution_state": "idle"})]
    with pytest.raises(ValueError, match="invalid signature"):
        good.unpack(forged)
    tampered = good.pack("status", {"execution_state": "idle"})
    tampered[-1] = b'{"execution_state": "busy"}'
    with pytest.raises(ValueError, match="invalid signature"):
        good.unpack([zmq.Frame(f) for f in tampered])
    with pytest.raises(ValueError, match="delimiter"):
        good.unpack([zmq.Frame(b"garbage")])


class FakeKernel:
    """Just enough of a kernel's sockets to answer a Client, signing with any key."""

    def __init__(self, key: bytes):
        self.key = key
        self.context = zmq.Context.instance()
        self.shell = self._bind(zmq.ROUTER)
        self.iopub = self._bind(zmq.PUB)
        self.control = self._bind(zmq.ROUTER)
        self.hb = self._bind(zmq.ROUTER)
        self.requests = []
        self.info = {
            "ip": "127.0.0.1", "transport": "tcp", "key": key.decode(),
            "signature_scheme": "hmac-sha256",
            **{f"{name}_port": int(getattr(self, name).last_endpoint.rsplit(b":", 1)[1])
               for name in ("shell", "iopub", "control", "hb")},
        }

    def _bind(self, kind):
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.bind("tcp://127.0.0.1:0")
        return sock

    def pump(self, seconds):
        """Answer heartbeats and collect shell requests for ``seconds``."""
        session = Session(key=self.key)
        poller = zmq.Poller()
        for sock in (self.shell, self.hb):
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sock, _ in poller.poll(20):
                frames = sock.recv_multipart()
                if sock is self.hb:
                    sock.send_multipart(frames)
                    continue
                idents, msg = session.feed_identities(frames)
                self.requests.append((idents, session.deserialize(msg)))

    def install_request(self):
        for idents, msg in self.requests:
            if msg["msg_type"] == "execute_request":
                return idents, msg
        return None

    def answer(self, key: bytes, idents, request):
        """Reply to ``request`` and publish an idle status for it, signed with ``key``."""
        session = Session(key=key)
        session.send(self.shell, "execute_reply", {"status": "ok", "execution_count": 1},
                     parent=request, ident=idents)
        session.send(self.iopub, "status", {"execution_state": "idle"}, parent=request)

    def close(self):
        for sock in (self.shell, self.iopub, self.control, self.hb):
            sock.close()


def test_badly_signed_messages_are_dropped_and_logged(caplog):
    kernel = FakeKernel(b"the-real-key")
    client = ipp.Client(connection_info=[kernel.info], timeout=0)  # the fake kernel answers below
    try:
        kernel.pump(1.0)
        request = kernel.install_request()
        assert request is not None, "the client did not send its helper install request"
        with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
            kernel.answer(b"a-forged-key", *request)
            kernel.pump(1.0)
        assert client.ids == []  # the forged reply did not count
        assert any("invalid signature" in r.getMessage() for r in caplog.records)
        # The same reply, properly signed, is accepted: the drop was the signature's doing.
        kernel.answer(b"the-real-key", *request)
        kernel.pump(1.0)
        assert client.ids == [0]
    finally:
        client.close()
        kernel.close()


def test_wrong_key_in_connection_file_never_becomes_ready(cluster, tmp_path):
    info = json.loads(open(cluster.connection_files[0]).read())
    info["key"] = "not-the-key"
    path = tmp_path / "wrong-key.json"
    path.write_text(json.dumps(info))
    with ipp.Client(connection_files=[path], timeout=0) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="0 of 1 engines ready.*engine 0.*key"):
            client.wait_for_engines(1, timeout=2)
        assert time.monotonic() - start < 10
        assert client.ids == []


# -- exposure -------------------------------------------------------------------------------------


def test_connection_files_private_and_engines_on_loopback(cluster, rc):
    for path in cluster.connection_files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert json.loads(open(path).read())["ip"] == "127.0.0.1"
    folder = os.path.dirname(cluster.connection_files[0])
    assert stat.S_IMODE(os.stat(folder).st_mode) & 0o777 == 0o700  # (jupyter_client adds the sticky bit)
    for pid in rc[:].apply_sync(os.getpid):
        listening = [c for c in psutil.Process(pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert len(listening) >= 5  # shell, iopub, stdin, control, hb
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}


# -- no leaked kernels ------------------------------------------------------------------------------


def test_stop_cluster_leaves_no_kernel():
    cluster = ipp.Cluster(n=2)
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(2, timeout=60)
        pids = rc[:].apply_sync(os.getpid)
        folder = os.path.dirname(cluster.connection_files[0])
    finally:
        cluster.stop_cluster_sync()
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=10)
    assert not os.path.exists(folder)


_ORPHAN_SCRIPT = textwrap.dedent("""
    import json, os, time
    import ipyparallel_ext as ipp

    rc = ipp.Cluster(n=2).start_and_connect_sync()
    rc.wait_for_engines(2, timeout=60)
    print(json.dumps(rc[:].apply_sync(os.getpid)), flush=True)
    time.sleep(120)
""")


def test_kernels_exit_when_their_parent_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    pids = []
    try:
        line = readline(proc, timeout=60)
        pids = json.loads(line)
        assert len(pids) == 2 and all(alive(p) for p in pids)
        proc.kill()
        proc.wait(timeout=10)
        # ipykernel's parent poller (JPY_PARENT_PID) notices within a second or so.
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=15)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for pid in pids:  # never leave a kernel behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

