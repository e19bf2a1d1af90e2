"""The launcher interface: where engine kernels run, and how they start and stop.

A :class:`~._cluster.Cluster` starts engines in sets, one per
``start_engines`` call.  Its :class:`Launcher` (``engines="local"``,
``"mpi"``, ``"slurm"``, ``"ssh"`` or a configured instance) turns each such
call into an :class:`EngineSet`: ``n`` ordinary Jupyter kernels, somewhere,
under the engine ids the cluster picked.  Everything above a set (clients,
views, cluster files, restart, stop) is shared by every launcher, because a
set hands back, for each engine, a connection file *on this machine* that a
client can connect to as it is (ports reachable from here: through SSH
tunnels if need be).

A launcher runs ``python -m ipykernel_launcher`` (or a kernelspec's argv)
with a connection file: never an engine program of ours.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass
class LaunchContext:
    """What a cluster tells its launcher for one engine set."""

    cluster_id: str
    folder: str
    """The cluster's private (0700) folder on this machine: connection files and logs go here."""
    engine_ids: list
    """The ids of the engines to start, in order (engine ``engine_ids[k]`` is the k-th kernel: MPI rank k)."""
    set_id: str
    kernel_name: str
    spec_manager: object
    """A :class:`jupyter_client.kernelspec.KernelSpecManager` that knows ``kernel_name``."""
    ip: str
    """The interface engines listen on (``Cluster(ip=)``), where the launcher does not pick its own."""
    env: dict = field(default_factory=dict)
    """Extra environment variables for the engines."""
    timeout: float = 60.0
    """Seconds every engine of the set gets to start (the cluster's ``engine_timeout``)."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ipyparallel_ext.cluster"))


class EngineSet(ABC):
    """Engines started together by one launcher call, and what keeps them running.

    ``engines`` maps engine id to a handle that quacks like the parts of
    :class:`jupyter_client.AsyncKernelManager` the cluster uses:
    ``connection_file`` (a file on this machine a client connects with) and
    ``async signal_kernel(signum)``; its ``pid`` attribute (or
    ``provisioner.pid``) is the kernel's process id where that process is on
    this machine, else None.
    """

    launcher: str = "?"
    """The launcher's name, as in ``Cluster(engines=...)``."""

    def __init__(self):
        self.engines: dict = {}

    @abstractmethod
    async def stop(self, engine_ids) -> None:
        """Stop these engines of the set; once none is left, stop what the set holds (job, mpiexec, tunnels).

        Idempotent; never raises for an engine that is already gone.
        """

    async def restart(self, engine_id: int) -> None:
        """Start engine ``engine_id`` again under the same id (a fresh namespace).

        The handle in :attr:`engines` may be replaced; its connection file
        stays where it was.  Launchers that cannot restart one engine on its
        own raise NotImplementedError saying what to do instead.
        """
        raise NotImplementedError(f"{self.launcher} engines cannot be restarted one by one:"
                                  f" stop the engine set and start a new one")

    def probe(self, engine_id: int):
        """A callable that returns the engine's exit code once its process has exited, else None.

        None when this process cannot see the engine's process (a remote
        engine): its clients then rely on heartbeats alone.  A probe with a
        ``log_tail()`` method lets clients show why an engine died.
        """
        return None

    def process(self, engine_id: int):
        """The engine's :class:`subprocess.Popen`-like process, for ``auto_restart``'s watcher, or None."""
        return None

    def state(self, engine_id: int) -> str:
        """'running' or 'dead', as far as this process can tell."""
        return "running"

    def status(self) -> dict:
        """What the set is, for cluster files, ``cluster list`` and the toolbar.

        At least ``{"launcher": name, "state": ...}``; launchers add what a
        user needs to know (a Slurm job id and its state and pending
        reason, hosts, the mpiexec pid).
        """
        return {"launcher": self.launcher, "state": "running"}

    def to_dict(self) -> dict:
        """JSON-able facts another process needs to stop this set (see :meth:`Launcher.attach`)."""
        return self.status()


class Launcher(ABC):
    """A configured way to start engine sets; one per cluster, asked once per ``start_engines``."""

    name: str = "?"

    @abstractmethod
    async def start(self, ctx: LaunchContext) -> EngineSet:
        """Start the engines ``ctx.engine_ids``; return once each one's heartbeat answers.

        On failure (no ``mpiexec``, a rejected job, ssh refused, engines that
        never answer within ``ctx.timeout``) stop whatever was started and
        raise :class:`~ipyparallel_ext.error.EngineStartError` whose message
        carries the launcher's own output.
        """

    def options(self) -> dict:
        """The launcher's options, JSON-able (cluster files, ``Cluster.to_dict``)."""
        return {}

    def default_n(self) -> int | None:
        """How many engines a start with no ``n`` (on the call or the Cluster) asks for; None: one per CPU here.

        A launcher whose options already say it (ssh's ``{host: count}``) answers that.
        """
        return None

    @classmethod
    def attach(cls, saved: dict, engines: dict) -> EngineSet | None:
        """An engine set of another process, from its :meth:`EngineSet.to_dict`, that can stop it.

        ``engines`` are the handles the cluster file describes (attached by
        pid).  None (the default) when the saved facts are not enough: the
        cluster then stops those engines one by one through their handles.
        """
        return None


# engines= names (lower case, as ipyparallel also accepts its class names) -> "module:class".
_BUILTIN = {
    "local": "._local:LocalLauncher",
    "mpi": "._mpi:MPILauncher",
    "slurm": "._slurm:SlurmLauncher",
    "ssh": "._ssh:SSHLauncher",
}
_ALIASES = {"localengine": "local", "mpiexec": "mpi", "mpiengine": "mpi", "slurmengine": "slurm",
            "sshengine": "ssh"}
# ipyparallel launchers with no counterpart here, named in the error.
_NOT_HERE = ("pbs", "sge", "lsf", "htcondor", "condor", "winhpc", "sshproxy", "batch")


def _short_name(spec: str) -> str:
    name = spec.rsplit(".", 1)[-1].lower()
    for suffix in ("enginesetlauncher", "launcher"):
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
    return _ALIASES.get(name, name)


def launcher_class(name: str) -> type:
    """The Launcher class ``engines=name`` means ("mpi", or ipyparallel's "MPIEngineSetLauncher")."""
    import importlib

    short = _short_name(name)
    if short not in _BUILTIN:
        if short in _NOT_HERE:
            raise NotImplementedError(
                f"engines={name!r}: ipyparallel's {short} launcher has no counterpart here; the"
                f" launchers are {', '.join(map(repr, _BUILTIN))}, or a Launcher instance of your own")
        raise ValueError(f"engines={name!r}: unknown launcher; use one of {', '.join(map(repr, _BUILTIN))}"
                         f" or a Launcher instance")
    module, cls = _BUILTIN[short].split(":")
    return getattr(importlib.import_module(module, __package__), cls)


def make_launcher(engines=None, options=None) -> Launcher:
    """The Launcher ``Cluster(engines=..., launcher_options=...)`` asks for.

    ``engines`` is None (local), a name, a Launcher subclass, or a
    configured Launcher instance (then ``options`` must be empty).
    """
    options = dict(options or {})
    if isinstance(engines, Launcher):
        if options:
            raise TypeError("launcher_options= goes with engines=<name>; a Launcher instance is"
                            " configured already")
        return engines
    if engines is None:
        cls = launcher_class("local")
    elif isinstance(engines, str):
        cls = launcher_class(engines)
    elif isinstance(engines, type) and issubclass(engines, Launcher):
        cls = engines
    elif isinstance(engines, type):
        cls = launcher_class(engines.__name__)  # ipyparallel's launcher classes, by name
    else:
        raise TypeError(f"engines={engines!r}: expected a launcher name, a Launcher or None")
    try:
        return cls(**options)
    except TypeError as e:
        raise TypeError(f"{cls.__name__} options {sorted(options)}: {e}") from None
