"""The %px magics in real notebooks: nbclient runs them in a "Python 3 (parallel)" kernel.

The kernelspecs are installed by the project's CLI into a temporary prefix; the
notebook kernel starts its own two engines, as a user's notebook would.
"""

import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from ipyparallel_ext import _cli

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
WIDGET = "application/vnd.jupyter.widget-view+json"

START = ("import ipyparallel_ext as ipp\n"
         "cluster = ipp.Cluster(n=2)\n"
         "rc = cluster.start_and_connect_sync()\n"
         "rc.wait_for_engines(2, timeout=60)")
STOP = "cluster.stop_cluster_sync()"


def plain(text) -> str:
    return ANSI.sub("", "".join(text) if isinstance(text, list) else text)


@pytest.fixture(scope="module")
def parallel_kernel(tmp_path_factory):
    """Installs the kernelspecs with `ipyparallel-ext install-kernelspecs --prefix` and makes them visible."""
    prefix = tmp_path_factory.mktemp("prefix")
    assert _cli.main(["install-kernelspecs", "--prefix", str(prefix)]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(prefix / "share" / "jupyter"),
                                                                 os.environ.get("JUPYTER_PATH")])))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        yield _cli.PARALLEL_KERNEL_NAME


def test_repository_kernelspecs_are_what_the_cli_installs():
    import json

    for name, spec in _cli.kernel_specs("python").items():
        assert json.loads((REPO / "kernelspec" / name / "kernel.json").read_text()) == spec
    from ipyparallel_ext.cluster._local import ENGINE_ARGS

    assert _cli.kernel_specs("python")["ipyparallel-ext-engine"]["argv"][1:] == ENGINE_ARGS


# -- one notebook, executed once ------------------------------------------------------------------

CELLS = [
    ("loaded", "'px' in get_ipython().magics_manager.magics['line']", []),
    ("start", START, []),
    ("assign", "%px a = 6 * 7", []),
    ("print", "%px print('hello from', a)", []),
    ("result", "%px a", []),
    ("html", "%%px\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>engine html</b>'))", []),
    ("png", "%%px\n%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()", []),
    ("fail", "%px 1/0", ["raises-exception"]),
    ("after_fail", "%px print('still alive')", []),
    ("no_stream", "%%px --no-stream\nprint('collected')\n7", []),
    ("progress", "%%px --progress-after 0\nimport time\ntime.sleep(0.3)", []),
    ("noblock", "%%px --noblock\nprint('async')\n8", []),
    ("pxresult", "%pxresult", []),
    ("autopx_on", "%autopx", []),
    ("auto_assign", "auto_var = 5", []),
    ("auto_print", "print(auto_var * 2)", []),
    ("autopx_off", "%autopx", []),
    ("auto_local", "'auto_var' in globals()", []),
    ("stop", STOP, []),
]


@pytest.fixture(scope="module")
def notebook(parallel_kernel):
    nb = new_notebook(cells=[new_code_cell(src, metadata={"tags": tags}) for _, src, tags in CELLS])
    nb.metadata["kernelspec"] = {"name": parallel_kernel, "display_name": "Python 3 (parallel)", "language": "python"}
    NotebookClient(nb, timeout=120, kernel_name=parallel_kernel).execute()
    nbformat.validate(nb)
    return {name: cell for (name, _, _), cell in zip(CELLS, nb.cells)}


def texts(cell, output_type=None):
    """text/plain of display_data/execute_result outputs, or the text of stream outputs."""
    found = []
    for out in cell.outputs:
        if output_type and out.output_type != output_type:
            continue
        if out.output_type == "stream":
            found.append(plain(out.text))
        elif "data" in out and "text/plain" in out.data:
            found.append(plain(out.data["text/plain"]))
    return found


def out_engines(cell, value):
    return sorted(int(m.group(1)) for t in texts(cell, "display_data")
                  for m in [re.fullmatch(rf"Out\[(\d+):\d+\]: {value}", t)] if m)


def test_extension_loaded_at_start(notebook):
    assert texts(notebook["loaded"]) == ["True"]


def test_stream_text_is_prefixed_per_engine(notebook):
    shown = texts(notebook["print"], "display_data")
    assert sorted(shown) == ["[stdout:0] hello from 42\n", "[stdout:1] hello from 42\n"]


def test_results_show_as_out_engine_count(notebook):
    assert out_engines(notebook["result"], "42") == [0, 1]


def test_rich_html_from_engines(notebook):
    outs = notebook["html"].outputs
    html = [o for o in outs if "text/html" in o.get("data", {})]
    assert [o.data["text/html"] for o in html] == ["<b>engine html</b>"] * 2
    assert sorted(o.metadata["engine"] for o in html) == [0, 1]
    assert "[output:0]" in texts(notebook["html"]) and "[output:1]" in texts(notebook["html"])


def test_matplotlib_png_from_engines(notebook):
    pngs = [o for o in notebook["png"].outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2 and sorted(o.metadata["engine"] for o in pngs) == [0, 1]


def test_failing_cell_errors_with_each_engine_traceback(notebook):
    cell = notebook["fail"]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "AlreadyDisplayedError"
    stderr = "".join(t for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
                     for t in [plain(o.text)])
    assert "[0:execute]" in stderr and "[1:execute]" in stderr
    assert stderr.count("ZeroDivisionError") >= 2
    assert sorted(texts(notebook["after_fail"])) == ["[stdout:0] still alive\n", "[stdout:1] still alive\n"]


def test_no_stream_shows_collected_outputs(notebook):
    cell = notebook["no_stream"]
    assert "".join(texts(cell, "stream")) == "[stdout:0] \ncollected\n[stdout:1] \ncollected\n"
    assert out_engines(cell, "7") == [0, 1]


def test_progress_bar_is_a_widget(notebook):
    assert any(WIDGET in o.get("data", {}) for o in notebook["progress"].outputs)


def test_noblock_then_pxresult(notebook):
    assert any("AsyncResult" in t for t in texts(notebook["noblock"], "execute_result"))
    cell = notebook["pxresult"]
    assert "[stdout:0] \nasync\n" in "".join(texts(cell, "stream"))
    assert out_engines(cell, "8") == [0, 1]


def test_autopx_in_a_notebook(notebook):
    assert "%autopx enabled" in "".join(texts(notebook["autopx_on"]))
    assert sorted(texts(notebook["auto_print"])) == ["[stdout:0] 10\n", "[stdout:1] 10\n"]
    assert "%autopx disabled" in "".join(texts(notebook["autopx_off"]))
    assert texts(notebook["auto_local"]) == ["False"]


# -- a live kernel: streaming and interrupts --------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(parallel_kernel):
    km = KernelManager(kernel_name=parallel_kernel)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, _ = execute(kc, START)
        assert reply["status"] == "ok", reply
        yield km, kc
        execute(kc, STOP)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def collect(kc, msg_id, timeout=60):
    """IOPub messages of request ``msg_id`` until it is idle, then its reply's content."""
    deadline = time.monotonic() + timeout
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        messages.append(msg)
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], messages


def execute(kc, code, timeout=60):
    return collect(kc, kc.execute(code), timeout)


def test_streaming_updates_displays_in_place_while_the_cell_runs(kernel):
    _km, kc = kernel
    reply, messages = execute(kc, "%%px -t 0\nimport time\nfor i in range(3):\n"
                                  "    print(i, flush=True)\n    time.sleep(0.7)")
    assert reply["status"] == "ok"
    shown = [(m["msg_type"], m["content"]["transient"]["display_id"], plain(m["content"]["data"]["text/plain"]))
             for m in messages if m["msg_type"] in ("display_data", "update_display_data")
             and "display_id" in m["content"].get("transient", {})]  # (a progress bar shows up too)
    first, *updates = shown
    # Shown while the engine was still printing, then updated in place.
    assert first[0] == "display_data" and first[2] == "[stdout:0] 0\n"
    assert updates and all(kind == "update_display_data" and did == first[1] for kind, did, _ in updates)
    assert updates[-1][2] == "[stdout:0] 0\n1\n2\n"


def test_interrupting_the_kernel_interrupts_the_engines(kernel, tmp_path):
    km, kc = kernel
    code = (f"%px import os, time; open(os.path.join({str(tmp_path)!r}, f'started-{{os.getpid()}}'), 'w')"
            ".close(); time.sleep(60); print('not interrupted')")
    msg_id = kc.execute(code)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    km.interrupt_kernel()
    reply, messages = collect(kc, msg_id)
    assert reply["status"] == "error"  # the cell fails, so "run all" stops here
    stderr = "".join(plain(m["content"]["text"]) for m in messages
                     if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert "Keyboard interrupt: sending SIGINT to engine(s) [0, 1]" in stderr
    assert stderr.count("KeyboardInterrupt") >= 2
    assert not [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")
                and "[stdout:" in str(m["content"])]  # the engines never got to print
    reply, messages = execute(kc, "%px print('alive after interrupt')")
    assert reply["status"] == "ok"
    shown = sorted(plain(m["content"]["data"]["text/plain"]) for m in messages if m["msg_type"] == "display_data")
    assert shown == ["[stdout:0] alive after interrupt\n", "[stdout:1] alive after interrupt\n"]
