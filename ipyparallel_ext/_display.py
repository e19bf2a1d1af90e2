"""Showing engines' outputs here: ``[stdout:0]`` prefixes, ``Out[0:3]``, rich displays, progress.

Used by :meth:`AsyncResult.display_outputs`, :meth:`AsyncResult.wait_interactive`
and the ``%px`` magics.
"""

from __future__ import annotations

import sys
import time


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of ipykernel
        return None
    return get_ipython()


def display_stream(text: str, prefix: str = "", file=None) -> None:
    """Print one engine's stream text, with ``prefix`` on its own line if it spans lines."""
    if not text:
        return
    file = file or sys.stdout
    multiline = text.count("\n") > int(text.endswith("\n"))
    if prefix and multiline and not text.startswith("\n"):
        prefix += "\n"
    print(f"{prefix}{text}", file=file, end="" if text.endswith("\n") else "\n")


def republish(content: dict, engine_id) -> None:
    """Re-display an engine's display_data here, tagged with its engine."""
    shell = _ipython()
    if shell is None:
        return
    metadata = dict(content.get("metadata") or {}, engine=engine_id)
    shell.display_pub.publish(data=content.get("data", {}), metadata=metadata)


def show_execute_result(content: dict, engine_id) -> None:
    """Show an engine's expression result as ``Out[engine:count]: value``."""
    data = content.get("data", {})
    count = content.get("execution_count")
    text = data.get("text/plain", "")
    shell = _ipython()
    label = f"Out[{engine_id}:{count}]: "
    if shell is not None and set(data) - {"text/plain"}:
        print(label.rstrip())
        shell.display_pub.publish(data=data, metadata=content.get("metadata") or {})
        return
    if "\n" in text:
        label += "\n"
    print(f"{label}{text}")


def _per_engine(ar):
    records = ar._records
    return [(r.engine_id, r) for r in records]


def display_outputs(ar, groupby: str = "type", result_only: bool = False) -> None:
    """Show every output of ``ar``; ``groupby`` is 'type', 'engine' or 'order'."""
    if groupby not in ("type", "engine", "order"):
        raise ValueError(f"groupby must be one of 'type', 'engine', 'order', not {groupby!r}")
    engines = _per_engine(ar)
    single = ar._single_result
    if groupby == "engine":
        for eid, record in engines:
            if not result_only:
                display_stream(record.stdout, "" if single else f"[stdout:{eid}] ")
                display_stream(record.stderr, "" if single else f"[stderr:{eid}] ", sys.stderr)
                _show_displays(record, eid, single)
            if record.execute_result is not None:
                show_execute_result(record.execute_result, eid)
        return
    if not result_only:
        for eid, record in engines:
            display_stream(record.stdout, "" if single else f"[stdout:{eid}] ")
        for eid, record in engines:
            display_stream(record.stderr, "" if single else f"[stderr:{eid}] ", sys.stderr)
        if groupby == "order":
            longest = max((len(r.outputs) for _, r in engines), default=0)
            for i in range(longest):
                for eid, record in engines:
                    if i < len(record.outputs):
                        _show_display(record.outputs[i], eid, single)
        else:
            for eid, record in engines:
                _show_displays(record, eid, single)
    for eid, record in engines:
        if record.execute_result is not None:
            show_execute_result(record.execute_result, eid)


def _show_displays(record, eid, single) -> None:
    for output in record.outputs:
        _show_display(output, eid, single)


def _show_display(output: dict, eid, single) -> None:
    kind = output.get("type")
    if kind in ("display_data", "update_display_data"):
        if not single:
            print(f"[output:{eid}]")
        republish(output, eid)


def progress_wait(ar, interval: float = 0.1, timeout=None, widget=None) -> None:
    """Wait for ``ar`` while showing done/total and elapsed time (tqdm)."""
    total = len(ar._records)
    try:
        if widget is None:
            widget = _ipython() is not None and "ipykernel" in sys.modules
        if widget:
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
    except ImportError:  # tqdm.notebook needs ipywidgets
        from tqdm import tqdm
    deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
    with tqdm(total=total, unit="tasks", desc=ar._fname) as bar:
        while not ar.done():
            bar.update(ar.progress - bar.n)
            if deadline is not None and time.monotonic() > deadline:
                break
            ar.wait(interval)
        bar.update(ar.progress - bar.n)
