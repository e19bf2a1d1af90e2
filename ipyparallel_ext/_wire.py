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
error) plus the result's frames as buffers.  The request's spec names the
pickler the client uses (``"pickler": "dill"``; absent means stdlib pickle),
and the engine unpickles the arguments and pickles the result with it.

Data a task publishes (``ipyparallel_ext.datapub.publish_data``) comes on
IOPub as ``data_message``s (content ``{"keys": [...], "pickler": ...}``, the
pickled dict as buffers), routed like other outputs by the parent msg_id.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import inspect
import itertools
import json
import sys
import threading
import types
import uuid
from datetime import datetime, timezone

import zmq

from . import _engine_code
from .error import SerializationError

# Engines know this module as ``_ipp_ext_engine``; functions pickled by value
# and References name it, so the client must resolve the name to the same
# code when pickling.
sys.modules.setdefault(_engine_code.MODULE_NAME, _engine_code)
# pickle names a function or class by its __module__: make the engine-side
# helpers (map_chunk, dependent, _rebuild_function, ...) travel as
# ``_ipp_ext_engine.<name>``, which every engine has, rather than as
# ``ipyparallel_ext._engine_code.<name>``, which engines need not have.
for _obj in list(vars(_engine_code).values()):
    if isinstance(_obj, (types.FunctionType, type)) and _obj.__module__ == _engine_code.__name__:
        _obj.__module__ = _engine_code.MODULE_NAME
del _obj

_SOURCE = inspect.getsource(_engine_code)
ENGINE_CODE_VERSION = hashlib.sha1(_SOURCE.encode()).hexdigest()[:12]
HANDLE_CODE = _engine_code.HANDLE_CODE
OUTPUT_TYPES = _engine_code.OUTPUT_TYPES

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


try:  # orjson is several times faster; jupyter_client uses it when present
    import orjson

    _json_dumps = orjson.dumps
    _json_loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    def _json_dumps(obj):
        return json.dumps(obj, default=str).encode()

    _json_loads = json.loads

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.4"
_REPLAY_MEMORY = 65536  # signatures remembered to reject replayed messages


class MessageCodec:
    """Signs, packs and checks Jupyter messages for one kernel (one HMAC key).

    The frame layout is the Jupyter protocol's::

        [idents..., DELIM, HMAC, header, parent_header, metadata, content, buffers...]

    The HMAC covers header, parent_header, metadata and content (not the
    buffers), as jupyter_client's Session does.  Cheaper than Session on the
    client's hot path: no date parsing, constant parts packed once.

    Parameters
    ----------
    key : bytes
        The kernel's HMAC key (empty: unsigned messages).
    signature_scheme : str
        ``'hmac-sha256'`` and the like.
    """

    def __init__(self, key: bytes, signature_scheme: str = "hmac-sha256", username: str = "ipyparallel_ext"):
        self.session_id = uuid.uuid4().hex
        self.username = username
        digest = signature_scheme.split("-", 1)[1] if "-" in signature_scheme else "sha256"
        self._auth = hmac.new(key, digestmod=digest) if key else None
        self._seen: set = set()
        self._seen_order: collections.deque = collections.deque()

    def sign(self, parts) -> bytes:
        if self._auth is None:
            return b""
        h = self._auth.copy()
        for part in parts:
            h.update(part)
        return h.hexdigest().encode()

    def header(self, msg_type: str, msg_id: str | None = None) -> dict:
        return {
            "msg_id": msg_id or uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": self.username,
            "session": self.session_id,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": PROTOCOL_VERSION,
        }

    def pack(self, msg_type: str, content, metadata=None, msg_id: str | None = None) -> list:
        """Frames of a signed message; ``content`` may be pre-packed bytes."""
        parts = [
            _json_dumps(self.header(msg_type, msg_id)),
            b"{}",
            _json_dumps(metadata or {}),
            content if isinstance(content, bytes) else _json_dumps(content),
        ]
        return [DELIM, self.sign(parts), *parts]

    def unpack(self, frames, parent_filter=None):
        """Check and decode a received message.

        Parameters
        ----------
        frames : list of zmq.Frame
            As received (``copy=False``).
        parent_filter : callable, optional
            Called with the parent msg_id; if it returns False the message is
            dropped before it is verified or decoded (it is not ours).

        Returns
        -------
        dict or None
            ``msg_type``, ``header``, ``parent_header``, ``metadata``,
            ``content``, ``buffers``; None if filtered out.

        Raises
        ------
        ValueError
            If the message is malformed, badly signed, or replayed.
        """
        for i, frame in enumerate(frames):
            if frame.bytes == DELIM:
                break
        else:
            raise ValueError("no <IDS|MSG> delimiter")
        parts = [f.bytes for f in frames[i + 1 : i + 6]]
        if len(parts) < 5:
            raise ValueError("message has fewer than 5 parts")
        signature, p_header, p_parent, p_metadata, p_content = parts
        parent = _json_loads(p_parent)
        if parent_filter is not None and not parent_filter(parent.get("msg_id")):
            return None
        if self._auth is not None:
            if not hmac.compare_digest(signature, self.sign(parts[1:])):
                raise ValueError("invalid signature")
            if signature in self._seen:
                raise ValueError("replayed message (duplicate signature)")
            self._seen.add(signature)
            self._seen_order.append(signature)
            if len(self._seen_order) > _REPLAY_MEMORY:
                self._seen.discard(self._seen_order.popleft())
        header = _json_loads(p_header)
        return {
            "msg_type": header.get("msg_type"),
            "header": header,
            "parent_header": parent,
            "metadata": _json_loads(p_metadata),
            "content": _json_loads(p_content),
            "buffers": [f.buffer for f in frames[i + 6 :]],
        }


# A plain int: ``zmq.SNDMORE | flags`` (what send_multipart does per frame) is an enum
# operation, several times the cost of the send itself on Python 3.11.
_SNDMORE = int(zmq.SNDMORE)


def send_message(socket, frames, track: bool = False):
    """Send ``frames`` as one multipart message, as ``send_multipart(frames, copy=False)`` does.

    Cheaper for the small frames of every request: flags are plain ints, and
    frames below the socket's copy threshold are sent by copy (zmq would copy
    them anyway, after wrapping each in a ``zmq.Frame``); larger buffers go
    without a copy.  With ``track`` it is ``send_multipart`` itself, whose
    MessageTracker it returns.
    """
    if track:
        return socket.send_multipart(frames, copy=False, track=True)
    send = socket.send
    threshold = socket.copy_threshold
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        small = (len(frame) if type(frame) is bytes else memoryview(frame).nbytes) < threshold
        send(frame, _SNDMORE if i < last else 0, copy=small)
    return None


_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count()


def new_msg_id() -> str:
    """A fresh message id: unique per process, without a system call.

    (uuid4 reads os.urandom, which releases the GIL and so hands it to the
    I/O thread on every request.)
    """
    return f"{_ID_PREFIX}_{next(_id_counter)}"


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


# The content of every helper request never changes: pack it once.
HANDLE_CONTENT = _json_dumps(request_content(HANDLE_CODE))


# ---------------------------------------------------------------------------
# Functions by value
# ---------------------------------------------------------------------------


class Reference:
    """A name (or expression) evaluated in the engine's namespace when a call arrives.

    ``dv.apply(f, ipp.Reference('a'))`` calls ``f`` with the engine's own
    ``a``; ``dv.apply(ipp.Reference('f'), 1)`` calls the engine's own ``f``.
    Dotted names (``'model.weights'``) are resolved attribute by attribute,
    other expressions (``'g[0]'``) evaluated there, as in ipyparallel.
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise TypeError(f"Reference needs a variable name, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"<Reference: {self.name!r}>"

    def __reduce__(self):
        return (_engine_code._resolve_reference, (self.name,))


# Functions travel by value through the default pickler, which lives with the engine
# code because engines pickle their results with it too (a closure pulled back).
_importable = _engine_code._importable
_function_reduction = _engine_code._function_reduction


def serialize(obj, pickler: str = "pickle", what: str = "value") -> list:
    """Pickle ``obj`` into frames, or raise :class:`SerializationError` naming ``what``."""
    try:
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



class PublishedData:
    """What an engine published (``publish_data``) for one request: ``ar.data``.

    The I/O thread only appends the received frames; they are unpickled
    when read, in the reader's thread, and merged as ipyparallel does (later
    keys replace earlier ones).
    """

    __slots__ = ("_received", "_read", "_merged", "_lock")

    def __init__(self):
        self._received: list = []  # (pickler, frames), appended by the I/O thread
        self._read = 0  # how many of them are merged
        self._merged: dict = {}
        self._lock = threading.Lock()  # between readers; the I/O thread never takes it

    def add(self, content: dict, frames) -> None:
        """One data_message arrived (I/O thread)."""
        self._received.append((content.get("pickler", "pickle"), list(frames)))

    def value(self) -> dict:
        """Everything published so far, merged into one dict (a copy)."""
        with self._lock:
            while self._read < len(self._received):
                pickler, frames = self._received[self._read]
                self._received[self._read] = None  # let the frames go
                self._read += 1
                self._merged.update(deserialize(frames, pickler, "published data"))
            return dict(self._merged)
