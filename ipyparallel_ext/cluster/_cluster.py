"""Cluster: ipyparallel 9's Cluster API over engine kernels started by a launcher.

Engines are started by a launcher (:mod:`._launcher`: local kernels through
:class:`jupyter_client.AsyncKernelManager`, so any kernelspec and kernel
provisioner works, or MPI, Slurm, SSH), in engine sets (one per
:meth:`Cluster.start_engines` call, ids never reused), on a private event
loop thread (:mod:`._local`); every async method runs there whoever
awaits it, and its ``*_sync`` twin blocks on it (inside a notebook's running
loop too).  Clients attach to a cluster (:meth:`Cluster.attach`) and are
told about engines started, restarted and stopped later.  With
``auto_restart=True`` a watcher restarts an engine whose process dies.
Engines die with the Python process that started them (jupyter_client's
``JPY_PARENT_PID`` poller) and are stopped at exit if the user forgot;
:meth:`Cluster.to_dict` lets another process attach to them meanwhile.

A cluster that outlives notebooks is this same class run by a supervisor
process (:mod:`._supervisor`, ``ipyparallel-ext cluster start``) that keeps
its cluster file (:mod:`._files`) up to date; :meth:`Cluster.from_file` in
any other process reads that file, scales and stops the cluster through the
supervisor, and its clients follow the file (:meth:`Cluster.refresh`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
import weakref

from .._client import Client, load_connection_file
from .._engine import describe_exit
from ._local import ENGINE_ARGS as ENGINE_ARGS  # the CLI's kernelspec uses them
from ._launcher import LaunchContext, Launcher, launcher_class, make_launcher
from ._local import ENGINE_KERNEL_NAME, AttachedEngine, AttachedEngineSet, EngineSpecManager, LoopThread
from ._local import kernel_pid, start_slot_count
from ..error import EngineStartError
from . import _files

# What clients tell the helpers in engines this module started (stock ipykernel, our args).
_ENGINE_OPTIONS = {"execute_sleep": 0, "skip_empty_flushes": True, "skip_unused_log_records": True,
                   "defer_busy_wakeups": 0.02}
_STOP_WAIT = 30.0  # seconds stopping engines may take, beyond starting ones' engine_timeout
_WATCH_PERIOD = 0.25  # how often auto_restart polls an engine's process
_FLAP_SECONDS = 10.0  # a death this soon after a (re)start counts towards giving up
_FLAP_LIMIT = 3  # auto_restart gives up after this many such deaths in a row

_live_clusters: weakref.WeakSet = weakref.WeakSet()


def _check_ipp_options(engines, engine_launcher_class, controller, controller_launcher_class,
                       config, ignored: dict) -> None:
    """Apply the policy for ipyparallel's Cluster arguments that have no meaning here.

    The launcher itself is resolved by :func:`._launcher.make_launcher`
    (an unknown or unsupported one raises); a controller option or a
    profile that asks for something warns (there is no controller and no
    profile, so ignoring it changes nothing the user can see).
    """
    if engines is not None and engine_launcher_class is not None:
        raise TypeError("Only specify one of 'engines' or 'engine_launcher_class', not both")
    if controller is not None and controller_launcher_class is not None:
        raise TypeError("Only specify one of 'controller' or 'controller_launcher_class', not both")
    if config:
        raise NotImplementedError(
            "Cluster(config=...): traitlets configuration is not read; pass the options as"
            " arguments (n=, engine_timeout=, kernel_name=, ...)")
    if controller is not None or controller_launcher_class is not None:
        ignored["controller"] = controller if controller is not None else controller_launcher_class
    for name, value in ignored.items():
        if not value:  # None, '', [], 0, False: asks for nothing we would fail to do
            continue
        why = ("there is no controller: clients talk to the engines directly"
               if name.startswith("controller") or name in ("delay", "send_engines_connection_env")
               else "no IPython profile is read")
        warnings.warn(f"Cluster({name}={value!r}) is ignored: {why}", stacklevel=3)


def _blocking(method):
    """The blocking twin of an async Cluster method: ``start_engines_sync = _blocking(start_engines)``."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        n = kwargs.get("n", args[0] if args and isinstance(args[0], int) else None)  # engines it may start
        return self._run(method(self, *args, **kwargs), starting=n)

    run.__name__ = run.__qualname__ = f"{method.__name__}_sync"
    run.__doc__ = f"Blocking :meth:`{method.__name__}` (works inside a running event loop too)."
    return run


def _on_cluster_loop(method):
    """Run an async Cluster method on the cluster's own loop thread, whoever awaits it.

    Every kernel manager then lives on one loop, whether the method is
    awaited in a notebook's loop or called through its ``_sync`` twin.
    """

    @functools.wraps(method)
    async def run(self, *args, **kwargs):
        coro = method(self, *args, **kwargs)
        loop = self._loop_thread().loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    return run


class Cluster:
    """A set of local engine kernels, with ipyparallel 9's Cluster API.

    Parameters
    ----------
    n : int, optional
        How many engines :meth:`start_cluster` starts (default: the number of CPUs).
    kernel_name : str, optional
        The kernelspec to start engines with (default: the built-in engine
        spec for this Python; any installed kernelspec works, e.g. 'python3').
    cluster_id : str, optional
        Names the folder that holds the engines' connection files.
    engine_timeout : float
        Seconds an engine may take to start and connect.
    ip : str
        Interface the engines listen on (default 127.0.0.1, loopback only).
    env : dict, optional
        Extra environment variables for the engines.
    shutdown_atexit : bool
        Stop the engines when this Python exits (default True).
    auto_restart : bool
        Restart a local engine whose process dies, under the same id; its
        clients reconnect to it, and a warning says its namespace is gone.
        Work that was on it fails with :class:`EngineError` all the same.
    log_level : int, optional
        Level of this cluster's logger (``ipyparallel_ext.cluster.<id>``).
    log : logging.Logger, optional
        A logger to use instead.
    engines, engine_launcher_class : str or Launcher, optional
        Where engines run: ``'local'`` (default), ``'mpi'``, ``'slurm'``,
        ``'ssh'`` (ipyparallel's class names work too), or a configured
        :class:`~ipyparallel_ext.cluster.Launcher` instance.
    launcher_options : dict, optional
        Options of the launcher named by ``engines`` (e.g. ``{"hosts":
        {"node1": 4}}`` for ssh); beyond ipyparallel, which reads them from
        traitlets config.
    controller, controller_launcher_class, controller_ip, controller_location, controller_args, delay, send_engines_connection_env
        ipyparallel's controller options: there is no controller, so these
        are ignored with a warning.
    profile, profile_dir, load_profile, parent
        ipyparallel's profile options: no profile is read (ignored with a
        warning); ``config`` raises, since settings in it would be lost.
    cluster_file : path, optional
        Where to keep :meth:`to_dict` as JSON while engines run (read it
        back with :meth:`from_file`).

    Examples
    --------
    >>> with ipp.Cluster(n=2) as rc:
    ...     rc[:].apply_sync(os.getpid)
    """

    def __init__(self, n=None, kernel_name=None, *, cluster_id=None, engine_timeout=60, ip="127.0.0.1",
                 env=None, shutdown_atexit=True, auto_restart=False, log_level=None, log=None,
                 cluster_file=None, engines=None, engine_launcher_class=None, controller=None,
                 controller_launcher_class=None, controller_ip=None, controller_location=None,
                 controller_args=None, delay=None, send_engines_connection_env=None, profile=None,
                 profile_dir=None, load_profile=None, parent=None, config=None, launcher_options=None):
        _check_ipp_options(engines, engine_launcher_class, controller, controller_launcher_class, config, {
            "controller_ip": controller_ip, "controller_location": controller_location,
            "controller_args": controller_args, "delay": delay,
            "send_engines_connection_env": send_engines_connection_env, "profile": profile,
            "profile_dir": profile_dir, "load_profile": load_profile, "parent": parent})
        self.launcher: Launcher = make_launcher(engines if engines is not None else engine_launcher_class,
                                                launcher_options)
        self.n = n
        self.kernel_name = kernel_name or ENGINE_KERNEL_NAME
        self.cluster_id = cluster_id or uuid.uuid4().hex[:8]
        self.engine_timeout = engine_timeout
        self.ip = ip
        self.env = dict(env or {})
        self.shutdown_atexit = shutdown_atexit
        self.auto_restart = auto_restart
        self.cluster_file = os.fspath(cluster_file) if cluster_file is not None else None
        self.log = log or logging.getLogger(f"ipyparallel_ext.cluster.{self.cluster_id}")
        if log_level is not None:
            self.log.setLevel(log_level)
        self.engines: dict = {}  # engine id -> its launcher's handle (an AsyncKernelManager for local ones)
        self.engine_sets: dict = {}  # engine set id (start_engines' return value) -> engine ids
        self._sets: dict = {}  # engine set id -> the EngineSet its launcher returned
        self.engine_options = dict(_ENGINE_OPTIONS)  # what clients tell our engines' helpers
        self._next_id = 0  # engine ids are never reused, as in ipyparallel
        self._clients: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()  # engines and clients change together (attach vs. announce)
        self._runner = None
        self._folder = None
        self._watched: dict = {}  # engine id -> the process its auto-restart watcher watches
        self._flaps: dict = {}  # engine id -> deaths soon after a restart, in a row
        self._spec_manager = EngineSpecManager()
        # A supervised cluster's supervisor ({pid, host, start_time, control, key}): set in the
        # supervisor itself, and read from the cluster file by from_dict elsewhere.
        self.supervisor = None
        self._file_stamp = None  # (mtime_ns, size, inode) of the cluster file last read (from_dict)
        self._refreshing = threading.Lock()  # one refresh at a time (clients' ticks, scaling calls)

    @property
    def engine_launcher_class(self) -> str:
        """The launcher's name ("local", "mpi", "slurm", "ssh"), ipyparallel's attribute."""
        return self.launcher.name

    @property
    def log_level(self) -> int:
        """The level of this cluster's logger."""
        return self.log.level

    @property
    def engine_set(self):
        """The ids of the first engine set (most clusters have one), or None, as in ipyparallel."""
        return next(iter(self.engine_sets.values()), None)

    def __repr__(self) -> str:
        return f"<Cluster {self.cluster_id}: {len(self.engines)} engines ({self.kernel_name})>"

    @property
    def connection_files(self) -> list:
        """The engines' connection files, in engine id order."""
        return [self.engines[i].connection_file for i in sorted(self.engines)]

    def _loop_thread(self) -> LoopThread:
        if self._runner is None:
            self._runner = LoopThread()
        return self._runner

    def _run(self, coro, starting=None):
        # Local engines start start_slot_count() at a time, each within engine_timeout: a call that
        # starts (or restarts) many engines may take that many rounds.
        n = max(starting or 0, self.n or 0, len(self.engines))
        rounds = max(1, math.ceil(n / start_slot_count()))
        return self._loop_thread().run(coro, timeout=self.engine_timeout * rounds + _STOP_WAIT)

    # -- the engine-source protocol, for Clients ---------------------------------------

    def attach(self, client) -> dict:
        """Register ``client`` and return ``{engine_id: (connection_info, probe)}`` of the engines now.

        Engines started or restarted later are added to the client with
        ``client.add_engine``; engines stopped are announced with
        ``client.engines_stopping``.
        """
        with self._lock:
            self._clients.add(client)
            return {eid: (self._info(eid), self._probe(eid)) for eid in sorted(self.engines)}

    def owns(self, client) -> bool:
        """True if ``client`` is attached to this cluster."""
        return client in self._clients

    def _announce(self, engine_ids) -> None:
        """Tell every attached client about (re)started engines (call with ``self._lock`` held)."""
        for client in list(self._clients):
            for eid in engine_ids:
                client.add_engine(eid, self._info(eid), self._probe(eid))

    def _stopping(self, engine_ids, reason, forget=False) -> None:
        for client in list(self._clients):
            client.engines_stopping(engine_ids, reason, forget=forget)

    def _info(self, engine_id: int) -> dict:
        return load_connection_file(self.engines[engine_id].connection_file)

    def _set_of(self, engine_id: int):
        """The EngineSet engine ``engine_id`` belongs to."""
        for set_id, ids in self.engine_sets.items():
            if engine_id in ids:
                return self._sets[set_id]
        raise KeyError(f"no engine with id {engine_id} in this cluster (engines: {sorted(self.engines)})")

    def _probe(self, engine_id: int):
        return self._set_of(engine_id).probe(engine_id)

    def _engine_state(self, engine_id: int) -> str:
        """'running' or 'dead', as far as this process can tell."""
        return self._set_of(engine_id).state(engine_id)

    def _ids(self, engine_set_id) -> list:
        """Engine ids named by an engine set id, an engine id, a list of them, or None (all)."""
        if engine_set_id is None:
            return sorted(self.engines)
        if isinstance(engine_set_id, str):
            if engine_set_id not in self.engine_sets:
                raise KeyError(f"no engine set {engine_set_id!r} in this cluster"
                               f" (engine sets: {sorted(self.engine_sets)})")
            return list(self.engine_sets[engine_set_id])
        ids = [engine_set_id] if isinstance(engine_set_id, int) else list(engine_set_id)
        unknown = [i for i in ids if i not in self.engines]
        if unknown:
            raise KeyError(f"no engine with id {unknown[0]} in this cluster (engines: {sorted(self.engines)})")
        return ids

    # -- starting ----------------------------------------------------------------------

    @_on_cluster_loop
    async def start_engines(self, n=None, engine_set_id=None, **kwargs):
        """Start ``n`` more engines; grow a running cluster.

        ``n`` defaults to ``self.n``, else what the launcher's options say
        (:meth:`Launcher.default_n`: every ssh host slot), else the number of CPUs.

        New engines get the next ids and join every client of this cluster.
        ``kwargs`` are ipyparallel's per-call launcher options, which no
        launcher here takes (any raise TypeError): configure the launcher on
        the Cluster (``engines=``, ``launcher_options=``).

        Returns
        -------
        str
            The engine set id, for :meth:`stop_engines` and friends.
        """
        if kwargs:
            raise TypeError(f"start_engines() got launcher options {sorted(kwargs)}: engines are configured"
                            f" on the Cluster (kernel_name=, env=, ip=, engines=, launcher_options=)")
        if self._supervised_elsewhere:
            answer = await asyncio.to_thread(self._control, "add", n=n, engine_set_id=engine_set_id)
            return answer["engine_set_id"]
        if n is None:
            n = self.n if self.n is not None else (self.launcher.default_n() or os.cpu_count() or 1)
        if engine_set_id is None:
            engine_set_id = f"{int(time.time())}-{uuid.uuid4().hex[:4]}"
        elif engine_set_id in self.engine_sets:
            raise ValueError(f"engine set {engine_set_id!r} is running; stop it first or pick another id")
        if self._folder is None:
            runtime = os.path.join(tempfile.gettempdir(), f"ipyparallel_ext-{os.getuid()}")
            os.makedirs(runtime, mode=0o700, exist_ok=True)
            self._folder = tempfile.mkdtemp(prefix=f"cluster-{self.cluster_id}-", dir=runtime)
        _live_clusters.add(self)
        ids = list(range(self._next_id, self._next_id + n))
        self._next_id += n
        ctx = LaunchContext(cluster_id=self.cluster_id, folder=self._folder, engine_ids=ids,
                            set_id=engine_set_id, kernel_name=self.kernel_name,
                            spec_manager=self._spec_manager, ip=self.ip, env=dict(self.env),
                            timeout=self.engine_timeout, log=self.log)
        try:
            engine_set = await self.launcher.start(ctx)
        except EngineStartError:
            raise
        except Exception as e:  # a launcher's own failure, named as a start failure
            raise EngineStartError(f"{self.launcher.name} launcher failed to start {n} engines: {e}") from e
        with self._lock:
            self.engines.update(engine_set.engines)
            self.engine_sets[engine_set_id] = ids
            self._sets[engine_set_id] = engine_set
            self._announce(ids)
        for i in ids:
            self._watch(i)
        self.update_cluster_file()
        self.log.info("started engines %s (engine set %s)", ids, engine_set_id)
        return engine_set_id

    start_engines_sync = _blocking(start_engines)

    @_on_cluster_loop
    async def start_cluster(self, n=None):
        """Start ``n`` engines (default ``self.n``), all at once; returns ``self`` for chaining."""
        await self.start_engines(n)
        return self

    start_cluster_sync = _blocking(start_cluster)

    async def start_controller(self, **kwargs):
        """There is no controller to start: clients talk to the engines directly (does nothing)."""
        self.start_controller_sync(**kwargs)

    def start_controller_sync(self, **kwargs):
        """There is no controller to start (does nothing; controller options warn that they are ignored)."""
        if kwargs:
            warnings.warn(f"start_controller({', '.join(sorted(kwargs))}) is ignored: there is no"
                          f" controller, clients talk to the engines directly", stacklevel=2)

    async def stop_controller(self):
        """There is no controller to stop (does nothing)."""

    def stop_controller_sync(self):
        """There is no controller to stop (does nothing)."""

    # -- clients -------------------------------------------------------------------------

    def connect_client_sync(self, **client_kwargs) -> Client:
        """A new :class:`Client` on this cluster's engines (several may share them).

        It returns once every engine is connected (or after ``timeout``,
        default :attr:`engine_timeout`, with a warning naming the missing
        ones); engines this cluster starts or restarts later join it.
        """
        client_kwargs.setdefault("timeout", self.engine_timeout)
        return Client(cluster=self, **client_kwargs)

    async def connect_client(self, **client_kwargs) -> Client:
        """Async :meth:`connect_client_sync` (the connect wait runs in a worker thread)."""
        return await asyncio.to_thread(self.connect_client_sync, **client_kwargs)

    def start_and_connect_sync(self, n=None, activate=False) -> Client:
        """Start engines and return a Client connected to all of them.

        With ``activate=True`` the %px magics are bound to a blocking view of all engines.
        """
        self.start_cluster_sync(n)
        return self._activated(self.connect_client_sync(), activate)

    async def start_and_connect(self, n=None, activate=False) -> Client:
        """Async :meth:`start_and_connect_sync`."""
        await self.start_cluster(n)
        return self._activated(await self.connect_client(), activate)

    @staticmethod
    def _activated(client, activate):
        if activate:
            client.activate()
        return client

    # -- restarting, signalling and stopping ------------------------------------------------

    @_on_cluster_loop
    async def restart_engines(self, engine_set_id=None):
        """Restart engines (default: all) under the same ids; clients reconnect to them.

        ``engine_set_id`` is an engine set id (from :meth:`start_engines`),
        or, beyond ipyparallel, an engine id or a list of them.
        """
        await self._restart(self._ids(engine_set_id), "was restarted")

    restart_engines_sync = _blocking(restart_engines)

    @_on_cluster_loop
    async def restart_engine(self, engine_id):
        """Restart one engine under the same id."""
        await self._restart([engine_id], "was restarted")

    restart_engine_sync = _blocking(restart_engine)

    async def _restart(self, ids, reason) -> None:
        if self._supervised_elsewhere:
            await asyncio.to_thread(self._control, "restart_engines", ids=ids)
            return
        for eid in ids:
            self._watched.pop(eid, None)
        self._stopping(ids, reason)
        await asyncio.gather(*(self._restart_one(i) for i in ids))
        with self._lock:
            self._announce([i for i in ids if i in self.engines])
        for eid in ids:
            self._watch(eid)
        self.update_cluster_file()

    async def _restart_one(self, engine_id) -> None:
        engine_set = self._set_of(engine_id)
        await engine_set.restart(engine_id)
        self.engines[engine_id] = engine_set.engines[engine_id]

    @_on_cluster_loop
    async def signal_engines(self, signum, engine_set_id=None):
        """Send signal ``signum`` to engines (default: all), through their kernel managers."""
        ids = self._ids(engine_set_id)
        await asyncio.gather(*(self.engines[i].signal_kernel(signum) for i in ids))

    signal_engines_sync = _blocking(signal_engines)

    @_on_cluster_loop
    async def signal_engine(self, signum, engine_id):
        """Send signal ``signum`` to one engine."""
        await self.signal_engines(signum, [engine_id])

    signal_engine_sync = _blocking(signal_engine)

    @_on_cluster_loop
    async def stop_engines(self, engine_set_id=None):
        """Stop engines (default: all) and remove their connection files.

        ``engine_set_id`` is an engine set id (from :meth:`start_engines`),
        or, beyond ipyparallel, an engine id or a list of them.
        """
        ids = self._ids(engine_set_id)
        if self._supervised_elsewhere:
            await asyncio.to_thread(self._control, "stop_engines", ids=ids)
            return
        for eid in ids:
            self._watched.pop(eid, None)
        self._stopping(ids, "was shut down", forget=True)
        stops = []
        with self._lock:
            for i in ids:
                self.engines.pop(i)
            for set_id, members in list(self.engine_sets.items()):
                mine = [i for i in members if i in ids]
                if mine:
                    stops.append(self._sets[set_id].stop(mine))
                members[:] = [i for i in members if i not in ids]
                if not members:
                    del self.engine_sets[set_id]
                    del self._sets[set_id]
        results = await asyncio.gather(*stops, return_exceptions=True)
        for error in (r for r in results if isinstance(r, BaseException)):
            self.log.warning("stopping engines: %s", error)
        self.update_cluster_file()

    stop_engines_sync = _blocking(stop_engines)

    @_on_cluster_loop
    async def stop_engine(self, engine_id):
        """Stop one engine."""
        await self.stop_engines([engine_id])

    stop_engine_sync = _blocking(stop_engine)

    @_on_cluster_loop
    async def stop_cluster(self):
        """Stop every engine, close this cluster's clients, remove its files."""
        for client in list(self._clients):
            client.close()
        if self._supervised_elsewhere:
            from ._supervisor import stop_supervised

            # Return once it is really stopped, as for a cluster of this process.
            await asyncio.to_thread(stop_supervised, self.supervisor, _STOP_WAIT)
            self.engines, self.engine_sets, self._sets = {}, {}, {}
            _live_clusters.discard(self)
            return
        await self.stop_engines()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self.cluster_file:
            self.remove_cluster_file()
        _live_clusters.discard(self)

    def stop_cluster_sync(self):
        """Blocking :meth:`stop_cluster`."""
        if self._runner is None and not self.engines:
            return
        self._run(self.stop_cluster())
        self._close_runner()

    def _close_runner(self) -> None:
        # One thread per started cluster would add up over many start/stop cycles.
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    # -- automatic restart ------------------------------------------------------------------

    def _watch(self, engine_id) -> None:
        """With ``auto_restart``, watch the engine's process and restart it when it dies (cluster loop)."""
        process = self._set_of(engine_id).process(engine_id)
        if not self.auto_restart or process is None:
            return
        self._watched[engine_id] = process
        asyncio.get_running_loop().create_task(self._watch_process(engine_id, process, time.monotonic()))

    async def _watch_process(self, engine_id, process, started) -> None:
        while self._watched.get(engine_id) is process and process.poll() is None:
            await asyncio.sleep(_WATCH_PERIOD)
        if self._watched.get(engine_id) is not process:
            return  # stopped or restarted on purpose
        reason = f"died: {describe_exit(process.poll())}"
        flaps = self._flaps[engine_id] = self._flaps.get(engine_id, 0) + 1 if (
            time.monotonic() - started < _FLAP_SECONDS) else 0
        if flaps >= _FLAP_LIMIT:
            self.log.warning("engine %s %s, %d times within %s s of starting: auto_restart gives up on it",
                             engine_id, reason, flaps, _FLAP_SECONDS)
            return
        self.log.warning("engine %s %s; auto_restart starts it again under the same id: its namespace"
                         " (variables, imports, pushed data) is gone", engine_id, reason)
        try:
            await self._restart([engine_id], reason)
        except Exception:
            self.log.exception("auto_restart could not restart engine %s", engine_id)

    # -- saving and re-attaching -------------------------------------------------------------

    def to_dict(self) -> dict:
        """This cluster as a JSON-able dict: the format of cluster files.

        :meth:`from_dict` turns it back into a Cluster whose clients reach
        the same engines (connection files, engine ids, pids); a supervised
        cluster's dict also names its supervisor, through which such a
        Cluster scales and stops it.
        """
        host = socket.gethostname()
        sets = {}
        for set_id, ids in self.engine_sets.items():
            sets[set_id] = {str(i): {"connection_file": self.engines[i].connection_file,
                                     "pid": kernel_pid(self.engines[i]),
                                     "host": getattr(self.engines[i], "host", None) or host,
                                     "state": self._engine_state(i)} for i in ids}
        return {
            "cluster": {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                        "cluster_id": self.cluster_id, "n": self.n, "kernel_name": self.kernel_name,
                        "engine_timeout": self.engine_timeout, "ip": self.ip,
                        "auto_restart": self.auto_restart, "folder": self._folder,
                        "next_id": self._next_id, "supervisor": self.supervisor},
            "engines": {"class": self.launcher.name, "options": self.launcher.options(), "sets": sets,
                        "launchers": {set_id: s.to_dict() for set_id, s in self._sets.items()}},
        }

    def engine_set_status(self) -> dict:
        """``{engine set id: status}``: each set's launcher, state and what else its launcher knows
        (a Slurm job id, state and pending reason; hosts; the mpiexec pid)."""
        return {set_id: engine_set.status() for set_id, engine_set in self._sets.items()}

    @classmethod
    def from_dict(cls, d, **kwargs):
        """A Cluster attached to the running engines described by :meth:`to_dict`.

        Engines whose process is gone are left out with a warning.  As in
        ipyparallel, ``shutdown_atexit`` defaults to False here: the engines
        belong to the process that started them.  A supervised cluster is
        scaled, restarted and stopped through its supervisor.
        """
        info = dict(d["cluster"])
        kwargs.setdefault("shutdown_atexit", False)
        for key in ("cluster_id", "n", "kernel_name", "engine_timeout", "ip", "auto_restart"):
            kwargs.setdefault(key, info.get(key))
        self = cls(**kwargs)
        self._load_dict(d, warn=True)
        if self.engines:
            _live_clusters.add(self)
        return self

    def _load_dict(self, d, warn=False) -> None:
        """Take the engines (and supervisor) of a :meth:`to_dict` as this cluster's."""
        info = d["cluster"]
        self._folder = info.get("folder")
        self._next_id = info.get("next_id", 0)
        self.supervisor = info.get("supervisor")
        engines, sets, set_objects = {}, {}, {}
        saved_sets = d.get("engines", {}).get("launchers", {})
        for set_id, members in d.get("engines", {}).get("sets", {}).items():
            ids = []
            for key, engine in members.items():
                eid = int(key)
                old = self.engines.get(eid)
                attached = old if isinstance(old, AttachedEngine) and old.pid == engine["pid"] else \
                    AttachedEngine(eid, engine["connection_file"], engine["pid"], engine.get("host"))
                # An engine on another node (no pid here) is kept while its launcher says it runs:
                # its clients' heartbeats tell the rest.
                if engine.get("state", "running") != "running" or not attached.is_running() \
                        or not os.path.exists(attached.connection_file):
                    if warn:
                        self.log.warning("engine %s of cluster %s is not running (pid %s): left out",
                                         eid, self.cluster_id, engine["pid"])
                    continue
                engines[eid] = attached
                ids.append(eid)
            if ids:
                sets[set_id] = ids
                set_objects[set_id] = self._attached_set(set_id, saved_sets.get(set_id),
                                                         {i: engines[i] for i in ids})
        with self._lock:
            self.engines, self.engine_sets, self._sets = engines, sets, set_objects

    def _attached_set(self, set_id, saved, handles):
        """The EngineSet for engines of another process: the one we had, its launcher's, or one by pid."""
        old = self._sets.get(set_id)
        if old is not None and all(old.engines.get(i) is h for i, h in handles.items()):
            return old
        name = (saved or {}).get("launcher", "local")
        attached = None
        if saved:
            try:
                attached = launcher_class(name).attach(saved, handles)
            except (ImportError, ValueError, NotImplementedError):
                attached = None
        return attached if attached is not None else AttachedEngineSet(name, handles, saved)

    @classmethod
    def from_file(cls, cluster_file=None, *, profile=None, profile_dir=None, cluster_id="", **kwargs):
        """A Cluster attached to the running cluster ``cluster_id`` (or described in ``cluster_file``).

        With neither, the one running supervised cluster on this machine
        (``ipyparallel-ext cluster start``); it is an error if there are
        none or several.  There are no IPython profiles here.

        Raises
        ------
        FileNotFoundError
            No such cluster is running (the message lists those that are).
        """
        if profile is not None or profile_dir is not None:
            raise NotImplementedError("Cluster.from_file: there are no IPython profiles here; pass"
                                      " cluster_id= (see `ipyparallel-ext cluster list`) or cluster_file=")
        if cluster_file is None:
            cluster_file = _files.find_cluster_file(cluster_id or None)
        self = cls.from_dict(_files.read_cluster_file(cluster_file), cluster_file=cluster_file, **kwargs)
        self._file_stamp = _files.stamp(cluster_file)
        return self

    # -- a cluster another process supervises ---------------------------------------------

    @property
    def _supervised_elsewhere(self) -> bool:
        return bool(self.supervisor) and self.supervisor.get("pid") != os.getpid()

    def _control(self, op, **args):
        """Ask this cluster's supervisor to do ``op``; its answer, after re-reading the cluster file."""
        from ._supervisor import request

        answer = request(self.supervisor, op, timeout=self.engine_timeout + _STOP_WAIT, **args)
        self.refresh(wait=True)
        return answer

    def refresh(self, wait=False) -> bool:
        """Re-read the cluster file if it changed; tell clients about engines that came and went.

        Called by attached clients on their I/O thread about once a second
        (``wait=False``: skipped while another refresh runs, which may be
        waiting for that very thread), and after each scaling call.
        Returns False once the cluster is gone (its file removed, or its
        supervisor dead): its clients' waiting work then fails.
        """
        if not self._refreshing.acquire(blocking=wait):
            return True
        try:
            return self._refresh()
        finally:
            self._refreshing.release()

    def _refresh(self) -> bool:
        path = self.cluster_file
        if path is None:
            return True
        stamp = _files.stamp(path)
        if stamp is not None and stamp == self._file_stamp:
            return True
        try:
            data = _files.read_cluster_file(path) if stamp is not None else None
        except (OSError, ValueError):
            data = None
        if data is None or not _files.supervisor_alive(data):
            gone = sorted(self.engines)
            with self._lock:
                self.engines, self.engine_sets, self._sets = {}, {}, {}
            self._stopping(gone, f"was shut down: cluster {self.cluster_id} stopped", forget=True)
            self._file_stamp = None
            return False
        self._file_stamp = stamp
        before = {eid: km.pid for eid, km in self.engines.items()}
        self._load_dict(data)
        after = {eid: km.pid for eid, km in self.engines.items()}
        gone = [eid for eid in before if eid not in after]
        if gone:
            self._stopping(gone, f"was stopped by cluster {self.cluster_id}'s supervisor", forget=True)
        changed = [eid for eid, pid in after.items() if before.get(eid) != pid]
        restarted = [eid for eid in changed if eid in before]
        if restarted:
            self._stopping(restarted, "was restarted")
        with self._lock:
            self._announce(changed)
        return True

    def write_cluster_file(self) -> None:
        """Write :meth:`to_dict` to :attr:`cluster_file` (atomically, mode 0600)."""
        _files.write_cluster_file(self.cluster_file, self.to_dict())

    def remove_cluster_file(self) -> None:
        """Remove :attr:`cluster_file` (if it is there)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.cluster_file)

    def update_cluster_file(self) -> None:
        """Bring :attr:`cluster_file` up to date: written while engines run, removed once none do.

        A supervised cluster keeps its file with no engines (it can grow
        again) until it stops.  Nothing happens without a cluster file, or when another process
        supervises the cluster (the file is its supervisor's to write).
        """
        if not self.cluster_file or self._supervised_elsewhere:
            return
        if self.engines or self.supervisor:
            self.write_cluster_file()
        else:
            self.remove_cluster_file()

    # -- context managers ------------------------------------------------------------------

    def __enter__(self) -> Client:
        try:
            self._context_client = self.start_and_connect_sync()
        except BaseException:
            self.stop_cluster_sync()
            raise
        return self._context_client

    def __exit__(self, *exc):
        self.stop_cluster_sync()

    async def __aenter__(self) -> Client:
        try:
            self._context_client = await self.start_and_connect()
        except BaseException:
            await self.stop_cluster()
            raise
        return self._context_client

    async def __aexit__(self, *exc):
        await self.stop_cluster()
        await asyncio.to_thread(self._close_runner)


@atexit.register
def _stop_leftover_clusters():
    for cluster in list(_live_clusters):
        if cluster.shutdown_atexit:
            try:
                cluster.stop_cluster_sync()
            except Exception:  # exiting anyway; the kernels' parent poller is the backstop
                pass
