"""Running ssh for the SSH launcher (:mod:`._ssh`): one-shot runs of the remote helper, and each host's session.

:meth:`Ssh.remote` runs :mod:`._ssh_remote` on a host (``ssh host python3 -``,
the program and its request on stdin) and reads its answer lines as they
come.  :meth:`Ssh.session` starts a host's long-lived ssh (a
:class:`Session`): the tunnel's forwards, and a remote watch that stops the
host's kernels when that ssh ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_CONNECT_TIMEOUT = 20  # seconds ssh tries to reach a host (a host that is down: ssh says so, then)
_SESSION_STOP_WAIT = 5.0  # seconds a session's ssh gets to exit after SIGTERM
# The session's remote command: run the program that comes first on stdin, leaving the rest of it open.
_KEEPER = "import sys; exec(sys.stdin.buffer.read(int(sys.stdin.buffer.readline())))"
_SCRIPT = Path(__file__).with_name("_ssh_remote.py").read_text()
# Noise every login with StrictHostKeyChecking=no prints: not part of an error.
_SSH_NOISE = ("Warning: Permanently added",)


def parse_host(spec: str) -> tuple:
    """``'user@host:port'`` -> ``('user@host', 'host', 'port' or None)``."""
    if not isinstance(spec, str) or not spec.strip() or any(c.isspace() for c in spec):
        raise ValueError(f"ssh host {spec!r}: expected 'host', 'user@host', 'host:port' or 'user@host:port'")
    user, _, hostport = spec.rpartition("@")
    if hostport.startswith("["):  # [v6 address]:port
        address, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        address, port = hostport.split(":")
    else:
        address, port = hostport, None
    if not address or (port is not None and not port.isdigit()):
        raise ValueError(f"ssh host {spec!r}: expected 'host', 'user@host', 'host:port' or 'user@host:port'")
    return (f"{user}@{address}" if user else address), address, port


def clean_stderr(stderr: str) -> str:
    return "\n".join(line for line in stderr.strip().splitlines() if not line.startswith(_SSH_NOISE))


@dataclass
class Answer:
    """What one run of :mod:`._ssh_remote` said, as far as it got."""

    folder: str | None = None
    pids: dict = field(default_factory=dict)
    ready: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    done: bool = False
    returncode: int | None = None
    stderr: str = ""
    timed_out: bool = False

    def read(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "dir":
            self.folder = rest
        elif word == "done":
            self.done = True
        elif word in ("pid", "ready", "error"):
            eid, _, value = rest.partition(" ")
            table = {"pid": self.pids, "ready": self.ready, "error": self.errors}[word]
            table[int(eid)] = json.loads(value)

    def failure(self, what: str, timeout: float) -> str | None:
        """Why this run failed, in ssh's and the kernels' own words; None if it did not."""
        if self.errors:
            return "; ".join(f"{what}: engine {eid}: {why}" for eid, why in sorted(self.errors.items()))
        if self.timed_out:
            said = clean_stderr(self.stderr)
            return f"{what} took longer than {timeout:g} s" + (f": {said}" if said else "")
        if not self.done:
            return f"{what} failed (exit code {self.returncode}): {clean_stderr(self.stderr) or 'no output'}"
        return None


def _program(request: dict) -> bytes:
    """The Python text that runs ``request`` remotely: :mod:`._ssh_remote` and a call of its ``main``."""
    return f"{_SCRIPT}\nmain(json.loads({json.dumps(request)!r}))\n".encode()


class Ssh:
    """How to run ssh to one host: the command, its options, the remote Python."""

    def __init__(self, ssh: str, ssh_args: list, python: str):
        self.ssh, self.ssh_args, self.python = ssh, ssh_args, python

    def argv(self, spec: str, options=(), command=()) -> list:
        dest, _, port = parse_host(spec)
        # ssh keeps the first value it is given of each option: a host's own port wins over a -p in
        # ssh_args, and the user's ssh_args win over our defaults.
        return [*shlex.split(self.ssh), *(["-p", port] if port else []), *self.ssh_args, "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={_CONNECT_TIMEOUT}", *options, dest, *command]

    async def remote(self, spec: str, request: dict, timeout: float, answer: Answer) -> Answer:
        """Run :mod:`._ssh_remote` on ``spec`` with ``request``, filling ``answer`` as lines come."""
        process = await asyncio.create_subprocess_exec(
            *self.argv(spec, command=[self.python, "-"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        stderr = asyncio.ensure_future(process.stderr.read())
        try:
            process.stdin.write(_program(request))
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError):  # ssh gave up before reading: its stderr says why
            pass
        deadline = time.monotonic() + timeout
        try:
            while line := await asyncio.wait_for(process.stdout.readline(), max(0.0, deadline - time.monotonic())):
                answer.read(line.decode().rstrip("\n"))
            answer.returncode = await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            answer.timed_out = True
            process.kill()
            await process.wait()
        finally:
            if process.returncode is None:  # cancelled: leave no ssh behind
                process.kill()
                await process.wait()
        answer.stderr = (await stderr).decode(errors="replace")
        return answer

    def session(self, spec: str, options: list, folder: str, log: str, grace: float) -> Session:
        """Start the host's long-lived ssh with ``options`` (forwards), its watch on remote ``folder``.

        ssh's stderr goes to file ``log``; the watch gives kernels ``grace``
        seconds after SIGTERM.
        """
        command = [self.python, "-c", shlex.quote(_KEEPER), shlex.quote(folder)]
        with open(log, "wb") as out:
            # Its own session: a Ctrl-C in the terminal (SIGINT to the
            # foreground group) must not end it.
            process = subprocess.Popen(self.argv(spec, options, command), stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
        program = _program({"op": "watch", "folder": folder, "grace": grace})
        try:  # a few kB: the pipe takes them at once; its end stays open as long as we run
            process.stdin.write(b"%d\n" % len(program) + program)
            process.stdin.flush()
        except BrokenPipeError:  # ssh is gone already: its log says why
            pass
        return Session(process, log=log, folder=folder, grace=grace)


class Session:
    """A host's long-lived ssh process, ours (a Popen) or another process's (a pid).

    It carries the tunnel's forwards (``-L``), and runs :func:`._ssh_remote.watch`
    on the host: when this ssh ends, whoever ends it (a stop, a crash of the
    Python that started it), the host's kernels are stopped and their folder
    removed, as local kernels end with their parent.
    """

    def __init__(self, process=None, pid: int | None = None, log: str | None = None,
                 folder: str | None = None, grace: float = 0.0):
        self.process = process
        self.pid = process.pid if process is not None else pid
        self.log = log
        self.folder = folder
        self.grace = grace  # what the remote watch may take to stop kernels still there

    async def _wait(self, timeout: float) -> bool:
        """True once the ssh has exited, False if it still runs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.alive()

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_is_session(self.pid, self.folder)

    def output(self) -> str:
        """What ssh said (its stderr)."""
        try:
            with open(self.log, errors="replace") as f:
                return clean_stderr(f.read())
        except (OSError, TypeError):
            return ""

    async def stop(self) -> None:
        """End the session; ours returns once its remote watch has finished too.

        Ending our ssh's stdin ends the remote watch (it stops what kernels
        are left, removes the folder), then ssh itself: nothing of it is left
        on the host when this returns.  Another process's session is sent
        SIGTERM; its remote end then finishes on its own.
        """
        if self.process is not None and self.alive():
            try:
                self.process.stdin.close()
            except OSError:
                pass
            await self._wait(_SESSION_STOP_WAIT + self.grace)
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            if not await self._wait(_SESSION_STOP_WAIT):
                os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            await asyncio.to_thread(self.process.wait, _SESSION_STOP_WAIT)
        if self.log:
            try:
                os.remove(self.log)
            except FileNotFoundError:
                pass


def _pid_is_session(pid, folder) -> bool:
    """True if ``pid`` runs and is the ssh session of remote ``folder`` (a saved pid may be recycled)."""
    if not os.path.isdir("/proc/self"):  # no cheap way to look: trust the pid
        try:
            os.kill(pid, 0)
        except (OSError, TypeError):
            return False
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read()
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, TypeError, IndexError):
        return False
    return not zombie and bool(folder) and folder.encode() in args
