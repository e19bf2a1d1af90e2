"""Clusters of engines, as ``ipyparallel.cluster``: starting, supervising and finding them.

- :mod:`._cluster`: :class:`Cluster`, a set of engines and ipyparallel 9's Cluster API;
- :mod:`._local`: local engine kernels through jupyter_client (spec, loop thread, probes).
"""

from ._cluster import Cluster as Cluster

__all__ = ["Cluster"]
