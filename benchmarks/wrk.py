"""Driving wrk (Debian's `wrk`) from the benchmarks: a POST script and its parsed results."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def post_script(path: Path, body: Path, headers: Mapping[str, str]) -> Path:
    """A wrk Lua script that POSTs the file ``body`` with ``headers``."""
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{name!r}] = {value!r}" for name, value in headers.items()]
    lines.append(f'local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()')
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, lua: Path, connections: int, seconds: int) -> dict[str, Any]:
    """Requests/s, p50 and p99 in ms, errors (1.0 when any answer was not 2xx) and
    socket_errors (1.0 when a connection broke, e.g. a server closing it as wrk stops);
    wrk's own report is under "output"."""
    threads = min(connections, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "errors": float(bool(re.search(r"Non-2xx", out))),
        "socket_errors": float(bool(re.search(r"Socket errors", out))),
        "output": out,
    }
