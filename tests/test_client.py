"""Client: engine ids, indexing, waiting, bookkeeping, aborting, attaching by connection file."""

import json
import os
import time

import pytest

import ipyparallel_ext as ipp
from ipyparallel_ext.error import ConnectionFileError, NoEnginesRegistered, TaskAborted

from conftest import alive, wait_for_file, wait_until


# -- ids, len, indexing -----------------------------------------------------------------


def test_ids_and_len(rc):
    assert rc.ids == [0, 1]
    assert len(rc) == 2
    assert isinstance(rc.ids, list)
    rc.ids.append(99)  # a copy: the client's registry is not exposed
    assert rc.ids == [0, 1]


@pytest.mark.parametrize(
    "key, targets",
    [(1, 1), (slice(None), [0, 1]), (slice(None, None, 2), [0]), (slice(1, 3), [1]), ([0, 1], [0, 1])],
    ids=["rc[1]", "rc[:]", "rc[::2]", "rc[1:3]", "rc[[0,1]]"],
)
def test_indexing_makes_direct_views(rc, key, targets):
    view = rc[key]
    assert isinstance(view, ipp.DirectView)
    assert view.targets == targets
    expected = os.getpid()  # never an engine's pid
    pids = view.apply_sync(os.getpid)
    if isinstance(targets, int):
        assert isinstance(pids, int) and pids != expected
    else:
        assert len(pids) == len(targets) and expected not in pids


def test_indexing_single_engine_returns_values_not_lists(rc):
    assert rc[0].apply_sync(lambda: "zero") == "zero"
    last = rc[-1]  # negative ids count from the end, as in ipyparallel
    assert last.targets == 1
    assert last.apply_sync(lambda: 1) == 1
    assert rc[range(2)].targets == [0, 1]
    assert [view.targets for view in rc] == [0, 1]


def test_indexing_unknown_engine_fails_fast(rc):
    with pytest.raises(IndexError, match="no engine with id 7"):
        rc[7]
    with pytest.raises(IndexError, match="7"):
        rc[[0, 7]]
    with pytest.raises(TypeError):
        rc["zero"]


def test_direct_view(rc):
    dv = rc.direct_view()
    assert dv.targets == "all"
    assert len(dv.apply_sync(lambda: 1)) == 2
    one = rc.direct_view([1])
    assert one.apply_sync(lambda: 2) == [2]
    assert rc.direct_view(0).apply_sync(lambda: 3) == 3


# -- waiting --------------------------------------------------------------------------------


def test_wait_for_engines_returns_when_enough(rc):
    assert rc.wait_for_engines(2, timeout=10) is None
    assert rc.wait_for_engines(1, timeout=0) is None


def test_wait_for_engines_timeout(rc):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="2 of 3 engines"):
        rc.wait_for_engines(3, timeout=0.5)
    assert time.monotonic() - start < 10


def test_wait_for_jobs(rc, tmp_path):
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go))
    assert rc.wait(ar, timeout=0.2) is False
    assert rc.wait(timeout=0.1) is False  # everything outstanding, ar included
    go.touch()
    assert rc.wait([ar], timeout=30) is True
    assert ar.get(timeout=1) is True
    assert rc.wait(timeout=10) is True  # nothing outstanding left


def test_get_result_by_msg_id_and_history_index(rc):
    ar = rc[0].apply_async(lambda: "kept")
    assert ar.get(timeout=30) == "kept"
    again = rc.get_result(ar.msg_ids[0])
    assert again.get(timeout=5) == "kept"
    last = rc.get_result(-1)
    assert last.msg_ids == ar.msg_ids
    assert last.get(timeout=5) == "kept"
    both = rc.get_result([ar.msg_ids[0]], block=True)
    assert both.ready()
    assert both.get(timeout=5) == ["kept"]
    with pytest.raises(KeyError):
        rc.get_result("no-such-msg-id")


# -- bookkeeping ---------------------------------------------------------------------------


def test_history_results_outstanding(rc, tmp_path):
    go = tmp_path / "go"
    ar = rc[1].apply_async(wait_for_file, str(go))
    msg_id = ar.msg_ids[0]
    assert rc.history[-1] == msg_id
    assert msg_id in rc.outstanding
    assert msg_id not in rc.results
    go.touch()
    ar.get(timeout=30)
    assert msg_id not in rc.outstanding
    assert rc.results[msg_id] is True
    failed = rc[1].apply_async(lambda: 1 / 0)
    failed.wait(timeout=30)
    assert isinstance(rc.results[failed.msg_ids[0]], ipp.RemoteError)


def test_queue_status(rc, tmp_path):
    go = tmp_path / "go"
    running = rc[0].apply_async(wait_for_file, str(go))
    queued = [rc[0].apply_async(lambda: 1) for _ in range(3)]
    try:
        assert wait_until(lambda: rc.queue_status()[0]["queue"] == 4)
        status = rc.queue_status()
        assert set(status) == {0, 1, "unassigned"}
        assert set(status[0]) == {"queue", "completed", "tasks"}
        assert status[1]["queue"] == 0
        assert status["unassigned"] == 0
        verbose = rc.queue_status(verbose=True)
        assert set(verbose[0]["queue"]) == {running.msg_ids[0], *(q.msg_ids[0] for q in queued)}
        # One engine named by an int: its own status, as in ipyparallel.
        assert rc.queue_status(0)["queue"] == 4
    finally:
        go.touch()
    rc.wait([running, *queued], timeout=30)
    status = rc.queue_status(verbose=True)
    assert status[0]["queue"] == []
    assert running.msg_ids[0] in status[0]["completed"]


def test_purge_results(rc):
    ars = [rc[0].apply_async(lambda i=i: i) for i in range(3)]
    rc.wait(ars, timeout=30)
    first = ars[0].msg_ids[0]
    assert first in rc.results
    rc.purge_results(jobs=[first])
    assert first not in rc.results
    assert ars[1].msg_ids[0] in rc.results
    rc.purge_results(targets=[0])
    assert not any(m in rc.results for a in ars for m in a.msg_ids)
    other = rc[1].apply_async(lambda: 1)
    other.get(timeout=30)
    lv = rc.load_balanced_view()
    lv.map_sync(abs, range(-5, 0))
    rc.purge_results("all")
    assert rc.results == {}
    assert lv.history == []  # views forget purged work too: memory stays flat
    # Results already held by an AsyncResult stay available to it.
    assert other.get(timeout=1) == 1


def test_abort_queued_work(rc, tmp_path):
    go = tmp_path / "go"
    running = rc[0].apply_async(wait_for_file, str(go))
    queued = [rc[0].apply_async(lambda i=i: i) for i in range(3)]
    try:
        assert wait_until(lambda: rc.queue_status()[0]["queue"] == 4)
        rc.abort(queued[:2])
        for ar in queued[:2]:
            with pytest.raises(TaskAborted):
                ar.get(timeout=10)
            start = time.monotonic()
            assert ar.metadata["status"] == "aborted"
            assert ar.stdout == ""  # never ran: no outputs to wait for
            assert time.monotonic() - start < 2
    finally:
        go.touch()
    assert running.get(timeout=30) is True  # running work is not touched
    assert queued[2].get(timeout=30) == 2


def test_abort_everything_queued_on_targets(rc, tmp_path):
    go = tmp_path / "go"
    running = rc[1].apply_async(wait_for_file, str(go))
    queued = rc[1].apply_async(lambda: "never")
    try:
        assert wait_until(lambda: rc.queue_status()[1]["queue"] == 2)
        rc.abort(targets=[1])
        with pytest.raises(TaskAborted):
            queued.get(timeout=10)
    finally:
        go.touch()
    assert running.get(timeout=30) is True


def test_spin_is_harmless(rc):
    assert rc.spin() is None
    assert rc[0].apply_sync(lambda: 1) == 1


# -- attaching by connection file ------------------------------------------------------------


def test_client_from_connection_files(cluster):
    files = cluster.connection_files
    assert len(files) == 2 and all(os.path.exists(f) for f in files)
    with ipp.Client(connection_files=files) as client:
        client.wait_for_engines(2, timeout=30)
        assert client.ids == [0, 1]
        dv = client[:]
        dv.block = True
        assert dv.apply_sync(lambda x: x + 1, 1) == [2, 2]


def test_second_client_shares_engines(cluster, rc):
    other = cluster.connect_client_sync()
    try:
        other.wait_for_engines(2, timeout=30)
        rc[:].push({"shared_value": 41}, block=True)
        assert other[:].pull("shared_value", block=True) == [41, 41]
        # Each client sees only its own work.
        mine = rc[0].apply_async(lambda: "mine")
        theirs = other[0].apply_async(lambda: "theirs")
        assert mine.get(timeout=30) == "mine"
        assert theirs.get(timeout=30) == "theirs"
        assert theirs.msg_ids[0] not in rc.history
        assert mine.msg_ids[0] not in other.history
    finally:
        other.close()
    # Closing one client leaves the engines to the other.
    assert rc[:].apply_sync(lambda: "still here") == ["still here", "still here"]


def test_close(cluster):
    client = cluster.connect_client_sync()
    client.wait_for_engines(2, timeout=30)
    view = client[:]
    client.close()
    client.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        view.apply_async(lambda: 1)


def test_missing_connection_file(tmp_path):
    path = tmp_path / "kernel-missing.json"
    with pytest.raises(ConnectionFileError, match="kernel-missing.json"):
        ipp.Client(connection_files=[path])


def test_malformed_connection_file(tmp_path):
    path = tmp_path / "kernel-garbage.json"
    path.write_text("{this is not json")
    with pytest.raises(ConnectionFileError, match="kernel-garbage.json"):
        ipp.Client(connection_files=[path])


def test_connection_file_lacking_fields(tmp_path, cluster):
    info = json.loads(open(cluster.connection_files[0]).read())
    del info["shell_port"], info["key"]
    path = tmp_path / "kernel-partial.json"
    path.write_text(json.dumps(info))
    with pytest.raises(ConnectionFileError, match="kernel-partial.json.*shell_port"):
        ipp.Client(connection_files=[path])
    not_a_dict = tmp_path / "kernel-list.json"
    not_a_dict.write_text("[1, 2]")
    with pytest.raises(ConnectionFileError, match="kernel-list.json"):
        ipp.Client(connection_files=[not_a_dict])


def test_no_engines():
    with ipp.Client(connection_files=[]) as client:  # Client() alone attaches to a running cluster
        assert client.ids == []
        with pytest.raises(NoEnginesRegistered):
            client[:].apply_sync(lambda: 1)
        with pytest.raises(TimeoutError):
            client.wait_for_engines(1, timeout=0.1)


# -- shutdown (its own engines) ----------------------------------------------------------------


def test_shutdown_one_engine_then_hub(make_cluster):
    cluster, rc = make_cluster(2)
    pids = rc[:].apply_sync(os.getpid)
    rc.shutdown(targets=[1], block=True)
    assert wait_until(lambda: rc.ids == [0], timeout=10)
    assert wait_until(lambda: not alive(pids[1]), timeout=10)
    assert sorted(cluster.engines) == [0]
    assert rc[0].apply_sync(lambda: "alive") == "alive"
    with pytest.raises(ipp.EngineError):
        rc[1]
    rc.shutdown(hub=True)
    assert wait_until(lambda: not alive(pids[0]), timeout=10)
    with pytest.raises(RuntimeError, match="closed"):
        rc[:].apply_async(lambda: 1)


def test_shutdown_attached_engine(make_cluster):
    cluster, rc = make_cluster(1)
    pid = rc[0].apply_sync(os.getpid)
    with ipp.Client(connection_files=cluster.connection_files) as attached:
        attached.wait_for_engines(1, timeout=30)
        attached.shutdown(targets=[0])
        assert attached.ids == []
        assert wait_until(lambda: not alive(pid), timeout=10)
    assert wait_until(lambda: rc.ids == [], timeout=10)  # the other client notices


# -- Cluster ----------------------------------------------------------------------------------


def test_cluster_context_manager_and_kernelspec():
    cluster = ipp.Cluster(n=1, kernel_name="python3")  # any installed kernelspec works
    assert cluster.n == 1 and cluster.kernel_name == "python3"
    with cluster as rc:
        assert isinstance(rc, ipp.Client)
        assert rc.ids == [0]
        pid = rc[0].apply_sync(os.getpid)
        assert alive(pid)
        second = cluster.connect_client_sync()
        second.wait_for_engines(1, timeout=30)
        assert second[0].apply_sync(os.getpid) == pid
    assert wait_until(lambda: not alive(pid), timeout=10)
    assert cluster.engines == {}
