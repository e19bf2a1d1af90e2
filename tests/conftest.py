"""Shared fixtures: real engine kernels, started once per test session."""

import subprocess

import pytest

import ipyparallel_ext as ipp


@pytest.fixture(scope="session")
def cluster():
    """Two real engines for the whole session."""
    cluster = ipp.Cluster(n=2)
    cluster.start_cluster_sync()
    yield cluster
    cluster.stop_cluster_sync()


@pytest.fixture(scope="session")
def rc(cluster):
    """A Client on the session's two engines."""
    client = cluster.connect_client_sync()
    client.wait_for_engines(2, timeout=60)
    yield client
    client.close()


@pytest.fixture
def dv(rc):
    """A blocking DirectView on both engines, with clean namespaces."""
    view = rc[:]
    view.block = True
    yield view
    view.block = True


def kernel_pids():
    """PIDs of ipykernel processes running now (for leak checks)."""
    out = subprocess.run(["pgrep", "-f", "ipykernel_launcher"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}
