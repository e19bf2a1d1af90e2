"""Shared fixtures: real engine kernels, started once per test session."""

import selectors
import subprocess
import time

import psutil
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


@pytest.fixture(scope="module")
def shell():
    """An in-process IPython (the one ``get_ipython()`` returns), for the %px magics."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file for a test shell
    ip = InteractiveShell.instance(config=config)
    ip.colors = "nocolor"
    yield ip


@pytest.fixture
def make_cluster():
    """Start purpose-built clusters: ``cluster, rc = make_cluster(n)``; all stopped at teardown."""
    clusters = []

    def make(n=2, **kwargs):
        cluster = ipp.Cluster(n=n, **kwargs)
        clusters.append(cluster)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n, timeout=60)
        return cluster, client

    yield make
    for cluster in clusters:
        cluster.stop_cluster_sync()


# -- helpers for tests (import them: ``from conftest import wait_until``) ----------------------


def wait_until(condition, timeout=10.0, interval=0.02):
    """Poll ``condition`` until it is true; False if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def readline(proc, timeout):
    """One line of subprocess ``proc``'s stdout, or fail after ``timeout`` seconds (showing its stderr)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"the subprocess printed nothing in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        code = proc.wait(timeout=10)
        err = proc.stderr.read() if proc.stderr else ""
        pytest.fail(f"the subprocess exited with {code}:\n{err[-3000:]}")
    return line


def alive(pid):
    """True if process ``pid`` runs (a zombie has exited: not alive)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@ipp.interactive  # sent by value: engines cannot import the test modules
def wait_for_file(path, value=True, timeout=30.0):
    """Runs on an engine: wait until ``path`` exists (the test's go signal), then return ``value``."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


@ipp.interactive
def fail_at(x, bad):
    """Runs on an engine: return ``x``, or raise ValueError when ``x == bad``."""
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


@ipp.interactive
def getpid():
    """Runs on an engine: its process id."""
    import os

    return os.getpid()


@ipp.interactive
def double(x):
    """Runs on an engine: ``2 * x``."""
    return 2 * x


@ipp.interactive
def snooze(t):
    """Runs on an engine: sleep ``t`` seconds, return ``t``."""
    import time

    time.sleep(t)
    return t
