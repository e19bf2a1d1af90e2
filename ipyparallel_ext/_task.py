"""The records of load-balanced work: a Task (what a user's AsyncResult watches) and a Batch.

A :class:`Task` is a :class:`~._record.MessageRecord` that may take several
*attempts* (retries, or going back to the queue when its engine stops before
reaching it), so finishing an attempt is not finishing the task: the engine
connection calls :meth:`Task.finish`, and the scheduler decides.  A
:class:`Batch` is one ``execute_request`` carrying several tasks
(``batch.task``), run one after the other by the engine's ``batch`` op.
"""

from __future__ import annotations

from . import _wire
from ._record import SENT, MessageRecord


class Task(MessageRecord):
    """One load-balanced task: the record its AsyncResult watches, plus scheduling state.

    The engine connection ends each *attempt* with :meth:`finish`; the
    scheduler then either settles the task (:meth:`settle`, final) or sends
    it again.  Fields other than the record's are set by the view before
    submission and owned by the scheduler after.
    """

    __slots__ = ("scheduler", "seq", "targets", "deps", "after", "follow", "dep_timeout",
                 "retries", "time_limit", "fkey", "weight", "nbytes", "avoid", "banned",
                 "batch", "timer", "attempts", "follow_engines")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduler = None
        self.seq = 0
        self.targets = None  # frozenset of engine ids, or None: any engine
        self.deps = None  # [(kind, Dependency, records, missing msg_ids)] from the view
        self.after = self.follow = None  # DependencyWatch while waiting
        self.dep_timeout = None
        self.retries = 0
        self.time_limit = None
        self.fkey = None  # names the function, for run-time estimates
        self.weight = 1  # elements of a map chunk
        self.nbytes = 0
        self.avoid = None  # engines where it failed: tried last
        self.banned = None  # engines where its @depend check failed: never
        self.batch = None  # the batch of the current attempt
        self.timer = None
        self.attempts = 0
        self.follow_engines = None

    def finish(self, status, error=None, result_frames=None, started=None, completed=None):
        """End the current attempt (engine connection); the scheduler decides what follows."""
        scheduler = self.scheduler
        if scheduler is None:
            return super().finish(status, error, result_frames, started, completed)
        if self.state != SENT:
            return False  # a late report on an attempt already dealt with
        return scheduler.attempt_done(self, status, error, result_frames, started, completed)

    def settle(self, status, error=None, result_frames=None, started=None, completed=None):
        """Finish for good: the AsyncResult sees this outcome."""
        self.scheduler = None
        self.batch = None
        self.deps = self.after = self.follow = None  # let depended-on records go
        return super().finish(status, error, result_frames, started, completed)

    def reset_outputs(self) -> None:
        """Forget a failed attempt's outputs before the next one."""
        self.stdout = self.stderr = ""
        self.outputs = []
        self.execute_result = None
        self.data = None
        self.outputs_seen = 0
        self.outputs_ready.clear()


class Batch(MessageRecord):
    """A request carrying several tasks (``record.task``), and its scheduling state."""

    __slots__ = ("slot", "started_at", "timer", "timed_out", "pipelinable", "limit", "work", "interrupts")

    def __init__(self, tasks, frames, spec):
        super().__init__(_wire.new_msg_id(), "batch", frames, spec)
        self.task = tasks
        self.slot = None
        self.started_at = None  # when the engine began it (monotonic), if known
        self.timer = None
        self.timed_out = False  # interrupted by us for its time limit
        self.interrupts = 0  # interrupts sent for it (capped by the scheduler)
        self.pipelinable = False
        self.limit = None  # the time limit of its (single) task
        self.work = 0.0  # estimated seconds it takes
