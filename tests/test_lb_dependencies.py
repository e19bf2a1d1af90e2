"""after / follow / timeout dependencies, retries, and @depend / @require, on real engines."""

import pytest
from conftest import double, getpid, wait_for_file

import ipyparallel_ext as ipp

T = 30


@ipp.interactive
def boom():
    raise RuntimeError("boom")


@ipp.interactive
def fail_on(pid):
    """Fail on the engine whose process is ``pid``; return the pid it ran on."""
    import os

    if os.getpid() == pid:
        raise RuntimeError(f"failing on purpose on {pid}")
    return os.getpid()


@pytest.fixture
def lv(rc):
    view = rc.load_balanced_view()
    yield view
    rc.wait(list(view.outstanding), timeout=T)


@pytest.fixture
def pids(rc):
    """Engine id -> process id."""
    return dict(zip(rc.ids, rc[:].apply_sync(getpid)))


def test_after_waits_for_the_task(lv, tmp_path):
    go = tmp_path / "go"
    first = lv.apply_async(wait_for_file, str(go), "first")
    with lv.temp_flags(after=first):
        second = lv.apply_async(double, 1)
    try:
        assert not second.wait(0.5), "ran before the task it must follow finished"
        assert second.msg_ids[0] in lv.client.queue_status(verbose=True)["unassigned"]
    finally:
        go.touch()
    assert second.get(timeout=T) == 2
    assert first.get(timeout=T) == "first"
    assert second.started >= first.completed


def test_after_msg_ids_and_purged_results(rc, lv):
    first = lv.apply_async(double, 1)
    first.get(timeout=T)
    with lv.temp_flags(after=first.msg_ids):  # by msg_id
        assert lv.apply_sync(double, 2) == 4
    rc.purge_results(jobs=first)
    with lv.temp_flags(after=first):  # an AsyncResult keeps its records, purged or not
        assert lv.apply_sync(double, 3) == 6
    with lv.temp_flags(after=first.msg_ids):  # a purged msg_id is unknown
        with pytest.raises(ipp.error.InvalidDependency):
            lv.apply_sync(double, 4)


def test_follow_runs_where_the_task_ran(lv):
    first = lv.apply_async(getpid)
    where = first.get(timeout=T)
    with lv.temp_flags(follow=first):
        ars = [lv.apply_async(getpid) for _ in range(8)]
    assert [ar.get(timeout=T) for ar in ars] == [where] * 8
    assert {ar.engine_id for ar in ars} == {first.engine_id}


def test_follow_tasks_on_two_engines(rc, lv):
    on0 = rc[0].apply_async(getpid)
    on1 = rc[1].apply_async(getpid)
    pids = {on0.get(timeout=T), on1.get(timeout=T)}
    with lv.temp_flags(follow=ipp.Dependency([on0, on1], all=False)):
        assert {lv.apply_sync(getpid) for _ in range(4)} <= pids
    with lv.temp_flags(follow=[on0, on1]):  # all=True: no one engine ran both
        with pytest.raises(ipp.ImpossibleDependency):
            lv.apply_sync(getpid)


def test_dependency_on_a_failed_task(lv):
    failed = lv.apply_async(boom)
    with pytest.raises(ipp.RemoteError):
        failed.get(timeout=T)
    with lv.temp_flags(after=failed):  # default: only successes count
        ar = lv.apply_async(double, 1)
    with pytest.raises(ipp.ImpossibleDependency):
        ar.get(timeout=T)
    with lv.temp_flags(after=ipp.Dependency(failed, success=False, failure=True)):
        assert lv.apply_sync(double, 1) == 2
    ok = lv.apply_async(double, 1)
    with lv.temp_flags(after=ipp.Dependency([failed, ok], all=False)):  # any one success
        assert lv.apply_sync(double, 5) == 10


def test_dependency_timeout(lv, tmp_path):
    go = tmp_path / "go"
    first = lv.apply_async(wait_for_file, str(go))
    try:
        with lv.temp_flags(after=first, timeout=0.3):
            ar = lv.apply_async(double, 1)
        with pytest.raises(ipp.DependencyTimeout):
            ar.get(timeout=T)
        assert not first.ready()
    finally:
        go.touch()
    first.get(timeout=T)


def test_dependency_class_api():
    dep = ipp.Dependency(["a", "b"], all=False, success=True, failure=True)
    assert dep.check({"a"}) and not dep.check(set(), set())
    assert ipp.Dependency(dep.as_dict()) == dep and ipp.Dependency(dep.as_dict()).all is False
    assert ipp.Dependency(["a"]).unreachable(set(), {"a"})
    with pytest.raises(ValueError):
        ipp.Dependency(["a"], success=False, failure=False)
    with pytest.raises(TypeError):
        ipp.Dependency([1])


def test_retries_go_to_another_engine(lv, pids):
    bad = pids[0]
    with lv.temp_flags(retries=1):
        amr = lv.map_async(fail_on, [bad] * 12)
    assert amr.get(timeout=T) == [pids[1]] * 12


def test_retries_run_out(rc, pids):
    lv = rc.load_balanced_view(targets=[0])  # only the engine where it fails
    with lv.temp_flags(retries=2):
        ar = lv.apply_async(fail_on, pids[0])
    with pytest.raises(ipp.RemoteError):
        ar.get(timeout=T)
    assert rc.load_balanced_view().apply_async(fail_on, pids[0]).wait(T)


def test_depend_runs_only_where_the_check_holds(lv, pids):
    wanted = pids[1]

    def on_engine(pid):
        import os

        return os.getpid() == pid

    @ipp.depend(on_engine, wanted)
    def where():
        import os

        return os.getpid()

    ars = [lv.apply_async(where) for _ in range(10)]
    assert [ar.get(timeout=T) for ar in ars] == [wanted] * 10

    @ipp.depend(lambda: False)
    def never():
        return 1

    with pytest.raises(ipp.ImpossibleDependency):
        lv.apply_sync(never)


def test_require_imports_on_the_engine(lv):
    @ipp.require("math")
    @ipp.interactive
    def root(x):
        return math.sqrt(x)  # noqa: F821 - imported on the engine by @require

    assert lv.apply_sync(root, 16) == 4.0

    @ipp.require("no_such_module_for_ipp_ext_tests")
    def needs_missing():
        return 1

    with pytest.raises(ipp.ImpossibleDependency):
        lv.apply_sync(needs_missing)
