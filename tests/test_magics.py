"""The %px magics in a real IPython: an in-process InteractiveShell, and a terminal IPython (pexpect).

Engines are the session's two real kernels; outputs are checked as a user sees them.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ipyparallel_ext as ipp
from ipyparallel_ext import _magics
from ipyparallel_ext.error import AlreadyDisplayedError, CompositeError

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture
def px(rc, shell):
    """%px bound to a blocking view on both engines, with default settings."""
    view = rc[:]
    view.block = True
    view.activate()
    magics = _magics._registry[shell][""]
    yield magics
    magics.retire()


class Run:
    """What one cell printed and displayed, and how it ended."""

    def __init__(self, shell, cell):
        with capture_output() as cap:
            self.result = shell.run_cell(cell)
        self.stdout = plain(cap.stdout)
        self.stderr = plain(cap.stderr)
        self.texts = [plain(o.data.get("text/plain", "")) for o in cap.outputs]
        self.outputs = cap.outputs
        self.error = self.result.error_in_exec

    def ok(self):
        assert self.error is None, f"cell failed: {self.error!r}\n{self.stdout}\n{self.stderr}"
        return self


def run(shell, cell) -> Run:
    return Run(shell, cell)


def results(texts, value):
    """Engine ids whose ``Out[e:n]: value`` is among ``texts``."""
    return sorted(int(m.group(1)) for t in texts for m in [re.fullmatch(rf"Out\[(\d+):\d+\]: {value}", t)] if m)


# -- option parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("all", "all"), ("0", 0), ("-1", -1), ("[0, 2]", [0, 2]), ("0,2", [0, 2]), ("(1,)", [1]),
    ("::2", [0, 2]), ("1:", [1, 2, 3]), (":-1", [0, 1, 2]), ("[1:3]", [1, 2]), ("::-1", [3, 2, 1, 0]),
])
def test_parse_targets(text, expected):
    assert _magics.parse_targets(text, [0, 1, 2, 3]) == expected


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo hacked')", "1+1", "ids[0]", "a:b", "1:2:3:4", "::0", "[]", "'0'", "True",
])
def test_parse_targets_rejects_anything_else(text):
    with pytest.raises(UsageError):
        _magics.parse_targets(text, [0, 1])


def test_parse_signal():
    assert _magics.parse_signal("SIGINT") == signal.SIGINT
    assert _magics.parse_signal("term") == signal.SIGTERM
    assert _magics.parse_signal("9") == 9
    assert _magics.parse_signal("0") == 0
    with pytest.raises(UsageError):
        _magics.parse_signal("SIGNOPE")


# -- %px ------------------------------------------------------------------------------------------


def test_px_runs_on_every_engine_and_streams_prefixed_output(px, shell, rc):
    run(shell, "%px magic_a = 6 * 7").ok()
    assert rc[:].pull("magic_a", block=True) == [42, 42]
    out = run(shell, "%px print('hello', magic_a)").ok()
    for eid in (0, 1):
        assert f"[stdout:{eid}] \nhello 42\n" in out.stdout
    assert "magic_a" not in shell.user_ns  # it ran there, not here


def test_px_shows_expression_results_as_out_engine_count(px, shell):
    out = run(shell, "%px 40 + 2").ok()
    assert results(out.texts, "42") == [0, 1]


def test_cell_px_stdout_stderr_and_result(px, shell):
    out = run(shell, "%%px\nimport sys\nprint('two\\nlines')\nprint('oops', file=sys.stderr)\n'done'").ok()
    for eid in (0, 1):
        assert f"[stdout:{eid}] \ntwo\nlines\n" in out.stdout
        assert f"[stderr:{eid}] \noops\n" in out.stderr
    assert results(out.texts, "'done'") == [0, 1]


def test_multiline_result_starts_on_its_own_line(px, shell):
    out = run(shell, "%px print(1); {i: 'x' * 30 for i in range(4)}").ok()
    assert any(re.fullmatch(r"Out\[0:\d+\]: \n\{0: 'x+',\n.*", t, re.S) for t in out.texts), out.texts


def test_rich_displays_from_engines_are_labelled(px, shell):
    out = run(shell, "%%px\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>e</b>'))").ok()
    html = [o for o in out.outputs if "text/html" in o.data]
    assert sorted(o.metadata["engine"] for o in html) == [0, 1]
    assert all(o.data["text/html"] == "<b>e</b>" for o in html)
    assert "[output:0]" in out.texts and "[output:1]" in out.texts


def test_no_stream_groups_outputs_after_the_fact(px, shell):
    cell = ("%%px --no-stream {opt}\nimport sys\nfrom IPython.display import display, HTML\n"
            "print('o'); print('e', file=sys.stderr)\ndisplay(HTML('d1')); display(HTML('d2'))\n7")
    out = run(shell, cell.format(opt="")).ok()
    assert out.stdout == "[stdout:0] \no\n[stdout:1] \no\n"
    assert out.stderr == "[stderr:0] \ne\n[stderr:1] \ne\n"
    shown = [o.data.get("text/html") or plain(o.data["text/plain"]) for o in out.outputs]
    # 'type': every display of engine 0, then of engine 1, then the results
    assert shown[:6] == ["[output:0]", "d1", "d2", "[output:1]", "d1", "d2"]
    assert results(shown[6:], "7") == [0, 1]

    out = run(shell, cell.format(opt="-r")).ok()
    shown = [o.data.get("text/html") or plain(o.data["text/plain"]) for o in out.outputs]
    assert shown[:8] == ["[output:0]", "d1", "[output:1]", "d1", "[output:0]", "d2", "[output:1]", "d2"]

    out = run(shell, cell.format(opt="--group-outputs engine")).ok()
    shown = [o.data.get("text/html") or plain(o.data["text/plain"]) for o in out.outputs]
    assert shown[:3] == ["[output:0]", "d1", "d2"] and results(shown[3:4], "7") == [0]
    assert shown[4:7] == ["[output:1]", "d1", "d2"] and results(shown[7:], "7") == [1]
    assert out.stdout.index("[stdout:0]") < out.stdout.index("[stdout:1]")


def test_targets_option(px, shell):
    out = run(shell, "%%px --targets ::2\nprint('even')").ok()
    assert "[stdout:0]" in out.stdout and "[stdout:1]" not in out.stdout
    out = run(shell, "%%px -t 1\nprint('one')").ok()
    assert "[stdout:1]" in out.stdout and "[stdout:0]" not in out.stdout
    out = run(shell, "%%px -t [0,1]\nprint('both')").ok()
    assert "[stdout:0]" in out.stdout and "[stdout:1]" in out.stdout
    bad = run(shell, "%%px -t __import__('os')\nprint('never')")
    assert isinstance(bad.error, UsageError) and "never" not in bad.stdout


def test_noblock_returns_the_asyncresult_and_pxresult_shows_it(px, shell):
    out = run(shell, "%%px --noblock -o saved_ar\nimport time; time.sleep(0.2); print('later'); 5").ok()
    ar = out.result.result
    assert isinstance(ar, ipp.AsyncResult) and shell.user_ns["saved_ar"] is ar
    assert "later" not in out.stdout  # nothing waited for, nothing shown but the AsyncResult
    out = run(shell, "%pxresult").ok()
    assert "[stdout:0] \nlater\n" in out.stdout and results(out.texts, "5") == [0, 1]
    out = run(shell, "%pxresult -e").ok()
    assert "[output:0]" in out.texts
    run(shell, "%pxresult -o again").ok()
    assert shell.user_ns["again"] is ar
    run(shell, "%result").ok()  # ipyparallel's older name


def test_pxresult_before_any_px(rc, shell):
    rc[:].activate("_fresh")
    out = run(shell, "%pxresult_fresh")
    assert isinstance(out.error, UsageError)


def test_failing_cell_raises_with_every_engine_traceback(px, shell):
    out = run(shell, "%px 1/0")
    assert isinstance(out.error, AlreadyDisplayedError)
    for eid in (0, 1):
        assert f"[{eid}:execute]" in out.stderr
    assert out.stderr.count("ZeroDivisionError") >= 2
    run(shell, "%px print('alive')").ok()

    out = run(shell, "%%px --no-stream\nprint('before'); 1/0")
    assert isinstance(out.error, CompositeError)
    assert "[stdout:0] \nbefore\n" in out.stdout  # outputs are shown even when it fails
    assert "[0:execute]" in out.stdout and "[1:execute]" in out.stdout  # IPython's rendering
    assert out.stdout.count("ZeroDivisionError") >= 2


def test_local_runs_here_too(px, shell, rc):
    run(shell, "%%px --local\nboth_sides = 'yes'").ok()
    assert shell.user_ns["both_sides"] == "yes"
    assert rc[:].pull("both_sides", block=True) == ["yes", "yes"]


def test_pxconfig(px, shell, rc):
    view = px.view
    out = run(shell, "%pxconfig").ok()
    assert "block=True" in out.stdout and "signal_on_interrupt=SIGINT" in out.stdout
    run(shell, "%pxconfig --noblock").ok()
    out = run(shell, "%px 1").ok()
    assert view.block is False and isinstance(out.result.result, ipp.AsyncResult)
    out.result.result.get(timeout=30)
    run(shell, "%pxconfig --block --targets 1 --verbose --no-stream --progress-after -1"
               " --signal-on-interrupt SIGTERM").ok()
    assert (view.targets, px.verbose, px.stream, px.progress_after, px.signal_on_interrupt) == (
        1, True, False, -1, signal.SIGTERM)
    out = run(shell, "%px print('configured')").ok()
    assert out.stdout.startswith("Parallel execution on engine(s): 1\n")
    assert "configured" in out.stdout and "[stdout:0]" not in out.stdout
    assert isinstance(run(shell, "%pxconfig --signal-on-interrupt NOPE").error, UsageError)


def test_suffix_binds_another_view(px, shell, rc):
    odd = rc[1:]
    odd.activate("_odd")
    assert isinstance(run(shell, "%px_odd 1").ok().result.result, ipp.AsyncResult)  # as the view: not blocking
    odd.block = True
    out = run(shell, "%px_odd print('odd')").ok()
    assert "[stdout:1]" in out.stdout and "[stdout:0]" not in out.stdout
    run(shell, "%pxresult_odd").ok()
    # A single-engine view shows its collected outputs without a prefix, as ipyparallel does.
    rc.activate(0, "0")  # Client.activate: a blocking view
    out = run(shell, "%%px0 --no-stream\nprint('single')\n3").ok()
    assert out.stdout == "single\n" and results(out.texts, "3") == [0]


def test_progress_bar(px, shell):
    out = run(shell, "%%px --progress-after 0\nimport time; time.sleep(0.3)").ok()
    assert "%px" in out.stderr and "2/2" in out.stderr
    out = run(shell, "%%px --progress-after -1\nimport time; time.sleep(0.3)").ok()
    assert "2/2" not in out.stderr


def test_no_view_yet(shell):
    _magics._register(shell, None, "_none")
    out = run(shell, "%px_none a = 1")
    assert isinstance(out.error, UsageError) and "Client" in str(out.error)


def test_load_extension_then_first_client_binds_a_blocking_all_engines_view(shell, cluster, rc):
    saved = _magics._registry.pop(shell, {})
    for name in ("px", "pxresult", "pxconfig", "autopx", "result"):
        shell.magics_manager.magics["line"].pop(name, None)
    try:
        shell.run_line_magic("load_ext", "ipyparallel_ext")
        assert _magics._registry[shell][""].view is None
        client = cluster.connect_client_sync()
        try:
            bound = _magics._registry[shell][""].view
            assert bound.client is client and bound.block is True and bound.targets == "all"
            second = cluster.connect_client_sync()  # only the first client binds
            assert _magics._registry[shell][""].view is bound
            second.close()
            client.wait_for_engines(2, timeout=60)
            run(shell, "%px first_client = 1").ok()
        finally:
            client.close()
    finally:
        _magics._registry[shell] = saved


def test_outside_ipython_activate_warns_and_clients_do_nothing(monkeypatch, rc):
    monkeypatch.setattr(_magics._display, "_ipython", lambda: None)
    with pytest.warns(UserWarning, match="need IPython"):
        rc[:].activate()
    _magics.activate_first_client(rc)  # no shell: nothing to do, no error


# -- %autopx ------------------------------------------------------------------------------------


def test_autopx_sends_every_cell_to_the_engines(px, shell, rc):
    out = run(shell, "%autopx").ok()
    assert "%autopx enabled" in out.stdout
    try:
        assert shell.check_complete("x = (")[0] == "incomplete"  # typing is unaffected
        run(shell, "auto_x = 11").ok()
        out = run(shell, "print(auto_x + 1)").ok()
        assert "[stdout:0] \n12\n" in out.stdout and "[stdout:1] \n12\n" in out.stdout
        out = run(shell, "auto_x").ok()
        assert results(out.texts, "11") == [0, 1] and out.result.result is None
        failed = run(shell, "1/0")
        assert isinstance(failed.error, AlreadyDisplayedError)
    finally:
        out = run(shell, "%autopx").ok()
    assert "%autopx disabled" in out.stdout
    assert "auto_x" not in shell.user_ns
    assert run(shell, "1 + 1").ok().result.result == 2
    assert rc[:].pull("auto_x", block=True) == [11, 11]


# -- Ctrl-C ------------------------------------------------------------------------------------------


def _interrupt_when_started(folder: Path, n: int, signum=signal.SIGINT):
    """Send ``signum`` to this process once ``n`` engines have written their start file."""
    def watch():
        deadline = time.monotonic() + 60
        while len(list(folder.glob("started-*"))) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


SLEEPER = ("%%px {opt}\nimport os, time\nopen(os.path.join({folder!r}, f'started-{{os.getpid()}}'), 'w').close()\n"
           "time.sleep({seconds})\nprint('not interrupted')")


def test_ctrl_c_interrupts_the_engines(px, shell, tmp_path):
    watcher = _interrupt_when_started(tmp_path, 2)
    out = run(shell, SLEEPER.format(opt="", folder=str(tmp_path), seconds=60))
    watcher.join(5)
    assert "Keyboard interrupt: sending SIGINT to engine(s) [0, 1]" in out.stderr
    assert isinstance(out.error, AlreadyDisplayedError)  # the engines' KeyboardInterrupts
    assert out.stderr.count("KeyboardInterrupt") >= 2 and "not interrupted" not in out.stdout
    out = run(shell, "%px print('alive')").ok()
    assert "[stdout:0] \nalive\n" in out.stdout and "[stdout:1] \nalive\n" in out.stdout


def test_signal_on_interrupt_sends_that_signal(px, shell, tmp_path):
    run(shell, "%%px\nimport signal\ndef on_usr1(*_):\n    raise RuntimeError('got SIGUSR1')\n"
               "signal.signal(signal.SIGUSR1, on_usr1)").ok()
    try:
        watcher = _interrupt_when_started(tmp_path, 2)
        cell = SLEEPER.format(opt="--signal-on-interrupt SIGUSR1 --no-stream", folder=str(tmp_path), seconds=60)
        out = run(shell, cell)
        watcher.join(5)
        assert "sending SIGUSR1 to engine(s) [0, 1]" in out.stderr
        assert isinstance(out.error, CompositeError) and "got SIGUSR1" in out.stdout
    finally:
        run(shell, "%px signal.signal(signal.SIGUSR1, signal.SIG_DFL)").ok()


def test_signal_0_leaves_the_engines_running(px, shell, tmp_path):
    watcher = _interrupt_when_started(tmp_path, 2)
    out = run(shell, SLEEPER.format(opt="--signal-on-interrupt 0", folder=str(tmp_path), seconds=1))
    watcher.join(5)
    assert isinstance(out.error, KeyboardInterrupt)
    out = run(shell, "%pxresult").ok()
    assert "not interrupted" in out.stdout


# -- a terminal IPython ------------------------------------------------------------------------------


def test_terminal_ipython_px_autopx_and_ctrl_c(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), PYTHONPATH=str(REPO), TERM="dumb")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "IPython", "--simple-prompt", "--no-banner", "--colors=NoColor", "--HistoryManager.enabled=False"],
        env=env, encoding="utf-8", timeout=60, cwd=str(tmp_path),
    )
    prompt = r"In \[\d+\]: "
    engine_pids = []

    def enter(line, *expect):
        child.sendline(line)
        for pattern in expect:
            child.expect(pattern)
        child.expect(prompt)
        return child.before

    try:
        child.expect(prompt)
        enter("import ipyparallel_ext as ipp")
        enter("cluster = ipp.Cluster(n=2); rc = cluster.start_and_connect_sync(); rc.wait_for_engines(2, timeout=60)")
        child.sendline("print(rc[:].apply_sync(__import__('os').getpid))")
        child.expect(r"\[(\d+), (\d+)\]")
        engine_pids = [int(child.match.group(1)), int(child.match.group(2))]
        child.expect(prompt)
        enter("%px print('from', 'engine')", re.escape("[stdout:0] \r\nfrom engine"))

        enter("%autopx", "%autopx enabled")
        enter("z = 41")
        enter("print(z + 1)", re.escape("[stdout:1] \r\n42"))
        enter("%autopx", "%autopx disabled")
        out = enter("'z' in dir()")
        assert "False" in out

        cell = (f"%px import os, time; open(os.path.join({str(tmp_path)!r}, f'started-{{os.getpid()}}'), 'w')"
                ".close(); time.sleep(60)")
        child.sendline(cell)
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        child.sendintr()
        child.expect(re.escape("Keyboard interrupt: sending SIGINT to engine(s) [0, 1]"))
        child.expect("KeyboardInterrupt")
        child.expect(prompt)
        enter("%px print('alive')", re.escape("[stdout:0] \r\nalive"))
        enter("cluster.stop_cluster_sync()")
        child.sendline("exit")
        child.expect(pexpect.EOF)
        deadline = time.monotonic() + 10
        while any(map(_alive, engine_pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = [p for p in engine_pids if _alive(p)]
    finally:
        child.close(force=True)
        for pid in engine_pids:  # never leave an engine behind, even on failure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert engine_pids and not leftover


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.strip() not in ("", "Z")


def test_a_line_split_across_stream_messages_reads_as_one_line(capsys):
    # A kernel may publish print's text and its newline as two stream messages, with another
    # engine's output in between: the newline that ends the first engine's line is not shown
    # again as an empty block of its own (the 4-client fault test met this under load).
    from ipyparallel_ext._display import StreamPrinter

    printer = StreamPrinter()
    printer.write("tag", "[stdout:0] ")
    printer.write("tag\n", "[stdout:1] ")
    printer.write("\n", "[stdout:0] ")
    printer.write("dots", "[stdout:1] ")
    printer.end_line()
    printer.write("\nmore\n", "[stdout:1] ")
    assert capsys.readouterr().out == (
        "[stdout:0] \ntag\n[stdout:1] \ntag\ndots\nmore\n")
