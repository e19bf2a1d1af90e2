"""The engine-side helpers: per-request pickling, the kernel adapter, publish_data.

All on real kernels: the session's two engines, a second client sharing
them, and purpose-built kernels (a newer jupyter_client, a kernel that keeps
a request's buffers from running code).
"""

import json
import re
import sys
import textwrap
import types

import numpy as np
import pytest
from conftest import wait_until

import ipyparallel_ext as ipp
from ipyparallel_ext import _display

# -- per-request pickling ---------------------------------------------------------------------

# What a notebook defines: classes and functions of __main__.
NOTEBOOK = """
class Box:
    def __init__(self, f):
        self.f = f

class Token:
    pass

def call(box, x):
    return box.f(x)

def same(obj):
    return obj

def make_token():
    return Token()  # the engine's Token: functions of __main__ run in the engine's namespace
"""


@pytest.fixture
def notebook(monkeypatch):
    """The NOTEBOOK's names, defined in this process's ``__main__`` as a notebook's are."""
    ns = {"__name__": "__main__"}
    exec(NOTEBOOK, ns)
    for name in ("Box", "Token", "call", "same", "make_token"):
        monkeypatch.setattr(sys.modules["__main__"], name, ns[name], raising=False)
    return types.SimpleNamespace(**ns)


def test_clients_sharing_engines_keep_their_own_pickler(cluster, rc, notebook):
    dill_client = cluster.connect_client_sync()  # a second client on the same two engines
    try:
        dill_client.wait_for_engines(2, timeout=60)
        dill_view = dill_client[:]
        dill_view.block = True
        dill_view.use_dill()
        # A notebook class holding a lambda: only dill sends it, and brings it back.
        box = notebook.Box(eval("lambda x: x * 10", {"__name__": "__main__"}))
        assert dill_view.apply_sync(notebook.call, box, 3) == [30, 30]
        assert [b.f(2) for b in dill_view.apply_sync(notebook.same, box)] == [20, 20]
        assert dill_client.load_balanced_view().apply_sync(notebook.call, box, 4) == 40

        # The first client still pickles with stdlib pickle, both ways: a Token
        # made on the engine comes back by reference, as this process's Token
        # (dill would send the engine's class by value: another class).
        dv = rc[:]
        dv.block = True
        dv.execute("class Token:\n    pass")
        assert [type(t) for t in dv.apply_sync(notebook.make_token)] == [notebook.Token] * 2
        assert type(rc.load_balanced_view().apply_sync(notebook.make_token)) is notebook.Token
        with pytest.raises(ipp.CompositeError, match="Box"):
            dv.apply_sync(notebook.call, box, 3)  # stdlib pickle cannot send a notebook's class

        # And the dill client's next request is pickled with dill again.
        assert dill_view.apply_sync(notebook.call, box, 5) == [50, 50]
    finally:
        dill_client.close()


FOREIGN_WRAPPER = """
def _wrap(inner):
    def foreign_send(*args, **kwargs):
        return inner(*args, **kwargs)
    foreign_send.inner = inner
    return foreign_send
get_ipython().kernel.session.send = _wrap(get_ipython().kernel.session.send)
"""

# Back to one clean install (a Session with only our wrapper), for the tests that follow.
CLEAN_INSTALL = """
_session = get_ipython().kernel.session
del _session.send, _session._ipp_ext_send
__import__("_ipp_ext_engine").install({"execute_sleep": 0, "skip_empty_flushes": True})
"""


@ipp.interactive
def send_chain():
    """Runs on an engine: the names along the chain of session.send wrappers, [live] for ours."""
    links = []
    f = get_ipython().kernel.session.send  # noqa: F821 - the engine's
    while f is not None:
        live = getattr(f, "__ipp_ext_live__", None)
        links.append(f.__name__ + ("" if live is None else f"[{bool(live)}]"))
        f = getattr(f, "__wrapped__", None) or getattr(f, "inner", None)
    return links


def test_reinstalling_replaces_the_hooks_instead_of_stacking(cluster, rc):
    assert rc[0].apply_sync(send_chain) == ["send[True]", "send"]
    # Someone else wraps session.send, then a second client connects (installs again).
    rc[0].execute(FOREIGN_WRAPPER, block=True)
    second = cluster.connect_client_sync()
    try:
        second.wait_for_engines(2, timeout=60)
        # ours (live) -> the foreign wrapper -> ours from before (retired) -> the Session's own
        assert rc[0].apply_sync(send_chain) == ["send[True]", "foreign_send", "send[False]", "send"]
        assert rc[1].apply_sync(send_chain) == ["send[True]", "send"]  # not stacked
        ar = second[0].apply_async(print, "counted once")
        assert ar.get(10) is None and ar.wait_for_output(10)
        assert ar.stdout == "counted once\n"
    finally:
        second.close()
        rc[0].execute(CLEAN_INSTALL, block=True)
    assert rc[0].apply_sync(send_chain) == ["send[True]", "send"]


@ipp.interactive
def json_checks():
    """Runs on an engine: the kernel's packer and date parser against jupyter_client's own."""
    from IPython import get_ipython
    from jupyter_client import jsonutil
    from jupyter_client import session as session_module

    session = get_ipython().kernel.session
    request = get_ipython().kernel.get_parent("shell")  # this request, dates parsed by the kernel
    reply = session.msg("execute_reply", {"status": "ok", "text": "\u00e9\u2028"}, parent=request)
    parts = [reply["header"], reply["parent_header"], {"started": reply["header"]["date"]}, reply["content"]]
    dates = [reply["header"]["date"].isoformat(), session_module.json_default(reply["header"]["date"]),
             "2026-12-07T16:53:09.123456+02:00", "2026-13-07T16:53:09.123456Z", "x" * 27]

    def outcome(parse, s):
        try:
            value = parse(s)
        except ValueError as exc:
            return type(exc)
        return value, type(getattr(value, "tzinfo", None))

    return {
        "replaced": [session.pack is not session_module.json_packer,
                     jsonutil.parse_date.__name__ == "parse_date" and hasattr(jsonutil.parse_date, "__ipp_ext_stock__")],
        "same_bytes": [session.pack(p) == session_module.json_packer(p) for p in parts],
        "same_dates": [outcome(jsonutil.parse_date, d) == outcome(jsonutil.parse_date.__ipp_ext_stock__, d)
                       for d in dates],
        "request_date": type(request["header"]["date"]).__name__,
    }


def test_the_kernels_json_is_faster_and_byte_for_byte_the_same(rc):
    checks = rc[0].apply_sync(json_checks)
    assert checks["replaced"] == [True, True]
    assert checks["same_bytes"] == [True] * 4
    assert checks["same_dates"] == [True] * 5
    assert checks["request_date"] == "datetime"  # the request's date went through the fast parser


# -- status messages: every request's 'busy' and 'idle' still reach other frontends ----------


@pytest.fixture
def frontend(cluster, rc):
    """A second frontend on engine 0's IOPub (a jupyter_client, as a notebook would attach)."""
    import queue

    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=cluster.connection_files[0])
    kc.load_connection_file()
    kc.start_channels(shell=False, stdin=False, hb=False, control=False)
    try:
        # A SUB socket connects in the background: once it sees a request's messages, it misses none.
        for _ in range(100):
            probe = rc[0].apply_async(int).msg_ids[0]
            try:
                iopub_of(kc, probe, lambda m: True, timeout=0.2)
                break
            except queue.Empty:
                continue
        else:
            raise AssertionError("the frontend's IOPub never connected")
        yield kc
    finally:
        kc.stop_channels()


def iopub_of(kc, msg_id, until, timeout=10.0):
    """(msg_type, execution_state or None) of ``msg_id``'s IOPub messages, up to the first for which ``until`` holds."""
    seen = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)  # raises queue.Empty past the deadline
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        seen.append((msg["msg_type"], msg["content"].get("execution_state")))
        if until(seen[-1]):
            return seen


def test_busy_output_idle_reach_another_frontend_in_order(rc, frontend):
    ar = rc[0].apply_async(print, "hi")
    seen = iopub_of(frontend, ar.msg_ids[0], lambda m: m == ("status", "idle"))
    assert seen == [("status", "busy"), ("stream", None), ("status", "idle")]
    assert ar.get(10) is None


@ipp.interactive
def wait_for_path(path):
    """Runs on an engine: return once ``path`` exists (it gives up after a minute)."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


@ipp.interactive
def waker_wakes():
    """Runs on an engine: a held-back event makes a busy waker wake the IOPub thread by itself."""
    import threading

    from IPython import get_ipython

    engine = __import__("_ipp_ext_engine")
    iopub = get_ipython().kernel.iopub_thread
    installed = isinstance(getattr(iopub, "_ipp_ext_busy_waker", None), engine._BusyWaker)
    waker = engine._BusyWaker(iopub, 0.05)  # a second one, whose wake-ups this test sees
    woken = threading.Event()
    waker.schedule = lambda f: (iopub.schedule(f), woken.set())
    waker.start()
    try:
        waker.hold(lambda: None)  # queued for the IOPub thread, which nothing else wakes
        return installed, woken.wait(30), waker.held_since
    finally:
        waker.stop()


def test_a_held_back_busy_goes_out_without_other_traffic(rc):
    assert rc[0].apply_sync(waker_wakes) == (True, True, None)


def test_a_long_silent_request_is_seen_busy_while_it_runs(rc, frontend, tmp_path):
    # Engines a Cluster starts hold back the IOPub wake-up for 'busy' (it usually goes out with
    # 'idle'); a request that runs on without output must still show as busy while it runs.
    release = tmp_path / "release"
    ar = rc[0].apply_async(wait_for_path, str(release))
    try:
        seen = iopub_of(frontend, ar.msg_ids[0], lambda m: m[0] == "status")
        assert seen == [("status", "busy")]
        assert not ar.done()  # the task is still waiting for the file
    finally:
        release.touch()
    assert ar.get(60) is True
    assert iopub_of(frontend, ar.msg_ids[0], lambda m: m[0] == "status") == [("status", "idle")]


# -- output: nothing written is lost ------------------------------------------------------

SLOW_IOPUB = """
import sys, threading, time
_ipp_test_flushing = threading.Event()
def _ipp_test_slow_flush(msg):
    # Runs on the IOPub thread in the middle of a flush: the text has left the
    # buffer, its message is not sent yet (a busy machine stretches this moment).
    _ipp_test_flushing.set()
    time.sleep(0.05)
    return msg
sys.stdout.pub_thread.schedule(lambda: sys.stdout.register_hook(_ipp_test_slow_flush))
sys.stdout.flush_interval = 0.001
"""

RESTORE_IOPUB = """
sys.stdout.pub_thread.schedule(lambda: sys.stdout.unregister_hook(_ipp_test_slow_flush))
del sys.stdout.flush_interval
"""


@ipp.interactive
def print_last(i):
    """Print without a newline as the task's last act, while the IOPub thread is flushing it."""
    _ipp_test_flushing.clear()  # noqa: F821 - defined on the engine by SLOW_IOPUB
    print(i, end="")
    _ipp_test_flushing.wait(5)  # noqa: F821
    return i


def test_last_output_of_a_task_is_never_lost(rc, capsys):
    view = rc[0]
    view.execute(SLOW_IOPUB, block=True)
    try:
        for i in range(20):
            ar = view.apply_async(print_last, i)
            _display.LiveOutput(ar, rc).wait(timeout=10)
            assert ar.get(10) == i
            assert ar.wait_for_output(10)
            assert ar.stdout == str(i), f"task {i}: its output was lost"
    finally:
        view.execute(RESTORE_IOPUB, block=True)
    live = capsys.readouterr().out
    assert re.findall(r"^(\d+)$", live, re.M) == [str(i) for i in range(20)]


# -- the kernel adapter --------------------------------------------------------------------


@pytest.fixture
def custom_engine(tmp_path, monkeypatch):
    """Start one engine from launcher code: ``rc = custom_engine(name, code)``; stopped at teardown."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    clusters = []

    def start(name, code):
        spec_dir = tmp_path / "kernels" / name
        spec_dir.mkdir(parents=True)
        launcher = tmp_path / f"{name}.py"
        launcher.write_text(textwrap.dedent(code))
        spec = {"argv": [sys.executable, str(launcher), "-f", "{connection_file}",
                         "--HistoryManager.enabled=False"],
                "display_name": name, "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        cluster = ipp.Cluster(n=1, kernel_name=name)
        clusters.append(cluster)
        return cluster.start_and_connect_sync()

    yield start
    for cluster in clusters:
        cluster.stop_cluster_sync()


NEWER_JUPYTER_CLIENT = """
import sys
sys.modules["ipyparallel_ext"] = None  # nothing of ours on this engine

from jupyter_client import session

_send = session.Session.send

def send(self, stream, msg_or_type, content=None, parent=None, ident=None, buffers=None,
         track=False, header=None, metadata=None, trace=None):
    # Session.send as a newer jupyter_client might have it: one more keyword.
    if trace is not None:
        metadata = dict(metadata or {}, trace=trace)
    return _send(self, stream, msg_or_type, content, parent, ident, buffers, track, header, metadata)

session.Session.send = send

from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


@ipp.interactive
def send_with_new_keyword():
    """Runs on the engine: a message sent with the newer keyword, then data published."""
    kernel = get_ipython().kernel  # noqa: F821 - the engine's
    kernel.session.send(kernel.iopub_socket, "stream", {"name": "stdout", "text": "traced\n"},
                        parent=kernel.get_parent("shell"), ident=b"stream.stdout", trace="t1")
    from ipyparallel_ext.datapub import publish_data

    publish_data({"traced": True})
    return "sent"


def test_wrapped_send_passes_on_new_keywords(custom_engine):
    rc = custom_engine("newer-jupyter-client", NEWER_JUPYTER_CLIENT)
    rc.wait_for_engines(1, timeout=60)
    ar = rc[0].apply_async(send_with_new_keyword)
    assert ar.get(20) == "sent"
    assert ar.wait_for_output(10)
    assert ar.stdout == "traced\n"
    assert ar.data == {"traced": True}  # publish_data without our package on the engine


BUFFERLESS_KERNEL = """
from ipykernel import ipkernel, kernelapp

class BufferlessKernel(ipkernel.IPythonKernel):
    # A kernel that keeps a request's binary buffers from the code it runs.
    def set_parent(self, ident, parent, channel="shell"):
        super().set_parent(ident, {k: v for k, v in parent.items() if k != "buffers"}, channel)

kernelapp.launch_new_instance(kernel_class=BufferlessKernel)
"""


def test_a_kernel_without_a_needed_piece_is_named_at_install(custom_engine, caplog):
    # Connecting leaves the engine out, with a warning that names why.
    with pytest.warns(UserWarning, match="could not install the engine helpers.*IncompatibleKernel"):
        rc = custom_engine("bufferless", BUFFERLESS_KERNEL)
    # The client logs the engine's failure as soon as the install reply comes.
    assert wait_until(lambda: any("could not install" in r.getMessage() for r in caplog.records), timeout=60)
    with pytest.raises(TimeoutError) as info:
        rc.wait_for_engines(1, timeout=0.1)
    message = str(info.value)
    assert "engine 0 could not install the engine helpers" in message
    assert "IncompatibleKernel" in message and "has no 'buffers'" in message


# -- publish_data -------------------------------------------------------------------------


@ipp.interactive
def report_progress(go_file):
    """Publish progress until ``go_file`` exists (at most 30 s), then a last word."""
    import os
    import time

    import numpy as np

    from ipyparallel_ext.datapub import publish_data

    publish_data({"started": True})
    step = 0
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        step += 1
        publish_data({"step": step, "values": np.arange(1000.0) * step})  # 8 kB: out of band
        time.sleep(0.02)
    publish_data({"done": True})
    return step


def test_publish_data_shows_progress_in_ar_data(dv, tmp_path):
    go = tmp_path / "go"
    ar = dv.apply_async(report_progress, str(go))
    # Read while the tasks run: the latest step of each engine, growing.
    assert wait_until(lambda: all(d.get("step", 0) >= 3 for d in ar.data), timeout=30)
    early = [d["step"] for d in ar.data]
    assert wait_until(lambda: all(d.get("step", 0) > s for d, s in zip(ar.data, early)), timeout=30)
    go.touch()
    steps = ar.get(30)
    assert ar.wait_for_output(10)
    for data, step in zip(ar.data, steps):
        # Merged as in ipyparallel: keys published earlier stay, later values win.
        assert data.keys() == {"started", "step", "values", "done"}
        assert data["step"] == step
        assert np.array_equal(data["values"], np.arange(1000.0) * step)
    assert ar["data"] == ar.data
    assert [md["data"] for md in ar.metadata] == ar.data


@ipp.interactive
def publish_twice(x):
    from ipyparallel_ext.datapub import publish_data

    publish_data({"x": x, "first": True})
    publish_data({"x": x + 1})
    return x


def test_publish_data_from_load_balanced_tasks_and_execute(rc, dv):
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(publish_twice, i) for i in range(6)]  # several tasks per request
    for i, ar in enumerate(ars):
        assert ar.get(30) == i
        assert ar.wait_for_output(10)
        assert ar.data == {"x": i + 1, "first": True}  # each task's own data
    ar = dv.execute("from ipyparallel_ext.datapub import publish_data\npublish_data({'via': 'execute'})",
                    block=True)
    assert ar.wait_for_output(10)
    assert ar.data == [{"via": "execute"}] * 2
    assert dv.apply_async(lambda: 1).data == [{}, {}]  # nothing published (yet): empty dicts


def test_publish_data_outside_an_engine_says_so():
    from ipyparallel_ext.datapub import publish_data

    with pytest.raises(RuntimeError, match="only in a task running on an engine"):
        publish_data({"x": 1})
    with pytest.raises(TypeError, match="takes a dict"):
        publish_data([1])


def test_use_dill_returns_what_apply_would(rc):
    view = rc[:]
    view.block = False
    ar = view.use_pickle()
    assert isinstance(ar, ipp.AsyncResult) and ar.get(10) == [None, None]
    view.block = True
    assert view.use_pickle() == [None, None]
    assert view.apply_sync(lambda: 3) == [3, 3]

