"""Scale benchmarks: ipyparallel_ext, ipyparallel 9.2 and dask.distributed at 2 to 128 engines.

Run through ``python tests/benchmarks/run.py --scale`` (``--help`` for options). The parent
starts one child process per (library, number of engines), interleaving the libraries at each
size so that a change in the machine's load touches all of them alike. A child starts its
cluster, runs every workload through one adapter per library, stops its cluster and writes a
JSON file after every workload (a child killed on its deadline still leaves what it measured).
The parent writes a markdown table, a PNG plot and the raw JSON into ``--scale-out``.

Bounded: every workload has its own deadline and every child a budget; a library is not run at
a size where the smaller size predicts it would need more than ``--max-start`` seconds to start
or more memory than the machine has available; and no child starts once the run has taken
``--budget`` minutes (default 60), so a run ends within that plus one child's budget.

"Engines" are kernels for ipyparallel_ext, ipengines for ipyparallel, and single-threaded worker
processes (with their nannies) for dask (``LocalCluster(n_workers=N, threads_per_worker=1,
processes=True)``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as common  # noqa: E402 - the shared helpers of the 2-engine benchmark

LIBS = ("ext", "ipp", "dask")
TITLES = {"ext": "ipyparallel_ext", "ipp": "ipyparallel 9.2", "dask": "dask.distributed"}
MODULES = {"ext": "ipyparallel_ext", "ipp": "ipyparallel", "dask": "distributed"}
SIZES = (2, 8, 32, 128)
MB = common.MB
DATA_ENGINES = 8  # scatter/gather and broadcast use this many engines, at that size only


@dataclass(frozen=True)
class ScaleParams:
    """Workload sizes; ``quick`` shrinks them for a smoke run."""

    calls: int = 20  # timed apply-on-all and %px calls (after 3 warm-up calls)
    tiny_tasks: int = 20_000
    tiny_tasks_ipp: int = 4_000  # ipyparallel runs ~300-500 tiny tasks/s: 20,000 would take a minute per size
    sleep_tasks: int = 2_000
    sleep_s: float = 0.01
    scatter_mb: int = 800
    push_mb: int = 100

    @classmethod
    def make(cls, quick: bool) -> ScaleParams:
        if not quick:
            return cls()
        return cls(calls=5, tiny_tasks=2_000, tiny_tasks_ipp=500, sleep_tasks=200, scatter_mb=80, push_mb=10)

    def tiny(self, lib: str) -> int:
        return self.tiny_tasks_ipp if lib == "ipp" else self.tiny_tasks


def start_budget(n: int) -> float:
    """Seconds a child's start may take: generous, for a machine shared with other work."""
    return 120 + 3.0 * n


WORKLOAD_DEADLINES = {"apply_all": 120, "px": 120, "tiny": 180, "sleep": 120, "scatter_gather": 180,
                      "broadcast": 120, "stop": 120}


def child_budget(n: int) -> float:
    """Seconds a whole child may take (its own deadlines normally fire first)."""
    return start_budget(n) + sum(WORKLOAD_DEADLINES.values()) + 60


# --------------------------------------------------------------------------------------------
# Functions sent to engines: this file runs as __main__ in the child, so every library ships
# them by value.
# --------------------------------------------------------------------------------------------


def noop():
    return None


def identity(x):
    return x


def snooze(t):
    import time

    time.sleep(t)
    return t


def sha1_of(name):
    import hashlib

    return hashlib.sha1(globals()[name].data).hexdigest()


def digest(arr) -> str:
    return common.digest(arr)


# --------------------------------------------------------------------------------------------
# Adapters: the same workload through each library's own API
# --------------------------------------------------------------------------------------------


class IppAdapter:
    """ipyparallel_ext and ipyparallel 9.2: the same API, so the same code."""

    has_px = True

    def __init__(self, lib: str):
        import importlib

        self.lib = lib
        self.ipp = importlib.import_module(MODULES[lib])
        self.version = getattr(self.ipp, "__version__", "?")
        self.cluster = self.rc = None

    def start(self, n: int) -> None:
        kwargs = {"log_level": 40} if self.lib == "ipp" else {}  # ipyparallel's logs are chatty
        self.cluster = self.ipp.Cluster(n=n, **kwargs)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(n, timeout=start_budget(n))
        if len(self.rc[:].apply_sync(noop)) != n:
            raise AssertionError(f"not all {n} engines answered")

    def apply_all(self) -> None:
        self.rc[:].apply_sync(noop)

    def px_setup(self):
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False  # no sqlite file for a throwaway shell
        ip = InteractiveShell.instance(config=config)
        dv = self.rc[:]
        dv.block = True  # ipyparallel's views are non-blocking by default: time the round trip
        dv.activate()
        return lambda: ip.run_line_magic("px", "a=1")

    def px_check(self, n: int) -> None:
        if self.rc[:].pull("a", block=True) != [1] * n:
            raise AssertionError("%px a=1 did not set a on every engine")

    def map(self, fn, args) -> list:
        return list(self.rc.load_balanced_view().map_sync(fn, args))

    def scatter_gather(self, arr) -> tuple[float, float, object]:
        dv = self.rc[:DATA_ENGINES]
        t0 = time.perf_counter()
        dv.scatter("part", arr, block=True)
        t1 = time.perf_counter()
        got = dv.gather("part", block=True)
        t2 = time.perf_counter()
        dv.push({"part": None}, block=True)
        return t1 - t0, t2 - t1, got

    def broadcast(self, arr) -> tuple[float, list]:
        dv = self.rc[:DATA_ENGINES]
        t0 = time.perf_counter()
        dv.push({"b": arr}, block=True)
        seconds = time.perf_counter() - t0
        digests = dv.apply_sync(sha1_of, "b")
        dv.push({"b": None}, block=True)
        return seconds, digests

    def start_busy(self, seconds: float):
        return self.rc[:].apply_async(snooze, seconds)

    @staticmethod
    def wait_busy(ar, timeout: float) -> None:
        ar.get(timeout=timeout)

    def stop(self) -> None:
        if self.rc is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
        self.cluster = self.rc = None


class DaskAdapter:
    """dask.distributed: a LocalCluster of single-threaded worker processes."""

    has_px = False

    def __init__(self, lib: str):
        import distributed

        self.distributed = distributed
        self.version = distributed.__version__
        self.cluster = self.client = None
        self.workers: list = []

    def start(self, n: int) -> None:
        import logging

        d = self.distributed
        self.cluster = d.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=logging.ERROR)
        self.client = d.Client(self.cluster)
        self.client.wait_for_workers(n, timeout=start_budget(n))
        self.workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        if len(self.client.run(noop)) != n:
            raise AssertionError(f"not all {n} workers answered")

    def apply_all(self) -> None:
        self.client.run(noop)  # runs f on every worker, the counterpart of rc[:].apply_sync

    def map(self, fn, args) -> list:
        futures = self.client.map(fn, args, pure=False)
        try:
            return self.client.gather(futures)
        finally:
            del futures

    def scatter_gather(self, arr):
        import numpy as np

        workers = self.workers[:DATA_ENGINES]
        t0 = time.perf_counter()
        parts = np.array_split(arr, len(workers))
        futures = [self.client.scatter(p, workers=[w], hash=False) for p, w in zip(parts, workers)]
        t1 = time.perf_counter()
        got = np.concatenate(self.client.gather(futures))
        t2 = time.perf_counter()
        del futures, parts
        return t1 - t0, t2 - t1, got

    def broadcast(self, arr):
        workers = self.workers[:DATA_ENGINES]
        t0 = time.perf_counter()
        future = self.client.scatter(arr, workers=workers, broadcast=True, hash=False)
        seconds = time.perf_counter() - t0
        holders = self.client.who_has([future])[future.key]
        digests = [self.client.submit(digest, future, workers=[w], pure=False).result() for w in holders]
        del future
        return seconds, digests

    def start_busy(self, seconds: float):
        return self.client.map(snooze, [seconds] * len(self.workers), pure=False)

    def wait_busy(self, futures, timeout: float) -> None:
        self.client.gather(futures)

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.cluster = self.client = None


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_now() -> int:
    gc.collect()
    return common.rss_bytes()


def engines_rss() -> int:
    """RSS of every process this one started (engines, controller, nannies, workers)."""
    total = 0
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def timed_calls(fn, warm: int, calls: int) -> list[float]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class ScaleChild(common.Child):
    """One library at one number of engines (reuses the 2-engine child's record/save/say)."""

    def __init__(self, lib: str, n: int, params: ScaleParams, out: Path, progress):
        self.lib, self.n, self.P, self.out, self.progress = lib, n, params, out, progress
        self.lib_tag = f"{lib}@{n}"
        self.data = {"library": lib, "n": n, "params": asdict(params), "workloads": {}}
        self.lib_adapter = None
        self.save()

    def say(self, msg):
        print(f"  [{self.lib_tag}] {msg}", file=self.progress, flush=True)

    def run(self):
        n = self.n
        names = ["apply_all", "px", "tiny", "sleep"] + (["scatter_gather", "broadcast"] if n == DATA_ENGINES else [])
        workloads = [(name, WORKLOAD_DEADLINES[name], getattr(self, f"wl_{name}")) for name in names
                     if not (name == "px" and self.lib == "dask")]  # dask has no %px
        try:
            self.lib_adapter = (DaskAdapter if self.lib == "dask" else IppAdapter)(self.lib)
        except Exception as e:
            self.fail_all(["start"] + [w for w, _, _ in workloads], f"not importable: {e}")
            return
        self.data["version"] = self.lib_adapter.version
        self.record("start", start_budget(n), self.wl_start)
        if "metrics" not in self.data["workloads"]["start"]:
            with contextlib.suppress(Exception), common.deadline(120):
                self.lib_adapter.stop()
            self.fail_all([w for w, _, _ in workloads] + ["stop"], "cluster start failed")
            return
        try:
            for name, timeout, fn in workloads:
                self.record(name, timeout, fn)
        finally:
            self.record("stop", WORKLOAD_DEADLINES["stop"], self.wl_stop)

    def wl_start(self):
        gc.collect()
        rss0 = rss_now()
        t0 = time.perf_counter()
        self.lib_adapter.start(self.n)
        seconds = time.perf_counter() - t0
        time.sleep(1.0)  # let connection bookkeeping settle before taking memory
        rss1 = rss_now()
        metrics = {"s": seconds, "client_rss_MB": rss1 / MB,
                   "client_rss_per_engine_MB": (rss1 - rss0) / MB / self.n,
                   "engine_rss_MB": engines_rss() / MB / self.n}
        return metrics, {"rss_before_MB": rss0 / MB}

    def wl_apply_all(self):
        times = timed_calls(self.lib_adapter.apply_all, 3, self.P.calls)
        return {"ms": 1e3 * statistics.median(times)}, {"ms": [1e3 * t for t in times]}

    def wl_px(self):
        times = timed_calls(self.lib_adapter.px_setup(), 3, self.P.calls)
        self.lib_adapter.px_check(self.n)
        return {"ms": 1e3 * statistics.median(times)}, {"ms": [1e3 * t for t in times]}

    def wl_tiny(self):
        k = self.P.tiny(self.lib)
        self.lib_adapter.map(identity, range(min(k, 500)))  # warm-up
        rss0, cpu0 = rss_now(), cpu_seconds()
        t0 = time.perf_counter()
        result = self.lib_adapter.map(identity, range(k))
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        rss1 = rss_now()  # the results and the client's records of the tasks still held
        if list(result) != list(range(k)):
            raise AssertionError("map returned wrong results")
        del result
        metrics = {"tasks_per_s": k / seconds, "client_cpu_us_per_task": 1e6 * cpu / k,
                   "client_cpu_s_per_10k": 1e4 * cpu / k, "client_rss_MB_per_10k": (rss1 - rss0) / MB * 1e4 / k}
        return metrics, {"tasks": k, "s": seconds}

    def wl_sleep(self):
        P = self.P
        args = [P.sleep_s] * P.sleep_tasks
        t0 = time.perf_counter()
        result = self.lib_adapter.map(snooze, args)
        seconds = time.perf_counter() - t0
        if list(result) != args:
            raise AssertionError("map returned wrong results")
        ideal = P.sleep_tasks * P.sleep_s / self.n
        return {"s": seconds, "efficiency": ideal / seconds}, {"ideal_s": ideal}

    def wl_scatter_gather(self):
        """Two rounds: the first moves the data into fresh memory, the second (reported) into reused memory.

        On this kind of VM, touching fresh memory costs ~2 s of kernel time per GB (page faults
        served by the host): a process's first 800 MB array, on either side, pays that once.
        """
        import numpy as np

        self.lib_adapter.scatter_gather(np.arange(1000.0))  # the engines' first array imports numpy
        arr = np.random.default_rng(0).random(self.P.scatter_mb * MB // 8)
        gb = arr.nbytes / 1e9
        rounds = []
        for i in range(2):
            arr[0] = i  # fresh content every round: a stale copy cannot pass the check
            t_scatter, t_gather, got = self.lib_adapter.scatter_gather(arr)
            if got.shape != arr.shape or digest(got) != digest(arr):
                raise AssertionError("gathered array differs from the scattered one")
            del got
            rounds.append((t_scatter, t_gather))
        (cold_s, cold_g), (t_scatter, t_gather) = rounds
        metrics = {"scatter_GBps": gb / t_scatter, "gather_GBps": gb / t_gather,
                   "GBps": 2 * gb / (t_scatter + t_gather),
                   "first_scatter_GBps": gb / cold_s, "first_gather_GBps": gb / cold_g}
        return metrics, {"scatter_s": [cold_s, t_scatter], "gather_s": [cold_g, t_gather]}

    def wl_broadcast(self):
        """Two rounds, as for scatter/gather; the second is reported."""
        import numpy as np

        self.lib_adapter.broadcast(np.arange(1000.0))
        arr = np.random.default_rng(1).random(self.P.push_mb * MB // 8)
        times = []
        for i in range(2):
            arr[0] = i
            seconds, digests = self.lib_adapter.broadcast(arr)
            want = digest(arr)
            if len(digests) != DATA_ENGINES or any(d != want for d in digests):
                raise AssertionError(f"the broadcast array differs on some of the {DATA_ENGINES} engines")
            times.append(seconds)
        delivered = DATA_ENGINES * arr.nbytes / 1e9
        return {"s": times[1], "GBps": delivered / times[1], "first_GBps": delivered / times[0]}, {"s": times}

    def wl_stop(self):
        """Ctrl-C while every engine runs a long task, then stop the cluster (timed)."""
        work = self.lib_adapter.start_busy(60)
        time.sleep(0.5)
        interrupted = False
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            self.lib_adapter.wait_busy(work, timeout=30)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            timer.cancel()
        del work
        engines = [p for p in psutil.Process().children(recursive=True) if not _is_tracker(p)]
        t0 = time.perf_counter()
        self.lib_adapter.stop()
        seconds = time.perf_counter() - t0
        _, alive = psutil.wait_procs(engines, timeout=0)
        return {"s": seconds, "left_running": len(alive)}, {"interrupted": interrupted}


def _is_tracker(p) -> bool:
    """Python's multiprocessing resource tracker (dask starts one): it exits by itself after its parent."""
    with contextlib.suppress(psutil.Error):
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    return False


def child_main(args) -> None:
    signal.signal(signal.SIGTERM, common.on_sigterm)
    # A run started in the background inherits SIGINT ignored; the stop workload's Ctrl-C needs it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    progress = open(os.dup(2), "w", buffering=1)  # noqa: SIM115 - lives as long as the child
    with open(args.log, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    child = ScaleChild(args.child, args.n, ScaleParams.make(args.quick), Path(args.out), progress)
    try:
        child.run()
    finally:
        leaked = common.reap_descendants(grace=10)
        child.data["leaked"] = [p for p in leaked if "multiprocessing.resource_tracker" not in p]
        child.save()
        if leaked:
            child.say(f"LEAKED processes (killed): {leaked}")


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str  # "workload.metric"
    label: str
    fmt: str
    target: tuple | None = None  # (kind, value, at n or None for every n): le/ge/lt on ext's value
    plot: str | None = None  # the plot panel's title, for metrics that are plotted


ROWS = [
    Row("start.s", "start to a client with all N usable [s]", "{:.1f}", ("le", 40.0, 128), "start to usable [s]"),
    Row("apply_all.ms", "apply_sync(f) on all N (dask: client.run) [ms]", "{:.1f}", ("le", 500.0, 128),
        "apply on all N [ms]"),
    Row("px.ms", "%px a=1 on all N [ms]", "{:.1f}", ("le", 1000.0, 128), "%px a=1 on all N [ms]"),
    Row("tiny.tasks_per_s", "load-balanced map of tiny tasks [tasks/s]", "{:.0f}", None, "tiny tasks [tasks/s]"),
    Row("sleep.efficiency", "2,000 tasks of 10 ms: ideal N-way time / time", "{:.0%}", None,
        "10 ms tasks: efficiency"),
    Row("tiny.client_cpu_us_per_task", "client CPU per tiny task [us]", "{:.0f}", ("lt", 50.0, None),
        "client CPU per task [us]"),
    Row("tiny.client_cpu_s_per_10k", "client CPU per 10,000 tasks [s]", "{:.2f}"),
    Row("tiny.client_rss_MB_per_10k", "client RSS per 10,000 tasks (results held) [MB]", "{:.1f}"),
    Row("start.client_rss_per_engine_MB", "client RSS per idle engine [MB]", "{:.2f}", ("lt", 2.0, None),
        "client RSS per engine [MB]"),
    Row("start.engine_rss_MB", "RSS per engine process (incl. controller/nannies) [MB]", "{:.0f}"),
    Row("scatter_gather.scatter_GBps", f"scatter 800 MB float64 over {DATA_ENGINES} engines [GB/s]", "{:.2f}",
        ("ge", 1.0, DATA_ENGINES)),
    Row("scatter_gather.gather_GBps", "gather it back [GB/s]", "{:.2f}", ("ge", 1.0, DATA_ENGINES)),
    Row("broadcast.GBps", f"push 100 MB to all {DATA_ENGINES} engines [GB/s delivered]", "{:.2f}",
        ("ge", 1.0, DATA_ENGINES)),
    Row("scatter_gather.first_scatter_GBps", "  first round (fresh memory): scatter [GB/s]", "{:.2f}"),
    Row("scatter_gather.first_gather_GBps", "  first round: gather [GB/s]", "{:.2f}"),
    Row("broadcast.first_GBps", "  first round: push to all 8 [GB/s delivered]", "{:.2f}"),
    Row("stop.s", "stop N engines after Ctrl-C, all busy [s]", "{:.1f}", ("lt", 10.0, None), "stop after Ctrl-C [s]"),
    Row("stop.left_running", "  processes left running after stop", "{:.0f}", ("le", 0, None)),
]


def lookup(result, key):
    """(value, error text) for 'workload.metric' in a child's result (None, None if not run)."""
    if result is None:
        return None, None
    if "skipped" in result:
        return None, "skipped"
    workload, metric = key.split(".")
    entry = result.get("workloads", {}).get(workload)
    if entry is None:
        return None, None
    if "error" in entry:
        return None, _deadline_bound(result, workload, metric, entry["error"]) or "error"
    return entry.get("metrics", {}).get(metric), None


def _deadline_bound(result, workload, metric, error) -> str | None:
    """What a map that ran past its deadline still says: its rate was below tasks / deadline."""
    if "WorkloadTimeout" not in error or "params" not in result:
        return None
    P, lib, n = ScaleParams(**result["params"]), result["library"], result["n"]
    deadline = WORKLOAD_DEADLINES[workload]
    if (workload, metric) == ("tiny", "tasks_per_s"):
        return f"< {P.tiny(lib) / deadline:.0f} (deadline)"
    if (workload, metric) == ("sleep", "efficiency"):
        return f"< {P.sleep_tasks * P.sleep_s / n / deadline:.1%} (deadline)"
    return None


def verdict(row: Row, n: int, value) -> str:
    if row.target is None:
        return ""
    kind, v, at = row.target
    if at is not None and at != n:
        return ""
    if value is None:
        return "FAIL"
    ok = {"le": value <= v, "ge": value >= v, "lt": value < v}[kind]
    return "PASS" if ok else "FAIL"


def target_text(row: Row, n: int) -> str:
    if row.target is None:
        return ""
    kind, v, at = row.target
    if at is not None and at != n:
        return ""
    return {"le": "<= ", "ge": ">= ", "lt": "< "}[kind] + (f"{v:g}")


def build_table(results: dict, sizes, libs) -> tuple[list[list[str]], list[str]]:
    """Markdown rows (header first) and the verdicts' failures."""
    header = ["metric", "N"] + [TITLES[lib] for lib in libs] + ["target (ext)", ""]
    table, fails = [header], []
    for row in ROWS:
        for n in sizes:
            if row.key.startswith(("scatter_gather", "broadcast")) and n != DATA_ENGINES:
                continue
            cells, ext_value = [], None
            for lib in libs:
                res = results.get((lib, n))
                value, err = lookup(res, row.key)
                if lib == "ext":
                    ext_value = value
                if row.key.startswith("px.") and lib == "dask":
                    cells.append("n/a")
                elif value is not None:
                    cells.append(row.fmt.format(value))
                else:
                    cells.append(err or "")
            v = verdict(row, n, ext_value) if ("ext", n) in results else ""
            if v == "FAIL":
                fails.append(f"{row.label} at N={n}")
            table.append([row.label, str(n), *cells, target_text(row, n), v])
    return table, fails


def relative_rows(results: dict, sizes, libs) -> list[list[str]]:
    """The ratio targets: tiny tasks at 32 vs 2 engines, and against the peers at the same N."""
    rows = []

    def tiny(lib, n):
        return lookup(results.get((lib, n)), "tiny.tasks_per_s")[0]

    if 2 in sizes and 32 in sizes and tiny("ext", 2) and tiny("ext", 32):
        ratio = tiny("ext", 32) / tiny("ext", 2)
        rows.append(["ext tiny tasks/s at 32 engines / at 2", f"{ratio:.0%}", ">= 80%", "PASS" if ratio >= 0.8 else "FAIL"])
    for n in sizes:
        for lib, want in (("ipp", 10.0), ("dask", 5.0)):
            if lib in libs and tiny("ext", n) and tiny(lib, n):
                ratio = tiny("ext", n) / tiny(lib, n)
                rows.append([f"ext tiny tasks/s / {TITLES[lib]}'s, N={n}", f"{ratio:.1f}x", f">= {want:g}x",
                             "PASS" if ratio >= want else "FAIL"])
    for key, label in (("scatter_gather.scatter_GBps", "scatter"), ("scatter_gather.gather_GBps", "gather"),
                       ("broadcast.GBps", "broadcast")):
        ext = lookup(results.get(("ext", DATA_ENGINES)), key)[0]
        peer = lookup(results.get(("dask", DATA_ENGINES)), key)[0]
        if ext and peer:
            rows.append([f"ext {label} GB/s / dask's", f"{ext / peer:.1f}x", ">= 1x", "PASS" if ext >= peer else "FAIL"])
    return rows


def markdown(table) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    return "\n".join(lines)


def per_engine_slope(results: dict, lib: str, sizes) -> float | None:
    """Client RSS growth per engine between the smallest and the largest size that ran (MB)."""
    points = [(n, lookup(results.get((lib, n)), "start.client_rss_MB")[0]) for n in sizes]
    points = [(n, v) for n, v in points if v is not None]
    if len(points) < 2:
        return None
    (n0, v0), (n1, v1) = points[0], points[-1]
    return (v1 - v0) / (n1 - n0)


def plot(results: dict, sizes, libs, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [r for r in ROWS if r.plot]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(16, 7.5), squeeze=False)
    for ax, row in zip(axes.flat, panels):
        for lib in libs:
            points = [(n, lookup(results.get((lib, n)), row.key)[0]) for n in sizes]
            points = [(n, v) for n, v in points if v is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=TITLES[lib])
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(sizes), [str(n) for n in sizes])
        if not row.key.startswith("sleep."):
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(row.plot, fontsize=10)
        ax.set_xlabel("engines")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def skip_reason(lib: str, n: int, results: dict, sizes, max_start: float) -> str | None:
    """Why ``lib`` should not run at ``n`` engines, judged from its run at the next smaller size."""
    smaller = [m for m in sizes if m < n and (lib, m) in results]
    if not smaller:
        return None
    m = max(smaller)
    prev = results[(lib, m)]
    if "skipped" in prev:
        return f"skipped at N={m}"
    start = lookup(prev, "start.s")[0]
    if start is None:
        return f"did not start at N={m}"
    predicted = start * n / m
    if predicted > max_start:
        return f"start predicted {predicted:.0f} s (> {max_start:g} s) from N={m}"
    # Memory of the engine processes: the marginal cost per engine between the two largest sizes
    # that ran (a controller's share shrinks as engines are added), else the average.
    totals = [(k, (lookup(results[(lib, k)], "start.engine_rss_MB")[0] or 0) * k) for k in sorted(smaller)]
    per_engine = totals[-1][1] / totals[-1][0]
    if len(totals) > 1 and totals[-1][1] > totals[-2][1]:
        per_engine = (totals[-1][1] - totals[-2][1]) / (totals[-1][0] - totals[-2][0])
    need = (totals[-1][1] + per_engine * (n - m)) * MB
    available = psutil.virtual_memory().available
    if need > 0.7 * available:
        return f"needs ~{need / 1e9:.0f} GB for {n} engines, {available / 1e9:.0f} GB available"
    return None


def run_child(lib: str, n: int, args, workdir: Path):
    out, log = workdir / f"{lib}-{n}.json", workdir / f"{lib}-{n}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", lib, "--n", str(n), "--out", str(out),
           "--log", str(log)] + (["--quick"] if args.quick else [])
    budget = child_budget(n)
    print(f"{TITLES[lib]} at {n} engines (log {log}) ...", flush=True)
    t0, busy0, ours0 = time.perf_counter(), common.busy_cpu_seconds(), common.reaped_cpu_seconds()
    env = common.child_env("ext")  # the checkout importable (ext), harmless for the others
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    problem = None
    try:
        proc.wait(timeout=budget)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        problem = f"child exceeded {budget:.0f} s" if isinstance(e, subprocess.TimeoutExpired) else "interrupted"
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(e, KeyboardInterrupt):
            common.reap_descendants(grace=5)
            raise
    leaked = [p for p in common.reap_descendants(grace=10) if "multiprocessing.resource_tracker" not in p]
    result = json.loads(out.read_text()) if out.exists() else {"workloads": {}}
    result.setdefault("leaked", [])
    result["leaked"] += [f"(found by parent) {p}" for p in leaked]
    wall = time.perf_counter() - t0
    foreign = (common.busy_cpu_seconds() - busy0) - (common.reaped_cpu_seconds() - ours0)
    result["wall_s"] = wall
    result["foreign_cpu_share"] = max(0.0, foreign) / (wall * (os.cpu_count() or 1))
    if problem or proc.returncode:
        result["problem"] = problem or f"child exited with status {proc.returncode}"
        print(f"  {result['problem']}; see {log}")
    return result


def parent_main(args) -> int:
    sizes = tuple(sorted(int(s) for s in args.sizes.split(",")))
    libs = [lib for lib in LIBS if lib in args.libs.split(",")]
    outdir = Path(args.scale_out)
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.logdir) if args.logdir else outdir / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    subreaper = common.become_subreaper()
    env = common.environment()
    bound = args.budget + child_budget(max(sizes)) / 60
    print(f"scale run: {', '.join(TITLES[lib] for lib in libs)} at N = {', '.join(map(str, sizes))};"
          f" python {env['python']}, {env['cpus']} cpus; at most {bound:.0f} min (no child starts after"
          f" {args.budget:g} min)", flush=True)
    run_started = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict = {}
    if args.from_json:  # only the report, from a run's scale.json
        saved = json.loads(Path(args.from_json).read_text())
        started, env = saved["started"], saved["environment"]
        results = {(key.split("@")[0], int(key.split("@")[1])): r for key, r in saved["results"].items()}
        sizes = tuple(n for n in sizes if any(k[1] == n for k in results))
        libs = [lib for lib in libs if any(k[0] == lib for k in results)]
    for n in sizes if not args.from_json else ():
        for lib in libs:
            reason = skip_reason(lib, n, results, sizes, args.max_start)
            if reason is None and time.monotonic() - run_started > 60 * args.budget:
                reason = f"the run's budget of {args.budget:g} min was spent"
            if reason:
                print(f"{TITLES[lib]} at {n} engines: skipped ({reason})", flush=True)
                results[(lib, n)] = {"skipped": reason, "workloads": {}}
                continue
            results[(lib, n)] = run_child(lib, n, args, workdir)
    table, fails = build_table(results, sizes, libs)
    rel = relative_rows(results, sizes, libs)
    versions = {lib: next((r.get("version") for (lb, _), r in results.items() if lb == lib and r.get("version")), "?")
                for lib in libs}
    machine = (f"{env['cpus']} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, {env['platform']},"
               f" Python {env['python']}")
    lines = [f"Scale run of {started}: {machine}.", "",
             "Versions: " + ", ".join(f"{TITLES[lib]} {versions[lib]}" for lib in libs) + "; "
             + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("python", "cpus", "platform")) + ".", ""]
    for (lib, n), res in results.items():
        if "skipped" in res:
            lines.append(f"- {TITLES[lib]} at N={n}: skipped: {res['skipped']}")
        else:
            note = f"- {TITLES[lib]} at N={n}: {res.get('wall_s', 0):.0f} s, other processes used" \
                   f" {100 * res.get('foreign_cpu_share', 0):.0f}% of the machine meanwhile"
            errors = [f"{w}: {e['error']}" for w, e in res.get("workloads", {}).items() if "error" in e]
            if errors:
                note += "; errors: " + "; ".join(errors)
            if res.get("problem"):
                note += f"; {res['problem']}"
            if res.get("leaked"):
                leaked = res["leaked"]
                note += f"; LEAKED (killed by the run): {len(leaked)} processes, e.g. {leaked[0][:100]}"
            lines.append(note)
    lines += ["", markdown(table), ""]
    slopes = {lib: per_engine_slope(results, lib, sizes) for lib in libs}
    slope_text = ", ".join(f"{TITLES[lib]} {s:.2f} MB" for lib, s in slopes.items() if s is not None)
    if slope_text:
        lines += [f"Client RSS per engine, as the slope between the smallest and largest N: {slope_text}.", ""]
    if rel:
        lines += [markdown([["ratio", "value", "target", ""], *rel]), ""]
    text = "\n".join(lines)
    (outdir / "scale.md").write_text(text)
    (outdir / "scale.json").write_text(json.dumps(
        {"started": started, "environment": env, "sizes": sizes, "libs": libs,
         "results": {f"{lib}@{n}": r for (lib, n), r in results.items()}}, indent=1))
    try:
        plot(results, sizes, libs, outdir / "scale.png", f"{started}, {machine.split(', Linux')[0]}")
    except Exception:
        traceback.print_exc()
    print()
    print(text)
    print(f"\nwrote {outdir / 'scale.md'}, {outdir / 'scale.png'}, {outdir / 'scale.json'}")
    if not subreaper:
        print("note: could not become a child subreaper; leak detection limited to each child's own check")
    leaks = [r for r in results.values() if r.get("leaked")]
    fails += [row[0] for row in rel if row[-1] == "FAIL"]
    return 1 if fails or leaks else 0


def add_arguments(ap) -> None:
    ap.add_argument("--scale", action="store_true",
                    help="the scale run: ext, ipyparallel and dask at 2-128 engines (table + plot)")
    ap.add_argument("--scale-out", default=str(HERE / "results"),
                    help="folder for the scale run's scale.md, scale.png and scale.json (default: %(default)s)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="scale run: engine counts (default %(default)s)")
    ap.add_argument("--libs", default=",".join(LIBS), help="scale run: libraries (default %(default)s)")
    ap.add_argument("--max-start", type=float, default=240.0,
                    help="scale run: skip a peer at a size where its start is predicted to take longer (s)")
    ap.add_argument("--from-json", metavar="SCALE_JSON",
                    help="scale run: write the table and plot again from a run's scale.json (runs nothing)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="scale run: start no child after this many minutes (default %(default)s)")
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)


if __name__ == "__main__":  # a child of the scale run
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=LIBS, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--quick", action="store_true")
    child_main(ap.parse_args())
