"""What is known about an AsyncResult's requests: metadata, timing, send state, outputs.

:class:`RequestInfo` is the half of :class:`~._asyncresult.AsyncResult`
that reads its :class:`~._record.MessageRecord` objects rather than its result:
metadata by attribute and by key (``ar.stdout``, ``ar["engine_id"]``), as
ipyparallel offers it, timings (``wall_time``, ``timedelta``), whether the
requests are sent, and the outputs, waited for, shown or streamed.  None of
it completes the result; reading metadata never waits for the result.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from datetime import datetime

from . import _display
from ._record import DONE, PENDING

# Fields that come with a request's outputs, which may arrive after its reply.
_OUTPUT_KEYS = {"stdout", "stderr", "outputs", "execute_result", "execute_input", "data"}


def deadline_timeout(timeout):
    """ipyparallel treats None and negative timeouts as 'wait forever'."""
    if timeout is None or timeout < 0:
        return None
    return timeout


class RequestInfo:
    """Mixin of AsyncResult: what its records say (see the module docstring).

    Expects ``_records``, ``_single_result``, ``_fname``, ``_client``,
    ``_chunk_sizes``, ``_live``, ``done()``, ``_wait_done(timeout)``,
    ``_on_io_thread()`` and ``_check_may_block(what)`` from the class it is
    mixed into.
    """

    @property
    def msg_ids(self) -> list:
        """The ids of the requests, one per record, in order."""
        return [r.msg_id for r in self._records]

    def _per_record(self, values):
        return values[0] if self._single_result else values

    def _outputs_done(self, timeout=5.0) -> None:
        """Wait (briefly) until the outputs of finished requests have arrived."""
        if self._on_io_thread():
            return  # outputs arrive on this very thread: take what is there
        deadline = time.monotonic() + timeout
        for record in self._records:
            if record.state == DONE:
                record.outputs_ready.wait(max(0.0, deadline - time.monotonic()))

    def wait_for_output(self, timeout=-1) -> bool:
        """Wait until done and every output (stdout, displays) has arrived; True if so."""
        timeout = deadline_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait_done(timeout):
            return False
        for record in self._records:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not record.outputs_ready.is_set():
                if left != 0:
                    self._check_may_block("the outputs")
                if not record.outputs_ready.wait(left):
                    return False
        return True

    @property
    def metadata(self):
        """ipyparallel-style metadata: a dict (single result) or one dict per request."""
        self._outputs_done()
        return self._per_record([r.metadata for r in self._records])

    def __getattr__(self, key):
        # ar.stdout, ar.engine_id, ar.started ...: metadata fields, as in ipyparallel.
        if key.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        try:
            return self._metadata_field(key)
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}") from None

    def _metadata_field(self, key):
        """One metadata field, per record; KeyError if there is no such field."""
        if key in _OUTPUT_KEYS:
            self._outputs_done()
        return self._per_record([r.metadata[key] for r in self._records])

    def __dir__(self):
        keys = self._records[0].metadata.keys() if self._records else ()
        return sorted(set(super().__dir__()) | set(keys))

    @property
    def sent(self) -> bool:
        """True when every request has been handed to zmq (and zmq is done with tracked buffers)."""
        return all(r.state != PENDING and (r.tracker is None or r.tracker.done) for r in self._records)

    def wait_for_send(self, timeout=-1) -> bool:
        """Wait until every request is sent (with ``track=True``: until zmq is done with its buffers).

        Raises
        ------
        TimeoutError
            If that has not happened within ``timeout`` seconds (None or negative: no limit).
        """
        timeout = deadline_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.sent:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self._fname}: still waiting to be sent")
            self._check_may_block("the send")
            time.sleep(0.001)
        return True

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until the last reply, when done)."""
        if self.done():
            return self.wall_time
        start = min((r.submitted for r in self._records), default=time.time())
        return time.time() - start

    def _check_ready(self) -> None:
        if not self.done():
            raise TimeoutError("result not ready")

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last reply.

        Raises
        ------
        TimeoutError
            If the result is not ready yet (as in ipyparallel).
        """
        self._check_ready()
        if not self._records:
            return 0.0
        received = [r.received or r.submitted for r in self._records]
        return max(received) - min(r.submitted for r in self._records)

    @property
    def serial_time(self) -> float:
        """Engine time: the sum of every request's run time.

        Raises
        ------
        TimeoutError
            If the result is not ready yet (as in ipyparallel).
        """
        self._check_ready()
        return sum((r.completed or 0) - (r.started or r.completed or 0) for r in self._records)

    def timedelta(self, start, end, start_key=min, end_key=max) -> float:
        """Seconds between two (sets of) timestamps, e.g. ``ar.timedelta(ar.submitted, ar.received)``.

        Parameters
        ----------
        start, end : datetime or list of datetime
            Timestamps (metadata fields such as ``ar.started``).
        start_key, end_key : callable
            Pick one timestamp from a list (default: the earliest start, the latest end).
        """
        if not isinstance(start, datetime):
            start = start_key(start)
        if not isinstance(end, datetime):
            end = end_key(end)
        return (end - start).total_seconds()

    @property
    def progress(self) -> int:
        """How many tasks (map elements, for a map) have finished."""
        sizes = self._chunk_sizes or [1] * len(self._records)
        return sum(size for r, size in zip(self._records, sizes) if r.state == DONE)

    def wait_interactive(self, interval=0.1, timeout=-1, widget=None, return_when=ALL_COMPLETED) -> None:
        """Wait with a progress bar (a widget in notebooks, text in a terminal).

        Parameters
        ----------
        interval : float
            Seconds between updates of the bar.
        timeout : float
            Give up waiting after this many seconds (None or negative: no limit).
        widget : bool, optional
            Force (or forbid) a widget bar; default: a widget in a notebook.
        return_when : ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION
            When to stop waiting, as for :func:`concurrent.futures.wait`.
        """
        if return_when == FIRST_COMPLETED:
            until = lambda: any(r.state == DONE for r in self._records)  # noqa: E731
        elif return_when == FIRST_EXCEPTION:
            until = lambda: any(r.error is not None for r in self._records)  # noqa: E731
        elif return_when in (ALL_COMPLETED, None):
            until = None
        else:
            raise ValueError(f"Unrecognized return_when={return_when!r}")
        if not self.done():
            self._check_may_block()
        _display.progress_wait(self, interval, deadline_timeout(timeout), widget, until=until)

    @contextlib.contextmanager
    def stream_output(self):
        """Show outputs (stdout, stderr, displays, errors) as they arrive, during a ``with`` block.

        Outputs received so far are shown at once; later ones while this
        thread waits in the block (``get()``, ``wait()``,
        ``wait_interactive()``), so that a notebook shows them in the cell
        that waits; what has arrived when the block ends is shown then.
        """
        live = _display.LiveOutput(self, self._client)
        self._live = (live, threading.current_thread())
        try:
            yield
        finally:
            self._live = None
            live.finish()
            live.close()

    def display_outputs(self, groupby="type", result_only=False) -> None:
        """Show stdout, stderr, displays and results, labelled by engine, as ipyparallel does.

        Raises
        ------
        TimeoutError
            If the result is not ready yet (as in ipyparallel).
        """
        self._check_ready()
        self._outputs_done()
        _display.display_outputs(self, groupby=groupby, result_only=result_only)
