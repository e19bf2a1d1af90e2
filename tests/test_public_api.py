"""Our public names against ipyparallel 9.2's, and the ipyparallel-only Client methods at work.

``test_public_names_match_ipyparallel`` lists every difference between the
two packages' public surfaces: top-level names, the ``error``, ``util``,
``serialize``, ``joblib`` and ``datapub`` modules, and the methods and
attributes (with their parameter names, in order) of the classes users
touch.  Each difference we keep on purpose is in :data:`KEPT` with a
one-line reason (the README's "Where we differ" section says the same);
the test fails on a difference that is not there, and on an entry that is
no longer a difference.  :data:`PENDING` holds, for now, the differences that
other branches of issue 7 remove, each with the branch's name.
"""

import ast
import builtins
import importlib
import inspect
import pickle
import textwrap

import pytest

import ipyparallel_ext as ipp

from conftest import double, snooze, wait_for_file, wait_until

T = 30  # seconds: deadline of every wait below

MODULES = ["", "error", "util", "serialize", "joblib", "datapub"]
CLASSES = ["Client", "Cluster", "DirectView", "LoadBalancedView", "AsyncResult", "AsyncMapResult"]

# Reasons shared by several entries.
NO_HUB = "no controller/Hub: that is ipyparallel's controller plumbing"
NO_PROFILE = ("no IPython profiles: cluster files live in the Jupyter runtime directory, found by cluster id"
              " (`ipyparallel-ext cluster list`)")
WIRE = "our wire is pickle protocol 5 with functions by value: no canning classes or size thresholds"
PLUMBING = "used by views, schedulers and Cluster (they only call the client's public methods)"

KEPT = {
    # -- top level -------------------------------------------------------------------------
    "missing: load_jupyter_server_extension": "no Jupyter server extension (no cluster panel in JupyterLab)",
    **{f"{kind}: {prefix}{name}": WIRE for prefix in ["", "serialize."] for kind, name in [
        ("missing", "can_map"), ("missing", "uncan_map"), ("differs", "serialize_object"),
        ("differs", "pack_apply_message"), ("differs", "unpack_apply_message")]},
    "extra: View": "the base class of DirectView and LoadBalancedView, for isinstance checks",
    "extra: load_ipython_extension": "%load_ext ipyparallel_ext registers the %px magics",
    "differs: register_joblib_backend": "also takes view=, as ipyparallel's view.register_joblib_backend does",
    "differs: joblib.register": "also takes view=, as ipyparallel's view.register_joblib_backend does",
    # -- error -----------------------------------------------------------------------------
    "extra: error.ClientClosed": "a closed Client says so instead of failing on a closed socket",
    "extra: error.ConnectionFileError": "a kernel connection file is missing, unreadable or incomplete",
    "extra: error.EngineStartError": "an engine kernel could not be started (names it and shows its log)",
    "extra: error.ReplyLost": "an EngineError: the engine went on past a request without replying to it",
    "extra: error.SerializationError": "an argument or result cannot be pickled: names which one",
    "extra: error.composite_error": "builds the CompositeError of several engines' errors, also for EngineErrors",
    "extra: error.DeadlockError": "waiting for a result on the I/O thread (that delivers it) raises, not hangs",
    "extra: error.InvalidStateError": "an AsyncResult's state forbids the call (ipyparallel: bare RuntimeError)",
    # -- util ------------------------------------------------------------------------------
    **{f"missing: util.{name}": NO_HUB for name in [
        "bind", "connect", "connect_engine_logger", "connect_logger", "disambiguate_ip_address",
        "disambiguate_url", "integer_loglevel", "ip_for_host", "is_ip", "is_url", "local_logger",
        "log_errors", "select_random_ports", "set_hwm", "signal_children", "split_url", "validate_url",
        "validate_url_container", "ReverseDict", "Namespace", "int_keys", "shlex_join"]},
    "missing: util.abbreviate_profile_dir": NO_PROFILE,
    **{f"missing: util.{name}": "timestamps are datetimes already: no ISO 8601 strings to parse"
       for name in ["ISO8601", "ISO8601_PAT", "extract_dates"]},
    **{f"missing: util.{name}": "imported by ipyparallel.util from signal; not API"
       for name in ["SIGABRT", "SIGINT", "SIGTERM"]},
    "missing: util.progress": "progress bars are AsyncResult.wait_interactive()",
    "missing: util.become_dask_worker": "no dask integration yet (Client.become_dask raises and says so)",
    "missing: util.stop_distributed_worker": "no dask integration yet (Client.become_dask raises and says so)",
    # -- Client ----------------------------------------------------------------------------
    "missing: Client.curve_publickey": "engines are kernels reached by connection file: no CurveZMQ keys",
    "missing: Client.curve_secretkey": "engines are kernels reached by connection file: no CurveZMQ keys",
    "missing: Client.curve_serverkey": "engines are kernels reached by connection file: no CurveZMQ keys",
    "missing: Client.profile": NO_PROFILE,
    "missing: Client.session": "each engine has its own key and session, from its connection file",
    "missing: Client.debug": "no message dump: use logging.getLogger('ipyparallel_ext')",
    "missing: Client.create_message_futures": NO_HUB,
    "missing: Client.send_apply_request": NO_HUB + "; views build requests (Client.new_record/submit)",
    "missing: Client.send_execute_request": NO_HUB + "; views build requests (Client.new_record/submit)",
    "extra: Client.interrupt": "interrupts running work on engines (KeyboardInterrupt there)",
    "extra: Client.pickler": "the pickler this client uses: 'pickle', 'dill' or 'cloudpickle'",
    "extra: Client.io_loop": PLUMBING,
    **{f"extra: Client.{name}": PLUMBING for name in [
        "add_engine", "call_in_loop", "engine_connection", "engine_dead", "engine_free", "engine_ready",
        "engines_stopping", "get_scheduler", "new_record", "register_view", "resolve_targets", "submit"]},
    # -- Cluster ---------------------------------------------------------------------------
    **{f"missing: Cluster.{name}": NO_HUB + " (Cluster(...) takes these and warns that they are ignored)"
       for name in ["controller", "controller_args", "controller_ip", "controller_launcher_class",
                    "controller_location", "send_engines_connection_env", "delay"]},
    **{f"missing: Cluster.{name}": NO_PROFILE
       for name in ["load_profile", "profile", "profile_config", "profile_dir"]},
    "extra: Cluster.supervisor": "the process that owns a cluster started by `ipyparallel-ext cluster start`"
                                 " (pid, host, start time, control address), from its cluster file",
    "extra: Cluster.refresh": PLUMBING + ": re-reads a supervised cluster's file (engines joining, leaving)",
    "extra: Cluster.auto_restart": "restart a local engine whose process dies, under the same id",
    "extra: Cluster.engine_sets": "engine set id -> engine ids (ipyparallel's Cluster.engines maps set ids"
                                  " to launchers; ours maps engine ids to kernel managers)",
    "extra: Cluster.attach": PLUMBING,
    "extra: Cluster.launcher": "the configured Launcher (engines=): its name is engine_launcher_class",
    "extra: Cluster.engine_set_status": "each engine set's launcher state (a Slurm job's state and pending"
                                        " reason, hosts, the mpiexec pid), for `cluster list` and the toolbar",
    "extra: Cluster.engine_options": PLUMBING,
    "extra: Cluster.log": "ipyparallel's Cluster.log is a trait (missing from its dir()); ours a plain attribute",
    "extra: Cluster.connection_files": "the engines' kernel connection files (attach a Client or a frontend)",
    "extra: Cluster.kernel_name": "engines are started from any installed kernelspec",
    "extra: Cluster.env": "environment variables for the engine kernels",
    "extra: Cluster.ip": "the address engine kernels listen on",
    "extra: Cluster.owns": PLUMBING,
    # -- AsyncResult -----------------------------------------------------------------------
    **{f"differs: {cls}.split": "a method, called the same; ipyparallel's lru_cache wrapper kept every"
       " AsyncResult alive" for cls in ["AsyncResult", "AsyncMapResult"]},
    # -- views -----------------------------------------------------------------------------
    "extra: LoadBalancedView.time_limit": "a task past its time limit is interrupted and fails with TaskTimeout",
}

# Differences other branches of issue 7 remove: each entry names the branch.  The lead
# deletes this group after merging them (entries then fail as "no longer a difference").
PENDING = {
}


# -- the surfaces -----------------------------------------------------------------------------

# Modules our engine-side helpers live in on the client (see _wire: they travel as this name).
_OWN_ROOTS = {"ipyparallel": {"ipyparallel"}, "ipyparallel_ext": {"ipyparallel_ext", "_ipp_ext_engine"}}


def _belongs(obj, package) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] in _OWN_ROOTS[package]


def _signature(fn) -> str:
    """Parameter names in order, as a caller sees them.

    ``*args``/``**kwargs`` names and names a caller cannot pass by keyword
    (positional-only, or private like ``_View__ipp_f``) are not compared.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "(?)"
    parts, star = [], False
    for p in params:
        if p.name in ("self", "cls"):
            continue
        if p.kind is p.VAR_POSITIONAL:
            parts.append("*args")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append("**kwargs")
        elif p.kind is p.POSITIONAL_ONLY or p.name.startswith("_"):
            parts.append("_")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name)
    return "(" + ", ".join(parts) + ")"


def _describe(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    return _signature(obj) if callable(obj) else "value"


def module_surface(package, sub):
    """Public names of a module: what it defines or re-exports from its own package,
    its constants, and builtin exceptions it re-exports (``error.TimeoutError``);
    not modules, ``from __future__`` flags or helpers it imports from elsewhere.
    None if the module does not exist."""
    try:
        module = importlib.import_module(package + (f".{sub}" if sub else ""))
    except ImportError:
        return None
    surface = {}
    for name in dir(module):
        obj = getattr(module, name)
        if name.startswith("_") or inspect.ismodule(obj) or type(obj).__name__ == "_Feature":
            continue
        if inspect.isclass(obj) or callable(obj):
            reexported_builtin = inspect.isclass(obj) and issubclass(obj, BaseException) \
                and obj.__module__ == "builtins"
            if not (_belongs(obj, package) or reexported_builtin):
                continue
        surface[name] = _describe(obj)
    return surface


def _assigned_attributes(cls, package) -> set:
    """Public attributes the package's own classes in ``cls``'s MRO assign on ``self``."""
    names = set()
    for klass in cls.__mro__:
        if not _belongs(klass, package):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
    return {n for n in names if not n.startswith("_")}


def class_surface(cls, package):
    """Public methods (with their signature) and attributes of ``cls``.

    Names that traitlets' HasTraits/Configurable give ipyparallel's classes
    are not compared; the ``*_sync`` methods ipyparallel makes in
    ``__getattr__`` for each coroutine method are.
    """
    surface = {}
    for name in dir(cls):
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if name.startswith("_") or (owner is not None and owner.__module__.startswith("traitlets")):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        surface[name] = _signature(attr) if inspect.isfunction(attr) else "attribute"
        if package == "ipyparallel" and inspect.iscoroutinefunction(attr) \
                and any(k.__name__ == "AsyncFirst" for k in cls.__mro__):
            surface[f"{name}_sync"] = _signature(attr)
    for name in _assigned_attributes(cls, package):
        surface.setdefault(name, "attribute")
    return surface


def differences(theirs="ipyparallel", ours="ipyparallel_ext") -> dict:
    """Every difference, keyed ``'missing: X'`` / ``'extra: X'`` / ``'differs: X'``."""
    found = {}

    def compare(prefix, their_surface, our_surface):
        for name in sorted(set(their_surface) | set(our_surface)):
            if name not in our_surface:
                found[f"missing: {prefix}{name}"] = their_surface[name]
            elif name not in their_surface:
                found[f"extra: {prefix}{name}"] = our_surface[name]
            elif their_surface[name] != our_surface[name]:
                found[f"differs: {prefix}{name}"] = f"ipyparallel {their_surface[name]}, ours {our_surface[name]}"

    for sub in MODULES:
        our_surface = module_surface(ours, sub)
        if our_surface is None:
            found[f"missing: module {sub}"] = f"{ours}.{sub} does not exist"
        else:
            compare(f"{sub}." if sub else "", module_surface(theirs, sub), our_surface)
    their_package, our_package = importlib.import_module(theirs), importlib.import_module(ours)
    for name in CLASSES:
        compare(f"{name}.", class_surface(getattr(their_package, name), theirs),
                class_surface(getattr(our_package, name), ours))
    return found


def test_public_names_match_ipyparallel():
    pytest.importorskip("ipyparallel", reason="ipyparallel 9.2 is the reference: pip install -e '.[bench]'")
    pytest.importorskip("joblib", reason="ipyparallel.joblib and ours import joblib")
    found = differences()
    explained = {**KEPT, **PENDING}
    unexplained = [f"{key}  ({found[key]})" for key in sorted(found) if key not in explained]
    stale = sorted(key for key in explained if key not in found)
    assert not unexplained and not stale, (
        "differences from ipyparallel 9.2 not in KEPT (add the name, or a reason):\n  "
        + "\n  ".join(unexplained)
        + "\nentries of KEPT/PENDING that are no longer differences (remove them):\n  "
        + "\n  ".join(stale)
    )


# -- the names at work -----------------------------------------------------------------------


def test_names_user_code_imports():
    from ipyparallel_ext import AsyncHubResult, Reference, bind_kernel, register_joblib_backend  # noqa: F401
    from ipyparallel_ext.error import CompositeError, TimeoutError, unwrap_exception, wrap_exception  # noqa: F401
    from ipyparallel_ext.serialize import can, uncan, use_cloudpickle, use_dill, use_pickle  # noqa: F401
    from ipyparallel_ext.util import interactive  # noqa: F401

    pytest.importorskip("joblib")
    from ipyparallel_ext.joblib import IPythonParallelBackend, register  # noqa: F401

    from joblib.parallel import ParallelBackendBase

    assert issubclass(IPythonParallelBackend, ParallelBackendBase)
    assert ipp.TimeoutError is TimeoutError is builtins.TimeoutError
    assert issubclass(AsyncHubResult, ipp.AsyncResult)


def test_wrap_and_unwrap_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        content = ipp.wrap_exception({"engine_id": 3})
    assert (content["status"], content["ename"], content["evalue"]) == ("error", "ValueError", "boom")
    err = ipp.unwrap_exception(content)
    assert isinstance(err, ipp.RemoteError)
    assert (err.ename, err.evalue, err.engine_info) == ("ValueError", "boom", {"engine_id": 3})
    assert "raise ValueError" in err.traceback
    with pytest.raises(ipp.CompositeError):
        ipp.collect_exceptions(rdict_or_list={0: err, 1: 5}, method="x")


def test_can_and_uncan_send_functions_by_value():
    offset = 10
    f = lambda x: x + offset  # noqa: E731 - a closure: not importable anywhere
    canned = ipp.can({"f": f, "data": [f, 1]})
    assert ipp.uncan(canned)["f"] is f
    # Plain pickle of a canned function works, as the wire sends functions.
    thawed = ipp.uncan(pickle.loads(pickle.dumps(canned)))
    assert thawed["f"](1) == 11 and thawed["data"][0](2) == 12 and thawed["data"][1] == 1
    assert ipp.can(len) is len and ipp.can(3) == 3  # importable things pass through
    # An interactive function reads its globals from the namespace given to uncan.
    g = {"factor": 3}
    h = ipp.uncan(ipp.can(ipp.interactive(lambda x: x * factor)), g)  # noqa: F821
    assert h(2) == 6
    assert ipp.uncan([ipp.Reference("a.real")], {"a": 5}) == [5]


def test_serialize_object_and_apply_message_round_trip():
    frames = ipp.serialize_object({"a": bytes(10000)})
    obj, rest = ipp.deserialize_object(frames)
    assert obj == {"a": bytes(10000)} and rest == []
    f, args, kwargs = ipp.unpack_apply_message(ipp.pack_apply_message(lambda x, y=0: x + y, (1,), {"y": 2}))
    assert f(*args, **kwargs) == 3


def test_prepickled_and_canned_functions_reach_engines(rc, dv):
    big = ipp.PrePickled(list(range(1000)))
    assert dv.apply_sync(lambda seq: sum(seq), big) == [sum(range(1000))] * len(rc)
    assert dv.apply_sync(lambda g: g(20), ipp.can(lambda x: x + 1)) == [21] * len(rc)


def test_use_dill_is_the_process_default_for_clients_that_did_not_choose(cluster):
    pytest.importorskip("dill")
    client = cluster.connect_client_sync()
    chose = cluster.connect_client_sync()
    try:
        client.wait_for_engines(2, timeout=T)
        chose.pickler = "cloudpickle"  # what view.use_cloudpickle() records
        assert client.pickler == "pickle"
        ipp.use_dill()
        assert (client.pickler, chose.pickler) == ("dill", "cloudpickle")
        # What we send is pickled with dill; the engines still read it (dill is installed there).
        ar = client[:].apply_async(divmod, 7, 2)
        assert ar._records[0].pickler == "dill"
        assert ar.get(timeout=T) == [(3, 1)] * len(client)
    finally:
        ipp.use_pickle()
        client.close()
        chose.close()
    assert client.pickler == "pickle"
    with pytest.raises(ValueError, match="unknown pickler"):
        ipp.serialize._use("marshal")


def test_bind_kernel_and_decorators(rc, dv):
    with pytest.raises(RuntimeError, match="already kernels"):
        ipp.bind_kernel()
    # On an engine it is a no-op: the engine already is a kernel.
    assert dv.apply_sync(ipp.bind_kernel) == [None] * len(rc)
    with pytest.raises(TypeError, match="no options"):
        ipp.bind_kernel(ip="0.0.0.0")

    @ipp.remote(dv, block=True)
    def where():
        import os

        return os.getpid()

    assert len(set(where())) == len(rc)

    @ipp.parallel(dv, block=True)
    def total(chunk):
        return sum(chunk)

    assert sum(total(list(range(100)))) == sum(range(100))


def test_clear_empties_the_engines_namespaces(rc, dv):
    dv["leftover"] = 1
    assert rc.clear(block=True) is None
    assert dv.apply_sync(ipp.interactive(lambda: "leftover" in globals())) == [False] * len(rc)
    dv["leftover"] = 2
    ar = rc.clear(targets=[0])  # non-blocking by default (rc.block is False), as in ipyparallel
    ar.get(timeout=T)
    assert dv.apply_sync(ipp.interactive(lambda: "leftover" in globals())) == [False, True]


def test_purging_and_history(rc, tmp_path):
    go = tmp_path / "go"
    done = rc[0].apply_async(double, 1)
    done.get(timeout=T)
    running = rc[1].apply_async(wait_for_file, str(go))
    try:
        with pytest.raises(ValueError, match="say what to purge"):
            rc.purge_local_results()
        with pytest.raises(RuntimeError, match="unfinished"):
            rc.purge_local_results(jobs=running)
        with pytest.raises(RuntimeError, match="unfinished"):
            rc.purge_local_results("all")
        status = rc.result_status([done.msg_ids[0], running.msg_ids[0]], status_only=False)
        assert status["completed"] == done.msg_ids and status["pending"] == running.msg_ids
        assert status[done.msg_ids[0]] == 2
        assert done.msg_ids[0] in rc.hub_history() and rc.hub_history() == rc.history
        mine = rc.db_query({"msg_id": {"$in": done.msg_ids + running.msg_ids}, "completed": {"$ne": None}},
                           keys=["engine_id", "completed"])
        assert [(r["msg_id"], r["engine_id"]) for r in mine] == [(done.msg_ids[0], 0)]
        assert rc.db_query({"msg_id": running.msg_ids[0], "completed": None}, "status") == [
            {"msg_id": running.msg_ids[0], "status": None}]
        with pytest.raises(ValueError, match="unknown operator"):
            rc.db_query({"completed": {"$where": "1"}})
        index = rc.history.index(done.msg_ids[0]) - len(rc.history)
        rc.purge_local_results(index)  # a (negative) history index
        assert done.msg_ids[0] not in rc.results
        other = rc[0].apply_async(double, 2)
        other.get(timeout=T)
        rc.purge_local_results(targets=0)  # engine 0 (only finished work there: fine)
        assert other.msg_ids[0] not in rc.results
        with pytest.raises(KeyError, match="no hub"):
            rc.result_status(done.msg_ids)
    finally:
        go.touch()
    running.get(timeout=T)
    rc.purge_hub_results(jobs="all")  # nothing is kept anywhere else: a no-op
    rc.purge_everything()
    assert rc.history == [] and rc.results == {} and rc.hub_history() == []


def test_wait_interactive_and_spin_thread(rc):
    rc.spin_thread(interval=0.1)  # the I/O thread always runs: harmless
    ars = [rc[i % 2].apply_async(snooze, 0.05) for i in range(4)]
    rc.wait_interactive(ars, interval=0.05, timeout=T)
    assert all(ar.ready() for ar in ars)
    assert rc.wait_interactive() is None  # nothing outstanding
    rc.stop_spin_thread()


@ipp.interactive
def _nap_after_touching(path):
    """Runs on an engine: say it started (create ``path``), then sleep."""
    import pathlib
    import time

    pathlib.Path(path).touch()
    time.sleep(30)


def test_send_signal_by_name(rc, tmp_path):
    started = tmp_path / "started"
    ar = rc[0].apply_async(_nap_after_touching, str(started))
    assert wait_until(started.exists, timeout=T)
    rc.send_signal("SIGINT", targets=0)
    with pytest.raises(ipp.RemoteError, match="KeyboardInterrupt"):
        ar.get(timeout=T)
    with pytest.raises(ValueError, match="no signal named"):
        rc.send_signal("SIGNOPE", targets=0)


def test_hub_only_methods_say_what_to_do(rc):
    with pytest.raises(NotImplementedError, match="distributed.LocalCluster"):
        rc.become_dask()
    with pytest.raises(NotImplementedError, match="no Hub"):
        rc.become_distributed(targets=[0])
    with pytest.raises(NotImplementedError, match="dask"):
        rc.stop_dask()
    with pytest.raises(NotImplementedError, match=r"view.apply"):
        rc.resubmit(-1)
    assert rc.cluster is not None and rc.block is False
