"""The callback thread: where user callbacks run, so that they never run on the I/O thread.

A done-callback (``ar.add_done_callback(fn)``, joblib's retrieve callback,
``asyncio.wrap_future``'s hand-over) is user code: it may unpickle, take
locks, submit more work or wait for another result.  On the I/O thread any
of that would stall every client in the process, and waiting there for a
result could only deadlock (the I/O thread is what delivers it).  So the
I/O thread only *queues* such callbacks; one process-wide daemon thread
runs them, in completion order::

    I/O thread: AsyncResult completes ──call_soon(fn, ar)──▶ queue
                                                              │
    callback thread (one per process) ◀──────────────────────┘
        fn(ar)   # may call other_ar.get(): the I/O thread is free to deliver it

Callbacks share the thread, so a slow callback delays the ones behind it
(as in an asyncio loop); it never delays replies, heartbeats or other
clients.
"""

from __future__ import annotations

import logging
import os
import queue
import threading

log = logging.getLogger("ipyparallel_ext")

_lock = threading.Lock()
_worker: "_Worker | None" = None


class _Worker:
    """One daemon thread draining a queue of calls (made per process: see :func:`call_soon`)."""

    def __init__(self):
        self.pid = os.getpid()
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="ipyparallel_ext-callbacks", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        get = self.calls.get
        while True:
            fn, args = get()
            try:
                fn(*args)
            except Exception:
                # As concurrent.futures does: a failing callback is logged,
                # and the ones after it still run.
                log.exception("exception calling callback %r", fn)
            del fn, args  # do not keep the last result alive while idle


def _current() -> _Worker:
    global _worker
    worker = _worker
    if worker is None or worker.pid != os.getpid():
        with _lock:
            # A forked child inherits the parent's object but not its thread.
            if _worker is None or _worker.pid != os.getpid():
                _worker = _Worker()
            worker = _worker
    return worker


def call_soon(fn, *args) -> None:
    """Run ``fn(*args)`` on the callback thread (started on first use), after those queued before."""
    _current().calls.put((fn, args))
