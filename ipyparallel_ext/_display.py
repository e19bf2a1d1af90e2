"""Showing engines' outputs here: ``[stdout:0]`` prefixes, ``Out[0:3]``, rich displays, progress.

Used by :meth:`AsyncResult.display_outputs`, :meth:`AsyncResult.wait_interactive`
and the ``%px`` magics.  Two ways to show outputs:

- after the fact, from what the records collected (:func:`display_outputs`);
- live, while the caller waits (:class:`LiveOutput`).  The I/O thread never
  prints: it only puts each output on a queue, and the waiting thread (the
  one running the cell, whose output IPython attributes to that cell) takes
  them off and shows them::

      I/O thread: record.add_output ──▶ LiveOutput._on_output ──▶ SimpleQueue
                                                                      │
      main thread: LiveOutput.wait ◀── _pump: take, coalesce, render ─┘

In a terminal, stream text is printed with a ``[stdout:N]`` prefix line
whenever the engine or stream changes.  In a notebook each engine's stdout
and stderr is one display (``[stdout:N] <all text so far>``) updated in place.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import sys
import threading
import time

from .error import CompositeError, RemoteError

# How long after its reply a request's outputs may still be on their way.
OUTPUT_WAIT = 5.0
# Fastest rate at which a notebook's in-place stream displays are re-sent:
# each update carries the whole text, so a chatty engine must not cost O(n^2).
NOTEBOOK_UPDATE_INTERVAL = 0.1
# Longest the waiting loop sleeps before looking at the progress bar again.
TICK = 0.1


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of ipykernel
        return None
    return get_ipython()


def in_kernel(shell=None) -> bool:
    """True inside a Jupyter kernel (a notebook), False in a terminal or plain Python."""
    shell = _ipython() if shell is None else shell
    return shell is not None and getattr(shell, "kernel", None) is not None


def publish(data: dict, metadata=None, transient=None, update=False) -> None:
    """Show a mime bundle through IPython's display publisher (its text/plain without IPython)."""
    shell = _ipython()
    if shell is None:
        print(data.get("text/plain", ""))
        return
    extra = {}
    if transient:
        extra["transient"] = transient
    if update:
        extra["update"] = True
    shell.display_pub.publish(data=data, metadata=metadata or {}, **extra)


def _label(text: str) -> None:
    """A plain-text marker such as ``[output:0]``, as its own display."""
    publish({"text/plain": text})


def republish(content: dict, engine_id, kind: str = "display_data") -> None:
    """Re-display an engine's display_data here, tagged with its engine.

    Display ids made on the engine are kept, so engine-side
    ``update_display`` calls update the copy shown here.
    """
    metadata = dict(content.get("metadata") or {}, engine=engine_id)
    transient = content.get("transient") or None
    publish(content.get("data", {}), metadata, transient, update=kind == "update_display_data")


def result_text(content: dict, engine_id) -> str:
    """``Out[engine:count]: repr``, with a multi-line repr starting on its own line."""
    text = content.get("data", {}).get("text/plain", "")
    if "\n" in text and not text.startswith("\n"):
        text = "\n" + text
    return f"Out[{engine_id}:{content.get('execution_count')}]: {text}"


def show_execute_result(content: dict, engine_id) -> None:
    """Show an engine's expression result, labelled ``Out[engine:count]:``.

    Rich representations (HTML, images) travel along; only the plain-text
    one carries the label.
    """
    data = dict(content.get("data", {}))
    data["text/plain"] = result_text(content, engine_id)
    publish(data, dict(content.get("metadata") or {}, engine=engine_id))


class StreamPrinter:
    """Prints stream text under ``[stdout:0]``-style prefixes.

    A prefix gets its own line, and is only repeated when the engine or the
    stream changes, so consecutive chunks of one engine's output read as one.
    """

    def __init__(self):
        self._last_prefix = ""
        self._at_line_start = True
        # Prefixes whose unfinished line we ended ourselves (another engine's output
        # came in between): the newline that later finishes it is already on screen.
        self._ended_for = set()

    def write(self, text: str, prefix: str = "", file=None) -> None:
        if prefix in self._ended_for and text:
            self._ended_for.discard(prefix)
            if text.startswith("\n"):  # a kernel may send print's text and its newline apart
                text = text[1:]
        if not text:
            return
        file = sys.stdout if file is None else file
        head = ""
        if prefix and prefix != self._last_prefix:
            if not self._at_line_start:
                self._ended_for.add(self._last_prefix)
                head = "\n"
            self._last_prefix = prefix
            head += prefix + "\n"
        self._at_line_start = text.endswith("\n")
        print(head + text, file=file, end="")

    def end_line(self) -> None:
        """End a last chunk that had no newline, so what follows starts on a new line."""
        if not self._at_line_start:
            print()
            self._ended_for.add(self._last_prefix)
            self._at_line_start = True


# -- after the fact -------------------------------------------------------------------

_DISPLAY_KINDS = ("display_data", "update_display_data")
_SHOWN_KINDS = frozenset(("stream", "error", "execute_result") + _DISPLAY_KINDS)  # live, by LiveOutput


def _displays(record) -> list:
    return [o for o in record.outputs if o.get("type") in _DISPLAY_KINDS]


def display_outputs(ar, groupby: str = "type", result_only: bool = False) -> None:
    """Show every output of ``ar``.

    Parameters
    ----------
    groupby : {'type', 'engine', 'order'}
        'type': all stdout, then all stderr, then displays, then results;
        'engine': everything of one engine, then the next;
        'order': like 'type', but the i-th display of every engine together.
    result_only : bool
        Show only the ``Out[...]`` results (the rest was streamed already).
    """
    if groupby not in ("type", "engine", "order"):
        raise ValueError(f"groupby must be one of 'type', 'engine', 'order', not {groupby!r}")
    records = ar._records
    printer = StreamPrinter()
    if ar._single_result and records:
        record = records[0]
        if not result_only:
            printer.write(record.stdout)
            printer.write(record.stderr, file=sys.stderr)
            for output in _displays(record):
                republish(output, record.engine_id, output["type"])
        if record.execute_result is not None:
            show_execute_result(record.execute_result, record.engine_id)
        return

    def streams(record):
        eid = record.engine_id
        printer.write(record.stdout, f"[stdout:{eid}] ")
        printer.write(record.stderr, f"[stderr:{eid}] ", sys.stderr)

    if groupby == "engine":
        for record in records:
            displays = [] if result_only else _displays(record)
            if not result_only:
                streams(record)
            printer.end_line()
            if displays or record.execute_result is not None:
                _label(f"[output:{record.engine_id}]")
            for output in displays:
                republish(output, record.engine_id, output["type"])
            if record.execute_result is not None:
                show_execute_result(record.execute_result, record.engine_id)
        return

    if not result_only:
        for record in records:
            printer.write(record.stdout, f"[stdout:{record.engine_id}] ")
        for record in records:
            printer.write(record.stderr, f"[stderr:{record.engine_id}] ", sys.stderr)
        printer.end_line()
        per_engine = [(r.engine_id, _displays(r)) for r in records]
        if groupby == "order":
            longest = max((len(d) for _, d in per_engine), default=0)
            for i in range(longest):
                for eid, displays in per_engine:
                    if i < len(displays):
                        _label(f"[output:{eid}]")
                        republish(displays[i], eid, displays[i]["type"])
        else:
            for eid, displays in per_engine:
                if displays:
                    _label(f"[output:{eid}]")
                for output in displays:
                    republish(output, eid, output["type"])
    for record in records:
        if record.execute_result is not None:
            show_execute_result(record.execute_result, record.engine_id)


# -- waiting, with a progress bar ------------------------------------------------------


def progress_bar(total: int, desc: str, widget=None):
    """A tqdm bar: a widget in a notebook (if ipywidgets is installed), else text on stderr."""
    if widget is None:
        widget = in_kernel() and importlib.util.find_spec("ipywidgets") is not None
    if widget:
        from tqdm.notebook import tqdm

        return tqdm(total=total, unit="tasks", desc=desc)
    from tqdm import tqdm

    return tqdm(total=total, unit="tasks", desc=desc)  # on stderr, tqdm's habit: stdout stays the engines'


def wait_with_progress(ar, progress_after=-1.0, desc="", timeout=None, widget=None,
                       step=None, interval=TICK, until=None) -> bool:
    """Wait for ``ar``; once ``progress_after`` seconds have passed, show a progress bar.

    Parameters
    ----------
    progress_after : float
        Seconds before the bar appears; 0 shows it at once, negative never.
    timeout : float, optional
        Give up after this many seconds (None or negative: wait until done).
    step : callable, optional
        ``step(seconds)`` waits for at most that long; default ``ar.wait``.
        :class:`LiveOutput` passes its own, which shows outputs meanwhile.
    until : callable, optional
        Stop waiting early once ``until()`` is true.

    Returns
    -------
    bool
        True if ``ar`` is done.
    """
    step = ar.wait if step is None else step
    start = time.monotonic()
    deadline = None if timeout is None or timeout < 0 else start + timeout
    bar = None
    try:
        while not ar.done() and not (until is not None and until()):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if bar is None and 0 <= progress_after <= now - start:
                bar = progress_bar(len(ar), desc or ar._fname, widget)
            if bar is not None:
                bar.update(ar.progress - bar.n)
            wake = [interval]
            if bar is None and progress_after >= 0:
                wake.append(start + progress_after - now)
            if deadline is not None:
                wake.append(deadline - now)
            step(max(0.0, min(wake)))
    finally:
        if bar is not None:
            bar.update(ar.progress - bar.n)
            bar.close()
    return ar.done()


def progress_wait(ar, interval: float = TICK, timeout=None, widget=None, until=None) -> None:
    """Wait for ``ar`` (or ``until()``) while showing done/total and elapsed time (``wait_interactive``)."""
    wait_with_progress(ar, 0, ar._fname, timeout, widget, interval=interval, until=until)


def busy_engines(ar) -> list:
    """Ids of the engines still working on ``ar``."""
    return sorted({r.engine_id for r in ar._records if r.state != "done" and r.engine_id is not None})


# -- live -------------------------------------------------------------------------------


class LiveOutput:
    """Shows an AsyncResult's outputs while they arrive, until :meth:`close`.

    Create it in the thread that will wait (the cell's thread), right after
    submitting; outputs already collected by then are shown first.

    Parameters
    ----------
    ar : AsyncResult
        The work whose outputs to show.
    client : Client
        Its client (attaching to the records happens on its I/O thread, where
        records are written, so no output is lost or shown twice).
    """

    def __init__(self, ar, client):
        self._ar = ar
        self._records = list(ar._records)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._errors_shown: set = set()  # msg_ids whose error traceback was shown
        self._errors_seen = 0
        notebook = in_kernel()
        self._printer = StreamPrinter()
        self._notebook_streams: dict | None = {} if notebook else None  # display_id -> [text, shown, dirty]
        self._last_update = 0.0
        # Attached on the I/O thread (where records are written) so that no
        # output is lost or shown twice; not waited for: finish() waits.
        self._attached = threading.Event()
        client.call_in_loop(self._attach, wait=False)
        ar._add_done_listener(lambda _f: self._queue.put(None))  # wakes the waiter (I/O thread: quick)

    # -- I/O thread ----------------------------------------------------------------

    def _attach(self) -> None:
        put = self._queue.put
        for record in self._records:
            for name in ("stdout", "stderr"):
                text = getattr(record, name)
                if text:
                    put((record, "stream", {"name": name, "text": text}))
            for output in record.outputs:
                put((record, output["type"], output))
            if record.execute_result is not None:
                put((record, "execute_result", record.execute_result))
            record.add_output_listener(self._on_output)
        self._attached.set()

    def _on_output(self, record, kind, content) -> None:
        # Only what will be shown: each put wakes the waiting thread.
        if kind in _SHOWN_KINDS and not self._closed:
            self._queue.put((record, kind, content))

    # -- the waiting thread --------------------------------------------------------------

    def wait(self, progress_after=-1.0, desc="", timeout=None) -> bool:
        """Show outputs until ``ar`` is done and its outputs are in; True if done.

        A progress bar appears after ``progress_after`` seconds (never if negative).
        """
        done = wait_with_progress(self._ar, progress_after, desc, timeout, step=self._pump)
        if done:
            self.finish()
        return done

    def finish(self, timeout=OUTPUT_WAIT) -> None:
        """Wait (at most ``timeout``) for the outputs of finished requests, and show them."""
        deadline = time.monotonic() + timeout
        self._attached.wait(timeout)
        for record in self._records:
            if record.sent is not None and record.state == "done":
                record.outputs_ready.wait(max(0.0, deadline - time.monotonic()))
        self._pump(0)
        self._flush_notebook(force=True)
        self._printer.end_line()

    def close(self) -> None:
        """Stop showing outputs (later ones stay in the records, for ``%pxresult``)."""
        self._closed = True

    def all_errors_shown(self) -> bool:
        """True if every failed request's traceback has been shown already."""
        failed = [r for r in self._records if r.error is not None]
        return bool(failed) and all(r.msg_id in self._errors_shown for r in failed)

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for outputs; show everything that arrived."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            item = None
        while True:
            if item is not None:
                self._show(*item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self._flush_notebook()

    def _show(self, record, kind, content) -> None:
        eid = record.engine_id
        if kind == "stream":
            name = content.get("name", "stdout")
            if self._notebook_streams is not None:
                entry = self._notebook_streams.setdefault(f"{record.msg_id}-{name}", [f"[{name}:{eid}] ", False, False])
                entry[0] += content.get("text", "")
                entry[2] = True
            else:
                self._printer.write(content.get("text", ""), f"[{name}:{eid}] ",
                                    sys.stderr if name == "stderr" else sys.stdout)
            return
        self._printer.end_line()
        if kind == "error":
            self._flush_streams()
            self._show_error(record, content)
        elif kind == "execute_result":
            self._flush_streams()
            show_execute_result(content, eid)
        elif kind in _DISPLAY_KINDS and _ipython() is not None:
            self._flush_streams()
            _label(f"[output:{eid}]")
            republish(content, eid, kind)

    def _show_error(self, record, content) -> None:
        self._errors_seen += 1
        error = RemoteError(content.get("ename"), content.get("evalue"),
                            "\n".join(content.get("traceback") or []),
                            {"engine_id": record.engine_id, "method": "execute"})
        if self._errors_seen <= CompositeError.tb_limit:
            print("\n".join(error.render_traceback()), file=sys.stderr)
        else:  # past the limit, one line each, as CompositeError shows them
            print(error, file=sys.stderr)
        self._errors_shown.add(record.msg_id)

    def _flush_streams(self) -> None:
        """Put the stream text shown so far out before a display, to keep their order.

        A kernel buffers printed text, and in-place stream displays are
        throttled; both are pushed out first.
        """
        if self._notebook_streams is not None:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            self._flush_notebook(force=True)

    def _flush_notebook(self, force=False) -> None:
        streams = self._notebook_streams
        if not streams:
            return
        now = time.monotonic()
        if not force and now - self._last_update < NOTEBOOK_UPDATE_INTERVAL:
            return
        self._last_update = now
        for display_id, entry in streams.items():
            text, shown, dirty = entry
            if dirty:
                publish({"text/plain": text}, transient={"display_id": display_id}, update=shown)
                entry[1], entry[2] = True, False


def noninteractive() -> bool:
    """True when ``IPP_NONINTERACTIVE`` asks for no live output (as ipyparallel honours it)."""
    return os.environ.get("IPP_NONINTERACTIVE", "") not in ("", "0")
