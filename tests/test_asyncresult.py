"""AsyncResult and AsyncMapResult: waiting, metadata, outputs, errors, futures interplay."""

import asyncio
import concurrent.futures
import datetime
import os
import re
import time

import numpy as np
import pytest

import ipyparallel_ext as ipp
from ipyparallel_ext.error import TaskAborted

from conftest import fail_at, wait_for_file


# -- waiting ---------------------------------------------------------------------------------


def test_get_timeout_is_builtin_timeout_error(rc, tmp_path):
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go), "done")
    try:
        with pytest.raises(TimeoutError) as info:
            ar.get(timeout=0.2)
        assert type(info.value) is TimeoutError  # the builtin, not a subclass
        assert not ar.ready()
        with pytest.raises(RuntimeError):
            ar.successful()  # not ready yet: RuntimeError, as in ipyparallel 9
        assert ar.wait(timeout=0.1) is False
    finally:
        go.touch()
    assert ar.wait(timeout=30) is True
    assert ar.ready() and ar.successful()
    assert ar.get(timeout=0) == "done"


def test_single_and_multi_results(rc, dv):
    one = rc[1].apply_async(lambda: "x")
    assert one.get(timeout=30) == "x"
    assert one.engine_id == 1
    assert len(one.msg_ids) == 1 and len(one) == 1
    many = dv.apply_async(lambda: "y")
    assert many.get(timeout=30) == ["y", "y"]
    assert many.engine_id == [0, 1]
    assert len(many.msg_ids) == 2 and len(many) == 2
    assert list(many) == ["y", "y"]
    assert many[1] == "y"
    assert many["engine_id"] == [0, 1]


def test_metadata(rc):
    before = datetime.datetime.now(datetime.timezone.utc)
    ar = rc[0].apply_async(lambda: time.sleep(0.05) or "md")
    ar.get(timeout=30)
    md = ar.metadata
    for key in ("msg_id", "engine_id", "submitted", "started", "completed", "received", "status",
                "stdout", "stderr", "outputs", "error"):
        assert key in md
    assert md["engine_id"] == 0 and md["status"] == "ok" and md["msg_id"] == ar.msg_ids[0]
    assert before - datetime.timedelta(seconds=5) <= md["submitted"] <= md["received"]
    assert md["started"] <= md["completed"]
    assert ar.started == md["started"] and ar.status == "ok"
    assert ar.elapsed > 0 and ar.wall_time > 0
    assert 0 < ar.serial_time <= ar.wall_time + 1
    failed = rc[0].apply_async(lambda: 1 / 0)
    failed.wait(timeout=30)
    assert failed.metadata["status"] == "error"
    assert isinstance(failed.metadata["error"], ipp.RemoteError)
    assert not failed.successful()


def test_serial_time_sums_engines(dv):
    ar = dv.apply_async(time.sleep, 0.2)
    ar.get(timeout=30)
    assert ar.serial_time >= 0.3  # two engines sleeping 0.2 s each
    assert len(ar.metadata) == 2


def test_get_dict(rc, dv):
    pids = dv.apply_async(os.getpid)
    d = pids.get_dict(timeout=30)
    assert set(d) == {0, 1}
    assert d[1] == rc[1].apply_sync(os.getpid)
    assert rc[0].apply_async(lambda: 5).get_dict(timeout=30) == {0: 5}
    with pytest.raises(TimeoutError):
        rc[0].apply_async(time.sleep, 1).get_dict(timeout=0.05)


def test_wait_for_send(rc):
    view = rc[0]
    ar = view.apply_async(lambda a: a.size, np.zeros(1_000_000))
    assert ar.wait_for_send(timeout=30) is True
    assert ar.sent
    with view.temp_flags(track=True):
        ar = view.apply_async(lambda a: a.size, np.zeros(1_000_000))
    assert ar.wait_for_send(timeout=30) is True
    assert ar.get(timeout=30) == 1_000_000


# -- outputs ---------------------------------------------------------------------------------


def test_stdout_stderr_outputs(rc, dv):
    def noisy():
        import sys

        from IPython.display import display

        print("out line")
        print("err line", file=sys.stderr)
        display({"text/plain": "shown"}, raw=True)
        return 1

    ar = dv.apply_async(noisy)
    ar.get(timeout=30)
    assert ar.stdout == ["out line\n"] * 2
    assert ar.stderr == ["err line\n"] * 2
    outputs = ar.outputs
    assert len(outputs) == 2
    assert [o["data"]["text/plain"] for o in outputs[0]] == ["shown"]
    single = rc[1].apply_async(noisy)
    single.get(timeout=30)
    assert single.stdout == "out line\n"
    assert single.metadata["stdout"] == "out line\n"


def test_outputs_of_different_requests_do_not_mix(rc):
    ars = [rc[0].apply_async(print, f"request {i}") for i in range(5)]
    for i, ar in enumerate(ars):
        ar.get(timeout=30)
        assert ar.stdout == f"request {i}\n"


def test_display_outputs(rc, dv, capsys):
    ar = dv.apply_async(print, "hi")
    ar.get(timeout=30)
    ar.display_outputs()
    out = capsys.readouterr().out
    # ipyparallel 9's layout: the label, then the engine's text on its own line.
    assert re.search(r"\[stdout:0\] ?\n?hi\n.*\[stdout:1\] ?\n?hi\n", out, re.S), out
    ar = rc[0].execute("print('one'); 5 * 5", silent=False, block=False)
    ar.get(timeout=30)
    ar.display_outputs()
    out = capsys.readouterr().out
    assert "one\n" in out
    assert "Out[0:" in out and "]: 25" in out
    ar.display_outputs(groupby="engine")
    assert "25" in capsys.readouterr().out
    with pytest.raises(ValueError):
        ar.display_outputs(groupby="nonsense")


# -- map results ------------------------------------------------------------------------------


def test_async_map_result_iterates_as_results_arrive(dv, tmp_path):
    go = tmp_path / "go"

    def step(x, path=str(go)):
        if x >= 2:  # the second engine's chunk waits for the test's signal
            wait_for_file(path)
        return x * 10

    amr = dv.map_async(step, range(4))
    assert isinstance(amr, ipp.AsyncMapResult)
    assert len(amr) == 4
    it = iter(amr)
    try:
        assert next(it) == 0
        assert next(it) == 10
        assert not amr.ready()  # the first chunk came out while the second still runs
    finally:
        go.touch()
    assert list(it) == [20, 30]
    assert amr.get(timeout=30) == [0, 10, 20, 30]


def test_async_map_result_error_raised_when_reached(dv):
    amr = dv.map_async(lambda x: 1 / x, [1, 2, 0, 3])
    it = iter(amr)
    assert next(it) == 1.0 and next(it) == 0.5
    with pytest.raises(ipp.RemoteError, match="ZeroDivisionError"):
        next(it)


def test_abort_from_async_result(rc, tmp_path):
    go = tmp_path / "go"
    running = rc[0].apply_async(wait_for_file, str(go), "ran")
    queued = rc[0].apply_async(lambda: "never")
    try:
        queued.abort()
        with pytest.raises(TaskAborted):
            queued.get(timeout=10)
        assert queued.ready() and not queued.successful()
    finally:
        go.touch()
    assert running.get(timeout=30) == "ran"


# -- futures interplay ------------------------------------------------------------------------


def test_is_a_future(rc):
    ar = rc[0].apply_async(lambda: 3)
    assert isinstance(ar, concurrent.futures.Future)
    assert ar.result(timeout=30) == 3
    assert ar.exception(timeout=1) is None
    called = []
    ar.add_done_callback(called.append)
    assert called == [ar]


def test_await(rc, dv):
    async def main():
        single = await rc[0].apply_async(lambda: "awaited")
        both = await dv.apply_async(lambda x: x + 1, 1)
        wrapped = await asyncio.wait_for(asyncio.wrap_future(rc[1].apply_async(lambda: 2)), 30)
        gathered = await asyncio.gather(rc[0].apply_async(lambda: "a"), rc[1].apply_async(lambda: "b"))
        return single, both, wrapped, gathered

    assert asyncio.run(asyncio.wait_for(main(), 60)) == ("awaited", [2, 2], 2, ["a", "b"])


def test_await_raises_remote_error(rc):
    async def main():
        await rc[0].apply_async(lambda: 1 / 0)

    with pytest.raises(ipp.RemoteError, match="ZeroDivisionError"):
        asyncio.run(asyncio.wait_for(main(), 60))


def test_concurrent_futures_wait_and_as_completed(rc, tmp_path):
    go = tmp_path / "go"
    slow = rc[0].apply_async(wait_for_file, str(go), "slow")
    fast = rc[1].apply_async(lambda: "fast")
    try:
        done, not_done = concurrent.futures.wait(
            [slow, fast], timeout=30, return_when=concurrent.futures.FIRST_COMPLETED
        )
        assert done == {fast} and not_done == {slow}
    finally:
        go.touch()
    order = [f.result() for f in concurrent.futures.as_completed([slow, fast], timeout=30)]
    assert sorted(order) == ["fast", "slow"]
    done, not_done = concurrent.futures.wait([slow, fast], timeout=30)
    assert not not_done


# -- errors -------------------------------------------------------------------------------------


def test_remote_error(rc):
    def fails():
        raise ValueError("bad value here")

    with pytest.raises(ipp.RemoteError) as info:
        rc[1].apply_sync(fails)
    err = info.value
    assert err.ename == "ValueError" and err.evalue == "bad value here"
    assert err.engine_info["engine_id"] == 1
    assert "bad value here" in err.traceback and "fails" in err.traceback
    rendered = "\n".join(err.render_traceback())
    assert "[1:apply]" in rendered and "ValueError" in rendered
    assert "[1:apply] ValueError: bad value here" in str(err)


def test_composite_error(dv):
    def fails(tag):
        import os

        raise KeyError(f"{tag}-{os.getpid()}")

    with pytest.raises(ipp.CompositeError) as info:
        dv.apply_sync(fails, "k")
    err = info.value
    assert len(err.elist) == 2
    assert [e[0] for e in err.elist] == ["KeyError", "KeyError"]
    assert sorted(e[3]["engine_id"] for e in err.elist) == [0, 1]
    with pytest.raises(ipp.RemoteError) as first:
        err.raise_exception()
    assert first.value.ename == "KeyError"
    with pytest.raises(ipp.RemoteError) as second:
        err.raise_exception(1)
    assert second.value.engine_info["engine_id"] == err.elist[1][3]["engine_id"]
    with pytest.raises(IndexError):
        err.raise_exception(5)
    assert "KeyError" in "\n".join(err.render_traceback())


def test_partial_failure_keeps_other_results(dv):
    mixed = dv.map_async(lambda x: 1 / x, [0, 1])
    with pytest.raises(ipp.CompositeError) as info:
        mixed.get(timeout=30)
    assert len(info.value.elist) == 1
    assert mixed.ready() and not mixed.successful()


# -- ipyparallel 9's AsyncResult behaviours ----------------------------------------------------


def test_metadata_by_attribute_and_key_before_and_after(rc, tmp_path):
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go), "x")
    try:
        ar.wait_for_send(timeout=10)
        assert ar["stdout"] == ar.stdout == ""  # metadata never waits for the result
        assert ar["engine_id"] == ar.engine_id == 0
        assert ar.status is None
        for early in (lambda: ar.wall_time, lambda: ar.serial_time, lambda: ar[0], ar.display_outputs):
            with pytest.raises(TimeoutError):
                early()
        with pytest.raises(AttributeError):
            ar.no_such_field
        with pytest.raises(KeyError):
            ar["no_such_field"]
    finally:
        go.touch()
    ar.get(timeout=30)
    assert ar.status == ar["status"] == "ok"
    assert "stdout" in dir(ar) and "engine_id" in dir(ar)
    both = rc[:].apply_async(print, "hi")
    both.get(timeout=30)
    assert both["stdout"] == both.stdout == ["hi\n", "hi\n"]
    assert both["engine_id"] == [0, 1]


def test_get_return_exceptions(rc, dv):
    mixed = dv.map_async(fail_at, range(4), [2] * 4)
    values = mixed.get(timeout=30, return_exceptions=True)
    assert values[:2] == [0, 1] and len(values) == 4
    assert all(isinstance(v, ipp.RemoteError) for v in values[2:])  # the failed chunk's elements
    with pytest.raises(ipp.CompositeError):
        mixed.get(timeout=0)
    one = rc[0].apply_async(fail_at, 2, 2)
    assert isinstance(one.get(timeout=30, return_exceptions=True), ipp.RemoteError)
    both = dv.apply_async(fail_at, 2, 2)
    assert [type(v) for v in both.get(timeout=30, return_exceptions=True)] == [ipp.RemoteError] * 2
    assert repr(both) == "<AsyncResult(fail_at): failed>"
    assert not both.successful()


def test_split_join_and_return_when(rc, dv, tmp_path):
    both = dv.apply_async(lambda: "y")
    parts = both.split()
    assert len(parts) == 2 and parts is both.split()  # made once
    assert [p.get(timeout=30) for p in parts] == ["y", "y"]
    assert [p.engine_id for p in parts] == [0, 1]
    assert rc[0].apply_async(lambda: 1).split()[0].get(timeout=30) == 1
    assert ipp.AsyncResult.join(*parts).get(timeout=30) == ["y", "y"]
    mapped = dv.map_async(lambda x: x, range(6))
    assert [p.get(timeout=30) for p in mapped.split()] == [[[0, 1, 2]], [[3, 4, 5]]]  # as ipyparallel
    assert len(mapped) == 6 and mapped.progress == 6
    go = tmp_path / "go"
    pending = dv.map_async(wait_for_file, [str(go), "/nonexistent"], ["a", "b"], [30, 0.1])
    try:
        done, not_done = pending.wait(30, return_when=concurrent.futures.FIRST_COMPLETED)
        assert len(done) == 1 and len(not_done) == 1
        assert pending.wait(0) is False
    finally:
        go.touch()
    assert pending.get(timeout=30) == ["a", "b"]
    failing = dv.map_async(wait_for_file, [str(tmp_path / "never"), "/nonexistent"], [1, 2], [30, "bad"])
    with pytest.raises(ipp.RemoteError):  # at once: the second chunk failed, the first still runs
        failing.get(timeout=20, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert not failing.done()
    (tmp_path / "never").touch()
    failing.wait(30)


def test_timing_and_sugar(rc, dv):
    ar = dv.apply_async(time.sleep, 0.1)
    ar.get(timeout=30)
    assert ar.timedelta(ar.submitted, ar.received) == pytest.approx(ar.wall_time, abs=1e-3)
    assert ar.timedelta(ar.started, ar.completed, max, min) <= ar.wall_time
    assert ar.r == [None, None] and ar.result_dict == {0: None, 1: None}
    assert ar.sent and ar.wait_for_send(0)
    with pytest.raises(RuntimeError, match="already done"):
        ar.abort()
    with pytest.raises(TypeError, match="not iterable"):
        list(rc[0].apply_async(lambda: 1))


def test_iterating_raises_composite_error_when_a_failure_is_reached(dv):
    for ar in (dv.apply_async(fail_at, 0, 0), dv.map_async(fail_at, range(4), [0] * 4)):
        with pytest.raises(ipp.CompositeError):
            list(ar)


def test_async_hub_result_is_an_async_result():
    from ipyparallel_ext._asyncresult import AsyncHubResult

    assert issubclass(AsyncHubResult, ipp.AsyncResult)


def test_stream_output_shows_outputs_while_waiting(rc, capsys):
    def talk():
        import time

        print("first", flush=True)
        time.sleep(0.3)
        print("second")
        return "said"

    ar = rc[0].apply_async(talk)
    with ar.stream_output():
        assert ar.get(timeout=30) == "said"
    out = capsys.readouterr().out
    assert "[stdout:0]" in out and "first" in out and "second" in out


def test_public_surface_matches_ipyparallel():
    """Same public names and signatures as ipyparallel 9.2's AsyncResult classes."""
    ipyparallel = pytest.importorskip("ipyparallel")
    import inspect

    from ipyparallel_ext import _asyncresult

    for name in ("AsyncResult", "AsyncMapResult", "AsyncHubResult"):
        theirs, ours = getattr(ipyparallel, name), getattr(_asyncresult, name)
        public = {n for n in dir(theirs) if not n.startswith("_")}
        assert public <= set(dir(ours)), sorted(public - set(dir(ours)))
        for attr in sorted(public):
            a, b = getattr(theirs, attr), getattr(ours, attr)
            if inspect.isfunction(a) or inspect.ismethod(a):
                sa = str(inspect.signature(a)).split(" ->")[0]
                sb = str(inspect.signature(b)).split(" ->")[0]
                assert sa == sb, f"{name}.{attr}: {sa} != {sb}"
