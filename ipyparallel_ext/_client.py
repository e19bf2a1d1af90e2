"""Client: the engine registry, and the one entry point from user threads to the I/O thread.

A Client connects to engine kernels (by connection file or connection info),
keeps the ids of the live ones, and submits :class:`~._record.MessageRecord`\\ s
to them through :meth:`Client.submit`.  Views build the records; the I/O
thread (:mod:`._iothread`, :mod:`._engine`) sends them and completes them.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable

from . import _wire, serialize
from ._engine import EngineConnection
from ._iothread import shared_loop
from ._record import DONE, PENDING, MessageRecord
from ._requests import RequestHistory
from .error import ClientClosed, ConnectionFileError, EngineError, NoEnginesRegistered

log = logging.getLogger("ipyparallel_ext")

_CLOSE_TIMEOUT = 5.0  # seconds close() waits for the I/O thread
_CLUSTER_FILE_CHECK = 1.0  # seconds between looks at a supervised cluster's file (engines joining, leaving)

# Clients still open, closed at interpreter exit (weakly held: a dropped client goes).
_live_clients: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_clients_at_exit() -> None:
    for client in list(_live_clients):
        try:
            client.close()
        except Exception:  # exiting anyway; never let one client stop the others closing
            log.debug("closing a client at exit failed", exc_info=True)


_REQUIRED_KEYS = ("shell_port", "iopub_port", "control_port", "hb_port", "key", "ip")


def load_connection_file(path) -> dict:
    """Read and check a kernel connection file.

    Raises
    ------
    ConnectionFileError
        If the file is missing, is not JSON, or lacks a required field.
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ConnectionFileError(f"connection file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConnectionFileError(f"cannot read connection file {path}: {exc}") from None
    return check_connection_info(info, path)


def check_connection_info(info, source="connection info") -> dict:
    """Check that ``info`` has what is needed to reach a kernel."""
    if not isinstance(info, dict):
        raise ConnectionFileError(f"{source} is not a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in info]
    if missing:
        raise ConnectionFileError(f"{source} lacks {', '.join(missing)}")
    return info


class Client(RequestHistory):
    """A connection to a set of engines (Jupyter kernels).

    Parameters
    ----------
    connection_files : list of path, optional
        Kernel connection files; engine ``i`` is the ``i``-th file.
    connection_info : list of dict, optional
        Connection info dicts, as an alternative to files.
    timeout : float
        Seconds to wait for the engines to connect, as in ipyparallel.  When
        the constructor returns, every engine that answered is in
        :attr:`ids`; one that did not is left out with a warning saying why
        (it joins :attr:`ids` if it answers later).  0 returns at once.
    cluster : Cluster, optional
        Attach to a :class:`Cluster`'s engines (what
        :meth:`Cluster.connect_client` does): engines it starts or restarts
        later join this client too.
    cluster_id : str, optional
        Attach to the running cluster of this id (``ipyparallel-ext cluster
        start``; ``cluster list`` shows them).  With no engines named at all,
        ``Client()`` attaches to the one running cluster, as ipyparallel's
        does; engines that cluster starts later join this client.
    pickler : {'pickle', 'dill', 'cloudpickle'}, optional
        How payloads are pickled (see :meth:`DirectView.use_dill`); by
        default the process-wide choice of ``ipyparallel_ext.use_dill()`` & co.

    Notes
    -----
    Several clients may share engines; each sees only its own results.
    """

    def __init__(self, connection_files=None, connection_info=None, *, timeout=10, cluster=None,
                 cluster_id=None, pickler=None):
        if cluster_id is not None or (cluster is None and connection_files is None and connection_info is None):
            if cluster is not None:
                raise ValueError("pass either cluster= or cluster_id=, not both")
            from .cluster import Cluster  # the cluster package imports this module

            cluster = Cluster.from_file(cluster_id=cluster_id or "")
        infos = [load_connection_file(f) for f in (connection_files or [])]
        infos += [check_connection_info(dict(i)) for i in (connection_info or [])]
        if cluster is not None and infos:
            raise ValueError("pass either cluster= or connection files/info, not both (both number"
                             " their engines from 0)")
        self._cluster = cluster
        self._engine_options = {}
        self._loop = shared_loop()
        self._engines: dict = {}  # id -> EngineConnection; written on the I/O thread
        self._ids: list = []
        self._ids_changed = threading.Condition()
        self._records: dict = {}
        self.history: list = []
        self._pickler = pickler
        self._views: weakref.WeakSet = weakref.WeakSet()  # views whose history purge_results prunes
        self._schedulers: list = []  # load-balancing schedulers to tell about free engines
        self._closed = False
        self._close_lock = threading.Lock()
        self._retiring: set = set()  # connections to engines being stopped on purpose (I/O thread)
        self._known: set = set()  # ids of the engines this client was given (wait_for_engines' n)
        connecting = [self.add_engine(engine_id, info) for engine_id, info in enumerate(infos)]
        if cluster is not None:
            # The cluster adds engines it starts later (and restarted ones) itself.
            self._engine_options = dict(cluster.engine_options)
            connecting += [self.add_engine(engine_id, info, probe)
                           for engine_id, (info, probe) in cluster.attach(self).items()]
        _live_clients.add(self)
        if cluster is not None and cluster.cluster_file is not None and cluster.supervisor:
            self._loop.call_later(_CLUSTER_FILE_CHECK, self._check_cluster_file)
        if timeout:
            self._await_connections(connecting, timeout)
        # Inside IPython the first Client binds %px to a blocking all-engines view, as
        # ipyparallel does; a plain script never pays for importing IPython here.
        if "IPython" in sys.modules:
            from ._magics import activate_first_client
            from .toolbar._comm import client_connected

            activate_first_client(self)
            client_connected(self)  # in a notebook kernel: the toolbar's comm (nothing elsewhere)

    # -- engines ---------------------------------------------------------------------

    def add_engine(self, engine_id: int, info: dict, probe=None):
        """Connect to one more engine (or reconnect a restarted one) under ``engine_id``.

        Returns its :class:`EngineConnection`, which becomes ready (or
        dead) on the I/O thread; nothing happens once the client is closed.
        """
        engine = EngineConnection(self._loop, engine_id, check_connection_info(info), self,
                                  probe=probe, options=self._engine_options)
        self._known.add(engine_id)
        if not self._closed:
            self._loop.call_soon(self._open_engine, engine)
        return engine

    def _check_cluster_file(self) -> None:
        """Follow the cluster file of a supervised cluster: engines that join, leave, or all stop (I/O thread)."""
        if self._closed:
            return
        try:
            alive = self._cluster.refresh()
        except Exception:  # a half-gone file must not end the checks
            log.exception("reading the cluster file %s failed", self._cluster.cluster_file)
            alive = True
        if alive:
            self._loop.call_later(_CLUSTER_FILE_CHECK, self._check_cluster_file)

    def _open_engine(self, engine) -> None:
        if self._closed:  # closed before this connection could open
            return
        old = self._engines.get(engine.id)
        if old is not None and not old.dead_reason:
            self._retiring.add(old)  # replaced on purpose: no death warning
            old.die("was replaced by a new connection")
        self._engines[engine.id] = engine
        try:
            engine.open()
        except Exception as exc:  # e.g. an address zmq cannot connect to
            engine.die(f"could not be connected to: {exc}")

    def _await_connections(self, engines, timeout) -> None:
        """Wait until each of ``engines`` is ready or dead; warn about those that are not ready."""
        if self._loop.in_loop():
            return  # waiting here would stop the very thread that connects them
        self._wait_settled(engines, timeout)
        missing = [e for e in engines if not e.ready]
        if missing and not self._closed:
            why = "; ".join(f"engine {e.id} {self._engine_problem(e)}" for e in missing)
            warnings.warn(f"{len(missing)} of {len(engines)} engines did not connect within"
                          f" timeout={timeout} s and are not in Client.ids: {why}", stacklevel=3)

    def _wait_settled(self, engines, timeout) -> bool:
        """Wait until each connection is ready or dead (or the client closes); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._ids_changed:
            while not self._closed and not all(e.ready or e.dead_reason for e in engines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ids_changed.wait(left)
        return True

    @staticmethod
    def _engine_problem(engine) -> str:
        """Why ``engine`` is not ready, in words that say what to check."""
        if engine.dead_reason:
            return engine.dead_reason
        if engine.ready:
            return "is ready"
        if engine.beats:
            # A heartbeat echo needs no key; a request does, and a kernel drops
            # a request signed with the wrong key without a word.
            return ("answers heartbeats but not requests: it is busy running other code,"
                    " or the key in its connection info is wrong")
        info = engine.info
        return (f"does not answer at {info.get('ip')} (heartbeat port {info.get('hb_port')}):"
                f" the kernel is not running, still starting, or unreachable")

    # Called by EngineConnection on the I/O thread.
    def engine_ready(self, engine) -> None:
        with self._ids_changed:
            self._ids = sorted(set(self._ids) | {engine.id})
            self._ids_changed.notify_all()
        for scheduler in self._schedulers:
            scheduler.engines_changed()

    def engine_dead(self, engine, reason) -> None:
        if engine in self._retiring:
            self._retiring.discard(engine)  # asked for: no warning
        elif not self._closed:
            log.warning("engine %s %s", engine.id, reason)
        with self._ids_changed:
            self._ids = [i for i in self._ids if i != engine.id]
            self._ids_changed.notify_all()
        for scheduler in self._schedulers:
            scheduler.engines_changed()

    def engines_stopping(self, engine_ids, reason: str, *, forget: bool = False) -> None:
        """Engines ``engine_ids`` are being stopped or restarted on purpose.

        Their connections close now; work still outstanding on them fails
        with :class:`EngineError` saying ``reason``.  Called by
        :class:`Cluster` (for every client of its engines) and by
        :meth:`shutdown`; ``forget=True`` (stopped for good) also lowers the
        default ``n`` of :meth:`wait_for_engines`.
        """
        if forget:
            self._known.difference_update(engine_ids)
        if self._closed:
            return

        def on_loop():
            for engine_id in engine_ids:
                engine = self._engines.get(engine_id)
                if engine is not None and not engine.dead_reason:
                    self._retiring.add(engine)
                    engine.die(reason)

        self.call_in_loop(on_loop)

    @property
    def pickler(self) -> str:
        """How payloads are pickled: 'pickle', 'dill' or 'cloudpickle' (see ``use_dill``)."""
        return self._pickler or serialize._process_pickler()

    @pickler.setter
    def pickler(self, name: str) -> None:
        self._pickler = name

    @property
    def io_loop(self):
        """The I/O loop that owns this client's sockets (for components that run on it)."""
        return self._loop

    def get_scheduler(self, factory):
        """This client's scheduler of type ``factory``, made (``factory(client)``) on first use.

        Schedulers run on the I/O thread and are told about engines coming,
        going and freeing up (``engines_changed``, ``engine_free``), aborts
        and queue status.
        """
        with self._ids_changed:
            for scheduler in self._schedulers:
                if isinstance(scheduler, factory):
                    return scheduler
            scheduler = factory(self)
            self._schedulers.append(scheduler)
        self._loop.call_soon(scheduler.engines_changed)
        return scheduler

    def register_view(self, view) -> None:
        """Remember ``view`` so that :meth:`purge_results` also prunes its history."""
        self._views.add(view)

    def engine_free(self, engine) -> None:
        for scheduler in self._schedulers:
            scheduler.engine_free(engine)

    @property
    def ids(self) -> list:
        """Ids of the engines that are connected and alive, sorted."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def wait_for_engines(self, n=None, *, timeout=-1, block=True, interactive=None, widget=None):
        """Wait until at least ``n`` engines are ready (default: every engine this client knows).

        Parameters
        ----------
        n : int, optional
            How many engines to wait for.
        timeout : float
            Seconds; negative waits as long as it takes, as in ipyparallel.
        block : bool
            False returns a :class:`concurrent.futures.Future` at once.
        interactive, widget
            Accepted for ipyparallel's signature; no progress bar is shown
            (engines here connect in well under a second).

        Raises
        ------
        TimeoutError
            If fewer than ``n`` engines are ready after ``timeout`` seconds.
        """
        n = len(self._known) if n is None else n
        if not block:
            future = concurrent.futures.Future()

            def wait():
                try:
                    future.set_result(self.wait_for_engines(n, timeout=timeout))
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    future.set_exception(exc)

            threading.Thread(target=wait, name="ipyparallel_ext-wait_for_engines", daemon=True).start()
            return future
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self._ids_changed:
            while len(self._ids) < n:
                self._check_open()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"{len(self._ids)} of {n} engines ready after {timeout} s"
                        f"{self._engines_note()}"
                    )
                self._ids_changed.wait(left)
        return None

    def _engines_note(self) -> str:
        """Why engines are not ready: dead (and how), or silent (and what to check)."""
        notes = [f"engine {i} {self._engine_problem(e)}" for i, e in sorted(self._engines.items())
                 if not e.ready or e.dead_reason]
        return "".join(f"; {note}" for note in notes)

    def resolve_targets(self, targets) -> list:
        """Turn ``targets`` ('all', None, an id, a list, a slice) into a list of live ids.

        Raises
        ------
        NoEnginesRegistered
            If there are no engines at all.
        IndexError
            If a target is not a live engine.
        """
        self._check_open()  # a closed client has no engines; say why
        ids = self._ids
        if not ids:
            raise NoEnginesRegistered()
        if targets is None or (isinstance(targets, str) and targets == "all"):
            return list(ids)
        if isinstance(targets, slice):
            return list(ids[targets])
        if isinstance(targets, int) and not isinstance(targets, bool):
            if targets < 0:  # counts from the end, as in ipyparallel
                if -targets > len(ids):
                    raise IndexError(f"no engine at index {targets} (engines: {ids})")
                targets = ids[targets]
            targets = [targets]
        if isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable):
            raise TypeError(f"targets must be 'all', an int, a slice or a list of ints, not {targets!r}")
        targets = list(targets)
        for t in targets:
            if not isinstance(t, int) or isinstance(t, bool):
                raise TypeError(f"engine ids are ints, not {t!r}")
            if t not in ids:
                reason = self._engines[t].dead_reason if t in self._engines else None
                if reason:
                    raise EngineError(f"engine {t} {reason}")
                raise IndexError(f"no engine with id {t} (engines: {ids})")
        return targets

    # -- views -------------------------------------------------------------------------

    def __getitem__(self, key):
        """``rc[0]``, ``rc[-1]``, ``rc[:]``, ``rc[::2]``, ``rc[[0, 1]]``: a DirectView."""
        if isinstance(key, int) and not isinstance(key, bool):
            return self.direct_view(self.resolve_targets(key)[0])
        if isinstance(key, (slice, list, tuple, range)):
            return self.direct_view(self.resolve_targets(key))
        raise TypeError(f"index a Client with an int, a slice or a list of ints, not {key!r}")

    def __iter__(self):
        """One single-engine DirectView per engine."""
        for engine_id in self.ids:
            yield self.direct_view(engine_id)

    def direct_view(self, targets="all", **flags):
        """A DirectView on ``targets`` ('all' follows engines as they come and go)."""
        from ._view import DirectView

        return DirectView(self, targets=targets, **flags)

    def load_balanced_view(self, targets=None, **flags):
        """A LoadBalancedView over ``targets`` (default: every engine)."""
        from ._lbview import LoadBalancedView

        return LoadBalancedView(self, targets=targets, **flags)

    # -- ipyparallel 9's broadcast view (owned by the views helper) --------------------

    def broadcast_view(self, targets="all", is_coalescing=False, **flags):
        """A BroadcastView on ``targets``: a DirectView here (see :class:`~._view.BroadcastView`)."""
        from ._view import BroadcastView

        return BroadcastView(self, targets=targets, is_coalescing=is_coalescing, **flags)

    def executor(self, targets=None):
        """A :class:`concurrent.futures.Executor` that load-balances over the engines."""
        return self.load_balanced_view(targets).executor

    def engine_connection(self, engine_id):
        """The EngineConnection of a live engine, or None (I/O thread only; for schedulers)."""
        engine = self._engines.get(engine_id)
        return engine if engine is not None and engine.ready and not engine.dead_reason else None

    # -- submitting work (any thread) --------------------------------------------------------

    def new_record(self, op, record_class=MessageRecord, **kwargs) -> MessageRecord:
        """A record for this client, registered in its history.

        ``record_class`` lets the load-balancing scheduler use its own
        MessageRecord subclass (it decides when a task's record finishes).
        """
        record = record_class(_wire.new_msg_id(), op, pickler=self.pickler, **kwargs)
        self._records[record.msg_id] = record
        self.history.append(record.msg_id)
        return record

    def submit(self, pairs) -> None:
        """Send ``(engine_id, record)`` pairs; the records complete on the I/O thread."""
        self._check_open()
        self._loop.call_soon(self._submit_on_loop, list(pairs))

    def _submit_on_loop(self, pairs) -> None:
        for engine_id, record in pairs:
            engine = self._engines.get(engine_id)
            if engine is None:
                record.finish("error", EngineError(f"no engine with id {engine_id}"))
            else:
                engine.submit(record)

    def call_in_loop(self, fn, *args, timeout=10.0, wait=True):
        """Run ``fn(*args)`` on the I/O thread and return its result.

        With ``wait=False`` it is only scheduled (after everything scheduled
        before it) and None is returned at once.
        """
        if self._loop.in_loop():
            return fn(*args)
        if not wait:
            self._loop.call_soon(fn, *args)
            return None
        future = concurrent.futures.Future()

        def run():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

        self._loop.call_soon(run)
        return future.result(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("this Client is closed")

    def queue_status(self, targets="all", verbose=False) -> dict:
        """Per engine: requests queued and in flight here, and done; plus 'unassigned'."""
        ids = self.resolve_targets(targets)

        def snapshot():
            status = {}
            for eid in ids:
                engine = self._engines[eid]
                # A load-balanced batch request counts as the tasks it carries.
                queued = [t.msg_id for r in (*engine.queue, *engine.inflight.values())
                          for t in (r.task or (r,))]
                status[eid] = {"queue": queued, "tasks": []}
            unassigned = []
            for scheduler in self._schedulers:
                unassigned += scheduler.unassigned_ids()
            return status, unassigned

        status, unassigned = self.call_in_loop(snapshot)
        completed = {eid: [] for eid in ids}
        for msg_id, record in list(self._records.items()):
            if record.state == DONE and record.engine_id in completed:
                completed[record.engine_id].append(msg_id)
        for eid in ids:
            status[eid]["completed"] = completed[eid]
        if not verbose:
            status = {eid: {k: len(v) for k, v in s.items()} for eid, s in status.items()}
            unassigned = len(unassigned)
        status["unassigned"] = unassigned
        if isinstance(targets, int) and not isinstance(targets, bool):
            return status[ids[0]]  # one engine named by its id: its own status, as in ipyparallel
        return status

    def abort(self, jobs=None, targets=None, block=None) -> None:
        """Abort requests that have not started; they raise :class:`TaskAborted`.

        Work already running is not touched (interrupt it with
        :meth:`interrupt` or give it a ``time_limit``).
        """
        records = self._records_for(jobs) if jobs is not None else None
        engine_ids = None if targets is None else set(self.resolve_targets(targets))

        def on_loop():
            wanted = None if records is None else {r.msg_id for r in records}
            for scheduler in self._schedulers:
                scheduler.abort(wanted, engine_ids)
            for eid, engine in list(self._engines.items()):
                if engine_ids is not None and eid not in engine_ids:
                    continue
                engine.abort(wanted if wanted is not None else [r.msg_id for r in engine.queue])

        self.call_in_loop(on_loop)

    def interrupt(self, targets=None) -> None:
        """Interrupt whatever the engines are running (KeyboardInterrupt there)."""
        ids = self.resolve_targets(targets)
        self.call_in_loop(lambda: [self._engines[i].send_control("interrupt_request") for i in ids])

    def send_signal(self, sig, targets=None, block=None) -> None:
        """Send signal ``sig`` (a number or a name such as ``'SIGTERM'``) to the engines' processes.

        SIGINT is an :meth:`interrupt` (works for any kernel); other signals
        need engines started by this client's :class:`Cluster`.  The signal
        is sent before this returns, whatever ``block`` says.
        """
        ids = self.resolve_targets(targets)
        if isinstance(sig, str):  # a name, for portability (as ipyparallel allows)
            sig = _signal_number(sig)
        if sig == signal.SIGINT:
            self.interrupt(ids)
        elif self._cluster is not None and self._cluster.owns(self):
            self._cluster.signal_engines_sync(sig, ids)
        else:
            raise ValueError(f"cannot send signal {sig} to engines not started by a Cluster (only SIGINT)")

    def activate(self, targets="all", suffix=""):
        """A blocking DirectView on ``targets``, bound to the %px magics (names + ``suffix``)."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view

    def shutdown(self, targets="all", restart=False, hub=False, block=None) -> None:
        """Stop (or restart) engines; with ``hub=True`` stop all of them and close."""
        if hub:
            targets = "all"
        owned = self._cluster is not None and self._cluster.owns(self)
        if owned and restart:
            # A dead engine is what one most wants to restart: its Cluster
            # still knows it, so resolve against the Cluster's engines.
            known = sorted(self._cluster.engines)
            if targets is None or targets == "all":
                ids = known
            else:
                ids = [targets] if isinstance(targets, int) else list(targets)
                unknown = [i for i in ids if i not in known]
                if unknown:
                    raise IndexError(f"no engine with id {unknown[0]} in this cluster (engines: {known})")
        else:
            ids = self.resolve_targets(targets) if self._ids else []
        if owned:
            if restart:
                self._cluster.restart_engines_sync(ids)
                if block or block is None:
                    self._wait_ready(ids, self._cluster.engine_timeout)
            else:
                self._cluster.stop_engines_sync(ids)
        else:
            if restart:
                raise ValueError("restart needs engines started by a Cluster (attached kernels have no manager)")
            self.call_in_loop(lambda: [self._engines[i].send_control("shutdown_request", {"restart": False})
                                       for i in ids])
            # No process to watch here: stop using them now rather than when heartbeats stop.
            self.engines_stopping(ids, "was shut down", forget=True)
        if hub:
            self.close()

    def _wait_ready(self, engine_ids, timeout) -> None:
        """Wait until the current connections to ``engine_ids`` are ready (e.g. after a restart)."""
        engines = self.call_in_loop(lambda: [self._engines[i] for i in engine_ids])
        if not self._wait_settled(engines, timeout):
            raise TimeoutError(f"engines {list(engine_ids)} not ready {timeout} s after restarting"
                               f"{self._engines_note()}")

    def spin(self) -> None:
        """Kept for compatibility: the I/O thread processes messages continuously."""

    def close(self, linger=None) -> None:
        """Disconnect from every engine (the engines keep running).

        Safe at any moment and from any thread (the I/O thread and
        done-callbacks included), twice, and at interpreter exit.  Work
        still outstanding fails: sent or queued on an engine with
        :class:`EngineError` ("... client closed"), not yet sent by the
        load balancer with :class:`ClientClosed`.  ``linger`` is accepted for
        ipyparallel's signature: nothing waits to be flushed, since the
        outstanding work fails anyway.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _live_clients.discard(self)
        with self._ids_changed:
            self._ids_changed.notify_all()  # a constructor or wait_for_engines waiting on us
        if not self._loop.is_alive():
            # The I/O thread has stopped (interpreter exit): nobody else
            # touches these sockets any more, so close them here.
            self._close_on_loop()
            return
        try:
            self.call_in_loop(self._close_on_loop, timeout=_CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("the I/O thread did not close this client's connections within %s s", _CLOSE_TIMEOUT)

    def _close_on_loop(self) -> None:
        error = ClientClosed("the Client was closed before this task was sent to an engine")
        for record in list(self._records.values()):
            # Load-balanced tasks still in the scheduler first: closing the
            # engines would otherwise fail them as having no engine left.
            if record.state == PENDING and hasattr(record, "settle"):
                record.settle("error", error)
        for engine in list(self._engines.values()):
            engine.close()  # its queued and running work: EngineError("... client closed")
        for record in list(self._records.values()):
            if record.state != DONE:  # queued nowhere any more
                record.finish("error", error)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<ipyparallel_ext.Client: {len(self._ids)} engines>"

    # ======================================================================================
    # ipyparallel 9.2's Client API, continued: namespaces, purging, the Hub's database.
    # There is no Hub: each method either works on this client's own records or raises
    # an error that says what to do instead.
    # ======================================================================================

    block = False  # the default of ``block`` where a method takes one, as ipyparallel's Client.block

    @property
    def cluster(self):
        """The :class:`Cluster` whose engines this client was connected to, or None."""
        return self._cluster

    def clear(self, targets=None, block=None):
        """Clear the engines' namespaces (``%reset``: every user variable is deleted).

        Returns an AsyncResult, or None once done when ``block`` (default
        :attr:`block`) is true.
        """
        ar = self.direct_view(targets if targets is not None else "all").clear(block=False)
        if not (self.block if block is None else block):
            return ar
        ar.get()
        return None

    def spin_thread(self, interval=1) -> None:
        """Kept for compatibility (deprecated in ipyparallel): the I/O thread always runs."""

    def stop_spin_thread(self) -> None:
        """Kept for compatibility (deprecated in ipyparallel): the I/O thread always runs."""

    def become_dask(self, targets="all", port=0, nanny=False, scheduler_args=None, **worker_args):
        """Not available yet: ipyparallel runs the dask scheduler in its Hub, and we have none.

        Raises
        ------
        NotImplementedError
            Always; start a dask cluster directly (``distributed.LocalCluster``).
        """
        raise NotImplementedError(_NO_DASK)

    become_distributed = become_dask

    def stop_dask(self, targets="all"):
        """Not available yet (see :meth:`become_dask`)."""
        raise NotImplementedError(_NO_DASK)

    stop_distributed = stop_dask


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise ValueError(f"no signal named {name!r} on this platform") from None


_NO_DASK = ("become_dask needs a dask scheduler, which ipyparallel runs in its Hub; ipyparallel_ext has no Hub"
            " and no dask integration yet: start a dask cluster directly (distributed.LocalCluster)")


