"""Helpers for tests that drive a client in a subprocess."""

import selectors

import pytest


def readline(proc, timeout):
    """One line of ``proc``'s stdout, or fail after ``timeout`` seconds (with its stderr)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"the subprocess printed nothing in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        code = proc.wait(timeout=10)
        err = proc.stderr.read() if proc.stderr else ""
        pytest.fail(f"the subprocess exited with {code}:\n{err[-3000:]}")
    return line
