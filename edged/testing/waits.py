"""Test helpers: bounded waits that scale with how slow the machine is (``EDGED_TEST_SLOWDOWN``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def slowdown() -> float:
    """``EDGED_TEST_SLOWDOWN`` (default 1): how much slower than a native x86 machine this one
    runs; every wait bound here is multiplied by it (the arm64 job under qemu-user sets 10).
    Bounds only: a passing wait still returns as soon as its event happens."""
    try:
        return max(1.0, float(os.environ.get("EDGED_TEST_SLOWDOWN", "1")))
    except ValueError:
        return 1.0


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until truthy or ``timeout`` s (times ``slowdown()``) pass: a bound,
    not a measurement."""
    deadline = time.monotonic() + timeout * slowdown()
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
