"""Cells sent by execute() and %px run through the engine helpers, as the kernel would run them.

The engine helpers run such a cell with ``shell.run_cell`` instead of
leaving it to ipykernel's ``do_execute`` (and the request says silent, so the
kernel does not echo the code on IOPub).  These tests pin what must not
change: the engine's history and counts, results, errors, ``input()``,
top-level ``await`` (left to the kernel), and the code in ``ar.execute_input``.
"""

import pytest

import ipyparallel_ext as ipp

TIMEOUT = 30


@ipp.interactive
def engine_history(n=None):
    """Runs on an engine: its execution count, and cell ``n``'s input, output and ``_i<n>``.

    Also whether any input in the history starts with ``hc_x * 2``.
    """
    ns = get_ipython().user_ns  # noqa: F821 - the engine's
    inputs = ns["In"]
    cell = (inputs[n] if n is not None and n < len(inputs) else None, ns["Out"].get(n), ns.get(f"_i{n}"))
    return get_ipython().execution_count, cell, any(i.startswith("hc_x * 2") for i in inputs)  # noqa: F821


def test_cells_keep_the_engines_history_and_counts(rc):
    e0 = rc[0]
    count = e0.apply_sync(engine_history)[0]
    reply = e0.execute("hc_x = 20\nhc_x + 1", silent=False).get(TIMEOUT)
    assert reply.execution_count == count and reply.data == {"text/plain": "21"}
    # Silent code is not a cell of the history, and reports the last count.
    assert e0.execute("hc_x * 2").get(TIMEOUT).execution_count == count
    n, cell, silent_code_in_history = e0.apply_sync(engine_history, count)
    assert n == count + 1 and not silent_code_in_history
    assert cell == ("hc_x = 20\nhc_x + 1", 21, "hc_x = 20\nhc_x + 1")


def test_cell_errors_and_input_are_the_kernels(rc):
    ar = rc[0].execute("print('before')\n1/0", silent=False, block=False)
    with pytest.raises(ipp.RemoteError, match="ZeroDivisionError") as info:
        ar.get(TIMEOUT)
    assert "ZeroDivisionError" in info.value.traceback and ar.stdout == "before\n"
    # The client cannot answer input requests: input() fails instead of reading the kernel's stdin.
    with pytest.raises(ipp.RemoteError, match="StdinNotImplementedError"):
        rc[0].execute("input()", silent=False, block=False).get(TIMEOUT)
    # Syntax errors are reported before anything runs; the engine goes on.
    with pytest.raises(ipp.RemoteError, match="SyntaxError"):
        rc[0].execute("def (:", silent=False, block=False).get(TIMEOUT)
    assert rc[0].execute("1 + 1", silent=False).get(TIMEOUT).data == {"text/plain": "2"}


def test_top_level_await_runs_on_the_kernels_loop(rc, dv):
    replies = dv.execute("import asyncio\nawait asyncio.sleep(0.01)\naw_x = 3\naw_x * 2",
                         silent=False).get(TIMEOUT)
    counts = [r.execution_count for r in replies]
    assert [r.data for r in replies] == [{"text/plain": "6"}] * 2
    assert [rc[i].apply_sync(engine_history, c)[1][1] for i, c in zip(rc.ids, counts)] == [6, 6]
    # Silent, too.
    dv.execute("await asyncio.sleep(0)\naw_y = aw_x + 1", block=True)
    assert dv.pull("aw_y", block=True) == [4, 4]


def test_execute_input_is_the_code_sent(rc):
    ar = rc[0].execute("ei_x = 1", silent=False)
    assert ar.get(TIMEOUT) is not None and ar.execute_input == "ei_x = 1"
    assert rc[0].execute("ei_x = 2").execute_input is None  # silent code has no input echo
