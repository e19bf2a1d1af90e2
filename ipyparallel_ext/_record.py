"""MessageRecord: everything known about one request (or one task of a batch).

The I/O thread fills a record in as its reply and outputs arrive; user
threads read it through :class:`~ipyparallel_ext.AsyncResult`.  A record
finishes exactly once (:meth:`finish`), with a result payload or an error.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from . import _wire
from .error import RemoteError

log = logging.getLogger("ipyparallel_ext")

# States of a record.
PENDING = "pending"  # queued in the client, not sent
SENT = "sent"  # on its way to, or running on, an engine
DONE = "done"


# Guards the hand-over between add_done_listener (any thread) and finish
# (I/O thread); one lock for all records, held for a few instructions.
_listeners_lock = threading.Lock()

# Guard the one-time unpickling in value(): records are many, so they share
# a few locks picked by identity rather than carrying one each.  Reentrant:
# unpickling one record may read another that hashes to the same lock.
_value_locks = tuple(threading.RLock() for _ in range(64))


def _timestamp(seconds: float | None):
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


class MessageRecord:
    """One unit of work and what came back for it.

    Parameters
    ----------
    op : str
        ``'apply'``, ``'execute'``, ``'push'``, ``'pull'``, ``'clear'``, ``'pickler'``.
    frames : list
        Payload frames (pickle bytes and out-of-band buffers).
    spec : dict
        JSON-able description of the operation, sent as ``metadata["ipp_ext"]``.
    """

    __slots__ = (
        "msg_id", "op", "frames", "spec", "code", "engine_id", "state",
        "submitted", "sent", "started", "completed", "received",
        "status", "error", "result_frames", "pickler",
        "stdout", "stderr", "outputs", "execute_result", "execute_input",
        "data", "outputs_ready", "outputs_seen", "outputs_expected", "_listeners", "_output_listeners", "_value",
        "task", "track", "tracker", "label", "__weakref__",
    )

    def __init__(self, msg_id, op, frames=(), spec=None, code=None, pickler="pickle"):
        self.msg_id = msg_id
        self.op = op
        self.frames = list(frames)
        self.spec = spec if spec is not None else {"op": op}
        if pickler != "pickle":  # the engine unpickles the payload and pickles the result with it
            self.spec = dict(self.spec, pickler=pickler)
        self.code = code
        self.pickler = pickler
        self.engine_id = None
        self.state = PENDING
        self.submitted = time.time()
        self.sent = self.started = self.completed = self.received = None
        self.status = None
        self.error = None
        self.result_frames = None
        self.stdout = ""
        self.stderr = ""
        self.outputs = []
        self.execute_result = None
        self.execute_input = None
        self.data = None  # what the engine published (publish_data): a _wire.PublishedData
        self.outputs_ready = threading.Event()
        self.outputs_seen = 0  # outputs received
        self.outputs_expected = None  # outputs the engine says it published (from the reply)
        self._listeners = []
        self._output_listeners = []
        self._value = None
        self.task = None  # load-balancing bookkeeping, owned by the scheduler
        self.label = None  # the view's ``label`` flag: the user's name for the request
        self.track = False  # keep zmq's MessageTracker for the send (``track=True``)
        self.tracker = None

    def add_done_listener(self, fn) -> None:
        """Call ``fn(record)`` once the record is done (at once, here, if it is).

        Safe from any thread: a listener added while the I/O thread finishes
        the record is called exactly once, by one of the two.
        """
        with _listeners_lock:
            if self.state != DONE:
                self._listeners.append(fn)
                return
        fn(self)

    # -- I/O thread -----------------------------------------------------------

    def add_output_listener(self, fn) -> None:
        """Call ``fn(record, kind, content)`` for each output as it arrives (I/O thread)."""
        self._output_listeners.append(fn)

    def finish(self, status: str, error: BaseException | None = None, result_frames=None,
               started=None, completed=None) -> bool:
        """Complete the record; returns False if it was already done."""
        if self.state == DONE:
            return False
        if self.state == PENDING:  # never sent (aborted, engine gone): no output will come
            self.outputs_ready.set()
        self.status = status
        self.error = error
        self.result_frames = result_frames
        self.started = started if started is not None else self.started
        self.completed = completed
        self.received = time.time()
        self.frames = []  # let payload memory go as soon as possible
        with _listeners_lock:
            self.state = DONE
            listeners, self._listeners = self._listeners, []
        for fn in listeners:
            # One failing listener must not stop the others, nor the caller
            # (the engine connection, which still has to send the next request).
            try:
                fn(self)
            except Exception:
                log.exception("error in a completion listener of request %s", self.msg_id)
        return True

    def add_output(self, kind: str, content: dict) -> None:
        """Record one IOPub output of this request."""
        if kind != "execute_input":  # the engine counts outputs, not the echo of the input
            self.outputs_seen += 1
        if kind == "stream":
            if content.get("name") == "stderr":
                self.stderr += content.get("text", "")
            else:
                self.stdout += content.get("text", "")
        elif kind == "execute_result":
            self.execute_result = content
        elif kind == "execute_input":
            self.execute_input = content.get("code")
        elif kind in ("display_data", "update_display_data", "clear_output", "error"):
            self.outputs.append({"type": kind, **content})
        for fn in self._output_listeners:
            fn(self, kind, content)

    def add_data(self, content: dict, buffers) -> None:
        """Record one ``data_message`` (``publish_data`` on the engine) of this request."""
        if self.data is None:
            self.data = _wire.PublishedData()
        self.data.add(content, buffers)
        self.outputs_seen += 1

    # -- any thread -----------------------------------------------------------

    def value(self):
        """The result object, unpickled once, on first use, in the caller's thread."""
        if self.error is not None:
            return self.error
        cached = self._value
        if cached is None:
            # Two threads may ask at once (ar.get() beside rc.results): only one
            # unpickles and frees the frames; the other waits and reads its value.
            with _value_locks[id(self) >> 4 & 63]:
                cached = self._value
                if cached is None:
                    frames = self.result_frames
                    cached = (_wire.deserialize(frames, self.pickler) if frames else None,)
                    self._value = cached
                    self.result_frames = None
        return cached[0]

    @property
    def metadata(self) -> dict:
        """ipyparallel-style metadata of this request."""
        return {
            "msg_id": self.msg_id,
            "engine_id": self.engine_id,
            "submitted": _timestamp(self.submitted),
            "started": _timestamp(self.started),
            "completed": _timestamp(self.completed),
            "received": _timestamp(self.received),
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "outputs": self.outputs,
            "execute_result": self.execute_result,
            "execute_input": self.execute_input,
            "data": {} if self.data is None else self.data.value(),
            "error": self.error if isinstance(self.error, RemoteError) else None,
            "label": self.label,
        }
