"""The client process ``SIGKILL``ed while its engines run: no kernel outlives it by more than a few s.

A subprocess starts a 2-engine Cluster and sets both engines working (one spinning in Python, one
sleeping in a load-balanced map), then the test kills it with SIGKILL: nothing of ours runs at exit.
The engines notice through ipykernel's parent poller (``JPY_PARENT_PID``, polled every second).
Bound asserted: 15 s per engine (measured and reported; a quiet machine sees ~1 s).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import alive, readline, wait_until

_CLIENT = textwrap.dedent("""
    import json, os, sys
    import ipyparallel_ext as ipp

    @ipp.interactive
    def spin(path):
        open(path, "w").close()
        while True:
            pass

    @ipp.interactive
    def nap(path, t):
        import time
        open(path, "a").close()
        time.sleep(t)
        return t

    folder = sys.argv[1]
    rc = ipp.Cluster(n=2).start_and_connect_sync()
    rc.wait_for_engines(2, timeout=60)
    pids = rc[:].apply_sync(os.getpid)
    rc[0].apply_async(spin, os.path.join(folder, "spinning"))
    rc.load_balanced_view(targets=[1]).map_async(nap, [os.path.join(folder, "napping")] * 10, [30] * 10)
    print(json.dumps(pids), flush=True)
    sys.stdin.readline()  # killed while waiting here
""")


@pytest.mark.timeout(120)
def test_engines_die_soon_after_their_client_is_killed(tmp_path, measure):
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    try:
        pids = json.loads(readline(proc, timeout=90))
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert wait_until(lambda: (tmp_path / "spinning").exists() and (tmp_path / "napping").exists(), timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        gone = {}
        while len(gone) < len(pids) and time.monotonic() - t0 < 15:
            for pid in pids:
                if pid not in gone and not alive(pid):
                    gone[pid] = time.monotonic() - t0
            time.sleep(0.02)
        proc.wait(timeout=10)
        assert len(gone) == len(pids), f"engines {set(pids) - set(gone)} outlived their client by 15 s"
        measure("engines outlived their SIGKILLed client by (spinning, sleeping)",
                [round(gone[p], 3) for p in pids], "s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pid in pids:  # never leave a kernel behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
