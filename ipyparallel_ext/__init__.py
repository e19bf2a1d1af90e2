"""IPython.parallel's View API on ordinary Jupyter kernels.

``import ipyparallel_ext as ipp`` and use it as you would ipyparallel::

    with ipp.Cluster(n=4) as rc:
        rc[:].apply_sync(lambda x: x * 2, 21)
"""

from ._asyncresult import AsyncMapResult as AsyncMapResult
from ._asyncresult import AsyncResult as AsyncResult
from ._client import Client as Client
from ._cluster import Cluster as Cluster
from ._remotefunction import ParallelFunction as ParallelFunction
from ._remotefunction import RemoteFunction as RemoteFunction
from ._view import DirectView as DirectView
from ._view import View as View
from ._wire import Reference as Reference
from .error import (
    CompositeError,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    NoEnginesRegistered,
    RemoteError,
    TaskAborted,
    TaskTimeout,
)
from .util import interactive as interactive
from ._dependency import Dependency as Dependency
from ._dependency import depend as depend
from ._dependency import dependent as dependent
from ._dependency import require as require
from ._joblib import register_joblib_backend as register_joblib_backend
from ._lbview import LoadBalancedView as LoadBalancedView
from ._lbview import ViewExecutor as ViewExecutor
from .error import UnmetDependency as UnmetDependency

__version__ = "0.1.0"

__all__ = [
    "AsyncMapResult", "AsyncResult", "Client", "Cluster", "CompositeError", "DependencyTimeout",
    "DirectView", "EngineError", "ImpossibleDependency", "NoEnginesRegistered", "ParallelFunction",
    "Reference", "RemoteError", "RemoteFunction", "TaskAborted", "TaskTimeout", "View",
    "interactive", "__version__",
]
__all__ += ["Dependency", "LoadBalancedView", "UnmetDependency", "ViewExecutor", "depend", "dependent",
            "register_joblib_backend", "require"]


def load_ipython_extension(ip):
    """``%load_ext ipyparallel_ext``: register the %px magics."""
    from ._magics import load_ipython_extension as load

    load(ip)
