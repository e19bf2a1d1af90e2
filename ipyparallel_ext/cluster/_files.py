"""Cluster files: one JSON file per running cluster, in the Jupyter runtime directory.

A file says what :meth:`Cluster.to_dict` says (the cluster, its engines
with connection file, host, pid and state) plus, for a supervised cluster,
its supervisor (pid, host, start time, control address and key).  Files are
private (0600 in a 0700 folder: they hold the control key and point at the
engines' keys) and replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile

from jupyter_core.paths import jupyter_runtime_dir

_FOLDER = "ipyparallel_ext-clusters"


def cluster_dir() -> str:
    """The folder cluster files live in (created 0700 if missing)."""
    folder = os.path.join(jupyter_runtime_dir(), _FOLDER)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


def cluster_file_path(cluster_id: str) -> str:
    """Where the cluster file of ``cluster_id`` lives."""
    return os.path.join(cluster_dir(), f"cluster-{cluster_id}.json")


def log_file_path(cluster_id: str) -> str:
    """Where a daemonized supervisor of ``cluster_id`` writes its log."""
    return os.path.join(cluster_dir(), f"cluster-{cluster_id}.log")


def remove_leftovers(path: str, data: dict) -> None:
    """Remove what a cluster whose supervisor is gone left: its file, log and engine folder."""
    info = data.get("cluster", {})
    for leftover in (path, log_file_path(info.get("cluster_id", ""))):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    if info.get("folder"):
        shutil.rmtree(info["folder"], ignore_errors=True)


def write_cluster_file(path: str, data: dict) -> None:
    """Write ``data`` to ``path`` as JSON, atomically (temp file + rename), mode 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cluster-", suffix=".tmp", dir=folder)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def read_cluster_file(path: str) -> dict:
    """The contents of a cluster file."""
    with open(path) as f:
        return json.load(f)


def pid_alive(pid) -> bool:
    """True if process ``pid`` exists on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid) -> bool:
    """True if ``pid`` has exited but was not reaped (a killed daemon whose new parent is slow to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False  # no /proc (macOS): kill(pid, 0) is all we know


def supervisor_alive(data: dict) -> bool:
    """True if the process that supervises the cluster in ``data`` still runs.

    A cluster file of another host cannot be checked and counts as alive.
    """
    sup = data.get("cluster", {}).get("supervisor")
    if not sup:
        return False
    if sup.get("host") != socket.gethostname():
        return True
    if not pid_alive(sup.get("pid")):
        return False
    # A pid reused by a process started after the supervisor is not the supervisor.
    started = _process_start(sup["pid"])
    return started is None or started <= sup.get("start_time", started) + 1.0


def _process_start(pid):
    """When process ``pid`` started (seconds since the epoch), from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def running_cluster_files(clean: bool = True) -> dict:
    """``{cluster_id: (path, data)}`` of the supervised clusters whose supervisor runs.

    With ``clean``, files whose supervisor is gone (killed, crashed) are removed.
    """
    found = {}
    for path in sorted(glob.glob(os.path.join(cluster_dir(), "cluster-*.json"))):
        try:
            data = read_cluster_file(path)
        except (OSError, ValueError):
            continue  # removed meanwhile, or not ours
        if supervisor_alive(data):
            found[data["cluster"]["cluster_id"]] = (path, data)
        elif clean:
            remove_leftovers(path, data)
    return found


def no_such_cluster(cluster_id, running) -> str:
    """The message for a cluster id that names no running cluster."""
    names = ", ".join(sorted(running)) or "none"
    return f"no running cluster with id {cluster_id!r} (running clusters: {names})"


def stamp(path: str):
    """What changes when a cluster file is rewritten (its mtime and size), or None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def find_cluster_file(cluster_id: str | None = None) -> str:
    """The cluster file of running cluster ``cluster_id``, or of the one running cluster.

    Raises
    ------
    FileNotFoundError
        No such cluster runs, none runs, or several do (without an id).
    """
    running = running_cluster_files()
    if cluster_id is not None:
        if cluster_id not in running:
            raise FileNotFoundError(no_such_cluster(cluster_id, running))
        return running[cluster_id][0]
    if not running:
        raise FileNotFoundError("no cluster is running on this machine: start one with"
                                " `ipyparallel-ext cluster start -n 4 --daemonize`, or use"
                                " ipyparallel_ext.Cluster(n=4) in this process")
    if len(running) > 1:
        raise FileNotFoundError(f"{len(running)} clusters are running ({', '.join(sorted(running))}):"
                                f" pick one with cluster_id=...")
    return next(iter(running.values()))[0]
