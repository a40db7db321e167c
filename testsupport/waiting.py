"""Waiting for a condition, for tests and benchmarks (no Django: benchmarks import it
before they set the environment)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.1, what: str = "") -> Any:
    """The predicate's first true value; AssertionError when it stays false for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
