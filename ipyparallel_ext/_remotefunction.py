"""RemoteFunction and ParallelFunction: what ``@view.remote`` and ``@view.parallel`` make."""

from __future__ import annotations

import functools

from . import _mapping


class RemoteFunction:
    """A function whose calls run remotely, through a view.

    Parameters
    ----------
    view : View
        Where calls go.
    f : callable
        The function.
    block : bool, optional
        Override the view's ``block`` flag for these calls.
    **flags
        Other view flags for these calls (``targets``, ``track``, ...).
    """

    def __init__(self, view, f, block=None, **flags):
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        functools.update_wrapper(self, f)

    def _temp_flags(self):
        flags = dict(self.flags)
        if self.block is not None:
            flags["block"] = self.block
        return self.view.temp_flags(**flags)

    def __call__(self, *args, **kwargs):
        with self._temp_flags():
            return self.view.apply(self.func, *args, **kwargs)

    def map(self, *sequences):
        """Map the function over ``sequences``, element by element."""
        with self._temp_flags():
            return self.view.map(self.func, *sequences)


class ParallelFunction(RemoteFunction):
    """A function called on *partitions* of its sequence arguments, one per engine.

    ``f(seq)`` runs ``f(part_i)`` on engine ``i`` and joins the results;
    ``f.map(seq)`` maps ``f`` over the elements instead.
    """

    def __init__(self, view, f, dist="b", block=None, **flags):
        super().__init__(view, f, block=block, **flags)
        self.dist = dist

    def __call__(self, *sequences):
        from ._view import DirectView

        with self._temp_flags():
            if not isinstance(self.view, DirectView):
                parts = [_mapping.partition(s, max(1, len(self.view.client)), self.dist) for s in sequences]
                return self.view.map(self.func, *parts)
            ids, _single = self.view._targets()
            parts = [_mapping.partition(s, len(ids), self.dist) for s in sequences]
            calls = [tuple(p[i] for p in parts) for i in range(len(ids))]
            return self.view._apply_per_engine(self.func, ids, calls, join=_mapping.join)
