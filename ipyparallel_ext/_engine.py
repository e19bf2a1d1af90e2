"""EngineConnection: the client's side of one engine kernel.

Lives on the I/O thread.  It owns the engine's shell, iopub, control and
heartbeat sockets, signs and sends requests (:meth:`EngineConnection._send`),
receives and checks replies (:meth:`_on_shell`) and outputs
(:meth:`_on_iopub`), and notices when the engine dies.

Work for the engine waits in a client-side queue and at most
``max_inflight`` requests are on the wire at once, so that queued work can
still be aborted (a stock kernel cannot abort one particular message).

Liveness and progress, checked once a second per engine (:meth:`_heartbeat`),
never per request:

- *alive*: heartbeat echoes; silence is measured on the I/O loop's
  :meth:`~._iothread.IOLoop.awake` clock, so a stalled client does not
  declare its engines dead.
- *the same kernel*: every message a kernel sends carries its session id,
  which a restart changes.  ipykernel 7 greets every new IOPub subscriber
  (our SUB socket reconnecting to a restarted kernel) with a parentless
  ``iopub_welcome``, so a restart is usually seen at once; a control
  ``kernel_info_request`` (answered even while the shell is busy) every
  :data:`SESSION_CHECK_PERIOD` with work there, :data:`SESSION_CHECK_IDLE`
  without, makes a silent engine say it too.  A restart done by someone
  else (a notebook on the same kernel, Jupyter's auto-restart) fails the
  work the kernel lost, reinstalls our helpers and warns that the
  namespace is gone.
- *progress*: a request in flight for :data:`REPLY_CHECK_AFTER` gets a
  shell ``kernel_info_request`` behind it.  The kernel handles shell
  messages in order, so when that probe is answered every request sent
  before it has been handled too: one still without its reply lost it
  (an interrupt that landed as it finished, say) and fails with
  :class:`~.error.ReplyLost`, and the engine's queue goes on.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import signal
import time
import weakref

import zmq

from . import _wire
from ._record import DONE, PENDING, SENT, MessageRecord
from .error import EngineError, RemoteError, ReplyLost, TaskAborted

log = logging.getLogger("ipyparallel_ext")

HEARTBEAT_PERIOD = 1.0
HEARTBEAT_TIMEOUT = 4.0  # seconds without an echo before an engine counts as dead
MISSED_PINGS = 3  # ... and at least this many pings, a period apart, went unanswered
MAX_PINGS_OUT = 64  # unanswered pings remembered (a minute of silence at one a second)
START_TIMEOUT = 60.0  # a starting kernel answers nothing until it has imported itself
PROBE_PERIOD = 0.25  # how often a local engine's process is polled
OUTPUT_GRACE = 2.0  # how long after its reply a request's outputs may still arrive
NUDGE_PERIOD = 0.1  # kernel_info resend period while waiting for iopub to connect
SESSION_CHECK_PERIOD = 2.0  # how often an engine with work is asked (on control) which kernel session it is
SESSION_CHECK_IDLE = 10.0  # ... and an idle one (each check makes the kernel publish busy/idle)
REPLY_CHECK_AFTER = 2.0  # a request in flight this long gets a progress probe behind it (see above)

_OUTPUT_TYPES = _wire.OUTPUT_TYPES | {"execute_input"}


def describe_exit(returncode: int) -> str:
    """Say how a process ended, in words a user can act on."""
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (the out-of-memory killer sends this)" if sig == signal.SIGKILL else ""
        if sig == signal.SIGSEGV:
            hint = " (a crash in compiled code)"
        return f"killed by {name}{hint}"
    return f"exited with status {returncode}"


class EngineConnection:
    """Connection to one engine; every method runs on the I/O thread.

    Parameters
    ----------
    loop : IOLoop
        The I/O loop that owns the sockets.
    engine_id : int
        The id users see (``rc.ids``).
    info : dict
        The kernel's connection info (ip, ports, key, transport, signature_scheme).
    listener
        Gets ``engine_ready(engine)``, ``engine_dead(engine, reason)`` and
        ``engine_free(engine)`` calls.
    probe : callable, optional
        Returns the kernel process's exit code, or None while it runs.
    options : dict
        Sent to the engine helpers at install.
    """

    def __init__(self, loop, engine_id, info, listener, probe=None, options=None, max_inflight=1):
        self.loop = loop
        self.id = engine_id
        self.info = info
        self.listener = listener
        self.probe = probe
        self.options = options or {}
        self.max_inflight = max_inflight
        key = info.get("key", b"")
        self.codec = _wire.MessageCodec(key.encode() if isinstance(key, str) else key,
                                        info.get("signature_scheme", "hmac-sha256"))
        self.queue: collections.deque = collections.deque()  # records not yet sent
        self.inflight: dict = {}  # msg_id -> record awaiting its reply
        self.routes: dict = {}  # msg_id -> record whose iopub outputs we collect
        self._output_deadlines: collections.deque = collections.deque()
        self.ready = False
        self.dead_reason = None
        self._iopub_seen = False
        self._installed = False
        self._last_beat = loop.awake()  # on the loop's clock, which leaves out its stalls
        self._pings_unanswered = 0
        # Each ping is unique (a random prefix per connection and a count), and
        # only the echo of one still unanswered counts: forged, replayed or
        # garbage frames on the heartbeat channel cannot keep an engine alive.
        self._ping_prefix = os.urandom(8)
        self._ping_count = 0
        self._pings_out: collections.deque = collections.deque(maxlen=MAX_PINGS_OUT)
        self.beats = 0  # heartbeat echoes heard (an echo needs no key: it tells silent from deaf)
        self.kernel_info = None
        self.shell = self.iopub = self.control = self.hb = None  # until open()
        self._install_record = None
        self._session = None  # the kernel's session id; a restart changes it
        self._old_sessions: set = set()
        self._session_checked = float("-inf")  # when we last asked (awake clock)
        self._probe_id = None  # the progress probe on the wire (see the module docstring)
        self._probe_covers: list = []  # msg_ids in flight when it was sent

    # -- life cycle -------------------------------------------------------------

    def _url(self, channel: str) -> str:
        transport = self.info.get("transport", "tcp")
        ip = self.info.get("ip", "127.0.0.1")
        port = self.info[f"{channel}_port"]
        if transport == "ipc":
            return f"ipc://{ip}-{port}"
        return f"{transport}://{ip}:{port}"

    def _socket(self, kind, channel, handler):
        sock = self.loop.context.socket(kind)
        sock.linger = 0
        if kind == zmq.SUB:
            sock.rcvhwm = 0  # never drop outputs on our side of the pipe
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self._url(channel))
        self.loop.add_socket(sock, handler)
        return sock

    def open(self) -> None:
        """Connect, install the engine helpers, and start watching liveness."""
        self.shell = self._socket(zmq.DEALER, "shell", self._on_shell)
        self.iopub = self._socket(zmq.SUB, "iopub", self._on_iopub)
        self.control = self._socket(zmq.DEALER, "control", self._on_control)
        self.hb = self._socket(zmq.DEALER, "hb", self._on_heartbeat)
        self._install()
        self._heartbeat()
        if self.probe is not None:
            self._probe()

    def _install(self) -> None:
        """Send the engine helpers; the engine is ready once they are in and iopub is live."""
        install = self._install_record = self._new_record("install", code=_wire.install_code(self.options))
        install.add_done_listener(self._installed_cb)
        self._send(install)
        self._nudge()

    def _installed_cb(self, record) -> None:
        if record is not self._install_record:
            return  # sent to a kernel that was restarted since; a new install is on its way
        if record.error is not None:
            self.die(f"could not install the engine helpers: {record.error}")
            return
        self._installed = True
        self._maybe_ready()

    def _nudge(self) -> None:
        # IOPub (a SUB socket) connects asynchronously; until it is live,
        # outputs would be lost.  Poke the kernel until its status shows up.
        if self._iopub_seen or self.dead_reason:
            return
        self.shell.send_multipart(self.codec.pack("kernel_info_request", {}))
        self.loop.call_later(NUDGE_PERIOD, self._nudge)

    def _maybe_ready(self) -> None:
        if self._installed and self._iopub_seen and not self.ready and not self.dead_reason:
            self.ready = True
            self.listener.engine_ready(self)
            self._pump()

    def die(self, reason: str) -> None:
        """Mark the engine dead: fail its work, close its sockets."""
        if self.dead_reason:
            return
        self.dead_reason = reason
        for sock in (self.shell, self.iopub, self.control, self.hb):
            if sock is not None:  # None: never opened (closed while connecting)
                self.loop.remove_socket(sock)
        self._fail_outstanding(EngineError(f"engine {self.id} {reason}"), queued=True)
        self.listener.engine_dead(self, reason)

    def _fail_outstanding(self, error, queued=False) -> None:
        """Fail the requests in flight (and ``queued`` ones); no outputs will come for them."""
        records = list(self.inflight.values())
        self.inflight.clear()
        if queued:
            records += self.queue
            self.queue.clear()
        self._probe_id, self._probe_covers = None, []
        for record in records:
            _finish_record(record, "error", error)
        for record in self.routes.values():
            record.outputs_ready.set()
        self.routes.clear()

    def close(self) -> None:
        """Close quietly (the client is closing): outstanding work fails."""
        self.die("is no longer connected (client closed)")

    # -- liveness ---------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Once a second: judge silence, ping, check the session and the oldest request."""
        if self.dead_reason:
            return
        now = self.loop.awake()
        silent_for = now - self._last_beat
        # Silence counts only across pings we really sent, a period apart: a
        # stall the loop could not measure (the whole process stopped while it
        # ran timers) then delays the verdict instead of blaming the engine.
        if (silent_for > (HEARTBEAT_TIMEOUT if self.ready else START_TIMEOUT)
                and self._pings_unanswered >= MISSED_PINGS):
            self.die(f"stopped answering heartbeats for {silent_for:.1f} s (process gone or unreachable)")
            return
        self._ping_count += 1
        ping = self._ping_prefix + self._ping_count.to_bytes(8, "big")
        self._pings_out.append(ping)
        self.hb.send(ping)
        self._pings_unanswered += 1
        if self.ready and now - self._session_checked >= (SESSION_CHECK_PERIOD if self.load else SESSION_CHECK_IDLE):
            self._session_checked = now
            self.control.send_multipart(self.codec.pack("kernel_info_request", {}))
        if self._probe_id is None and self.inflight:
            oldest = next(iter(self.inflight.values()))
            if time.time() - oldest.sent >= REPLY_CHECK_AFTER:
                self._probe_id = _wire.new_msg_id()
                self._probe_covers = list(self.inflight)
                self.shell.send_multipart(self.codec.pack("kernel_info_request", {}, None, self._probe_id))
        self.loop.call_later(HEARTBEAT_PERIOD, self._heartbeat)

    def _on_heartbeat(self, frames) -> None:
        echo = frames[0].bytes if len(frames) == 1 else None
        if echo not in self._pings_out:
            log.warning("engine %s: dropped an invalid heartbeat echo (%d frame(s): not the echo of a"
                        " ping still unanswered)", self.id, len(frames))
            return
        while self._pings_out.popleft() != echo:  # this echo answers every older ping too
            pass
        self._last_beat = self.loop.awake()
        self._pings_unanswered = 0
        self.beats += 1

    def _same_kernel(self, msg) -> bool:
        """Notice a restart from the session id ``msg`` carries; False for a stale message.

        A restart we did not ask for (ours close the connection first) fails
        the work the old kernel lost and reinstalls the helpers.
        """
        session = msg["header"].get("session")
        if session == self._session:
            return True
        if self._session is None:
            self._session = session
            return True
        if session in self._old_sessions:
            return False  # sent before a restart we have dealt with
        self._old_sessions.add(self._session)
        self._session = session
        log.warning("engine %s was restarted outside this client: its namespace is gone (variables,"
                    " imports, pushed values); reinstalling the engine helpers", self.id)
        self._fail_outstanding(EngineError(
            f"engine {self.id} was restarted (not by this client); the work it was running is lost"))
        self.ready = self._installed = self._iopub_seen = False
        self._install()
        return True

    def _probe_answered(self) -> None:
        """The progress probe's reply: requests sent before it that are still in flight lost their replies."""
        lost = [self.inflight.pop(m) for m in self._probe_covers if m in self.inflight]
        self._probe_id, self._probe_covers = None, []
        for record in lost:
            _finish_record(record, "error", ReplyLost(
                f"engine {self.id} went on past request {record.msg_id} without sending its reply"
                f" (the reply was lost, e.g. to an interrupt that landed as the request finished);"
                f" the request may or may not have run"))
            self._expect_outputs(record, None)
        if lost:
            self._pump()
            self.listener.engine_free(self)

    def _probe(self) -> None:
        if self.dead_reason:
            return
        try:
            code = self.probe()
        except Exception:  # a probe that breaks must not stop the heartbeat
            log.exception("liveness probe of engine %s failed", self.id)
            return
        if code is not None:
            reason = f"died: {describe_exit(code)}"
            tail = getattr(self.probe, "log_tail", lambda: "")()
            if tail:
                reason += f"; the end of its log ({self.probe.log_path}):\n{tail}"
            self.die(reason)
            return
        self.loop.call_later(PROBE_PERIOD, self._probe)

    # -- sending ----------------------------------------------------------------

    def _new_record(self, op, **kwargs):
        return MessageRecord(_wire.new_msg_id(), op, **kwargs)

    def submit(self, record) -> None:
        """Queue a record for this engine (I/O thread)."""
        if self.dead_reason:
            _finish_record(record, "error", EngineError(f"engine {self.id} {self.dead_reason}"))
            return
        record.engine_id = self.id
        self.queue.append(record)
        self._pump()

    @property
    def load(self) -> int:
        """Requests queued or in flight."""
        return len(self.queue) + len(self.inflight)

    def _pump(self) -> None:
        while self.ready and self.queue and len(self.inflight) < self.max_inflight:
            record = self.queue.popleft()
            if record.state == PENDING:
                self._send(record)

    def abort(self, msg_ids) -> list:
        """Abort queued (unsent) records among ``msg_ids``; return the ones aborted."""
        wanted = set(msg_ids)
        aborted = [r for r in self.queue if r.msg_id in wanted]
        if aborted:
            self.queue = collections.deque(r for r in self.queue if r.msg_id not in wanted)
            for record in aborted:
                _finish_record(record, "aborted", TaskAborted(f"task {record.msg_id} was aborted before it ran"))
        return aborted

    def _send(self, record) -> None:
        if record.op == "install":
            content = _wire.request_content(record.code)
            metadata = None
        elif record.op == "execute":
            # Silent as a request, so the kernel does not echo the code on IOPub;
            # the engine helpers run it as the spec says (see _engine_code).
            content = _wire.request_content(record.code)
            metadata = {"ipp_ext": record.spec}
            if not record.spec.get("silent", True):
                record.execute_input = record.code  # what the echo would have said
        else:
            content = _wire.HANDLE_CONTENT
            metadata = {"ipp_ext": record.spec}
        frames = self.codec.pack("execute_request", content, metadata, record.msg_id)
        record.engine_id = self.id
        record.state = SENT
        record.sent = time.time()
        self.inflight[record.msg_id] = record
        self.routes[record.msg_id] = record
        for task in record.task or ():
            if task is not record:
                self.routes[task.msg_id] = task
        tracker = _wire.send_message(self.shell, frames + record.frames, record.track)
        if record.track:
            record.tracker = tracker
        record.frames = []

    def send_control(self, msg_type: str, content: dict | None = None) -> None:
        """Send a control request (interrupt, shutdown); replies are not awaited."""
        if self.dead_reason:
            return
        self.control.send_multipart(self.codec.pack(msg_type, content or {}))

    # -- receiving --------------------------------------------------------------

    def _unpack(self, frames, parent_filter=None):
        try:
            return self.codec.unpack(frames, parent_filter)
        except Exception as exc:
            # Bad signature, replay, garbage: drop it, loudly.
            log.warning("engine %s: dropped an invalid message: %s", self.id, exc)
            return None

    def _on_control(self, frames) -> None:
        # Replies to our session checks (and interrupts): only who sent them matters.
        msg = self._unpack(frames)
        if msg is not None and self._same_kernel(msg):
            self._last_beat = self.loop.awake()

    def _on_shell(self, frames) -> None:
        msg = self._unpack(frames)
        if msg is None or not self._same_kernel(msg):
            return
        self._last_beat = self.loop.awake()
        msg_type = msg["msg_type"]
        parent_id = msg["parent_header"].get("msg_id")
        if msg_type == "kernel_info_reply":
            self.kernel_info = msg["content"]
            if parent_id == self._probe_id:
                self._probe_answered()
            return
        record = self.inflight.pop(parent_id, None)
        if record is None:
            return
        self._complete(record, msg)
        self._expect_outputs(record, msg["metadata"].get("ipp_ext_outputs"))
        self._pump()
        self.listener.engine_free(self)

    def _expect_outputs(self, record, expected) -> None:
        """``record`` has its reply: its outputs are in once ``expected`` arrived, or after a grace time."""
        if expected is not None and not record.task:
            record.outputs_expected = expected
            if record.outputs_seen >= expected:
                self._outputs_complete(record)
        # A weak reference: a record whose outputs are in (no longer in
        # routes) and whose AsyncResult is gone is freed now, not in 2 s.
        self._output_deadlines.append((time.monotonic() + OUTPUT_GRACE, weakref.ref(record)))
        if len(self._output_deadlines) == 1:
            self.loop.call_later(OUTPUT_GRACE, self._expire_outputs)

    def _complete(self, record, msg) -> None:
        content = msg["content"]
        md = msg["metadata"].get("ipp_ext")
        info = {"engine_id": self.id, "method": record.op}
        if md is None:  # plain code (execute / install), or the helper itself broke
            if record.op == "execute":  # an ExecuteRecord: its ExecuteReply shows the count
                record.execution_count = content.get("execution_count")
            started = _seconds(msg["metadata"].get("started"))
            if content.get("status") == "ok":
                _finish_record(record, "ok", started=started, completed=time.time())
            elif content.get("status") == "aborted":
                _finish_record(record, "aborted", TaskAborted(f"engine {self.id} aborted the request"))
            else:
                tb = "\n".join(content.get("traceback", []))
                error = RemoteError(content.get("ename"), content.get("evalue"), tb, info)
                _finish_record(record, "error", error, started=started, completed=time.time())
            return
        if record.op == "batch":
            _finish_batch(record, md, msg["buffers"], info)
            return
        _finish_from_metadata(record, md, msg["buffers"], info)

    def _on_iopub(self, frames) -> None:
        if not self._iopub_seen:
            self._iopub_seen = True
            self._maybe_ready()
        # Every client attached to the kernel gets every output: skip the
        # ones that are not ours before paying for checking and decoding
        # (but not parentless ones: "iopub_welcome" or status "starting"
        # from a kernel that was restarted).
        topic = frames[0].bytes
        is_status = topic.startswith(b"kernel.") and topic.endswith(b".status")
        msg = self._unpack(frames, self._status_wanted if is_status else self._routed_or_none)
        if msg is None or not self._same_kernel(msg):
            return
        parent_id = msg["parent_header"].get("msg_id")
        record = self.routes.get(parent_id)
        if record is None:
            return
        msg_type = msg["msg_type"]
        if msg_type == "status":
            if msg["content"].get("execution_state") == "idle":
                self._outputs_complete(record)
        elif msg_type in _OUTPUT_TYPES:
            if msg_type == "data_message":
                record.add_data(msg["content"], msg["buffers"])
            else:
                record.add_output(msg_type, msg["content"])
            if record.outputs_expected is not None and record.outputs_seen >= record.outputs_expected:
                self._outputs_complete(record)

    def _routed_or_none(self, parent_id) -> bool:
        return parent_id is None or parent_id in self.routes

    def _status_wanted(self, parent_id) -> bool:
        """Is a status message (by its parent) worth checking and decoding?

        Each request makes the kernel publish 'busy' and 'idle'.  Parentless
        ones can say the kernel restarted; 'idle' completes the outputs of
        records whose reply carries no output count (the install, and
        load-balanced batches, whose tasks count their own).  The replies
        of everything else count their outputs, so their status messages
        are dropped unread.
        """
        if parent_id is None:
            return True
        record = self.routes.get(parent_id)
        return record is not None and (bool(record.task) or record.op == "install")

    def _outputs_complete(self, record) -> None:
        """Every output of ``record`` (and of its batch's tasks) has arrived."""
        self.routes.pop(record.msg_id, None)
        for task in record.task or ():
            task.outputs_ready.set()
            self.routes.pop(task.msg_id, None)
        record.outputs_ready.set()

    def _expire_outputs(self) -> None:
        # An idle status lost on IOPub must not leave readers waiting forever.
        if self.dead_reason:
            return
        now = time.monotonic()
        deadlines = self._output_deadlines
        while deadlines and deadlines[0][0] <= now:
            record = deadlines.popleft()[1]()
            if record is not None and not record.outputs_ready.is_set():
                self._outputs_complete(record)
        if deadlines:
            self.loop.call_later(deadlines[0][0] - now, self._expire_outputs)


def _seconds(value):
    """A reply's timestamp (datetime, ISO string or float) as epoch seconds."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:  # what ipykernel sends ('2026-11-29T15:35:13.123456Z'), 20 times faster than dateutil
            value = datetime.datetime.fromisoformat(value)
        except ValueError:  # other ISO 8601 forms (and Python < 3.11 with a 'Z')
            from jupyter_client.jsonutil import parse_date

            value = parse_date(value)
    try:
        return value.timestamp()
    except AttributeError:
        return None


def _error_from(md, info):
    return RemoteError(md.get("ename"), md.get("evalue"), md.get("traceback"), info)


def _finish_record(record, status, error=None, result_frames=None, started=None, completed=None):
    if record.state != DONE:
        record.finish(status, error, result_frames, started, completed)
    record_tasks = record.task or ()
    for task in record_tasks:
        if task is not record and task.state != DONE:
            task.engine_id = record.engine_id
            task.finish(status, error, None, started, completed)


def _finish_from_metadata(record, md, buffers, info):
    if md.get("status") == "ok":
        _finish_record(record, "ok", None, buffers, md.get("started"), md.get("completed"))
    else:
        _finish_record(record, "error", _error_from(md, info), None, md.get("started"), md.get("completed"))


def _finish_batch(record, md, buffers, info):
    """Split a batch reply into its tasks' results."""
    pos = 0
    for task, task_md in zip(record.task, md.get("tasks", [])):
        n = task_md.get("nframes", 0)
        task.engine_id = record.engine_id
        _finish_from_metadata(task, task_md, buffers[pos : pos + n], dict(info, method="apply"))
        pos += n
    # Tasks the engine did not reach (it was interrupted) are finished by the
    # batch record's listeners (the scheduler re-queues or fails them).
    record.finish("ok")
