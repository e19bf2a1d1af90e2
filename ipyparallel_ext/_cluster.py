"""Cluster: start, restart and stop local engine kernels through jupyter_client.

Engines are started by :class:`jupyter_client.AsyncKernelManager` (so any
kernelspec and kernel provisioner works), all at once, on a private event
loop thread; the ``*_sync`` methods are blocking wrappers that work inside
a notebook's running event loop too.  Engines die with the Python process
that started them (jupyter_client's ``JPY_PARENT_PID`` poller) and are
stopped at exit if the user forgot.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import sys
import tempfile
import threading
import uuid
import weakref

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_core.paths import jupyter_path

from ._client import Client, load_connection_file
from .error import EngineStartError

ENGINE_KERNEL_NAME = "ipyparallel-ext-engine"

# Arguments our engine kernels run with: stock ipykernel, minus what costs
# start-up time or per-request latency and gives an engine nothing.
ENGINE_ARGS = [
    "-m", "ipykernel_launcher", "-f", "{connection_file}",
    "--HistoryManager.enabled=False",  # no sqlite history: faster start, no lock contention
    "--IPythonKernel._execute_sleep=0",
    "--IPKernelApp.quiet=True",
]


class EngineSpecManager(KernelSpecManager):
    """Kernelspecs as usual, plus the built-in engine spec for this Python.

    ``ipyparallel-ext-engine`` resolves to an installed spec of that name if
    there is one (``kernelspec/``), else to this interpreter with
    :data:`ENGINE_ARGS`, so nothing needs installing to start engines.
    """

    def get_kernel_spec(self, kernel_name):
        if kernel_name != ENGINE_KERNEL_NAME:
            return super().get_kernel_spec(kernel_name)
        # The general lookup imports ipykernel in this process to find its
        # bundled spec (half a second); the engine spec is looked up directly.
        for folder in jupyter_path("kernels"):
            resource_dir = os.path.join(folder, ENGINE_KERNEL_NAME)
            if os.path.isfile(os.path.join(resource_dir, "kernel.json")):
                return KernelSpec.from_resource_dir(resource_dir)
        return KernelSpec(
            argv=[sys.executable, *ENGINE_ARGS],
            display_name="ipyparallel_ext engine",
            language="python",
            interrupt_mode="signal",
            metadata={"debugger": False},
        )


class _LoopThread:
    """A private asyncio loop in a daemon thread, for the kernel managers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ipyparallel_ext-cluster",
                                       daemon=True)
        self.thread.start()

    def run(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_live_clusters: weakref.WeakSet = weakref.WeakSet()


class _ProcessProbe:
    """Polls a local engine's process; knows its log, to explain a death."""

    def __init__(self, process, log_path: str):
        self.process = process
        self.log_path = log_path

    def __call__(self):
        return self.process.poll()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the engine wrote to its log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        # Every kernel warns about plain TCP at start; that says nothing about a death.
        kept = [line for line in text.strip().splitlines() if "without encryption" not in line]
        return "\n".join(kept[-lines:])


class Cluster:
    """A set of local engine kernels.

    Parameters
    ----------
    n : int, optional
        How many engines (default: the number of CPUs).
    kernel_name : str, optional
        The kernelspec to start engines with (default: the built-in engine
        spec for this Python; any installed kernelspec works, e.g. 'python3').
    cluster_id : str, optional
        Names the folder that holds the engines' connection files.
    engine_timeout : float
        Seconds an engine may take to start.
    ip : str
        Interface the engines listen on (default 127.0.0.1, loopback only).
    env : dict, optional
        Extra environment variables for the engines.
    shutdown_atexit : bool
        Stop the engines when this Python exits (default True).

    Examples
    --------
    >>> with ipp.Cluster(n=2) as rc:
    ...     rc[:].apply_sync(os.getpid)
    """

    def __init__(self, n=None, kernel_name=None, *, cluster_id=None, engine_timeout=60.0,
                 ip="127.0.0.1", env=None, shutdown_atexit=True, log_level=None, **_ignored):
        self.n = n if n is not None else (os.cpu_count() or 1)
        self.kernel_name = kernel_name or ENGINE_KERNEL_NAME
        self.cluster_id = cluster_id or uuid.uuid4().hex[:8]
        self.engine_timeout = engine_timeout
        self.ip = ip
        self.env = dict(env or {})
        self.shutdown_atexit = shutdown_atexit
        self.engines: dict = {}  # engine id -> AsyncKernelManager
        self._clients: weakref.WeakSet = weakref.WeakSet()
        self._runner = None
        self._folder = None
        self._logs: dict = {}  # engine id -> its open log file
        self._spec_manager = EngineSpecManager()

    def __repr__(self) -> str:
        return f"<Cluster {self.cluster_id}: {len(self.engines)} engines ({self.kernel_name})>"

    @property
    def connection_files(self) -> list:
        """The engines' connection files, in engine id order."""
        return [self.engines[i].connection_file for i in sorted(self.engines)]

    def _run(self, coro, timeout=None):
        if self._runner is None:
            self._runner = _LoopThread()
        return self._runner.run(coro, timeout)

    # -- starting ----------------------------------------------------------------------

    async def _start_one(self, engine_id: int):
        km = AsyncKernelManager(kernel_name=self.kernel_name, kernel_spec_manager=self._spec_manager)
        km.ip = self.ip
        km.connection_file = os.path.join(self._folder, f"engine-{engine_id}.json")
        env = dict(os.environ, **self.env)
        # An engine's own output (kernel warnings, crash messages, C-level
        # prints) goes to its log file, not into whatever cell started it.
        log = open(os.path.join(self._folder, f"engine-{engine_id}.log"), "ab")  # noqa: SIM115
        self._logs[engine_id] = log
        await km.start_kernel(env=env, stdout=log, stderr=log)
        self.engines[engine_id] = km
        return km

    async def start_cluster(self, n=None):
        """Start ``n`` engines (default ``self.n``), all at once."""
        n = self.n if n is None else n
        if self._folder is None:
            runtime = os.path.join(tempfile.gettempdir(), f"ipyparallel_ext-{os.getuid()}")
            os.makedirs(runtime, mode=0o700, exist_ok=True)
            self._folder = tempfile.mkdtemp(prefix=f"cluster-{self.cluster_id}-", dir=runtime)
        first = max(self.engines, default=-1) + 1
        results = await asyncio.gather(*(self._start_one(first + i) for i in range(n)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        _live_clusters.add(self)
        if errors:
            await self.stop_cluster()
            raise EngineStartError(f"{len(errors)} of {n} engines failed to start: {errors[0]}") from errors[0]
        for client in list(self._clients):
            for eid in range(first, first + n):
                client.add_engine(eid, self._info(eid), self._probe(eid))
        return self

    def start_cluster_sync(self, n=None):
        """Blocking :meth:`start_cluster`."""
        return self._run(self.start_cluster(n), timeout=self.engine_timeout)

    def _info(self, engine_id: int) -> dict:
        return load_connection_file(self.engines[engine_id].connection_file)

    def _probe(self, engine_id: int):
        km = self.engines[engine_id]
        process = getattr(km.provisioner, "process", None)
        return None if process is None else _ProcessProbe(process, self._logs[engine_id].name)

    def connect_client_sync(self, **kwargs) -> Client:
        """A new Client on this cluster's engines (several may share them)."""
        ids = sorted(self.engines)
        client = Client(
            connection_info=[self._info(i) for i in ids],
            _cluster=self,
            _engine_options={"execute_sleep": 0, "skip_empty_flushes": True},
            _probes={pos: self._probe(i) for pos, i in enumerate(ids)},
            **kwargs,
        )
        self._clients.add(client)
        return client

    async def connect_client(self, **kwargs) -> Client:
        return self.connect_client_sync(**kwargs)

    def start_and_connect_sync(self, n=None, activate=False) -> Client:
        """Start engines and return a Client connected to them (engines may still be starting)."""
        self.start_cluster_sync(n)
        client = self.connect_client_sync()
        if activate:
            client[:].activate()
        return client

    async def start_and_connect(self, n=None, activate=False) -> Client:
        await self.start_cluster(n)
        client = self.connect_client_sync()
        if activate:
            client[:].activate()
        return client

    def owns(self, client) -> bool:
        """True if ``client`` was made by this cluster."""
        return client in self._clients

    # -- restarting and stopping ------------------------------------------------------------

    async def restart_engines(self, engine_ids=None):
        """Restart engines (default: all); clients reconnect to them under the same ids."""
        ids = sorted(self.engines) if engine_ids is None else list(engine_ids)
        for client in list(self._clients):
            client.engines_stopping(ids, "was restarted")
        await asyncio.gather(*(self.engines[i].restart_kernel(now=True) for i in ids))
        for client in list(self._clients):
            for eid in ids:
                client.add_engine(eid, self._info(eid), self._probe(eid))

    def restart_engines_sync(self, engine_ids=None):
        """Blocking :meth:`restart_engines`."""
        return self._run(self.restart_engines(engine_ids), timeout=self.engine_timeout)

    async def signal_engines(self, signum, engine_ids=None):
        """Send signal ``signum`` to engines (default: all), through their kernel managers."""
        ids = sorted(self.engines) if engine_ids is None else list(engine_ids)
        await asyncio.gather(*(self.engines[i].signal_kernel(signum) for i in ids))

    def signal_engines_sync(self, signum, engine_ids=None):
        """Blocking :meth:`signal_engines`."""
        return self._run(self.signal_engines(signum, engine_ids), timeout=30)

    async def stop_engines(self, engine_ids=None):
        """Stop engines (default: all) and remove their connection files."""
        ids = sorted(self.engines) if engine_ids is None else list(engine_ids)
        for client in list(self._clients):
            client.engines_stopping(ids, "was shut down")
        managers = [self.engines.pop(i) for i in ids if i in self.engines]

        async def stop(km):
            try:
                await km.shutdown_kernel(now=False)
            except Exception:  # already dead, or never answered: make sure it is gone
                await km.shutdown_kernel(now=True)

        await asyncio.gather(*(stop(km) for km in managers), return_exceptions=True)
        for i in ids:
            log = self._logs.pop(i, None)
            if log is not None:
                log.close()

    def stop_engines_sync(self, engine_ids=None):
        """Blocking :meth:`stop_engines`."""
        return self._run(self.stop_engines(engine_ids), timeout=30)

    async def stop_cluster(self):
        """Stop every engine, close this cluster's clients, remove its files."""
        for client in list(self._clients):
            client.close()
        await self.stop_engines()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        _live_clusters.discard(self)

    def stop_cluster_sync(self):
        """Blocking :meth:`stop_cluster`."""
        if self._runner is None and not self.engines:
            return
        self._run(self.stop_cluster(), timeout=30)

    def __enter__(self) -> Client:
        client = self.start_and_connect_sync()
        try:
            client.wait_for_engines(self.n, timeout=self.engine_timeout)
        except BaseException:
            self.stop_cluster_sync()
            raise
        return client

    def __exit__(self, *exc):
        self.stop_cluster_sync()

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, *exc):
        self.stop_cluster_sync()


@atexit.register
def _stop_leftover_clusters():
    for cluster in list(_live_clusters):
        if cluster.shutdown_atexit:
            try:
                cluster.stop_cluster_sync()
            except Exception:  # exiting anyway; the kernels' parent poller is the backstop
                pass
