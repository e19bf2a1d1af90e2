"""``kill -9`` of random engines at random moments of a 10,000-task load-balanced map with retries.

Sizes: 4 engines, 10,000 tasks of ~2 ms each, 3 seeds; per seed two kills, each of a random live
engine when a random fraction (10%-70%) of the map has finished, each followed by a restart of
that engine (``rc.shutdown(targets=[i], restart=True)``) while the map goes on.  ``retries=3``
covers the task each kill interrupts (a task can be the running one at most once per kill).

What must hold: every result arrives exactly once and in order (checked value by value), the map
never fails, and each killed engine leaves ``rc.ids`` promptly (its process is watched).
"""

import os
import random
import signal
import time

import pytest

import ipyparallel_ext as ipp

from conftest import alive, wait_until

N_ENGINES = 4
N_TASKS = 10_000
KILLS_PER_SEED = 2


@ipp.interactive
def tagged_square(x):
    """Runs on an engine: ``(x, x * x)`` after two milliseconds of work."""
    import time

    time.sleep(0.002)
    return x, x * x


@pytest.fixture(scope="module")
def four_engines():
    cluster = ipp.Cluster(n=N_ENGINES)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(N_ENGINES, timeout=90)
        yield cluster, rc
    finally:
        cluster.stop_cluster_sync()


def _engine_pid(cluster, engine_id):
    return cluster.engines[engine_id].provisioner.pid


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_map_survives_random_kills(four_engines, seed, measure):
    cluster, rc = four_engines
    rng = random.Random(seed)
    assert wait_until(lambda: len(rc.ids) == N_ENGINES, timeout=60)
    lv = rc.load_balanced_view()
    lv.retries = KILLS_PER_SEED + 1
    moments = sorted(rng.uniform(0.10, 0.70) for _ in range(KILLS_PER_SEED))

    ar = lv.map_async(tagged_square, range(N_TASKS))
    detections = []
    for fraction in moments:
        assert wait_until(lambda: ar.progress >= fraction * N_TASKS or ar.ready(), timeout=120)
        if ar.ready():
            break  # the map outran us: nothing more to kill in it
        victim = rng.choice(rc.ids)
        pid = _engine_pid(cluster, victim)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda: victim not in rc.ids, timeout=15), f"engine {victim} (pid {pid}) still listed"
        detections.append(time.monotonic() - t0)
        assert not alive(pid)
        rc.shutdown(targets=[victim], restart=True)  # blocks until it is back, under the same id
        assert _engine_pid(cluster, victim) != pid

    results = ar.get(timeout=180)
    assert len(results) == N_TASKS
    # Exactly once, in order: result i is task i's, and nothing is missing or repeated.
    assert [x for x, _ in results] == list(range(N_TASKS))
    assert all(sq == x * x for x, sq in results)
    assert ar.progress == N_TASKS
    measure(f"seed {seed}: kill -9 detected (engine gone from rc.ids) after",
            [round(d, 3) for d in detections], "s")
    assert len(detections) == KILLS_PER_SEED, "the map finished before the last kill: make the tasks longer"
