"""What travels on the wire: payload pickling and the requests we build.

Client side of the format defined in :mod:`._engine_code` (which the
engines run).  Everything that turns user objects into message frames, or
frames back into objects, lives here.

A request is an ordinary ``execute_request``::

    header, parent_header, metadata = {"ipp_ext": {"op": ..., ...}},
    content = {"code": HANDLE_CODE, "silent": True, "store_history": False,
               "stop_on_error": False, ...},
    buffers = [pickle bytes, out-of-band buffer, ...]

and its ``execute_reply`` carries ``metadata["ipp_ext"]`` (status, timing,
error) plus the result's frames as buffers.
"""

from __future__ import annotations

import hashlib
import inspect
import marshal
import pickle
import sys
import types

from . import _engine_code
from .error import SerializationError

# Engines know this module as ``_ipp_ext_engine``; functions pickled by value
# and References name it, so the client must resolve the name to the same
# code when pickling.
sys.modules.setdefault(_engine_code.MODULE_NAME, _engine_code)

_SOURCE = inspect.getsource(_engine_code)
ENGINE_CODE_VERSION = hashlib.sha1(_SOURCE.encode()).hexdigest()[:12]
HANDLE_CODE = f"__import__({_engine_code.MODULE_NAME!r}).handle()"

dumps = _engine_code.dumps
loads = _engine_code.loads

_BOOT = """
import sys, types
module = sys.modules.get(NAME)
if getattr(module, "VERSION", None) != VERSION:
    module = types.ModuleType(NAME)
    exec(compile(SOURCE, "<ipyparallel_ext engine helpers>", "exec"), module.__dict__)
    module.VERSION = VERSION
    sys.modules[NAME] = module
module.install(OPTIONS)
"""


def install_code(options: dict) -> str:
    """Code for the ``execute_request`` that installs the engine helpers.

    Safe to send twice: an engine that already runs this version keeps its
    module and only re-applies ``options``.  Runs in a throwaway namespace so
    the user's namespace on the engine is untouched.
    """
    names = {
        "NAME": _engine_code.MODULE_NAME,
        "VERSION": ENGINE_CODE_VERSION,
        "SOURCE": _SOURCE,
        "OPTIONS": options,
    }
    return f"exec({_BOOT!r}, {{{', '.join(f'{k!r}: {v!r}' for k, v in names.items())}}})"


def request_content(code: str, silent: bool = True) -> dict:
    """The content of an execute_request.

    ``stop_on_error`` is off: one failed request must not make the kernel
    abort the ones queued behind it.
    """
    return {
        "code": code,
        "silent": silent,
        "store_history": not silent,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": False,
    }


# ---------------------------------------------------------------------------
# Functions by value
# ---------------------------------------------------------------------------


class Reference:
    """A name to look up in the engine's namespace when a call arrives.

    ``dv.apply(f, ipp.Reference('a'))`` calls ``f`` with the engine's own
    ``a``.  Dotted names (``'model.weights'``) are resolved attribute by
    attribute.
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise TypeError(f"Reference needs a variable name, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"<Reference: {self.name!r}>"

    def __reduce__(self):
        return (_engine_code._resolve_reference, (self.name,))


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
    """Reduce a function that is not importable on the engines to its parts.

    Functions of ``__main__`` (notebook cells, scripts, ``@interactive``) run
    against the engine's namespace, as in ipyparallel; the modules they use
    are sent along and bound there if the engine lacks them.  Other
    functions (lambdas, closures, nested functions) carry the globals they
    use by value.
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
    return (_engine_code._rebuild_function, args)


class _Pickler(pickle.Pickler):
    """The default pickler: stdlib pickle, plus functions by value."""

    def reducer_override(self, obj):
        if type(obj) is types.FunctionType and not _importable(obj):
            return _function_reduction(obj)
        if type(obj) is types.ModuleType:
            return (__import__, (obj.__name__, None, None, ["__name__"]))
        return NotImplemented


def serialize(obj, pickler: str = "pickle", what: str = "value") -> list:
    """Pickle ``obj`` into frames, or raise :class:`SerializationError` naming ``what``."""
    try:
        if pickler == "pickle":
            return dumps(obj, pickler_class=_Pickler)
        return dumps(obj, pickler)
    except Exception as exc:
        raise SerializationError(f"cannot send {what}: {type(exc).__name__}: {exc}") from exc


def serialize_call(func, args, kwargs, pickler: str = "pickle") -> list:
    """Frames for one ``apply``; a failure names the argument at fault."""
    try:
        return serialize((func, tuple(args), dict(kwargs)), pickler, "the call")
    except SerializationError as exc:
        whole = exc
    # Find the culprit so the message says which argument to fix.
    serialize(func, pickler, f"function {getattr(func, '__name__', func)!r}")
    for i, arg in enumerate(args):
        serialize(arg, pickler, f"argument {i} ({type(arg).__name__})")
    for key, value in kwargs.items():
        serialize(value, pickler, f"keyword argument {key!r} ({type(value).__name__})")
    raise whole


def deserialize(frames, pickler: str = "pickle", what: str = "result"):
    """Unpickle frames from an engine, with a clear error if that fails."""
    try:
        return loads(frames, pickler)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle {what}: {type(exc).__name__}: {exc}") from exc


def pickled_size(frames) -> int:
    """Bytes a list of frames occupies on the wire."""
    return sum(memoryview(f).nbytes for f in frames)

