"""Engines on other hosts over ssh: ``Cluster(engines="ssh", launcher_options={"hosts": {host: n}})``.

One engine set, per host::

    this machine                                        host
    ------------                                        ----
    ssh host python3 -   <- _ssh_remote.py + request -> mkdtemp (0700) under /tmp, engine-N.json
      (on stdin: key, ip 127.0.0.1, ports 0)            (0600); per engine `python3 -m ipykernel_launcher
                                                          -f engine-N.json` in its own session: it binds
                         <- "pid N ..", "ready N {..}" -  random ports on the host's loopback, writes them
    ssh -L 127.0.0.1:l:127.0.0.1:r ... host python3 -c <watch>
      one per host, our own process and pid: the tunnel; its remote end waits for the end of its
      stdin, then stops the host's kernels (so they end with this process, however it ends)
    <cluster folder>/engine-N.json: ip 127.0.0.1, the forwarded ports l, the same key

Clients connect to that last file as to any local kernel: they know
nothing of hosts or tunnels, and nothing but ssh crosses the network.  With
``tunnel=False`` the kernels listen on the host's address instead and the
file points there (for trusted networks only: the traffic is signed, not
encrypted); the per-host ssh session still runs, without forwards.
Stopping kills the remote kernels through ssh (SIGTERM, then SIGKILL after
a grace period), removes the remote folder, and ends the session.  Another
process can do the same from the saved facts (:meth:`SSHLauncher.attach`):
hosts, remote pids and folders, ssh session pids.

The remote pids are checked against the remote folder before any signal
(``/proc``), so a recycled pid is never killed.  Running ssh lives in
:mod:`._ssh_run`, the remote side in :mod:`._ssh_remote`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field

from jupyter_client.connect import write_connection_file

from ..error import EngineStartError
from ._launcher import EngineSet, LaunchContext, Launcher
from ._local import heartbeat, heartbeat_address
from ._ssh_run import Answer, Session, Ssh, parse_host

_PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_GRACE = 5.0  # seconds a remote kernel gets to exit after SIGTERM, before SIGKILL
_LOGIN_TIMEOUT = 30.0  # seconds an ssh command that stops or signals kernels may take on top
_TUNNEL_TRIES = 3  # tunnels started on fresh local ports when one of them was taken meanwhile


def _normalise_hosts(hosts) -> dict:
    """``{host: count}`` from a dict or a list of hosts (one engine per entry)."""
    if isinstance(hosts, dict):
        counts = dict(hosts)
    elif isinstance(hosts, (list, tuple)):
        counts = {}
        for host in hosts:
            counts[host] = counts.get(host, 0) + 1
    else:
        raise TypeError(f"SSHLauncher(hosts={hosts!r}): expected {{host: engine count}} or a list of hosts")
    if not counts:
        raise ValueError("SSHLauncher(hosts=...): no hosts given")
    for host, count in counts.items():
        parse_host(host)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"SSHLauncher(hosts=...): engine count {count!r} of host {host!r} is not a"
                             f" positive integer")
    return counts


def _place(counts: dict, n: int) -> dict:
    """``{host: number of engines}`` for ``n`` engines: all slots if ``n`` is their total, else spread evenly."""
    total = sum(counts.values())
    if n > total:
        raise EngineStartError(f"ssh launcher: {n} engines asked for, but hosts {counts} have {total}"
                               f" slots; start at most {total} or list more hosts")
    placed = dict.fromkeys(counts, 0)
    while n:
        for host in counts:
            if n and placed[host] < counts[host]:
                placed[host] += 1
                n -= 1
    return {host: k for host, k in placed.items() if k}


def _free_ports(k: int) -> list:
    """``k`` distinct ports free on this machine's loopback now (all held open together, then released)."""
    socks = []
    try:
        for _ in range(k):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class _Host:
    """One host's part of an engine set."""

    spec: str
    engine_ids: list
    folder: str | None = None
    pids: dict = field(default_factory=dict)  # engine id -> remote kernel pid
    session: Session | None = None
    address: str | None = None  # its IPv4 address (without tunnels only)

    def facts(self) -> dict:
        return {"engines": list(self.engine_ids), "remote_pids": {str(k): v for k, v in self.pids.items()},
                "remote_dir": self.folder, "ssh_pid": self.session.pid if self.session else None}


class SSHEngine:
    """The handle of one remote kernel: its local connection file; signals go over ssh."""

    provisioner = None
    pid = None  # the kernel's process is not on this machine

    def __init__(self, engine_set: SSHEngineSet, engine_id: int, connection_file: str, host: str):
        self.engine_set = engine_set
        self.engine_id = engine_id
        self.connection_file = connection_file
        self.host = host  # where it runs, for cluster files

    async def signal_kernel(self, signum) -> None:
        await self.engine_set.signal(self.engine_id, signum)


class SSHEngineSet(EngineSet):
    """Kernels on ssh hosts, reached through one tunnel per host (or directly with ``tunnel=False``)."""

    launcher = "ssh"

    def __init__(self, ssh: Ssh, hosts: list, *, tunnel: bool, ctx: LaunchContext | None = None,
                 argv: list | None = None, bind_ip: str | None = None):
        super().__init__()
        self.ssh = ssh
        self.hosts = hosts
        self.tunnel = tunnel
        self.ctx = ctx  # None for a set of another process (attach): it can stop and signal, not start
        self.argv = argv  # the kernel command, "{python}" and "{connection_file}" filled in remotely
        self.bind_ip = bind_ip

    def _host_of(self, engine_id: int) -> _Host:
        return next(h for h in self.hosts if engine_id in h.engine_ids)

    # -- starting ---------------------------------------------------------------------

    def _kernel_ip(self, host: _Host) -> str:
        """Where a host's kernels listen: its loopback (tunnels), else the ``ip`` option or its address."""
        return "127.0.0.1" if self.tunnel else self.bind_ip or host.address

    def _client_ip(self, host: _Host) -> str:
        """Where clients reach a host's kernels: the tunnels' end here, else where they listen."""
        if self.tunnel:
            return "127.0.0.1"
        ip = self._kernel_ip(host)
        return host.address if ip in ("0.0.0.0", "*") else ip

    def _start_request(self, ctx: LaunchContext, remote_dir, host: _Host) -> dict:
        files = {str(eid): {"ip": self._kernel_ip(host), "transport": "tcp", "signature_scheme": "hmac-sha256",
                            "key": secrets.token_hex(32), "kernel_name": ctx.kernel_name,
                            **dict.fromkeys(_PORT_NAMES, 0)}
                 for eid in host.engine_ids}
        return {"op": "start", "dir": remote_dir, "files": files, "argv": self.argv, "env": ctx.env,
                "timeout": _remote_share(ctx.timeout), "grace": _GRACE}

    async def start_host(self, host: _Host, remote_dir) -> None:
        """Start a host's kernels, then its tunnel; write their local connection files."""
        ctx = self.ctx
        deadline = time.monotonic() + ctx.timeout  # one for the whole start: ssh, kernels, tunnel
        if not self.tunnel:  # the host's address, as this machine resolves it
            name = parse_host(host.spec)[1]
            try:
                found = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                    name, None, family=socket.AF_INET, type=socket.SOCK_STREAM), ctx.timeout)
            except (OSError, asyncio.TimeoutError) as e:
                raise EngineStartError(f"ssh host {host.spec}: cannot resolve {name!r}: {e}") from e
            host.address = found[0][4][0]
        answer = Answer()
        try:
            await self.ssh.remote(host.spec, self._start_request(ctx, remote_dir, host), ctx.timeout, answer)
        finally:  # whatever got started is known, to be stopped
            host.folder, host.pids = answer.folder, dict(answer.pids)
        why = answer.failure(f"ssh {host.spec}", ctx.timeout)
        if why is None and set(answer.ready) != set(host.engine_ids):
            why = f"ssh {host.spec}: no answer for engines {sorted(set(host.engine_ids) - set(answer.ready))}"
        if why is not None:
            raise EngineStartError(why)
        forwards = await self._open_session(host, answer.ready, deadline)
        for eid, info in answer.ready.items():
            path = os.path.join(ctx.folder, f"engine-{eid}.json")
            write_connection_file(path, ip=self._client_ip(host), key=info["key"].encode(),
                                  transport="tcp", signature_scheme=info["signature_scheme"],
                                  kernel_name=ctx.kernel_name, **forwards[eid])
            self.engines[eid] = SSHEngine(self, eid, path, parse_host(host.spec)[1])

    async def _open_session(self, host: _Host, ready: dict, deadline: float) -> dict:
        """Start the host's ssh session (with the tunnel); ``{engine id: {port name: port clients use}}``.

        Returns once every kernel's heartbeat answers through it.
        """
        for attempt in range(_TUNNEL_TRIES if self.tunnel else 1):
            options = []
            if self.tunnel:
                local = iter(_free_ports(len(ready) * len(_PORT_NAMES)))
                forwards = {eid: {name: next(local) for name in _PORT_NAMES} for eid in ready}
                options = ["-o", "ExitOnForwardFailure=yes"]
                for eid, info in ready.items():
                    for name in _PORT_NAMES:
                        options += ["-L", f"127.0.0.1:{forwards[eid][name]}:127.0.0.1:{info[name]}"]
            else:
                forwards = {eid: {name: info[name] for name in _PORT_NAMES} for eid, info in ready.items()}
            log = os.path.join(self.ctx.folder, f"ssh-{self.ctx.set_id}-{host.spec.replace('/', '_')}.log")
            host.session = self.ssh.session(host.spec, options, host.folder, log, _GRACE)
            process = host.session.process
            silent = await self._silent(host, forwards, process, deadline)
            if not silent:
                return forwards
            if process.poll() is None:  # ssh runs; the kernels do not answer through it
                where = ", ".join(f"{self._client_ip(host)}:{forwards[eid]['hb_port']}" for eid in silent)
                raise EngineStartError(f"ssh {host.spec}: engines {silent} bound their ports but their"
                                       f" heartbeats ({where}) did not answer in time")
            said = host.session.output()
            await host.session.stop()
            host.session = None
            taken = "Address already in use" in said or "cannot listen" in said
            if not taken or attempt == _TUNNEL_TRIES - 1:
                raise EngineStartError(f"ssh session to {host.spec} exited (code {process.returncode}):"
                                       f" {said or 'no output'}")
        raise AssertionError("unreachable")

    async def _silent(self, host: _Host, forwards: dict, process, deadline: float) -> list:
        """The engines of ``host`` whose heartbeat did not answer by ``deadline``.

        All of them once ``process`` (the host's ssh) exits.
        """
        left = max(1.0, deadline - time.monotonic())
        ids = list(forwards)
        answered = await asyncio.gather(*(
            heartbeat(heartbeat_address("tcp", self._client_ip(host), forwards[eid]["hb_port"]), left, process)
            for eid in ids))
        return [eid for eid, ok in zip(ids, answered) if not ok]

    # -- the EngineSet interface ---------------------------------------------------------

    async def restart(self, engine_id: int) -> None:
        host = self._host_of(engine_id)
        ctx = self.ctx
        if ctx is None:
            return await super().restart(engine_id)
        answer = Answer()
        request = {"op": "restart", "folder": host.folder, "engine_id": str(engine_id),
                   "pid": host.pids.get(engine_id), "argv": self.argv, "env": ctx.env,
                   "timeout": _remote_share(ctx.timeout), "grace": _GRACE}
        try:
            await self.ssh.remote(host.spec, request, ctx.timeout + _GRACE, answer)
        finally:
            host.pids.update(answer.pids)
        why = answer.failure(f"ssh {host.spec}", ctx.timeout)
        if why is not None:
            raise EngineStartError(f"engine {engine_id} did not restart: {why}")
        # Same connection file, same remote ports: the tunnel (if any) reaches the new kernel as it is.
        forwards = {engine_id: _local_ports(self.engines[engine_id].connection_file)}
        process = getattr(host.session, "process", None)
        if await self._silent(host, forwards, process, time.monotonic() + ctx.timeout):
            gone = process is not None and process.poll() is not None
            why = (f"the ssh session to {host.spec} is gone: {host.session.output() or 'no output'}" if gone
                   else "its heartbeat did not answer in time")
            raise EngineStartError(f"engine {engine_id} restarted, but {why}")

    async def stop(self, engine_ids) -> None:
        ids = set(engine_ids)
        await asyncio.gather(*(self._stop_on(h, ids) for h in self.hosts if ids & set(h.engine_ids)))
        for eid in ids:
            handle = self.engines.pop(eid, None)
            if handle is not None and os.path.isfile(handle.connection_file):
                os.remove(handle.connection_file)

    async def _stop_on(self, host: _Host, ids: set) -> None:
        mine = [i for i in host.engine_ids if i in ids]
        host.engine_ids = [i for i in host.engine_ids if i not in ids]
        last = not host.engine_ids
        if host.folder is not None:
            request = {"op": "stop", "folder": host.folder, "grace": _GRACE, "remove_folder": last,
                       "pids": {str(i): host.pids[i] for i in mine if i in host.pids}}
            answer = await self.ssh.remote(host.spec, request, _GRACE + _LOGIN_TIMEOUT, Answer())
            why = answer.failure(f"ssh {host.spec}", _GRACE + _LOGIN_TIMEOUT)
            if why is not None:
                self._log().warning("could not stop engines %s on %s: %s", mine, host.spec, why)
        for i in mine:
            host.pids.pop(i, None)
        if last:
            host.folder = None
            if host.session is not None:
                await host.session.stop()
                host.session = None

    async def signal(self, engine_id: int, signum) -> None:
        """Send ``signum`` to a remote kernel (and what it runs) over ssh."""
        host = self._host_of(engine_id)
        request = {"op": "signal", "folder": host.folder, "pid": host.pids[engine_id], "signum": int(signum)}
        answer = await self.ssh.remote(host.spec, request, _LOGIN_TIMEOUT, Answer())
        why = answer.failure(f"ssh {host.spec}", _LOGIN_TIMEOUT)
        if why is not None:
            raise OSError(f"could not signal engine {engine_id} on {host.spec}: {why}")

    def _log(self) -> logging.Logger:
        return self.ctx.log if self.ctx is not None else logging.getLogger("ipyparallel_ext.cluster")

    def state(self, engine_id: int) -> str:
        session = self._host_of(engine_id).session
        return "running" if session is not None and session.alive() else "dead"

    def status(self) -> dict:
        live = [h for h in self.hosts if h.engine_ids]
        if not live:
            state = "stopped"
        elif any(h.session is None or not h.session.alive() for h in live):
            state = "ssh session lost"
        else:
            state = "running"
        return {"launcher": self.launcher, "state": state, "tunnel": self.tunnel,
                "hosts": {h.spec: h.facts() for h in live}}

    def to_dict(self) -> dict:
        return {**self.status(), "ssh": self.ssh.ssh, "ssh_args": list(self.ssh.ssh_args),
                "python": self.ssh.python}


def _remote_share(timeout: float) -> float:
    """The part of a start's ``timeout`` the remote helper waits for kernels: the rest is for ssh's login.

    The remote side then gives up first, and says why (the kernel's log).
    """
    return max(timeout - min(10.0, timeout / 4), 1.0)


def _local_ports(path: str) -> dict:
    with open(path) as f:
        info = json.load(f)
    return {k: info[k] for k in _PORT_NAMES}


def _kernel_argv(ctx: LaunchContext) -> list:
    """The kernelspec's argv for the remote host: a Python interpreter in it becomes the remote one."""
    argv = list(ctx.spec_manager.get_kernel_spec(ctx.kernel_name).argv)
    if argv and (argv[0] == sys.executable or os.path.basename(argv[0]).startswith("python")):
        argv[0] = "{python}"  # the interpreter that runs _ssh_remote there (the `python` option)
    return argv


class SSHLauncher(Launcher):
    """Engines on other hosts over ssh (``engines="ssh"``), reached through ssh tunnels by default.

    Parameters
    ----------
    hosts : dict or list
        ``{host: engine count}``, or a list of hosts (one engine per entry).
        A host is ``host``, ``user@host``, ``host:port`` or ``user@host:port``
        (its port wins over a ``-p`` in ``ssh_args``).
        A Cluster with no ``n`` starts them all; fewer are spread over the
        hosts; more is an error.
    ssh : str
        The ssh command (default ``"ssh"``).
    ssh_args : list of str, or str
        Extra ssh options for every ssh run (e.g. ``["-i", key, "-o",
        "ProxyJump=gateway"]``); a string is split as a shell would.
        ``-o BatchMode=yes`` (there is no terminal to type a password in:
        use keys or an agent) and ``-o ConnectTimeout=20`` follow them.
    python : str
        The remote Python that runs the kernels (default ``"python3"``; it
        needs ipykernel); the remote shell reads it, so ``~/venv/bin/python``
        works.
    remote_dir : str, optional
        Remote folder under which each engine set makes its own 0700 folder
        for connection files and logs (default: the remote's temp dir, /tmp).
    tunnel : bool
        Reach the kernels through ssh tunnels (default True: they listen on
        the remote loopback only).  With False they listen on ``ip`` and
        clients connect there directly.
    ip : str, optional
        With ``tunnel=False``: the address kernels listen on (default: the
        host's address as this machine resolves it; ``"0.0.0.0"`` for all).
    """

    name = "ssh"

    def __init__(self, hosts, ssh: str = "ssh", ssh_args=(), python: str = "python3", remote_dir=None,
                 tunnel: bool = True, ip: str | None = None):
        self.hosts = _normalise_hosts(hosts)
        if isinstance(ssh_args, str):
            ssh_args = shlex.split(ssh_args)
        if not all(isinstance(a, str) for a in ssh_args):
            raise TypeError(f"SSHLauncher(ssh_args={ssh_args!r}): expected a list of strings")
        self.ssh_args = list(ssh_args)
        if not isinstance(ssh, str) or not ssh.strip():
            raise ValueError(f"SSHLauncher(ssh={ssh!r}): expected the ssh command")
        if not isinstance(python, str) or not python.strip():
            raise ValueError(f"SSHLauncher(python={python!r}): expected the remote Python's command")
        self.ssh, self.python, self.remote_dir = ssh, python, remote_dir
        self.tunnel, self.ip = bool(tunnel), ip

    def options(self) -> dict:
        return {"hosts": dict(self.hosts), "ssh": self.ssh, "ssh_args": list(self.ssh_args),
                "python": self.python, "remote_dir": self.remote_dir, "tunnel": self.tunnel, "ip": self.ip}

    def default_n(self) -> int:
        """Every slot of :attr:`hosts`."""
        return sum(self.hosts.values())

    async def start(self, ctx: LaunchContext) -> SSHEngineSet:
        placed = _place(self.hosts, len(ctx.engine_ids))
        ids = iter(ctx.engine_ids)
        hosts = [_Host(spec, [next(ids) for _ in range(k)]) for spec, k in placed.items()]
        engine_set = SSHEngineSet(Ssh(self.ssh, self.ssh_args, self.python), hosts, tunnel=self.tunnel,
                                  ctx=ctx, argv=_kernel_argv(ctx), bind_ip=self.ip)
        try:
            results = await asyncio.gather(*(engine_set.start_host(h, self.remote_dir) for h in hosts),
                                           return_exceptions=True)
        except BaseException:  # cancelled: stop what the hosts got to start
            await engine_set.stop(ctx.engine_ids)
            raise
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await engine_set.stop(ctx.engine_ids)
            raise EngineStartError(f"ssh launcher: {len(errors)} of {len(hosts)} hosts failed to start"
                                   f" engines:\n" + "\n".join(f"  {e}" for e in errors)) from errors[0]
        return engine_set

    @classmethod
    def attach(cls, saved: dict, engines: dict) -> SSHEngineSet | None:
        try:
            ssh = Ssh(saved["ssh"], list(saved["ssh_args"]), saved["python"])
            hosts = [_Host(spec, list(facts["engines"]), facts["remote_dir"],
                           {int(k): v for k, v in facts["remote_pids"].items()},
                           Session(pid=facts["ssh_pid"], folder=facts["remote_dir"]) if facts.get("ssh_pid")
                           else None)
                     for spec, facts in saved["hosts"].items()]
            engine_set = SSHEngineSet(ssh, hosts, tunnel=saved["tunnel"])
        except (KeyError, TypeError, ValueError):
            return None
        engine_set.engines = dict(engines)
        return engine_set
