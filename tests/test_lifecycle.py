"""Life cycle: connecting returns a usable client, close() at any moment, the Cluster API, auto_restart."""

import asyncio
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import ipyparallel_ext as ipp
from ipyparallel_ext.error import ClientClosed, EngineError

from conftest import alive, getpid, snooze, wait_for_file, wait_until

CALLBACK_ERRORS = "error in ipyparallel_ext I/O callback"


@ipp.interactive  # sent by value: engines cannot import this test module
def start_then_sleep(path):
    """Runs on an engine: touch ``path`` (so the test knows it runs), then sleep."""
    import time

    open(path, "w").close()
    time.sleep(60)


@pytest.fixture
def new_cluster():
    """``new_cluster(**kwargs)``: a Cluster (not started) that is stopped at teardown whatever happens."""
    clusters = []

    def make(**kwargs):
        cluster = ipp.Cluster(**kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_cluster_sync()


# -- connecting returns a usable client ------------------------------------------------------------


def test_issue_7_example_runs_unchanged(new_cluster):
    cluster = new_cluster(n=4); cluster.start_cluster_sync()  # noqa: E702 - the issue's lines
    rc = cluster.connect_client_sync()
    assert rc[:].targets == [0, 1, 2, 3]  # raised NoEnginesRegistered: engines were still connecting
    rc.close()
    by_file = ipp.Client(connection_files=cluster.connection_files)
    try:
        assert by_file[:].targets == [0, 1, 2, 3]
    finally:
        by_file.close()
    cluster.start_engines_sync(2)  # grows to 6
    assert sorted(cluster.engines) == [0, 1, 2, 3, 4, 5]
    rc = cluster.connect_client_sync()
    assert len(set(rc[:].apply_sync(getpid))) == 6


def test_start_and_connect_returns_every_engine(new_cluster):
    rc = new_cluster(n=2).start_and_connect_sync()
    assert rc.ids == [0, 1]
    assert len(rc[:].apply_sync(getpid)) == 2


def test_engine_that_does_not_answer_is_left_out_with_a_warning(cluster, rc, tmp_path):
    good = cluster.connection_files[0]
    wrong_key = json.loads(open(good).read())
    wrong_key["key"] = "not-the-key"
    nobody = dict(wrong_key)
    for name in ("shell_port", "iopub_port", "control_port", "hb_port"):
        nobody[name] = _unused_port()
    files = [good]
    for name, info in (("wrong-key", wrong_key), ("nobody", nobody)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(info))
        files.append(path)
    with pytest.warns(UserWarning, match=r"2 of 3 engines did not connect within timeout=3 s") as caught:
        client = ipp.Client(connection_files=files, timeout=3)
    try:
        message = str(caught[0].message)
        assert "engine 1 answers heartbeats but not requests" in message and "key" in message
        assert "engine 2 does not answer at 127.0.0.1" in message and "not running" in message
        assert client.ids == [0]
        assert client[:].targets == [0]
    finally:
        client.close()


def test_dead_engine_is_left_out_at_once_and_named(new_cluster):
    cluster = new_cluster(n=2)
    cluster.start_cluster_sync()
    cluster.engines[1].provisioner.process.kill()
    start = time.monotonic()
    with pytest.warns(UserWarning, match="engine 1 died: killed by SIGKILL"):
        rc = cluster.connect_client_sync(timeout=60)
    assert time.monotonic() - start < 30  # a dead engine is not waited for until the timeout
    assert rc.ids == [0]


def test_grown_cluster_joins_every_client(new_cluster):
    cluster = new_cluster(n=1)
    rc = cluster.start_and_connect_sync()
    attached = ipp.Client(cluster=cluster)
    waiting = rc.wait_for_engines(3, timeout=60, block=False)
    assert not waiting.done()
    set_id = cluster.start_engines_sync(2)
    assert isinstance(set_id, str) and cluster.engine_sets[set_id] == [1, 2]
    assert waiting.result(timeout=60) is None
    attached.wait_for_engines(timeout=60)  # default n: every engine this client knows of
    assert rc.ids == attached.ids == [0, 1, 2]
    assert len(set(attached[:].apply_sync(getpid))) == 3
    cluster.stop_engines_sync(set_id)
    assert wait_until(lambda: rc.ids == attached.ids == [0], timeout=30)
    assert attached.wait_for_engines(timeout=1) is None  # stopped engines are not waited for
    cluster.start_engines_sync(1)  # ids are never reused, as in ipyparallel
    rc.wait_for_engines(2, timeout=60)
    assert rc.ids == [0, 3]


def test_restarted_engine_rejoins_every_client(new_cluster):
    cluster = new_cluster(n=2)
    rc = cluster.start_and_connect_sync()
    other = cluster.connect_client_sync()
    before = rc[0].apply_sync(getpid)
    cluster.restart_engine_sync(0)
    for client in (rc, other):
        client.wait_for_engines(2, timeout=60)
        assert client.ids == [0, 1]
    after = other[0].apply_sync(getpid)
    assert after != before and rc[0].apply_sync(getpid) == after


# -- close() at any moment ---------------------------------------------------------------------


def test_close_while_engines_connect(new_cluster, caplog):
    cluster = new_cluster(n=2)
    cluster.start_cluster_sync()
    with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
        client = ipp.Client(connection_files=cluster.connection_files, timeout=0)
        client.close()  # raised AttributeError ... no attribute 'shell'
        client.close()
        time.sleep(0.5)  # let the I/O thread run what it had scheduled for the client
    assert not [r for r in caplog.records if CALLBACK_ERRORS in r.getMessage()]
    assert caplog.records == []  # closing on purpose: no "engine died" warnings either
    with pytest.raises(ClientClosed):
        client[:]
    rc = cluster.connect_client_sync()
    assert rc.ids == [0, 1]


def test_stop_cluster_from_another_thread_while_a_client_connects(new_cluster):
    cluster = new_cluster(n=1)
    cluster.start_cluster_sync()
    process = cluster.engines[0].provisioner.process
    os.kill(process.pid, signal.SIGSTOP)  # the engine cannot answer: the client waits for it
    stopper = threading.Timer(1.0, cluster.stop_cluster_sync)
    stopper.start()
    try:
        start = time.monotonic()
        client = cluster.connect_client_sync(timeout=120)
        assert time.monotonic() - start < 60  # the close ended the wait, not the timeout
        assert client.ids == []
        with pytest.raises(ClientClosed):
            client[:].apply_async(getpid)
    finally:
        stopper.join(60)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)


def test_close_with_work_in_flight(cluster, tmp_path):
    go = tmp_path / "go"
    client = cluster.connect_client_sync()
    try:
        running = client[0].apply_async(wait_for_file, str(go))
        queued = client[0].apply_async(getpid)
        lv = client.load_balanced_view()
        balanced = lv.map_async(wait_for_file, [str(go)] * 6)
        assert wait_until(lambda: client.queue_status()[0]["queue"] >= 2, timeout=30)
        client.close()
        for ar in (running, queued):
            with pytest.raises(EngineError, match="client closed"):
                ar.get(timeout=10)
        with pytest.raises(ipp.CompositeError) as failed:
            balanced.get(timeout=10)
        # Tasks still in the load balancer: ClientClosed; those running on engine 1: EngineError.
        errors = {(ename, evalue) for ename, evalue, _tb, _info in failed.value.elist}
        assert ("ClientClosed", "the Client was closed before this task was sent to an engine") in errors
        assert errors <= {("ClientClosed", "the Client was closed before this task was sent to an engine"),
                          ("EngineError", "engine 1 is no longer connected (client closed)")}
    finally:
        go.touch()  # let the engines' side of the work end


def test_close_twice_and_from_many_threads_at_once(cluster):
    client = cluster.connect_client_sync()
    errors = []

    def close():
        try:
            client.close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=close) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    client.close()
    assert client.ids == []


def test_close_from_a_done_callback_and_from_the_io_thread(cluster):
    client = cluster.connect_client_sync()
    ar = client[0].apply_async(getpid)
    closed = threading.Event()
    ar.add_done_callback(lambda _: (client.close(), closed.set()))
    assert closed.wait(30)
    assert isinstance(ar.get(timeout=10), int)
    with pytest.raises(ClientClosed):
        client[:]
    other = cluster.connect_client_sync()
    other.call_in_loop(other.close)  # on the I/O thread itself
    with pytest.raises(ClientClosed):
        other[:]


_EXIT_SCRIPT = textwrap.dedent("""
    import atexit, json, os, sys, time
    import ipyparallel_ext as ipp
    from ipyparallel_ext import _iothread

    @ipp.interactive
    def snooze(t):
        import time
        time.sleep(t)

    io_thread_gone = sys.argv[1] == "io-thread-gone"
    # Stopping the engines at exit takes time of its own: leave that out where the
    # clients' closing is timed (the engines then exit with their parent process).
    cluster = ipp.Cluster(n=1, shutdown_atexit=not io_thread_gone)
    rc = cluster.start_and_connect_sync()
    rc.wait_for_engines(1, timeout=60)  # (connecting is tested elsewhere)
    pid = rc[0].apply_sync(os.getpid)
    attached = ipp.Client(connection_files=cluster.connection_files)  # no cluster: closed by atexit
    attached.wait_for_engines(1, timeout=60)
    ar = attached[0].apply_async(snooze, 60)  # in flight at exit
    atexit.register(rc.close)  # a user's own exit handler closes a client too
    if io_thread_gone:
        _iothread.shared_loop().stop()
    print(json.dumps(pid), flush=True)
    print(time.monotonic(), flush=True)
""")


@pytest.mark.parametrize("case, bound", [("io-thread-running", 30), ("io-thread-gone", 5)])
def test_interpreter_exit_with_open_clients_does_not_hang(case, bound):
    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, case], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    pid_line, exiting_at = proc.stdout.split()
    engine = json.loads(pid_line)
    try:
        assert "Traceback" not in proc.stderr, proc.stderr
        # Nothing waits out a timeout at exit: closing two clients whose I/O thread
        # was gone took 2 x 10 s before.
        assert ended - float(exiting_at) < bound
        assert wait_until(lambda: not alive(engine), timeout=30)
    finally:
        if alive(engine):
            os.kill(engine, signal.SIGKILL)


# -- the Cluster surface of ipyparallel 9.2 ---------------------------------------------------------

_ASYNC_METHODS = ["start_engines", "stop_engines", "restart_engines", "signal_engines", "stop_engine",
                  "restart_engine", "signal_engine", "start_cluster", "stop_cluster", "connect_client",
                  "start_and_connect", "start_controller", "stop_controller"]


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_cluster_methods_have_ipyparallel_signatures():
    reference = pytest.importorskip("ipyparallel").Cluster
    for name in _ASYNC_METHODS:
        ours = getattr(ipp.Cluster, name)
        assert inspect.iscoroutinefunction(ours), name
        assert _params(ours) == _params(getattr(reference, name)), name
        assert _params(getattr(ipp.Cluster, f"{name}_sync")) == _params(ours), name
    for name in ("to_dict", "from_dict", "from_file"):
        assert _params(getattr(ipp.Cluster, name)) == _params(getattr(reference, name)), name
    ours = set(inspect.signature(ipp.Cluster).parameters)
    assert set(inspect.signature(reference).parameters) <= ours


def test_cluster_arguments_are_never_silently_ignored():
    # engines="mpi" once gave local engines without a word; a launcher we lack says so.
    with pytest.raises(NotImplementedError, match="pbs launcher has no counterpart"):
        ipp.Cluster(engines="pbs")
    with pytest.raises(NotImplementedError, match="sge launcher has no counterpart"):
        ipp.Cluster(engine_launcher_class="ipyparallel.cluster.launcher.SGEEngineSetLauncher")
    with pytest.raises(ValueError, match="unknown launcher"):
        ipp.Cluster(engines="no-such-launcher")
    with pytest.raises(TypeError, match="LocalLauncher options"):
        ipp.Cluster(launcher_options={"hosts": {"a": 1}})
    assert ipp.Cluster(engines="LocalEngineSetLauncher").engine_launcher_class == "local"
    with pytest.raises(TypeError, match="Only specify one"):
        ipp.Cluster(engines="local", engine_launcher_class="local")
    with pytest.raises(NotImplementedError, match="config"):
        ipp.Cluster(config={"Cluster": {"n": 3}})
    with pytest.raises(TypeError, match="no_such_option"):
        ipp.Cluster(no_such_option=1)
    assert ipp.Cluster(engines="local", n=1).n == 1
    for kwargs in ({"controller_ip": "0.0.0.0"}, {"controller": "ssh"}, {"delay": 2.0}):
        with pytest.warns(UserWarning, match="no controller"):
            ipp.Cluster(**kwargs)
    with pytest.warns(UserWarning, match="no IPython profile"):
        ipp.Cluster(profile="mpi")
    logger = logging.getLogger("test-cluster-log")
    assert ipp.Cluster(log=logger).log is logger
    assert ipp.Cluster(log_level=logging.DEBUG).log.level == logging.DEBUG
    cluster = ipp.Cluster()
    try:
        with pytest.raises(TypeError, match="launcher options"):
            cluster.start_engines_sync(1, work_dir=".")
    finally:
        cluster.stop_cluster_sync()


def test_signal_and_stop_engines_by_id_and_by_set(new_cluster, tmp_path):
    cluster = new_cluster(n=2)
    rc = cluster.start_and_connect_sync()
    first = next(iter(cluster.engine_sets))
    started = tmp_path / "started"
    running = rc[1].apply_async(start_then_sleep, str(started))
    assert wait_until(started.exists, timeout=30)
    cluster.signal_engine_sync(signal.SIGINT, 1)
    with pytest.raises(ipp.RemoteError, match="KeyboardInterrupt"):
        running.get(timeout=30)
    cluster.stop_engine_sync(1)
    assert wait_until(lambda: rc.ids == [0], timeout=30)
    assert cluster.engine_sets == {first: [0]}
    with pytest.raises(KeyError, match="no engine set 'nope'"):
        cluster.stop_engines_sync("nope")
    cluster.stop_engines_sync(first)
    assert cluster.engines == {} and cluster.engine_sets == {}


_FROM_DICT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import ipyparallel_ext as ipp

    @ipp.interactive
    def getpid():
        import os
        return os.getpid()

    cluster = ipp.Cluster.from_dict(json.loads(sys.argv[1]))
    rc = cluster.connect_client_sync()
    print(json.dumps({"ids": rc.ids, "pids": rc[:].apply_sync(getpid)}), flush=True)
    rc.close()
    cluster.stop_engines_sync(1)  # engines of another process can be stopped from here
""")


def test_to_dict_reattaches_from_another_process(new_cluster):
    cluster = new_cluster(n=2)
    rc = cluster.start_and_connect_sync()
    pids = rc[:].apply_sync(getpid)
    d = json.loads(json.dumps(cluster.to_dict()))
    (members,) = d["engines"]["sets"].values()
    assert {k: v["pid"] for k, v in members.items()} == {"0": pids[0], "1": pids[1]}
    proc = subprocess.run([sys.executable, "-c", _FROM_DICT_SCRIPT, json.dumps(d)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen == {"ids": [0, 1], "pids": pids}
    assert wait_until(lambda: rc.ids == [0], timeout=30)
    assert wait_until(lambda: not alive(pids[1]), timeout=30)
    assert rc[0].apply_sync(getpid) == pids[0]  # the other process left engine 0 running


def test_cluster_file_round_trip(new_cluster, tmp_path):
    path = tmp_path / "cluster.json"
    cluster = new_cluster(n=1, cluster_file=path)
    rc = cluster.start_and_connect_sync()
    again = ipp.Cluster.from_file(str(path))
    assert again.shutdown_atexit is False
    assert again.connection_files == cluster.connection_files
    attached = again.connect_client_sync()
    try:
        assert attached[0].apply_sync(getpid) == rc[0].apply_sync(getpid)
    finally:
        attached.close()
    cluster.stop_cluster_sync()
    assert not path.exists()


def test_async_api_runs_in_any_event_loop():
    async def main():
        cluster = ipp.Cluster(n=1)
        async with cluster as rc:
            assert rc.ids == [0]
            set_id = await cluster.start_engines(1)
            rc.wait_for_engines(2, timeout=60)
            await cluster.stop_engines(set_id)
            return cluster

    cluster = asyncio.run(main())
    assert cluster.engines == {}


# -- automatic restart of dead local engines -----------------------------------------------------------


def test_auto_restart_brings_a_killed_engine_back(new_cluster, caplog):
    cluster = new_cluster(n=2, auto_restart=True)
    rc = cluster.start_and_connect_sync()
    other = cluster.connect_client_sync()
    pids = rc[:].apply_sync(getpid)
    rc[:].push({"before": 1}, block=True)
    running = rc[1].apply_async(snooze, 30)
    with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(EngineError, match="engine 1 died: killed by SIGKILL"):
            running.get(timeout=30)
        assert wait_until(lambda: rc.ids == other.ids == [0, 1] and rc[1].apply_sync(getpid) != pids[1],
                          timeout=60)
    assert any("engine 1 died: killed by SIGKILL" in r.getMessage() and "namespace" in r.getMessage()
               and "gone" in r.getMessage() for r in caplog.records)
    with pytest.raises(ipp.RemoteError, match="NameError"):
        rc[1].pull("before", block=True)
    assert rc[0].pull("before", block=True) == 1
    assert other[1].apply_sync(getpid) == rc[1].apply_sync(getpid)
    cluster.stop_engine_sync(0)  # stopped on purpose: not restarted
    assert wait_until(lambda: rc.ids == [1], timeout=30)
    time.sleep(1.0)
    assert rc.ids == [1] and sorted(cluster.engines) == [1]


def _unused_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
