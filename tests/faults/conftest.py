"""Fixtures of the fault-injection suite (tests/conftest.py has the shared ones)."""

import json
import os
import sys
import time

import pytest

# Where measured bounds go besides the test output: set FAULTS_MEASUREMENTS=path to collect them.
_MEASUREMENTS = os.environ.get("FAULTS_MEASUREMENTS")


@pytest.fixture
def measure(request):
    """``measure(name, value, unit)``: print a measured bound (and append it to $FAULTS_MEASUREMENTS)."""

    def record(name, value, unit=""):
        line = {"test": request.node.nodeid, "name": name, "value": value, "unit": unit, "at": time.time()}
        print(f"MEASURED {name}: {value}{unit and ' ' + unit}", file=sys.stderr)
        if _MEASUREMENTS:
            with open(_MEASUREMENTS, "a") as f:
                f.write(json.dumps(line) + "\n")

    return record
