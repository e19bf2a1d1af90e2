"""The installed package brings the toolbar: its labextension and its server extension, enabled.

``pip install -e .`` (or the wheel) puts the built labextension in
``share/jupyter/labextensions/ipyparallel-ext`` and a ``jupyter_server_config.d`` file that enables
the server extension; Jupyter's own commands must then list both as enabled and valid.
"""

from __future__ import annotations

import re
import subprocess
import sys

_TIMEOUT = 120  # seconds for a `jupyter ... list` command on a busy machine
_REINSTALL = ("the toolbar is not installed in this environment: an install made before the toolbar "
              "existed lacks it; run `pip install -e .` again")


def _jupyter(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "jupyter", *args], capture_output=True, text=True,
                            timeout=_TIMEOUT, check=True)
    # Both commands write their listing to stderr, with ANSI colours.
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def test_labextension_is_installed_and_enabled():
    listing = _jupyter("labextension", "list")
    assert re.search(r"ipyparallel-ext v\S+ enabled OK \(python, ipyparallel_ext\)", listing), (
        f"{_REINSTALL}\n`jupyter labextension list` says:\n{listing}")


def test_server_extension_is_enabled():
    listing = _jupyter("server", "extension", "list")
    assert re.search(r"ipyparallel_ext\.toolbar enabled", listing), (
        f"{_REINSTALL}\n`jupyter server extension list` says:\n{listing}")
    assert re.search(r"ipyparallel_ext\.toolbar\s+OK", listing), listing
