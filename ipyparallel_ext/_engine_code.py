"""Engine-side helpers: the code that runs inside every engine kernel.

Engines are stock ipykernels with nothing of ours installed, so the client
sends this file's *source* in one ``execute_request`` when it connects
(:func:`ipyparallel_ext._wire.install_code`).  It becomes the module
``_ipp_ext_engine`` in the kernel's ``sys.modules``.  The client imports the
same file too, so both ends share one implementation of the payload format.

Only the standard library may be imported at module level here.

How a request is served
-----------------------
Every View operation is a silent ``execute_request`` whose code is
``__import__('_ipp_ext_engine').handle()`` and whose ``metadata["ipp_ext"]``
says what to do.  :func:`handle` reads the request's binary buffers through
``kernel.get_parent()``, does the work and parks the reply payload in
``_pending``.  When the kernel then sends its ``execute_reply``, the wrapped
``session.send`` (installed by :func:`install`) attaches that payload: the
result travels on the shell channel, in the reply of the request that made
it, as pickle-protocol-5 frames with out-of-band buffers.
"""

import builtins
import io
import marshal
import pickle
import sys
import threading
import time
import types

MODULE_NAME = "_ipp_ext_engine"
# The code of every helper request (apply, push, pull, ...).
HANDLE_CODE = f"__import__({MODULE_NAME!r}).handle()"
# Replaced by the client with a hash of this source when it is sent.
VERSION = "dev"

# Buffers smaller than this travel inside the pickle: a frame of their own
# costs more than the copy.
OOB_THRESHOLD = 4096

# msg_id of the execute_request -> (reply metadata, reply buffers)
_pending = {}
# msg_id of a request -> IOPub outputs published for it so far.  The count
# rides on the execute_reply so the client knows when it has every output
# without waiting for the kernel's trailing 'idle' status.
_output_counts = {}
OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result",
                          "error", "clear_output"})
_state = {"pickler": "pickle"}


# ---------------------------------------------------------------------------
# Payload format, shared by the client and the engines
# ---------------------------------------------------------------------------


def pickler_module(name):
    """Return the module that pickles for ``name`` ('pickle', 'dill' or 'cloudpickle')."""
    if name == "pickle":
        return pickle
    if name in ("dill", "cloudpickle"):
        try:
            return __import__(name)
        except ImportError:
            raise ImportError(
                f"{name} is not installed in this Python ({sys.executable});"
                f" install it here to use use_{name}()"
            ) from None
    raise ValueError(f"unknown pickler {name!r}")


# Values that hold no function: plain pickle.dumps, without a Pickler object, is faster.
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes})


def dumps(obj, pickler="pickle"):
    """Pickle ``obj`` with protocol 5; large buffers go out of band.

    Returns
    -------
    list
        The pickle bytes, then one memoryview per out-of-band buffer.
    """
    frames = [None]

    def keep_large(buf):
        view = buf.raw()
        if view.nbytes < OOB_THRESHOLD:
            return True  # pickle it in-band
        frames.append(view)
        return False

    if pickler == "pickle" and type(obj) not in _ATOMIC:
        out = io.BytesIO()
        ValuePickler(out, protocol=5, buffer_callback=keep_large).dump(obj)
        frames[0] = out.getvalue()
    else:
        frames[0] = pickler_module(pickler).dumps(obj, protocol=5, buffer_callback=keep_large)
    return frames


def loads(frames, pickler="pickle"):
    """Inverse of :func:`dumps`.

    zmq frames are writable, so arrays are rebuilt on the received memory
    without a copy; a read-only buffer (bytes) is copied so that arrays
    always arrive mutable, as users expect.
    """
    buffers = [b if not memoryview(b).readonly else bytearray(b) for b in frames[1:]]
    return pickler_module(pickler).loads(frames[0], buffers=buffers)


def _rebuild_function(code, globals_ns, name, qualname, defaults, kwdefaults, closure, attrs):
    """Recreate a function that was pickled by value.

    ``globals_ns`` holds the globals the function uses (module functions),
    or, when it has the key ``__ipp_ext_main__``, only the modules an
    interactive function (notebook, ``@interactive``) uses: such a function
    runs in the engine's namespace, where those modules are bound if missing.
    """
    if "__ipp_ext_main__" in globals_ns:
        user_ns = _user_ns()
        for key, value in globals_ns.items():
            if key != "__ipp_ext_main__":
                user_ns.setdefault(key, value)  # modules the function uses
        namespace = user_ns
    else:
        namespace = dict(globals_ns)
        namespace.setdefault("__builtins__", __builtins__)
    cells = None if closure is None else tuple(types.CellType(v) for v in closure)
    func = types.FunctionType(marshal.loads(code), namespace, name, defaults, cells)
    func.__qualname__ = qualname
    func.__kwdefaults__ = kwdefaults
    func.__dict__.update(attrs)
    return func


def _rebuild_memoryview(memory, fmt, shape):
    """A memoryview sent by :mod:`._wire`, with its format and shape."""
    view = memoryview(memory)
    return view if (fmt, shape) == ("B", (view.nbytes,)) else view.cast("B").cast(fmt, shape)


def _importable(func: types.FunctionType) -> bool:
    """True if ``pickle`` can refer to ``func`` by module and name."""
    module_name = getattr(func, "__module__", None)
    if module_name in (None, "__main__", "__mp_main__"):
        return False
    module = sys.modules.get(module_name)
    obj = module
    for part in func.__qualname__.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is func


def _global_names(code: types.CodeType):
    """Names a code object (and the code nested in it) may read as globals."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _function_reduction(func: types.FunctionType):
    """Reduce a function that the other end cannot import to its parts.

    Functions of ``__main__`` (notebook cells, scripts, ``@interactive``) run
    against the receiving end's interactive namespace, as in ipyparallel;
    the modules they use are sent along and bound there if missing.  Other
    functions (lambdas, closures, nested functions) carry the globals they
    use by value, and their module's name, so that they travel back (a
    closure pulled from an engine) the same way.
    """
    interactive = func.__module__ in ("__main__", "__mp_main__", None)
    used = {}
    for name in set(_global_names(func.__code__)):
        if name in func.__globals__:
            value = func.__globals__[name]
            if interactive and not isinstance(value, types.ModuleType):
                continue  # resolved on the engine, like ipyparallel
            used[name] = value
    if interactive:
        used["__ipp_ext_main__"] = True
    else:
        used["__name__"] = func.__module__
    closure = None if func.__closure__ is None else tuple(c.cell_contents for c in func.__closure__)
    args = (
        marshal.dumps(func.__code__),
        used,
        func.__name__,
        func.__qualname__,
        func.__defaults__,
        func.__kwdefaults__,
        closure,
        dict(func.__dict__),
    )
    return (_rebuild_function, args)


class ValuePickler(pickle.Pickler):
    """The default pickler, at both ends: stdlib pickle, plus functions by value."""

    def reducer_override(self, obj):
        if type(obj) is types.FunctionType and not _importable(obj):
            return _function_reduction(obj)
        if type(obj) is types.ModuleType:
            return (__import__, (obj.__name__, None, None, ["__name__"]))
        if type(obj) is memoryview:
            # Plain pickle refuses memoryviews; send the memory as a buffer
            # (out of band when large) and rebuild the view around it.
            memory = pickle.PickleBuffer(obj) if obj.c_contiguous else obj.tobytes()
            return (_rebuild_memoryview, (memory, obj.format, obj.shape))
        return NotImplemented


def map_chunk(func, *chunks):
    """Map ``func`` over one chunk of each sequence (a DirectView.map task)."""
    return list(map(func, *chunks))


def _resolve_reference(name, ns=None, where="on this engine"):
    """Evaluate ``name`` in the engine's namespace, or in ``ns`` (``ipp.Reference``, pull).

    A dotted name (``'a'``, ``'model.weights'``) is looked up attribute by
    attribute (builtins too); any other expression (``'g[0]'``) is
    evaluated, as ipyparallel does.
    """
    ns = _user_ns() if ns is None else ns
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return eval(name, ns)
    if parts[0] in ns:
        value = ns[parts[0]]
    elif hasattr(builtins, parts[0]):
        value = getattr(builtins, parts[0])
    else:
        raise NameError(f"name {parts[0]!r} is not defined {where}")
    for attr in parts[1:]:
        value = getattr(value, attr)
    return value


class UnmetDependency(Exception):
    """Raised on an engine when a task's ``@depend`` check fails there.

    The client's scheduler recognises it by name and tries another engine.
    """


class dependent:
    """A function wrapped with a check that must hold on the engine (made by ``@depend``).

    An object rather than a closure, so that it pickles; defined here so
    that engines need nothing of ours installed to run it.
    """

    def __init__(self, _wrapped_f, _wrapped_check, *dargs, **dkwargs):
        self.f = _wrapped_f
        self.df = _wrapped_check
        self.dargs = dargs
        self.dkwargs = dkwargs
        self.__name__ = getattr(_wrapped_f, "__name__", "f")
        self.__qualname__ = getattr(_wrapped_f, "__qualname__", self.__name__)

    def check_dependency(self):
        """Raise UnmetDependency if the check fails here."""
        if self.df(*self.dargs, **self.dkwargs) is False:
            raise UnmetDependency(f"{getattr(self.df, '__name__', 'check')} returned False")

    def __call__(self, *args, **kwargs):
        self.check_dependency()
        return self.f(*args, **kwargs)


def _require(*modules, **mapping):
    """Engine side of ``@require``: import ``modules`` and bind ``mapping`` in the user namespace."""
    user_ns = _user_ns()
    for name in modules:
        try:
            exec(f"import {name}", user_ns)
        except ImportError:
            raise UnmetDependency(f"module {name!r} is not installed on this engine") from None
    user_ns.update(mapping)
    return True


# ---------------------------------------------------------------------------
# Engine side: serving requests
# ---------------------------------------------------------------------------


def _shell():
    from IPython import get_ipython

    return get_ipython()


def _kernel():
    return _shell().kernel


def _user_ns():
    shell = _shell()
    # Outside IPython (a result unpickled by a plain-Python client) the
    # interactive namespace is __main__'s.
    return shell.user_ns if shell is not None else sys.modules["__main__"].__dict__


def _format_error(etype, evalue, tb):
    """Error dict with IPython's rendering of the traceback."""
    try:
        stb = _shell().InteractiveTB.structured_traceback(etype, evalue, tb)
        text = "\n".join(stb)
    except Exception:
        import traceback

        text = "".join(traceback.format_exception(etype, evalue, tb))
    return {"status": "error", "ename": etype.__name__, "evalue": str(evalue), "traceback": text}


def _call(func, *args):
    """Run ``func(*args)``; return ``(True, value)`` or ``(False, error dict)``."""
    try:
        return True, func(*args)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt is a task outcome too
        # Skip this frame so the traceback starts in the user's code.
        return False, _format_error(type(exc), exc, exc.__traceback__.tb_next)


def _apply(frames, pickler):
    func, args, kwargs = loads(frames, pickler)
    return func(*args, **kwargs)


def _push(frames, pickler):
    _user_ns().update(loads(frames, pickler))


def _pull(names):
    return tuple(_resolve_reference(n) for n in names)


def _clear():
    _shell().reset(new_session=False)


def _set_pickler(name):
    pickler_module(name)
    _state["pickler"] = name


def _run_one(op, spec, frames):
    """Run one operation; return (metadata, frames) for its reply."""
    pickler = _state["pickler"]
    started = time.time()
    if op == "apply":
        ok, value = _call(_apply, frames, pickler)
    elif op == "push":
        ok, value = _call(_push, frames, pickler)
    elif op == "pull":
        ok, value = _call(_pull, spec["names"])
    elif op == "clear":
        ok, value = _call(_clear)
    elif op == "pickler":
        ok, value = _call(_set_pickler, spec["name"])
    else:
        ok, value = False, {"status": "error", "ename": "ValueError",
                            "evalue": f"unknown operation {op!r}", "traceback": ""}
    md = {"started": started}
    out = []
    if ok:
        md["status"] = "ok"
        if op in ("apply", "pull"):
            dumped = _call(dumps, value, pickler)
            if dumped[0]:
                out = dumped[1]
            else:
                md.update(dumped[1])
                md["evalue"] = f"result could not be pickled: {md['evalue']}"
    else:
        md.update(value)
    md["completed"] = time.time()
    return md, out


def _run_batch(spec, frames, kernel, ident, parent):
    """Run several tasks carried by one request.

    Each task gets its own parent header while it runs, so its stdout,
    stderr and displays reach the client tagged with the task's own id.
    """
    results = []
    out = []
    pos = 0
    header = parent["header"]
    try:
        for task in spec["tasks"]:
            nframes = task["nframes"]
            task_frames = frames[pos : pos + nframes]
            pos += nframes
            task_parent = dict(parent, header=dict(header, msg_id=task["id"]))
            kernel.set_parent(ident, task_parent, channel="shell")
            md, task_out = _run_one("apply", task, task_frames)
            md["nframes"] = len(task_out)
            results.append(md)
            out.extend(task_out)
            if md.get("ename") == "KeyboardInterrupt":
                break  # interrupted: the client re-queues the rest
    finally:
        kernel.set_parent(ident, parent, channel="shell")
    return {"status": "ok", "tasks": results}, out


def handle():
    """Serve the current execute_request (called by its code)."""
    kernel = _kernel()
    parent = kernel.get_parent("shell")
    spec = parent["metadata"]["ipp_ext"]
    frames = parent.get("buffers") or []
    op = spec["op"]
    if op == "batch":
        ident = kernel._shell_parent_ident.get()
        md, out = _run_batch(spec, frames, kernel, ident, parent)
    else:
        md, out = _run_one(op, spec, frames)
    _pending[parent["header"]["msg_id"]] = (md, out)


def _reply_content(shell, error=None):
    content = {"status": "ok", "execution_count": shell.execution_count,
               "user_expressions": {}, "payload": []}
    if error is not None:
        content.update(error, status="error", traceback=error["traceback"].splitlines())
    return content


def _install_fast_path(kernel):
    """Serve our own requests without IPython's cell machinery.

    A helper request's code is always exactly :data:`HANDLE_CODE`.  Running
    it through ``run_cell`` (input transformers, parsing, compiling,
    display hooks) costs more than the work itself, so ``do_execute``
    calls :func:`handle` directly for that one string and passes every
    other cell to the kernel untouched.
    """
    original = getattr(kernel, "_ipp_ext_original_do_execute", None) or kernel.do_execute
    shell = kernel.shell

    async def do_execute(code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, **kwargs):
        _output_counts[kernel.get_parent("shell")["header"]["msg_id"]] = 0
        if code != HANDLE_CODE:
            return await original(code, silent, store_history, user_expressions, allow_stdin, **kwargs)
        try:
            handle()
        except BaseException as exc:  # noqa: BLE001 - reported to the client, kernel goes on
            return _reply_content(shell, _format_error(type(exc), exc, exc.__traceback__))
        return _reply_content(shell)

    kernel._ipp_ext_original_do_execute = original
    kernel.do_execute = do_execute


def _skip_empty_flushes():
    """Make ``sys.stdout.flush()`` free when nothing was written.

    ipykernel flushes both streams after every request, each flush a round
    trip to its IOPub thread even when there is nothing to send.  Only done
    on engines the client started itself, and only where ipykernel's
    stream has the internals this relies on.
    """
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "_ipp_ext_flush", None) or not all(
            hasattr(stream, a) for a in ("_flush_pending", "_subprocess_flush_pending", "_buffers")
        ):
            continue
        original = stream.flush

        def flush(stream=stream, original=original):
            if stream._flush_pending or stream._subprocess_flush_pending or stream._buffers:
                original()

        stream._ipp_ext_flush = original
        stream.flush = flush


def _output_parent(msg_or_type, parent):
    """msg_id of the request an output message belongs to, or None if it is not an output."""
    if isinstance(msg_or_type, str):
        if msg_or_type not in OUTPUT_TYPES or not parent:
            return None
        header = parent.get("header", parent)
    else:
        if msg_or_type.get("msg_type") not in OUTPUT_TYPES:
            return None
        header = msg_or_type.get("parent_header") or {}
    return header.get("msg_id")


def install(options):
    """Hook the kernel so execute_replies carry our payloads (and serve them fast).

    Idempotent: installing again (a second client, or a newer version of
    this module) re-wraps the kernel's originals, never a wrapper.
    """
    kernel = _kernel()
    _install_fast_path(kernel)
    if options.get("skip_empty_flushes"):
        _skip_empty_flushes()
    session = kernel.session
    original = getattr(session, "_ipp_ext_original_send", None) or session.send
    pending = _pending
    counts = _output_counts
    lock = threading.Lock()

    def send(stream, msg_or_type, content=None, parent=None, ident=None,
             buffers=None, track=False, header=None, metadata=None):
        if msg_or_type == "execute_reply" and parent:
            msg_id = parent["header"]["msg_id"]
            with lock:
                n_outputs = counts.pop(msg_id, None)
            metadata = dict(metadata or {})
            if n_outputs is not None:
                metadata["ipp_ext_outputs"] = n_outputs
            extra = pending.pop(msg_id, None) if pending else None
            if extra is not None:
                metadata["ipp_ext"] = extra[0]
                buffers = extra[1]
        else:
            msg_id = _output_parent(msg_or_type, parent)
            if msg_id is not None:
                with lock:
                    if msg_id in counts:  # only requests being executed are counted
                        counts[msg_id] += 1
        return original(stream, msg_or_type, content, parent, ident, buffers, track, header, metadata)

    session._ipp_ext_original_send = original
    session.send = send
    if "execute_sleep" in options:
        # The post-execute sleep exists to let output flush before the reply;
        # our engines' replies carry their results, so it only adds latency.
        kernel._execute_sleep = options["execute_sleep"]
    return VERSION
