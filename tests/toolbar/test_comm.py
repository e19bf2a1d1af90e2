"""The toolbar comm against a real notebook kernel, with this test as the frontend.

A jupyter_client kernel (the stock ``python3`` spec, this checkout on its
path) makes a Client of a real supervised 2-engine cluster; the test reads
the kernel's IOPub for the comm it opens (``comm_open`` and ``state``
messages), sends the toolbar's commands on the shell channel as a frontend
does, opens a comm of its own to the kernel's target, and interrupts the
kernel during a blocking ``%px``.  Kernel and cluster are stopped at the end.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

import pytest
from _server_fixture import REPO
from conftest import wait_until
from jupyter_client.manager import KernelManager

import ipyparallel_ext as ipp
from ipyparallel_ext.toolbar import _comm

TARGET = "ipyparallel_ext.toolbar"
_WAIT = 60  # seconds for anything to happen on a busy 2-core machine
_SLEEP = 600  # seconds engines would sleep if nobody interrupted them


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("comm")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    return env


@pytest.fixture(scope="module")
def cluster_id(env):
    cluster_id = f"c{uuid.uuid4().hex[:8]}"
    cli = [sys.executable, "-m", "ipyparallel_ext._cli", "cluster"]
    subprocess.run([*cli, "start", "-n", "2", "--daemonize", "--cluster-id", cluster_id], env=env, check=True,
                   capture_output=True, timeout=150)
    try:
        yield cluster_id
    finally:
        subprocess.run([*cli, "stop", "--all"], env=env, capture_output=True, timeout=150)
        listed = subprocess.run([*cli, "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert json.loads(listed.stdout) == {}


class Frontend:
    """A notebook kernel and what a frontend sees of it: every IOPub message, logged by a thread."""

    def __init__(self, env):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=_WAIT)
        self.log = []  # every IOPub message so far
        self.cursor = 0  # where next() looks from
        self._logged = threading.Condition()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            with self._logged:
                self.log.append(msg)
                self._logged.notify_all()

    def _find(self, predicate, start, timeout):
        """Index of the first logged message from ``start`` on with ``predicate(msg)`` true."""
        deadline = time.monotonic() + timeout
        index = start
        with self._logged:
            while True:
                while index < len(self.log):
                    if predicate(self.log[index]):
                        return index
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching IOPub message within {timeout} s")
                self._logged.wait(left)

    def next(self, predicate, timeout=_WAIT):
        """The next IOPub message (after the last one next() returned) with ``predicate(msg)`` true."""
        index = self._find(predicate, self.cursor, timeout)
        self.cursor = index + 1
        return self.log[index]

    def state(self, comm_id, timeout=_WAIT, **expected):
        """The next state message on ``comm_id`` with the ``expected`` values."""
        def matches(msg):
            if msg["msg_type"] != "comm_msg" or msg["content"]["comm_id"] != comm_id:
                return False
            data = msg["content"]["data"]
            return data.get("type") == "state" and all(data.get(k) == v for k, v in expected.items())

        return self.next(matches, timeout)["content"]["data"]

    def execute(self, code, timeout=_WAIT):
        """Run a cell; (reply content, the text of its stream, result and error outputs)."""
        start = len(self.log)
        msg_id = self.kc.execute(code)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"], self.outputs(msg_id, start)

    def outputs(self, msg_id, start=0):
        """The text a cell's outputs show, once it is idle."""
        texts = []
        index = start
        while True:
            index = self._find(lambda m: m["parent_header"].get("msg_id") == msg_id, index, _WAIT)
            msg = self.log[index]
            index += 1
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(texts)
            if msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                texts.append(msg["content"]["data"].get("text/plain", "") + "\n")
            elif msg["msg_type"] == "error":
                texts.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")

    def comm_send(self, comm_id, data):
        """Send a comm message to the kernel, as a frontend's toolbar does (shell channel)."""
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))

    def close(self):
        self._stop.set()
        self._reader.join(5)
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
        assert not self.km.is_alive()


@pytest.fixture
def frontend(env, cluster_id):
    frontend = Frontend(env)
    try:
        yield frontend
    finally:
        frontend.close()


def _sleeping(folder) -> str:
    """Code for engines: say it started (a file in ``folder``), then sleep until interrupted."""
    return (f"import os, time; open(os.path.join({str(folder)!r}, str(os.getpid())), 'w').close();"
            f" time.sleep({_SLEEP})")


def _wait_started(folder, n=2) -> None:
    """Wait until ``n`` engines run the code of :func:`_sleeping` (ipykernel ignores SIGINT between requests)."""
    assert wait_until(lambda: len(os.listdir(folder)) >= n, timeout=_WAIT), os.listdir(folder)


def _connect(frontend, cluster_id) -> str:
    """Make the kernel's Client; the id of the comm the kernel opens for it."""
    content, _out = frontend.execute(f"import ipyparallel_ext as ipp\nrc = ipp.Client(cluster_id={cluster_id!r})")
    assert content["status"] == "ok", content
    opened = frontend.next(lambda m: m["msg_type"] == "comm_open")
    assert opened["content"]["target_name"] == TARGET
    state = opened["content"]["data"]
    assert state == {"type": "state", "engines": 2, "busy": 0, "queued": 0, "autopx": False,
                     "cluster_id": cluster_id, "kernel_busy": False}
    return opened["content"]["comm_id"]


def test_state_and_commands_over_the_kernel_opened_comm(frontend, cluster_id, tmp_path):
    comm_id = _connect(frontend, cluster_id)

    # Work submitted without blocking: busy engines and a queued task, then the toolbar's interrupt.
    content, _out = frontend.execute(f"ar = rc[:].execute({_sleeping(tmp_path)!r})\nar2 = rc[0].apply_async(lambda: 1)")
    assert content["status"] == "ok", content
    frontend.state(comm_id, busy=2, queued=1, engines=2)
    _wait_started(tmp_path)
    frontend.comm_send(comm_id, {"type": "interrupt"})
    frontend.state(comm_id, busy=0, queued=0)
    _content, out = frontend.execute("ar.wait(30); print(ar.done(), type(ar.exception()).__name__)\n"
                                     "print(type(ar2.exception()).__name__)")
    assert out.split() == ["True", "CompositeError", "TaskAborted"]

    # %autopx from the toolbar: cells run on the engines until it is switched off.
    frontend.comm_send(comm_id, {"type": "autopx", "on": True})
    frontend.state(comm_id, autopx=True)
    frontend.execute("on_engines = 42")
    frontend.comm_send(comm_id, {"type": "autopx", "on": False})
    frontend.state(comm_id, autopx=False)
    _content, out = frontend.execute("%px print(on_engines)\nprint('here', 'on_engines' in dir())")
    assert out.count("42") == 2 and "here False" in out, out

    # Typing %autopx is reported too.
    frontend.execute("%autopx")
    frontend.state(comm_id, autopx=True)
    frontend.execute("%autopx")
    frontend.state(comm_id, autopx=False)

    # A message the kernel does not understand gets an error message back, naming it.
    frontend.comm_send(comm_id, {"type": "reboot"})
    error = frontend.next(lambda m: m["msg_type"] == "comm_msg" and m["content"]["data"].get("type") == "error")
    assert "reboot" in error["content"]["data"]["message"]


def test_a_frontend_opens_its_own_comm(frontend, cluster_id):
    _connect(frontend, cluster_id)
    comm_id = uuid.uuid4().hex
    frontend.kc.shell_channel.send(frontend.kc.session.msg(
        "comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": {}}))
    state = frontend.state(comm_id)
    assert (state["engines"], state["cluster_id"]) == (2, cluster_id)
    frontend.comm_send(comm_id, {"type": "autopx", "on": True})
    frontend.state(comm_id, autopx=True)


def test_interrupting_the_kernel_during_a_blocking_px_interrupts_its_engines(frontend, cluster_id, tmp_path):
    comm_id = _connect(frontend, cluster_id)
    start = len(frontend.log)
    msg_id = frontend.kc.execute(f"%px {_sleeping(tmp_path)}")
    frontend.state(comm_id, busy=2, kernel_busy=True)  # the frontend knows to interrupt the kernel
    _wait_started(tmp_path)
    frontend.km.interrupt_kernel()
    reply = frontend.kc.get_shell_msg(timeout=_WAIT)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"  # "run all" stops at this cell
    # The cell shows each engine's own KeyboardInterrupt, raised in its time.sleep.
    out = frontend.outputs(msg_id, start)
    assert out.count("KeyboardInterrupt") >= 2 and "sending SIGINT to engine(s) [0, 1]" in out, out
    frontend.state(comm_id, busy=0, kernel_busy=False)
    # The engines are free again: a new cell runs on them well before their sleep would have ended.
    _content, out = frontend.execute("%px print('free')", timeout=_WAIT)
    assert out.count("free") == 2, out


def test_a_command_on_a_subshell_runs_while_a_cell_runs(frontend, cluster_id, tmp_path):
    # JupyterLab 4.4+ sends comm messages on a kernel subshell of their own (ipykernel 7): the
    # toolbar's interrupt then reaches the kernel during a blocking %px, which ends with the
    # engines' KeyboardInterrupts.
    comm_id = _connect(frontend, cluster_id)
    frontend.kc.control_channel.send(frontend.kc.session.msg("create_subshell_request", {}))
    subshell = frontend.kc.control_channel.get_msg(timeout=_WAIT)["content"]["subshell_id"]
    start = len(frontend.log)
    msg_id = frontend.kc.execute(f"%px {_sleeping(tmp_path)}")
    frontend.state(comm_id, busy=2, kernel_busy=True)
    _wait_started(tmp_path)
    command = frontend.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"type": "interrupt"}})
    command["header"]["subshell_id"] = subshell
    frontend.kc.shell_channel.send(command)
    reply = frontend.kc.get_shell_msg(timeout=_WAIT)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert frontend.outputs(msg_id, start).count("KeyboardInterrupt") >= 2
    frontend.state(comm_id, busy=0, kernel_busy=False)


def test_nothing_happens_outside_a_kernel(cluster_id, env, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", env["JUPYTER_RUNTIME_DIR"])
    threads = {t.name for t in threading.enumerate()}
    with ipp.Client(cluster_id=cluster_id) as rc:
        assert len(rc.ids) == 2
    assert _comm._toolbar is None
    assert "ipyparallel_ext-toolbar" not in threads | {t.name for t in threading.enumerate()}
