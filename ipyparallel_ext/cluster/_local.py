"""Local engine kernels: the default launcher, the engine kernelspec, the cluster's loop thread, process probes.

What :class:`~._cluster.Cluster` needs to start, watch and stop kernels on
this machine through jupyter_client, and to stop or signal kernels another
process started (:class:`AttachedEngine`, for ``Cluster.from_dict``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import zmq
import zmq.asyncio
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_core.paths import jupyter_path

from ..error import EngineStartError
from ._files import pid_alive
from ._launcher import EngineSet, LaunchContext, Launcher

_ATTACHED_STOP_WAIT = 5.0  # seconds an engine of another process gets to exit after SIGTERM
_PORT_TRIES = 3  # starts of a kernel on fresh ports before its failure is left to its clients to report
_EXIT_CHECK = 0.1  # how often a starting kernel's process is checked while its heartbeat is awaited

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


class LoopThread:
    """A private asyncio loop in a daemon thread, for the kernel managers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ipyparallel_ext-cluster",
                                       daemon=True)
        self.thread.start()

    def run(self, coro, timeout=None):
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a *_sync Cluster method was called on the cluster's own loop thread,"
                               " where it would wait for itself: await the async method instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop (auto-restart watchers), stop it, end the thread."""

        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.thread is threading.current_thread():
            return  # called from a task on this very loop: it stays (a daemon thread)
        self.run(cancel_the_rest(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


class ProcessProbe:
    """Polls a local engine's process; knows its log, to explain a death."""

    def __init__(self, process, log_path: str):
        self.process = process
        self.log_path = log_path

    def __call__(self):
        return self.process.poll()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the engine wrote to its log."""
        return log_tail(self.log_path, lines)


def log_tail(path: str, lines: int = 5) -> str:
    """The last ``lines`` lines of a kernel's (or a launcher's) log file, or '' if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    # Every kernel warns about plain TCP at start; that says nothing about a death.
    kept = [line for line in text.strip().splitlines() if "without encryption" not in line]
    return "\n".join(kept[-lines:])


class AttachedEngine:
    """An engine another process started, re-attached by :meth:`Cluster.from_dict`.

    Quacks like the parts of a kernel manager the Cluster uses: it can be
    signalled and stopped through its pid, not restarted (its manager lives
    in the process that started it).  An engine on another node has no pid
    here (``pid=None``): its launcher's engine set (:meth:`Launcher.attach`)
    stops it, and this handle can only say where it runs.
    """

    provisioner = None

    def __init__(self, engine_id: int, connection_file: str, pid: int | None, host: str | None = None):
        self.engine_id = engine_id
        self.connection_file = connection_file
        self.pid = pid
        self.host = host

    def is_running(self) -> bool:
        if self.pid is None:
            return True  # not a process of this machine: its clients' heartbeats tell
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def signal_kernel(self, signum) -> None:
        if self.pid is None:
            raise NotImplementedError(f"engine {self.engine_id} runs on {self.host}, not here: signal it"
                                      f" from the process that started it")
        os.kill(self.pid, signum)

    async def shutdown_kernel(self, now=False, restart=False) -> None:
        if self.pid is None or not self.is_running():
            return  # a remote engine stops with its engine set (its launcher's attach)
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + _ATTACHED_STOP_WAIT
        # Not our child: there is no wait() to block on, so look now and then.
        while self.is_running() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.is_running():
            os.kill(self.pid, signal.SIGKILL)

    async def restart_kernel(self, now=False, **kw) -> None:
        raise NotImplementedError(
            f"engine {self.engine_id} was started by another process and re-attached with"
            f" Cluster.from_dict: restart it from the Cluster that started it (its kernel manager"
            f" lives there), or stop it and start_engines() here")


def kernel_pid(km):
    """The process id of a kernel manager's (or an attached engine's) kernel, or None."""
    return getattr(km, "pid", None) or getattr(getattr(km, "provisioner", None), "pid", None)


async def stop_kernel(km) -> None:
    """Ask a kernel to shut down; kill it if it does not (or cannot) answer."""
    try:
        await km.shutdown_kernel(now=False)
    except Exception:  # already dead, or never answered: make sure it is gone
        await km.shutdown_kernel(now=True)


async def start_listening(start, log_path: str, timeout: float):
    """Start a kernel with ``await start(fresh)`` until it has bound its ports; return its manager.

    jupyter_client picks free ports and the kernel binds them half a second
    later; meanwhile any other process may take one (outgoing connections
    use the same port range), and the kernel dies with "Address already in
    use".  Such a kernel is started again by a fresh manager (``fresh=True``:
    new ports), as jupyter_client's restarter does with
    ``random_ports_until_alive``.  A kernel that dies of anything else, or
    is slow, is left to its clients to report: they name the cause and show
    the end of its log.
    """
    for attempt in range(_PORT_TRIES):
        log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        km = await start(attempt > 0)
        code = await _heartbeat_or_exit(km, timeout)
        if code is None or attempt == _PORT_TRIES - 1 or not _said_port_taken(log_path, log_start):
            return km
        await km.shutdown_kernel(now=True)  # reaps it and frees its connection file for the next


async def _heartbeat_or_exit(km, timeout: float):
    """None once the kernel echoes a heartbeat (its ports are all bound), or its exit code if it dies first."""
    process = getattr(km.provisioner, "process", None)
    await heartbeat(heartbeat_address(km.transport, km.ip, km.hb_port), timeout, process)
    # Not answered in time: slow, not dead (None), its clients wait for it and say so.
    return None if process is None else process.poll()


def heartbeat_address(transport: str, ip: str, port: int) -> str:
    """The zmq address of a kernel's heartbeat socket (or any of its sockets)."""
    return f"ipc://{ip}-{port}" if transport == "ipc" else f"{transport}://{ip}:{port}"


async def heartbeat(address: str, timeout: float, process=None) -> bool:
    """True once the kernel at ``address`` echoes a ping; False after ``timeout`` or once ``process`` exits."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    deadline = time.monotonic() + timeout
    try:
        await sock.send(b"ping")  # queued until the kernel's heartbeat socket is bound
        while time.monotonic() < deadline:
            if await sock.poll(_EXIT_CHECK * 1000):
                return True
            if process is not None and process.poll() is not None:
                return False
        return False
    finally:
        sock.close()


def _said_port_taken(log_path: str, since: int) -> bool:
    """True if the kernel's log, from offset ``since``, says a port it was given was taken."""
    try:
        with open(log_path, "rb") as f:
            f.seek(since)
            return b"Address already in use" in f.read()
    except OSError:
        return False


class LocalEngineSet(EngineSet):
    """Kernels on this machine, each started by its own AsyncKernelManager (any kernelspec or provisioner)."""

    launcher = "local"

    def __init__(self, ctx: LaunchContext):
        super().__init__()
        self.ctx = ctx
        self.logs: dict = {}  # engine id -> its open log file

    def _new_manager(self, engine_id: int) -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name=self.ctx.kernel_name, kernel_spec_manager=self.ctx.spec_manager)
        km.ip = self.ctx.ip
        km.connection_file = os.path.join(self.ctx.folder, f"engine-{engine_id}.json")
        return km

    def _launch_kwargs(self, engine_id: int) -> dict:
        log = self.logs[engine_id]
        return {"env": dict(os.environ, **self.ctx.env), "stdout": log, "stderr": log}

    async def start_one(self, engine_id: int) -> None:
        # An engine's own output (kernel warnings, crash messages, C-level
        # prints) goes to its log file, not into whatever cell started it.
        log = open(os.path.join(self.ctx.folder, f"engine-{engine_id}.log"), "ab")  # noqa: SIM115
        self.logs[engine_id] = log

        async def start(fresh):
            km = self._new_manager(engine_id)
            await km.start_kernel(**self._launch_kwargs(engine_id))
            return km

        try:
            self.engines[engine_id] = await start_listening(start, log.name, self.ctx.timeout)
        except BaseException:
            self.logs.pop(engine_id).close()
            raise

    async def restart(self, engine_id: int) -> None:
        km = self.engines[engine_id]

        async def start(fresh):
            if not fresh:
                await km.restart_kernel(now=True)
                return km
            new = self._new_manager(engine_id)
            await new.start_kernel(**self._launch_kwargs(engine_id))
            return new

        self.engines[engine_id] = await start_listening(start, self.logs[engine_id].name, self.ctx.timeout)

    async def stop(self, engine_ids) -> None:
        managers = [self.engines.pop(i) for i in engine_ids if i in self.engines]
        await asyncio.gather(*(stop_kernel(km) for km in managers), return_exceptions=True)
        for i in engine_ids:
            log = self.logs.pop(i, None)
            if log is not None:
                log.close()

    def process(self, engine_id: int):
        return getattr(self.engines[engine_id].provisioner, "process", None)

    def probe(self, engine_id: int):
        process = self.process(engine_id)
        return None if process is None else ProcessProbe(process, self.logs[engine_id].name)

    def state(self, engine_id: int) -> str:
        process = self.process(engine_id)
        if process is not None:
            return "running" if process.poll() is None else "dead"
        return "running" if pid_alive(kernel_pid(self.engines[engine_id])) else "dead"


class LocalLauncher(Launcher):
    """Engines as kernels on this machine, through jupyter_client (``engines="local"``, the default)."""

    name = "local"

    async def start(self, ctx: LaunchContext) -> LocalEngineSet:
        engine_set = LocalEngineSet(ctx)
        results = await asyncio.gather(*(engine_set.start_one(i) for i in ctx.engine_ids),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await engine_set.stop(list(engine_set.engines))
            raise EngineStartError(f"{len(errors)} of {len(ctx.engine_ids)} engines failed to start:"
                                   f" {errors[0]}") from errors[0]
        return engine_set


class AttachedEngineSet(EngineSet):
    """Engines of another process (a cluster file), stopped one by one through their pids."""

    def __init__(self, launcher: str, engines: dict, saved: dict | None = None):
        super().__init__()
        self.launcher = launcher
        self.engines = engines
        self.saved = saved or {"launcher": launcher, "state": "running"}

    async def restart(self, engine_id: int) -> None:
        await self.engines[engine_id].restart_kernel(now=True)  # says why it cannot

    async def stop(self, engine_ids) -> None:
        handles = [self.engines.pop(i) for i in engine_ids if i in self.engines]
        await asyncio.gather(*(stop_kernel(h) for h in handles), return_exceptions=True)

    def state(self, engine_id: int) -> str:
        return "running" if self.engines[engine_id].is_running() else "dead"

    def status(self) -> dict:
        return dict(self.saved)

