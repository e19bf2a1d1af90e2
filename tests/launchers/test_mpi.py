"""The MPI launcher against a real mpiexec (the ``mpich`` wheel in this Python's ``bin/``).

Engines are the ranks of one ``mpiexec``; the tests check that rank ==
engine id, that ``MPI.COMM_WORLD`` spans the engines (allreduce through
``%px`` and apply), what a user sees when mpiexec is missing or fails, when
a rank dies, and that stopping leaves no process (mpiexec, Hydra's proxy,
kernels) and no file of ours.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import test_cluster_cli
from conftest import alive, wait_for_file, wait_until
from IPython.utils.capture import capture_output

import ipyparallel_ext as ipp
from ipyparallel_ext.cluster import MPILauncher, _files
from ipyparallel_ext.cluster._mpi import _flavour_args, find_mpiexec, mpi_flavour
from ipyparallel_ext.error import EngineError, EngineStartError

try:
    MPIEXEC = find_mpiexec()
except EngineStartError as exc:
    pytest.skip(f"no MPI to test with: {exc}", allow_module_level=True)
pytest.importorskip("mpi4py", reason="the allreduce tests need mpi4py (pip install mpi4py)")

cli = test_cluster_cli.cli  # the CLI fixture: a private runtime dir, `stop --all` and a leak check after
GONE = 30.0  # seconds processes of a stopped set get to be gone (a busy machine)
pytestmark = pytest.mark.timeout(300)


@ipp.interactive  # runs on an engine
def world(value=None):
    """This rank's (rank, size, allreduce of ``value``, default the rank) in MPI.COMM_WORLD."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.rank, comm.size, comm.allreduce(comm.rank if value is None else value)


def processes_of(folder: str) -> list:
    """Processes still running whose command line names the cluster folder (mpiexec, kernels)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and folder in " ".join(proc.info["cmdline"] or []):
            found.append((proc.info["pid"], " ".join(proc.info["cmdline"])[:200]))
    return found


def tree(pid: int) -> list:
    """Process ``pid`` and everything below it (mpiexec, hydra_pmi_proxy, the ranks)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def shm_files_of(pids) -> set:
    """The MPI shared-memory files these processes map."""
    found = set()
    for pid in pids:
        for m in psutil.Process(pid).memory_maps(grouped=True):
            if m.path.startswith("/dev/shm/mpich_shm_"):
                found.add(m.path)
    return found


def assert_nothing_left(cluster_folder: str, processes) -> None:
    assert wait_until(lambda: not any(alive(p.pid) for p in processes), GONE), [
        (p.pid, p.name()) for p in processes if alive(p.pid)]
    assert wait_until(lambda: not processes_of(cluster_folder), GONE), processes_of(cluster_folder)
    assert not os.path.exists(cluster_folder) or not glob.glob(os.path.join(cluster_folder, "*.json"))


@pytest.fixture(scope="module")
def mpi4():
    """A 4-rank MPI cluster and a client on it, for the module; checked to leave nothing when stopped."""
    cluster = ipp.Cluster(n=4, engines="mpi")
    try:
        rc = cluster.start_and_connect_sync()
        (status,) = cluster.engine_set_status().values()
        processes = tree(status["mpiexec_pid"])
        folder = cluster._folder
        yield cluster, rc
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(folder, processes)


def test_rank_is_engine_id(mpi4):
    cluster, rc = mpi4
    assert rc.ids == [0, 1, 2, 3]
    ranks = rc[:].apply_sync(lambda: int(__import__("os").environ["PMI_RANK"]))
    assert ranks == [0, 1, 2, 3]
    # The cluster knows each rank's kernel process: the very process MPI started.
    assert rc[:].apply_sync(os.getpid) == [cluster.engines[i].pid for i in range(4)]
    (status,) = cluster.engine_set_status().values()
    assert status["launcher"] == "mpi" and status["state"] == "running" and status["ranks"] == 4
    assert status["mpi"] == "MPICH" and psutil.Process(status["mpiexec_pid"]).name() == "mpiexec"


def test_comm_world_spans_the_engines(mpi4):
    _cluster, rc = mpi4
    view = rc[:]
    assert view.apply_sync(world) == [(r, 4, 6) for r in range(4)]
    view.scatter("part", list(range(100)), block=True)  # a quarter each; their sums summed by MPI
    assert view.apply_sync(world, ipp.Reference("sum(part)")) == [(r, 4, 4950) for r in range(4)]


def test_px_allreduce(mpi4, shell):
    _cluster, rc = mpi4
    view = rc[:]
    view.block = True
    view.activate()
    with capture_output() as out:
        shell.run_cell("%px from mpi4py import MPI; comm = MPI.COMM_WORLD")
        shell.run_cell("%px print('sum of ranks', comm.allreduce(comm.rank), 'at rank', comm.rank)")
    for eid in range(4):
        assert f"[stdout:{eid}] \nsum of ranks 6 at rank {eid}\n" in out.stdout, out.stdout + out.stderr


def test_ranks_listening_on_every_interface_are_reached_at_their_host():
    cluster = ipp.Cluster(n=2, engines="mpi", ip="*")
    try:
        rc = cluster.start_and_connect_sync()
        assert rc[:].apply_sync(world) == [(0, 2, 1), (1, 2, 1)]
        for eid, engine in cluster.engines.items():
            with open(engine.connection_file) as f:
                info = json.load(f)
            assert info["ip"] == "127.0.0.1"  # this host's ranks: through loopback
            assert info["ipyparallel_ext"] == {"host": socket.gethostname(), "pid": engine.pid}
            listening = {c.laddr.ip for c in psutil.Process(engine.pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == info["shell_port"]}
            assert listening == {"0.0.0.0"}
    finally:
        cluster.stop_cluster_sync()


def test_one_rank_cannot_restart_alone(mpi4):
    cluster, _rc = mpi4
    with pytest.raises(NotImplementedError, match="share one MPI_COMM_WORLD.*stop_engines"):
        cluster.restart_engine_sync(2)


def test_a_dead_rank_ends_the_set_and_its_work_fails(tmp_path):
    cluster = ipp.Cluster(n=2, engines="mpi")
    try:
        rc = cluster.start_and_connect_sync()
        (set_id, status), = cluster.engine_set_status().items()
        processes = tree(status["mpiexec_pid"])
        folder = cluster._folder
        rc[:].execute("from mpi4py import MPI; MPI.COMM_WORLD.Barrier()", block=True)
        shm = shm_files_of([cluster.engines[i].pid for i in (0, 1)])
        assert shm  # MPICH's ranks on one host share memory through a file in /dev/shm
        # The launcher notes them while the ranks run (a killed job cannot clean them up itself).
        assert wait_until(lambda: shm <= set(cluster.to_dict()["engines"]["launchers"][set_id]["shared_memory"]),
                          GONE)
        go = tmp_path / "go"
        # Engine 0 waits in a task; engine 1 is killed: MPI ends the whole job, so engine 0's work fails too.
        waiting = rc[0].apply_async(wait_for_file, str(go), timeout=120)
        os.kill(cluster.engines[1].pid, signal.SIGKILL)
        with pytest.raises(EngineError) as info:
            waiting.get(60)
        assert "signal 9" in str(info.value), info.value  # mpiexec's own account comes with it
        assert wait_until(lambda: cluster.engine_set_status()[set_id]["state"].startswith("exited"), GONE)
        assert [cluster._engine_state(i) for i in (0, 1)] == ["dead", "dead"]
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(folder, processes)
    assert not [path for path in shm if os.path.exists(path)]  # a killed job's MPI shared memory is removed


def test_stop_leaves_no_process_and_no_file():
    cluster = ipp.Cluster(n=2, engines="mpi")
    try:
        rc = cluster.start_and_connect_sync()
        rc[:].execute("from mpi4py import MPI; MPI.COMM_WORLD.Barrier()", block=True)
        (status,) = cluster.engine_set_status().values()
        processes = tree(status["mpiexec_pid"])
        names = {p.name() for p in processes}
        assert {"mpiexec", "hydra_pmi_proxy"} <= names, names
        folder = cluster._folder
        shm = shm_files_of([cluster.engines[i].pid for i in (0, 1)])
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(folder, processes)
    assert not os.path.exists(folder)
    assert not [path for path in shm if os.path.exists(path)]


def test_stopping_part_of_a_set_keeps_the_rest_until_the_set_stops():
    cluster = ipp.Cluster(n=3, engines="mpi")
    try:
        rc = cluster.start_and_connect_sync()
        rc[:].apply_sync(world)  # MPI initialised on every rank: a stopped one waits in MPI_Finalize
        (status,) = cluster.engine_set_status().values()
        processes = tree(status["mpiexec_pid"])
        folder = cluster._folder
        cluster.stop_engines_sync([2])
        assert wait_until(lambda: rc.ids == [0, 1], GONE)
        assert rc[:].apply_sync(os.getpid) == [cluster.engines[0].pid, cluster.engines[1].pid]
        (status,) = cluster.engine_set_status().values()
        assert status["state"] == "running" and status["engines"] == 2 and status["ranks"] == 3
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(folder, processes)


def test_missing_mpiexec_is_a_clear_error_and_starts_nothing():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cluster = ipp.Cluster(n=2, engines="mpi", launcher_options={"mpiexec": "/nonexistent/mpiexec"})
    with pytest.raises(EngineStartError, match="mpiexec '/nonexistent/mpiexec'.*not an executable"):
        cluster.start_cluster_sync()
    assert cluster.engines == {}
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert not glob.glob(os.path.join(cluster._folder, "*.json"))
    cluster.stop_cluster_sync()


def test_no_mpiexec_anywhere_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no mpiexec beside it
    monkeypatch.setenv("PATH", str(tmp_path))  # nor on PATH
    cluster = ipp.Cluster(n=2, engines="mpi")
    with pytest.raises(EngineStartError, match=r"no mpiexec: neither .*/mpiexec nor one on PATH.*pip install"
                                               r" mpich mpi4py.*launcher_options"):
        cluster.start_cluster_sync()
    assert cluster.engines == {}
    cluster.stop_cluster_sync()


def test_mpiexec_that_exits_early_shows_its_output():
    cluster = ipp.Cluster(n=2, engines="mpi", launcher_options={"mpi_args": ["--no-such-option"]})
    with pytest.raises(EngineStartError, match=r"(?s)mpiexec exited before the engines started.*"
                                               r"exited with status \d+.*no-such-option"):
        cluster.start_cluster_sync()
    folder = cluster._folder
    cluster.stop_cluster_sync()
    assert not processes_of(folder)


def test_ranks_that_never_answer_time_out_and_are_stopped(tmp_path, monkeypatch):
    # A kernelspec whose "kernel" never listens: the ranks run it (kernel_name= is honoured) and the
    # start gives up at engine_timeout, stopping mpiexec and the ranks.
    spec = tmp_path / "kernels" / "never-listens"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", "import time; time.sleep(600)", "{connection_file}"],
        "display_name": "never listens", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    cluster = ipp.Cluster(n=2, engines="mpi", kernel_name="never-listens", engine_timeout=3)
    with pytest.raises(EngineStartError, match=r"(?s)MPI ranks of engines \[0, 1\] did not start within 3 s"
                                               r".*mpiexec \(pid \d+\) was running"):
        cluster.start_cluster_sync()
    folder = cluster._folder
    assert wait_until(lambda: not processes_of(folder), GONE), processes_of(folder)
    cluster.stop_cluster_sync()


def test_another_process_stops_the_set_through_the_cluster_file(tmp_path):
    path = tmp_path / "cluster.json"
    cluster = ipp.Cluster(n=2, engines="mpi", cluster_file=path)
    try:
        cluster.start_cluster_sync()
        (status,) = cluster.engine_set_status().values()
        processes = tree(status["mpiexec_pid"])
        folder = cluster._folder
        code = (f"import ipyparallel_ext as ipp; c = ipp.Cluster.from_file({str(path)!r});"
                f" print(sorted(c.engines), list(c.engine_set_status().values())[0]['mpiexec_pid']);"
                f" c.stop_cluster_sync()")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["[0,", "1]", str(status["mpiexec_pid"])], out.stdout
        assert wait_until(lambda: not any(alive(p.pid) for p in processes[1:]), GONE)  # all below mpiexec
        # Its mpiexec exited: this process, its parent, sees the set's true state.
        assert wait_until(lambda: all(st["state"].startswith("exited (status")
                                      for st in cluster.engine_set_status().values()), GONE), (
            cluster.engine_set_status())
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(folder, processes)


def test_launcher_options_are_checked():
    with pytest.raises(TypeError, match="MPILauncher options.*hosts"):
        ipp.Cluster(engines="mpi", launcher_options={"hosts": ["a"]})
    with pytest.raises(ValueError, match="-n is set by the launcher"):
        MPILauncher(mpi_args=["-n", "3"])
    with pytest.raises(TypeError, match="a list of strings"):
        MPILauncher(mpi_args="-hosts a")
    launcher = MPILauncher(mpiexec=MPIEXEC, mpi_args=["-hosts", "localhost"])
    assert launcher.options() == {"mpiexec": MPIEXEC, "mpi_args": ["-hosts", "localhost"]}


def test_mpiexec_is_found_beside_python_and_open_mpi_gets_its_flags():
    assert MPIEXEC == os.path.join(os.path.dirname(sys.executable), "mpiexec") or Path(MPIEXEC).exists()
    assert mpi_flavour(MPIEXEC) == "MPICH"
    assert _flavour_args("MPICH", [], {"A": "1"}) == []
    openmpi = _flavour_args("Open MPI", ["--oversubscribe"], {"A": "1"})
    assert openmpi.count("--oversubscribe") == 0 and openmpi[-2:] == ["-x", "A"]
    assert ("--allow-run-as-root" in openmpi) == (os.geteuid() == 0)


def test_cli_starts_lists_and_stops_an_mpi_cluster(cli):
    cluster_id = cli.new_id()
    out = cli("start", "--engines", "mpi", "-n", "2", "--daemonize", "--cluster-id", cluster_id).stdout
    assert f"cluster {cluster_id} started: 2 engines" in out
    table = cli("list").stdout
    row = next(line for line in table.splitlines() if line.startswith(cluster_id))
    assert "2/2" in row and " mpi " in row and row.rstrip().endswith("running")
    with ipp.Client(cluster_id=cluster_id) as rc:
        assert rc[:].apply_sync(world, 1) == [(0, 2, 2), (1, 2, 2)]
        (status,) = ipp.Cluster.from_file(cluster_id=cluster_id).engine_set_status().values()
        processes = tree(status["mpiexec_pid"])
    assert cli("stop", "--cluster-id", cluster_id).stdout.strip() == f"cluster {cluster_id} stopped"
    assert wait_until(lambda: not any(alive(p.pid) for p in processes), GONE)


def test_killed_supervisor_takes_its_mpi_job_along(cli):
    cluster_id = cli.new_id()
    cli("start", "--engines", "mpi", "-n", "2", "--daemonize", "--cluster-id", cluster_id)
    data = _files.read_cluster_file(_files.cluster_file_path(cluster_id))
    (saved,) = data["engines"]["launchers"].values()
    processes = tree(saved["mpiexec_pid"])
    os.kill(data["cluster"]["supervisor"]["pid"], signal.SIGKILL)
    # mpiexec gets SIGTERM when the supervisor goes (PR_SET_PDEATHSIG) and ends its ranks.
    assert wait_until(lambda: not any(alive(p.pid) for p in processes), GONE), processes
    assert json.loads(cli("list", "--json").stdout) == {}


def test_cli_list_and_logs_tell_of_a_dead_mpi_set(cli):
    cluster_id = cli.new_id()
    cli("start", "--engines", "mpi", "-n", "2", "--daemonize", "--cluster-id", cluster_id)
    data = _files.read_cluster_file(_files.cluster_file_path(cluster_id))
    (set_id, saved), = data["engines"]["launchers"].items()
    os.kill(int(data["engines"]["sets"][set_id]["0"]["pid"]), signal.SIGKILL)

    def row():
        return next(line for line in cli("list").stdout.splitlines() if line.startswith(cluster_id))

    # The supervisor sees the set's state change (mpiexec exits after ending rank 1) and rewrites the file.
    assert wait_until(lambda: row().rstrip().endswith(f"{set_id}: exited (status 9)"), GONE), row()
    assert "0/2" in row()
    logs = cli("logs", "--cluster-id", cluster_id).stdout
    assert f"engine set {set_id} (mpi)" in logs and "BAD TERMINATION" in logs


def test_cli_bad_launcher_option_is_refused_before_anything_starts(cli):
    result = cli("start", "--engines", "mpi", "--launcher-option", "hosts=3", "-n", "1", "--daemonize",
                 check=False)
    assert result.returncode == 1 and "MPILauncher options ['hosts']" in result.stderr

