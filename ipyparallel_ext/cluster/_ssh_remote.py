"""The remote half of the SSH launcher: run by the remote host's Python, fed on ssh's stdin.

:mod:`._ssh` sends this file's text, followed by one line ``main({...})``,
to ``ssh host python3 -``: the request (and the kernels' keys in it) thus
travels on stdin, never on a command line a remote ``ps`` shows.  The
host's long-lived session (the tunnel) runs it as ``python3 -c <read N
bytes of stdin and exec them>``, so that the rest of its stdin stays open
for :func:`watch`.  It is
not an engine: it starts, signals and stops ordinary ``ipykernel_launcher``
kernels, then exits; the kernels run on in their own sessions.

Answers are lines on stdout, read as they come (so a launcher that gives
up half-way still knows what to clean up)::

    dir <remote folder>
    pid <engine id> <pid>           a kernel was started
    ready <engine id> <json>        its connection file, with the ports it bound
    error <engine id> <json text>   why it did not start (its log's end)
    done

This file must run on any Python 3 a remote host may have (no ``|``
types, no ``match``) and imports only the standard library.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_POLL = 0.05  # how often a starting kernel's connection file and a stopping kernel are looked at


def _say(*words):
    print(*words, flush=True)


def _alive(pid):
    """True while ``pid`` runs (a zombie no init has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _ours(pid, folder):
    """True if ``pid`` is a kernel of ``folder`` (its command line names a file there), as far as we can see.

    Pids are recycled: a pid saved long ago may be someone else's now.
    Without /proc (not Linux) there is no cheap check, and the pid is trusted.
    """
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return folder.encode() in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")
    except OSError:
        return False


def _log_tail(path, lines=8):
    """The end of a kernel's log (the rule of :func:`._local.log_tail`, which this host may not have)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    # Every kernel warns about plain TCP; that says nothing about a failure.
    kept = [line for line in text.strip().splitlines() if "without encryption" not in line]
    return "\n".join(kept[-lines:])


def _ports(path):
    """The connection file's contents once the kernel has written its bound ports into it, else None."""
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):  # not there, or half written
        return None
    ports = [info.get(k) for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
    return info if all(ports) else None


def _launch(folder, engine_id, argv, env):
    path = os.path.join(folder, "engine-%s.json" % engine_id)
    args = [path if a == "{connection_file}" else sys.executable if a == "{python}" else a for a in argv]
    with open(os.path.join(folder, "engine-%s.log" % engine_id), "ab") as log:
        # Its own session: no hangup when ssh goes, and it leads its process
        # group, so an interrupt_request reaches the code it runs too.
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=folder,
                                   env=dict(os.environ, **env), start_new_session=True)
    with open(os.path.join(folder, "engine-%s.pid" % engine_id), "w") as f:
        f.write(str(process.pid))  # for watch(), which knows the folder only
    _say("pid", engine_id, process.pid)
    return process


def _await_ports(folder, processes, timeout):
    """Report each kernel's connection file once it has bound its ports; True if all did."""
    deadline = time.monotonic() + timeout
    waiting = dict(processes)
    ok = True
    while waiting:
        for engine_id, process in list(waiting.items()):
            path = os.path.join(folder, "engine-%s.json" % engine_id)
            log = os.path.join(folder, "engine-%s.log" % engine_id)
            info = _ports(path)
            if info is not None:
                _say("ready", engine_id, json.dumps(info))
            elif process.poll() is not None:
                why = "kernel exited with code %s: %s" % (process.returncode, _log_tail(log))
                _say("error", engine_id, json.dumps(why))
                ok = False
            elif time.monotonic() > deadline:
                why = "kernel bound no ports within %ss: %s" % (timeout, _log_tail(log))
                _say("error", engine_id, json.dumps(why))
                ok = False
            else:
                continue
            del waiting[engine_id]
        time.sleep(_POLL)
    return ok


def _kill(pids, folder, grace):
    """SIGTERM our kernels among ``pids``, SIGKILL those still there after ``grace`` seconds."""
    pids = [p for p in pids if _alive(p) and _ours(p, folder)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(_POLL)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def start(request):
    """Make the folder, write the connection files, start one kernel per file, report their ports."""
    base = os.path.expanduser(request["dir"] or tempfile.gettempdir())
    os.makedirs(base, mode=0o700, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="ipyparallel_ext-", dir=base)  # mode 0700
    _say("dir", folder)
    processes = {}
    for engine_id, info in request["files"].items():
        path = os.path.join(folder, "engine-%s.json" % engine_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        processes[engine_id] = _launch(folder, engine_id, request["argv"], request["env"])
    if not _await_ports(folder, processes, request["timeout"]):
        # Leave nothing behind: the launcher gives up on this host as a whole.
        _kill([p.pid for p in processes.values()], folder, request["grace"])
        shutil.rmtree(folder, ignore_errors=True)


def restart(request):
    """Stop one kernel and start it again on the same connection file (same ports, same key)."""
    folder = request["folder"]
    _kill([request["pid"]], folder, request["grace"])
    engine_id = request["engine_id"]
    process = _launch(folder, engine_id, request["argv"], request["env"])
    _await_ports(folder, {engine_id: process}, request["timeout"])


def stop(request):
    """Stop these kernels, remove their files, and the folder too once no kernel of it is left."""
    folder = request["folder"]
    _kill(list(request["pids"].values()), folder, request["grace"])
    if request["remove_folder"]:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for engine_id in request["pids"]:
        for name in ("engine-%s.json" % engine_id, "engine-%s.log" % engine_id, "engine-%s.pid" % engine_id):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass


def watch(request):
    """Wait for the end of stdin (the ssh session's end on the launcher's side), then stop the folder's kernels.

    Run by the ssh process that holds a host's tunnel: when the Python that
    started the engines dies, however it dies, the kernels it can no longer
    reach are stopped, as local kernels stop with their parent.
    """
    sys.stdin.buffer.read()
    folder = request["folder"]
    pids = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.endswith(".pid"):
            try:
                with open(os.path.join(folder, name)) as f:
                    pids.append(int(f.read()))
            except (OSError, ValueError):
                pass
    _kill(pids, folder, request["grace"])
    shutil.rmtree(folder, ignore_errors=True)


def send_signal(request):
    """Send a signal to one kernel (and its process group: what it runs)."""
    pid = request["pid"]
    if not (_alive(pid) and _ours(pid, request["folder"])):
        return
    if os.getpgid(pid) == pid:
        os.killpg(pid, request["signum"])
    else:
        os.kill(pid, request["signum"])


def main(request):
    ops = {"start": start, "restart": restart, "stop": stop, "signal": send_signal, "watch": watch}
    ops[request["op"]](request)
    _say("done")
