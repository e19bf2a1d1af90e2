"""The Slurm launcher against a real single-node Slurm (slurmctld + slurmd started by the fixture).

Every job a test submits is cancelled by the test (the fixture's teardown
also cancels leftovers and checks the queue is empty before it stops the
daemons).
"""

import json
import logging
import os
import re
import signal
import subprocess

import psutil
import pytest
from _slurm_fixture import SlurmInstance, why_not
from conftest import snooze, wait_until
from IPython.utils.capture import capture_output

import ipyparallel_ext as ipp
from ipyparallel_ext import _magics
from ipyparallel_ext.cluster._slurm import SlurmLauncher
from ipyparallel_ext.error import EngineError, EngineStartError

needs_slurm = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")


@pytest.fixture(scope="session")
def slurm():
    """slurmctld and slurmd on localhost, for the whole session."""
    instance = SlurmInstance().start()
    yield instance
    left = instance.drain()
    instance.stop()
    assert not left, f"slurm jobs left running by the tests: {left}"


@pytest.fixture
def slurm_cluster(slurm):
    """``make(n, **launcher_options)``: a started Slurm cluster and its client; all stopped at teardown."""
    clusters = []

    def make(n=2, engine_timeout=60, **options):
        cluster = ipp.Cluster(n=n, engines="slurm", engine_timeout=engine_timeout, launcher_options=options)
        clusters.append(cluster)
        return cluster, cluster.start_and_connect_sync()

    yield make
    for cluster in clusters:
        cluster.stop_cluster_sync()


def job_state(job_id):
    """JobState of a job as scontrol remembers it (it keeps ended jobs for a few minutes)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    return re.search(r"JobState=(\S+)", out.stdout).group(1)


@ipp.interactive
def task_facts():
    """Runs on an engine: (its pid, SLURM_PROCID, SLURM_JOB_ID)."""
    import os

    return os.getpid(), int(os.environ["SLURM_PROCID"]), os.environ["SLURM_JOB_ID"]


@needs_slurm
def test_two_engines_in_one_job(slurm, slurm_cluster, shell):
    cluster, rc = slurm_cluster(2)
    (status,) = cluster.engine_set_status().values()
    assert status["launcher"] == "slurm" and status["state"] == "RUNNING" and status["nodes"] == "localhost"
    job = status["job_id"]
    assert slurm.jobs() == [job]

    facts = rc[:].apply_sync(task_facts)
    pids = [pid for pid, _, _ in facts]
    # Engine id k is task k of the job's one step.
    assert [(rank, job_id) for _, rank, job_id in facts] == [(0, job), (1, job)]
    assert len(set(pids)) == 2 and all(psutil.Process(p).is_running() for p in pids)

    view = rc[:]
    view.block = True
    view.activate()
    magics = _magics._registry[shell][""]
    try:
        with capture_output() as cap:
            result = shell.run_cell("%px answer = 6 * 7\n%px print('answer', answer)")
        assert result.error_in_exec is None, cap.stderr
        assert cap.stdout.count("answer 42") == 2
    finally:
        magics.retire()

    # One engine of the job stops; the job, and the other engine, go on.
    cluster.stop_engines_sync([1])
    assert wait_until(lambda: not psutil.pid_exists(pids[1]), timeout=10)
    assert rc[0].apply_sync(os.getpid) == pids[0]
    assert slurm.jobs() == [job]

    folder = status["folder"]
    cluster.stop_cluster_sync()
    assert slurm.jobs() == []
    assert job_state(job) in ("COMPLETED", "CANCELLED")
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=10)
    assert not os.path.exists(folder)


@needs_slurm
def test_lost_job_fails_work_and_shows_state(slurm, slurm_cluster, tmp_path):
    shared = tmp_path / "shared"
    cluster, rc = slurm_cluster(2, shared_dir=str(shared))
    (status,) = cluster.engine_set_status().values()
    assert os.path.dirname(status["folder"]) == str(shared)
    running = [rc[i].apply_async(snooze, 30) for i in rc.ids]
    subprocess.run(["scancel", status["job_id"]], check=True)
    for ar in running:
        with pytest.raises(EngineError):
            ar.get(timeout=30)
    (after,) = cluster.engine_set_status().values()
    assert after["job_id"] == status["job_id"] and after["state"] in ("CANCELLED", "COMPLETING"), after
    assert slurm.jobs() in ([], [status["job_id"]])  # COMPLETING jobs are still listed
    cluster.stop_cluster_sync()  # the job is gone already: stop must not fail
    assert slurm.jobs() == []
    assert os.listdir(shared) == []


@needs_slurm
def test_signal_reaches_engine_through_srun(slurm, slurm_cluster):
    cluster, rc = slurm_cluster(2)
    pid = rc[1].apply_sync(os.getpid)
    cluster.signal_engines_sync(signal.SIGKILL, [1])
    assert wait_until(lambda: not psutil.pid_exists(pid), timeout=10)
    with pytest.raises(EngineError):
        rc[1].apply_sync(os.getpid)
    assert rc[0].apply_sync(int, 7) == 7  # the other task of the step goes on


@needs_slurm
def test_another_process_stops_the_job(slurm, slurm_cluster):
    cluster, rc = slurm_cluster(2)
    other = ipp.Cluster.from_dict(cluster.to_dict())
    (status,) = other.engine_set_status().values()
    (mine,) = cluster.engine_set_status().values()
    assert status["job_id"] == mine["job_id"] and status["state"] == "RUNNING"
    other.stop_cluster_sync()
    assert slurm.jobs() == []
    assert job_state(status["job_id"]) in ("COMPLETED", "CANCELLED")


@needs_slurm
@pytest.mark.parametrize("option, listening", [({"ip": "*"}, "0.0.0.0"), ({"interface": "lo"}, "127.0.0.1")])
def test_listen_address(slurm_cluster, option, listening):
    # One node here: the address clients use is loopback either way; the kernels bind where told.
    cluster, rc = slurm_cluster(1, **option)
    pid = rc[0].apply_sync(os.getpid)
    with open(cluster.connection_files[0]) as f:
        info = json.load(f)
    assert info["ip"] == "127.0.0.1"
    ports = {info[name] for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")}
    bound = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
             if c.status == "LISTEN"}
    assert {(listening, port) for port in ports} <= bound


@needs_slurm
def test_engines_that_cannot_start_show_the_job_output(slurm):
    # Python itself fails in the job's tasks: the job ends before any engine wrote its file.
    cluster = ipp.Cluster(n=2, engines="slurm", env={"PYTHONHOME": "/nonexistent"})
    ended = r"(?s)slurm job \d+ is (FAILED|COMPLETED).*job.out.*No module named 'encodings'"
    with pytest.raises(EngineStartError, match=ended):
        cluster.start_cluster_sync()
    assert slurm.jobs() == []
    cluster.stop_cluster_sync()


@needs_slurm
def test_an_address_not_on_the_node_is_named(slurm):
    # 192.0.2.1 (TEST-NET-1) is no address of this node: the kernels cannot bind, and say so in their logs.
    cluster = ipp.Cluster(n=1, engines="slurm", launcher_options={"ip": "192.0.2.1"})
    with pytest.raises(EngineStartError, match=r"(?s)slurm job \d+ is .*engine-0.log.*Cannot assign requested"):
        cluster.start_cluster_sync()
    assert slurm.jobs() == []
    cluster.stop_cluster_sync()


@needs_slurm
def test_pending_job_says_why_and_is_cancelled(slurm, caplog):
    # More CPUs than the node has: the job pends with reason PartitionConfig.
    cluster = ipp.Cluster(n=2, engines="slurm", engine_timeout=5,
                          launcher_options={"extra_sbatch": ["#SBATCH --cpus-per-task=64"]})
    with caplog.at_level(logging.WARNING), pytest.raises(EngineStartError) as info:
        cluster.start_cluster_sync()
    message = str(info.value)
    assert re.search(r"slurm job \d+ pending \(PartitionConfig\)", message), message
    assert any("pending (PartitionConfig)" in r.getMessage() for r in caplog.records)
    job = re.search(r"slurm job (\d+)", message).group(1)
    assert slurm.jobs() == []
    assert job_state(job) == "CANCELLED"
    cluster.stop_cluster_sync()


@needs_slurm
def test_sbatch_rejection_is_the_error(slurm):
    cluster = ipp.Cluster(n=2, engines="slurm", launcher_options={"partition": "nosuch"})
    with pytest.raises(EngineStartError, match="(?s)sbatch rejected the job.*Invalid partition name"):
        cluster.start_cluster_sync()
    assert slurm.jobs() == []
    assert not os.listdir(cluster._folder)  # the batch script went with the job
    cluster.stop_cluster_sync()


def test_bad_options_are_named():
    with pytest.raises(TypeError, match="queue"):
        ipp.Cluster(engines="slurm", launcher_options={"queue": "debug"})
    with pytest.raises(TypeError, match="list of #SBATCH lines"):
        SlurmLauncher(extra_sbatch="--mem=1G")
    with pytest.raises(ValueError, match="one sbatch option"):
        SlurmLauncher(extra_sbatch=["--mem=1G\nrm -rf ~"])
    with pytest.raises(TypeError, match="not both"):
        SlurmLauncher(ip="*", interface="eth0")


def test_missing_sbatch_is_named(tmp_path):
    cluster = ipp.Cluster(n=1, engines="slurm", launcher_options={"sbatch": str(tmp_path / "no-sbatch")})
    with pytest.raises(EngineStartError, match="no-sbatch' not found"):
        cluster.start_cluster_sync()
    cluster.stop_cluster_sync()
