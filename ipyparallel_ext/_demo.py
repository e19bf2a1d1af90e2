"""The demo behind ``ipyparallel-ext demo``: local engines, every kind of call, with timings."""

from __future__ import annotations

import os
import statistics
import time


def _timed(label, fn, repeat=1):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    best = statistics.median(times)
    unit, scale = ("ms", 1e3) if best < 1 else ("s", 1)
    print(f"  {label:<46} {best * scale:8.2f} {unit}")
    return value


def main(n: int = 2) -> int:
    """Start ``n`` local engines, use them, print what came back and how long it took."""
    import ipyparallel_ext as ipp

    print(f"ipyparallel_ext {ipp.__version__}: {n} local engines (plain ipykernel processes)\n")
    cluster = ipp.Cluster(n=n)
    try:
        rc = _timed(f"start {n} engines and connect", lambda: _start(cluster, n))
        dv = rc[:]
        dv.block = True
        pids = dv.apply_sync(os.getpid)
        print(f"  engines {rc.ids} run as processes {pids}\n")

        print("apply / map")
        _timed("rc[0].apply_sync(lambda: None)  (median)", lambda: rc[0].apply_sync(lambda: None), 200)
        print("  dv.apply_sync(lambda x: x * 2, 21) ->", dv.apply_sync(lambda x: x * 2, 21))
        squares = _timed("dv.map_sync(square, range(32))", lambda: dv.map_sync(lambda x: x * x, range(32)))
        print("   ->", squares[:8], "...")
        lv = rc.load_balanced_view()
        results = _timed("lv.map_sync(abs, range(-2000, 0)) (load balanced)",
                         lambda: lv.map_sync(abs, range(-2000, 0)))
        print(f"   -> {len(results)} results, first {results[:4]}")

        print("\npush / pull / scatter / gather")
        _timed("dv.push(dict(a=5))", lambda: dv.push(dict(a=5)))
        print("  dv['a'] ->", dv["a"])
        dv.scatter("x", range(10))
        print("  dv.scatter('x', range(10)); per engine:", dv["x"])
        print("  dv.gather('x') ->", dv.gather("x"))
        try:
            import numpy as np
        except ImportError:
            print("  (numpy not installed: skipping the 100 MB array)")
        else:
            array = np.random.default_rng(0).random(12_500_000)  # 100 MB of float64
            e0 = rc[0]
            _timed("push a 100 MB array to one engine", lambda: e0.push({"big": array}, block=True))
            back = _timed("pull it back", lambda: e0.pull("big", block=True))
            print("  round trip intact:", bool((back == array).all()))

        print("\nerrors come back with the engine's traceback")
        try:
            dv.execute("1 / 0")
        except ipp.CompositeError as err:
            print("  " + str(err).replace("\n", "\n  "))
        print("\nengines still fine:", dv.apply_sync(lambda: "ok"))
    finally:
        _timed("stop the engines", cluster.stop_cluster_sync)
    return 0


def _start(cluster, n):
    rc = cluster.start_and_connect_sync()
    rc.wait_for_engines(n, timeout=60)
    return rc
