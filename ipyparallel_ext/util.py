"""Helpers users import as ``ipyparallel_ext.util`` (as from ``ipyparallel.util``)."""

from __future__ import annotations

__all__ = ["interactive"]


def interactive(f):
    """Make ``f`` run in the engine's namespace, as if defined there.

    Its globals are looked up in the engine's user namespace (so values sent
    with ``push`` are visible to it), exactly as ipyparallel's decorator does.
    """
    f.__module__ = "__main__"
    return f
