"""A real single-node Slurm (slurmctld + slurmd on localhost) for the Slurm launcher's tests.

:class:`SlurmInstance` writes a minimal ``slurm.conf`` in a temp dir (free
ports, state/spool/log/pid files there, no accounting database, auth/none
when the plugin exists, else munge through a munged of its own), points ``SLURM_CONF`` at it, starts the
two daemons in the foreground and waits for the node to be idle.
:meth:`SlurmInstance.stop` cancels every job and waits for an empty queue
before it stops the daemons: killing slurmd does not end running job steps.
It needs root (slurmd runs jobs as their user and SlurmUser=root) and
Debian's ``slurm-wlm``; :func:`why_not` says why it cannot run.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
                "/usr/lib64/slurm", "/usr/lib/slurm")
_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
_UP_TIMEOUT = 30.0  # seconds the daemons get to report the node idle
_DRAIN_TIMEOUT = 30.0  # seconds cancelled jobs get to leave the queue at teardown
PARTITION = "debug"


def why_not() -> str | None:
    """Why a Slurm instance cannot run here (not root, binaries missing), or None."""
    if os.geteuid() != 0:
        return "the Slurm tests start slurmctld and slurmd, which needs root"
    missing = [b for b in _BINARIES if shutil.which(b) is None
               and not os.path.exists(os.path.join("/usr/sbin", b))]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}; Debian: apt-get install slurm-wlm)"
    if _auth() == "auth/munge" and shutil.which("munged") is None and not os.path.exists("/usr/sbin/munged"):
        return "Slurm has no auth_none plugin here and munged is not installed"
    return None


def _auth() -> str:
    """auth/none if the plugin is installed (no munge daemon to run), else auth/munge."""
    found = any(glob.glob(os.path.join(d, "auth_none.so")) for d in _PLUGIN_DIRS)
    return "auth/none" if found else "auth/munge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or os.path.join("/usr/sbin", name)


def _real_memory() -> int:
    """The node's memory in MB as slurmd measures it (a node that claims more is drained)."""
    out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    for word in out.split():
        if word.startswith("RealMemory="):
            return int(word.split("=", 1)[1])
    return 1000


class SlurmInstance:
    """slurmctld + slurmd on localhost, configured in a temp dir; :meth:`start`, then :meth:`stop`."""

    def __init__(self, auth: str | None = None):
        self.auth = auth or _auth()
        self.dir = tempfile.mkdtemp(prefix="slurm-test-")
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.cpus = os.cpu_count() or 1
        self.procs: list = []
        self._env_before = os.environ.get("SLURM_CONF")

    def _write_conf(self) -> None:
        d, auth = self.dir, self.auth
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        munge = [f"AuthInfo=socket={self.munge_socket}"] if auth == "auth/munge" else []
        lines = [
            "ClusterName=ipptest", "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            f"AuthType={auth}", f"CredType={auth.replace('auth', 'cred')}", *munge,
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0", "MpiDefault=none",
            "MailProg=/bin/true", "ReturnToService=2",
            f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
            f"NodeName=localhost CPUs={self.cpus} RealMemory={_real_memory()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def munge_socket(self) -> str:
        return os.path.join(self.dir, "munge", "munge.socket")

    def _start_munged(self) -> None:
        """A munged of our own (temp key, socket, pid, log and seed files) for auth/munge."""
        folder = os.path.dirname(self.munge_socket)
        os.makedirs(folder)
        os.chmod(folder, 0o711)  # munged wants its socket folder searchable by all (clients run as any user)
        key = os.path.join(folder, "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        # --force: as root, and with the socket under /tmp (a sticky, world-writable parent).
        self._spawn([_sbin("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={key}", f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                     f"--seed-file={folder}/munged.seed"])
        deadline = time.monotonic() + _UP_TIMEOUT
        while not os.path.exists(self.munge_socket):
            if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self.logs()}")
            time.sleep(0.05)

    def _spawn(self, argv) -> None:
        with open(os.path.join(self.dir, os.path.basename(argv[0]) + ".out"), "wb") as log:
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def start(self) -> SlurmInstance:
        """Write the config, start both daemons, wait until the node is idle."""
        self._write_conf()
        os.environ["SLURM_CONF"] = self.conf
        try:
            if self.auth == "auth/munge":
                self._start_munged()
            self._spawn([_sbin("slurmctld"), "-D", "-i", "-f", self.conf])
            self._spawn([_sbin("slurmd"), "-D", "-N", "localhost", "-f", self.conf])
            deadline = time.monotonic() + _UP_TIMEOUT
            while self.node_state() != "idle":
                dead = [p.args[0] for p in self.procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"Slurm did not come up ({', '.join(dead) or 'node not idle'} in"
                                       f" {_UP_TIMEOUT} s):\n{self.logs()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def node_state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def jobs(self) -> list:
        """Ids of the jobs squeue lists."""
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=10)
        return out.stdout.split()

    def logs(self) -> str:
        """The end of the daemons' logs (for a failure message)."""
        text = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.out",
                     "munge/munged.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text.append(f"--- {name}\n" + "".join(f.readlines()[-15:]))
            except OSError:
                pass
        return "\n".join(text)

    def drain(self, timeout: float = _DRAIN_TIMEOUT) -> list:
        """Cancel every job and wait until squeue lists none; the ids still listed after ``timeout``."""
        if not self.procs or any(p.poll() is not None for p in self.procs):
            return []
        subprocess.run(["scancel", "--user=root"], capture_output=True, timeout=10)
        deadline = time.monotonic() + timeout
        while (left := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def stop(self) -> None:
        """Cancel all jobs, wait for an empty queue, stop the daemons, remove the temp dir."""
        try:
            self.drain()
        finally:
            for proc in reversed(self.procs):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
            self.procs = []
            if self._env_before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = self._env_before
            shutil.rmtree(self.dir, ignore_errors=True)
