"""Views: View (shared flags and API) and DirectView (work on named engines).

A view turns a call (apply, push, pull, execute, ...) into records, hands
them to :meth:`Client.submit` and returns an :class:`AsyncResult`.  Views use
only the client's public methods.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys

from . import _engine_code, _mapping, _wire
from ._asyncresult import AsyncMapResult, AsyncResult
from ._execute import ExecuteRecord
from ._record import MessageRecord
from ._remotefunction import ParallelFunction, RemoteFunction


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def call_name(f) -> str:
    """The name a call of ``f`` goes by in errors and reprs (a Reference's expression)."""
    if isinstance(f, _wire.Reference):
        return f.name
    return getattr(f, "__name__", None) or type(f).__name__


def check_callable(f, what="apply") -> None:
    """Raise TypeError unless ``f`` is callable here or a Reference to a callable there."""
    if not (callable(f) or isinstance(f, _wire.Reference)):
        raise TypeError(f"{what} needs a callable (or an ipp.Reference to one on the engines), not {f!r}")


class View:
    """Flags and methods shared by DirectView and LoadBalancedView.

    Flags (set with :meth:`set_flags`, :meth:`temp_flags` or as attributes):

    block : bool
        Wait for results (``apply`` behaves as ``apply_sync``).
    track : bool
        Track when zmq is done with the send buffers (``ar.wait_for_send()``).
    targets
        The engines the view sends to.
    label
        Any name for the requests; their metadata carry it (``ar.metadata["label"]``).
    """

    _flag_names = ("block", "track", "targets", "label")
    label = None

    def __init__(self, client, targets=None, block=False, track=False, **flags):
        self.client = client
        self.block = block
        self.track = track
        self.targets = self._initial_targets(targets)
        self.history: list = []
        client.register_view(self)
        self.set_flags(**flags)

    def _initial_targets(self, targets):
        """The targets a new view keeps: engine ids, as ipyparallel resolves them.

        Negative ints and slices count from the end of the engine list now
        (``rc.direct_view(-1).targets`` is the last engine's id); None and
        'all' stay, so the view follows engines as they come and go.
        """
        if targets is None or isinstance(targets, str):
            return targets
        ids = self.client.resolve_targets(targets)
        return ids[0] if _is_int(targets) else ids

    def __len__(self) -> int:
        """How many engines the view uses (every engine, for 'all')."""
        if _is_int(self.targets):
            return 1
        if isinstance(self.targets, (list, tuple)):
            return len(self.targets)
        if self.targets is None or isinstance(self.targets, str):
            return len(self.client)
        return len(self.client.resolve_targets(self.targets))

    # -- flags ------------------------------------------------------------------------

    def set_flags(self, **flags) -> "View":
        """Set flags, e.g. ``view.set_flags(block=True)``; returns the view, as in ipyparallel.

        Raises
        ------
        KeyError
            For a flag this view does not have.
        """
        for name, value in flags.items():
            if name not in self._flag_names:
                raise KeyError(f"invalid flag {name!r} for {type(self).__name__} (flags: {self._flag_names})")
            setattr(self, name, value)
        return self

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        """Set flags for the duration of a ``with`` block."""
        saved = {name: getattr(self, name) for name in flags}
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def _flags(self, **overrides) -> dict:
        """The view's flags, with the non-None ``overrides`` on top."""
        flags = {name: getattr(self, name) for name in self._flag_names}
        flags.update((k, v) for k, v in overrides.items() if v is not None)
        return flags

    def _flag(self, name: str, override=None):
        """One flag: ``override`` unless it is None, else the view's (``_flags``, for one name, per call)."""
        return getattr(self, name) if override is None else override

    def _finish(self, ar: AsyncResult, block: bool):
        self.history.extend(ar.msg_ids)
        return ar.get() if block else ar

    # -- apply ------------------------------------------------------------------------

    # ``f`` is positional-only, so every keyword (``f=``, ``block=``, ...)
    # goes to the function, as in ipyparallel.
    def apply(self, f, /, *args, **kwargs):
        """Call ``f(*args, **kwargs)`` remotely; blocks if ``self.block``.

        ``f`` may be a :class:`Reference` to a callable in the engine's namespace.
        """
        return self._really_apply(f, args, kwargs)

    def apply_async(self, f, /, *args, **kwargs) -> AsyncResult:
        """Call ``f(*args, **kwargs)`` remotely; return an AsyncResult at once."""
        return self._really_apply(f, args, kwargs, block=False)

    def apply_sync(self, f, /, *args, **kwargs):
        """Call ``f(*args, **kwargs)`` remotely and wait for the result."""
        return self._really_apply(f, args, kwargs, block=True)

    def _really_apply(self, f, args, kwargs, block=None, track=None, targets=None):
        raise NotImplementedError

    # -- map ----------------------------------------------------------------------------

    def map(self, f, *sequences, block=None, **kwargs):
        """Map ``f`` over ``sequences`` remotely (blocks if ``self.block``)."""
        return self._map(f, sequences, block=block, **kwargs)

    def map_async(self, f, *sequences, **kwargs) -> AsyncMapResult:
        """Map ``f`` over ``sequences``; return an AsyncMapResult at once."""
        return self._map(f, sequences, block=False, **kwargs)

    def map_sync(self, f, *sequences, **kwargs):
        """Map ``f`` over ``sequences`` and wait for the list of results."""
        return self._map(f, sequences, block=True, **kwargs)

    def imap(self, f, *sequences, **kwargs):
        """Like :meth:`map_async`, but an iterator over results as they are ready."""
        return iter(self._map(f, sequences, block=False, **kwargs))

    def _map(self, f, sequences, block=None, **kwargs):
        raise NotImplementedError

    # -- decorators ------------------------------------------------------------------------

    def remote(self, block=None, **flags):
        """Decorator: calling the function runs it remotely, through this view."""
        return lambda f: RemoteFunction(self, f, block=block, **flags)

    def parallel(self, dist="b", block=None, **flags):
        """Decorator: the function is called on partitions of its sequence arguments.

        ``f.map(seq)`` maps it element by element instead.
        """
        return lambda f: ParallelFunction(self, f, dist=dist, block=block, **flags)

    @property
    def executor(self):
        """A :class:`concurrent.futures.Executor` running calls through this view."""
        from ._lbview import ViewExecutor

        return ViewExecutor(self)

    # -- results and bookkeeping ----------------------------------------------------------

    def wait(self, jobs=None, timeout=-1) -> bool:
        """Wait for ``jobs`` (default: this view's outstanding work); True if all done."""
        return self.client.wait(self.outstanding if jobs is None else jobs, timeout)

    def spin(self) -> None:
        """Kept for compatibility; nothing to do."""

    def get_result(self, indices_or_msg_ids=None, block=None, owner=False):
        """An AsyncResult for earlier requests of this view's client."""
        return self.client.get_result(indices_or_msg_ids, block=block, owner=owner)

    def purge_results(self, jobs=(), targets=()) -> None:
        """Forget finished results (see :meth:`Client.purge_results`)."""
        self.client.purge_results(jobs, targets)
        if jobs == "all":
            self.history.clear()

    def queue_status(self, targets=None, verbose=False) -> dict:
        """Queue lengths of this view's engines."""
        return self.client.queue_status(self._targets_or_all(targets), verbose)

    def abort(self, jobs=None, targets=None, block=None) -> None:
        """Abort work that has not started yet (default: all of this view's)."""
        self.client.abort(self.history if jobs is None else jobs,
                          targets=self._flags(targets=targets)["targets"], block=block)

    def shutdown(self, targets=None, restart=False, hub=False, block=None) -> None:
        """Stop (or restart) this view's engines."""
        self.client.shutdown(self._targets_or_all(targets), restart, hub, block)

    def _targets_or_all(self, targets):
        """``targets``, else the view's; 'all' for a view on any engine (engine 0 is engine 0)."""
        targets = self._flags(targets=targets)["targets"]
        return "all" if targets is None else targets

    @property
    def outstanding(self) -> set:
        """msg_ids of this view's unfinished requests."""
        return self.client.outstanding & set(self.history)

    @property
    def results(self) -> dict:
        """msg_id -> result of this view's finished requests."""
        mine = set(self.history)
        return {m: v for m, v in self.client.results.items() if m in mine}

    def __repr__(self) -> str:
        targets = str(self.targets)  # as ipyparallel shows them: <DirectView all>, <DirectView [0, 1]>
        if len(targets) > 16:
            targets = targets[:12] + "...]"
        return f"<{type(self).__name__} {targets}>"


class DirectView(View):
    """Work on explicitly named engines: ``rc[0]``, ``rc[:]``, ``rc.direct_view()``.

    Results come back one per engine (a list), or the value itself when the
    view targets a single engine id (``rc[0]``).
    """

    def _targets(self, targets=None) -> tuple[list, bool]:
        targets = self._flag("targets", targets)
        single = isinstance(targets, int) and not isinstance(targets, bool)
        return self.client.resolve_targets(targets), single

    def _submit(self, op, engine_ids, frames_per_engine, block, fname, spec=None, code=None,
                track=False, result_class=AsyncResult, record_class=MessageRecord, label=None,
                **result_kwargs):
        """One record per engine (with its own frames), sent together.

        Returns the AsyncResult (a ``result_class``), or its value if ``block``.
        """
        label = self._flag("label", label)
        records = []
        for frames in frames_per_engine:
            record = self.client.new_record(op, record_class, frames=frames, spec=dict(spec or {"op": op}),
                                            code=code)
            record.track = bool(track)
            record.label = label
            records.append(record)
        ar = result_class(self.client, records, fname=fname, **result_kwargs)
        self.client.submit(zip(engine_ids, records))
        return self._finish(ar, self._flag("block", block))

    def _send(self, op, engine_ids, single, block, fname, frames=(), spec=None, code=None,
              postprocess=None, join=None, track=False):
        """The same request to every engine; the AsyncResult, or its value if ``block``."""
        return self._submit(op, engine_ids, [frames] * len(engine_ids), block, fname, spec, code,
                            track, single=single, postprocess=postprocess, join=join)

    def _really_apply(self, f, args, kwargs, block=None, track=None, targets=None):
        check_callable(f)
        ids, single = self._targets(targets)
        frames = _wire.serialize_call(f, args, kwargs, self.client.pickler)
        return self._send("apply", ids, single, block, call_name(f), frames,
                          track=self._flag("track", track))

    def execute(self, code: str, silent=True, targets=None, block=None, label=None) -> AsyncResult:
        """Run ``code`` on the engines, in their namespaces.

        With ``silent=False`` the engines count it as a cell: expression
        results are published (``Out[0:3]``) and kept in their history.
        Returns the AsyncResult even when blocking (then it is done, outputs
        included), as in ipyparallel, so ``.display_outputs()`` can follow;
        its value is one :class:`~ipyparallel_ext.ExecuteReply` per engine.
        """
        if not isinstance(code, str):
            raise TypeError(f"execute needs a string of code, not {type(code).__name__}")
        ids, single = self._targets(targets)
        ar = self._submit("execute", ids, [()] * len(ids), False, "execute",
                          spec={"op": "execute", "silent": bool(silent)}, code=code,
                          record_class=ExecuteRecord, label=label, single=single)
        if self._flags(block=block)["block"]:
            ar.get()
            ar.wait_for_output()
        return ar

    def run(self, filename, targets=None, block=None, label=None):
        """Run the code in ``filename`` on the engines."""
        with open(os.fspath(filename)) as f:
            code = f.read()
        return self.execute(code, targets=targets, block=block, label=label)

    def push(self, ns: dict, targets=None, block=None, track=None):
        """Set the variables in ``ns`` in each engine's namespace."""
        if not isinstance(ns, dict):
            raise TypeError(f"push needs a dict of names to values, not {type(ns).__name__}")
        ids, single = self._targets(targets)
        frames = _wire.serialize(ns, self.client.pickler, f"pushed values {sorted(ns)}")
        return self._send("push", ids, single, block, "push", frames,
                          track=self._flags(track=track)["track"])

    def update(self, ns: dict):
        """Push the variables in ``ns`` with the view's flags (``view.update(ns)``, as dicts do)."""
        return self.push(ns)

    def pull(self, names, targets=None, block=None):
        """Get variables (a name, or a list of names) from each engine's namespace."""
        one = isinstance(names, str)
        name_list = [names] if one else list(names)
        for name in name_list:
            if not isinstance(name, str):
                raise TypeError(f"pull takes variable names, not {name!r}")
        ids, single = self._targets(targets)
        postprocess = (lambda values: values[0]) if one else list
        return self._send("pull", ids, single, block, "pull",
                          spec={"op": "pull", "names": name_list}, postprocess=postprocess)

    def get(self, key_s):
        """Pull a variable (or several), blocking."""
        return self.pull(key_s, block=True)

    def __getitem__(self, key):
        return self.get(key)

    def __setitem__(self, key, value) -> None:
        self.push({key: value}, block=True)

    def scatter(self, key, seq, dist="b", flatten=False, targets=None, block=None, track=None):
        """Split ``seq`` into one contiguous part per engine and push it as ``key``.

        With ``flatten=True`` a part of one element is pushed as the element.
        """
        ids, _single = self._targets(targets)
        pickler = self.client.pickler
        frames = [
            _wire.serialize({key: part[0] if flatten and len(part) == 1 else part}, pickler, f"part of {key!r}")
            for part in _mapping.partition(seq, len(ids), dist)
        ]
        ar = self._submit("push", ids, frames, False, "scatter", track=self._flags(track=track)["track"])
        if self._flags(block=block)["block"]:
            ar.get()
            return None  # as ipyparallel: a blocking scatter returns nothing
        return ar

    def gather(self, key, dist="b", targets=None, block=None):
        """Pull ``key`` from each engine and join the parts (lists, tuples, arrays)."""
        ids, _single = self._targets(targets)
        return self._send("pull", ids, False, block, "gather",
                          spec={"op": "pull", "names": [key]},
                          postprocess=lambda values: values[0], join=_mapping.join)

    def clear(self, targets=None, block=None):
        """Clear the engines' namespaces: an AsyncResult, or None once done if blocking."""
        ids, single = self._targets(targets)
        ar = self._send("clear", ids, single, False, "clear")
        if self._flags(block=block)["block"]:
            ar.get()
            return None  # as ipyparallel: a blocking clear returns nothing
        return ar

    def _apply_per_engine(self, f, ids, calls, block=None, join=None, chunk_sizes=None, track=False,
                          return_exceptions=False, fname=None, label=None):
        """Call ``f(*calls[i])`` on engine ``ids[i]``; one AsyncResult over all of them."""
        pickler = self.client.pickler
        frames = [_wire.serialize_call(f, args, {}, pickler) for args in calls]
        name = fname or call_name(f)
        if chunk_sizes is not None:
            return self._submit("apply", ids, frames, block, name, track=track, result_class=AsyncMapResult,
                                label=label, chunk_sizes=chunk_sizes, return_exceptions=return_exceptions)
        return self._submit("apply", ids, frames, block, name, track=track, label=label, join=join)

    def map(self, f, *sequences, block=None, track=False, return_exceptions=False, label=None):
        """Map ``f`` over ``sequences``: engine ``i`` maps it over part ``i`` of each.

        Sequences may be any iterables (generators too); the shortest one
        sets the length, as with the builtin ``map``.  With
        ``return_exceptions=True`` a failed part's error stands in the result
        list for each of its elements, instead of being raised.
        """
        return self._map(f, sequences, block=block, track=track, return_exceptions=return_exceptions,
                         label=label)

    def _map(self, f, sequences, block=None, track=False, return_exceptions=False, label=None):
        check_callable(f, "map")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        ids, _single = self._targets()
        sequences = [_mapping.sliceable(s) for s in sequences]
        length = min(len(s) for s in sequences)
        parts = [_mapping.partition(s[:length] if len(s) > length else s, len(ids)) for s in sequences]
        calls = [(f, *(p[i] for p in parts)) for i in range(len(ids))]
        sizes = [len(parts[0][i]) for i in range(len(ids))]
        return self._apply_per_engine(_engine_code.map_chunk, ids, calls, block, chunk_sizes=sizes,
                                      track=track, return_exceptions=return_exceptions, fname=call_name(f),
                                      label=label)

    # -- picklers ------------------------------------------------------------------------

    def _use_pickler(self, name: str):
        """Pickle this client's payloads with ``name`` from now on, once the engines can.

        The pickler travels with every request, so other clients sharing the
        engines keep theirs.  As in ipyparallel, the engines are asked to
        load it (which fails, clearly, where it is not installed); returns
        what ``apply`` would (the AsyncResult, or its value when blocking).
        """
        _engine_code.pickler_module(name)  # fails here, clearly, if it is not installed
        ids, single = self._targets()
        ar = self._send("pickler", ids, single, False, f"use_{name}", spec={"op": "pickler", "name": name})
        ar.get()
        self.client.pickler = name
        return ar.get() if self._flags()["block"] else ar

    def use_dill(self):
        """Pickle with dill, here and on the engines (dill must be installed on both).

        Only this client's requests are pickled with dill; other clients of
        the same engines are not affected.
        """
        return self._use_pickler("dill")

    def use_cloudpickle(self):
        """Pickle with cloudpickle, here and on the engines (this client only)."""
        return self._use_pickler("cloudpickle")

    def use_pickle(self):
        """Go back to the default pickling (stdlib pickle, functions by value)."""
        return self._use_pickler("pickle")

    # -- imports ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def sync_imports(self, local=True, quiet=False):
        """Run the ``import`` statements of a ``with`` block on the engines too.

        ::

            with dv.sync_imports():
                import numpy

        Only the block's own ``import`` statements are forwarded, not the
        imports those modules make in turn.
        """
        real_import = builtins.__import__
        # The frame of the ``with`` statement: generator, contextlib's __enter__, caller.
        block_frame = sys._getframe(2)

        def view_import(name, globals=None, locals=None, fromlist=(), level=0):
            module = real_import(name, globals, locals, fromlist, level) if local else None
            if level == 0 and sys._getframe(1) is block_frame:
                self._import_on_engines(name, fromlist, quiet)
            return module

        builtins.__import__ = view_import
        try:
            yield
        finally:
            builtins.__import__ = real_import

    @property
    def importer(self):
        """``with view.importer:`` is ``with view.sync_imports():``, as in ipyparallel."""
        return self.sync_imports(True)

    def _import_on_engines(self, name, fromlist=(), quiet=False):
        """Import ``name`` (``from name import fromlist``) on this view's engines."""
        if fromlist:
            statement = f"from {name} import {', '.join(fromlist)}"
        else:
            statement = f"import {name}"
        if not quiet:
            print(f"importing {', '.join(fromlist) if fromlist else name}"
                  f"{' from ' + name if fromlist else ''} on engine(s)")
        self.execute(statement, block=True)

    def activate(self, suffix=""):
        """Register ``%px``, ``%%px``, ``%autopx``, ``%pxresult``, ``%pxconfig`` for this view."""
        from . import _magics

        _magics.activate(self, suffix)


class BroadcastView(DirectView):
    """ipyparallel 9's broadcast view (``rc.broadcast_view()``), here a DirectView.

    ipyparallel sends one message to a broadcast scheduler, which fans it out
    to the engines.  With no controller, a DirectView already sends each
    engine its request directly, so a BroadcastView is one, with the same
    results.  ``is_coalescing`` is kept as a flag for code that sets it;
    results come back per engine either way.
    """

    _flag_names = DirectView._flag_names + ("is_coalescing",)
    is_coalescing = False

    def _initial_targets(self, targets):
        """A list of engine ids, as ipyparallel resolves them ('all': the engines there are now)."""
        return self.client.resolve_targets(targets)
