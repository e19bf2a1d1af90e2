"""Views and magics behave as ipyparallel 9.2's do, line for line (issue 7, point 5).

Each test runs the lines an ipyparallel user writes, on the session's two
real engines, and checks what ipyparallel 9.2 returns, prints or raises for
them (compared side by side when these tests were written).
"""

import os

import IPython.lib.pretty
import pytest
from conftest import double, fail_at, getpid, wait_for_file
from test_magics import run

import ipyparallel_ext as ipp
from ipyparallel_ext import _magics
from ipyparallel_ext._client import load_connection_file
from ipyparallel_ext.error import DependencyTimeout, ImpossibleDependency, InvalidDependency

TIMEOUT = 30


# -- len(view), targets ------------------------------------------------------------------------


def test_len_of_views(rc):
    assert len(rc[:]) == 2 and len(rc[0]) == 1 and len(rc[-1]) == 1 and len(rc[[0, 1]]) == 2
    assert len(rc.direct_view()) == 2
    assert len(rc.load_balanced_view()) == 2 and len(rc.load_balanced_view([1])) == 1
    assert len(rc.broadcast_view()) == 2


def test_negative_and_slice_targets_are_engine_ids(rc):
    last = rc.ids[-1]
    assert rc[-1].targets == last and isinstance(rc[-1].targets, int)
    assert rc[::2].targets == rc.ids[::2] and rc[-1:].targets == [last]
    # Given to the view makers, they resolve the same way (as ipyparallel's do).
    assert rc.direct_view(-1).targets == last
    assert rc.direct_view(slice(None, None, 2)).targets == rc.ids[::2]
    assert rc.load_balanced_view(-1).targets == [last]
    assert rc.load_balanced_view(slice(1, None)).targets == rc.ids[1:]
    assert rc.direct_view(-1).apply_sync(getpid) == rc[last].apply_sync(getpid)
    with pytest.raises(IndexError):
        rc.direct_view(-5)
    # 'all' and None stay: such a view follows the engines.
    assert rc.direct_view().targets == "all" and rc.load_balanced_view("all").targets is None


def test_set_flags_returns_the_view(rc):
    dv = rc[:]
    assert dv.set_flags(block=True) is dv and dv.block
    lv = rc.load_balanced_view()
    assert lv.set_flags(retries=1) is lv


def test_views_on_all_follow_engines_that_join(cluster, rc):
    files = cluster.connection_files
    with ipp.Client(connection_files=files[:1]) as client:
        client.wait_for_engines(1, timeout=TIMEOUT)
        dv, lv = client.direct_view(), client.load_balanced_view()
        assert len(dv) == len(lv) == 1
        client.add_engine(1, load_connection_file(files[1]))
        client.wait_for_engines(2, timeout=TIMEOUT)
        assert len(dv) == len(lv) == 2 and dv.targets == "all"
        assert dv.apply_sync(getpid) == rc[:].apply_sync(getpid)
        assert client[-1].targets == 1


# -- apply ---------------------------------------------------------------------------------------


@ipp.interactive  # sent by value: engines cannot import the test modules
def takes_view_words(f, args=None, kwargs=None, block=None, targets=None, track=None):
    return f, args, kwargs, block, targets, track


def test_apply_passes_keywords_named_like_its_own_arguments(rc):
    words = dict(f=1, args=2, kwargs=3, block=4, targets=5, track=6)
    assert rc[0].apply_sync(takes_view_words, **words) == (1, 2, 3, 4, 5, 6)
    assert rc[:].apply_async(takes_view_words, **words).get(TIMEOUT) == [(1, 2, 3, 4, 5, 6)] * 2
    lv = rc.load_balanced_view()
    assert lv.apply_sync(takes_view_words, **words) == (1, 2, 3, 4, 5, 6)


# -- map over iterators -------------------------------------------------------------------------


def test_map_over_iterators_and_generators(rc, dv):
    assert dv.map_sync(double, iter(range(5))) == [0, 2, 4, 6, 8]
    assert dv.map_sync(double, (i for i in range(5))) == [0, 2, 4, 6, 8]
    # The shortest input sets the length, as with the builtin map.
    assert dv.map_sync(lambda x, y: x + y, (i for i in range(5)), [10] * 3) == [10, 11, 12]
    assert dv.map(double, iter(range(3)), block=False).get(TIMEOUT) == [0, 2, 4]
    lv = rc.load_balanced_view()
    assert lv.map_sync(double, (i for i in range(5))) == [0, 2, 4, 6, 8]
    assert lv.map_async(double, iter(range(5)), chunksize=2).get(TIMEOUT) == [0, 2, 4, 6, 8]
    assert list(lv.imap(double, (i for i in range(5)))) == [0, 2, 4, 6, 8]


def test_directview_map_return_exceptions(dv):
    out = dv.map_sync(fail_at, range(4), [1] * 4, return_exceptions=True)
    # Engine 0 mapped [0, 1] and failed: its error stands for each of its elements.
    assert len(out) == 4 and out[2:] == [2, 3]
    assert all(isinstance(e, ipp.RemoteError) and e.ename == "ValueError" for e in out[:2])
    with pytest.raises(ipp.CompositeError, match="ValueError"):
        dv.map_sync(fail_at, range(4), [1] * 4)


# -- Reference ----------------------------------------------------------------------------------


def test_reference_as_the_callable_and_as_an_expression(rc, dv):
    dv.execute("def ref_times10(x):\n    return x * 10\n"
               "ref_funcs = [lambda x: x + 1]\n"
               "import types; ref_obj = types.SimpleNamespace(b=7)\n"
               "ref_list = [3, 4]")
    assert dv.apply_sync(ipp.Reference("ref_times10"), 1) == [10, 10]
    assert rc[-1].apply_sync(ipp.Reference("ref_times10"), 2) == 20
    assert rc.load_balanced_view().apply_sync(ipp.Reference("ref_times10"), 3) == 30
    assert dv.apply_sync(ipp.Reference("ref_funcs[0]"), 1) == [2, 2]
    assert dv.apply_sync(lambda x: x, ipp.Reference("ref_list[0]")) == [3, 3]
    assert dv.apply_sync(lambda x: x, ipp.Reference("ref_obj.b")) == [7, 7]
    assert dv.apply_sync(lambda x: x, ipp.Reference("len(ref_list)")) == [2, 2]
    assert dv.pull("ref_list[1]") == [4, 4] and dv.pull("ref_obj.b") == [7, 7]  # pull evaluates too
    with pytest.raises(ipp.CompositeError, match="one or more exceptions raised in: ref_nothing") as info:
        dv.apply_sync(ipp.Reference("ref_nothing"), 1)
    assert "NameError" in str(info.value)
    with pytest.raises(TypeError, match="callable"):
        dv.apply_sync(42)


# -- closures pushed and pulled back ----------------------------------------------------------


@ipp.interactive
def _triple(x):
    return 3 * x


def make_scaler(n):
    def scale(x):
        return _triple(x) * n  # a module global and a closure cell

    return scale


def test_closure_pushed_and_pulled_back(rc, dv):
    dv.push({"scale2": make_scaler(2)})
    assert dv.apply_sync(ipp.Reference("scale2"), 1) == [6, 6]
    pulled = dv.pull("scale2")
    assert [f(5) for f in pulled] == [30, 30]
    assert rc[0].pull("scale2", block=True)(1) == 6
    # A closure made on the engine, in its interactive namespace, comes back too.
    dv.execute("def engine_outer(n):\n    def inner(x):\n        return x + n\n    return inner\n"
               "add7 = engine_outer(7)")
    assert [f(3) for f in dv.pull("add7")] == [10, 10]


# -- execute() and %px results: ExecuteReply ------------------------------------------------


def test_execute_returns_execute_replies(rc, dv):
    from ipyparallel_ext._execute import ExecuteReply

    replies = dv.execute("er_x = 5", silent=False).get(TIMEOUT)
    assert [type(r) for r in replies] == [ExecuteReply, ExecuteReply]
    assert all(isinstance(r.execution_count, int) and r.data == {} for r in replies)
    assert IPython.lib.pretty.pretty(replies[0]) == ""  # no result: nothing to show
    replies = dv.execute("print('hi'); er_x", silent=False).get(TIMEOUT)
    for engine_id, reply in zip(rc.ids, replies):
        n = reply.execution_count
        assert reply["engine_id"] == reply.engine_id == engine_id
        assert reply.stdout == "hi\n" and reply.metadata["stdout"] == "hi\n"
        assert reply.data == {"text/plain": "5"} and reply.execute_result["execution_count"] == n
        assert repr(reply) == f"<ExecuteReply[{n}]: 5>"
        assert IPython.lib.pretty.pretty(reply) == f"Out[{engine_id}:{n}]: 5"
        assert reply._repr_mimebundle_()[0] == {"text/plain": f"Out[{engine_id}:{n}]: 5"}
    # One engine: the reply itself; rich results keep their representations.
    reply = rc[0].execute("from IPython.display import HTML, display\ndisplay(HTML('<b>d</b>'))\n"
                          "HTML('<i>x</i>')", silent=False).get(TIMEOUT)
    assert isinstance(reply, ExecuteReply)
    assert reply._repr_html_() == "<i>x</i>" and reply._repr_png_() is None
    assert [o["data"]["text/html"] for o in reply.outputs] == ["<b>d</b>"]
    # Silent code publishes no result, and blocking execute still returns the AsyncResult.
    reply = rc[0].execute("er_x").get(TIMEOUT)
    assert isinstance(reply, ExecuteReply) and reply.data == {} and isinstance(reply.execution_count, int)
    assert isinstance(dv.execute("er_y = 1", block=True), ipp.AsyncResult)
    with pytest.raises(ipp.RemoteError, match="ZeroDivisionError"):
        rc[0].execute("1/0", silent=False).get(TIMEOUT)


# -- the magics -------------------------------------------------------------------------------


@pytest.fixture
def activate(shell):
    """``activate(view)`` binds %px to it for the test."""
    def bind(view):
        view.activate()
        return _magics._registry[shell][""]

    yield bind
    magics = _magics._registry.get(shell, {}).get("")
    if magics is not None:
        magics.retire()  # %autopx off, if a test left it on


def test_px_results_are_execute_replies(rc, shell, activate):
    from ipyparallel_ext._execute import ExecuteReply

    activate(rc[:])  # not blocking: %px returns the AsyncResult
    run(shell, "px_ar = %px 6 * 7").ok()
    ar = shell.user_ns["px_ar"]
    assert repr(ar).startswith("<AsyncResult(%px)")
    replies = ar.get(TIMEOUT)
    assert all(isinstance(r, ExecuteReply) and r.data == {"text/plain": "42"} for r in replies)
    run(shell, "%%px --noblock -o px_ar2\nfrom IPython.display import HTML\nHTML('<b>x</b>')").ok()
    assert [r._repr_html_() for r in shell.user_ns["px_ar2"].get(TIMEOUT)] == ["<b>x</b>"] * 2


def test_px_on_a_negative_index_view(rc, shell, activate):
    view = rc[-1]
    view.block = True
    activate(view)
    out = run(shell, "%px px_last = __import__('os').getpid(); print('on last')").ok()
    assert out.stdout == f"[stdout:{rc.ids[-1]}] \non last\n"  # the last engine's id, as in ipyparallel
    assert rc[rc.ids[-1]].pull("px_last", block=True) == rc[-1].apply_sync(getpid)


def test_autopx_shows_engine_errors_and_goes_on(rc, shell, activate):
    activate(rc[:]).view.block = True
    assert "%autopx enabled" in run(shell, "%autopx").stdout
    try:
        err = run(shell, "1/0").stderr
        assert err.count("ZeroDivisionError: division by zero") == 2  # both engines' tracebacks
        assert "[0:execute]" in err and "[1:execute]" in err
        assert run(shell, "ap_v = 5\nprint('next', ap_v)").ok().stdout.count("next 5") == 2
    finally:
        assert "%autopx disabled" in run(shell, "%autopx").stdout
    assert "ap_v" not in shell.user_ns


def test_autopx_on_a_non_blocking_view(rc, shell, activate):
    activate(rc[:])  # block=False
    assert "%autopx enabled" in run(shell, "%autopx").stdout
    try:
        for cell in ("ap_nb = 3", "1/0", "ap_nb += 1"):
            assert run(shell, cell).ok().result.result is None  # sent; nothing waited for
    finally:
        assert "%autopx disabled" in run(shell, "%autopx").stdout
    assert rc[:].pull("ap_nb", block=True) == [4, 4]  # each engine ran the cells in order
    assert "ap_nb" not in shell.user_ns


# -- broadcast_view -------------------------------------------------------------------------


def test_broadcast_view(rc):
    bv = rc.broadcast_view()
    assert isinstance(bv, ipp.DirectView) and isinstance(bv, ipp.BroadcastView)
    assert bv.targets == rc.ids and bv.is_coalescing is False and bv.block is False
    assert bv.apply_sync(getpid) == rc[:].apply_sync(getpid)
    bv.push({"bv_w": 1}, block=True)
    assert bv.pull("bv_w", block=True) == [1, 1] and bv["bv_w"] == [1, 1]
    assert bv.map_sync(double, range(5)) == [0, 2, 4, 6, 8]
    coalescing = rc.broadcast_view(is_coalescing=True, block=True)
    assert coalescing.is_coalescing and coalescing.apply(lambda: 4) == [4, 4]
    assert rc.broadcast_view(targets=-1).targets == [rc.ids[-1]]
    with pytest.raises(KeyError):
        rc.broadcast_view(no_such_flag=True)


# -- dependencies ---------------------------------------------------------------------------------


def test_unknown_dependencies_fail_in_the_result(rc):
    lv = rc.load_balanced_view()
    for kind in ("after", "follow"):
        with lv.temp_flags(**{kind: ["no-such-task"]}):
            ar = lv.apply_async(double, 1)  # submitting does not raise, as in ipyparallel
        with pytest.raises(InvalidDependency, match="no-such-task"):
            ar.get(TIMEOUT)
    with pytest.raises(ValueError):  # a dependency that is no msg_id at all: at once
        lv.set_flags(after=123)


def test_failed_dependencies_are_impossible(rc):
    lv = rc.load_balanced_view()
    bad = lv.apply_async(fail_at, 1, 1)
    assert bad.wait(TIMEOUT)
    for kind in ("after", "follow"):
        with lv.temp_flags(**{kind: bad}):
            ar = lv.apply_async(double, 1)
        with pytest.raises(ImpossibleDependency):
            ar.get(TIMEOUT)
    with lv.temp_flags(after=bad, retries=2):  # retries do not retry an impossible dependency
        ar = lv.apply_async(double, 1)
    with pytest.raises(ImpossibleDependency):
        ar.get(TIMEOUT)
    with lv.temp_flags(after=ipp.Dependency(bad, success=False, failure=True)):
        assert lv.apply_async(double, 2).get(TIMEOUT) == 4


@ipp.interactive
def flaky(path):
    """Fails the first time (leaving ``path`` behind), succeeds after."""
    if not os.path.exists(path):
        open(path, "w").close()
        raise ValueError("first attempt")
    return "ok"


def test_retries_with_timeout(rc, tmp_path):
    lv = rc.load_balanced_view()
    # timeout limits the wait for dependencies, not the run: retries still apply to failures.
    with lv.temp_flags(retries=1, timeout=0.5):
        assert lv.apply_async(flaky, str(tmp_path / "flaky")).get(TIMEOUT) == "ok"
        assert lv.apply_async(lambda: __import__("time").sleep(1) or "slept").get(TIMEOUT) == "slept"
    go = tmp_path / "go"
    slow = lv.apply_async(wait_for_file, str(go))
    try:
        with lv.temp_flags(after=slow, retries=2, timeout=0.3):
            ar = lv.apply_async(double, 1)
        with pytest.raises(DependencyTimeout):  # not retried
            ar.get(TIMEOUT)
    finally:
        go.touch()
    assert slow.get(TIMEOUT) is True


# -- label, executor, update ------------------------------------------------------------------


def test_label_flag_reaches_the_metadata(rc, dv):
    ar = dv.execute("1", label="x")
    assert [m["label"] for m in ar.metadata] == ["x", "x"]
    with dv.temp_flags(label="lab"):
        assert [m["label"] for m in dv.apply_async(double, 1).metadata] == ["lab", "lab"]
    assert [m["label"] for m in dv.map_async(double, range(4), label="m").metadata] == ["m", "m"]
    lv = rc.load_balanced_view()
    ar = lv.map_async(double, range(2), label="lm")
    assert ar.get(TIMEOUT) == [0, 2] and [m["label"] for m in ar.metadata] == ["lm", "lm"]
    assert lv.apply_async(double, 1).metadata["label"] is None
    with lv.temp_flags(label="t"):
        assert lv.apply_async(double, 1).metadata["label"] == "t"


def test_directview_executor_and_update(rc, dv):
    executor = rc[:].executor
    assert executor.submit(double, 2).result(TIMEOUT) == [4, 4]
    assert list(executor.map(double, iter(range(5)))) == [0, 2, 4, 6, 8]
    executor.shutdown()
    assert dv.update({"up_u": 1}) == [None, None]  # with the view's flags (blocking here)
    assert isinstance(rc[:].update({"up_u": 2}), ipp.AsyncResult) and dv["up_u"] == [2, 2]


def test_clear_queue_status_and_repr_of_views(rc, dv):
    assert dv.clear() is None and isinstance(rc[:].clear(), ipp.AsyncResult)  # blocking: nothing
    assert set(rc[0].queue_status()) == {"queue", "tasks", "completed"}  # engine 0's own, not all
    assert repr(rc.direct_view()) == "<DirectView all>" and repr(rc[0]) == "<DirectView 0>"
    assert repr(rc[:]) == "<DirectView [0, 1]>" and repr(rc.load_balanced_view()) == "<LoadBalancedView None>"
