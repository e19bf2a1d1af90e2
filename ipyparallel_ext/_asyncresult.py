"""AsyncResult and AsyncMapResult: the futures that View methods return.

An AsyncResult is a :class:`concurrent.futures.Future` over one or more
:class:`~._record.MessageRecord`\\ s.  Completion and waiting are kept apart,
as in :mod:`concurrent.futures`::

    I/O thread                                   any other thread
    ----------                                   ----------------
    reply ─▶ record.finish ─▶ _record_done       get() / result() / wait()
             (last record) ─▶ _resolve:            wait, then unpickle the
             the ONLY place that completes         result here, once
             the future (set_result/exception,     (never on the I/O thread)
             or cancel after an abort)
                    │
                    ├─▶ our own quick listeners (_add_done_listener), here
                    └─▶ user callbacks (add_done_callback) ─▶ the callback
                        thread (:mod:`._callbacks`), never the I/O thread

``set_result``/``set_exception`` are fenced off: a caller cannot complete
(or break) a result that the engines will complete.  :meth:`cancel` follows
the Future contract: it aborts work still queued in the client and succeeds
only if all of it was; running work is not cancelled.  Waiting for a result
on the I/O thread (in a record listener) could only deadlock, so it raises
:class:`~.error.DeadlockError`.  ``await ar``, ``asyncio.wrap_future(ar)``
and ``concurrent.futures.wait`` all work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION

from . import _callbacks
from ._record import DONE, PENDING
from ._requestinfo import RequestInfo, deadline_timeout
from .error import DeadlockError, InvalidStateError, composite_error

_Future = concurrent.futures.Future


def _fenced(method: str):
    raise InvalidStateError(
        f"AsyncResult.{method}: an AsyncResult is completed by its client when the engines reply;"
        " it cannot be completed from outside (use cancel() or abort() to drop queued work)")


class AsyncResult(RequestInfo, _Future):
    """The pending result of work sent to one or more engines.

    Parameters
    ----------
    client : Client
        The client that sent the work (used by :meth:`abort` and :meth:`cancel`).
    records : list of MessageRecord
        One record per request.
    fname : str
        Name of the operation, for error messages.
    single : bool
        True when the work went to one engine through a single-engine view:
        then ``get()`` returns the value rather than a one-element list,
        and errors are raised as they are rather than in a CompositeError.
    return_exceptions : bool
        Put errors in the result list instead of raising them (the default
        of :meth:`get`'s ``return_exceptions``).
    postprocess : callable, optional
        Applied to each record's value (e.g. unpacking a pull of one name).
    join : callable, optional
        Joins the list of values into one (e.g. gather's concatenation).
    """

    owner = True  # ipyparallel's flag; results stay in ``client.results`` until purged
    _chunk_sizes = None  # elements per record (maps); None: one each

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
        self._decoded = None  # each record's value, unpickled once
        self._assembled = None  # (the result,) as get() returns it
        self._cancelling = False
        self._parts = None  # split(), made once
        self._live = None  # (LiveOutput, thread) inside stream_output()
        if not self._records:
            _Future.set_result(self, None)
        for record in self._records:
            record.add_done_listener(self._record_done)

    # -- completion: I/O thread (or the constructing thread, for records done already) ----

    def _record_done(self, record) -> None:
        with self._count_lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._resolve()

    def _resolve(self) -> None:
        """Complete the future; runs once, when the last record is done."""
        records = self._records
        if self._cancelling and all(r.status == "aborted" for r in records):
            # cancel() aborted every request before it was sent: a cancelled Future.
            _Future.cancel(self)
            _Future.set_running_or_notify_cancel(self)  # wakes concurrent.futures.wait()
            return
        errors = [r.error for r in records if r.error is not None]
        if not errors or self._return_exceptions:
            _Future.set_result(self, None)
        elif self._single_result and len(errors) == 1:
            _Future.set_exception(self, errors[0])
        else:
            _Future.set_exception(self, composite_error(errors, self._fname))

    def set_result(self, result):
        """Fenced: only the client completes an AsyncResult (raises InvalidStateError)."""
        _fenced("set_result")

    def set_exception(self, exception):
        """Fenced: only the client completes an AsyncResult (raises InvalidStateError)."""
        _fenced("set_exception")

    def set_running_or_notify_cancel(self):
        """Fenced: only the client changes an AsyncResult's state (raises InvalidStateError)."""
        _fenced("set_running_or_notify_cancel")

    def _add_done_listener(self, fn) -> None:
        """Call ``fn(self)`` when done, on the completing thread (the I/O thread).

        For the package's own quick, non-blocking bookkeeping (imap, live
        output); user callables go through :meth:`add_done_callback`.
        """
        _Future.add_done_callback(self, fn)

    def add_done_callback(self, fn) -> None:
        """Call ``fn(self)`` when done, on the callback thread (never on the I/O thread).

        If the result is done already, ``fn`` is called at once in this
        thread, as :class:`concurrent.futures.Future` does.  Callbacks may
        wait for other results (``other.get()``).
        """
        if self.done() and not self._on_io_thread():
            _Future.add_done_callback(self, fn)
        else:
            _Future.add_done_callback(self, lambda ar: _callbacks.call_soon(fn, ar))

    def cancel(self) -> bool:
        """Abort the requests still queued in the client; True if that was all of them.

        As :meth:`concurrent.futures.Future.cancel`: work already sent to an
        engine is not stopped, and then this returns False (the result
        arrives as usual; queued requests of the same result are aborted and
        raise :class:`TaskAborted`).  Use :meth:`Client.interrupt` or a
        ``time_limit`` to stop running work.
        """
        if self.done():
            return self.cancelled()
        queued = [r for r in self._records if r.state == PENDING]
        if not queued or self._client is None:
            return False
        self._cancelling = len(queued) == len(self._records)
        self._client.abort(self)  # on the I/O thread, which then resolves us (see _resolve)
        return self.cancelled()

    # -- waiting (any thread but the I/O thread) -------------------------------------------------

    def _on_io_thread(self) -> bool:
        loop = getattr(self._client, "io_loop", None)
        return loop is not None and loop.in_loop()

    def _check_may_block(self, what="the result") -> None:
        if self._on_io_thread():
            raise DeadlockError(
                f"waiting for {what} of {self._fname} on the ipyparallel_ext I/O thread (in a record"
                " listener?) could only deadlock: that thread delivers results. Wait in another"
                " thread, or use add_done_callback")

    def _wait_done(self, timeout) -> bool:
        """Wait until done (``timeout``: None or negative waits for ever); True if done."""
        if self.done():
            return True
        timeout = deadline_timeout(timeout)
        if timeout != 0:
            self._check_may_block()
        live = self._live
        if live is not None and live[1] is threading.current_thread():
            return live[0].wait(-1, timeout=timeout)  # shows outputs while it waits
        try:
            _Future.exception(self, timeout)  # waits on the Future's own condition: cheap
        except concurrent.futures.CancelledError:
            pass
        except concurrent.futures.TimeoutError:
            return False
        return True

    def result(self, timeout=None):
        """The value(s), unpickled on first use; raises the remote error if any."""
        if not self._wait_done(timeout):
            raise concurrent.futures.TimeoutError()
        _Future.result(self, 0)  # raises the error, or CancelledError
        with self._decode_lock:
            if self._assembled is None:
                self._assembled = (self._assemble(self._values_locked()),)
            return self._assembled[0]

    def exception(self, timeout=None):
        """As :meth:`concurrent.futures.Future.exception` (raises DeadlockError on the I/O thread)."""
        if not self.done():
            self._check_may_block()
        return super().exception(timeout)

    def _values_locked(self) -> list:
        """Each record's value, or its error if it failed (caller holds ``_decode_lock``)."""
        if self._decoded is None:
            values = [r.value() for r in self._records]
            if self._postprocess is not None:
                values = [v if isinstance(v, BaseException) else self._postprocess(v) for v in values]
            self._decoded = values
        return self._decoded

    def _assemble(self, values):
        """The result as get() returns it, from each record's value."""
        if self._join is not None:
            if any(isinstance(v, BaseException) for v in values):
                return _flatten(values)  # with errors in place, as ipyparallel does
            return self._join(values)
        return values[0] if self._single_result else values

    def get(self, timeout=None, return_exceptions=None, return_when=None):
        """Wait for the result and return it.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait; None or negative waits until done.
        return_exceptions : bool, optional
            Return errors in place of the values that failed, instead of
            raising them.  Default: as the AsyncResult was made.
        return_when : {None, ALL_COMPLETED, FIRST_EXCEPTION}
            With ``FIRST_EXCEPTION`` the first failure is raised (returned)
            at once, without waiting for the other requests.
            ``FIRST_COMPLETED`` is not supported; it warns and waits for all,
            as in ipyparallel.

        Raises
        ------
        TimeoutError
            If it is not ready within ``timeout`` seconds.
        RemoteError, CompositeError, EngineError, TaskAborted
            If the work failed.
        """
        if return_when == FIRST_COMPLETED:
            warnings.warn("Ignoring unsupported AsyncResult.get(return_when=FIRST_COMPLETED)",
                          UserWarning, stacklevel=2)
        if return_exceptions is None:
            return_exceptions = self._return_exceptions
        if return_when == FIRST_EXCEPTION and not self.done():
            done, pending = self.wait(timeout, return_when=FIRST_EXCEPTION)
            failed = [part for part in done if part._failed()]
            if pending and failed:
                return failed[0].get(0, return_exceptions)
        try:
            if not return_exceptions:
                return self.result(timeout)
            if not self._wait_done(timeout):
                raise concurrent.futures.TimeoutError()
            if self.cancelled():
                raise concurrent.futures.CancelledError()
            with self._decode_lock:
                return self._assemble(self._values_locked())
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self._fname} result not ready after {timeout} s") from None

    @property
    def r(self):
        """The result: ``get()``."""
        return self.get()

    def wait(self, timeout=-1, return_when=None):
        """Wait until done (or ``timeout`` seconds; None or negative: no limit).

        Returns
        -------
        bool
            With no ``return_when``: True if done.
        (done, pending) : tuple of sets of AsyncResult
            With ``return_when`` (ALL_COMPLETED, FIRST_COMPLETED or
            FIRST_EXCEPTION): :meth:`split` results, as
            :func:`concurrent.futures.wait` returns them.
        """
        if return_when is None:
            return self._wait_done(timeout)
        timeout = deadline_timeout(timeout)
        if timeout != 0 and not self.done():
            self._check_may_block()
        return concurrent.futures.wait(self.split(), timeout=timeout, return_when=return_when)

    def ready(self) -> bool:
        """True when every request has finished."""
        return self.done()

    def _failed(self) -> bool:
        return self.cancelled() or any(r.error is not None for r in self._records)

    def successful(self) -> bool:
        """True if done and nothing failed.

        Raises
        ------
        InvalidStateError
            (a RuntimeError) If the result is not ready yet, as in ipyparallel.
        """
        if not self.done():
            raise InvalidStateError(f"Cannot check successful() if not done ({self._fname} is pending)")
        return not self._failed()

    def get_dict(self, timeout=-1) -> dict:
        """Results keyed by engine id (each engine may appear once)."""
        values = self.get(timeout)
        if self._single_result:
            values = [values]
        ids = [r.engine_id for r in self._records]
        for engine_id in ids:
            if ids.count(engine_id) > 1:
                raise ValueError(f"Cannot build dict, {ids.count(engine_id)} jobs ran on engine #{engine_id}")
        return dict(zip(ids, values))

    @property
    def result_dict(self) -> dict:
        """The result as a dict keyed by engine id: ``get_dict()``."""
        return self.get_dict()

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def abort(self) -> None:
        """Abort the requests that have not started yet (they raise TaskAborted).

        Raises
        ------
        InvalidStateError
            (a RuntimeError) If the result is done already, as in ipyparallel.
        """
        if self.done():
            raise InvalidStateError(f"Can't abort, {self._fname} is already done!")
        self._client.abort(self, block=True)

    # -- parts -------------------------------------------------------------------------------

    def split(self) -> tuple:
        """One AsyncResult per request, e.g. to pass to :func:`concurrent.futures.wait`.

        A map's parts return their chunk's list (in a list), as in ipyparallel.
        """
        if len(self._records) <= 1:
            return (self,)
        if self._parts is None:
            single = not isinstance(self, AsyncMapResult)
            self._parts = tuple(
                AsyncResult(self._client, [r], self._fname, single=single,
                            return_exceptions=self._return_exceptions, postprocess=self._postprocess)
                for r in self._records)
        return self._parts

    @classmethod
    def join(cls, *async_results):
        """One AsyncResult over the requests of several (the inverse of :meth:`split`)."""
        if not async_results:
            raise ValueError("Must specify at least one AsyncResult to join")
        first = async_results[0]
        if len(async_results) == 1:
            return first
        records = [r for ar in async_results for r in ar._records]
        return cls(first._client, records, fname=first._fname, return_exceptions=first._return_exceptions)

    # -- the result as a sequence ------------------------------------------------------

    def __getitem__(self, key):
        """``ar["stdout"]``: metadata (any time); ``ar[i]``, ``ar[i:j]``: of the result (once ready)."""
        if isinstance(key, str):
            return self._metadata_field(key)
        if isinstance(key, (int, slice)):
            if not self.done():
                raise TimeoutError(f"{self._fname} result not ready")
            return self.get(0)[key]
        raise TypeError(f"Invalid key type {type(key)!r}, must be 'int', 'slice', or 'str'")

    def __len__(self) -> int:
        if self._chunk_sizes is not None:
            return sum(self._chunk_sizes)
        return 1 if self._single_result else len(self._records)

    def __iter__(self):
        """The values, each as soon as it (and those before it) is ready; errors raise when reached."""
        if self._single_result:
            raise TypeError("AsyncResults with a single result are not iterable.")
        if self.done() or self._join is not None:
            yield from self.get()
            return
        for part in self.split():
            value = part.get(return_exceptions=True)
            if isinstance(value, BaseException) and not self._return_exceptions:
                raise composite_error([value], self._fname)  # as get() would, and ipyparallel does
            yield value

    def __repr__(self) -> str:
        state = "pending" if not self.done() else "failed" if self._failed() else "finished"
        return f"<{type(self).__name__}({self._fname}): {state}>"


def _flatten(values) -> list:
    """Chunks' lists joined, with a failed chunk's error in its place."""
    flat = []
    for value in values:
        if isinstance(value, BaseException):
            flat.append(value)
        else:
            flat.extend(value)
    return flat


class AsyncHubResult(AsyncResult):
    """An AsyncResult for requests looked up by msg_id (ipyparallel's name, for ``isinstance`` and imports).

    In ipyparallel it wraps results fetched from the Hub's database,
    including other clients' tasks.  There is no Hub here: a client knows
    only its own requests, and this is an ordinary AsyncResult over them.
    """


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
        self.ordered = ordered
        self._arrivals = []
        self._arrived = threading.Condition()
        super().__init__(client, records, fname, single=False, return_exceptions=return_exceptions)

    def _record_done(self, record) -> None:
        with self._arrived:
            self._arrivals.append(record)
            self._arrived.notify_all()
        super()._record_done(record)

    def _assemble(self, values):
        flat = []
        for part, size in zip(values, self._chunk_sizes):
            flat.extend(_chunk_items(part, size))
        return flat

    def __iter__(self):
        """Yield element results as their chunks finish; errors raise when reached."""
        order = self._records if self.ordered else None
        seen = 0
        index = {id(r): i for i, r in enumerate(self._records)}
        while seen < len(self._records):
            if not self.done():
                self._check_may_block()
            if order is not None:
                record = order[seen]
                with self._arrived:
                    self._arrived.wait_for(lambda: record.state == DONE)
            else:
                with self._arrived:
                    while len(self._arrivals) <= seen:
                        self._arrived.wait(0.1)
                    record = self._arrivals[seen]
            seen += 1
            if record.error is not None and not self._return_exceptions:
                raise composite_error([record.error], self._fname)
            yield from _chunk_items(record.value(), self._chunk_sizes[index[id(record)]])


def _chunk_items(part, size):
    """A chunk's result as a list of its element results (a failed chunk: its error, per element)."""
    if isinstance(part, BaseException):
        return [part] * size
    return list(part)
