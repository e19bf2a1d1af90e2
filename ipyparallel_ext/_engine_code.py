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
says what to do, including which pickler the client uses (so clients that
share an engine never affect each other).  :func:`handle` reads the
request's binary buffers from the kernel, does the work and parks the reply
payload in ``_pending``.  When the kernel then sends its ``execute_reply``,
the wrapped ``session.send`` attaches that payload: the result travels on
the shell channel, in the reply of the request that made it, as
pickle-protocol-5 frames with out-of-band buffers.

Cells sent by ``execute()`` and ``%px`` are served here too: the request
says silent (the kernel then skips echoing the code on IOPub, which costs
each engine a message per cell) and ``metadata["ipp_ext"]`` says whether to
run it silently; :func:`_serve` runs it with ``shell.run_cell``, as the
kernel runs any cell without top-level ``await``, and builds the kernel's
reply (execution count, error, payload).

Everything private to ipykernel that this needs (the request being served,
``session.send``, ``do_execute``, the output streams' flush) is reached
through one :class:`KernelAdapter`, checked when the helpers are installed.
"""

import builtins
import datetime
import inspect
import io
import json
import logging
import marshal
import pickle
import re
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
# (data_message: ipyparallel_ext.datapub.publish_data)
OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result",
                          "error", "clear_output", "data_message"})


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
# Engine side: the kernel's private parts, in one place
# ---------------------------------------------------------------------------


class IncompatibleKernel(Exception):
    """The running kernel lacks something the engine helpers need (the message names it)."""


def _chain(obj, name, make):
    """Replace ``obj.<name>`` by ``make(current, live)``, a wrapper that calls the current value.

    Whatever is there now (the kernel's own method, or someone else's
    wrapper) is what the new wrapper calls.  ``live`` is a list that is
    emptied when the wrapper is retired: it must then only pass calls on.
    Our own wrapper from an earlier install is never wrapped again: it is
    taken off while it is still on top, or retired when something else has
    wrapped it since.
    """
    mark = "_ipp_ext_" + name
    current = getattr(obj, name)
    previous = getattr(obj, mark, None)
    if previous is not None:
        if current is previous:
            current = previous.__wrapped__
        else:
            previous.__ipp_ext_live__.clear()
    live = [True]
    wrapper = make(current, live)
    wrapper.__wrapped__ = current
    wrapper.__ipp_ext_live__ = live
    setattr(obj, name, wrapper)
    setattr(obj, mark, wrapper)


def _arg(args, kwargs, index, name):
    """A call's argument given by position ``index`` or keyword ``name``."""
    return args[index] if index is not None and len(args) > index else kwargs.get(name)


def _with_arg(args, kwargs, index, name, value):
    """``(args, kwargs)`` with that argument set to ``value``, where the caller put it."""
    if index is not None and len(args) > index:
        return args[:index] + (value,) + args[index + 1 :], kwargs
    kwargs[name] = value
    return args, kwargs


# The stream state that tells whether a flush has anything to send (ipykernel's OutStream).
_STREAM_STATE = ("_flush", "_flush_pending", "_subprocess_flush_pending", "_buffers")


class KernelAdapter:
    """Everything private to ipykernel that the helpers touch, checked when they are installed.

    ipykernel offers running code no public way to read the request it
    serves or to add to its reply, so the helpers rely on these pieces:

    - ``kernel.get_parent('shell')``, with the request's ``buffers``: the
      request being served, payload included;
    - ``kernel.set_parent`` and the shell request's ident: a batch's tasks
      each run under their own msg_id;
    - ``kernel.session.send`` (its ``msg_or_type`` and ``parent``
      parameters), wrapped: results ride on the execute_reply, outputs are
      counted;
    - ``kernel.do_execute``, wrapped: helper requests skip the cell machinery,
      and execute cells run from there (with ``kernel._forward_input`` /
      ``_restore_input`` when present, and the shell's ``_last_traceback``
      and ``_last_traceback_during_displayhook``, as ipykernel's own);
    - ``kernel.iopub_socket``: :func:`publish_data`'s messages;
    - ``kernel._execute_sleep`` (when present): 0 on engines a Cluster started;
    - the ``_flush``, ``_flush_pending``, ``_subprocess_flush_pending`` and
      ``_buffers`` of ``sys.stdout``/``sys.stderr`` (ipykernel's OutStream):
      the flush after each request is skipped when there is nothing to send
      (engines a Cluster started; streams without them keep the stock flush);
    - ``kernel.log``: its level is raised to what its handlers emit (engines a
      Cluster started);
    - ``kernel._publish_status`` and the IOPub thread's ``schedule``,
      ``thread`` and ``_events``, wrapped: the IOPub wake-up for our
      requests' 'busy' is held back until the next message or a short
      deadline (engines a Cluster started);
    - jupyter_client's ``Session.pack`` and ``jsonutil.parse_date``, when
      they are the stock ``json_packer`` and ``parse_date``: replaced by
      equivalents with less per-call work (checked against them at install).

    Built inside the install request; a missing piece raises
    :class:`IncompatibleKernel` naming it, so the install fails with that
    message and the client reports it.
    """

    def __init__(self):
        shell = _shell()
        kernel = getattr(shell, "kernel", None)
        if kernel is None:
            raise IncompatibleKernel("this is not an ipykernel: get_ipython().kernel is missing" + _versions())
        self.shell = shell
        self.kernel = kernel
        for name in ("get_parent", "set_parent", "session", "do_execute", "iopub_socket"):
            if getattr(kernel, name, None) is None:
                raise IncompatibleKernel(f"kernel.{name} is missing" + _versions())
        if "buffers" not in kernel.get_parent("shell"):
            raise IncompatibleKernel(
                "kernel.get_parent('shell') has no 'buffers': this kernel does not hand a request's"
                " binary buffers to the code it runs" + _versions()
            )
        # ipykernel 7 keeps the shell request's ident in a ContextVar, 6 in a dict.
        if hasattr(getattr(kernel, "_shell_parent_ident", None), "get"):
            self.parent_ident = kernel._shell_parent_ident.get
        elif isinstance(getattr(kernel, "_parent_ident", None), dict):
            self.parent_ident = lambda: kernel._parent_ident["shell"]
        else:
            raise IncompatibleKernel("kernel._shell_parent_ident (or _parent_ident) is missing" + _versions())
        self._send_params = _send_parameters(type(kernel.session))

    # -- the request being served --------------------------------------------------

    def parent(self):
        """The shell request being served (the whole message, ``buffers`` included)."""
        return self.kernel.get_parent("shell")

    def set_parent(self, ident, parent):
        """Make ``parent`` the request that outputs are attributed to."""
        self.kernel.set_parent(ident, parent, channel="shell")

    def publish(self, msg_type, content, parent, buffers, topic):
        """Send one message on IOPub, on behalf of ``parent``."""
        self.kernel.session.send(self.kernel.iopub_socket, msg_type, content, parent=parent,
                                 ident=topic, buffers=buffers)

    # -- hooks -----------------------------------------------------------------------

    def hook_execute(self, serve):
        """Wrap ``do_execute``: ``serve(code)`` decides who runs the cell.

        It returns the reply content (served), None (the kernel runs the
        cell as sent) or a :class:`CellArguments` (the kernel runs it with
        those ``do_execute`` arguments changed).
        """

        def make(inner, live):
            async def do_execute(*args, **kwargs):
                if live:
                    reply = serve(args[0] if args else kwargs.get("code"))
                    if type(reply) is CellArguments:
                        for name, value in reply.items():
                            args, kwargs = _with_arg(args, kwargs, _DO_EXECUTE_POSITIONS[name], name, value)
                    elif reply is not None:
                        return reply
                reply = inner(*args, **kwargs)
                return (await reply) if inspect.isawaitable(reply) else reply

            return do_execute

        _chain(self.kernel, "do_execute", make)

    def hook_send(self, edit):
        """Wrap ``session.send``: ``edit(msg_or_type, parent)`` sees every message first.

        It returns None (send as is) or ``(metadata, buffers)``: metadata to
        add and, unless None, the buffers to send instead.  The wrapper takes
        and passes on any arguments, so new ones in jupyter_client go through.
        """
        i_type, i_parent, i_meta, i_buffers = (
            self._send_params.get(n) for n in ("msg_or_type", "parent", "metadata", "buffers"))

        def make(inner, live):
            def send(*args, **kwargs):
                if live:
                    n = len(args)  # (inline: this runs for every message the kernel sends)
                    change = edit(args[i_type] if n > i_type else kwargs.get("msg_or_type"),
                                  args[i_parent] if n > i_parent else kwargs.get("parent"))
                    if change is not None:
                        metadata = dict(_arg(args, kwargs, i_meta, "metadata") or {}, **change[0])
                        args, kwargs = _with_arg(args, kwargs, i_meta, "metadata", metadata)
                        if change[1] is not None:
                            args, kwargs = _with_arg(args, kwargs, i_buffers, "buffers", change[1])
                return inner(*args, **kwargs)

            return send

        _chain(self.kernel.session, "send", make)

    def skip_empty_flushes(self):
        """Make ``sys.stdout.flush()`` free when there is nothing to send, keeping its ordering.

        ipykernel flushes both streams after every request, each flush a round
        trip to its IOPub thread even with nothing to send.  The stock flush
        guarantees that everything written before it has gone through
        ``session.send`` when it returns; skipping it keeps that guarantee
        only if nothing is buffered, no flush is scheduled, *and* no flush is
        half done on the IOPub thread (its ``_flush`` clears the pending flag
        and empties the buffers before it sends).  The last is tracked by
        wrapping ``_flush``.  Streams without these internals keep the stock
        flush.
        """
        for stream in (sys.stdout, sys.stderr):
            if not all(hasattr(stream, a) for a in _STREAM_STATE):
                self.kernel.log.info("ipyparallel_ext: %r lacks ipykernel's OutStream internals;"
                                     " its flushes are not skipped", stream)
                continue
            # Shared by every install's wrappers (a flush may be under way during a re-install).
            flushing = stream.__dict__.setdefault("_ipp_ext_flushing", [0])

            def make_flush(inner, live, stream=stream, flushing=flushing):
                def flush():
                    # The stream's state first, then ``flushing``: _flush raises
                    # ``flushing`` before it clears that state.
                    if (not live or stream._flush_pending or stream._subprocess_flush_pending
                            or stream._buffers or flushing[0]):
                        return inner()
                    return None

                return flush

            def make_private_flush(inner, live, flushing=flushing):
                def _flush():
                    flushing[0] += 1
                    try:
                        return inner()
                    finally:
                        flushing[0] -= 1

                return _flush

            _chain(stream, "_flush", make_private_flush)
            _chain(stream, "flush", make_flush)

    def run_cell(self, code, silent):
        """Run ``code`` as the kernel runs a cell that needs no event loop; the ExecutionResult.

        What ipykernel's ``do_execute`` does around ``shell.run_cell`` for such
        a cell: ``input()`` and ``getpass()`` raise (the client cannot answer
        them) instead of reading the kernel's own stdin.
        """
        kernel = self.kernel
        forward = getattr(kernel, "_forward_input", None)
        if forward is None or not hasattr(kernel, "_restore_input"):
            return self.shell.run_cell(code, store_history=not silent, silent=silent)
        forward(False)
        try:
            return self.shell.run_cell(code, store_history=not silent, silent=silent)
        finally:
            kernel._restore_input()

    def take_payload(self):
        """The payloads the last cell left (``set_next_input``, ``page``...), cleared as ipykernel does."""
        manager = getattr(self.shell, "payload_manager", None)
        if manager is None:
            return []
        payload = manager.read_payload()
        manager.clear_payload()
        return payload

    def skip_unused_log_records(self):
        """Raise the kernel logger's level to the lowest level its handlers emit.

        traitlets applications set their logger to DEBUG and filter at the
        handler (WARNING by default), so each debug call of the kernel's
        message loop (four per request) builds a record that no handler
        emits.  Changing the kernel's ``log_level`` later reconfigures the
        logger (back to DEBUG), so nothing that would be shown is lost.
        """
        logger = getattr(self.kernel.log, "logger", self.kernel.log)  # a LoggerAdapter's logger
        if not isinstance(logger, logging.Logger):
            return
        levels = []
        current = logger
        while current is not None:
            levels.extend(handler.level for handler in current.handlers)
            current = current.parent if current.propagate else None
        if levels and min(levels) > logger.getEffectiveLevel():
            logger.setLevel(min(levels))

    def set_execute_sleep(self, seconds):
        """Set the pause after each request (it lets output flush; our replies count outputs)."""
        if hasattr(self.kernel, "_execute_sleep"):
            self.kernel._execute_sleep = seconds

    def defer_busy_wakeups(self, delay):
        """Hold back the IOPub thread's wake-up for our requests' 'busy' status, ``delay`` s at most.

        Each request makes the kernel publish 'busy' before it runs and
        'idle' after its reply, each by waking the IOPub thread.  Woken for
        'busy', that thread runs while the request is served and its reply
        sent, on a machine with few cores and one GIL.  Here the 'busy' of
        a request of ours is queued without the wake-up: the next message
        published (an output, the 'idle') wakes the thread, which sends
        everything queued in order ('busy' first), or a small waker thread
        does after ``delay`` seconds (a long silent request; it sleeps while
        nothing is held back).  Other frontends see 'busy' at most
        ``delay`` late, never out of order.  Other clients' requests are
        untouched.  Needs ``kernel._publish_status`` and the IOPub thread's
        ``schedule``, ``thread`` and ``_events`` (ipykernel's IOPubThread);
        without them nothing changes.  Returns True if deferring.
        """
        kernel = self.kernel
        iopub = getattr(kernel, "iopub_thread", None)
        if (not callable(getattr(kernel, "_publish_status", None)) or iopub is None
                or not callable(getattr(iopub, "schedule", None))
                or not hasattr(getattr(iopub, "_events", None), "append")
                or not callable(getattr(getattr(iopub, "thread", None), "is_alive", None))):
            kernel.log.info("ipyparallel_ext: this kernel's IOPub thread is not ipykernel's;"
                            " busy statuses are published as usual")
            return False
        previous = getattr(iopub, "_ipp_ext_busy_waker", None)
        if previous is not None:
            previous.stop()
        waker = iopub._ipp_ext_busy_waker = _BusyWaker(iopub, delay)
        main = threading.get_ident()  # installs run on the kernel's main thread, as requests do

        def make_publish_status(inner, live):
            def _publish_status(status, channel, *args, **kwargs):
                if live and status == "busy" and channel == "shell" and threading.get_ident() == main:
                    spec = (kernel.get_parent("shell").get("metadata") or {}).get("ipp_ext")
                    if spec is not None:  # a request of ours
                        waker.holding = True
                        try:
                            return inner(status, channel, *args, **kwargs)
                        finally:
                            waker.holding = False
                return inner(status, channel, *args, **kwargs)

            return _publish_status

        def make_schedule(inner, live):
            waker.schedule = inner

            def schedule(f):
                if live and waker.holding and threading.get_ident() == main and iopub.thread.is_alive():
                    waker.hold(f)
                    return None
                waker.held_since = None  # this wakes the thread: what was held goes out first
                return inner(f)

            return schedule

        _chain(iopub, "schedule", make_schedule)
        _chain(kernel, "_publish_status", make_publish_status)
        waker.start()
        return True

    def speed_up_json(self):
        """Pack and parse the kernel's messages as jupyter_client does, without its per-call set-up.

        Every request makes the kernel pack three messages (busy, reply,
        idle; four JSON documents each) and parse the request's dates twice
        (its shell channel thread and its main thread).  The stock packer
        builds a new ``JSONEncoder`` per document and the stock date parser
        goes through dateutil, even for the one date format Jupyter sends.
        The replacements give the same bytes and the same datetimes (checked
        here on samples against the stock functions; a mismatch keeps the
        stock one), and hand anything else to the stock function.  Only the
        stock ``json_packer`` and ``parse_date`` are replaced (with orjson,
        jupyter_client's packer is fast already).  Returns the names replaced.
        """
        try:
            from jupyter_client import jsonutil
            from jupyter_client import session as session_module
        except ImportError:
            return []
        replaced = []
        session = self.kernel.session
        stock = getattr(session.pack, "__ipp_ext_stock__", session.pack)
        if stock is getattr(session_module, "json_packer", None) and hasattr(session_module, "json_default"):
            fast = _fast_json_packer(stock, session_module.json_default)
            if _same_results(fast, stock, _PACK_SAMPLES):
                session.pack = fast
                replaced.append("Session.pack")
        stock = getattr(jsonutil.parse_date, "__ipp_ext_stock__", jsonutil.parse_date)
        if getattr(stock, "__module__", None) == jsonutil.__name__ and stock.__name__ == "parse_date":
            fast = _fast_parse_date(stock)
            if fast is not None and _same_results(fast, stock, _DATE_SAMPLES):
                jsonutil.parse_date = fast
                replaced.append("jsonutil.parse_date")
        return replaced


class _BusyWaker:
    """Wakes the IOPub thread for a held-back 'busy' nobody else woke it for (see ``defer_busy_wakeups``).

    Its thread sleeps on an event while nothing is held back; while requests
    keep coming it wakes about once per ``delay``, not per request.
    """

    def __init__(self, iopub, delay):
        self.iopub = iopub
        self.delay = delay
        self.schedule = None  # the IOPub thread's own schedule (set when it is wrapped)
        self.holding = False  # True while the main thread publishes a 'busy' of ours
        self.held_since = None  # monotonic time a 'busy' was held back, until the thread is woken
        self._stopped = False
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ipyparallel_ext busy waker", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stopped = True
        self._event.set()

    def hold(self, f):
        """Queue ``f`` (the 'busy' send) for the IOPub thread without waking it (main thread)."""
        self.iopub._events.append(f)
        if self.held_since is None:
            self.held_since = time.monotonic()
        self._event.set()  # no system call unless the waker sleeps

    def _run(self):
        while not self._stopped:
            since = self.held_since
            if since is None:
                if self._event.is_set():  # something was held since the last look: check again later
                    self._event.clear()
                    time.sleep(self.delay)
                else:  # nothing lately: sleep until the next hold
                    self._event.wait()
                continue
            left = since + self.delay - time.monotonic()
            if left > 0:
                time.sleep(left)
            elif self.held_since == since:
                self.held_since = None
                try:
                    self.schedule(_nothing)  # wakes the IOPub thread, which sends what is queued
                except Exception:  # a closed IOPub thread (kernel shutting down): nothing to wake
                    return


def _nothing():
    """An IOPub event that does nothing but wake the thread."""


def _fast_json_packer(stock, default):
    """jupyter_client's ``json_packer`` with one encoder built once (``json.dumps`` builds one per call)."""
    # The arguments json_packer passes to json.dumps.
    encoder = json.JSONEncoder(default=default, ensure_ascii=False, allow_nan=False)

    def pack(obj):
        try:
            return encoder.encode(obj).encode("utf8", errors="surrogateescape")
        except (TypeError, ValueError):
            return stock(obj)  # it cleans the object (and warns), or raises, as it always did

    pack.__ipp_ext_stock__ = stock
    return pack


# The dates Jupyter sends: UTC, microseconds ('Z' from jupyter_client, '+00:00' from isoformat()).
_UTC_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(?:Z|\+00:00)\Z")


def _fast_parse_date(stock):
    """jupyter_client's ``parse_date``, without dateutil for the UTC dates Jupyter sends."""
    try:
        utc = stock("2000-01-01T00:00:00.000000Z").tzinfo  # dateutil's tzutc(), as the stock one gives
    except Exception:
        return None
    if utc is None:
        return None
    fromisoformat = datetime.datetime.fromisoformat
    match = _UTC_DATE.match

    def parse_date(s):
        if type(s) is str and match(s):
            try:
                return fromisoformat(s[:26]).replace(tzinfo=utc)
            except ValueError:
                pass  # not a real date (month 13): the stock parser says so
        return stock(s)

    parse_date.__ipp_ext_stock__ = stock
    return parse_date


def _outcome(func, arg):
    try:
        value = func(arg)
    except Exception as exc:
        return ("raised", type(exc))
    # Datetimes must agree on their tzinfo's type too, not only on the instant.
    return (value, type(getattr(value, "tzinfo", None)))


def _same_results(fast, stock, samples):
    """True if ``fast`` and ``stock`` agree on every sample (values, types, errors)."""
    return all(_outcome(fast, sample) == _outcome(stock, sample) for sample in samples)


_DATE_SAMPLES = (
    "2026-12-07T16:53:09.123456Z", "2026-12-07T16:53:09.123456+00:00", "2026-12-07T16:53:09.000001Z",
    "2026-12-07T16:53:09.123456+01:00", "2026-12-07T16:53:09Z", "2026-12-07T16:53:09.123Z",
    "2026-02-30T16:53:09.123456Z", "not a date", "", None, 7,
)
_PACK_SAMPLES = (
    {"msg_id": "a", "date": datetime.datetime(2026, 12, 7, 16, 53, 9, 123456, tzinfo=datetime.timezone.utc),
     "nested": [1, 2.5, None, True, {"k": "v"}], "text": "\u00e9\u2028\udc80 \"quoted\"\n"},
    {}, {"status": "ok", "execution_count": 3, "user_expressions": {}, "payload": []},
    {"bytes": b"\x00\xff", "tuple": (1, 2), "set": {3}}, {1: "int key"},
)


def _versions():
    try:
        import ipykernel
        import jupyter_client
    except ImportError:
        return ""
    return (f" (ipykernel {ipykernel.__version__}, jupyter_client {jupyter_client.__version__};"
            " the ipyparallel_ext engine helpers are tested with ipykernel 7)")


def _send_parameters(session_class):
    """Positions of ``Session.send``'s parameters (self excluded), by name."""
    try:
        names = list(inspect.signature(session_class.send).parameters)[1:]
    except (TypeError, ValueError):
        names = []
    positions = {name: i for i, name in enumerate(names)}
    for name in ("msg_or_type", "parent"):
        if name not in positions:
            raise IncompatibleKernel(
                f"{session_class.__module__}.{session_class.__qualname__}.send has no {name!r} parameter"
                + _versions())
    return positions


# ---------------------------------------------------------------------------
# Engine side: serving requests
# ---------------------------------------------------------------------------

# This kernel's KernelAdapter (set by install).
_adapter = None
_counts_lock = threading.Lock()


def _shell():
    if _adapter is not None:
        return _adapter.shell  # the kernel's shell, found at install (no import per request)
    from IPython import get_ipython

    return get_ipython()


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


def _check_pickler(name):
    """``use_dill()`` & co.: make sure this engine can use ``name`` (nothing is switched here)."""
    pickler_module(name)


def _request_pickler(spec):
    """The pickler a request asks for (absent: stdlib pickle).

    It travels with every request, so clients sharing an engine each get
    their results pickled their own way.
    """
    return spec.get("pickler", "pickle")


def _run_one(op, spec, frames):
    """Run one operation; return (metadata, frames) for its reply."""
    pickler = _request_pickler(spec)
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
        ok, value = _call(_check_pickler, spec["name"])
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


def _run_batch(spec, frames, parent):
    """Run several tasks carried by one request.

    Each task runs as if it were its own request (its msg_id, its spec), so
    its stdout, stderr, displays and published data reach the client tagged
    with the task's own id.
    """
    results = []
    out = []
    pos = 0
    header = parent["header"]
    ident = _adapter.parent_ident()
    try:
        for task in spec["tasks"]:
            nframes = task["nframes"]
            task_frames = frames[pos : pos + nframes]
            pos += nframes
            _adapter.set_parent(ident, dict(parent, header=dict(header, msg_id=task["id"]),
                                            metadata={"ipp_ext": task}))
            md, task_out = _run_one("apply", task, task_frames)
            md["nframes"] = len(task_out)
            results.append(md)
            out.extend(task_out)
            if md.get("ename") == "KeyboardInterrupt":
                break  # interrupted: the client re-queues the rest
    finally:
        _adapter.set_parent(ident, parent)
    return {"status": "ok", "tasks": results}, out


def handle(parent=None):
    """Serve the current execute_request, ``parent`` (called by its code, or by :func:`_serve`)."""
    if parent is None:
        parent = _adapter.parent()
    spec = parent["metadata"]["ipp_ext"]
    frames = parent.get("buffers") or []
    if spec["op"] == "batch":
        md, out = _run_batch(spec, frames, parent)
    else:
        md, out = _run_one(spec["op"], spec, frames)
    _pending[parent["header"]["msg_id"]] = (md, out)


class CellArguments(dict):
    """``do_execute`` arguments to change before the kernel runs a cell itself (see ``hook_execute``)."""


# A cell with these words may need the kernel's event loop (top-level await).
_MAY_AWAIT = re.compile(r"\b(?:await|async)\b")

# Positions of do_execute's parameters that CellArguments may change (ipykernel's signature).
_DO_EXECUTE_POSITIONS = {"code": 0, "silent": 1, "store_history": 2}


def _reply_content(error=None):
    content = {"status": "ok", "execution_count": _adapter.shell.execution_count,
               "user_expressions": {}, "payload": []}
    if error is not None:
        content.update(error, status="error", traceback=error["traceback"].splitlines())
    return content


def _serve(code):
    """``do_execute``'s first look at every cell: serve our own requests directly.

    A helper request's code is always exactly :data:`HANDLE_CODE`.  Running
    it through ``run_cell`` (input transformers, parsing, compiling,
    display hooks) costs more than the work itself.  A cell sent by
    ``execute()`` or ``%px`` (metadata ``ipp_ext`` with op ``execute``) runs
    here through ``shell.run_cell``, as the kernel would run it, unless it
    may need the kernel's event loop (top-level ``await``): then the kernel
    runs it.  Returns the reply content, None or :class:`CellArguments`
    (see :meth:`KernelAdapter.hook_execute`).  Every request's outputs are
    counted from here on.
    """
    parent = _adapter.parent()
    _output_counts[parent["header"]["msg_id"]] = 0
    if code == HANDLE_CODE:
        try:
            handle(parent)
        except BaseException as exc:  # noqa: BLE001 - reported to the client, kernel goes on
            return _reply_content(_format_error(type(exc), exc, exc.__traceback__))
        return _reply_content()
    spec = (parent.get("metadata") or {}).get("ipp_ext")
    if spec is None or spec.get("op") != "execute":
        return None  # someone else's cell
    # The request itself says silent (so the kernel does not echo it on
    # IOPub); the spec says how to run it.
    silent = bool(spec.get("silent", True))
    if _MAY_AWAIT.search(code):
        return CellArguments(silent=silent, store_history=not silent)
    try:
        result = _adapter.run_cell(code, silent)
    except BaseException as exc:  # noqa: BLE001 - an interrupt outside the user's code: still a reply
        return _reply_content(_format_error(type(exc), exc, exc.__traceback__))
    return _cell_reply(result)


def _cell_reply(result):
    """The execute_reply content for a cell's ExecutionResult, as ipykernel's ``do_execute`` makes it."""
    shell = _adapter.shell
    content = {"status": "ok", "execution_count": shell.execution_count - 1, "user_expressions": {},
               "payload": _adapter.take_payload()}
    if not result.success or getattr(shell, "_last_traceback_during_displayhook", False):
        error = result.error_before_exec if result.error_before_exec is not None else result.error_in_exec
        content.update(status="error", traceback=getattr(shell, "_last_traceback", None) or [],
                       ename=type(error).__name__, evalue=str(error))
    return content


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


def _edit_message(msg_or_type, parent):
    """Every message the kernel sends passes here (see :meth:`KernelAdapter.hook_send`).

    An execute_reply gets the request's result payload and its output
    count; an output of a request being served is counted.
    """
    if msg_or_type == "execute_reply":
        if not parent:
            return None
        msg_id = parent["header"]["msg_id"]
        with _counts_lock:
            n_outputs = _output_counts.pop(msg_id, None)
        metadata = {} if n_outputs is None else {"ipp_ext_outputs": n_outputs}
        extra = _pending.pop(msg_id, None) if _pending else None
        if extra is None:
            return (metadata, None) if metadata else None
        metadata["ipp_ext"] = extra[0]
        return metadata, extra[1]
    msg_id = _output_parent(msg_or_type, parent)
    if msg_id is not None:
        with _counts_lock:
            if msg_id in _output_counts:  # only requests being executed are counted
                _output_counts[msg_id] += 1
    return None


# ---------------------------------------------------------------------------
# Engine side: publish_data
# ---------------------------------------------------------------------------

DATAPUB_MODULE = "ipyparallel_ext.datapub"


def publish_data(data):
    """Publish ``data`` (a dict) to the client of the task running now.

    As ``ipyparallel.datapub.publish_data``: call it from a task, as often
    as you like; on the client, ``ar.data`` holds everything this engine
    published for that task, later values replacing earlier ones key by key.
    The values are pickled (protocol 5, large buffers as their own frames)
    with the pickler the request was sent with (stdlib pickle for code run
    by ``execute`` or ``%px``).
    """
    if not isinstance(data, dict):
        raise TypeError(f"publish_data takes a dict, not {type(data).__name__}")
    if _adapter is None:
        raise RuntimeError("publish_data works only in a task running on an engine"
                           " (a kernel with the ipyparallel_ext helpers installed)")
    parent = _adapter.parent()
    pickler = _request_pickler((parent.get("metadata") or {}).get("ipp_ext") or {})
    frames = dumps(data, pickler)
    # Sent later by the IOPub thread: copy the buffers now, or the task's next
    # change to an array would show up in what was published before it.
    frames[1:] = [bytes(f) for f in frames[1:]]
    _adapter.publish("data_message", {"keys": [str(k) for k in data], "pickler": pickler},
                     parent, frames, b"datapub")


def _register_datapub():
    """Make ``from ipyparallel_ext.datapub import publish_data`` work on this engine.

    Engines need nothing of ours installed, so the module is registered by
    name; ``from``-imports of a registered submodule do not import its
    package.  A real ``ipyparallel_ext.datapub`` (if installed here) does
    the same thing: it calls this module's :func:`publish_data`.
    """
    module = types.ModuleType(DATAPUB_MODULE, publish_data.__doc__)
    module.publish_data = publish_data
    sys.modules[DATAPUB_MODULE] = module


def install(options):
    """Hook the kernel so execute_replies carry our payloads (and serve them fast).

    Idempotent: installing again (a second client, or a newer version of
    this module) replaces the earlier install's hooks instead of stacking
    on them.
    """
    global _adapter
    adapter = KernelAdapter()
    _adapter = adapter
    adapter.hook_execute(_serve)
    adapter.hook_send(_edit_message)
    if options.get("skip_empty_flushes"):
        adapter.skip_empty_flushes()
    if options.get("skip_unused_log_records"):
        adapter.skip_unused_log_records()
    if options.get("defer_busy_wakeups"):
        adapter.defer_busy_wakeups(float(options["defer_busy_wakeups"]))
    adapter.speed_up_json()
    if "execute_sleep" in options:
        # The post-execute sleep exists to let output flush before the reply;
        # our engines' replies count their outputs, so it only adds latency.
        adapter.set_execute_sleep(options["execute_sleep"])
    _register_datapub()
    return VERSION
