"""What users import as ``ipyparallel_ext.serialize`` (as ``ipyparallel.serialize``).

Our wire needs no "canning": payloads are pickle protocol 5, and functions
that cannot be imported on the engines (lambdas, closures, notebook
functions) are pickled by value.  So :func:`can` only wraps such functions
(the wrapper pickles exactly as the wire sends them) and :func:`uncan`
undoes it; every other object passes through unchanged.

:func:`use_dill`, :func:`use_cloudpickle` and :func:`use_pickle` choose how
this process pickles what it sends, as ipyparallel's do; the pickler travels
with each request, so the engines pickle the results with it too.
"""

from __future__ import annotations

import pickle
import types

from . import _engine_code, _wire
from ._wire import Reference as Reference

__all__ = [
    "PrePickled", "Reference", "can", "deserialize_object", "pack_apply_message", "serialize_object",
    "uncan", "unpack_apply_message", "use_cloudpickle", "use_dill", "use_pickle",
]

# The pickler of every Client that has not chosen its own (with view.use_dill() ...).
_process = {"pickler": "pickle"}


def _process_pickler() -> str:
    """The process-wide pickler chosen by :func:`use_dill` and friends ('pickle' by default)."""
    return _process["pickler"]


def _use(name: str) -> None:
    _engine_code.pickler_module(name)  # fails here, clearly, if it is not installed
    _process["pickler"] = name


def use_dill() -> None:
    """Pickle what this process sends with dill.

    Applies to every Client that has not chosen a pickler itself.  Each
    request names its pickler, so the engines (which need dill installed)
    unpickle it and pickle its result with dill; ``view.use_dill()`` chooses
    dill for one client and checks that its engines can load it.
    """
    _use("dill")


def use_cloudpickle() -> None:
    """Pickle what this process sends with cloudpickle (see :func:`use_dill`)."""
    _use("cloudpickle")


def use_pickle() -> None:
    """Back to the default: stdlib pickle, with non-importable functions sent by value."""
    _use("pickle")


# -- canning -------------------------------------------------------------------------------


class _CannedFunction:
    """A function that pickles by value, as the wire sends it (see :func:`can`)."""

    __slots__ = ("func",)

    def __init__(self, func):
        self.func = func

    def __reduce__(self):
        return _wire._function_reduction(self.func)

    def __repr__(self) -> str:
        return f"<canned {self.func.__qualname__}>"


def _map_containers(obj, leaf):
    """``obj`` with ``leaf`` applied inside lists, tuples, sets and dict values."""
    if type(obj) in (list, tuple, set, frozenset):
        return type(obj)(_map_containers(item, leaf) for item in obj)
    if type(obj) is dict:
        return {key: _map_containers(value, leaf) for key, value in obj.items()}
    return leaf(obj)


def can(obj):
    """``obj``, with its functions wrapped so that plain ``pickle`` sends them by value.

    Only functions that the engines could not import (lambdas, closures,
    notebook functions) are wrapped; the function's ``__main__`` globals are
    then looked up in the namespace it is unpickled into, as on the wire.
    Looks inside lists, tuples, sets and dict values; everything else is
    returned unchanged (protocol 5 pickles it as it is).
    """
    def leaf(value):
        if type(value) is types.FunctionType and not _wire._importable(value):
            return _CannedFunction(value)
        return value

    return _map_containers(obj, leaf)


def _rebind(func, g):
    """``func`` reading its globals from ``g`` (ipyparallel's ``uncan(f, g)``)."""
    new = types.FunctionType(func.__code__, g, func.__name__, func.__defaults__, func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__module__ = func.__module__
    new.__dict__.update(func.__dict__)
    return new


def uncan(obj, g=None):
    """Undo :func:`can`.

    Parameters
    ----------
    obj : object
        What :func:`can` returned, possibly after a pickle round trip.
    g : dict, optional
        A namespace for interactive functions (defined in ``__main__`` or
        ``@interactive``): they then read their globals from ``g``, as on an
        engine they read the engine's namespace.  Reference objects are
        looked up in ``g``.
    """
    def leaf(value):
        if isinstance(value, _CannedFunction):
            value = value.func
        if g is not None:
            if type(value) is types.FunctionType and value.__module__ in ("__main__", "__mp_main__"):
                value = _rebind(value, g)
            elif isinstance(value, Reference):
                value = _engine_code._resolve_reference(value.name, g, "in the namespace given")
        return value

    return _map_containers(obj, leaf)


# -- whole payloads ------------------------------------------------------------------------


def serialize_object(obj) -> list:
    """Pickle ``obj`` as the wire does: pickle bytes, then out-of-band buffers.

    The inverse is :func:`deserialize_object`.  (ipyparallel's size
    thresholds do not apply: protocol 5 sends every large buffer out of band.)
    """
    return _wire.serialize(obj, _process_pickler())


def deserialize_object(buffers, g=None):
    """Rebuild an object from :func:`serialize_object`'s buffers.

    Returns ``(obj, remaining_buffers)`` as ipyparallel does; every buffer
    belongs to the one object, so the remainder is always empty.  ``g`` is
    as for :func:`uncan`.
    """
    return uncan(_wire.deserialize(list(buffers), _process_pickler(), "object"), g), []


def pack_apply_message(f, args, kwargs) -> list:
    """The buffers of a call ``f(*args, **kwargs)``, as a view sends it to an engine."""
    return _wire.serialize_call(f, args, kwargs, _process_pickler())


def unpack_apply_message(bufs, g=None):
    """``(f, args, kwargs)`` from :func:`pack_apply_message`'s buffers (``g`` as for :func:`uncan`)."""
    f, args, kwargs = _wire.deserialize(list(bufs), _process_pickler(), "call")
    return uncan(f, g), list(uncan(list(args), g)), uncan(kwargs, g)


class PrePickled:
    """An object pickled once, up front, and sent as those bytes every time.

    Wrap a large argument that goes into many calls: ``big =
    PrePickled(array)``; then ``view.apply(f, big)`` sends the stored
    bytes, and the engine unpickles them into the original object.
    """

    def __init__(self, obj):
        self.pickler = _process_pickler()
        frames = _wire.serialize(obj, self.pickler, type(obj).__name__)
        self.buffers = [frames[0], *(pickle.PickleBuffer(f) for f in frames[1:])]

    def __reduce__(self):
        return (_engine_code.loads, (self.buffers, self.pickler))
