"""A joblib parallel backend that runs ``joblib.Parallel`` calls on engines.

::

    ipp.register_joblib_backend()            # engines of a Cluster started on first use
    view.register_joblib_backend()           # or: this LoadBalancedView's engines
    with joblib.parallel_backend("ipyparallel"):
        joblib.Parallel()(joblib.delayed(f)(x) for x in data)

joblib is imported only when a backend is registered.
"""

from __future__ import annotations

import functools
import threading

_default = {}  # the view (and cluster) used when none is given, made on first use
_default_lock = threading.Lock()


def _default_view():
    """A LoadBalancedView on a Cluster of this machine's size, started once per process.

    The cluster stops when Python exits (Cluster's own atexit hook).
    """
    with _default_lock:
        if "view" not in _default:
            from .cluster import Cluster

            cluster = Cluster()
            client = cluster.start_and_connect_sync()
            client.wait_for_engines(cluster.n, timeout=cluster.engine_timeout)
            _default.update(cluster=cluster, view=client.load_balanced_view())
        return _default["view"]


@functools.cache
def _backend_class():
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase

    class IPythonParallelBackend(AutoBatchingMixin, ParallelBackendBase):
        """Runs joblib's batches as load-balanced tasks (each batch is one task)."""

        supports_retrieve_callback = True

        def __init__(self, view=None, **kwargs):
            super().__init__(**kwargs)
            self._view = view

        @property
        def view(self):
            if self._view is None:
                self._view = _default_view()
            return self._view

        def effective_n_jobs(self, n_jobs):
            """As many jobs as the view has engines."""
            return max(1, len(self.view))

        def submit(self, func, callback=None):
            """Send one batch; ``callback(ar)`` runs when it is done.

            joblib's callback unpickles the result (:meth:`retrieve_result_callback`),
            takes joblib's lock and dispatches the next batch: user-side work that
            runs on the callback thread (``add_done_callback``), never on the I/O thread.
            """
            ar = self.view.apply_async(func)
            if callback is not None:
                ar.add_done_callback(callback)
            return ar

        def retrieve_result_callback(self, out):
            """The batch's results (called by joblib in the callback, on the callback thread)."""
            return out.get()

        def abort_everything(self, ensure_ready=True):
            """Abort the tasks not sent yet (running ones finish)."""
            self.view.abort()

    return IPythonParallelBackend


def register_joblib_backend(name="ipyparallel", make_default=False, view=None) -> None:
    """Register a joblib backend ``name`` that runs on engines.

    Parameters
    ----------
    name : str
        The backend's name for ``joblib.parallel_backend`` / ``Parallel(backend=...)``.
    make_default : bool
        Make it joblib's default backend.
    view : LoadBalancedView, optional
        The engines to use; by default a Cluster with one engine per CPU,
        started the first time the backend is used and stopped at exit.
    """
    from joblib.parallel import register_parallel_backend

    factory = functools.partial(_backend_class(), view=view)
    register_parallel_backend(name, factory, make_default=make_default)
