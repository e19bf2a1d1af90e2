"""The "Parallel" panel and the notebook toolbar, driven in a real browser.

A real ``jupyter lab`` and a real ``jupyter notebook`` (Notebook 7), each started on a free port in
a temp folder (``_server_fixture.running_server``), serve this checkout's built labextension
(``ipyparallel_ext/toolbar/labextension``, put first on ``JUPYTER_PATH``) and server extension.
Debian's Chromium (headless, through Playwright) then does what a user does: opens the panel,
refuses a bad engine count, starts a 2-engine cluster from it (the same id again is a 409 shown in
the panel), inserts the connect code into a notebook and runs it, runs a ``%px`` cell, toggles
``%autopx`` from the toolbar, interrupts sleeping engines from the toolbar (during a blocking
``%px`` with and without kernel subshells, then with the kernel idle), reloads the page and
restarts the kernel (the toolbar comes back both times), scales and stops the cluster from the
panel. Leaving the server's block checks that no kernel, engine or cluster file is left.

A failing test saves a screenshot of the page under its tmp folder and prints the path. With
``IPP_EXT_SCREENSHOTS=1`` the JupyterLab run also rewrites the README's screenshots,
``toolbar/screenshots/panel.png`` and ``toolbar/screenshots/toolbar.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")

from _server_fixture import REPO, running_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LABEXTENSION = Path(REPO) / "ipyparallel_ext" / "toolbar" / "labextension"
SCREENSHOTS = Path(REPO) / "toolbar" / "screenshots"
UI_TIMEOUT = 60_000  # ms for the page to show what it was asked for (a busy 2-core machine)
ENGINES_TIMEOUT = 180_000  # ms for a cluster's engines to start or stop
CELL_TIMEOUT = 120_000  # ms for a cell to finish

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"),
]

# JavaScript run in the page, through the application object `--expose-app-in-browser` puts on
# `window.jupyterapp`: only to find the notebook and run its cells the way the Run command does.
_KERNEL_IDLE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session &&
    panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}"""
_ADD_CELL = """async (source) => {
  const app = window.jupyterapp;
  const notebook = app.shell.currentWidget.content;
  const index = notebook.widgets.length;
  notebook.model.sharedModel.insertCell(index, {cell_type: 'code', source});
  notebook.deselectAll();
  notebook.activeCellIndex = index;
  return index;
}"""
# Not awaited: the command's promise settles only when the cell has finished (see _CELL_DONE).
_RUN_ACTIVE_CELL = "() => { void window.jupyterapp.commands.execute('notebook:run-cell'); }"
_RESTART_KERNEL = "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()"
# What an older JupyterLab or kernel does: comm messages on the main shell, behind a running cell.
_COMMS_ON_MAIN_SHELL = """() => {
  window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.commsOverSubshells = 'disabled';
}"""
_CELL_DONE = """(index) => {
  const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
  return cell.model.executionCount !== null;
}"""
_SELECT_FIRST_CELL = """() => {
  const notebook = window.jupyterapp.shell.currentWidget.content;
  notebook.deselectAll();
  notebook.activeCellIndex = 0;
}"""
_CELL_SOURCES = "() => window.jupyterapp.shell.currentWidget.content.widgets.map(c => c.model.sharedModel.getSource())"


@contextlib.contextmanager
def _chromium(tmp_path):
    """A headless Chromium page; on an exception the page's screenshot is saved and its path printed."""
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT)
            try:
                yield page
            except BaseException:
                shot = Path(tmp_path) / "failure.png"
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"\nscreenshot of the failing page: {shot}")
                raise
        finally:
            browser.close()


def _labextensions_first(tmp_path) -> dict:
    """The server's environment that serves the checkout's built labextension first.

    It goes ahead of any copy installed in the environment (an editable install copies it once).
    """
    if not (LABEXTENSION / "package.json").exists():  # committed: missing means a broken checkout
        raise FileNotFoundError(f"{LABEXTENSION} is missing: build it with (cd toolbar && jlpm install && jlpm build)")
    data = Path(tmp_path) / "jupyter-data"
    (data / "labextensions").mkdir(parents=True)
    (data / "labextensions" / "ipyparallel-ext").symlink_to(LABEXTENSION, target_is_directory=True)
    return {"JUPYTER_PATH": os.pathsep.join(p for p in (str(data), os.environ.get("JUPYTER_PATH")) if p)}


def _write_notebook(root: Path) -> str:
    """An empty-ish notebook (one markdown cell) on the Python 3 kernel; returns its name."""
    notebook = {"cells": [{"cell_type": "markdown", "id": "intro", "metadata": {}, "source": "# toolbar test"}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (root / "toolbar-test.ipynb").write_text(json.dumps(notebook))
    return "toolbar-test.ipynb"


def _add_cell(page, source: str) -> int:
    return page.evaluate(_ADD_CELL, source)


def _run_cell(page, source: str, wait: bool = True) -> int:
    """Append a code cell with ``source`` and run it (the Run command); with ``wait``, until it finishes."""
    index = _add_cell(page, source)
    page.evaluate(_RUN_ACTIVE_CELL)
    if wait:
        _wait_cell(page, index)
    return index


def _wait_cell(page, index: int) -> None:
    page.wait_for_function(_CELL_DONE, arg=index, timeout=CELL_TIMEOUT)


def _output(page, index: int) -> str:
    """The text the page shows as cell ``index``'s output."""
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea").inner_text()


def _interrupt_sleeping_px(page, toolbar) -> None:
    """Run a sleeping ``%px``, click "Interrupt engines" once both engines run it, check it ended."""
    engines = toolbar.get_by_test_id("ipp-engines")
    index = _run_cell(page, "%px import time; time.sleep(300)", wait=False)
    engines.and_(page.locator('[data-busy="2"]')).wait_for()
    toolbar.get_by_test_id("ipp-interrupt").click()
    _wait_cell(page, index)
    assert "KeyboardInterrupt" in _output(page, index)
    engines.and_(page.locator('[data-busy="0"]')).wait_for()


def _open_panel(page, app: str) -> None:
    if page.locator("#ipyparallel-ext-panel").is_visible():
        return
    if app == "lab":  # a user clicks the panel's tab in the left sidebar
        page.locator('.jp-SideBar .lm-TabBar-tab[data-id="ipyparallel-ext-panel"]').click()
    else:  # Notebook 7 keeps its sidebars closed: View > Left Sidebar > Show Parallel clusters
        page.locator(".lm-MenuBar-itemLabel", has_text="View").click()
        page.locator(".lm-Menu-itemLabel", has_text="Left Sidebar").hover()
        page.locator(".lm-Menu-itemLabel", has_text="Show Parallel clusters").click()
    page.locator("#ipyparallel-ext-panel").wait_for(state="visible")


def _screenshot(page, top, bottom, name: str) -> None:
    """Rewrite a README screenshot, only when asked (so that test runs leave the tree clean).

    The picture spans ``top``'s box down to the bottom of ``bottom``'s (both locators).
    """
    if os.environ.get("IPP_EXT_SCREENSHOTS") != "1":
        return
    page.mouse.move(0, 0)  # no hover highlight in the picture
    first, last = top.bounding_box(), bottom.bounding_box()
    clip = {"x": first["x"], "y": first["y"], "width": first["width"],
            "height": last["y"] + last["height"] - first["y"] + 8}
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), clip=clip)
    print(f"\nwrote {SCREENSHOTS / name}")


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_panel_and_toolbar(app, tmp_path):
    env = _labextensions_first(tmp_path)
    with running_server(tmp_path, app=app, extra_args=["--expose-app-in-browser"], env=env) as server, \
            _chromium(tmp_path) as page:
        name = _write_notebook(server.root_dir)
        path = f"lab/tree/{name}" if app == "lab" else f"notebooks/{name}"
        page.goto(f"{server.url}{path}?token={server.token}")
        page.wait_for_function(_KERNEL_IDLE, timeout=CELL_TIMEOUT)
        # No client in the kernel yet: no toolbar.
        assert page.get_by_test_id("ipp-toolbar").is_hidden()

        # The panel: start a 2-engine cluster, see its 2 engines.
        _open_panel(page, app)
        panel = page.locator("#ipyparallel-ext-panel")
        cluster_id = f"browser-{app}"
        error = panel.get_by_test_id("ipp-error")
        # A bad number is refused in the panel, naming the field.
        panel.get_by_test_id("ipp-start-n").fill("0")
        panel.get_by_test_id("ipp-start").click()
        error.wait_for(state="visible")
        assert "engines must be a whole number of at least 1" in error.inner_text()
        panel.get_by_test_id("ipp-start-n").fill("2")
        panel.get_by_test_id("ipp-start-launcher").select_option("local")
        panel.get_by_test_id("ipp-start-id").fill(cluster_id)
        started = time.monotonic()
        panel.get_by_test_id("ipp-start").click()
        row = panel.locator(f'[data-testid="ipp-cluster"][data-cluster-id="{cluster_id}"]')
        row.locator('[data-testid="ipp-cluster-engines"][data-alive="2"]').wait_for(timeout=ENGINES_TIMEOUT)
        print(f"\n[{app}] start clicked -> 2 engines shown: {time.monotonic() - started:.1f} s")
        assert "local" in row.get_by_test_id("ipp-cluster-details").inner_text()
        assert "running" == row.get_by_test_id("ipp-cluster-state").inner_text()
        # The CLI sees the cluster the browser started.
        assert cluster_id in server.cli("list").stdout

        # A refused request shows the server's message: the same id again is a 409.
        assert error.is_hidden()  # the successful start cleared the earlier error
        panel.get_by_test_id("ipp-start").click()
        error.wait_for(state="visible")
        assert "409" in error.inner_text() and cluster_id in error.inner_text()

        # Insert the connect code below the active cell, and run it: the toolbar appears.
        page.evaluate(_SELECT_FIRST_CELL)
        row.get_by_test_id("ipp-insert").click()
        sources = page.evaluate(_CELL_SOURCES)
        assert sources[1] == f"import ipyparallel_ext as ipp\nrc = ipp.Client(cluster_id={cluster_id!r})", sources
        page.evaluate(_RUN_ACTIVE_CELL)
        _wait_cell(page, 1)
        toolbar = page.get_by_test_id("ipp-toolbar")
        engines = toolbar.get_by_test_id("ipp-engines")
        engines.and_(page.locator('[data-engines="2"]')).wait_for()
        assert engines.inner_text() == "2 engines · 0 busy · 0 queued"
        if app == "lab":
            _screenshot(page, panel, row, "panel.png")

        # %px, output read from the page.
        index = _run_cell(page, '%px print("engine says", 6 * 7)')
        out = _output(page, index)
        assert "[stdout:0]" in out and "[stdout:1]" in out and out.count("engine says 42") == 2, out

        # %autopx from the toolbar: the next cell runs on the engines, then back in the kernel.
        autopx = toolbar.get_by_test_id("ipp-autopx")
        assert autopx.get_attribute("data-state") == "off"
        autopx.click()
        autopx.and_(page.locator('[data-state="on"]')).wait_for()
        index = _run_cell(page, 'print("where am I", 40 + 2)')
        out = _output(page, index)
        assert "[stdout:0]" in out and "[stdout:1]" in out and out.count("where am I 42") == 2, out
        if app == "lab":
            _screenshot(page, page.locator(".jp-NotebookPanel-toolbar").first,
                        page.locator(".jp-Notebook .jp-Cell").nth(index), "toolbar.png")
        autopx.click()
        autopx.and_(page.locator('[data-state="off"]')).wait_for()
        index = _run_cell(page, 'print("where am I", 40 + 2)')
        assert _output(page, index).strip() == "where am I 42"

        # Interrupt a sleeping %px while its cell runs: with kernel subshells (ipykernel 7) the
        # comm's command runs at once; without, the button interrupts the notebook kernel and the
        # %px passes that on to its engines. Both ways, in that order.
        _interrupt_sleeping_px(page, toolbar)
        page.evaluate(_COMMS_ON_MAIN_SHELL)
        _interrupt_sleeping_px(page, toolbar)

        # Interrupt work running while the notebook kernel is idle (through the comm).
        _run_cell(page, "import time\nar = rc[:].apply_async(time.sleep, 300)")
        engines.and_(page.locator('[data-busy="2"]')).wait_for()
        toolbar.get_by_test_id("ipp-interrupt").click()
        index = _run_cell(page, "try:\n    ar.get(timeout=60)\nexcept Exception as e:\n"
                                "    print(type(e).__name__, e)")
        assert "KeyboardInterrupt" in _output(page, index)
        index = _run_cell(page, '%px print("still here")')
        assert _output(page, index).count("still here") == 2

        # A reloaded page finds the kernel's client and shows the toolbar again.
        page.reload()
        page.wait_for_function(_KERNEL_IDLE, timeout=CELL_TIMEOUT)
        engines.and_(page.locator('[data-engines="2"]')).wait_for()
        _open_panel(page, app)

        # After a kernel restart the toolbar goes, and comes back with the new kernel's client.
        page.evaluate(_RESTART_KERNEL)
        toolbar.wait_for(state="hidden")
        page.wait_for_function(_KERNEL_IDLE, timeout=CELL_TIMEOUT)
        _run_cell(page, sources[1])
        engines.and_(page.locator('[data-engines="2"]')).wait_for()

        # Scale from the panel, then stop; the row goes, and the CLI sees none.
        row.get_by_test_id("ipp-scale-n").fill("3")
        row.get_by_test_id("ipp-scale").click()
        row.locator('[data-testid="ipp-cluster-engines"][data-alive="3"]').wait_for(timeout=ENGINES_TIMEOUT)
        row.get_by_test_id("ipp-stop").click()
        row.wait_for(state="detached", timeout=ENGINES_TIMEOUT)
        assert cluster_id not in server.cli("list").stdout
        page.get_by_test_id("ipp-toolbar").wait_for(state="visible")  # the kernel's client lives on
