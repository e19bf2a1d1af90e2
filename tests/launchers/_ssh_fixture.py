"""A throwaway sshd on two loopback "hosts" (127.0.0.2 and 127.0.0.3), for the SSH launcher's tests.

Debian's ``/usr/sbin/sshd`` with its own host key, user key, config and
pid file in a temp folder, on a free port; it needs root (it switches to
the logged-in user).  Clients use :meth:`SSHServer.client_args`, which
read no ssh config and touch no ``~/.ssh``.  The pytest fixture that starts
one per test module is ``sshd`` in ``test_ssh.py``.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import psutil

SSHD = "/usr/sbin/sshd"
HOSTS = ("127.0.0.2", "127.0.0.3")
_START_TIMEOUT = 20.0
_STOP_WAIT = 10.0


def skip_reason():
    """Why the sshd tests cannot run here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (Debian: apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "the ssh client (ssh, ssh-keygen) is not installed"
    if os.geteuid() != 0:
        return "sshd needs root to log users in; run the ssh launcher tests as root (as CI does)"
    return None


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True,
                   stdout=subprocess.DEVNULL, timeout=30)


def _free_port():
    """A port free on every host address now."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((HOSTS[0], 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind((HOSTS[1], port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both 127.0.0.2 and 127.0.0.3")


def _accepts(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class SSHServer:
    """sshd listening on :data:`HOSTS` at :attr:`port`, with a user key (:attr:`key`) it accepts for root."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="ipp-sshd-")
        self.key = os.path.join(self.folder, "user_key")
        self.wrong_key = os.path.join(self.folder, "wrong_key")
        for key in ("host_key", "user_key", "wrong_key"):
            _keygen(os.path.join(self.folder, key))
        shutil.copy(self.key + ".pub", os.path.join(self.folder, "authorized_keys"))
        self.log = os.path.join(self.folder, "sshd.log")
        self.process = None
        self.port = None

    def start(self):
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory: sshd exits without it
        for _ in range(3):  # the port may be taken between picking and binding
            self.port = _free_port()
            config = os.path.join(self.folder, "sshd_config")
            with open(config, "w") as f:
                f.write("\n".join([
                    f"Port {self.port}", *(f"ListenAddress {h}" for h in HOSTS),
                    f"HostKey {self.folder}/host_key", f"PidFile {self.folder}/sshd.pid",
                    f"AuthorizedKeysFile {self.folder}/authorized_keys",
                    "PermitRootLogin prohibit-password", "UsePAM no", "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no", "AllowTcpForwarding yes", "StrictModes no",
                    "MaxStartups 50", "MaxSessions 50", ""]))
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=log)
            deadline = time.monotonic() + _START_TIMEOUT
            while self.process.poll() is None and time.monotonic() < deadline:
                if all(_accepts(h, self.port) for h in HOSTS):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"sshd did not start: {self.log_text()}")

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]

    def client_args(self, key=None):
        """ssh options that reach this server as root with ``key`` (default: the accepted one)."""
        return ["-F", "none", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-i", key or self.key, "-p", str(self.port)]

    def run(self, host, command, timeout=30):
        """Run ``command`` (a shell string) on ``host`` over ssh; the CompletedProcess."""
        return subprocess.run(["ssh", *self.client_args(), f"root@{host}", command], capture_output=True,
                              text=True, timeout=timeout)

    def stop(self):
        """Stop sshd and every session process it still has."""
        if self.process is None:
            return
        try:
            sessions = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            sessions = []
        self.process.terminate()
        for p in sessions:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        try:
            self.process.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(_STOP_WAIT)
        psutil.wait_procs(sessions, timeout=_STOP_WAIT)
        self.process = None

    def close(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

