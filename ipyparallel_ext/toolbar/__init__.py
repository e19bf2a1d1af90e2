"""The notebook toolbar and "Parallel" panel: the server extension and the kernel-side comm.

- the server extension (:mod:`._handlers`, :mod:`._clusters`, :mod:`._activity`):
  a REST API under ``{base_url}ipyparallel-ext/`` that lists, starts, scales,
  interrupts and stops the machine's supervised clusters, as
  ``ipyparallel-ext cluster`` does, with engines alive and busy;
- the kernel-side comm (:mod:`._comm`): a notebook kernel with a Client tells
  the toolbar its engines, busy engines, queued tasks and ``%autopx`` state,
  and takes its ``autopx`` and ``interrupt`` commands;
- ``labextension/``: the built JupyterLab / Notebook 7 extension (its
  TypeScript source is ``toolbar/`` at the top of the repository).
"""

from __future__ import annotations


def _jupyter_server_extension_points() -> list:
    return [{"module": "ipyparallel_ext.toolbar"}]


def _jupyter_labextension_paths() -> list:
    return [{"src": "labextension", "dest": "ipyparallel-ext"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Add the REST API to a running jupyter_server (``jpserver_extensions``)."""
    from ._clusters import ClusterService
    from ._handlers import handlers

    service = ClusterService()
    serverapp.web_app.settings["ipyparallel_ext_toolbar"] = service
    serverapp.web_app.add_handlers(".*$", handlers(serverapp.web_app.settings["base_url"], service))
    serverapp.log.info("ipyparallel_ext.toolbar: REST API at %sipyparallel-ext/clusters",
                       serverapp.web_app.settings["base_url"])


async def _unload_jupyter_server_extension(serverapp) -> None:
    """Stop watching engines when the server stops (clusters keep running: they outlive servers)."""
    service = serverapp.web_app.settings.pop("ipyparallel_ext_toolbar", None)
    if service is not None:
        service.close()
