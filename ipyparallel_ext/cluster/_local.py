"""Local engine kernels: the default launcher, the engine kernelspec, the cluster's loop thread, process probes.

What :class:`~._cluster.Cluster` needs to start, watch and stop kernels on
this machine through jupyter_client, and to stop or signal kernels another
process started (:class:`AttachedEngine`, for ``Cluster.from_dict``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sys
import threading
import time
import weakref

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
# Kernels starting at once per CPU.  A start is ~0.45 s of CPU (imports), so a
# few per core keep the CPUs busy; 128 at once would make each take a minute
# and run into its timeout.
_START_SLOTS_PER_CPU = 4
# Seconds a kernel gets to exit after its shutdown request (jupyter_client's
# shutdown_wait_time: SIGTERM at half of it, SIGKILL at the end).  A stock
# kernel's exit costs ~0.1-0.15 s of CPU (IPython's atexit reset runs a full
# gc.collect), so 128 engines exiting on 2 cores would take 8-10 s if all
# were waited for.
_STOP_GRACE = 3.0
_CANCEL_WAIT = 30.0  # seconds an interrupted Cluster call waits for its cleanup (kernels it started stopped)

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
        """Run ``coro`` on the loop and wait for its result (from any other thread).

        Interrupted (Ctrl-C) or past ``timeout``, the coroutine is cancelled
        and its cleanup awaited (up to :data:`_CANCEL_WAIT`) before the
        exception propagates: a start cancelled half-way stops the kernels
        it started, a stop kills those still running, rather than going on
        behind the caller's back.
        """
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a *_sync Cluster method was called on the cluster's own loop thread,"
                               " where it would wait for itself: await the async method instead")
        started, finished = threading.Event(), threading.Event()

        async def tracked():
            started.set()
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        try:
            return future.result(timeout)
        except (KeyboardInterrupt, concurrent.futures.TimeoutError):
            future.cancel()
            if started.is_set():
                finished.wait(_CANCEL_WAIT)
            raise

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


async def stop_kernels(managers) -> None:
    """Stop kernels in parallel (:func:`stop_kernel`); cancelled (Ctrl-C), kill the rest at once.

    All shutdown requests go out together, and each kernel is waited for
    at most its ``shutdown_wait_time`` (:data:`_STOP_GRACE` for ours), so
    stopping many engines takes about as long as stopping one.
    """
    try:
        await asyncio.gather(*(stop_kernel(km) for km in managers), return_exceptions=True)
    except asyncio.CancelledError:
        kill_now(managers)
        raise


def kill_now(managers) -> None:
    """SIGKILL the kernels of ``managers`` that still run, and reap them (no awaiting: cleanup paths)."""
    processes = [p for p in (getattr(getattr(km, "provisioner", None), "process", None) for km in managers)
                 if p is not None]
    for process in processes:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + _ATTACHED_STOP_WAIT
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - a zombie left behind is reaped by subprocess later
            pass


_slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its start semaphore


def start_slot_count() -> int:
    """How many kernels may start at once: :data:`_START_SLOTS_PER_CPU` per CPU."""
    return _START_SLOTS_PER_CPU * (os.cpu_count() or 1)


def start_slots() -> asyncio.Semaphore:
    """The running loop's semaphore bounding how many kernels start at once (starts and restarts)."""
    loop = asyncio.get_running_loop()
    if loop not in _slots:
        _slots[loop] = asyncio.Semaphore(start_slot_count())
    return _slots[loop]


async def start_listening(start, log_path: str, timeout: float):
    """Start a kernel with ``await start(fresh)`` until it has bound its ports; return its manager.

    jupyter_client picks free ports and the kernel binds them half a second
    later; meanwhile any other process may take one (outgoing connections
    use the same port range: a client of 128 engines makes 512 of them), and
    the kernel fails with "Address already in use".  It exits if that was
    a shell, control or IOPub port, but lives on *without a heartbeat* if
    it was the heartbeat's (ipykernel binds that in a thread, which dies
    alone).  Either way such a kernel is killed and started again by a
    fresh manager (``fresh=True``: new ports), as jupyter_client's restarter
    does with ``random_ports_until_alive``; at most :data:`_PORT_TRIES`
    times.  At most :func:`start_slots` kernels start at once, and
    ``timeout`` counts from a kernel's own start.  A kernel that dies of
    anything else, or is slow, is left to its clients to report: they name
    the cause and show the end of its log.
    """
    for attempt in range(_PORT_TRIES):
        log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        async with start_slots():
            km = await start(attempt > 0)
            port_taken = await _wait_listening(km, timeout, log_path, log_start)
        if not port_taken or attempt == _PORT_TRIES - 1:
            return km
        await km.shutdown_kernel(now=True)  # reaps it and frees its connection file for the next


async def _wait_listening(km, timeout: float, log_path: str, log_start: int) -> bool:
    """Wait until the kernel echoes a heartbeat (its ports are all bound), dies, or says a port was taken.

    True if its log says a port it was given was taken ("Address already
    in use"), else False (listening, dead of something else, or slow: its
    clients wait for it and say so).
    """
    process = getattr(km.provisioner, "process", None)
    said = _LogWatch(log_path, log_start)
    await heartbeat(heartbeat_address(km.transport, km.ip, km.hb_port), timeout, process, give_up=said)
    return said()


class _LogWatch:
    """Called: True once a kernel's log, from offset ``since``, says a port it was given was taken.

    The file is read again only when it has grown.
    """

    def __init__(self, log_path: str, since: int):
        self.log_path, self.since, self.size, self.taken = log_path, since, since, False

    def __call__(self) -> bool:
        if not self.taken:
            size = _file_size(self.log_path)
            if size != self.size:
                self.size = size
                self.taken = _said_port_taken(self.log_path, self.since)
        return self.taken


def heartbeat_address(transport: str, ip: str, port: int) -> str:
    """The zmq address of a kernel's heartbeat socket (or any of its sockets)."""
    return f"ipc://{ip}-{port}" if transport == "ipc" else f"{transport}://{ip}:{port}"


async def heartbeat(address: str, timeout: float, process=None, give_up=None) -> bool:
    """True once the kernel at ``address`` echoes a ping; False after ``timeout``, once ``process``
    exits, or once ``give_up()`` (checked every :data:`_EXIT_CHECK` s) says there is no point waiting."""
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
            if give_up is not None and give_up():
                return False
        return False
    finally:
        sock.close()


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


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
        self.starting: dict = {}  # engine id -> the manager of a kernel being started (for cleanup)

    def _new_manager(self, engine_id: int) -> AsyncKernelManager:
        # One shared zmq context: a manager's own would start two zmq threads
        # per kernel for the one shutdown request it sends.
        km = AsyncKernelManager(kernel_name=self.ctx.kernel_name, kernel_spec_manager=self.ctx.spec_manager,
                                context=zmq.asyncio.Context.instance())
        km.ip = self.ctx.ip
        km.connection_file = os.path.join(self.ctx.folder, f"engine-{engine_id}.json")
        km.shutdown_wait_time = _STOP_GRACE
        self.starting[engine_id] = km
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
            kill_now([self.starting.pop(engine_id)] if engine_id in self.starting else [])
            self.logs.pop(engine_id).close()
            raise
        self.starting.pop(engine_id, None)

    async def restart(self, engine_id: int) -> None:
        km = self.engines[engine_id]

        async def start(fresh):
            if not fresh:
                await km.restart_kernel(now=True)
                return km
            new = self._new_manager(engine_id)
            await new.start_kernel(**self._launch_kwargs(engine_id))
            return new

        try:
            self.engines[engine_id] = await start_listening(start, self.logs[engine_id].name, self.ctx.timeout)
        finally:
            self.starting.pop(engine_id, None)

    async def stop(self, engine_ids) -> None:
        managers = [self.engines.pop(i) for i in engine_ids if i in self.engines]
        try:
            await stop_kernels(managers)
        finally:
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
        """Start the kernels in parallel, at most :func:`start_slots` at a time.

        Cancelled (Ctrl-C, a timeout), every kernel started or starting is
        killed before the cancellation propagates.
        """
        engine_set = LocalEngineSet(ctx)
        starts = [asyncio.ensure_future(engine_set.start_one(i)) for i in ctx.engine_ids]
        try:
            results = await asyncio.gather(*starts, return_exceptions=True)
        except asyncio.CancelledError:
            for task in starts:
                task.cancel()
            await asyncio.gather(*starts, return_exceptions=True)  # each kills its own kernel
            kill_now(list(engine_set.engines.values()))
            raise
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
        await stop_kernels(handles)

    def state(self, engine_id: int) -> str:
        return "running" if self.engines[engine_id].is_running() else "dead"

    def status(self) -> dict:
        return dict(self.saved)

