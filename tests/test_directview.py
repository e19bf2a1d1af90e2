"""DirectView: apply, map, namespaces, scatter/gather, execute, picklers, decorators, flags."""

import os
import sys
import threading

import numpy as np
import pytest

import ipyparallel_ext as ipp
from ipyparallel_ext.error import SerializationError


@ipp.interactive
def engine_value(name):
    """Runs on an engine: a variable of its namespace (a global lookup there)."""
    return globals()[name]


# -- apply --------------------------------------------------------------------------------


def test_apply_flavours(dv):
    assert dv.apply_sync(lambda x, y=1: x + y, 1, y=2) == [3, 3]
    ar = dv.apply_async(lambda x: x * 2, 21)
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get(timeout=30) == [42, 42]
    assert dv.apply(lambda: "blocked") == ["blocked", "blocked"]  # dv.block is True
    dv.block = False
    ar = dv.apply(lambda: "not blocked")
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get(timeout=30) == ["not blocked"] * 2


def test_apply_runs_on_each_engine(rc, dv):
    pids = dv.apply_sync(os.getpid)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert rc[1].apply_sync(os.getpid) == pids[1]


def test_lambdas_closures_and_nested_functions(rc):
    factor = 3

    def scale(x):
        return x * factor

    def make_adder(n):
        return lambda x: x + n

    assert rc[0].apply_sync(scale, 2) == 6
    assert rc[0].apply_sync(make_adder(10), 1) == 11
    assert rc[0].apply_sync(lambda xs: sorted(xs, key=lambda v: -v), [1, 3, 2]) == [3, 2, 1]
    # A module the function uses goes along with it.
    assert rc[0].apply_sync(lambda: np.arange(3).sum()) == 3


def test_interactive_functions_use_the_engine_namespace(dv):
    dv.push({"engine_side": "from the engine"})

    @ipp.interactive
    def read_global():
        return engine_side  # noqa: F821 - defined on the engines only

    assert dv.apply_sync(read_global) == ["from the engine"] * 2
    assert dv.apply_sync(engine_value, "engine_side") == ["from the engine"] * 2


def test_reference(rc, dv):
    dv.push({"ref_a": 5})
    rc[1].push({"ref_a": 7}, block=True)
    assert dv.apply_sync(lambda x, y: x + y, ipp.Reference("ref_a"), 1) == [6, 8]
    dv.execute("import types; ref_obj = types.SimpleNamespace(inner=[1, 2])")
    assert dv.apply_sync(len, ipp.Reference("ref_obj.inner")) == [2, 2]
    with pytest.raises(ipp.CompositeError, match="NameError"):
        dv.apply_sync(len, ipp.Reference("ref_not_there"))
    with pytest.raises(TypeError):
        ipp.Reference("")


def test_unpicklable_argument_fails_fast_naming_it(dv):
    lock = threading.Lock()
    before = len(dv.client.history)
    with pytest.raises(SerializationError, match=r"argument 1 \(lock\)"):
        dv.apply_async(lambda a, b: None, 1, lock)
    with pytest.raises(SerializationError, match="keyword argument 'guard'"):
        dv.apply_async(lambda guard=None: None, guard=lock)
    with pytest.raises(SerializationError, match="ns_lock"):
        dv.push({"ns_lock": lock})
    assert len(dv.client.history) == before  # nothing was sent
    with pytest.raises(TypeError):
        dv.apply_async(42)


def test_unknown_target_fails_fast(rc, dv):
    with pytest.raises(IndexError, match="no engine with id 5"):
        rc.direct_view(5).apply_async(lambda: 1)
    with pytest.raises(IndexError, match="9"):
        dv.execute("x = 1", targets=[0, 9])
    with pytest.raises(IndexError):
        dv.push({"x": 1}, targets=9)
    with pytest.raises(TypeError):
        dv.pull("x", targets="some")


def test_arrays_arrive_writable_and_equal(rc, dv):
    a = np.arange(300_000, dtype=np.float64).reshape(600, 500)

    def inspect_array(x):
        x[0, 0] = -1.0  # must not raise: the array is writable
        return x.flags.writeable, x.shape, x.dtype.str, float(x[1:].sum())

    writable, shape, dtype, total = rc[0].apply_sync(inspect_array, a)
    assert writable and shape == a.shape and dtype == a.dtype.str and total == float(a[1:].sum())
    assert a[0, 0] == 0.0  # the local array is untouched
    dv.push({"arr": a})
    back = rc[1].pull("arr", block=True)
    assert back.flags.writeable
    np.testing.assert_array_equal(back, a)
    back[0, 0] = 3.0
    small = np.array([1, 2, 3], dtype=np.int8)  # in-band (small) buffers too
    assert rc[0].apply_sync(lambda x: (x.flags.writeable, x.tolist()), small) == (True, [1, 2, 3])


def test_bytes_and_memoryview_round_trip(rc):
    data = os.urandom(100_000)
    assert rc[0].apply_sync(lambda b: (type(b).__name__, b), data) == ("bytes", data)
    assert rc[0].apply_sync(lambda m: bytes(m), memoryview(data)) == data


# -- map ------------------------------------------------------------------------------------


def test_map_flavours(dv):
    assert dv.map_sync(lambda x: x * x, range(7)) == [x * x for x in range(7)]
    assert dv.map(lambda x, y: x + y, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]  # blocking view
    amr = dv.map_async(str, range(5))
    assert isinstance(amr, ipp.AsyncMapResult)
    assert amr.get(timeout=30) == ["0", "1", "2", "3", "4"]
    assert list(dv.imap(lambda x: -x, range(4))) == [0, -1, -2, -3]
    assert dv.map_sync(lambda x: x, []) == []
    # One task per engine, as in ipyparallel's DirectView.map.
    amr = dv.map_async(lambda x: x, range(10))
    amr.get(timeout=30)
    assert len(amr.msg_ids) == 2 and len(amr) == 10


def test_map_uses_shortest_sequence_and_numpy(dv):
    assert dv.map_sync(lambda x, y: (x, y), [1, 2, 3], "ab") == [(1, "a"), (2, "b")]
    assert dv.map_sync(lambda v: float(v) * 2, np.arange(5.0)) == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_map_error_is_raised(dv):
    with pytest.raises(ipp.CompositeError) as info:
        dv.map_sync(lambda x: 1 / x, [1, 0, 2, 3])
    assert info.value.elist[0][0] == "ZeroDivisionError"


# -- namespaces -------------------------------------------------------------------------------


def test_push_pull_update_get_item(rc, dv):
    assert dv.push({"p_a": 1, "p_b": "two"}) == [None, None]
    assert dv.pull("p_a") == [1, 1]
    assert dv.pull(["p_a", "p_b"]) == [[1, "two"], [1, "two"]]
    assert dv.pull(("p_b",)) == [["two"], ["two"]]
    dv.update({"p_c": [3]})
    assert dv.get("p_c") == [[3], [3]]
    dv["p_d"] = {"k": 4}
    assert dv["p_d"] == [{"k": 4}, {"k": 4}]
    assert rc[0]["p_d"] == {"k": 4}
    rc[1]["p_e"] = 5
    assert rc[1]["p_e"] == 5
    with pytest.raises(ipp.CompositeError, match="NameError"):
        dv.pull("p_not_defined")
    with pytest.raises(TypeError):
        dv.push(["not", "a", "dict"])
    with pytest.raises(TypeError):
        dv.pull(5)


def test_push_nonblocking_and_pull_async(dv):
    dv.block = False
    ar = dv.push({"nb": 1})
    assert ar.get(timeout=30) == [None, None]
    ar = dv.pull("nb")
    assert ar.get(timeout=30) == [1, 1]


@pytest.mark.parametrize(
    "seq",
    [list(range(10)), tuple(range(7)), range(9), ["a", "b", "c"]],
    ids=["list", "tuple", "range", "short list"],
)
def test_scatter_gather(dv, seq):
    dv.scatter("sg", seq)
    parts = dv.pull("sg")
    assert len(parts) == 2 and abs(len(parts[0]) - len(parts[1])) <= 1
    gathered = dv.gather("sg")
    assert list(gathered) == list(seq)
    if isinstance(seq, tuple):
        assert isinstance(gathered, tuple)
    else:
        assert isinstance(gathered, list)


def test_scatter_gather_numpy(dv):
    a = np.arange(20.0).reshape(10, 2)
    dv.scatter("sg_arr", a)
    parts = dv.pull("sg_arr")
    assert [p.shape for p in parts] == [(5, 2), (5, 2)]
    assert all(p.flags.writeable for p in parts)
    gathered = dv.gather("sg_arr")
    assert isinstance(gathered, np.ndarray)
    np.testing.assert_array_equal(gathered, a)


def test_scatter_flatten(dv):
    dv.scatter("flat", [10, 20], flatten=True)
    assert dv.pull("flat") == [10, 20]
    assert dv.gather("flat") == [10, 20]
    dv.scatter("not_flat", [10, 20])
    assert dv.pull("not_flat") == [[10], [20]]


def test_scatter_gather_nonblocking(dv):
    dv.block = False
    ar = dv.scatter("sg_nb", list(range(6)))
    assert isinstance(ar, ipp.AsyncResult)
    ar.get(timeout=30)
    ar = dv.gather("sg_nb")
    assert ar.get(timeout=30) == list(range(6))


def test_scatter_blocking_returns_none(dv):
    assert dv.scatter("sg_none", [1, 2]) is None


# -- execute, run, clear -----------------------------------------------------------------------


def test_execute(rc, dv):
    # Blocking execute still returns the AsyncResult (done), as in ipyparallel,
    # so that its outputs can be looked at.
    ar = dv.execute("ex_a = 6 * 7")
    assert isinstance(ar, ipp.AsyncResult) and ar.ready()
    replies = ar.get(timeout=1)  # one ExecuteReply per engine (see test_compat_behaviour)
    assert [r["engine_id"] for r in replies] == [0, 1] and all(r.data == {} for r in replies)
    assert dv.pull("ex_a") == [42, 42]
    ar = dv.execute("print('hello', ex_a)", block=False)
    ar.get(timeout=30)
    assert ar.stdout == ["hello 42\n", "hello 42\n"]
    ar = rc[0].execute("ex_a + 1", silent=False, block=False)
    ar.get(timeout=30)
    assert ar.execute_result["data"]["text/plain"] == "43"
    ar = rc[0].execute("ex_a + 1", block=False)  # silent: no result published
    ar.get(timeout=30)
    assert ar.execute_result is None
    with pytest.raises(ipp.CompositeError, match="NameError"):
        dv.execute("undefined_name_here")
    with pytest.raises(ipp.RemoteError, match="SyntaxError"):
        rc[0].execute("def (:", block=True)
    with pytest.raises(TypeError):
        dv.execute(lambda: 1)


def test_run_file(dv, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("run_value = sum(range(5))\nprint('ran')\n")
    dv.run(script)
    assert dv.pull("run_value") == [10, 10]
    ar = dv.run(str(script), block=False)
    ar.get(timeout=30)
    assert ar.stdout == ["ran\n", "ran\n"]
    with pytest.raises(FileNotFoundError):
        dv.run(tmp_path / "missing.py")


def test_clear(rc, dv):
    dv.push({"cl_a": 1})
    dv.clear(targets=[0])
    assert rc[1]["cl_a"] == 1
    with pytest.raises(ipp.RemoteError, match="NameError"):
        rc[0].pull("cl_a", block=True)
    dv.clear()
    with pytest.raises(ipp.CompositeError):
        dv.pull("cl_a")
    # The engines still work (the helpers survive a reset).
    assert dv.apply_sync(lambda: 1) == [1, 1]


# -- imports and picklers -----------------------------------------------------------------


def test_sync_imports(dv, capsys):
    dv.execute("for _m in ('colorsys', 'fractions'): globals().pop(_m, None)")
    with dv.sync_imports():
        import colorsys  # noqa: F401
        from fractions import Fraction  # noqa: F401
    out = capsys.readouterr().out
    assert "importing colorsys on engine(s)" in out
    assert "importing Fraction from fractions on engine(s)" in out
    assert "colorsys" in sys.modules
    dv.execute("imported_name = colorsys.__name__")
    assert dv.pull("imported_name") == ["colorsys"] * 2
    assert dv.apply_sync(lambda: Fraction(1, 2)) == [0.5, 0.5]  # noqa: F821
    with dv.sync_imports(quiet=True):
        import json  # noqa: F401
    assert "importing" not in capsys.readouterr().out
    dv.execute("json.dumps(1)")
    with dv.importer:
        import keyword  # noqa: F401
    dv.execute("keyword.iskeyword('if')")


@pytest.mark.parametrize("name", ["dill", "cloudpickle"])
def test_other_picklers(rc, dv, name):
    # dill pickles a function by value only if it comes from __main__ (a script
    # or notebook) and then pickles its globals too: make one as a script would.
    scale = eval("lambda factor: lambda x: x * factor", {"__name__": "__main__"})(4)
    getattr(dv, f"use_{name}")()
    try:
        assert dv.apply_sync(scale, 2) == [8, 8]
        dv.push({"pk": np.arange(3)})
        assert [p.tolist() for p in dv.pull("pk")] == [[0, 1, 2]] * 2
        assert dv.map_sync(scale, range(4)) == [0, 4, 8, 12]
    finally:
        dv.use_pickle()
    assert dv.apply_sync(lambda: "back to pickle") == ["back to pickle"] * 2


# -- decorators ------------------------------------------------------------------------------


def test_remote_decorator(rc, dv):
    @dv.remote(block=True)
    def where(x):
        import os

        return os.getpid(), x

    results = where(1)
    assert len(results) == 2 and all(r[1] == 1 for r in results)
    assert isinstance(where, ipp.RemoteFunction)
    assert where.__name__ == "where"

    @rc[0].remote(block=False)
    def later(x):
        return x * 10

    ar = later(2)
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get(timeout=30) == 20
    assert later.map([1, 2]).get(timeout=30) == [10, 20]
    assert dv.block is True  # the decorator's flags are temporary


def test_parallel_decorator(dv):
    @dv.parallel(block=True)
    def lengths(part):
        return [len(part)]

    assert lengths(list(range(7))) == [4, 3]

    @dv.parallel(block=True)
    def double(part):
        return [x * 2 for x in part]

    assert double(range(6)) == [0, 2, 4, 6, 8, 10]
    assert isinstance(double, ipp.ParallelFunction)

    @dv.parallel(block=True)
    def square(x):
        return x * x

    assert square.map([1, 2, 3]) == [1, 4, 9]  # element by element
    np.testing.assert_array_equal(square(np.arange(4)), [0, 1, 4, 9])  # part by part

    @dv.parallel(block=False)
    def ident(part):
        return part

    ar = ident(np.arange(4))
    np.testing.assert_array_equal(ar.get(timeout=30), np.arange(4))


# -- flags ----------------------------------------------------------------------------------------


def test_set_flags_and_temp_flags(rc):
    view = rc[:]
    assert view.block is False and view.track is False
    view.set_flags(block=True, track=True)
    assert view.block is True and view.track is True
    with view.temp_flags(block=False, targets=[1]):
        assert view.block is False and view.targets == [1]
        ar = view.apply(lambda: "t")
        assert ar.get(timeout=30) == ["t"]
        assert ar.engine_id == [1]
    assert view.block is True and view.targets == [0, 1]
    with pytest.raises(KeyError, match="nonsense"):
        view.set_flags(nonsense=1)
    with pytest.raises(RuntimeError), view.temp_flags(block=False):
        raise RuntimeError("flags come back after an error too")
    assert view.block is True


def test_targets_flag(rc):
    view = rc.direct_view()
    view.block = True
    view.targets = 1
    assert view.apply(lambda: "one") == "one"
    view.targets = [0]
    assert view.apply(lambda: "zero") == ["zero"]
    view.targets = "all"
    assert len(view.apply(lambda: 1)) == 2


def test_track_flag(rc):
    a = np.ones(2_000_000)
    view = rc[0]
    view.track = True
    ar = view.push({"tracked": a}, block=False)
    assert ar.wait_for_send(timeout=30) is True
    ar.get(timeout=30)
    ar = view.apply_async(lambda x: x.sum(), a)
    assert ar.wait_for_send(timeout=30) is True
    assert ar.get(timeout=30) == 2_000_000.0


def test_view_bookkeeping(rc):
    view = rc[:]
    ar = view.apply_async(lambda: 1)
    assert set(ar.msg_ids) <= set(view.history)
    assert view.wait(timeout=30) is True
    assert view.outstanding == set()
    results = view.results
    assert all(results[m] == 1 for m in ar.msg_ids)
    assert view.get_result(ar.msg_ids[0]).get(timeout=5) == 1
    status = view.queue_status()
    assert status[0]["queue"] == 0 and "unassigned" in status
    view.purge_results("all")
    assert view.history == [] and view.results == {}
    assert view.spin() is None
