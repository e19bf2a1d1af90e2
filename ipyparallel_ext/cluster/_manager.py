"""ClusterManager: the running clusters of this machine, by id, as ipyparallel's."""

from __future__ import annotations

import logging

from . import _files
from ._cluster import Cluster

log = logging.getLogger("ipyparallel_ext.cluster")


class ClusterManager:
    """Finds the supervised clusters running on this machine (``ipyparallel-ext cluster start``).

    ipyparallel keys clusters by ``'{profile}:{cluster_id}'``; there are no
    profiles here, so the key is the cluster id.
    """

    def __init__(self, **kwargs):
        if kwargs:  # ipyparallel's traitlets options (parent=, config=, log=): none apply here
            raise TypeError(f"ClusterManager() takes no options here (got {sorted(kwargs)})")
        self.clusters: dict = {}  # cluster id -> Cluster

    def load_clusters(self, **kwargs) -> dict:
        """Add the clusters now running, drop those that stopped; returns :attr:`clusters`.

        ipyparallel's profile arguments (``profile=``, ``profile_dirs=``...)
        raise TypeError: clusters are not kept in profiles here.
        """
        if kwargs:
            raise TypeError(f"load_clusters() got {sorted(kwargs)}: there are no IPython profiles"
                            f" here, clusters are found in the Jupyter runtime directory")
        running = _files.running_cluster_files()
        for key in [k for k in self.clusters if k not in running and self.clusters[k].supervisor]:
            log.info("Removing stopped cluster %s", key)
            self.clusters.pop(key)
        for cluster_id, (path, _data) in running.items():
            if cluster_id not in self.clusters:
                try:
                    self.clusters[cluster_id] = Cluster.from_file(path)
                except (OSError, ValueError, KeyError) as exc:  # stopped meanwhile, or not ours
                    log.warning("Failed to load cluster from %s: %s", path, exc)
        return self.clusters

    def new_cluster(self, **kwargs):
        """A new (not yet started) :class:`Cluster`; returns ``(key, cluster)`` as ipyparallel's."""
        cluster = Cluster(**kwargs)
        if cluster.cluster_id in self.clusters:
            raise KeyError(f"Cluster {cluster.cluster_id} already exists!")
        self.clusters[cluster.cluster_id] = cluster
        return cluster.cluster_id, cluster

    def get_cluster(self, cluster_id) -> Cluster:
        """The Cluster of ``cluster_id`` (KeyError naming the known ones if there is none)."""
        try:
            return self.clusters[cluster_id]
        except KeyError:
            raise KeyError(_files.no_such_cluster(cluster_id, self.clusters)) from None

    def remove_cluster(self, cluster_id) -> None:
        """Forget ``cluster_id`` (it keeps running)."""
        del self.clusters[cluster_id]
