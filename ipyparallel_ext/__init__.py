"""IPython.parallel's View API on ordinary Jupyter kernels.

``import ipyparallel_ext as ipp`` and use it as you would ipyparallel::

    with ipp.Cluster(n=4) as rc:
        rc[:].apply_sync(lambda x: x * 2, 21)
"""

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION

from ._asyncresult import AsyncHubResult as AsyncHubResult
from ._asyncresult import AsyncMapResult as AsyncMapResult
from ._asyncresult import AsyncResult as AsyncResult
from ._client import Client as Client
from .cluster import Cluster as Cluster
from .cluster import ClusterManager as ClusterManager
from ._dependency import Dependency as Dependency
from ._dependency import depend as depend
from ._dependency import dependent as dependent
from ._dependency import require as require
from ._joblib import register_joblib_backend as register_joblib_backend
from ._lbview import LoadBalancedView as LoadBalancedView
from ._lbview import ViewExecutor as ViewExecutor
from ._remotefunction import ParallelFunction as ParallelFunction
from ._remotefunction import RemoteFunction as RemoteFunction
from ._view import BroadcastView as BroadcastView
from ._view import DirectView as DirectView
from ._view import View as View
from .error import (
    AlreadyDisplayedError,
    CompositeError,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    IPythonError,
    KernelError,
    NoEnginesRegistered,
    RemoteError,
    TaskAborted,
    TaskRejectError,
    TaskTimeout,
    TimeoutError,
    UnmetDependency,
    collect_exceptions,
    unwrap_exception,
    wrap_exception,
)
from .serialize import (
    PrePickled,
    Reference,
    can,
    deserialize_object,
    pack_apply_message,
    serialize_object,
    uncan,
    unpack_apply_message,
    use_cloudpickle,
    use_dill,
    use_pickle,
)
from .util import interactive as interactive

__version__ = "0.1.0"
version_info = (0, 1, 0)

__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",
    "AlreadyDisplayedError", "AsyncHubResult", "AsyncMapResult", "AsyncResult", "BroadcastView", "Client", "Cluster",
    "ClusterManager",
    "CompositeError", "Dependency", "DependencyTimeout", "DirectView", "EngineError", "IPythonError",
    "ImpossibleDependency", "InvalidDependency", "KernelError", "LoadBalancedView", "NoEnginesRegistered",
    "ParallelFunction", "PrePickled", "Reference", "RemoteError", "RemoteFunction", "TaskAborted",
    "TaskRejectError", "TaskTimeout", "TimeoutError", "UnmetDependency", "View", "ViewExecutor",
    "bind_kernel", "can", "collect_exceptions", "depend", "dependent", "deserialize_object",
    "interactive", "pack_apply_message", "parallel", "register_joblib_backend", "remote", "require",
    "serialize_object", "uncan", "unpack_apply_message", "unwrap_exception", "use_cloudpickle",
    "use_dill", "use_pickle", "version_info", "wrap_exception", "__version__",
]


def remote(view, block=None, **flags):
    """Decorator: calls of the function run remotely through ``view`` (``view.remote()``)."""
    return view.remote(block=block, **flags)


def parallel(view, dist="b", block=None, ordered=True, **flags):
    """Decorator: the function runs on partitions of its sequences (``view.parallel()``).

    ``ordered`` is accepted for ipyparallel code: results always come back in
    the order of the sequences, which ``ordered=False`` allows too.
    """
    return view.parallel(dist=dist, block=block, **flags)


def bind_kernel(**kwargs):
    """Kept for ipyparallel code: our engines already are Jupyter kernels.

    ipyparallel's engines had to be bound to become kernels a frontend can
    attach to; ours are stock kernels from the start, so called on an
    engine this does nothing (attach with the engine's connection file,
    ``cluster.connection_files``).  Elsewhere it raises, as ipyparallel's does.

    Raises
    ------
    TypeError
        For any argument: the kernel already listens on its own ports.
    RuntimeError
        When not called inside a kernel (an engine).
    """
    if kwargs:
        raise TypeError(f"bind_kernel takes no options here (got {sorted(kwargs)}): "
                        f"the engine is already a kernel, listening on its own ports")
    from IPython import get_ipython

    if getattr(get_ipython(), "kernel", None) is None:
        raise RuntimeError("bind_kernel is for engines, which here are already kernels: "
                           "attach a frontend with the engine's connection file instead")


def load_ipython_extension(ip):
    """``%load_ext ipyparallel_ext``: register the %px magics."""
    from ._magics import load_ipython_extension as load

    load(ip)
