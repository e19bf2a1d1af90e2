"""4 clients in 4 processes share 4 engines; each sees exactly its own results and outputs.

Each child process runs an in-process IPython ``InteractiveShell`` (so its first Client binds
``%px``), connects to the same 4 engines by connection file, and for several rounds runs a
load-balanced map, a DirectView apply, ``%px print(...)`` and a ``%px`` expression, all tagged with
its own process id.  The children run at the same time, so their requests interleave on every
engine.  Each child checks what it got and reports; the test also checks that no child's captured
output names another child.

Sizes: 4 engines, 4 clients, 5 rounds of (map of 200 tasks, apply on 4 engines, 2 ``%px``).
"""

import json
import subprocess
import sys
import textwrap

import pytest

import ipyparallel_ext as ipp

ROUNDS = 5

_CHILD = textwrap.dedent("""
    import json, os, re, sys
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file shared by the 4 shells
    shell = InteractiveShell.instance(config=config)
    import ipyparallel_ext as ipp

    files, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
    me = os.getpid()
    rc = ipp.Client(connection_files=files)  # inside IPython: binds %px to all engines
    rc.wait_for_engines(4, timeout=60)
    lv = rc.load_balanced_view()
    problems, outputs = [], []

    @ipp.interactive
    def tag(x, who):
        import os
        return who, x, os.getpid()

    def px(cell):
        # Run a %px cell: its printed output and its displayed results, as text.
        with capture_output() as cap:
            result = shell.run_cell(cell)
        if not result.success:
            problems.append(f"{cell!r} failed: {result.error_in_exec!r} {cap.stdout} {cap.stderr}")
        shown = [o.data.get("text/plain", "") for o in cap.outputs]
        outputs.append(cap.stdout + "\\n".join(shown))
        return cap.stdout, shown

    for r in range(rounds):
        got = lv.map_sync(tag, range(200), [me] * 200)
        if [(w, x) for w, x, _ in got] != [(me, x) for x in range(200)]:
            problems.append(f"round {r}: map results are not ours: {got[:3]}...")
        got = rc[:].apply_sync(lambda who, r: (who, r), me, r)
        if got != [(me, r)] * 4:
            problems.append(f"round {r}: apply results are not ours: {got}")
        out, _ = px(f"%px print('tag-{me}-{r}')")
        # '[stdout:i] ' headers, each followed by what engine i printed
        blocks = sorted(re.findall(r"\\[stdout:(\\d)\\]\\s*(\\S+)", out))
        want = [(str(i), f"tag-{me}-{r}") for i in range(4)]
        if blocks != want:
            problems.append(f"round {r}: %px print showed {out!r}, not {want}")
        px(f"%px v_{me} = {r}")
        _, shown = px(f"%px v_{me} + {me * 100}")  # a value only this client can see
        values = sorted(re.findall(r"Out\\[(\\d+):\\d+\\]: (\\d+)", "\\n".join(shown)))
        want = [(str(i), str(me * 100 + r)) for i in range(4)]
        if values != want:
            problems.append(f"round {r}: %px expression showed {shown!r}, not {want}")
    rc.close()
    print(json.dumps({"pid": me, "problems": problems, "outputs": outputs}))
""")


@pytest.mark.timeout(240)
def test_four_clients_in_four_processes_see_only_their_own(measure):
    cluster = ipp.Cluster(n=4)
    cluster.start_cluster_sync()
    children = []
    try:
        files = json.dumps(cluster.connection_files)
        children = [subprocess.Popen([sys.executable, "-c", _CHILD, files, str(ROUNDS)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(4)]
        reports = []
        for child in children:
            out, err = child.communicate(timeout=180)
            assert child.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        cluster.stop_cluster_sync()
    pids = {r["pid"] for r in reports}
    assert len(pids) == 4
    for report in reports:
        assert report["problems"] == []
        others = pids - {report["pid"]}
        text = "".join(report["outputs"])
        assert text.count(f"tag-{report['pid']}-") == 4 * ROUNDS
        assert not [p for p in others if f"tag-{p}-" in text]
