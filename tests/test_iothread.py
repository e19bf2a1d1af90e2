"""The I/O loop runs every call scheduled from any thread, however they interleave with its passes."""

import threading

from ipyparallel_ext._iothread import IOLoop


def test_every_call_soon_runs_when_many_threads_schedule_at_once():
    loop = IOLoop()
    try:
        counts = [0] * 8
        done = threading.Event()
        total = 8 * 5000

        def bump(i):
            counts[i] += 1  # only the I/O thread writes
            if sum(counts) == total:
                done.set()

        def schedule(i):
            for _ in range(5000):
                loop.call_soon(bump, i)

        threads = [threading.Thread(target=schedule, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert done.wait(10), f"{total - sum(counts)} of {total} calls never ran"
        # A lone call after a quiet moment (the loop asleep in poll) still wakes it.
        for _ in range(200):
            ran = threading.Event()
            loop.call_soon(ran.set)
            assert ran.wait(5)
    finally:
        loop.stop()
