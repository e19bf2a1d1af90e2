"""Splitting sequences across engines and joining the parts again (scatter, gather, map)."""

from __future__ import annotations

import functools
import operator


def sliceable(seq):
    """``seq`` itself if it has ``len`` and slicing (lists, ranges, arrays), else a list of it.

    So that map, scatter and parallel functions take generators and other
    iterators, as ipyparallel's do.
    """
    if hasattr(seq, "__getitem__") and hasattr(seq, "__len__"):
        return seq
    return list(seq)


def partition(seq, n: int, dist: str = "b") -> list:
    """Split ``seq`` into ``n`` contiguous parts whose sizes differ by at most one.

    Works on anything sliceable with ``len`` (lists, tuples, ranges, strings,
    numpy arrays); other iterables are turned into lists first.

    Raises
    ------
    ValueError
        For a ``dist`` other than ``'b'`` (block distribution).
    """
    if dist != "b":
        raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
    if n < 1:
        raise ValueError("cannot partition across zero engines")
    seq = sliceable(seq)
    size, extra = divmod(len(seq), n)
    parts = []
    start = 0
    for i in range(n):
        stop = start + size + (i < extra)
        parts.append(seq[start:stop])
        start = stop
    return parts


def join(parts: list):
    """Join parts made by :func:`partition`: arrays are concatenated, sequences added."""
    if not parts:
        return []
    first = parts[0]
    if type(first).__module__ == "numpy" and hasattr(first, "shape"):
        import numpy

        return numpy.concatenate(parts)
    if isinstance(first, (list, tuple, str)):
        return functools.reduce(operator.add, parts)
    if isinstance(first, range):
        return [x for p in parts for x in p]
    # Scalars (parts of one element pushed with flatten=True): one per engine.
    return list(parts)
