"""The supervisor of a cluster that outlives notebooks (``ipyparallel-ext cluster start``).

It is an ordinary :class:`Cluster` in a process of its own, plus a control
channel: a zmq REP socket on 127.0.0.1 whose address and key are in the
cluster file (0600: only this user can read them).  Requests and answers
are JSON: ``{"key": ..., "op": "add" | "scale" | "stop_engines" |
"restart_engines" | "stop" | "status", ...}`` -> ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``.  SIGTERM, SIGINT (Ctrl-C) and ``stop``
stop every engine and remove the cluster file; if the supervisor itself is
killed, its engines exit on their own (ipykernel's parent poller, armed by
jupyter_client's ``JPY_PARENT_PID``) and ``cluster list`` removes the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import time

import zmq

from . import _files
from ._cluster import Cluster

_POLL = 0.2  # seconds between looks at the control socket, stop flag and engine states
_SET_STATUS_POLL = 1.0  # seconds between asking launchers for their sets' status (Slurm asks squeue)

log = logging.getLogger("ipyparallel_ext.supervisor")


class ControlError(RuntimeError):
    """The supervisor refused a request, or did not answer it in time."""


def request(supervisor: dict, op: str, timeout: float = 30.0, **args) -> dict:
    """Send one control request to a cluster's supervisor and return its answer.

    Raises
    ------
    ControlError
        The supervisor said no (its reason), or did not answer within ``timeout``.
    """
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(supervisor["control"])
        sock.send_json({"key": supervisor["key"], "op": op, **args})
        if not sock.poll(timeout * 1000):
            raise ControlError(f"the cluster's supervisor (pid {supervisor.get('pid')}) did not answer"
                               f" {op!r} within {timeout} s")
        answer = sock.recv_json()
    finally:
        sock.close()
    if not answer.get("ok"):
        raise ControlError(answer.get("error", f"{op!r} failed"))
    return answer


def stop_supervised(supervisor: dict, wait: float = 30.0) -> None:
    """Stop a supervised cluster and return once its supervisor has exited.

    Asks it to ``stop`` (SIGTERM if it does not answer: its handler stops
    the engines too), waits up to ``wait`` seconds for it to stop its
    engines and exit, then kills it (its engines follow it: their parent
    poller).  A supervisor on another host is only asked.
    """
    pid = supervisor["pid"]
    local = supervisor.get("host") == socket.gethostname()
    try:
        request(supervisor, "stop", timeout=5.0)
    except ControlError:
        if not local:
            raise
        os.kill(pid, signal.SIGTERM)
    if not local:
        return
    deadline = time.monotonic() + wait
    while _files.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _files.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


class Supervisor:
    """Runs a :class:`Cluster` and answers control requests until it is stopped."""

    def __init__(self, cluster: Cluster, on_ready=None):
        self.cluster = cluster
        self._on_ready = on_ready
        self.stopping = False
        self._key = secrets.token_hex(16)
        self._sock = zmq.Context.instance().socket(zmq.REP)
        self._sock.linger = 0
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        cluster.supervisor = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": time.time(),
                              "control": f"tcp://127.0.0.1:{port}", "key": self._key}

    def run(self) -> int:
        """Start the engines, serve requests until stopped, stop the engines; the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_signal)
        try:
            self.cluster.start_cluster_sync()
            log.info("cluster %s: %d engines, file %s", self.cluster.cluster_id, len(self.cluster.engines),
                     self.cluster.cluster_file)
            if self._on_ready is not None:
                self._on_ready(self.cluster)
            states = self._states()
            set_status, asked = self.cluster.engine_set_status(), time.monotonic()
            while not self.stopping:
                if self._sock.poll(_POLL * 1000):
                    self._serve_one()
                now = self._states()
                changed = now != states  # an engine died (or came back): tell attached clients
                if time.monotonic() - asked >= _SET_STATUS_POLL:
                    # A set's state (a Slurm job pending, mpiexec gone) shows in `cluster list`.
                    asked, before, set_status = time.monotonic(), set_status, self.cluster.engine_set_status()
                    changed = changed or set_status != before
                if changed:
                    states = now
                    self.cluster.update_cluster_file()
        finally:
            self._sock.close()
            self.cluster.stop_cluster_sync()
        # Stopped cleanly: nothing to read in a daemon's log (a crash or a kill leaves it until `list`).
        with contextlib.suppress(FileNotFoundError):
            os.remove(_files.log_file_path(self.cluster.cluster_id))
        return 0

    def _stop_signal(self, signum, frame) -> None:
        self.stopping = True

    def _states(self) -> dict:
        return {eid: self.cluster._engine_state(eid) for eid in list(self.cluster.engines)}

    def _serve_one(self) -> None:
        try:
            req = self._sock.recv_json()
        except ValueError:
            self._sock.send_json({"ok": False, "error": "not JSON"})
            return
        if not isinstance(req, dict) or not secrets.compare_digest(str(req.get("key")), self._key):
            self._sock.send_json({"ok": False, "error": "wrong key"})
            return
        try:
            answer = self._handle(req.get("op"), req)
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self._sock.send_json(answer)

    def _handle(self, op, req) -> dict:
        cluster = self.cluster
        if op == "status":
            return {"ok": True, "engines": sorted(cluster.engines)}
        if op == "add":
            set_id = cluster.start_engines_sync(req.get("n"), req.get("engine_set_id"))
            return {"ok": True, "engine_set_id": set_id, "engines": sorted(cluster.engines)}
        if op == "scale":
            n = int(req["n"])
            if n < 0:
                raise ValueError(f"cannot scale to {n} engines")
            ids = sorted(cluster.engines)
            if n > len(ids):
                cluster.start_engines_sync(n - len(ids))
            elif n < len(ids):
                cluster.stop_engines_sync(ids[n:])  # the newest go first
            return {"ok": True, "engines": sorted(cluster.engines)}
        if op == "stop_engines":
            cluster.stop_engines_sync(list(req["ids"]))
            return {"ok": True, "engines": sorted(cluster.engines)}
        if op == "restart_engines":
            cluster.restart_engines_sync(list(req["ids"]))
            return {"ok": True, "engines": sorted(cluster.engines)}
        if op == "stop":
            self.stopping = True
            return {"ok": True}
        raise ValueError(f"unknown request {op!r}")


def supervise(n=None, cluster_id=None, kernel_name=None, restart_engines=False, engine_timeout=60,
              on_ready=None, engines=None, launcher_options=None) -> int:
    """Run a supervised cluster in this process until it is stopped (``cluster start``'s body).

    ``on_ready(cluster)`` is called once its engines run; ``engines`` and
    ``launcher_options`` are :class:`Cluster`'s (``--engines``,
    ``--launcher-option``).

    Raises
    ------
    ValueError
        A cluster with ``cluster_id`` is already running.
    """
    running = _files.running_cluster_files()
    if cluster_id is not None and cluster_id in running:
        raise ValueError(f"a cluster with id {cluster_id!r} is already running (stop it first:"
                         f" `ipyparallel-ext cluster stop --cluster-id {cluster_id}`)")
    cluster = Cluster(n, kernel_name, cluster_id=cluster_id, auto_restart=restart_engines,
                      engine_timeout=engine_timeout, engines=engines, launcher_options=launcher_options)
    cluster.cluster_file = _files.cluster_file_path(cluster.cluster_id)
    return Supervisor(cluster, on_ready).run()


def main(argv=None) -> int:
    """``python -m ipyparallel_ext.cluster._supervisor`` = ``ipyparallel-ext cluster start``."""
    from .._cli import main as cli

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return cli(["cluster", "start", *(argv or [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
