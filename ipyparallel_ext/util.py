"""Helpers users import as ``ipyparallel_ext.util`` (as from ``ipyparallel.util``).

Only ipyparallel's user-facing helpers are here; its controller plumbing
(zmq URLs, ports, loggers, profiles) has no counterpart without a controller.
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["compare_datetimes", "ensure_timezone", "interactive", "utc", "utcnow"]

utc = timezone.utc


def interactive(f):
    """Make ``f`` run in the engine's namespace, as if defined there.

    Its globals are looked up in the engine's user namespace (so values sent
    with ``push`` are visible to it), exactly as ipyparallel's decorator does.
    """
    f.__module__ = "__main__"
    return f


def utcnow() -> datetime:
    """Timezone-aware UTC timestamp (the kind metadata timestamps are)."""
    return datetime.now(utc)


def ensure_timezone(dt: datetime) -> datetime:
    """``dt``, with the local timezone attached if it has none."""
    return dt if dt.tzinfo is not None else dt.astimezone()


def compare_datetimes(a: datetime, b: datetime):
    """``a - b``, reading a naive datetime as local time when the other is aware."""
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = ensure_timezone(a), ensure_timezone(b)
    return a - b
