"""Publishing data from a running task to its client, as ``ipyparallel.datapub``.

On an engine, inside a task::

    from ipyparallel_ext.datapub import publish_data

    for i in range(n):
        ...
        publish_data({"progress": i / n, "loss": loss})

On the client, ``ar.data`` (or ``ar["data"]``) is what each engine has
published for that request so far, merged into one dict (later values
replace earlier ones key by key); a list of dicts for a multi-engine
result.  Engines need nothing of ours installed: the engine helpers
register this module on every engine they are installed on.
"""

from __future__ import annotations

import sys

from . import _engine_code

__all__ = ["publish_data"]


def publish_data(data: dict) -> None:
    """Publish ``data`` (a dict) to the client of the task running now.

    Parameters
    ----------
    data : dict
        Think of it as a namespace; keys should be strings.  Values are
        pickled with the request's pickler (protocol 5; large buffers such as
        numpy arrays travel as their own frames).

    Raises
    ------
    RuntimeError
        If called outside a task running on an engine.
    """
    # The helpers installed on this engine (not necessarily this package's copy).
    sys.modules[_engine_code.MODULE_NAME].publish_data(data)
