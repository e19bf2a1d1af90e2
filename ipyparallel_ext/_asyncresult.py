"""AsyncResult and AsyncMapResult: the futures that View methods return.

An AsyncResult is a :class:`concurrent.futures.Future` over one or more
:class:`~._record.MessageRecord`\\ s.  The I/O thread resolves it when its
last record finishes; the result is unpickled later, in the thread that asks
for it.  ``await ar``, ``asyncio.wrap_future(ar)`` and
``concurrent.futures.wait`` all work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

from . import _display
from .error import composite_error

_FOREVER = None


def _deadline_timeout(timeout):
    """ipyparallel treats None and negative timeouts as 'wait forever'."""
    if timeout is None or timeout < 0:
        return _FOREVER
    return timeout


class AsyncResult(concurrent.futures.Future):
    """The pending result of work sent to one or more engines.

    Parameters
    ----------
    client : Client
        The client that sent the work (used by :meth:`abort`).
    records : list of MessageRecord
        One record per request.
    fname : str
        Name of the operation, for error messages.
    single : bool
        True when the work went to one engine through a single-engine view:
        then ``get()`` returns the value rather than a one-element list,
        and errors are raised as they are rather than in a CompositeError.
    return_exceptions : bool
        Put errors in the result list instead of raising them.
    postprocess : callable, optional
        Applied to each record's value (e.g. unpacking a pull of one name).
    join : callable, optional
        Joins the list of values into one (e.g. gather's concatenation).
    """

    def __init__(self, client, records, fname="unknown", single=False, return_exceptions=False,
                 postprocess=None, join=None):
        super().__init__()
        self._postprocess = postprocess
        self._join = join
        self._client = client
        self._records = list(records)
        self._fname = fname
        self._single_result = single
        self._return_exceptions = return_exceptions
        self._remaining = len(self._records)
        self._count_lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._decoded = None
        self.owner = True
        if not self._records:
            self.set_result(None)
        for record in self._records:
            record.add_done_listener(self._record_done)

    # -- completion (I/O thread) --------------------------------------------------

    def _record_done(self, record) -> None:
        with self._count_lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._resolve()

    def _resolve(self) -> None:
        errors = [r.error for r in self._records if r.error is not None]
        if not errors or self._return_exceptions:
            self.set_result(None)
        elif self._single_result and len(errors) == 1:
            self.set_exception(errors[0])
        else:
            self.set_exception(composite_error(errors, self._fname))

    # -- results (any thread) -------------------------------------------------------

    def result(self, timeout=None):
        """The value(s), unpickled on first use; raises the remote error if any."""
        super().result(_deadline_timeout(timeout))
        with self._decode_lock:
            if self._decoded is None:
                self._decoded = (self._collect(),)
        return self._decoded[0]

    def _values(self) -> list:
        values = [r.value() for r in self._records]
        if self._postprocess is not None:
            values = [v if isinstance(v, BaseException) else self._postprocess(v) for v in values]
        return values

    def _collect(self):
        values = self._values()
        if self._join is not None:
            return self._join(values)
        return values[0] if self._single_result else values

    def get(self, timeout=None):
        """Wait for the result and return it.

        Raises
        ------
        TimeoutError
            If it is not ready within ``timeout`` seconds.
        RemoteError, CompositeError, EngineError, TaskAborted
            If the work failed.
        """
        try:
            return self.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self._fname} result not ready after {timeout} s") from None

    def wait(self, timeout=None) -> bool:
        """Wait until done (or ``timeout`` seconds); return :meth:`ready`."""
        concurrent.futures.wait([self], timeout=_deadline_timeout(timeout))
        return self.done()

    def ready(self) -> bool:
        """True when every request has finished."""
        return self.done()

    def successful(self) -> bool:
        """True if done and nothing failed.

        Raises
        ------
        ValueError
            If the result is not ready yet (as in ipyparallel).
        """
        if not self.done():
            raise ValueError(f"{self._fname} is not ready")
        return self.exception() is None and not any(r.error for r in self._records)

    def get_dict(self, timeout=None) -> dict:
        """Results keyed by engine id (each engine may appear once)."""
        values = self.get(timeout)
        if self._single_result:
            values = [values]
        ids = [r.engine_id for r in self._records]
        if len(set(ids)) != len(ids):
            raise ValueError("cannot make a dict: some engines ran more than one of these requests")
        return dict(zip(ids, values))

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def abort(self) -> None:
        """Abort the requests that have not started yet (they raise TaskAborted)."""
        self._client.abort(self)

    # -- what is known about the requests --------------------------------------------

    @property
    def msg_ids(self) -> list:
        return [r.msg_id for r in self._records]

    def _per_record(self, values):
        return values[0] if self._single_result else values

    def _outputs_done(self, timeout=5.0) -> None:
        """Wait (briefly) until the outputs of finished requests have arrived."""
        deadline = time.monotonic() + timeout
        for record in self._records:
            if record.state == "done":
                record.outputs_ready.wait(max(0.0, deadline - time.monotonic()))

    def wait_for_output(self, timeout=-1) -> bool:
        """Wait until done and every output (stdout, displays) has arrived; True if so."""
        timeout = _deadline_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.wait(timeout):
            return False
        for record in self._records:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not record.outputs_ready.wait(left):
                return False
        return True

    @property
    def metadata(self):
        self._outputs_done()
        return self._per_record([r.metadata for r in self._records])

    def __getattr__(self, key):
        # ar.stdout, ar.engine_id, ar.started ...: metadata fields, as in ipyparallel.
        if key.startswith("_") or key not in _METADATA_KEYS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        if key in _OUTPUT_KEYS:
            self._outputs_done()
        return self._per_record([r.metadata[key] for r in self._records])

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.get()[key] if not self._single_result else [self.get()][key]

    def __len__(self) -> int:
        return 1 if self._single_result else len(self._records)

    def __iter__(self):
        value = self.get()
        yield from ([value] if self._single_result else value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | _METADATA_KEYS)

    @property
    def sent(self) -> bool:
        return all(r.state != "pending" for r in self._records)

    def wait_for_send(self, timeout=None) -> bool:
        """Wait until every request is handed to zmq (and, with ``track=True``, zmq is done with its buffers)."""
        deadline = None if _deadline_timeout(timeout) is None else time.monotonic() + timeout
        while not self.sent:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("requests not sent yet")
            time.sleep(0.001)
        for record in self._records:
            tracker = record.tracker
            if tracker is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                tracker.wait(left)
        return True

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until completion, when done)."""
        start = min(r.submitted for r in self._records) if self._records else time.time()
        ends = [r.received for r in self._records]
        end = max(ends) if self.done() and all(ends) else time.time()
        return end - start

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last reply."""
        self.wait()
        return self.elapsed

    @property
    def serial_time(self) -> float:
        """Engine time: the sum of every request's run time."""
        self.wait()
        return sum((r.completed or 0) - (r.started or r.completed or 0) for r in self._records)

    @property
    def progress(self) -> int:
        """How many requests have finished."""
        return sum(r.state == "done" for r in self._records)

    def wait_interactive(self, interval=0.1, timeout=None, widget=None, return_when=None):
        """Wait with a progress bar (a widget in notebooks, text in a terminal)."""
        _display.progress_wait(self, interval, timeout, widget)

    def display_outputs(self, groupby="type", result_only=False) -> None:
        """Show stdout, stderr, displays and results, labelled by engine, as ipyparallel does."""
        self._outputs_done()
        _display.display_outputs(self, groupby=groupby, result_only=result_only)

    def __repr__(self) -> str:
        state = "finished" if self.done() else "pending"
        return f"<{type(self).__name__}({self._fname}): {state}>"


_OUTPUT_KEYS = {"stdout", "stderr", "outputs", "execute_result", "execute_input"}
_METADATA_KEYS = _OUTPUT_KEYS | {
    "msg_id", "engine_id", "submitted", "started", "completed", "received", "status", "error",
}


class AsyncMapResult(AsyncResult):
    """The result of a map: one flat list, iterable as chunks arrive.

    Parameters
    ----------
    chunk_sizes : list of int
        How many elements each record's result holds.
    ordered : bool
        Iterate in input order (True) or in completion order.
    """

    def __init__(self, client, records, fname="map", chunk_sizes=None, ordered=True,
                 return_exceptions=False):
        self._chunk_sizes = chunk_sizes or [1] * len(records)
        self._ordered = ordered
        self._arrivals = []
        self._arrived = threading.Condition()
        super().__init__(client, records, fname, single=False, return_exceptions=return_exceptions)

    def _record_done(self, record) -> None:
        with self._arrived:
            self._arrivals.append(record)
            self._arrived.notify_all()
        super()._record_done(record)

    def _collect(self):
        parts = self._values()
        flat = []
        for part, size in zip(parts, self._chunk_sizes):
            flat.extend(_chunk_items(part, size))
        return flat

    def __len__(self) -> int:
        return sum(self._chunk_sizes)

    def __iter__(self):
        """Yield element results as their chunks finish; errors raise when reached."""
        order = self._records if self._ordered else None
        seen = 0
        index = {id(r): i for i, r in enumerate(self._records)}
        while seen < len(self._records):
            if order is not None:
                record = order[seen]
                with self._arrived:
                    self._arrived.wait_for(lambda: record.state == "done")
            else:
                with self._arrived:
                    while len(self._arrivals) <= seen:
                        self._arrived.wait(0.1)
                    record = self._arrivals[seen]
            seen += 1
            if record.error is not None and not self._return_exceptions:
                raise record.error
            yield from _chunk_items(record.value(), self._chunk_sizes[index[id(record)]])


def _chunk_items(part, size):
    """A chunk's result as a list of its element results."""
    if isinstance(part, BaseException):
        return [part] * size
    return list(part)
