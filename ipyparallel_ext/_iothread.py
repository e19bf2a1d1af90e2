"""The one I/O thread: a zmq poller loop that owns every socket.

User threads never touch a socket.  They hand work to this thread with
:meth:`IOLoop.call_soon` (a deque plus a byte on a self-pipe, which is
thread-safe and costs a system call), and they wait on Futures that this
thread completes.  Everything that runs *on* the loop (socket callbacks,
timers, scheduled calls) must be quick and must not block.

Stalls.  The loop can stand still while others hold the GIL (a long call
in a C extension) or while one of its callbacks is slow; messages then wait
in zmq's buffers.  So sockets are read before timers are judged, and the
loop measures its own stalls -- how late it woke against what it asked for,
and how long an iteration kept it from polling -- in :attr:`IOLoop.stalled`.
:meth:`IOLoop.awake` is a clock that leaves stalls out: engines' silences
are measured on it, so time the loop was not running is never blamed on
them.

::

    user thread ──call_soon(fn)──▶ deque + wake pipe ─┐
                                                       ▼
             ┌──────────── IOLoop._run (one thread) ───────────┐
             │ poll(shell, iopub, control, hb of every engine,  │
             │      wake pipe)  →  socket callbacks, timers     │
             └─────────────────────────┬───────────────────────┘
                                       ▼
                        Future.set_result / set_exception
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import threading
import time

import zmq

try:
    import resource
except ImportError:  # Windows: no rlimits to raise
    resource = None

log = logging.getLogger("ipyparallel_ext")

STALL_SLACK = 0.25  # a wake-up this late, or an iteration this long (s), is a stall
STALL_NOTE = 1.0  # stalls at least this long are logged (at INFO)
# File descriptors per socket: its TCP connection and its zmq mailbox, plus
# room for reconnects and for what a local engine costs its Cluster (a log file).
FDS_PER_SOCKET = 3
FD_SPARE = 256  # descriptors left for everything else in the process
MAX_SOCKETS = 16384  # zmq's default (1023) is 255 engines of 4 sockets


_shared = None
_shared_lock = threading.Lock()


def shared_loop() -> "IOLoop":
    """The process's I/O loop, shared by every Client (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._stopping or _shared._pid != os.getpid():
            _shared = IOLoop()
        return _shared


class IOLoop:
    """A poller loop in a daemon thread; see the module docstring."""

    def __init__(self, context: zmq.Context | None = None):
        self._own_context = context is None
        if context is None:
            # Our own context, so that its socket limit can be raised before
            # its first socket (libzmq sizes it then); Context.instance()
            # may already be in use elsewhere in the process.
            context = zmq.Context()
            context.set(zmq.MAX_SOCKETS, min(MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT)))
        self.context = context
        self._fd_room = 0  # sockets the file-descriptor limit is known to allow (see add_socket)
        self._poller = zmq.Poller()
        self._handlers: dict = {}
        self._calls: collections.deque = collections.deque()
        self._timers: list = []
        self._timer_seq = itertools.count()
        # True from a wake-up byte's write until the loop starts running calls:
        # calls scheduled meanwhile need no byte of their own (a write is a
        # system call, and lets the loop take the GIL from the caller).
        self._wake_pending = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._stopping = False
        self.stalled = 0.0  # seconds the loop stood still (see the module docstring)
        self._pid = os.getpid()  # a forked child must start its own loop
        self._thread = threading.Thread(target=self._run, name="ipyparallel_ext-io", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------

    def call_soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the I/O thread, soon."""
        self._calls.append((fn, args))
        if self._wake_pending:
            return  # the loop has not started on the calls yet: it runs this one too
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is awake anyway
        except OSError:
            if not self._stopping:
                raise

    def awake(self) -> float:
        """A monotonic clock (seconds) that stops while the loop is stalled."""
        return time.monotonic() - self.stalled

    def is_alive(self) -> bool:
        """False once the loop has stopped, or its (daemon) thread is gone at interpreter exit."""
        return self._thread.is_alive() and not self._stopping

    def in_loop(self) -> bool:
        """True when called from the I/O thread itself."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop after the calls already scheduled have run."""
        if self._stopping:
            return
        self.call_soon(self._set_stopping)
        if not self.in_loop():
            self._thread.join(timeout)

    # -- I/O thread only ------------------------------------------------------

    def add_socket(self, socket: zmq.Socket, on_message) -> None:
        """Call ``on_message(frames)`` for every multipart message ``socket`` receives."""
        if len(self._handlers) >= self._fd_room:
            self._fd_room = _make_fd_room(2 * len(self._handlers) + 64)
        self._handlers[socket] = on_message
        self._poller.register(socket, zmq.POLLIN)

    def remove_socket(self, socket: zmq.Socket) -> None:
        """Stop polling ``socket`` and close it."""
        if self._handlers.pop(socket, None) is not None:
            self._poller.unregister(socket)
        socket.close(linger=0)

    def call_later(self, delay: float, fn, *args):
        """Run ``fn(*args)`` after ``delay`` seconds; returns a handle for :meth:`cancel`."""
        entry = [time.monotonic() + delay, next(self._timer_seq), fn, args]
        heapq.heappush(self._timers, entry)
        return entry

    @staticmethod
    def cancel(handle) -> None:
        """Cancel a timer made by :meth:`call_later`."""
        if handle is not None:
            handle[2] = None

    def _set_stopping(self):
        self._stopping = True

    def _run(self) -> None:
        poll = self._poller.poll
        monotonic = time.monotonic
        while not self._stopping:
            timeout = self._timeout()
            asked = monotonic() + (timeout / 1000 if timeout is not None else 0)
            try:
                events = poll(timeout)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EINTR:
                    continue
                raise
            woke = monotonic()
            if timeout is not None:
                self._note_stall(woke - asked, "woke late")
            self._dispatch(events)
            self._run_calls()
            busy = monotonic() - woke
            if busy > STALL_SLACK:
                # Messages that came in meanwhile are read before any timer
                # judges an engine's silence.
                self._note_stall(busy, "was busy")
                self._dispatch(poll(0))
            self._run_due_timers()
        self._shutdown()

    def _note_stall(self, seconds: float, how: str) -> None:
        if seconds > STALL_SLACK:
            self.stalled += seconds
            if seconds >= STALL_NOTE:
                log.info("the I/O thread %s by %.1f s (a long call holding the GIL, or a slow callback);"
                         " engines are not blamed for it", how, seconds)

    def _dispatch(self, events) -> None:
        for socket, _event in events:
            if socket == self._wake_r:
                self._drain_wake_pipe()
            else:
                self._read(socket)

    def _read(self, socket) -> None:
        handler = self._handlers.get(socket)
        while handler is not None:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._guard(handler, frames)
            handler = self._handlers.get(socket)  # the handler may have closed it

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        self._wake_pending = False  # before the first pop: a call appended after it writes a byte
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            self._guard(fn, *args)

    def _run_due_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and (timers[0][2] is None or timers[0][0] <= now):
            _when, _seq, fn, args = heapq.heappop(timers)
            if fn is not None:
                self._guard(fn, *args)

    def _timeout(self) -> int | None:
        """The poll timeout (ms): 0 with calls waiting, else until the next timer."""
        if self._calls:
            return 0
        timers = self._timers
        while timers and timers[0][2] is None:
            heapq.heappop(timers)
        if not timers:
            return None
        delay = timers[0][0] - time.monotonic()
        return 0 if delay <= 0 else int(delay * 1000) + 1

    @staticmethod
    def _guard(fn, *args) -> None:
        # A bug in one callback must not kill the thread every client depends on.
        try:
            fn(*args)
        except Exception:
            log.exception("error in ipyparallel_ext I/O callback %r", fn)

    def _shutdown(self) -> None:
        for socket in list(self._handlers):
            self.remove_socket(socket)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._own_context:
            self.context.destroy(linger=0)


_fd_warned = False


def _make_fd_room(sockets: int) -> int:
    """Raise the soft RLIMIT_NOFILE (towards the hard one) to fit ``sockets``; return how many fit.

    A common soft limit of 1024 holds about 80 engines' sockets; the hard
    limit is usually far higher, and any process may raise its soft limit
    up to it.  Past the hard limit, one warning says what to do.
    """
    global _fd_warned
    if resource is None:
        return sockets
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = sockets * FDS_PER_SOCKET + FD_SPARE
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            log.debug("raised the open-file limit from %s to %s for %s sockets", soft, new, sockets)
            soft = new
        if soft < needed and not _fd_warned:
            _fd_warned = True
            log.warning("the open-file limit (%s, hard limit %s) fits about %s engines; connecting more"
                        " fails with 'Too many open files': raise it (ulimit -n, or the hard limit"
                        " in /etc/security/limits.conf)", soft, hard, (soft - FD_SPARE) // (4 * FDS_PER_SOCKET))
    if soft == resource.RLIM_INFINITY:
        return sockets
    return max(1, (soft - FD_SPARE) // FDS_PER_SOCKET)
