"""The teaching notebooks in ``notebooks/`` run, top to bottom, in a real kernel.

Each notebook is executed by nbclient in the stock ``python3`` kernel (this
environment's ipykernel), from the notebooks folder, as a reader would run it.
A cell may fail only when it is tagged ``raises-exception`` -- and then it must
fail, so the tag stays honest.  Every notebook starts its own engines and must
stop them itself: when its last cell has run, with its kernel still alive, no
engine kernel it started may be left.

To tell this notebook's engines from kernels that other test runs start at the
same time, the notebook kernel gets a marker in its environment, which the
engines it starts inherit.
"""

import ast
import os
import re
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest
from conftest import kernel_pids, wait_until
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds for one cell; each notebook's whole run takes a few
GRACE = 10.0  # seconds for stopped kernels to be gone
MARKER = "IPP_EXT_NOTEBOOK_RUN"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Starting engines and running a notebook is more than the default test budget.
pytestmark = pytest.mark.timeout(600)


def marked(run_id, pids) -> set:
    """Those of ``pids`` that were started (directly or not) by notebook run ``run_id``."""
    found = set()
    for pid in pids:
        try:
            if psutil.Process(pid).environ().get(MARKER) == run_id:
                found.add(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def execute(path: Path):
    """Run the notebook at ``path``; fail on an error or on engines left running."""
    nb = nbformat.read(path, as_version=4)
    run_id = uuid.uuid4().hex
    before = kernel_pids()

    def started_here():
        return marked(run_id, kernel_pids() - before)

    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    with client.setup_kernel(env={**os.environ, MARKER: run_id}):
        kernel_pid = client.km.provisioner.pid

        def engines_left():
            return started_here() - {kernel_pid}

        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError unless tagged raises-exception
        assert wait_until(lambda: not engines_left(), GRACE), (
            f"{path.name}: engine kernels still running after the last cell: {sorted(engines_left())}")
    assert wait_until(lambda: not started_here(), GRACE), (
        f"{path.name}: kernels still running after the notebook's kernel stopped: {sorted(started_here())}")
    return nb


@pytest.fixture(scope="module")
def notebook():
    """``notebook(name)``: the executed notebook's cells by id (each notebook runs once)."""
    runs = {}

    def get(name):
        if name not in runs:
            try:
                runs[name] = execute(NOTEBOOKS / name), None
            except Exception as exc:  # noqa: BLE001 - reported by every test of this notebook
                runs[name] = None, exc
        nb, error = runs[name]
        if error is not None:
            raise error
        return {cell.id: cell for cell in nb.cells}

    return get


# -- reading outputs ---------------------------------------------------------------------------


def plain(text) -> str:
    return ANSI.sub("", "".join(text) if isinstance(text, list) else text)


def stream(cell, name="stdout") -> str:
    """Everything the cell wrote to ``name``."""
    return "".join(plain(o.text) for o in cell.outputs if o.output_type == "stream" and o.name == name)


def shown(cell, output_type=("display_data", "execute_result")) -> list:
    """The text/plain of the cell's displays and results."""
    return [plain(o.data["text/plain"]) for o in cell.outputs
            if o.output_type in output_type and "text/plain" in o.get("data", {})]


def rich(cell, mime) -> list:
    """The cell's outputs that carry ``mime``."""
    return [o for o in cell.outputs if mime in o.get("data", {})]


def everything(cell) -> str:
    """The text of all the cell's outputs, in order."""
    return "".join(plain(o.text) if o.output_type == "stream" else plain(o.data["text/plain"]) + "\n"
                   for o in cell.outputs if o.output_type == "stream" or "text/plain" in o.get("data", {}))


def errors(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


# -- every notebook ----------------------------------------------------------------------------


def test_there_are_notebooks():
    assert {p.name for p in PATHS} >= {"quickstart.ipynb", "magics.ipynb", "load_balancing.ipynb",
                                       "data_movement.ipynb", "clusters.ipynb"}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.id} has outputs"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_runs_cleanly_and_stops_its_engines(path, notebook):
    cells = notebook(path.name).values()
    for cell in cells:
        if cell.cell_type != "code":
            continue
        if "raises-exception" in cell.metadata.get("tags", []):
            assert errors(cell), f"{path.name}: cell {cell.id} is tagged raises-exception but did not raise"
        else:
            # An engine's (or the kernel's own) traceback printed on stderr is an error too.
            assert "Traceback" not in stream(cell, "stderr"), f"{path.name}: cell {cell.id}"


# -- what the notebooks show -------------------------------------------------------------------


def test_quickstart(notebook):
    cells = notebook("quickstart.ipynb")
    assert "[0, 1, 4, 9, 16, 25, 36, 49]" in stream(cells["map"])
    assert "42\n" in stream(cells["apply"])
    assert "[[10, 60], [10, 60]]" in stream(cells["push-pull"])
    assert "result: [16, 16]" in stream(cells["asyncresult"])
    assert shown(cells["await"]) == ["25"]
    (error,) = errors(cells["composite-error"])
    traceback = plain("\n".join(error.traceback))
    assert error.ename == "CompositeError"
    assert "[0:apply]" in traceback and "[1:apply]" in traceback
    assert traceback.count("ZeroDivisionError") >= 2 and "in risky" in traceback  # the engines' tracebacks
    assert "engine 0 raised ZeroDivisionError" in stream(cells["catching"])
    interrupted = stream(cells["interrupt"])
    assert "the task was stopped: KeyboardInterrupt" in interrupted
    assert "engine 0 goes on: 81" in interrupted
    assert "[9, 9]" in stream(cells["with-cluster"])


def test_magics(notebook):
    cells = notebook("magics.ipynb")
    printed = sorted(shown(cells["px-print"]))
    assert [t.split(" my process")[0] for t in printed] == ["[stdout:0]", "[stdout:1]"]
    assert sorted(re.sub(r"Out\[(\d):\d+\]", r"Out[\1:n]", t) for t in shown(cells["px-result"])) == [
        "Out[0:n]: 0", "Out[1:n]: 10"]
    assert shown(cells["px-targets"]) == ["[stdout:1] only engine 1 runs this cell\n"]
    assert any("AsyncResult" in t for t in shown(cells["px-noblock"], ("execute_result",)))
    assert "engine 0 finished its nap" in stream(cells["pxresult"])
    assert any(re.fullmatch(r"Out\[1:\d+\]: 'nap of engine 1'", t) for t in shown(cells["pxresult"]))
    grouped = everything(cells["px-group"])  # engine 0's prints and result, then engine 1's
    marks = ["[stdout:0]", "engine 0, step 1", "[output:0]", "Out[0:", "[stdout:1]", "engine 1, step 1",
             "[output:1]", "Out[1:"]
    positions = [grouped.find(m) for m in marks]
    assert -1 not in positions and positions == sorted(positions), grouped
    assert "%autopx enabled" in stream(cells["autopx-on"])
    assert sorted(shown(cells["autopx-cell"])) == ["[stdout:0] engine_only = 100\n",
                                                  "[stdout:1] engine_only = 101\n"]
    assert "here: False | on the engines: [100, 101]" in stream(cells["autopx-check"])
    assert shown(cells["px-even"]) == ["[stdout:0] engine 0 is even\n"]
    html = rich(cells["px-html"], "text/html")
    assert sorted(o.metadata["engine"] for o in html) == [0, 1]
    assert "<b>engine 0</b>" in next(o.data["text/html"] for o in html if o.metadata["engine"] == 0)
    assert "[output:0]" in shown(cells["px-html"]) and "[output:1]" in shown(cells["px-html"])
    assert sorted(o.metadata["engine"] for o in rich(cells["px-plot"], "image/png")) == [0, 1]
    assert errors(cells["px-error"])
    stderr = stream(cells["px-error"], "stderr")
    assert "[0:execute]" in stderr and "[1:execute]" in stderr and stderr.count("ZeroDivisionError") >= 2
    assert sorted(shown(cells["px-after-error"])) == ["[stdout:0] engine 0 is still fine\n",
                                                     "[stdout:1] engine 1 is still fine\n"]


def test_load_balancing(notebook):
    cells = notebook("load_balancing.ipynb")
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in stream(cells["map-sync"])
    unordered = stream(cells["map-unordered"])
    assert "in input order:      [0.4, 0.3, 0.2, 0.1, 0.0]" in unordered
    completion = re.search(r"in completion order: (\[.*\])", unordered).group(1)
    assert sorted(ast.literal_eval(completion)) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert "[0, 1, 4, 9, 16, 25]" in stream(cells["imap"])
    assert "4 tasks for 1000 elements; sum of squares = 332833500" in stream(cells["chunksize"])
    assert stream(cells["dependencies"]).count(": True") == 2
    assert "ImpossibleDependency" in stream(cells["impossible"])
    assert "succeeded on a later attempt" in stream(cells["retries"])
    assert "TaskTimeout:" in stream(cells["time-limit"])
    assert "the engines go on: [1, 4, 9]" in stream(cells["time-limit"])
    assert "{0: 1, 1: 2, 2: 4, 3: 8, 4: 16, 5: 32, 6: 64, 7: 128}\n[0, 1, 4, 9, 16]" in stream(cells["executor"])
    assert rich(cells["progress"], "application/vnd.jupyter.widget-view+json")
    assert "20 naps done" in stream(cells["progress"])
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in stream(cells["joblib"])


def test_data_movement(notebook):
    cells = notebook("data_movement.ipynb")
    assert "[2.0, 2.0]" in stream(cells["push-pull"])
    moved = stream(cells["scatter-gather"])
    assert "[array([0, 1, 2, 3, 4, 5]), array([ 6,  7,  8,  9, 10, 11])]" in moved
    assert "same as computing it here: True" in moved
    assert "total: 66 = 66" in stream(cells["reference"])
    big = stream(cells["big-array"])
    assert re.search(r"push 80 MB: [\d.]+ s", big) and re.search(r"pull 80 MB: [\d.]+ s", big)
    assert "identical after the round trip: True" in big
    assert stream(cells["sync-imports"]) == "importing math on engine(s)\n[5.0, 5.0]\n"


def test_clusters(notebook):
    cells = notebook("clusters.ipynb")
    assert "cluster notebook-demo started: 2 engines" in stream(cells["start"])
    assert re.search(r"notebook-demo\s+2/2\s+local", stream(cells["list"]))
    assert "engines: [0, 1]" in stream(cells["attach"])
    assert "engines now: [0, 1, 2, 3]" in stream(cells["scale"])
    assert "the second client reads: ['pushed by the first client'," in stream(cells["second-client"])
    assert "after shrinking: [0, 1]" in stream(cells["stop"])
    assert "notebook-demo" not in stream(cells["list-after"])


def test_mpi(notebook):
    cells = notebook("mpi.ipynb")
    assert "engines: [0, 1, 2, 3]" in stream(cells["start"]) and "4 ranks of mpiexec" in stream(cells["start"])
    assert sorted(shown(cells["world"])) == [f"[stdout:{k}] rank {k} of 4\n" for k in range(4)]
    assert sorted(re.sub(r"Out\[(\d):\d+\]", r"Out[\1:n]", t) for t in shown(cells["sum"])) == [
        f"Out[{k}:n]: 500000500000" for k in range(4)]
    assert "all equal: True" in stream(cells["sum-check"])
    assert re.search(r"pi ≈ 3\.1\d{3} from 800,000 darts on 4 ranks", stream(cells["pi"]))
    assert "stopped: True" in stream(cells["stop"])
