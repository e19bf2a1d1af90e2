"""Side-by-side benchmarks of ipyparallel 9.2 and ipyparallel_ext on the same workloads.

Run ``python tests/benchmarks/run.py`` (``--help`` for options); ``--scale`` runs the scale
benchmarks of ``scale.py`` instead (ipyparallel_ext, ipyparallel and dask.distributed at 2 to 128
engines). The parent process starts one
child process per library (``import ipyparallel as ipp`` / ``import ipyparallel_ext as ipp``),
each running every workload through exactly the same code, and prints one table comparing them
against the project's targets. Children report through a JSON file rewritten after every workload,
so a child that is killed on its deadline still leaves what it measured.

Cleanup is checked, not hoped for: the parent marks itself a child subreaper (Linux), so any
process a child started (controller, nannies, engines, kernels) that outlives the child is
re-parented to us; whatever is still alive a few seconds after a child exits is reported as a leak
and killed by pid.

Exit status: 0 when every ext target passes (or ext was not run), 1 when one fails.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil

MODULES = {"ipp": "ipyparallel", "ext": "ipyparallel_ext"}
TITLES = {"ipp": "ipyparallel 9.2", "ext": "ipyparallel_ext"}
REPO = Path(__file__).resolve().parents[2]
N_ENGINES = 2
MB = 1_000_000  # decimal megabyte: GB/s figures compare with KERNEL-FACTS.md


# --------------------------------------------------------------------------------------------
# Workload sizes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    repeat: int
    apply_warm: int = 50
    apply_calls: int = 500
    push_mb: int = 100
    map_tasks: int = 2000
    async_tasks: int = 5000
    sleep_tasks: int = 200
    sleep_s: float = 0.01
    px_warm: int = 20
    px_calls: int = 200
    imap_tasks: int = 1_000_000
    imap_purge: int = 5_000

    @property
    def async_rounds(self) -> int:
        """Rounds of `async_tasks`: one warm-up (the memory baseline), then at least 3 timed."""
        return 1 + max(self.repeat, 3)

    @classmethod
    def make(cls, quick: bool, repeat: int | None) -> Params:
        if not quick:
            return cls(repeat=repeat or 3)
        return cls(
            repeat=repeat or 1,
            apply_warm=10,
            apply_calls=100,
            map_tasks=500,
            async_tasks=500,
            px_warm=5,
            px_calls=50,
            imap_tasks=50_000,
        )


# --------------------------------------------------------------------------------------------
# Functions sent to engines. This file runs as __main__ in the child, so both libraries ship
# them by value (an engine could not import this module).
# --------------------------------------------------------------------------------------------


def noop():
    return None


def identity(x):
    return x


def snooze(t):
    import time

    time.sleep(t)
    return t


def inc(x):
    return x + 1


# --------------------------------------------------------------------------------------------
# Child side: run the workloads against one library
# --------------------------------------------------------------------------------------------


class WorkloadTimeout(Exception):
    """A workload ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise WorkloadTimeout in the main thread after `seconds` (a backstop for blocking calls)."""

    def on_alarm(signum, frame):
        raise WorkloadTimeout(f"no result within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def median(xs):
    return statistics.median(xs)


def digest(arr) -> str:
    import numpy as np

    return hashlib.sha1(np.ascontiguousarray(arr).data).hexdigest()


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def history_bytes(rc) -> int | None:
    history = getattr(rc, "history", None)
    if history is None:
        return None
    return sys.getsizeof(history) + sum(sys.getsizeof(h) for h in history)


def cluster_kwargs(lib: str) -> dict:
    # ipyparallel's controller and engines are chatty at the default level
    return {"n": N_ENGINES, "log_level": 40} if lib == "ipp" else {"n": N_ENGINES}


def start_cluster(ipp, lib):
    """Start a cluster and return (cluster, client); the cluster is stopped if that fails."""
    cluster = ipp.Cluster(**cluster_kwargs(lib))
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(N_ENGINES, timeout=60)
    except BaseException:
        stop_cluster(cluster, rc)
        raise
    return cluster, rc


def stop_cluster(cluster, rc):
    if rc is not None:
        try:
            rc.close()
        except Exception:
            traceback.print_exc()
    cluster.stop_cluster_sync()


class Child:
    """Runs the workloads for one library and records them in a JSON file."""

    def __init__(self, lib: str, params: Params, out: Path, progress):
        self.lib = lib
        self.P = params
        self.out = out
        self.progress = progress
        self.ipp = None
        self.cluster = None
        self.rc = None
        self.data = {"library": lib, "module": MODULES[lib], "params": vars(params), "workloads": {}}
        self.save()

    def save(self):
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.out)

    def say(self, msg):
        print(f"  [{self.lib}] {msg}", file=self.progress, flush=True)

    def record(self, name, timeout, fn):
        entry = self.data["workloads"][name] = {}
        t0 = time.perf_counter()
        try:
            with deadline(timeout):
                metrics, samples = fn()
        except Exception as e:
            traceback.print_exc()
            entry["error"] = f"{type(e).__name__}: {e}".strip().splitlines()[0]
            self.say(f"{name}: error: {entry['error']}")
        except BaseException as e:  # stopped by the parent, or Ctrl-C: record it, then stop
            entry["error"] = f"interrupted ({type(e).__name__})"
            self.save()
            raise
        else:
            entry["metrics"], entry["samples"] = metrics, samples
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None)
            self.say(f"{name}: {shown}")
        entry["wall_s"] = time.perf_counter() - t0
        self.save()

    def fail_all(self, names, reason):
        for name in names:
            self.data["workloads"][name] = {"error": reason}
        self.save()

    # -- the run ---------------------------------------------------------------------------

    def run(self):
        P = self.P
        # push_pull runs last: its 100 MB arrays would blur the client memory measured in apply_async
        shared = [
            ("apply_sync", 60, self.wl_apply_sync),
            ("map", 60 + 15 * P.repeat, self.wl_map),
            ("apply_async", 60 + 45 * P.async_rounds, self.wl_apply_async),
            ("sleep", 30 + 5 * P.repeat, self.wl_sleep),
            ("px", 60, self.wl_px),
            ("imap_memory", 60 + P.imap_tasks / 1000, self.wl_imap_memory),
            ("push_pull", 120, self.wl_push_pull),
        ]
        try:
            self.ipp = importlib.import_module(MODULES[self.lib])
        except Exception as e:
            self.data["import_error"] = f"{type(e).__name__}: {e}"
            self.fail_all(["start"] + [n for n, _, _ in shared], "not importable: " + str(e))
            return
        self.data["version"] = getattr(self.ipp, "__version__", "?")
        # wl_start leaves its last cluster running for the other workloads
        self.record("start", 90 * P.repeat, self.wl_start)
        try:
            if self.rc is None:
                with deadline(120):
                    self.cluster, self.rc = start_cluster(self.ipp, self.lib)
        except Exception as e:
            traceback.print_exc()
            self.fail_all([n for n, _, _ in shared], f"cluster start failed: {type(e).__name__}: {e}")
            return
        try:
            for name, timeout, fn in shared:
                self.record(name, timeout, fn)
        finally:
            with deadline(60):
                t0 = time.perf_counter()
                stop_cluster(self.cluster, self.rc)
                self.add_stop_time(time.perf_counter() - t0)

    def add_stop_time(self, seconds):
        start = self.data["workloads"].get("start", {})
        if "metrics" in start:
            start["samples"]["stop_s"].append(seconds)
            start["metrics"]["stop_s"] = median(start["samples"]["stop_s"])
            self.save()

    # -- workloads: each returns (metrics, samples) ------------------------------------------

    def wl_start(self):
        totals, stops = [], []
        for i in range(self.P.repeat):
            t0 = time.perf_counter()
            cluster, rc = start_cluster(self.ipp, self.lib)
            totals.append(time.perf_counter() - t0)
            if i == self.P.repeat - 1:
                self.cluster, self.rc = cluster, rc  # stopped (and timed) at the end of the run
                break
            t1 = time.perf_counter()
            stop_cluster(cluster, rc)
            stops.append(time.perf_counter() - t1)
        metrics = {"total_s": median(totals), "stop_s": median(stops) if stops else None}
        return metrics, {"total_s": totals, "stop_s": stops}

    def wl_imap_memory(self):
        """An imap over `imap_tasks` tiny tasks, purging every `imap_purge` results: client RSS stays flat.

        What a user streaming endless inputs does: `lv.imap(f, inputs, max_outstanding=1000)` and,
        now and then, `rc.purge_results(jobs=finished)` ('all' refuses while tasks are outstanding).
        ext only (at ipyparallel's rate, 1M tasks take an hour). RSS is taken after gc.collect(),
        from a warmed-up start, just before every purge.
        """
        if self.lib != "ext":
            raise NotImplementedError("ext only (1M tasks)")
        P, rc = self.P, self.rc
        lv = rc.load_balanced_view()
        if list(lv.imap(inc, range(2000), max_outstanding=1000)) != list(range(1, 2001)):
            raise AssertionError("imap returned wrong results")
        rc.purge_results("all")
        gc.collect()
        start, peak = rss_bytes(), 0
        t0 = time.perf_counter()
        for i, value in enumerate(lv.imap(inc, range(P.imap_tasks), max_outstanding=1000)):
            if value != i + 1:
                raise AssertionError(f"imap result {i} is {value!r}")
            if (i + 1) % P.imap_purge == 0:
                gc.collect()
                peak = max(peak, rss_bytes() - start)
                rc.purge_results(jobs=list(set(rc.history) - rc.outstanding))
        seconds = time.perf_counter() - t0
        rc.purge_results("all")
        gc.collect()
        end = rss_bytes()
        metrics = {"tasks_per_s": P.imap_tasks / seconds, "growth_MB": (end - start) / MB,
                   "peak_growth_MB": peak / MB, "rss_start_MB": start / MB}
        return metrics, {"s": [seconds]}

    def wl_apply_sync(self):
        # a median over hundreds of calls: repeating the whole thing adds nothing
        e0 = self.rc[0]
        for _ in range(self.P.apply_warm):
            e0.apply_sync(noop)
        times = []
        for _ in range(self.P.apply_calls):
            t0 = time.perf_counter()
            e0.apply_sync(noop)
            times.append(time.perf_counter() - t0)
        return {"ms": 1e3 * median(times)}, {"ms_quartiles": [1e3 * q for q in statistics.quantiles(times)]}

    def wl_push_pull(self):
        import numpy as np

        e0 = self.rc[0]
        nbytes = self.P.push_mb * MB
        arr = np.random.default_rng(0).random(nbytes // 8)
        push_s, pull_s = [], []
        try:
            for i in range(1 + self.P.repeat):  # the first round is the warm-up
                arr[0] = i  # fresh content every round: a stale copy cannot pass the checks
                want = digest(arr)
                t0 = time.perf_counter()
                e0.push({"a": arr}, block=True)
                t1 = time.perf_counter()
                got = e0.pull("a", block=True)
                t2 = time.perf_counter()
                if got.shape != arr.shape or got.dtype != arr.dtype or digest(got) != want:
                    raise AssertionError("pulled array differs from the pushed one")
                del got
                # and the engine holds the right bytes, checked there
                e0.execute("import hashlib as _h; _d = _h.sha1(a.data).hexdigest()", block=True)
                if e0.pull("_d", block=True) != want:
                    raise AssertionError("array on the engine differs from the pushed one")
                if i:
                    push_s.append(t1 - t0)
                    pull_s.append(t2 - t1)
        finally:
            e0.push({"a": None, "_d": None}, block=True)
        gb = nbytes / 1e9
        ps, ls = median(push_s), median(pull_s)
        metrics = {"push_s": ps, "push_GBps": gb / ps, "pull_s": ls, "pull_GBps": gb / ls}
        return metrics, {"push_s": push_s, "pull_s": pull_s}

    def wl_map(self):
        lv = self.rc.load_balanced_view()
        n = self.P.map_tasks
        lv.map_sync(identity, range(200))
        times = []
        for _ in range(self.P.repeat):
            t0 = time.perf_counter()
            result = lv.map_sync(identity, range(n))
            times.append(time.perf_counter() - t0)
            if list(result) != list(range(n)):
                raise AssertionError("map returned wrong results")
        return {"tasks_per_s": n / median(times)}, {"s": times}

    def wl_apply_async(self):
        """Rounds of `async_tasks` apply_async + rc.wait, following the client's memory across them.

        The first round is the warm-up and the memory baseline. After each round the results are
        checked, dropped and purged (rc.purge_results('all')), so memory that still grows is the
        client's own bookkeeping.
        """
        P, rc = self.P, self.rc
        lv = rc.load_balanced_view()
        n = P.async_tasks
        times, series = [], []  # series: (tasks done, rss, bytes of rc.history, len(rc.history))
        for r in range(P.async_rounds):
            t0 = time.perf_counter()
            ars = [lv.apply_async(identity, i) for i in range(n)]
            if rc.wait(ars, timeout=120) is False:
                raise TimeoutError("rc.wait timed out")
            if r:
                times.append(time.perf_counter() - t0)
            if [ar.get(timeout=10) for ar in ars] != list(range(n)):
                raise AssertionError("apply_async returned wrong results")
            del ars
            rc.purge_results("all")
            gc.collect()
            history = getattr(rc, "history", None)
            series.append(((r + 1) * n, rss_bytes(), history_bytes(rc), None if history is None else len(history)))
        (_, rss0, hist0, _), (_, rss1, hist1, hlen) = series[0], series[-1]
        growth = (rss1 - rss0) / MB
        history_growth = None if hist0 is None else (hist1 - hist0) / MB
        metrics = {
            "tasks_per_s": n / median(times),
            "growth_MB": growth,
            "growth_minus_history_MB": None if history_growth is None else growth - history_growth,
            "history_len": hlen,
            "rss_MB": rss1 / MB,
        }
        return metrics, {"s": times, "memory_series": series}

    def wl_sleep(self):
        lv = self.rc.load_balanced_view()
        args = [self.P.sleep_s] * self.P.sleep_tasks
        times = []
        for _ in range(self.P.repeat):
            t0 = time.perf_counter()
            result = lv.map_sync(snooze, args)
            times.append(time.perf_counter() - t0)
            if list(result) != args:
                raise AssertionError("map returned wrong results")
        return {"s": median(times)}, {"s": times}

    def wl_px(self):
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False  # no sqlite file for a throwaway shell
        ip = InteractiveShell.instance(config=config)
        dv = self.rc[:]
        # ipyparallel's views (and so %px) are non-blocking by default; a blocking view makes the
        # timing cover the whole round trip, as a user waiting for %px sees it.
        dv.block = True
        dv.activate()
        for _ in range(self.P.px_warm):
            ip.run_line_magic("px", "a=1")
        times = []
        for _ in range(self.P.px_calls):
            t0 = time.perf_counter()
            ip.run_line_magic("px", "a=1")
            times.append(time.perf_counter() - t0)
        if dv.pull("a", block=True) != [1] * N_ENGINES:
            raise AssertionError("%px a=1 did not set a on every engine")
        return {"ms": 1e3 * median(times)}, {"ms_quartiles": [1e3 * q for q in statistics.quantiles(times)]}


def reap_descendants(grace: float) -> list[str]:
    """Wait up to `grace` s for this process's descendants to exit; kill the rest by pid."""
    procs = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    leaked = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            leaked.append(f"{p.pid} {' '.join(p.cmdline())[:150]}")
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=3)
    return leaked


class Stopped(BaseException):
    """The parent asked this child to stop (SIGTERM)."""


def on_sigterm(signum, frame):
    # Not KeyboardInterrupt: ipyparallel's blocking calls catch that and return an AsyncResult.
    raise Stopped


def child_main(args):
    signal.signal(signal.SIGTERM, on_sigterm)
    # Our progress lines go to the terminal; everything the library, its controller and engines
    # print (logs, progress bars) goes to the log file.
    progress = open(os.dup(2), "w", buffering=1)
    with open(args.log, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    child = Child(args.child, Params.make(args.quick, args.repeat), Path(args.out), progress)
    try:
        child.run()
    finally:
        leaked = reap_descendants(grace=10)
        child.data["leaked"] = leaked
        child.save()
        if leaked:
            child.say(f"LEAKED processes (killed): {leaked}")


# --------------------------------------------------------------------------------------------
# Parent side: run the children, compare, judge
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str  # "workload.metric"
    label: str
    fmt: str
    target: tuple | None = None  # (kind, value): le/ge/lt on ext's value, rle/rge on ext/ipp
    ref: float | None = None  # ipyparallel 9.2 on this kind of machine, from KERNEL-FACTS.md
    ratio: bool = True  # whether ext/ipp means anything for this row


def rows_for(P: Params) -> list[Row]:
    n_sleep = f"sleep({P.sleep_s:g}) x{P.sleep_tasks}"
    mem_from, mem_to = P.async_tasks / 1000, P.async_tasks * P.async_rounds / 1000
    return [
        Row("start.total_s", f"start {N_ENGINES} engines to usable client [s]", "{:.2f}", ("le", 1.5), 6.5),
        Row("start.stop_s", "stop cluster [s]", "{:.2f}"),
        Row("apply_sync.ms", "apply_sync round trip, 1 engine [ms]", "{:.3f}", ("rle", 0.5), 2.06),
        Row("push_pull.push_s", f"push {P.push_mb} MB [s]", "{:.3f}", None, 0.29),
        Row("push_pull.push_GBps", f"push {P.push_mb} MB [GB/s]", "{:.2f}", ("ge", 1.0), 0.345),
        Row("push_pull.pull_s", f"pull {P.push_mb} MB [s]", "{:.3f}", None, 0.185),
        Row("push_pull.pull_GBps", f"pull {P.push_mb} MB [GB/s]", "{:.2f}", ("ge", 1.0), 0.54),
        Row("map.tasks_per_s", f"lb map_sync {P.map_tasks} tiny [tasks/s]", "{:.0f}", ("rge", 3.0), 505),
        Row("apply_async.tasks_per_s", f"{P.async_tasks} apply_async+wait [tasks/s]", "{:.0f}", ("rge", 3.0), 460),
        Row("sleep.s", f"lb map {n_sleep} [s]", "{:.3f}", ("le", 1.1), 1.32),
        Row("px.ms", f"%px a=1, {N_ENGINES} engines [ms]", "{:.3f}", ("rle", 0.5), 4.15),
        Row("apply_async.growth_MB", f"client RSS growth, tasks {mem_from:g}k->{mem_to:g}k [MB]", "{:.1f}",
            ("lt", 20.0), ratio=False),
        Row("apply_async.growth_minus_history_MB", "  same, less rc.history [MB]", "{:.1f}", ratio=False),
        Row("apply_async.history_len", "  len(rc.history) at the end", "{:.0f}", ratio=False),
        Row("apply_async.rss_MB", "  client RSS at the end [MB]", "{:.0f}", ratio=False),
        Row("imap_memory.peak_growth_MB", f"client RSS growth, imap of {P.imap_tasks:,} tiny, purging [MB]",
            "{:.1f}", ("lt", 50.0), ratio=False),
        Row("imap_memory.growth_MB", "  same, at the end [MB]", "{:.1f}", ("lt", 50.0), ratio=False),
        Row("imap_memory.tasks_per_s", "  imap rate [tasks/s]", "{:.0f}", ratio=False),
        Row("imap_memory.rss_start_MB", "  client RSS at the start [MB]", "{:.0f}", ratio=False),
    ]


def target_text(target) -> str:
    if target is None:
        return ""
    kind, v = target
    return {"le": f"<= {v:g}", "ge": f">= {v:g}", "lt": f"< {v:g}",
            "rle": f"<= {v:g}x ipp", "rge": f">= {v:g}x ipp"}[kind]


def lookup(result: dict | None, key: str):
    """(value, error) for 'workload.metric' in a child's result."""
    if result is None:
        return None, None
    workload, metric = key.split(".")
    entry = result.get("workloads", {}).get(workload)
    if entry is None:
        return None, "error: not run (child stopped)"
    if "error" in entry:
        return None, "error: " + entry["error"]
    if "metrics" not in entry:
        return None, "error: did not finish"
    return entry["metrics"].get(metric), None


def judge(row: Row, ext, ipp):
    """(ratio ext/ipp, verdict) for one row; ipp falls back to the reference number."""
    base = ipp if ipp is not None else row.ref
    ratio = ext / base if row.ratio and ext is not None and base else None
    if row.target is None:
        return ratio, ""
    kind, v = row.target
    if ext is None:
        return ratio, "FAIL"
    if kind in ("rle", "rge") and ratio is None:
        return None, "?"
    ok = {"le": ext <= v, "ge": ext >= v, "lt": ext < v,
          "rle": ratio is not None and ratio <= v, "rge": ratio is not None and ratio >= v}[kind]
    return ratio, "PASS" if ok else "FAIL"


def build_table(P: Params, results: dict) -> tuple[list[list[str]], list[dict], bool]:
    table = [["metric", TITLES["ipp"], TITLES["ext"], "ratio", "target (ext)", "PASS/FAIL"]]
    records, any_fail = [], False
    ipp_res, ext_res = results.get("ipp"), results.get("ext")
    shown = set()  # (lib, workload) whose error message is already in the table

    def cell(row, lib, v, err, res, ref=None):
        if v is not None:
            return row.fmt.format(v)
        if err:
            workload = row.key.split(".")[0]
            if (lib, workload) in shown:
                return "error"
            shown.add((lib, workload))
            return err if len(err) <= 41 else err[:38] + "..."
        if res is None and ref is not None:
            return row.fmt.format(ref) + " (ref)"
        return "-" if res is not None else ""

    for row in rows_for(P):
        ipp_v, ipp_err = lookup(ipp_res, row.key)
        ext_v, ext_err = lookup(ext_res, row.key)
        if ext_res is None:
            ratio, verdict = None, ""
        else:
            ratio, verdict = judge(row, ext_v, ipp_v)
        any_fail |= verdict == "FAIL"
        table.append([
            row.label,
            cell(row, "ipp", ipp_v, ipp_err, ipp_res, row.ref if ext_res is not None else None),
            cell(row, "ext", ext_v, ext_err, ext_res),
            "" if ratio is None else f"{ratio:.2f}x",
            target_text(row.target),
            verdict,
        ])
        records.append({"metric": row.key, "label": row.label, "ipp": ipp_v, "ext": ext_v,
                        "ipp_error": ipp_err, "ext_error": ext_err, "ref_ipp": row.ref,
                        "ratio": ratio, "target": target_text(row.target), "verdict": verdict})
    return table, records, any_fail


def print_table(table):
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for n, r in enumerate(table):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to us (Linux), so leaks can be found and killed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def child_env(lib: str) -> dict:
    env = dict(os.environ)
    if lib == "ext":  # an uninstalled checkout: let the child and its kernels import it
        for root in (REPO / "src", REPO):
            if (root / MODULES["ext"]).is_dir():
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
                break
    return env


def busy_cpu_seconds() -> float:
    t = psutil.cpu_times()
    # guest time is already counted in user time on Linux
    return sum(t) - t.idle - sum(getattr(t, f, 0.0) for f in ("iowait", "guest", "guest_nice"))


def reaped_cpu_seconds() -> float:
    """CPU time of our descendants that have been waited for (the child and what it started)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_child(lib: str, args, P: Params, workdir: Path) -> tuple[dict | None, str | None]:
    out, log = workdir / f"{lib}.json", workdir / f"{lib}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", lib, "--out", str(out), "--log", str(log),
           "--repeat", str(P.repeat)] + (["--quick"] if args.quick else [])
    # A child's own deadlines normally fire first; this one only catches a wedged child.
    budget = args.child_timeout or (420 + 150 * P.repeat)
    print(f"{TITLES[lib]}: running (log {log}) ...", flush=True)
    t0, busy0, ours0 = time.perf_counter(), busy_cpu_seconds(), reaped_cpu_seconds()
    proc = subprocess.Popen(cmd, env=child_env(lib), start_new_session=True, stdin=subprocess.DEVNULL)
    problem = None
    try:
        proc.wait(timeout=budget)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        problem = f"child exceeded {budget} s" if isinstance(e, subprocess.TimeoutExpired) else "interrupted"
        proc.terminate()  # it stops its cluster in its finally blocks
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(e, KeyboardInterrupt):
            reap_descendants(grace=5)
            raise
    if proc.returncode and not problem:
        problem = f"child exited with status {proc.returncode}"
    leaked = reap_descendants(grace=10)
    result = json.loads(out.read_text()) if out.exists() else None
    if result is not None:
        result.setdefault("leaked", [])
        result["leaked"] += [f"(found by parent) {p}" for p in leaked]
        wall = time.perf_counter() - t0
        result["wall_s"] = wall
        # What else ran on the machine meanwhile (other users' tests, builds): the numbers of a
        # busy machine are not comparable with KERNEL-FACTS.md, only with each other.
        foreign = (busy_cpu_seconds() - busy0) - (reaped_cpu_seconds() - ours0)
        result["foreign_cpu_share"] = max(0.0, foreign) / (wall * (os.cpu_count() or 1))
    elif not problem:
        problem = "child wrote no results"
    if problem:
        print(f"  {problem}; last lines of {log}:")
        if log.exists():
            for line in log.read_text(errors="replace").splitlines()[-15:]:
                print("    " + line)
    return result, problem


def environment() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    for name in ("ipykernel", "jupyter_client", "zmq", "numpy", "IPython"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[name] = version({"zmq": "pyzmq", "IPython": "ipython"}.get(name, name))
    return info


def parent_main(args) -> int:
    P = Params.make(args.quick, args.repeat)
    libs = [args.only] if args.only else ["ipp", "ext"]
    subreaper = become_subreaper()
    env = environment()
    print(f"python {env['python']}, {env['cpus']} cpus; repeat={P.repeat}{' (quick)' if args.quick else ''}")
    results, problems = {}, {}
    with tempfile.TemporaryDirectory(prefix="ipp-bench-") as tmp:
        workdir = Path(args.logdir) if args.logdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for lib in libs:
            result, problem = run_child(lib, args, P, workdir)
            if problem:
                problems[lib] = problem
            if lib == "ipp" and result and result.get("import_error"):
                alone = ("running ipyparallel_ext alone, compared with the reference numbers of KERNEL-FACTS.md"
                         if "ext" in libs else "nothing measured")
                print(f"ipyparallel is not importable ({result['import_error']}): {alone}")
                result = None
            if result is not None:
                results[lib] = result
    print()
    for lib, res in results.items():
        busy = res.get("foreign_cpu_share", 0.0)
        print(f"{TITLES[lib]}: {res['module']} {res.get('version', '?')}, child wall time {res.get('wall_s', 0):.0f} s,"
              f" other processes used {100 * busy:.0f}% of the machine meanwhile")
        if busy > 0.1:
            print("  WARNING: the machine was busy with other work; absolute numbers are slowed down")
    if "ext" in results and "ipp" not in results:
        print("(ipp) = reference number from KERNEL-FACTS.md, not measured in this run")
    print()
    table, records, any_fail = build_table(P, results)
    print_table(table)

    errors = [(lib, name, w["error"]) for lib, res in results.items()
              for name, w in res["workloads"].items() if "error" in w]
    if errors:
        print("\nErrors:")
        for lib, name, err in errors:
            print(f"  {lib} {name}: {err}")
    leaks = [(lib, p) for lib, res in results.items() for p in res.get("leaked", [])]
    if leaks or not subreaper:
        print()
    for lib, p in leaks:
        print(f"LEAK ({lib}): {p}")
    if not subreaper:
        print("note: could not become a child subreaper; leak detection limited to each child's own check")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"environment": env, "params": vars(P), "quick": args.quick, "problems": problems,
             "rows": records, "results": results}, indent=1))
        print(f"\nwrote {args.json}")
    return 1 if any_fail or leaks else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark ipyparallel_ext against ipyparallel 9.2, side by side.")
    ap.add_argument("--only", choices=["ext", "ipp"], help="run one library only")
    ap.add_argument("--repeat", type=int, default=None, help="repeats per workload (default 3, or 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smaller workloads: a smoke run of a few seconds each")
    ap.add_argument("--json", metavar="OUT", help="write all results and verdicts to this JSON file")
    ap.add_argument("--logdir", help="keep the children's logs and raw JSON here (default: a temporary folder)")
    ap.add_argument("--child-timeout", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=list(MODULES), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    import scale  # this folder is sys.path[0]; imported here, as it imports this file's helpers

    scale.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.scale:
        return scale.parent_main(args)
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
