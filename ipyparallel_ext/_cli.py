"""The ``ipyparallel-ext`` command line.

One sub-command per function, registered in :data:`COMMANDS`; adding one
(``start``, ``stop`` ...) means writing its ``add_arguments(parser)`` and
``run(args) -> int`` and listing them there.

``ipyparallel-ext install-kernelspecs [--user | --sys-prefix | --prefix P]``
installs the project's kernel specs (see ``kernelspec/`` in the repository):

- ``ipyparallel-ext-engine``: the engines' spec, stock ipykernel with
  :data:`~.cluster._local.ENGINE_ARGS` (what :class:`Cluster` uses by default);
- ``python3-parallel``, "Python 3 (parallel)": a notebook kernel that loads
  the ``%px`` magics at start.

``ipyparallel-ext cluster start | stop | list | scale | add | logs`` manage clusters
that outlive the process that started them (see :func:`_cluster_run`);
``cluster start --engines mpi --launcher-option mpi_args='["-hosts", "a,b"]'``
picks the launcher and its options (as ``Cluster(engines=, launcher_options=)``),
and ``cluster list`` shows each engine set's state when it is not plainly
running (a Slurm job pending, with its reason).  They
exit 0 on success and 1 with a message on stderr when they cannot do it
(no such cluster, none running, an engine that would not start), 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from .cluster._local import ENGINE_ARGS, ENGINE_KERNEL_NAME

PARALLEL_KERNEL_NAME = "python3-parallel"


def kernel_specs(python: str = "python") -> dict:
    """The project's kernel specs, as ``{name: kernel.json contents}``.

    Parameters
    ----------
    python : str
        ``argv[0]`` of each spec; ``"python"`` means "the Python that
        launches the kernel" to jupyter_client, an absolute path pins one.
    """
    return {
        ENGINE_KERNEL_NAME: {
            "argv": [python, *ENGINE_ARGS],
            "display_name": "ipyparallel_ext engine",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"debugger": False},
        },
        PARALLEL_KERNEL_NAME: {
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.extensions=ipyparallel_ext"],
            "display_name": "Python 3 (parallel)",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"debugger": True},
        },
    }


def install_kernelspecs(user: bool = False, prefix: str | None = None, python: str | None = None) -> dict:
    """Install :func:`kernel_specs` for this Python; returns ``{name: installed folder}``.

    With neither ``user`` nor ``prefix``, installs system-wide (Jupyter's rule).
    """
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    installed = {}
    for name, spec in kernel_specs(python or sys.executable).items():
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "kernel.json"), "w") as f:
                json.dump(spec, f, indent=1)
            installed[name] = manager.install_kernel_spec(folder, name, user=user, prefix=prefix)
    return installed


# -- sub-commands -------------------------------------------------------------------------


def _install_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="install for the current user (the default)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"install into this Python's prefix ({sys.prefix}): for virtualenvs and conda")
    where.add_argument("--prefix", metavar="PATH", help="install into PATH/share/jupyter/kernels")


def _install_run(args) -> int:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    installed = install_kernelspecs(user=prefix is None, prefix=prefix)
    for name, folder in installed.items():
        print(f"installed kernelspec {name} in {folder}")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=2, help="how many engines (default 2)")


def _demo_run(args) -> int:
    from ._demo import main as demo

    return demo(args.n)


# -- cluster ---------------------------------------------------------------------------------

_STOP_WAIT = 30.0  # seconds `cluster stop` waits for a supervisor to stop its engines and exit


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start engines and the supervisor that owns them")
    start.add_argument("-n", type=int, default=None, help="how many engines (default: the number of CPUs)")
    start.add_argument("--cluster-id", help="the cluster's id (default: a random one)")
    start.add_argument("--kernel", default=None, help="kernelspec of the engines (default: the engine spec)")
    start.add_argument("--daemonize", action="store_true",
                       help="run the supervisor in the background; return once the engines run")
    start.add_argument("--restart-engines", action="store_true", help="restart engines that die")
    start.add_argument("--engine-timeout", type=float, default=60.0,
                       help="seconds an engine may take to start (default 60)")
    start.add_argument("--engines", default=None, metavar="LAUNCHER",
                       help="where engines run: local (default), mpi, slurm, ssh")
    start.add_argument("--launcher-option", action="append", type=_launcher_option, default=[],
                       metavar="KEY=VALUE", dest="launcher_options",
                       help="an option of the launcher, VALUE read as JSON if it is JSON, else as a string"
                            " (repeat for more), e.g. --launcher-option mpi_args='[\"-hosts\", \"a,b\"]'")
    stop = actions.add_parser("stop", help="stop a cluster's engines and its supervisor")
    which = stop.add_mutually_exclusive_group()
    which.add_argument("--cluster-id", help="the cluster to stop (default: the one running)")
    which.add_argument("--all", action="store_true", help="stop every running cluster")
    listing = actions.add_parser("list", help="list running clusters (removes files of dead ones)")
    listing.add_argument("--json", action="store_true", help="one JSON object per cluster id, for tools")
    scale = actions.add_parser("scale", help="grow or shrink a cluster to N engines")
    scale.add_argument("--cluster-id", help="the cluster (default: the one running)")
    scale.add_argument("-n", type=int, required=True, help="how many engines it should have")
    add = actions.add_parser("add", help="start N more engines in a cluster")
    add.add_argument("--cluster-id", help="the cluster (default: the one running)")
    add.add_argument("-n", type=int, required=True, help="how many engines to add")
    logs = actions.add_parser("logs", help="print the end of a cluster's supervisor and engine logs")
    logs.add_argument("--cluster-id", help="the cluster (default: the one running)")
    logs.add_argument("--lines", type=int, default=20, help="lines of each log (default 20)")


def _launcher_option(text: str) -> tuple:
    """``KEY=VALUE`` -> (key, value): VALUE as JSON when it parses (numbers, lists, objects), else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. mpiexec=/usr/bin/mpiexec")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _options(pairs) -> dict:
    options = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"--launcher-option {key} is given twice")
        options[key] = value
    return options


def _cluster_run(args) -> int:
    from .cluster._supervisor import ControlError
    from .error import EngineStartError

    try:
        return _CLUSTER_ACTIONS[args.action](args)
    except (FileNotFoundError, ValueError, TypeError, NotImplementedError, ControlError, EngineStartError) as exc:
        print(f"ipyparallel-ext cluster {args.action}: {exc}", file=sys.stderr)
        return 1


def _cluster_start(args) -> int:
    from .cluster import _files
    from .cluster._launcher import make_launcher
    from .cluster._supervisor import supervise

    cluster_id = args.cluster_id or uuid.uuid4().hex[:8]
    options = _options(args.launcher_options)
    make_launcher(args.engines, options)  # a bad launcher name or option fails here, not in the daemon
    if not args.daemonize:
        def ready(cluster):
            print(f"cluster {cluster_id} started: {len(cluster.engines)} engines (pid {os.getpid()});"
                  f" Ctrl-C stops it", flush=True)

        return supervise(args.n, cluster_id, args.kernel, args.restart_engines, args.engine_timeout,
                         on_ready=ready, engines=args.engines, launcher_options=options)
    process, data = start_daemon(args, cluster_id)
    engines = sum(len(s) for s in data["engines"]["sets"].values())
    print(f"cluster {cluster_id} started: {engines} engines (supervisor pid {process.pid},"
          f" log {_files.log_file_path(cluster_id)})")
    return 0


def start_daemon(args, cluster_id: str):
    """Start a daemonized supervisor for the ``cluster start`` options ``args``.

    Returns ``(process, cluster file contents)`` once its engines run (the
    toolbar's server extension starts clusters through this too).

    Raises
    ------
    ValueError
        The id is taken, or the supervisor exited or did not start in time (with its log's end).
    """
    from .cluster import _files

    options = _options(args.launcher_options)
    if cluster_id in _files.running_cluster_files():
        raise ValueError(f"a cluster with id {cluster_id!r} is already running")
    argv = [sys.executable, "-m", "ipyparallel_ext.cluster._supervisor", "--cluster-id", cluster_id,
            "--engine-timeout", str(args.engine_timeout)]
    argv += [] if args.n is None else ["-n", str(args.n)]
    argv += [] if args.kernel is None else ["--kernel", args.kernel]
    argv += ["--restart-engines"] if args.restart_engines else []
    argv += [] if args.engines is None else ["--engines", args.engines]
    for key, value in options.items():
        argv += ["--launcher-option", f"{key}={json.dumps(value)}"]
    log_path = _files.log_file_path(cluster_id)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # Ctrl-C in this terminal is not for it
    path = _files.cluster_file_path(cluster_id)
    deadline = time.monotonic() + args.engine_timeout + _STOP_WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _tail(log_path, 10)
            raise ValueError(f"the supervisor exited with status {process.returncode}; its log"
                             f" ({log_path}) ends:\n{tail}")
        if os.path.exists(path):
            return process, _files.read_cluster_file(path)
        time.sleep(0.1)
    process.terminate()
    raise ValueError(f"cluster {cluster_id} did not start within {deadline} s (log: {log_path})")


def _chosen(args, running) -> list:
    """The (id, path, data) of the clusters an action names (--cluster-id, --all, or the one running)."""
    from .cluster import _files

    if getattr(args, "all", False):
        return [(cid, *running[cid]) for cid in sorted(running)]
    path = _files.find_cluster_file(args.cluster_id)
    data = _files.read_cluster_file(path)
    return [(data["cluster"]["cluster_id"], path, data)]


def _cluster_stop(args) -> int:
    from .cluster import _files

    running = _files.running_cluster_files()
    for cluster_id, path, data in _chosen(args, running):
        stop_cluster(path, data)
        print(f"cluster {cluster_id} stopped")
    return 0


def stop_cluster(path: str, data: dict) -> None:
    """Stop the supervised cluster of cluster file ``path`` (contents ``data``); return once it stopped."""
    from .cluster import _files
    from .cluster._supervisor import stop_supervised

    stop_supervised(data["cluster"]["supervisor"], wait=_STOP_WAIT)
    _files.remove_leftovers(path, data)


def cluster_summary(cluster_id, data) -> dict:
    """One row of ``cluster list --json`` for the cluster file contents ``data`` (the toolbar's too)."""
    from .cluster import _files

    engines = [e for members in data["engines"]["sets"].values() for e in members.values()]
    # An engine on another node has no pid here: the supervisor's saved state is all we know.
    alive = sum(1 for e in engines if e.get("state") == "running"
                and (e.get("pid") is None or _files.pid_alive(e.get("pid"))))
    supervisor = data["cluster"]["supervisor"]
    return {"cluster_id": cluster_id, "engines_alive": alive, "engines": len(engines),
            "launcher": data["engines"]["class"], "kernel_name": data["cluster"]["kernel_name"],
            "supervisor_pid": supervisor["pid"], "host": supervisor["host"],
            "uptime": round(time.time() - supervisor["start_time"], 1),
            "engine_sets": data["engines"].get("launchers", {})}


def _set_states(row) -> str:
    """What ``cluster list`` says of a cluster's engine sets: only those not plainly "running"."""
    notes = [f"{set_id}: {status.get('state')}" for set_id, status in row["engine_sets"].items()
             if str(status.get("state", "running")).lower() != "running"]  # Slurm says RUNNING
    return "; ".join(notes) or "running"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _cluster_list(args) -> int:
    from .cluster import _files

    rows = [cluster_summary(cid, data) for cid, (_path, data) in sorted(_files.running_cluster_files().items())]
    if args.json:
        print(json.dumps({row["cluster_id"]: row for row in rows}, indent=1))
        return 0
    print(f"{'CLUSTER':<16} {'ENGINES':>8}  {'LAUNCHER':<8} {'UPTIME':>9}  {'PID':<8} STATE")
    for row in rows:
        print(f"{row['cluster_id']:<16} {row['engines_alive']:>3}/{row['engines']:<4}  {row['launcher']:<8}"
              f" {_uptime(row['uptime']):>9}  {row['supervisor_pid']:<8} {_set_states(row)}")
    return 0


def _cluster_change(args) -> int:
    from .cluster import _files
    from .cluster._supervisor import request

    for cluster_id, _path, data in _chosen(args, _files.running_cluster_files()):
        if args.n < 0:
            raise ValueError(f"-n {args.n}: a number of engines is at least 0")
        answer = request(data["cluster"]["supervisor"], args.action, timeout=request_timeout(data), n=args.n)
        print(f"cluster {cluster_id}: {len(answer['engines'])} engines")
    return 0


def request_timeout(data) -> float:
    """How long a request that starts or stops engines of the cluster in ``data`` may take."""
    return float(data["cluster"].get("engine_timeout") or 60) + _STOP_WAIT


def _tail(path: str, lines: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:]) if lines > 0 else ""


def _cluster_logs(args) -> int:
    from .cluster import _files

    for cluster_id, _path, data in _chosen(args, _files.running_cluster_files()):
        logs = [("supervisor", _files.log_file_path(cluster_id))]
        folder = data["cluster"]["folder"]
        for members in data["engines"]["sets"].values():
            logs += [(f"engine {eid}", os.path.join(folder, f"engine-{eid}.log")) for eid in members]
        # A launcher's own log (mpiexec's output), where its set names one.
        logs += [(f"engine set {set_id} ({saved.get('launcher')})", saved["log"])
                 for set_id, saved in data["engines"].get("launchers", {}).items() if saved.get("log")]
        for name, path in logs:
            if os.path.exists(path):  # a foreground supervisor logs to its terminal, not a file
                print(f"==> cluster {cluster_id}, {name} ({path}) <==")
                print(_tail(path, args.lines), end="")
    return 0


_CLUSTER_ACTIONS = {"start": _cluster_start, "stop": _cluster_stop, "list": _cluster_list,
                    "scale": _cluster_change, "add": _cluster_change, "logs": _cluster_logs}


# name -> (help, add_arguments(parser), run(args) -> exit status)
COMMANDS = {
    "cluster": (
        "start, stop, list and scale clusters that outlive the process that started them",
        _cluster_arguments,
        _cluster_run,
    ),
    "demo": (
        "start local engines, run apply/map/push/pull/scatter/gather on them, print results and timings",
        _demo_arguments,
        _demo_run,
    ),
    "install-kernelspecs": (
        "install the engine kernelspec and the 'Python 3 (parallel)' notebook kernelspec",
        _install_arguments,
        _install_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipyparallel-ext", description="ipyparallel_ext tools")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``ipyparallel-ext`` command."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
