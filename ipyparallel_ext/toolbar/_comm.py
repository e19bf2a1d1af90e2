"""The kernel side of the notebook toolbar: a Jupyter comm, target ``ipyparallel_ext.toolbar``.

When the first :class:`~ipyparallel_ext.Client` of an IPython kernel has
connected, :func:`client_connected` opens a comm to the frontend and
registers the same target, so a frontend that loads later (a reloaded page,
a second browser tab) can open one itself; outside a kernel it returns at
once.  One :class:`_Toolbar` per kernel serves every comm::

    publisher thread (every 0.25 s) --call_in_loop--> client's I/O thread: engines, busy, queued
         |  on change, at most 4 a second
         v
    comm.send {"type": "state", "engines", "busy", "queued", "autopx", "cluster_id", "kernel_busy"}

    frontend --comm_msg {"type": "autopx", "on": bool} | {"type": "interrupt"}--> kernel (shell)

The state is the client's own view: ``engines`` it is connected to,
``busy`` engines running a request of this client, ``queued`` tasks of
this client not running yet (waiting on an engine or in the load
balancer); ``kernel_busy`` says a cell is running in the kernel.  It
follows the client the ``%px`` magics are bound to (else the latest one
connected).  ``interrupt`` aborts this client's tasks that have not started
and interrupts the engines running its requests.

Commands arrive on the kernel's shell channel.  A kernel with subshells
(ipykernel 7, JupyterLab 4.4+ sends comm messages on a subshell of their
own) runs them at once, even while a cell runs: interrupting the engines
then ends a blocking ``%px`` with their KeyboardInterrupts.  Without
subshells they wait for the running cell, so while ``kernel_busy`` the
frontend interrupts the kernel itself, and a blocking ``%px`` turns that
KeyboardInterrupt into interrupting its engines (:mod:`.._magics`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref

TARGET = "ipyparallel_ext.toolbar"
PERIOD = 0.25  # seconds between looks at the client, and the shortest gap between two state messages
_SNAPSHOT_TIMEOUT = 5.0  # seconds the I/O thread may take to answer a look (busy with a big message)

log = logging.getLogger("ipyparallel_ext.toolbar")

_toolbar = None  # the kernel's _Toolbar, once a Client connected in it
_lock = threading.Lock()


def _kernel_shell():
    """The running IPython shell if it belongs to an ipykernel kernel, else None (cheap: no imports)."""
    if "ipykernel" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if getattr(shell, "kernel", None) is not None else None


def client_connected(client) -> None:
    """Called by every Client once connected: in a kernel, the toolbar follows it (its comm opens once)."""
    global _toolbar
    shell = _kernel_shell()
    if shell is None:
        return
    try:
        with _lock:
            if _toolbar is None:
                _toolbar = _Toolbar(shell)
            _toolbar.follow(client)
            _toolbar.start()
    except Exception:  # the toolbar is a convenience: never let it fail the Client
        log.warning("the notebook toolbar's comm could not start", exc_info=True)


def _px_magics(shell):
    """The ``%px`` magics (no suffix) of ``shell``, or None."""
    from .. import _magics

    return _magics._registry.get(shell, {}).get("")


class _Toolbar:
    """The kernel's toolbar comms, and the thread that tells them the client's state."""

    def __init__(self, shell):
        self.shell = shell
        self._client = lambda: None  # weak reference to the latest client connected
        self._comms: dict = {}  # comm -> the last state it was sent (None: nothing yet)
        self._comms_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._cells = 0  # cells running now (a cell may run another: %%px --local)

    # -- which client, and its state -------------------------------------------------------

    def follow(self, client) -> None:
        self._client = weakref.ref(client)
        self._wake.set()

    def client(self):
        magics = _px_magics(self.shell)
        if magics is not None and magics.view is not None:
            return magics.view.client
        return self._client()

    def state(self) -> dict:
        """The state message now (any thread but the client's I/O thread)."""
        client = self.client()
        magics = _px_magics(self.shell)
        autopx = magics is not None and magics._autopx is not None
        state = {"type": "state", "engines": 0, "busy": 0, "queued": 0, "autopx": autopx, "cluster_id": None,
                 "kernel_busy": self._cells > 0}
        if client is not None:
            state["engines"], state["busy"], state["queued"] = client.call_in_loop(
                _snapshot, client, timeout=_SNAPSHOT_TIMEOUT)
            state["cluster_id"] = client.cluster.cluster_id if client.cluster is not None else None
        return state

    def _cell_started(self, *args) -> None:
        self._cells += 1
        self._wake.set()

    def _cell_finished(self, *args) -> None:
        self._cells = max(0, self._cells - 1)  # the cell that made the first Client was not counted
        self._wake.set()

    # -- comms ------------------------------------------------------------------------------

    def start(self) -> None:
        """Register the target, open a comm to the frontend and start the publisher (first call only)."""
        if self._thread is not None:
            return
        import comm

        comm.get_comm_manager().register_target(TARGET, self._frontend_opened)
        self.shell.events.register("pre_run_cell", self._cell_started)
        self.shell.events.register("post_run_cell", self._cell_finished)
        state = self._state_or_none()
        self._add(comm.create_comm(target_name=TARGET, data=state or {}), state)
        self._thread = threading.Thread(target=self._publish, name="ipyparallel_ext-toolbar", daemon=True)
        self._thread.start()

    def _frontend_opened(self, comm, open_msg) -> None:
        self._add(comm, None)  # sent the state at the publisher's next look
        self._wake.set()

    def _add(self, comm, sent) -> None:
        # ipykernel 7 sends a frontend's message for a comm to the subshell of the last message
        # the comm published (for widgets' request/reply pairs). Ours publish from a thread, under
        # the running cell's parent (the main shell), which would queue the toolbar's commands
        # behind that very cell: keep the subshell the frontend chose instead.
        comm._reply_subshell_for = lambda data, default: default
        comm.on_msg(self._on_msg)
        comm.on_close(lambda msg, comm=comm: self._remove(comm))
        with self._comms_lock:
            self._comms[comm] = sent

    def _remove(self, comm) -> None:
        with self._comms_lock:
            self._comms.pop(comm, None)

    def _state_or_none(self):
        try:
            return self.state()
        except Exception:  # a client closing meanwhile, an I/O thread too busy: try again next round
            log.debug("toolbar state not available", exc_info=True)
            return None

    def _publish(self) -> None:
        while True:
            self._wake.wait(PERIOD)
            self._wake.clear()
            with self._comms_lock:
                if not self._comms:
                    continue
            state = self._state_or_none()
            if state is None:
                continue
            with self._comms_lock:  # each comm gets what it has not been sent (a new one: all)
                behind = [comm for comm, sent in self._comms.items() if sent != state]
                for comm in behind:
                    self._comms[comm] = state
            if not behind:
                continue
            for comm in behind:
                comm.send(state)
            time.sleep(PERIOD)  # at most one message a PERIOD, however fast things change (or wake-ups come)

    # -- commands from the frontend (the kernel's shell thread) ----------------------------------

    def _on_msg(self, msg) -> None:
        data = msg["content"]["data"]
        kind = data.get("type") if isinstance(data, dict) else None
        try:
            if kind == "autopx":
                self._set_autopx(data.get("on"))
            elif kind == "interrupt":
                self._interrupt()
            else:
                raise ValueError(f"unknown toolbar message {data!r}: expected type 'autopx' or 'interrupt'")
        except Exception as exc:
            with self._comms_lock:
                comm = next((c for c in self._comms if c.comm_id == msg["content"]["comm_id"]), None)
            if comm is not None:
                comm.send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        self._wake.set()

    def _set_autopx(self, on) -> None:
        if not isinstance(on, bool):
            raise ValueError(f"autopx: 'on' must be true or false, got {on!r}")
        magics = _px_magics(self.shell)
        if magics is None or magics.view is None:
            raise ValueError("%autopx needs a Client: none is bound to %px in this kernel")
        if (magics._autopx is not None) != on:
            magics.autopx("")  # what typing %autopx does

    def _interrupt(self) -> None:
        client = self.client()
        if client is None:
            raise ValueError("no Client in this kernel")
        busy = client.call_in_loop(_busy_engines, client, timeout=_SNAPSHOT_TIMEOUT)
        client.abort()  # first, so an interrupted engine does not start the next task
        if busy:
            client.interrupt(busy)


# -- on the client's I/O thread -------------------------------------------------------------


def _outstanding(client) -> dict:
    """``{engine id: tasks of this client sent to it or waiting for it}`` (a batch counts its tasks)."""
    counts = {}
    for eid in client.ids:
        engine = client.engine_connection(eid)
        if engine is not None:
            counts[eid] = [len(r.task or (r,)) for r in engine.inflight.values()], \
                sum(len(r.task or (r,)) for r in engine.queue)
    return counts


def _busy_engines(client) -> list:
    return sorted(eid for eid, (inflight, _queued) in _outstanding(client).items() if inflight)


def _snapshot(client) -> tuple:
    """(engines, busy engines, tasks not running) of ``client``."""
    counts = _outstanding(client)
    busy = sum(1 for inflight, _queued in counts.values() if inflight)
    waiting = sum(sum(inflight) + queued for inflight, queued in counts.values()) - busy
    # The load balancer's tasks not yet given to an engine (ipyparallel's 'unassigned').
    waiting += sum(len(s.unassigned_ids()) for s in client._schedulers)
    return len(client.ids), busy, waiting
