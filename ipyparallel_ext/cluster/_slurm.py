"""Engines in a Slurm job: ``Cluster(engines="slurm")``.

One engine set is one batch job.  :class:`SlurmLauncher` writes a batch
script into a folder the submitting host and the compute nodes share and
submits it with ``sbatch``; the script's single ``srun`` step runs one task
per engine, and each task runs a few lines of stdlib Python
(:data:`_BOOTSTRAP`) before it ``exec``\\ s the kernelspec's argv (stock
``python -m ipykernel_launcher -f <file>``)::

    this process                       shared folder               compute node(s)
    ------------                       -------------               ---------------
    sbatch job.sh  ---------------->   job.sh             ---->    srun -> task k (SLURM_PROCID=k):
                                                                     engine id = engine_ids[k]
    wait for the files, polling        engine-<id>.node.json <--     writes ip + key, ports 0 (0600)
    squeue (pending reason logged)                                   exec ipykernel -f that file:
                                       engine-<id>.node.json <--     it binds random ports, rewrites it
    engine-<id>.json (the address     <-                             (its output: engine-<id>.log)
    clients connect to), heartbeats

The kernel picks its own ports on its node (a port picked here could be
taken there), and the key is made on the node and only ever written to
0600 files.  The address written for clients is where the kernel can be
reached from the submitting host: see :class:`SlurmLauncher`'s ``ip``.
Stopping shuts the kernels down, cancels the job (``scancel``) and waits
until ``squeue`` no longer lists it.  There is no accounting database
assumed: job state comes from ``squeue`` and ``scontrol show job``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

from ..error import EngineStartError
from ._files import pid_alive, write_cluster_file
from ._launcher import EngineSet, LaunchContext, Launcher
from ._local import heartbeat, heartbeat_address, log_tail, stop_kernel

_COMMAND_TIMEOUT = 30.0  # seconds an sbatch/squeue/scancel/scontrol call may take (a busy slurmctld)
_POLL = 0.2  # how often the engines' connection files are looked for while a job starts
_STATE_POLL = 1.0  # ... and the job's state asked of squeue
_SHUTDOWN_WAIT = 5.0  # seconds a kernel gets to answer a shutdown_request before it is killed
_CANCEL_WAIT = 20.0  # seconds a cancelled job gets to leave squeue
_LOG_TAIL = 5  # lines of each engine's log (and the job's output) shown when a start fails
# Job states in which the job's engines can still come up or are up.
_ALIVE = ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING")
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

# Runs in each srun task, on the compute node, with only the standard library
# (srun --wait=0 --kill-on-bad-exit=0: an engine that ends does not end the others):
#   python -c _BOOTSTRAP <folder> <ip mode> <submitting host> <cluster ip> <engine ids...> -- <kernel argv>
# It picks this task's engine id from SLURM_PROCID, the address to listen on
# and the one to advertise, writes the kernel's connection file (0600; ports 0,
# which ipykernel replaces by the ports it binds) and becomes the kernel.
_BOOTSTRAP = r"""
import fcntl, json, os, secrets, socket, struct, sys
folder, mode, submit_host, cluster_ip = sys.argv[1:5]
sep = sys.argv.index("--")
eid = sys.argv[5:sep][int(os.environ["SLURM_PROCID"])]
host = socket.gethostname()

def routed():
    # The address of this node's interface on the route to the submitting host (no packet is sent).
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(submit_host), 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(host)

if mode.startswith("if:"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # SIOCGIFADDR: the interface's address
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", mode[3:][:15].encode()))
    listen = socket.inet_ntoa(packed[20:24])
elif mode == "auto":
    listen = cluster_ip if host == submit_host else routed()
else:
    listen = mode
listen = "0.0.0.0" if listen == "*" else listen
if listen != "0.0.0.0":
    advertised = listen
elif host == submit_host:
    advertised = "127.0.0.1" if cluster_ip in ("*", "0.0.0.0") else cluster_ip
else:
    advertised = routed()
log = os.open(os.path.join(folder, "engine-%s.log" % eid), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.dup2(log, 1)
os.dup2(log, 2)
path = os.path.join(folder, "engine-%s.node.json" % eid)
info = dict(ip=listen, transport="tcp", signature_scheme="hmac-sha256", key=secrets.token_hex(32),
            shell_port=0, iopub_port=0, stdin_port=0, control_port=0, hb_port=0,
            ipyparallel_ext=dict(host=host, ip=advertised, pid=os.getpid()))
with os.fdopen(os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(info, f)
os.replace(path + ".tmp", path)
argv = [a.replace("{connection_file}", path) for a in sys.argv[sep + 1:]]
os.execvp(argv[0], argv)
"""


def _command(argv, timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a Slurm command; a missing one or one that hangs raises EngineStartError saying so."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise EngineStartError(f"{argv[0]!r} not found: is Slurm installed and on PATH? (the launcher"
                               f" option {os.path.basename(argv[0])}= names the command)") from None
    except subprocess.TimeoutExpired:
        raise EngineStartError(f"{shlex.join(argv)} did not answer within {timeout} s") from None


def job_state(commands: dict, job_id: str) -> dict:
    """``{"state", "reason", "nodes"}`` of a job, from ``squeue``, else ``scontrol show job``.

    squeue lists a job until it has ended; scontrol remembers it for a few
    minutes more (MinJobAge).  A job neither knows is ``state="UNKNOWN"``
    with their message as the reason.
    """
    out = _command([commands["squeue"], "-h", "-j", job_id, "-o", "%T|%r|%N"])
    line = out.stdout.strip().splitlines()[:1] if out.returncode == 0 else []
    if line:
        state, reason, nodes = (line[0].split("|") + ["", ""])[:3]
        return {"state": state, "reason": None if reason in ("None", "") else reason, "nodes": nodes or None}
    shown = _command([commands["scontrol"], "show", "job", "-o", job_id])
    fields = dict(word.split("=", 1) for word in shown.stdout.split() if "=" in word)
    if shown.returncode != 0 or "JobState" not in fields:
        why = (shown.stderr or out.stderr).strip() or "neither squeue nor scontrol knows it"
        return {"state": "UNKNOWN", "reason": why, "nodes": None}
    reason = fields.get("Reason", "None")
    return {"state": fields["JobState"], "reason": None if reason == "None" else reason,
            "nodes": fields.get("NodeList") or None}


class SlurmEngine:
    """A kernel in a Slurm job: the handle :attr:`EngineSet.engines` holds for it.

    ``pid`` is the kernel's process id when its node is this host, else None.
    """

    provisioner = None

    def __init__(self, engine_id: int, connection_file: str, info: dict, node: dict, job_id: str,
                 commands: dict):
        self.engine_id = engine_id
        self.connection_file = connection_file
        self.address = heartbeat_address(info["transport"], info["ip"], info["hb_port"])
        self.host = node["host"]
        self.remote_pid = node["pid"]
        self.pid = node["pid"] if node["host"] == socket.gethostname() else None
        self.job_id = job_id
        self.commands = commands

    async def signal_kernel(self, signum) -> None:
        """Send ``signum`` to the kernel, on its node, by a job step that overlaps the engines' step."""
        argv = [self.commands["srun"], f"--jobid={self.job_id}", "--overlap", f"--nodelist={self.host}",
                "--nodes=1", "--ntasks=1", "kill", f"-{int(signum)}", str(self.remote_pid)]
        out = await asyncio.to_thread(_command, argv)
        if out.returncode != 0:
            raise OSError(f"could not signal engine {self.engine_id} (pid {self.remote_pid} on {self.host},"
                          f" job {self.job_id}): {out.stderr.strip()}")

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Ask the kernel to shut down (``now``: kill it); its srun task then ends."""
        if self.pid is not None and not pid_alive(self.pid):
            return  # on this host and gone already: nothing would answer
        if now:
            await self.signal_kernel(signal.SIGKILL)
            return
        client = AsyncKernelClient(context=zmq.asyncio.Context.instance())
        client.load_connection_file(self.connection_file)
        client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
        try:
            client.shutdown()
            await client.get_control_msg(timeout=_SHUTDOWN_WAIT)  # raises if it does not answer
        finally:
            client.stop_channels()


class SlurmEngineSet(EngineSet):
    """The engines of one Slurm job; the job is cancelled once none of them is left."""

    launcher = "slurm"

    def __init__(self, job_id: str, folder: str | None, commands: dict):
        super().__init__()
        self.job_id = job_id
        self.folder = folder  # ours to remove (None when attached from a cluster file)
        self.commands = commands
        self.last = {"state": "PENDING", "reason": None, "nodes": None}  # as squeue said last time

    def refresh(self) -> dict:
        """Ask Slurm for the job's state now (and remember it)."""
        self.last = job_state(self.commands, self.job_id)
        return self.last

    def status(self) -> dict:
        try:
            self.refresh()
        except EngineStartError as e:  # slurmctld down or squeue gone: say so, do not fail the caller
            self.last = {"state": "UNKNOWN", "reason": str(e), "nodes": None}
        return self.to_dict()

    def to_dict(self) -> dict:
        return {"launcher": self.launcher, "job_id": self.job_id, **self.last,
                "commands": self.commands, "folder": self.folder}

    def state(self, engine_id: int) -> str:
        handle = self.engines[engine_id]
        if handle.pid is not None:
            return "running" if pid_alive(handle.pid) else "dead"
        return "running" if self.last["state"] in _ALIVE else "dead"

    async def stop(self, engine_ids) -> None:
        handles = [self.engines.pop(i) for i in engine_ids if i in self.engines]
        if self.engines or await self._kernels_to_stop(handles):
            await asyncio.gather(*(stop_kernel(h) for h in handles), return_exceptions=True)
        if not self.engines:
            await self.cancel()

    async def _kernels_to_stop(self, handles) -> bool:
        """Whether the last kernels of the job are worth a shutdown of their own before scancel.

        Not when the job has ended (no kernel would answer: each shutdown
        would wait :data:`_SHUTDOWN_WAIT` for nothing), nor for another
        process's engines attached from a cluster file: their handles stop
        a kernel by SIGTERM, which fails the job step, so scancel does it.
        """
        if not all(isinstance(h, SlurmEngine) for h in handles):
            return False
        try:
            return (await asyncio.to_thread(self.refresh))["state"] in _ALIVE
        except EngineStartError:  # squeue does not answer: try the kernels all the same
            return True

    async def cancel(self) -> None:
        """``scancel`` the job, wait (bounded) until squeue no longer lists it, remove our folder."""
        try:
            out = await asyncio.to_thread(_command, [self.commands["scancel"], self.job_id])
            if out.returncode != 0 and "already completing or completed" not in out.stderr \
                    and "Invalid job id" not in out.stderr:
                raise OSError(f"scancel {self.job_id}: {out.stderr.strip()}")
            deadline = time.monotonic() + _CANCEL_WAIT
            while (await asyncio.to_thread(self.refresh))["state"] in _ALIVE + ("COMPLETING",):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"slurm job {self.job_id} is still {self.last['state']}"
                                       f" {_CANCEL_WAIT} s after scancel")
                await asyncio.sleep(_POLL)
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)


class SlurmLauncher(Launcher):
    """Engines as the tasks of one Slurm batch job (``Cluster(engines="slurm")``).

    Parameters
    ----------
    partition, account : str, optional
        ``sbatch --partition`` / ``--account`` (default: the site's).
    time : str or int, optional
        The job's time limit, as ``sbatch --time`` takes it ("1:00:00",
        "2-0", or minutes as an int); the engines end with the job.
    extra_sbatch : list of str, optional
        More ``#SBATCH`` lines, e.g. ``["--mem-per-cpu=2G", "--constraint=ib"]``
        (a leading ``#SBATCH`` is optional).
    ip : str, optional
        Where engines listen.  Default: an engine on the submitting host
        listens on the Cluster's ``ip`` (127.0.0.1 unless set), one on
        another node on that node's address on the route to the submitting
        host.  ``"*"``: every interface, advertising that same address; an
        address: exactly that (useful for one node only).
    interface : str, optional
        A network interface name ("ib0", "eth1"): engines listen on its
        address on their node (Linux), e.g. to keep traffic on a fast
        network the client is also on.
    shared_dir : str, optional
        Folder on a filesystem the submitting host and the nodes share
        (home, /scratch): the batch script, the engines' connection files
        and logs go into a private subfolder of it, removed on stop.
        Default: the cluster's folder in the local temp dir, which only
        works when the nodes see this host's /tmp (one-node setups).
    sbatch, srun, squeue, scancel, scontrol : str
        The Slurm commands (default: found on PATH).
    """

    name = "slurm"

    def __init__(self, partition=None, time=None, account=None, extra_sbatch=(), ip=None, interface=None,
                 shared_dir=None, sbatch="sbatch", srun="srun", squeue="squeue", scancel="scancel",
                 scontrol="scontrol"):
        if isinstance(extra_sbatch, str):
            raise TypeError(f"extra_sbatch={extra_sbatch!r}: expected a list of #SBATCH lines, e.g."
                            f" [{extra_sbatch!r}]")
        lines = [str(line).strip().removeprefix("#SBATCH").strip() for line in extra_sbatch]
        for line in lines:
            if "\n" in line or not line.startswith("-"):
                raise ValueError(f"extra_sbatch line {line!r}: expected one sbatch option such as"
                                 f" '--mem-per-cpu=2G'")
        if ip is not None and interface is not None:
            raise TypeError("give the Slurm launcher ip= or interface=, not both")
        self.partition, self.time, self.account = partition, time, account
        self.extra_sbatch = lines
        self.ip, self.interface = ip, interface
        # Absolute: the path is used as it is on the nodes, where the job's working directory may differ.
        self.shared_dir = os.path.abspath(os.path.expanduser(shared_dir)) if shared_dir else None
        self.commands = {"sbatch": sbatch, "srun": srun, "squeue": squeue, "scancel": scancel,
                         "scontrol": scontrol}

    def options(self) -> dict:
        return {"partition": self.partition, "time": self.time, "account": self.account,
                "extra_sbatch": list(self.extra_sbatch), "ip": self.ip, "interface": self.interface,
                "shared_dir": self.shared_dir, **self.commands}

    @classmethod
    def attach(cls, saved: dict, engines: dict) -> SlurmEngineSet | None:
        if not saved.get("job_id"):
            return None
        engine_set = SlurmEngineSet(str(saved["job_id"]), None, dict(saved.get("commands") or {
            "srun": "srun", "squeue": "squeue", "scancel": "scancel", "scontrol": "scontrol"}))
        engine_set.engines = engines
        engine_set.last = {k: saved.get(k) for k in ("state", "reason", "nodes")}
        return engine_set

    def _script(self, ctx: LaunchContext, folder: str) -> str:
        """The batch script that starts engines ``ctx.engine_ids`` with their files in ``folder``."""
        spec = ctx.spec_manager.get_kernel_spec(ctx.kernel_name)
        argv = [a.replace("{resource_dir}", spec.resource_dir or "") for a in spec.argv]
        options = [f"--job-name=ipyparallel_ext-{ctx.cluster_id}", f"--ntasks={len(ctx.engine_ids)}",
                   f"--output={os.path.join(folder, 'job.out')}"]
        for flag, value in (("partition", self.partition), ("time", self.time), ("account", self.account)):
            if value is not None:
                options.append(f"--{flag}={value}")
        mode = f"if:{self.interface}" if self.interface else (self.ip or "auto")
        env = dict(spec.env or {}, **ctx.env)
        srun = [self.commands["srun"], "--kill-on-bad-exit=0", "--wait=0", sys.executable, "-c", _BOOTSTRAP,
                folder, mode, socket.gethostname(), ctx.ip, *map(str, ctx.engine_ids), "--", *argv]
        return "\n".join([
            "#!/bin/sh",
            *(f"#SBATCH {option}" for option in options + self.extra_sbatch),
            "# A kernel started from a notebook's kernel must not watch that kernel's pid on another node.",
            "unset JPY_PARENT_PID",
            *(f"export {k}={shlex.quote(str(v))}" for k, v in env.items()),
            "exec " + shlex.join(srun),
            "",
        ])

    async def start(self, ctx: LaunchContext) -> SlurmEngineSet:
        if not ctx.engine_ids:
            raise ValueError("a Slurm job needs at least one engine to start (n >= 1)")
        base = self.shared_dir or ctx.folder
        os.makedirs(base, mode=0o700, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=f"slurm-{ctx.cluster_id}-{ctx.set_id}-", dir=base)
        path = os.path.join(folder, "job.sh")
        with open(path, "w") as f:
            f.write(self._script(ctx, folder))
        try:
            out = await asyncio.to_thread(_command, [self.commands["sbatch"], "--parsable", path])
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if out.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise EngineStartError(f"sbatch rejected the job for engines {ctx.engine_ids}:"
                                   f" {out.stderr.strip() or out.stdout.strip()}")
        # --parsable prints "<job id>" or "<job id>;<cluster>" (on the last line, after any notices).
        job_id = (out.stdout.strip().splitlines() or [""])[-1].split(";")[0]
        if not job_id.isdigit():
            shutil.rmtree(folder, ignore_errors=True)
            raise EngineStartError(f"sbatch gave no job id: {out.stdout.strip()!r} {out.stderr.strip()!r}")
        engine_set = SlurmEngineSet(job_id, folder, dict(self.commands))
        ctx.log.info("slurm job %s submitted for engines %s", engine_set.job_id, ctx.engine_ids)
        try:
            await _wait_for_engines(engine_set, ctx)
        except BaseException:
            try:
                await engine_set.cancel()
            except Exception as e:  # the start failure is what the user needs to see
                ctx.log.warning("cancelling slurm job %s: %s", engine_set.job_id, e)
            raise
        return engine_set


async def _wait_for_engines(engine_set: SlurmEngineSet, ctx: LaunchContext) -> None:
    """Wait until every engine of the job wrote its connection file and answers heartbeats.

    Logs the job's pending reason whenever it changes; raises
    EngineStartError if the job ends first or ``ctx.timeout`` passes.
    """
    job, folder = engine_set.job_id, engine_set.folder
    deadline = time.monotonic() + ctx.timeout
    nodes: dict = {}
    next_poll = 0.0
    reported = None
    while len(nodes) < len(ctx.engine_ids):
        for eid in ctx.engine_ids:
            if eid not in nodes:
                info = _read_node_file(os.path.join(folder, f"engine-{eid}.node.json"))
                if info is not None:
                    nodes[eid] = info
        now = time.monotonic()
        if len(nodes) == len(ctx.engine_ids):
            break
        if now >= next_poll:
            next_poll = now + _STATE_POLL
            last = await asyncio.to_thread(engine_set.refresh)
            if last["state"] == "PENDING" and last["reason"] and last["reason"] != reported:
                reported = last["reason"]
                ctx.log.warning("slurm job %s pending (%s)", job, reported)
            elif last["state"] == "RUNNING" and reported not in (None, "RUNNING"):
                reported = "RUNNING"
                ctx.log.info("slurm job %s running on %s", job, last["nodes"])
            if last["state"] not in _ALIVE:
                raise EngineStartError(f"slurm job {job} is {last['state']}"
                                       f"{' (' + last['reason'] + ')' if last['reason'] else ''} before"
                                       f" engines {sorted(set(ctx.engine_ids) - set(nodes))} started"
                                       f"{_logs(folder, ctx.engine_ids)}")
        if now > deadline:
            last = engine_set.last
            if last["state"] == "PENDING":
                raise EngineStartError(f"slurm job {job} pending ({last['reason'] or 'no reason given yet'})"
                                       f" for {ctx.timeout} s: cancelled it (a busy queue needs a longer"
                                       f" engine_timeout)")
            raise EngineStartError(f"slurm job {job} is {last['state']} on {last['nodes']}, but engines"
                                   f" {sorted(set(ctx.engine_ids) - set(nodes))} did not start within"
                                   f" {ctx.timeout} s{_logs(folder, ctx.engine_ids)}")
        await asyncio.sleep(_POLL)
    engine_set.last = {**engine_set.last, "state": "RUNNING", "reason": None}
    for eid, (info, node) in nodes.items():
        client_file = os.path.join(folder, f"engine-{eid}.json")
        write_cluster_file(client_file, dict(info, ip=node["ip"]))
        engine_set.engines[eid] = SlurmEngine(eid, client_file, dict(info, ip=node["ip"]), node, job,
                                              engine_set.commands)
    remaining = max(deadline - time.monotonic(), 1.0)
    handles = list(engine_set.engines.values())
    answered = await asyncio.gather(*(heartbeat(h.address, remaining) for h in handles))
    silent = [f"{h.engine_id} ({h.address} on {h.host})" for h, ok in zip(handles, answered) if not ok]
    if silent:
        # Typically an address this host cannot reach: a firewall, or the wrong interface.
        raise EngineStartError(f"engines {', '.join(silent)} of slurm job {job} started but their heartbeats"
                               f" did not answer here within {remaining:.0f} s: is that address reachable"
                               f" from {socket.gethostname()}? (launcher options ip=, interface=)"
                               f"{_logs(folder, ctx.engine_ids)}")


def _read_node_file(path: str):
    """``(connection info, node facts)`` once the kernel has written its ports into ``path``, else None."""
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):  # not there yet, or being rewritten by the kernel
        return None
    if not all(info.get(p) for p in _PORTS):
        return None
    node = info.pop("ipyparallel_ext")
    return info, node


def _logs(folder: str, engine_ids) -> str:
    """The end of the job's output and of each engine's log, for a start failure's message."""
    parts = []
    for name in ["job.out", *(f"engine-{i}.log" for i in engine_ids)]:
        tail = log_tail(os.path.join(folder, name), _LOG_TAIL)
        if tail:
            parts.append(f"\n--- {name}:\n{tail}")
    return "".join(parts)
