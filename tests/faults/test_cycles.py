"""100 start/stop cycles of a 4-engine cluster leak no process, thread, file descriptor or temp file.

The cycles run in a subprocess (so nothing else in the test session blurs the counts), with a
private TMPDIR and JUPYTER_RUNTIME_DIR (so other processes' files do not either).  One cycle:
``Cluster(n=4)``, ``start_and_connect_sync()``, ``wait_for_engines(4)``, one ``apply_sync`` on all
engines, ``stop_cluster_sync()`` (also when the start fails: such a cycle is reported, and still
leak-checked).  Counts are taken after a first (warm-up) cycle, which starts what
lives for the whole process (the I/O thread, zmq's context), and again after the last cycle.

Sizes: ``FAULTS_CYCLES`` cycles (default 100) of 4 engines.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import alive

CYCLES = int(os.environ.get("FAULTS_CYCLES", "100"))

_CYCLER = textwrap.dedent("""
    import faulthandler, gc, json, os, sys, tempfile, threading, time
    import psutil
    import ipyparallel_ext as ipp

    CYCLE_TIMEOUT = 90
    me = psutil.Process()
    roots = [tempfile.gettempdir(), os.environ["JUPYTER_RUNTIME_DIR"]]

    def files():
        return sorted(os.path.join(d, f) for root in roots for d, _, fs in os.walk(root) for f in fs)

    def counts():
        gc.collect()
        time.sleep(0.5)  # let stopped kernels be reaped and threads finish
        return {
            "children": [p.pid for p in me.children(recursive=True)],
            "threads": sorted(t.name for t in threading.enumerate()),
            "os_threads": me.num_threads(),
            "fds": me.num_fds(),
            "files": files(),
        }

    def cycle():
        # A cycle that hangs shows where, in every thread, instead of a bare timeout.
        faulthandler.dump_traceback_later(CYCLE_TIMEOUT, exit=True)
        cluster = ipp.Cluster(n=4)
        try:
            rc = cluster.start_and_connect_sync()
            rc.wait_for_engines(4, timeout=30)
            pids = rc[:].apply_sync(os.getpid)
            assert len(set(pids)) == 4, pids
            return pids, None
        except (ipp.error.EngineStartError, TimeoutError) as exc:
            # A start that fails must leak nothing either; the test counts these.
            return [], f"{type(exc).__name__}: {exc}"[:500]
        finally:
            cluster.stop_cluster_sync()

    engine_pids, failed = cycle()  # warm-up
    assert failed is None, failed
    before = counts()
    t0 = time.monotonic()
    failed_starts = []
    for i in range(int(sys.argv[1])):
        pids, failed = cycle()
        engine_pids += pids
        if failed:
            failed_starts.append(failed)
            print(f"cycle {i + 1} failed to start: {failed}", file=sys.stderr, flush=True)
    faulthandler.cancel_dump_traceback_later()
    seconds = time.monotonic() - t0
    after = counts()
    print(json.dumps({"before": before, "after": after, "engine_pids": engine_pids, "seconds": seconds,
                      "failed_starts": failed_starts}))
""")


@pytest.fixture(scope="module")
def cycles(tmp_path_factory):
    """Run the cycles once for the module's tests; returns the subprocess's report."""
    tmp = tmp_path_factory.mktemp("cycles")
    (tmp / "tmp").mkdir()
    (tmp / "runtime").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp / "tmp"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    proc = subprocess.run([sys.executable, "-c", _CYCLER, str(CYCLES)], env=env, capture_output=True,
                          text=True, timeout=120 + 6 * CYCLES)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for pid in report["engine_pids"]:  # whatever the verdict, leave nothing running
        if alive(pid):
            os.kill(pid, 9)
    return report


@pytest.mark.timeout(180 + 6 * CYCLES)
def test_no_leaked_processes(cycles, measure):
    before, after = cycles["before"], cycles["after"]
    measure(f"{CYCLES} cycles of a 4-engine cluster took", round(cycles["seconds"], 1), "s")
    measure("child processes before/after the cycles", [len(before["children"]), len(after["children"])])
    failed = cycles["failed_starts"]
    measure("cycles whose engines failed to start", [len(failed), failed[:3]])
    assert after["children"] == before["children"] == []
    assert failed == []  # (a port taken before the kernel bound it is retried by the Cluster)
    assert len(cycles["engine_pids"]) == 4 * (CYCLES + 1 - len(failed))
    assert not [p for p in cycles["engine_pids"] if alive(p)]


@pytest.mark.timeout(180 + 6 * CYCLES)
def test_no_leaked_temp_files(cycles, measure):
    before, after = cycles["before"], cycles["after"]
    measure("temp and runtime files before/after the cycles", [len(before["files"]), len(after["files"])])
    assert after["files"] == before["files"]


@pytest.mark.timeout(180 + 6 * CYCLES)
def test_no_leaked_threads(cycles, measure):
    before, after = cycles["before"], cycles["after"]
    measure("threads (Python / OS) before/after the cycles",
            [[len(before["threads"]), before["os_threads"]], [len(after["threads"]), after["os_threads"]]])
    assert after["threads"] == before["threads"]
    # Threads Python does not see (zmq's, executors') may still be ending at the first count.
    assert after["os_threads"] <= before["os_threads"]


@pytest.mark.timeout(180 + 6 * CYCLES)
def test_no_leaked_file_descriptors(cycles, measure):
    before, after = cycles["before"], cycles["after"]
    measure("file descriptors before/after the cycles", [before["fds"], after["fds"]])
    assert after["fds"] <= before["fds"]
