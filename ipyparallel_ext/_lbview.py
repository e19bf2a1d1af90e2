"""LoadBalancedView: tasks go to whichever engine is free, through the client's scheduler.

The view turns calls into :class:`~._scheduler.Task` records (one per
``apply``, one per chunk of a ``map``), gives them to the client's
:class:`~._scheduler.TaskScheduler` and returns AsyncResults.  It also
offers ``imap`` (lazy, for endless inputs), a ``concurrent.futures``
executor and a joblib backend.
"""

from __future__ import annotations

import collections
import concurrent.futures
import numbers
import threading
import time
import weakref

from . import _engine_code, _mapping, _wire
from ._asyncresult import AsyncMapResult, AsyncResult
from ._dependency import Dependency
from ._scheduler import scheduler_for
from ._task import Task
from ._view import View, call_name, check_callable

_TASK_FLAGS = ("after", "follow", "timeout", "retries", "time_limit")


class LoadBalancedView(View):
    """Work that runs on whichever engine is free: ``rc.load_balanced_view()``.

    Flags, besides ``block``, ``track`` and ``targets`` (the engines it may
    use; default all, including engines that join later):

    after : Dependency, AsyncResult, msg_id or a list of them
        Run only after these tasks have finished (by default: succeeded).
    follow : same
        Run only on an engine where these tasks ran.
    timeout : float
        Seconds a task may wait for ``after``/``follow`` before failing with
        DependencyTimeout (None or 0: forever).
    retries : int
        Times a failed task is sent again, to another engine if there is one
        (also when its engine dies under it).
    time_limit : float
        Seconds a task may *run*; past that its engine is interrupted and the
        task fails with TaskTimeout (the engine goes on with the next one).

    Notes
    -----
    Short tasks travel several to a request, sized from the run times the
    engines report, so the default ``chunksize=1`` is fast; each task keeps
    its own result, error, outputs and metadata.  ``abort`` reaches tasks
    still queued in this client; a task already sent to an engine (even one
    not started, in a request queued there) runs.
    """

    _flag_names = View._flag_names + _TASK_FLAGS
    after = None
    follow = None
    timeout = None
    retries = 0
    time_limit = None

    def __init__(self, client, targets=None, **flags):
        self._scheduler = scheduler_for(client)
        super().__init__(client, targets=targets, **flags)

    def set_flags(self, **flags) -> None:
        """Set flags (see the class docstring); checked here so mistakes show at once.

        Raises
        ------
        KeyError
            For a flag this view does not have.
        TypeError, ValueError
            For a value a flag cannot take.
        """
        for name, value in flags.items():
            _check_flag(name, value)
        return super().set_flags(**flags)

    def _initial_targets(self, targets):
        """As ipyparallel: None (any engine) for None and 'all', else a list of engine ids."""
        if targets is None or (isinstance(targets, str) and targets == "all"):
            return None
        return self.client.resolve_targets(targets)

    # -- building tasks ---------------------------------------------------------------------------

    def _options(self, **overrides) -> dict:
        """The flags for one call, resolved: targets as a frozenset, dependencies as records."""
        unknown = set(overrides) - set(self._flag_names)
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}")
        for name, value in overrides.items():
            _check_flag(name, value)
        flags = self._flags(**overrides)
        targets = flags["targets"]
        ids = self.client.resolve_targets(targets)  # checks them, and that there are engines
        flags["targets"] = None if targets is None or targets == "all" else frozenset(ids)
        flags["deps"] = [dep for dep in (self._resolve("after", flags["after"]),
                                          self._resolve("follow", flags["follow"])) if dep]
        return flags

    def _resolve(self, kind, value):
        """``(kind, Dependency, records, missing msg_ids)`` for the scheduler, or None."""
        if value is None:
            return None
        dep = value if isinstance(value, Dependency) else Dependency(value)
        if not dep:
            return None
        records = [dep.records[m] for m in dep if m in dep.records]
        lookup = [m for m in dep if m not in dep.records]
        missing = []
        if lookup:
            try:
                records += self.client.get_result(lookup)._records
            except KeyError:
                for msg_id in lookup:
                    try:
                        records += self.client.get_result([msg_id])._records
                    except KeyError:
                        missing.append(msg_id)
        return kind, dep, records, missing

    def _task(self, flags, f, weight=1, frames=None) -> Task:
        task = self.client.new_record("apply", record_class=Task)
        task.targets = flags["targets"]
        task.deps = flags["deps"] or None
        task.dep_timeout = flags["timeout"] or None
        task.retries = flags["retries"]
        task.time_limit = flags["time_limit"]
        task.fkey = _function_key(f)
        task.weight = weight
        task.label = flags["label"]
        if flags["track"]:
            task.track = True
        if frames is not None:
            _set_frames(task, frames)
        return task

    def _submit_call(self, f, args, kwargs, flags) -> AsyncResult:
        """One task calling ``f(*args, **kwargs)``; its AsyncResult (not blocking)."""
        check_callable(f)
        frames = _wire.serialize_call(f, args, kwargs, self.client.pickler)
        task = self._task(flags, f, frames=frames)
        # The AsyncResult listens to the record before the I/O thread may finish it.
        ar = AsyncResult(self.client, [task], fname=call_name(f), single=True)
        self._scheduler.submit([task])
        return ar

    # -- the View API ---------------------------------------------------------------------------

    def _really_apply(self, f, args, kwargs, block=None, track=None, targets=None, **task_flags):
        flags = self._options(block=block, track=track, targets=targets, **task_flags)
        ar = self._submit_call(f, args, kwargs, flags)
        return self._finish(ar, flags["block"])

    def map(self, f, *sequences, block=None, chunksize=1, ordered=True, return_exceptions=False, label=None):
        """Map ``f`` over ``sequences`` (any iterables), ``chunksize`` elements per task.

        Results come back in input order (``ordered=True``) or as tasks
        finish when iterated; blocks if ``block`` (default: the view's flag).
        """
        return self._map(f, sequences, block=block, chunksize=chunksize, ordered=ordered,
                         return_exceptions=return_exceptions, label=label)

    def _map(self, f, sequences, block=None, chunksize=1, ordered=True, return_exceptions=False,
             **task_flags):
        """``chunksize`` elements per task; results come back in order (or as they finish)."""
        check_callable(f, "map")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
        flags = self._options(block=block, **task_flags)
        seqs = [_mapping.sliceable(s) for s in sequences]
        length = min(len(s) for s in seqs)
        starts = range(0, length, chunksize)
        sizes = [min(chunksize, length - start) for start in starts]
        # Records first, so the AsyncMapResult listens to all of them before any can finish.
        tasks = [self._task(flags, f, size) for size in sizes]
        ar = AsyncMapResult(self.client, tasks, fname=call_name(f), chunk_sizes=sizes, ordered=ordered,
                            return_exceptions=return_exceptions)
        chunks = ((f, *(s[start:start + chunksize] for s in seqs)) for start in starts)
        self._send_progressively(tasks, chunks)
        return self._finish(ar, flags["block"])

    def _send_progressively(self, tasks, chunks) -> None:
        """Pickle map chunks and hand them to the scheduler in growing groups.

        Engines start on the first chunks while the rest are pickled (as
        ipyparallel sends each chunk as it goes).  If a chunk cannot be
        pickled, the tasks already handed over are aborted if they have not
        started, the others fail with the error, and it is raised here.
        """
        pickler = self.client.pickler
        sent, group = 0, 8
        try:
            for i, (task, args) in enumerate(zip(tasks, chunks), 1):
                _set_frames(task, _wire.serialize_call(_engine_code.map_chunk, args, {}, pickler))
                if i - sent >= group or i == len(tasks):
                    self._scheduler.submit(tasks[sent:i])
                    sent, group = i, min(2 * group, 512)
        except BaseException as exc:
            if sent:
                self.client.abort([t.msg_id for t in tasks[:sent]])
            for task in tasks[sent:]:
                task.finish("error", exc)  # never sent: no scheduler owns it
            raise

    def imap(self, f, *sequences, ordered=True, max_outstanding="auto", return_exceptions=False):
        """Lazily map ``f`` over ``sequences``: an iterator over the results.

        Inputs are consumed only as tasks finish, at most ``max_outstanding``
        tasks ahead ('auto': two per engine; 0: no limit), so endless
        generators work.  ``.cancel()`` stops consuming inputs; tasks already
        sent still yield their results.
        """
        return LazyMapIterator(self, f, sequences, ordered, max_outstanding, return_exceptions)

    def register_joblib_backend(self, name="ipyparallel", make_default=False) -> None:
        """Let ``joblib.Parallel(backend=name)`` run on this view's engines."""
        from ._joblib import register_joblib_backend

        register_joblib_backend(name, make_default, view=self)


def _check_flag(name, value) -> None:
    if name in ("after", "follow") and value is not None and not isinstance(value, Dependency):
        try:
            Dependency(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid {name} dependency {value!r}: {exc}") from None
    elif name in ("timeout", "time_limit") and value is not None:
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0 or None, not {value!r}")
        if name == "time_limit" and value == 0:
            raise ValueError("time_limit must be > 0 (None: no limit)")
    elif name == "retries" and value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"retries must be an int >= 0, not {value!r}")


def _set_frames(task, frames) -> None:
    task.frames = frames
    task.nbytes = _wire.pickled_size(frames)


def _function_key(f):
    """Names a task's function, so the scheduler can learn how long it takes."""
    if isinstance(f, _wire.Reference):
        return "<engine>", f.name
    return getattr(f, "__module__", None), getattr(f, "__qualname__", None) or type(f).__qualname__


class _ImapState:
    """What an imap's input thread and its consumer share (kept apart from the iterator,
    so that dropping the iterator stops the input thread)."""

    def __init__(self, ordered, max_outstanding):
        self.cond = threading.Condition()
        self.ordered = ordered
        self.max = max_outstanding
        self.results = collections.deque()  # ordered: sent ARs; unordered: finished ARs
        self.outstanding = 0  # sent and not finished
        self.sent = self.yielded = 0
        self.exhausted = False  # no more inputs will be sent
        self.cancelled = False
        self.error = None  # raised by the input iterable

    def one_done(self, ar) -> None:
        with self.cond:
            self.outstanding -= 1
            if not self.ordered:
                self.results.append(ar)
            self.cond.notify_all()


def _feed(state, view, f, inputs, flags) -> None:
    """Input thread of an imap: send one task per input while there is room."""
    try:
        while True:
            with state.cond:
                while state.max and state.outstanding >= state.max and not state.cancelled:
                    state.cond.wait()
                if state.cancelled:
                    return
            try:
                args = next(inputs)
            except StopIteration:
                return
            ar = view._submit_call(f, args, {}, flags)
            view.history.extend(ar.msg_ids)
            with state.cond:
                state.outstanding += 1
                state.sent += 1
                if state.ordered:
                    state.results.append(ar)
                state.cond.notify_all()
            ar._add_done_listener(state.one_done)  # ours and quick: stays on the I/O thread
    except Exception as exc:  # the input iterable (or pickling an input) failed: the reader sees it
        with state.cond:
            state.error = exc
    finally:
        with state.cond:
            state.exhausted = True
            state.cond.notify_all()


class LazyMapIterator:
    """The iterator :meth:`LoadBalancedView.imap` returns; ``cancel()`` stops consuming inputs."""

    def __init__(self, view, f, sequences, ordered=True, max_outstanding="auto",
                 return_exceptions=False, timeout=None):
        if not sequences:
            raise TypeError("imap needs at least one sequence")
        if max_outstanding == "auto":
            max_outstanding = 2 * max(1, len(view))
        flags = view._options(block=False)
        self._state = state = _ImapState(ordered, max_outstanding)
        self._return_exceptions = return_exceptions
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._thread = threading.Thread(target=_feed, args=(state, view, f, zip(*sequences), flags),
                                        name="ipyparallel_ext-imap", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def _left(self):
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("imap results not ready in time")
        return left

    def __next__(self):
        state = self._state
        with state.cond:
            while not state.results:
                if state.exhausted and state.yielded == state.sent:
                    if state.error is not None:
                        error, state.error = state.error, None
                        raise error
                    raise StopIteration
                left = self._left()
                state.cond.wait(0.5 if left is None else min(left, 0.5))
            ar = state.results.popleft()
            state.yielded += 1
        try:
            return ar.get(self._left())
        except Exception as exc:
            if self._return_exceptions and not isinstance(exc, TimeoutError):
                return exc
            raise

    def cancel(self) -> None:
        """Stop consuming inputs (tasks already sent still yield their results)."""
        with self._state.cond:
            self._state.cancelled = True
            self._state.cond.notify_all()

    def wait_sent(self, timeout=None) -> None:
        """Wait until the input thread has stopped sending."""
        self._thread.join(timeout)

    def __del__(self):
        if hasattr(self, "_state"):  # (not if __init__ failed)
            self.cancel()  # a dropped iterator must not keep reading an endless input


def _in_time(ar, timeout):
    """An iterator over ``ar``'s results that raises TimeoutError if they are not
    all in ``timeout`` seconds after now (the call of ``map``), as Executor.map does."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def results():
        if deadline is not None and not ar.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"map results not ready {timeout} s after the call")
        yield from ar

    return results()


class ViewExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` over a view (``view.executor``).

    ``submit`` is ``apply_async`` (the AsyncResult is a Future); ``map`` is a
    lazy, ordered ``imap`` on a LoadBalancedView, a ``map_async`` read in
    order on other views.  ``shutdown`` waits for results but never stops
    engines.
    """

    def __init__(self, view):
        self.view = view
        self._maps: weakref.WeakSet = weakref.WeakSet()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self.view.apply_async(fn, *args, **kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not isinstance(self.view, LoadBalancedView):
            return _in_time(self.view.map_async(fn, *iterables), timeout)
        results = LazyMapIterator(self.view, fn, iterables, timeout=timeout)
        self._maps.add(results)
        return results

    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        self._shutdown = True
        maps = list(self._maps)
        if cancel_futures:
            for results in maps:
                results.cancel()
            self.view.abort()
        if wait:
            for results in maps:
                results.wait_sent()
            self.view.wait()
