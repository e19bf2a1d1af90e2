"""Engines need nothing of ours installed: run everything against a kernel that cannot import us.

The purpose-built kernel below makes ``import ipyparallel_ext`` fail inside
the engine, so any helper pickled by reference to our package (instead of
travelling with the engine code) breaks these tests.
"""

import json
import sys
import textwrap

import numpy as np
import pytest

import ipyparallel_ext as ipp

LAUNCHER = textwrap.dedent(
    """
    import sys
    sys.modules["ipyparallel_ext"] = None  # any import of our package fails here
    from ipykernel import kernelapp
    kernelapp.launch_new_instance()
    """
)


@pytest.fixture
def bare_cluster(tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "bare-engine"
    spec_dir.mkdir(parents=True)
    launcher = tmp_path / "bare_ipykernel_launcher.py"
    launcher.write_text(LAUNCHER)
    spec = {
        "argv": [sys.executable, str(launcher), "-f", "{connection_file}", "--HistoryManager.enabled=False"],
        "display_name": "engine without ipyparallel_ext",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    cluster = ipp.Cluster(n=2, kernel_name="bare-engine")
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(2, timeout=60)
        yield rc
    finally:
        cluster.stop_cluster_sync()


def test_core_api_without_our_package_on_the_engines(bare_cluster):
    rc = bare_cluster
    dv = rc[:]
    dv.block = True
    assert dv.apply_sync(lambda: __import__("importlib.util").util.find_spec("ipyparallel_ext")) == [None, None]

    scale = 3

    def closure(x):
        return x * scale

    assert dv.apply_sync(closure, 2) == [6, 6]
    dv.push({"a": np.arange(5.0)})
    assert dv.apply_sync(lambda r: float(r.sum()), ipp.Reference("a")) == [10.0, 10.0]
    assert dv.map_sync(lambda x: x + 1, range(6)) == [1, 2, 3, 4, 5, 6]
    dv.scatter("part", np.arange(10))
    assert np.array_equal(dv.gather("part"), np.arange(10))
    pulled = rc[0].pull("a", block=True)
    pulled[0] = 42.0  # arrives writable
    with pytest.raises(ipp.CompositeError) as info:
        dv.execute("1 / 0")
    assert info.value.elist[0][0] == "ZeroDivisionError"


def test_load_balancing_and_dependencies_without_our_package(bare_cluster):
    lv = bare_cluster.load_balanced_view()
    assert lv.map_sync(lambda x: x * x, range(50)) == [x * x for x in range(50)]

    @ipp.require("math")
    @ipp.interactive
    def root(x):
        return math.sqrt(x)  # noqa: F821 - bound on the engine by @require

    assert lv.apply_sync(root, 16) == 4.0

    def never():
        return False

    with pytest.raises(ipp.ImpossibleDependency):
        lv.apply_async(ipp.depend(never)(lambda: 1)).get(30)
