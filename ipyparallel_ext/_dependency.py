"""Task dependencies: ``Dependency`` sets, the ``@depend`` / ``@require`` decorators, and their bookkeeping.

Two kinds of dependency, as in ipyparallel:

- *graph* dependencies name other tasks (``after``: run once they have
  finished; ``follow``: run on an engine where they ran).  The client's
  scheduler checks them (:class:`DependencyWatch` counts the outcomes).
- *functional* dependencies are checked on the engine, just before the task
  runs (``@depend(check, ...)``, ``@require('numpy')``).  An unmet one raises
  :class:`~ipyparallel_ext.error.UnmetDependency` there, and the scheduler
  tries the task on another engine.
"""

from __future__ import annotations

import functools
from types import ModuleType

from ._asyncresult import AsyncResult
from ._engine_code import _require, dependent
from .error import DependencyTimeout, ImpossibleDependency, InvalidDependency

__all__ = ["Dependency", "depend", "dependent", "require"]


class Dependency(set):
    """A set of msg_ids that a task depends on, and what counts as met.

    Parameters
    ----------
    dependencies : msg_id, AsyncResult, iterable of them, or a dict from :meth:`as_dict`
        The tasks depended on.
    all : bool
        Met when *all* of them have finished (True) or when *any* has.
    success : bool
        Tasks that succeeded count towards meeting the dependency.
    failure : bool
        Tasks that failed count towards meeting it.

    With the defaults (``all=True, success=True, failure=False``) one failed
    task makes the dependency impossible: the dependent task then fails with
    :class:`~ipyparallel_ext.error.ImpossibleDependency`.
    """

    def __init__(self, dependencies=(), all=True, success=True, failure=False):
        if isinstance(dependencies, dict):
            all = dependencies.get("all", all)
            success = dependencies.get("success", success)
            failure = dependencies.get("failure", failure)
            dependencies = dependencies.get("dependencies", [])
        if isinstance(dependencies, (str, AsyncResult)):
            dependencies = [dependencies]
        # Records of AsyncResults are kept, so the dependency still works
        # after the client has purged them.
        self.records = {}
        ids = []
        for dep in dependencies:
            if isinstance(dep, str):
                ids.append(dep)
            elif isinstance(dep, AsyncResult):
                ids.extend(dep.msg_ids)
                self.records.update((r.msg_id, r) for r in dep._records)
            else:
                raise TypeError(f"a dependency is a msg_id or an AsyncResult, not {type(dep).__name__}")
        super().__init__(ids)
        if not (success or failure):
            raise ValueError("a Dependency must count successes, failures or both")
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)

    def check(self, completed, failed=None) -> bool:
        """True if the dependency is met, given sets of succeeded and failed msg_ids."""
        if not self:
            return True
        against = set(completed) if self.success else set()
        if failed is not None and self.failure:
            against |= set(failed)
        return self.issubset(against) if self.all else not self.isdisjoint(against)

    def unreachable(self, completed, failed=None) -> bool:
        """True if the dependency can never be met, given the same sets."""
        if not self:
            return False
        against = set(completed) if not self.success else set()
        if failed is not None and not self.failure:
            against |= set(failed)
        return not self.isdisjoint(against) if self.all else self.issubset(against)

    def as_dict(self) -> dict:
        """A JSON-able form, accepted back by the constructor."""
        return {"dependencies": list(self), "all": self.all, "success": self.success, "failure": self.failure}

    def __repr__(self) -> str:
        return (f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")


class DependencyWatch:
    """Outcome counts of one task's dependency (scheduler, I/O thread).

    Fed each depended-on record as it finishes (:meth:`update`); says when
    the dependency is met, impossible, and (for ``follow``) on which engines.
    """

    __slots__ = ("all", "success", "failure", "total", "good", "bad", "engines")

    def __init__(self, dependency: Dependency, total: int):
        self.all = dependency.all
        self.success = dependency.success
        self.failure = dependency.failure
        self.total = total
        self.good = 0  # finished with an outcome that counts
        self.bad = 0  # finished with an outcome that does not
        self.engines: set = set()  # where the counting ones ran

    def update(self, record) -> None:
        """Count a depended-on record that has just finished."""
        if (self.failure if record.error is not None else self.success):
            self.good += 1
            self.engines.add(record.engine_id)
        else:
            self.bad += 1

    @property
    def met(self) -> bool:
        return self.good == self.total if self.all else self.good > 0 or self.total == 0

    @property
    def impossible(self) -> bool:
        return self.bad > 0 if self.all else self.total > 0 and self.bad == self.total

    def follow_engines(self):
        """Engines a ``follow`` dependency allows, or None if no engine can ever meet it."""
        if self.all and len(self.engines) > 1:
            return None  # they ran on different engines: no one engine ran them all
        return frozenset(self.engines)


class DependencyWaiter:
    """Tasks waiting for their ``after``/``follow`` dependencies (the scheduler's, I/O thread).

    Each task's dependencies come resolved by the view (``task.deps``: kind,
    Dependency, records, unknown msg_ids).  Every depended-on record tells a
    :class:`DependencyWatch` when it finishes; when they add up, the task is
    handed to ``ready(task)`` (with ``task.follow_engines`` set for
    ``follow``), or to ``fail(task, error)`` if they never can, or if it
    waited longer than its ``timeout``.
    """

    def __init__(self, loop, ready, fail):
        self.loop = loop
        self._ready = ready
        self._fail = fail
        self.tasks: dict = {}  # msg_id -> waiting task

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, task) -> None:
        """Wait for ``task``'s dependencies (hands it on at once if they are met)."""
        deps, task.deps = task.deps, None
        for kind, dependency, records, missing in deps:
            if missing:
                self._fail(task, InvalidDependency(
                    f"task {task.msg_id} depends on unknown task(s) {sorted(missing)[:3]}"))
                return
            watch = DependencyWatch(dependency, len(records))
            setattr(task, kind, watch)
            for record in records:
                # Called at once for records already done, so the counts start right.
                record.add_done_listener(functools.partial(self._record_done, task, watch))
        self.tasks[task.msg_id] = task
        if task.dep_timeout:
            task.timer = self.loop.call_later(task.dep_timeout, self._timed_out, task)
        self._check(task)

    def discard(self, task) -> None:
        """Stop waiting for ``task`` (it was aborted)."""
        if self.tasks.pop(task.msg_id, None) is task:
            self.loop.cancel(task.timer)
            task.timer = None

    def _record_done(self, task, watch, record) -> None:
        watch.update(record)
        if self.tasks.get(task.msg_id) is task:
            self._check(task)

    def _check(self, task) -> None:
        after, follow = task.after, task.follow
        why = None
        if after is not None and after.impossible:
            why = "a task it must run after did not end the way it requires"
        elif follow is not None and (follow.impossible or follow.follow_engines() is None):
            why = "the tasks it must follow did not end the required way on one engine"
        if why is None and not ((after is None or after.met) and (follow is None or follow.met)):
            return  # keep waiting
        self.discard(task)
        task.after = task.follow = None  # let the depended-on records go
        if why is not None:
            self._fail(task, ImpossibleDependency(f"task {task.msg_id} can never run: {why}"))
            return
        if follow is not None:
            task.follow_engines = follow.follow_engines()
        self._ready(task)

    def _timed_out(self, task) -> None:
        task.timer = None
        if self.tasks.pop(task.msg_id, None) is task:
            self._fail(task, DependencyTimeout(
                f"task {task.msg_id} waited more than {task.dep_timeout:g} s for its dependencies"))


# ---------------------------------------------------------------------------
# Functional dependencies, checked on the engine
# ---------------------------------------------------------------------------


class depend:
    """Decorator: run the task only on an engine where ``check(*args, **kwargs)`` holds.

    ``check`` runs on the engine just before the task; if it returns False
    (or raises :class:`~ipyparallel_ext.error.UnmetDependency`) the task goes
    to another engine, and fails with ImpossibleDependency when no engine
    qualifies.

    Examples
    --------
    ::

        def has_gpu():
            import shutil
            return shutil.which("nvidia-smi") is not None

        @ipp.depend(has_gpu)
        def train(data): ...
    """

    def __init__(self, _check, *args, **kwargs):
        self.check = _check
        self.args = args
        self.kwargs = kwargs

    def __call__(self, f):
        return dependent(f, self.check, *self.args, **self.kwargs)


def require(*objects, **mapping):
    """Decorator: the task needs these modules (and objects) on its engine.

    Modules (or their names) are imported into the engine's namespace before
    the task runs; an engine where an import fails is skipped.  Functions
    given positionally, and any object given by keyword, are sent along and
    bound in the engine's namespace under their names.  The decorated
    function sees them if it runs in that namespace (defined interactively,
    or marked ``@ipp.interactive``).

    Examples
    --------
    ::

        @ipp.require("numpy")
        def norm(a):
            return numpy.linalg.norm(a, 2)
    """
    names = []
    for obj in objects:
        if isinstance(obj, ModuleType):
            obj = obj.__name__
        if isinstance(obj, str):
            names.append(obj)
        elif hasattr(obj, "__name__"):
            mapping[obj.__name__] = obj
        else:
            raise TypeError(f"pass modules and functions positionally, other objects by keyword, "
                            f"not {type(obj).__name__}")
    return depend(_require, *names, **mapping)
