"""Clusters of engines, as ``ipyparallel.cluster``: starting, supervising and finding them.

- :mod:`._cluster`: :class:`Cluster`, a set of engines and ipyparallel 9's Cluster API;
- :mod:`._local`: local engine kernels through jupyter_client (spec, loop thread, probes);
- :mod:`._files`: cluster files, one JSON file per running cluster in the Jupyter runtime directory;
- :mod:`._supervisor`: the process that owns a cluster started by ``ipyparallel-ext cluster start``;
- :mod:`._manager`: :class:`ClusterManager`, the running clusters by id.
"""

from ._cluster import Cluster as Cluster
from ._manager import ClusterManager as ClusterManager

__all__ = ["Cluster", "ClusterManager"]
