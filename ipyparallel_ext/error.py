"""The error hierarchy of ipyparallel_ext, with ipyparallel's names.

Every exception the package raises on purpose is defined here, so that
``except ipyparallel_ext.error.EngineError`` and friends work exactly as code
written for ``ipyparallel.error`` expects.  Timeouts use the builtin
:class:`TimeoutError`.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import sys
import traceback as _traceback

__all__ = [
    "IPythonError",
    "KernelError",
    "EngineError",
    "NoEnginesRegistered",
    "ReplyLost",
    "TaskAborted",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
    "ImpossibleDependency",
    "DependencyTimeout",
    "InvalidDependency",
    "RemoteError",
    "CompositeError",
    "AlreadyDisplayedError",
    "TaskRejectError",
    "SerializationError",
    "ConnectionFileError",
    "ClientClosed",
    "EngineStartError",
    "DeadlockError",
    "InvalidStateError",
    "collect_exceptions",
    "composite_error",
    "wrap_exception",
    "unwrap_exception",
]

# ipyparallel exposes error.TimeoutError; it is the builtin one.
TimeoutError = builtins.TimeoutError


class IPythonError(Exception):
    """Base of every error raised by ipyparallel_ext."""


class KernelError(IPythonError):
    """Something went wrong with an engine or with work sent to one."""


class EngineError(KernelError):
    """An engine died, was shut down or stopped answering while work was outstanding."""


class ReplyLost(EngineError):
    """An engine went on past a request without sending its reply (the request may have run)."""


class NoEnginesRegistered(KernelError):
    """The operation needs engines, and the client has none."""

    def __str__(self) -> str:
        detail = super().__str__()
        hint = (
            "This operation requires engines."
            " Start some (ipp.Cluster(n=...)) or call client.wait_for_engines(n)."
        )
        return f"{detail} {hint}" if detail else hint


class TaskAborted(KernelError):
    """The task was removed from its queue before it ran."""


class TaskTimeout(KernelError):
    """The task ran past its time limit and was interrupted on its engine."""


class UnmetDependency(KernelError):
    """A task's dependencies are not met (yet)."""


class ImpossibleDependency(UnmetDependency):
    """A task's dependencies can never be met."""


class DependencyTimeout(ImpossibleDependency):
    """A task waited longer than its ``timeout`` for its dependencies."""


class InvalidDependency(ImpossibleDependency):
    """A task's dependency names a task the client does not know."""


class TaskRejectError(KernelError):
    """Raise on an engine to ask the scheduler to retry the task elsewhere."""


class SerializationError(IPythonError, TypeError):
    """An argument or value could not be pickled (or unpickled)."""


class ConnectionFileError(IPythonError, ValueError):
    """A connection file is missing, unreadable or malformed."""


class ClientClosed(IPythonError, RuntimeError):
    """The Client was closed; make a new one to send more work."""


class EngineStartError(IPythonError, RuntimeError):
    """One or more engine kernels could not be started."""


class DeadlockError(IPythonError, RuntimeError):
    """A wait that could only deadlock: for a result, on the I/O thread that delivers results."""


class InvalidStateError(IPythonError, concurrent.futures.InvalidStateError, RuntimeError):
    """An AsyncResult cannot do that now (not done yet, done already, or completed only by its client)."""


class RemoteError(KernelError):
    """An exception raised by user code on an engine.

    Parameters
    ----------
    ename : str
        The remote exception's class name.
    evalue : str
        ``str()`` of the remote exception.
    traceback : str
        The remote traceback, already formatted.
    engine_info : dict, optional
        ``engine_id`` and ``method`` of the engine call that failed.
    """

    ename: str | None = None
    evalue: str | None = None
    traceback: str | None = None
    engine_info: dict = {}

    def __init__(self, ename, evalue, traceback, engine_info=None):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}
        self.args = (ename, evalue)

    def __repr__(self) -> str:
        engine_id = self.engine_info.get("engine_id", " ")
        return f"<{type(self).__name__}[{engine_id}]:{self.ename}({self.evalue})>"

    def __str__(self) -> str:
        return f"{self._engine_label(self.engine_info)} {self.ename}: {self.evalue}"

    @staticmethod
    def _engine_label(engine_info: dict) -> str:
        if not engine_info:
            return "[Engine Exception]"
        return f"[{engine_info.get('engine_id')}:{engine_info.get('method', 'apply')}]"

    def render_traceback(self) -> list[str]:
        """Render the remote traceback as a list of lines."""
        tb = self.traceback or "No traceback available"
        return [self._engine_label(self.engine_info)] + tb.splitlines()

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of formatting the local traceback,
        # so the user sees where the error happened: on the engine.
        return self.render_traceback()

    def print_traceback(self, excid=None) -> None:
        """Print the remote traceback."""
        print("\n".join(self.render_traceback()))


class CompositeError(RemoteError):
    """Errors from one or more engines, raised together.

    Parameters
    ----------
    message : str
        What was being done.
    elist : list of tuple
        ``(ename, evalue, traceback, engine_info)`` for each failure.
    """

    tb_limit = 4

    def __init__(self, message, elist):
        Exception.__init__(self, message, elist)
        self.msg = message
        self.elist = list(elist)
        self.args = [e[0] for e in self.elist]
        self.engine_info = {}

    def __str__(self) -> str:
        lines = [str(self.msg)]
        for ename, evalue, _tb, info in self.elist[: self.tb_limit]:
            lines.append(f"{self._engine_label(info)} {ename}: {evalue}")
        hidden = len(self.elist) - self.tb_limit
        if hidden > 0:
            lines.append(f".... {hidden} more exceptions ...")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CompositeError({len(self.elist)})"

    def _entry(self, excid):
        try:
            return self.elist[excid]
        except (IndexError, TypeError):
            raise IndexError(f"an exception with index {excid} does not exist") from None

    def render_traceback(self, excid=None) -> list[str]:
        """Render one (``excid``) or the first ``tb_limit`` remote tracebacks."""
        chosen = self.elist[: self.tb_limit] if excid is None else [self._entry(excid)]
        lines: list[str] = []
        for _ename, _evalue, tb, info in chosen:
            lines.append(self._engine_label(info) + ":")
            lines.extend((tb or "No traceback available").splitlines())
            lines.append("")
        hidden = len(self.elist) - self.tb_limit
        if excid is None and hidden > 0:
            lines.append(f"... {hidden} more exceptions ...")
        return lines

    def print_traceback(self, excid=None) -> None:
        print("\n".join(self.render_traceback(excid)))

    def raise_exception(self, excid=0):
        """Raise the ``excid``-th engine's error as a :class:`RemoteError`."""
        ename, evalue, tb, info = self._entry(excid)
        raise RemoteError(ename, evalue, tb, info)


class AlreadyDisplayedError(RemoteError):
    """Raised by ``%px`` after streaming has already shown the errors."""

    def __init__(self, original_error: CompositeError):
        self.original_error = original_error
        self.n = len(original_error.elist)
        self.engine_info = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self.n} errors)>"

    def __str__(self) -> str:
        return f"{self.n} errors"

    def render_traceback(self) -> list[str]:
        return [str(self)]


def composite_error(errors, method="unspecified") -> CompositeError:
    """One CompositeError for ``errors`` (nested CompositeErrors are flattened).

    Errors that did not happen in user code (an EngineError, a TaskAborted)
    become entries too, under their own class name; the originals stay
    available as ``.errors``.
    """
    elist = []
    for err in errors:
        if isinstance(err, CompositeError):
            elist.extend(err.elist)
        elif isinstance(err, RemoteError):
            elist.append((err.ename, err.evalue, err.traceback, err.engine_info))
        else:
            elist.append((type(err).__name__, str(err), str(err), getattr(err, "engine_info", {})))
    composite = CompositeError(f"one or more exceptions raised in: {method}", elist)
    composite.errors = list(errors)
    return composite


def collect_exceptions(rdict_or_list, method="unspecified"):
    """Raise a :class:`CompositeError` if any of ``rdict_or_list`` is a RemoteError.

    Returns ``rdict_or_list`` (a list of results, or a dict of them) unchanged
    when nothing failed.
    """
    values = rdict_or_list.values() if isinstance(rdict_or_list, dict) else rdict_or_list
    remote = [r for r in values if isinstance(r, RemoteError)]
    if remote:
        raise composite_error(remote, method)
    return rdict_or_list


def wrap_exception(engine_info=None) -> dict:
    """The exception being handled, as an error reply's content (ipyparallel's format).

    Call it inside an ``except`` block; :func:`unwrap_exception` turns the
    dict back into a :class:`RemoteError`.
    """
    etype, evalue, tb = sys.exc_info()
    if etype is None:
        raise RuntimeError("wrap_exception() is called inside an except block: no exception is being handled")
    return {
        "status": "error",
        "traceback": _traceback.format_exception(etype, evalue, tb),
        "ename": etype.__name__,
        "evalue": str(evalue),
        "engine_info": dict(engine_info or {}),
    }


def unwrap_exception(content: dict) -> RemoteError:
    """The :class:`RemoteError` described by an error content dict (see :func:`wrap_exception`)."""
    tb = content.get("traceback", "")
    if not isinstance(tb, str):  # a list of lines, with or without their newlines
        tb = "\n".join(line.rstrip("\n") for line in tb)
    return RemoteError(content["ename"], content["evalue"], tb, content.get("engine_info", {}))
