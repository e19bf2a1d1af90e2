"""The joblib backend, importable as in ipyparallel (``ipyparallel.joblib``)::

    from ipyparallel_ext.joblib import IPythonParallelBackend, register

Importing this module imports joblib; ``ipyparallel_ext.register_joblib_backend``
does not need it.
"""

from ._joblib import _backend_class
from ._joblib import register_joblib_backend as register

IPythonParallelBackend = _backend_class()

__all__ = ["IPythonParallelBackend", "register"]
