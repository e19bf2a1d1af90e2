"""The load-balancing scheduler: it hands queued tasks to engines as they free up (I/O thread).

With no controller process, load balancing happens in the client.  One
:class:`TaskScheduler` per client lives on the client's I/O thread, next to
the engine connections.  LoadBalancedViews only build :class:`~._task.Task`
records and hand them over (:meth:`TaskScheduler.submit`: an inbox, plus a
``call_soon`` wake-up unless one is pending)::

    user thread                 I/O thread
    -----------                 ----------
    lv.apply / map / imap
      Task records ──inbox──────▶ DependencyWaiter (after/follow unmet) ──met──┐
                                                                               ▼
                                  ready queues, FIFO, grouped by the engines a task may use
                                        │ _fill: an engine has room (Client calls engine_free
                                        ▼        after every reply)
                                  batch record: several tasks in ONE execute_request
                                        │ EngineConnection.submit
                                        ▼
                                  reply ─▶ Task.finish ─▶ attempt_done: settle the task
                                           (AsyncResult resolves), or retry / re-queue it

Batching.  A stock kernel spends ~1.4 ms of its own CPU per request, so
small tasks travel several to a request.  A batch takes tasks in FIFO order
until its *estimated* run time reaches :data:`BATCH_TIME` (estimates are
learnt per function from the engines' own timings), and never more than a
share of the queue (queued / (2 x engines), guided self-scheduling) so the
end of a map stays balanced -- unless that share is less work than
:data:`MIN_BATCH_TIME`, where a request would cost more than it carries.  A task whose function has not been timed yet
goes alone, and so does a task with a ``time_limit``.

Pipelining.  An engine may hold a second batch behind the one it runs, so
it never waits for a round trip -- but only behind a batch estimated to end
within :data:`PIPELINE_MAX`.  Nothing waits behind a task of unknown or long
duration, so a slow task does not trap others; the one exception is a task
far slower than its function has ever been, which can delay the (at most
one, short) batch queued behind it.  Its estimate then jumps to the slow
time, so it does not happen twice in a row.

Time limits.  A time-limited task travels alone; the scheduler knows when it
starts (when the engine's previous request replied), and past its limit
interrupts the engine (KeyboardInterrupt in the task), which fails it with
TaskTimeout and goes on.  An interrupt the task ignores is sent again every
:data:`INTERRUPT_REPEAT` seconds, :data:`INTERRUPT_TRIES` times in all; then
the task fails with TaskTimeout saying so, without a retry (it may still be
running there), and its engine gets no more work until it replies.

Failures.  A task that fails is retried (elsewhere if possible) while its
``retries`` last; ``UnmetDependency`` raised on an engine bans that engine
for the task.  When an engine dies, the task it was running counts as
failed (retry or EngineError); tasks that were only queued behind it there
go back to the queue, free.
"""

from __future__ import annotations

import collections
import itertools
import math
import time

from ._dependency import DependencyWaiter
from ._record import DONE, PENDING, SENT
from ._task import Batch
from .error import EngineError, ImpossibleDependency, RemoteError, TaskAborted, TaskTimeout

BATCH_TIME = 0.2  # seconds of estimated work per batch, at most
MIN_BATCH_TIME = 0.01  # ... and at least, queue permitting (a request costs ~1.4 ms)
PIPELINE_MAX = 0.25  # queue a second batch behind one estimated to end within this
PIPELINE_DEPTH = 2  # requests on the wire per engine, at most
MAX_BATCH = 1024  # tasks per batch
MAX_BATCH_BYTES = 4 << 20  # payload per batch (a bigger task still goes, alone)
SPLIT = 2  # a batch takes at most 1/(SPLIT x engines) of the queue
LEARN_RATE = 0.25  # how fast a function's estimate comes down to faster runs
MAX_ESTIMATES = 512  # functions whose timings are remembered
INTERRUPT_REPEAT = 1.0  # re-send an interrupt a task ignored, after this long
INTERRUPT_TRIES = 5  # interrupts sent for one time limit before the task is given up
SPURIOUS_WINDOW = 2.0  # a KeyboardInterrupt this soon after our interrupt was ours
HOLD_POLL = 0.005  # how often to look whether held tasks may go again


class _Slot:
    """The scheduler's view of one live engine."""

    __slots__ = ("eid", "conn", "batches", "interrupted_at")

    def __init__(self, eid, conn):
        self.eid = eid
        self.conn = conn
        self.batches: list = []  # our batches on the wire, oldest first
        self.interrupted_at = None

    def has_room(self) -> bool:
        conn = self.conn
        if not conn.ready or conn.dead_reason:
            return False
        load = conn.load
        if load == 0:
            return True
        # A second request only behind one of ours that should end soon.
        return (load < PIPELINE_DEPTH and not conn.queue and len(self.batches) == load
                and self.batches[-1].pipelinable)


def scheduler_for(client) -> "TaskScheduler":
    """The client's scheduler, made and registered on first use."""
    return client.get_scheduler(TaskScheduler)


class TaskScheduler:
    """Hands a client's load-balanced tasks to its engines; see the module docstring.

    Everything but :meth:`submit` runs on the I/O thread.
    """

    def __init__(self, client):
        self.client = client
        self.loop = client.io_loop
        self.slots: dict = {}  # engine id -> _Slot, live engines only
        self.groups: dict = {}  # frozenset of engine ids (None: any) -> deque of ready Tasks
        self.n_ready = 0  # PENDING tasks in self.groups
        self.waiting = DependencyWaiter(self.loop, self._deps_met, self._fail)
        self.held: list = []  # (Task, old batch): back once that batch's outputs are in
        self.estimates: dict = {}  # function key -> seconds per element
        self.stats = collections.Counter()  # batches and tasks sent (for tests, tuning)
        self._seq = itertools.count()
        self._inbox: collections.deque = collections.deque()  # lists of tasks from submit()
        self._drain_pending = False
        self._wake_pending = False
        self._hold_timer = None

    # -- any thread ------------------------------------------------------------------

    def submit(self, tasks) -> None:
        """Queue tasks (built by a view) for load balancing."""
        for task in tasks:
            task.scheduler = self
        self._inbox.append(tasks)
        # Wake the I/O thread only if no drain is pending: a wake-up is a
        # system call, which hands the GIL to the I/O thread, per apply_async.
        # (No lock needed: _drain clears the flag *before* it empties the
        # inbox, and we append *before* we read the flag.)
        if not self._drain_pending:
            self._drain_pending = True
            self.loop.call_soon(self._drain)

    # -- hooks the Client calls (I/O thread) ----------------------------------------------

    def engines_changed(self) -> None:
        """Track engines coming and going; re-place tasks that were bound to lost ones."""
        ids = self.client.ids
        for eid, slot in list(self.slots.items()):
            if eid not in ids or self.client.engine_connection(eid) is not slot.conn:
                del self.slots[eid]
        for eid in ids:
            conn = self.client.engine_connection(eid)
            if eid not in self.slots and conn is not None:
                self.slots[eid] = _Slot(eid, conn)
        live = frozenset(self.slots)
        lost = [key for key in self.groups if (key is None and not live) or (key is not None and not key & live)]
        for key in lost:
            for task in self.groups.pop(key):
                if task.state == PENDING:
                    self.n_ready -= 1
                    self._enqueue(task)
        self._fill_all()

    def engine_free(self, engine) -> None:
        """An engine replied to a request: note what it runs now, and give it more work."""
        slot = self.slots.get(engine.id)
        if slot is None or slot.conn is not engine:
            return
        head = next(iter(engine.inflight.values()), None)
        if isinstance(head, Batch) and head.started_at is None and head.slot is slot:
            self._started(head)
        if self.n_ready or self.held:
            self._fill_all()

    def abort(self, msg_ids, engine_ids) -> None:
        """Abort tasks not yet sent: those in ``msg_ids``, or (None) all of them.

        With no ``msg_ids``, ``engine_ids`` picks the tasks that may only run
        on those engines (queued tasks are on no engine yet).
        """
        wanted = None if msg_ids is None else set(msg_ids)

        def hit(task):
            if task.state != PENDING:
                return False
            if wanted is not None:
                return task.msg_id in wanted
            return engine_ids is None or (task.targets is not None and task.targets <= engine_ids)

        for queue in self.groups.values():
            for task in queue:
                if hit(task):
                    self.n_ready -= 1
                    self._abort(task)
        for task in [t for t in self.waiting.tasks.values() if hit(t)]:
            self.waiting.discard(task)
            self._abort(task)
        for task, _batch in self.held:
            if hit(task):
                self._abort(task)

    def unassigned_ids(self) -> list:
        """msg_ids of tasks not on any engine yet."""
        ids = [t.msg_id for queue in self.groups.values() for t in queue if t.state == PENDING]
        ids += list(self.waiting.tasks)
        ids += [t.msg_id for t, _batch in self.held if t.state == PENDING]
        return ids

    # -- entering the queue ----------------------------------------------------------------

    def _drain(self) -> None:
        self._drain_pending = False
        inbox = self._inbox
        while inbox:
            for task in inbox.popleft():
                if task.state != PENDING:
                    continue
                task.seq = next(self._seq)
                if task.deps:
                    self.waiting.add(task)
                else:
                    self._enqueue(task)
        self._fill_all()

    def _deps_met(self, task) -> None:
        self._enqueue(task)
        self._wake()

    def _enqueue(self, task, front=False) -> None:
        """Put a ready task in the queue of the engines it may use (or fail it if there are none)."""
        live = frozenset(self.slots)
        allowed = task.targets
        if task.follow_engines is not None:
            allowed = task.follow_engines if allowed is None else allowed & task.follow_engines
        if task.banned:
            allowed = (live if allowed is None else allowed) - task.banned
        if allowed is None:
            if not live:
                self._fail(task, EngineError(f"task {task.msg_id} has no engine left to run on"))
                return
            key, usable = None, live
        else:
            usable = key = allowed & live
            if not usable:
                self._fail(task, ImpossibleDependency(self._why_nowhere(task)))
                return
        if task.avoid:
            preferred = usable - task.avoid
            if preferred:  # elsewhere first; back where it failed if nowhere else
                key = preferred
        queue = self.groups.get(key)
        if queue is None:
            queue = self.groups[key] = collections.deque()
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)
        self.n_ready += 1

    def _why_nowhere(self, task) -> str:
        if task.banned:
            return (f"task {task.msg_id} has no engine left to try: its dependency check failed"
                    f" on engine(s) {sorted(task.banned)}")
        if task.follow_engines is not None:
            return (f"task {task.msg_id} must follow tasks that ran on engine(s)"
                    f" {sorted(task.follow_engines)}, which it may not use or which are gone")
        return f"task {task.msg_id} may only run on engine(s) {sorted(task.targets)}, which are gone"

    # -- sending ------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Fill engines soon (once, however many events ask for it)."""
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon(self._fill_all)

    def _fill_all(self) -> None:
        """Send batches while some engine has room and a task it may run; least loaded first."""
        self._wake_pending = False
        if self.held:
            self._release_held()
        while self.n_ready > 0:
            # Only engines with room are ranked: with many engines, most are
            # full when one frees up, and ranking all of them on every reply
            # cost more client CPU than the tasks (half of it at 128 engines).
            for slot in sorted([s for s in self.slots.values() if s.has_room()], key=_load):
                tasks = self._take(slot)
                if tasks:
                    self._send(slot, tasks)
                    break
            else:
                return

    def _estimate(self, task):
        per = self.estimates.get(task.fkey)
        return None if per is None else per * task.weight

    def _take(self, slot) -> list:
        """Pop the next batch for ``slot``'s engine, in FIFO order (see the module docstring)."""
        eid = slot.eid
        queues = [q for key, q in self.groups.items() if q and (key is None or eid in key)]
        if not queues:
            return []
        queued, engines = sum(map(len, queues)), len(self.slots)
        share = math.ceil(queued / (SPLIT * engines))
        # ... but not so few tasks that the request costs more than their work
        # (up to an even split of the queue).
        estimate = self._estimate(min(queues, key=_head_seq)[0])
        if estimate:
            share = max(share, min(math.ceil(MIN_BATCH_TIME / estimate), math.ceil(queued / engines)))
        limit = max(1, min(share, MAX_BATCH))
        batch, seconds, nbytes = [], 0.0, 0
        while queues and len(batch) < limit:
            queue = queues[0] if len(queues) == 1 else min(queues, key=_head_seq)
            task = queue[0]
            if task.state != PENDING:  # aborted or failed while queued
                queue.popleft()
            else:
                estimate = self._estimate(task)
                alone = estimate is None or task.time_limit is not None
                if batch and (alone or seconds + estimate > BATCH_TIME or nbytes + task.nbytes > MAX_BATCH_BYTES):
                    break
                queue.popleft()
                self.n_ready -= 1
                batch.append(task)
                if alone:
                    break
                seconds += estimate
                nbytes += task.nbytes
            if not queue:
                queues.remove(queue)
        for key in [k for k, q in self.groups.items() if not q]:
            del self.groups[key]
        return batch

    def _send(self, slot, tasks) -> None:
        specs, frames = [], []
        now = time.time()
        estimate = 0.0
        for task in tasks:
            if task.attempts:
                task.reset_outputs()
            task.attempts += 1
            task.state = SENT
            task.sent = now
            specs.append(dict(task.spec, id=task.msg_id, nframes=len(task.frames)))  # spec: its pickler
            frames.extend(task.frames)
            if estimate is not None:
                one = self._estimate(task)
                estimate = None if one is None else estimate + one
        spec = {"op": "batch", "tasks": specs}
        tracked = [t for t in tasks if t.track]
        batch = Batch(tasks, frames, spec)
        batch.track = bool(tracked)
        batch.slot = slot
        batch.limit = tasks[0].time_limit
        batch.pipelinable = batch.limit is None and estimate is not None and estimate <= PIPELINE_MAX
        batch.work = PIPELINE_MAX if estimate is None else estimate
        for task in tasks:
            task.batch = batch
        conn = slot.conn
        idle = conn.load == 0
        slot.batches.append(batch)
        batch.add_done_listener(self._batch_done)
        # Our (pipelined) batch goes on the wire at once, but the engine keeps
        # its own limit for other work, so queued DirectView requests stay
        # abortable.  (submit sends synchronously, on this thread.)
        limit = conn.max_inflight
        conn.max_inflight = max(limit, PIPELINE_DEPTH)
        try:
            conn.submit(batch)
        finally:
            conn.max_inflight = limit
        if idle and batch.state == SENT:
            self._started(batch)
        for task in tracked:
            task.tracker = batch.tracker
        self.stats["batches"] += 1
        self.stats["tasks"] += len(tasks)

    def _started(self, batch) -> None:
        """The engine has begun ``batch``: start the clock on a time limit."""
        batch.started_at = time.monotonic()
        if batch.limit is not None:
            batch.timer = self.loop.call_later(batch.limit, self._deadline, batch)

    def _deadline(self, batch) -> None:
        """A time-limited task is still running: interrupt its engine (again, if it ignored us)."""
        batch.timer = None
        task = batch.task[0]
        if batch.state == DONE or task.state != SENT or task.batch is not batch:
            return
        if batch.interrupts >= INTERRUPT_TRIES:
            timeout = TaskTimeout(f"task {task.msg_id} ran past its time_limit of {batch.limit:g} s and engine"
                                  f" {batch.slot.eid} ignored {batch.interrupts} interrupts; it may still be"
                                  f" running there, and the engine gets no more tasks until it is done")
            timeout.engine_info = {"engine_id": batch.slot.eid, "method": "apply"}
            task.engine_id = batch.slot.eid
            self._fail(task, timeout)  # no retry: it could run twice at once
            return
        batch.timed_out = True
        batch.interrupts += 1
        batch.slot.interrupted_at = time.monotonic()
        batch.slot.conn.send_control("interrupt_request")
        batch.timer = self.loop.call_later(INTERRUPT_REPEAT, self._deadline, batch)

    # -- outcomes ---------------------------------------------------------------------------------

    def attempt_done(self, task, status, error, result_frames, started, completed) -> bool:
        """An engine reported on one attempt of ``task`` (called by Task.finish)."""
        batch = task.batch
        if started is not None and completed is not None:
            self._learn(task, completed - started)
        if batch is not None and batch.timed_out:
            ran = None if started is None or completed is None else completed - started
            if status != "ok" or ran is None or ran > batch.limit:
                timeout = TaskTimeout(f"task {task.msg_id} ran past its time_limit of {batch.limit:g} s"
                                      f" and was interrupted on engine {task.engine_id}")
                timeout.engine_info = {"engine_id": task.engine_id, "method": "apply"}
                timeout.__cause__ = error  # where it was interrupted, for the traceback
                return self._retry_or_fail(task, timeout, batch, started, completed)
        if status == "ok":
            return task.settle(status, None, result_frames, started, completed)
        ename = getattr(error, "ename", None)
        if ename == "UnmetDependency":  # its @depend check failed there: never that engine again
            task.banned = (task.banned or set()) | {task.engine_id}
            self._requeue(task, batch)
            return False
        if ename == "KeyboardInterrupt" and batch is not None and _recent(batch.slot.interrupted_at):
            self._requeue(task, batch)  # our interrupt, meant for a task that had just ended
            return False
        return self._retry_or_fail(task, error, batch, started, completed)

    def _batch_done(self, batch) -> None:
        """A batch's request is over: deal with the tasks it did not report on."""
        self.loop.cancel(batch.timer)
        batch.timer = None
        slot = batch.slot
        if batch in slot.batches:
            slot.batches.remove(batch)
        unfinished = [t for t in batch.task if t.state == SENT and t.batch is batch]
        if batch.status == "ok":
            # The engine stopped at an interrupted task: the rest never ran.
            for task in unfinished:
                self._requeue(task, batch)
        elif isinstance(batch.error, EngineError):
            # Its engine died.  If the batch was running, its first unfinished
            # task was the one running: that one failed; the rest never ran.
            for i, task in enumerate(unfinished):
                if i == 0 and batch.started_at is not None:
                    self._retry_or_fail(task, batch.error, batch)
                    task.outputs_ready.set()
                else:
                    self._requeue(task, batch)
        # Otherwise the request failed as a whole; the engine connection
        # finishes every task with that error right after this.
        self._wake()

    def _retry_or_fail(self, task, error, batch, started=None, completed=None) -> bool:
        if batch is not None:
            task.engine_id = batch.slot.eid
        if task.retries > 0 and isinstance(error, (RemoteError, EngineError, TaskTimeout)):
            task.retries -= 1
            task.avoid = (task.avoid or set()) | {task.engine_id}
            self._requeue(task, batch)
            return False
        return task.settle("error", error, None, started, completed)

    def _requeue(self, task, batch) -> None:
        """Send a task again, once its last attempt's outputs are in (see :meth:`_release`)."""
        task.state = PENDING
        task.batch = None
        if batch is not None and not batch.outputs_ready.is_set():
            self.held.append((task, batch))
            if self._hold_timer is None:
                self._hold_timer = self.loop.call_later(HOLD_POLL, self._hold_tick)
        else:
            self._release(task, batch)

    def _release(self, task, batch, front=True) -> None:
        # Outputs are routed by msg_id, and a retry keeps the task's msg_id:
        # until the old request's idle status has passed, the old request's
        # routing could swallow the new attempt's outputs.  Now it has; drop
        # the old route if it is still there (an idle status was lost).
        if batch is not None:
            routes = batch.slot.conn.routes
            if routes.get(task.msg_id) is task:
                del routes[task.msg_id]
        self._enqueue(task, front=front)

    def _release_held(self) -> None:
        ready, still = [], []
        for task, batch in self.held:
            if task.state != PENDING:
                continue
            if batch.outputs_ready.is_set() or batch.slot.conn.dead_reason:
                ready.append((task, batch))
            else:
                still.append((task, batch))
        self.held = still
        for task, batch in reversed(ready):  # front of the queue, in their old order
            self._release(task, batch)

    def _hold_tick(self) -> None:
        self._hold_timer = None
        self._fill_all()
        if self.held:
            self._hold_timer = self.loop.call_later(HOLD_POLL, self._hold_tick)

    def _fail(self, task, error) -> None:
        """Fail a task for good, from the client side (it is on no engine, or given up there)."""
        self.loop.cancel(task.timer)
        task.settle("error", error)
        task.outputs_ready.set()

    def _abort(self, task) -> None:
        self.loop.cancel(task.timer)
        task.settle("aborted", TaskAborted(f"task {task.msg_id} was aborted before it ran"))
        task.outputs_ready.set()

    def _learn(self, task, seconds) -> None:
        """Update the run-time estimate of the task's function.

        It rises at once to a slower run and comes down gradually, so one
        slow call is enough to stop batching and pipelining behind that
        function for a while.
        """
        per = max(seconds, 0.0) / task.weight
        old = self.estimates.get(task.fkey)
        if old is None and len(self.estimates) >= MAX_ESTIMATES:
            del self.estimates[next(iter(self.estimates))]
        self.estimates[task.fkey] = per if old is None or per > old else old + LEARN_RATE * (per - old)


def _load(slot):
    """Least loaded first: fewest requests, then least estimated work."""
    return slot.conn.load, sum(b.work for b in slot.batches), slot.eid


def _head_seq(queue):
    return queue[0].seq


def _recent(when) -> bool:
    return when is not None and time.monotonic() - when < SPURIOUS_WINDOW
