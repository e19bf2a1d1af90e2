"""Clusters of engines, as ``ipyparallel.cluster``: starting, supervising and finding them.

- :mod:`._cluster`: :class:`Cluster`, a set of engines and ipyparallel 9's Cluster API;
- :mod:`._launcher`: the launcher interface (:class:`Launcher`, :class:`EngineSet`) and the names ``engines=`` takes;
- :mod:`._local`: the default launcher, local kernels through jupyter_client (spec, loop thread, probes);
- :mod:`._mpi`, :mod:`._slurm`, :mod:`._ssh`: engines under ``mpiexec``, in a Slurm job, on other hosts over ssh;
- :mod:`._files`: cluster files, one JSON file per running cluster in the Jupyter runtime directory;
- :mod:`._supervisor`: the process that owns a cluster started by ``ipyparallel-ext cluster start``;
- :mod:`._manager`: :class:`ClusterManager`, the running clusters by id.
"""

from ._cluster import Cluster as Cluster
from ._launcher import EngineSet as EngineSet
from ._launcher import LaunchContext as LaunchContext
from ._launcher import Launcher as Launcher
from ._local import LocalLauncher as LocalLauncher
from ._manager import ClusterManager as ClusterManager
from ._mpi import MPILauncher as MPILauncher
from ._slurm import SlurmLauncher as SlurmLauncher
from ._ssh import SSHLauncher as SSHLauncher

__all__ = ["Cluster", "ClusterManager", "EngineSet", "LaunchContext", "Launcher", "LocalLauncher", "MPILauncher",
           "SlurmLauncher", "SSHLauncher"]
