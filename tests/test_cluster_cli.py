"""Clusters that outlive their starter: the ``ipyparallel-ext cluster`` CLI, cluster files, attaching.

Every test runs real supervisors and engines in a private Jupyter runtime
directory (so it sees no one else's clusters); the ``cli`` fixture stops
whatever a test started (``cluster stop --all``) and checks that no
supervisor or engine process and no cluster file is left.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from conftest import alive, wait_until

import ipyparallel_ext as ipp
from ipyparallel_ext.cluster import _files
from ipyparallel_ext.error import CompositeError, EngineError

_START = 120  # seconds a CLI call that starts engines may take on a busy machine


def _processes_of(cluster_ids) -> list:
    """Supervisors and engines of these clusters still running (their command lines name the id)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(
                f"--cluster-id {cid}" in cmdline or f"cluster-{cid}-" in cmdline for cid in cluster_ids):
            found.append((proc.info["pid"], cmdline))
    return found


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """``cli(*args)`` runs ``ipyparallel-ext cluster *args``; ``cli.new_id()`` names a cluster."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    ids = []

    def run(*args, check=True, timeout=_START):
        result = subprocess.run([sys.executable, "-m", "ipyparallel_ext._cli", "cluster", *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"cluster {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def new_id():
        ids.append(f"t{uuid.uuid4().hex[:8]}")
        return ids[-1]

    run.new_id = new_id
    try:
        yield run
    finally:
        run("stop", "--all", check=False)
        assert wait_until(lambda: not _processes_of(ids), timeout=30), _processes_of(ids)
        assert os.listdir(_files.cluster_dir()) == []


def _start(cli, n, *more) -> str:
    cluster_id = cli.new_id()
    out = cli("start", "-n", str(n), "--daemonize", "--cluster-id", cluster_id, *more).stdout
    assert f"cluster {cluster_id} started: {n} engines" in out
    return cluster_id


def test_start_list_scale_stop(cli):
    cluster_id = _start(cli, 2)
    path = _files.cluster_file_path(cluster_id)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    table = cli("list").stdout
    assert cluster_id in table and "2/2" in table and "local" in table
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[cluster_id]["engines"] == listed[cluster_id]["engines_alive"] == 2

    with ipp.Client(cluster_id=cluster_id) as rc:
        assert rc.ids == [0, 1]
        pids = rc[:].apply_sync(os.getpid)
        assert cli("scale", "--cluster-id", cluster_id, "-n", "4").stdout.strip() == f"cluster {cluster_id}: 4 engines"
        assert wait_until(lambda: rc.ids == [0, 1, 2, 3], timeout=30), rc.ids  # no reconnecting
        assert rc[:].apply_sync(os.getpid)[:2] == pids
        cli("scale", "--cluster-id", cluster_id, "-n", "1")
        assert wait_until(lambda: rc.ids == [0], timeout=30), rc.ids
        cli("scale", "--cluster-id", cluster_id, "-n", "0")  # an empty cluster still runs
        assert wait_until(lambda: rc.ids == [], timeout=30), rc.ids
        assert "0/0" in cli("list").stdout
        cli("add", "-n", "2")  # the one running cluster
        assert wait_until(lambda: rc.ids == [4, 5], timeout=30), rc.ids
        assert rc[:].apply_sync(lambda: 7) == [7, 7]
        logs = cli("logs").stdout
        assert f"==> cluster {cluster_id}, supervisor" in logs and "engine 5" in logs

    assert cli("stop", "--cluster-id", cluster_id).stdout.strip() == f"cluster {cluster_id} stopped"
    assert json.loads(cli("list", "--json").stdout) == {}
    assert not os.path.exists(path)


def test_client_attaches_to_the_one_running_cluster(cli):
    with pytest.raises(FileNotFoundError, match="no cluster is running.*cluster start"):
        ipp.Client()
    first = _start(cli, 1)
    with ipp.Client() as rc:
        assert rc[:].apply_sync(lambda: 1) == [1]
    second = _start(cli, 1)
    with pytest.raises(FileNotFoundError, match=f"2 clusters are running.*{min(first, second)}"):
        ipp.Client()
    assert sorted(ipp.ClusterManager().load_clusters()) == sorted([first, second])


def test_cluster_from_file_scales_and_stops_it(cli):
    cluster_id = _start(cli, 1)
    cluster = ipp.Cluster.from_file(cluster_id=cluster_id)
    assert sorted(cluster.engines) == [0]
    rc = cluster.connect_client_sync()
    cluster.start_engines_sync(1)
    assert sorted(cluster.engines) == [0, 1]
    assert wait_until(lambda: rc.ids == [0, 1], timeout=30), rc.ids
    supervisor_pid = cluster.supervisor["pid"]
    cluster.stop_cluster_sync()
    # Stopped when the call returns, as a cluster of this process is: nothing left to wait for.
    assert not _files.pid_alive(supervisor_pid)
    assert not _files.running_cluster_files()
    assert rc._closed


def test_waiting_work_fails_when_the_cluster_stops(cli):
    cluster_id = _start(cli, 1)
    rc = ipp.Client(cluster_id=cluster_id)
    ar = rc[:].apply_async(time.sleep, 60)
    cli("stop")
    with pytest.raises(CompositeError) as info:
        ar.get(timeout=30)
    assert isinstance(info.value.elist[0][1], EngineError) or "stopped" in str(info.value)
    assert f"cluster {cluster_id} stopped" in str(info.value)
    rc.close()


def test_killed_supervisor_leaves_no_engines(cli):
    cluster_id = _start(cli, 2)
    data = _files.read_cluster_file(_files.cluster_file_path(cluster_id))
    engine_pids = [e["pid"] for members in data["engines"]["sets"].values() for e in members.values()]
    rc = ipp.Client(cluster_id=cluster_id)
    ar = rc[:].apply_async(time.sleep, 60)
    os.kill(data["cluster"]["supervisor"]["pid"], signal.SIGKILL)
    assert wait_until(lambda: not any(alive(p) for p in engine_pids), timeout=15), engine_pids
    with pytest.raises(CompositeError):  # the attached client's work fails, it does not hang
        ar.get(timeout=30)
    rc.close()
    assert json.loads(cli("list", "--json").stdout) == {}  # and its file is cleaned up
    assert os.listdir(_files.cluster_dir()) == []


def test_bad_cluster_id_names_the_running_ones(cli):
    cluster_id = _start(cli, 1)
    for args in (["stop", "--cluster-id", "nope"], ["scale", "--cluster-id", "nope", "-n", "2"]):
        result = cli(*args, check=False)
        assert result.returncode == 1
        assert "no running cluster with id 'nope'" in result.stderr and cluster_id in result.stderr
    with pytest.raises(FileNotFoundError, match=cluster_id):
        ipp.Client(cluster_id="nope")
    result = cli("start", "-n", "1", "--daemonize", "--cluster-id", cluster_id, check=False)
    assert result.returncode == 1 and "already running" in result.stderr


def test_foreground_supervisor_with_a_kernelspec_stops_on_ctrl_c(cli):
    cluster_id = cli.new_id()
    process = subprocess.Popen([sys.executable, "-m", "ipyparallel_ext._cli", "cluster", "start", "-n", "1",
                                "--cluster-id", cluster_id, "--kernel", "python3"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert f"cluster {cluster_id} started: 1 engines" in process.stdout.readline()
        assert json.loads(cli("list", "--json").stdout)[cluster_id]["kernel_name"] == "python3"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert not _files.running_cluster_files()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_restart_engines_brings_a_dead_engine_back(cli):
    cluster_id = _start(cli, 1, "--restart-engines")
    with ipp.Client(cluster_id=cluster_id) as rc:
        old = rc[0].apply_sync(os.getpid)
        os.kill(old, signal.SIGKILL)

        def restarted():
            try:
                return rc.ids == [0] and rc[0].apply_sync(os.getpid) != old
            except EngineError:  # the dead one, before the client heard of the new one
                return False

        assert wait_until(restarted, timeout=60, interval=0.5)


_ATTACHED_SCRIPT = """
import os, sys
import ipyparallel_ext as ipp
rc = ipp.Client(cluster_id=sys.argv[1])
view = rc[:]
view.apply_sync(lambda tag: globals().__setitem__(tag, os.getpid()), sys.argv[2])  # engine namespaces are shared
print(len(rc.ids), sorted(view.apply_sync(os.getpid)) == sorted(view.pull(sys.argv[2], block=True)))
rc.close()
"""


def test_two_other_processes_share_the_engines(cli):
    cluster_id = _start(cli, 2)
    scripts = [subprocess.Popen([sys.executable, "-c", _ATTACHED_SCRIPT, cluster_id, f"from_{i}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for script in scripts:
        out, err = script.communicate(timeout=_START)
        assert script.returncode == 0, err
        assert out.split() == ["2", "True"]
    with ipp.Client(cluster_id=cluster_id) as rc:
        assert rc[:].pull(["from_0", "from_1"], block=True) == [[p, p] for p in rc[:].apply_sync(os.getpid)]


def test_list_removes_files_whose_supervisor_is_gone_or_its_pid_reused(cli):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for cluster_id, pid in (("gone", int(dead.stdout)), ("reused", os.getpid())):  # this process is younger
        _files.write_cluster_file(_files.cluster_file_path(cluster_id), {
            "cluster": {"cluster_id": cluster_id, "kernel_name": "python3", "folder": None, "supervisor": {
                "pid": pid, "host": socket.gethostname(), "start_time": 1.0,
                "control": "tcp://127.0.0.1:1", "key": "x"}},
            "engines": {"class": "local", "sets": {}}})
    assert json.loads(cli("list", "--json").stdout) == {}
    assert os.listdir(_files.cluster_dir()) == []
