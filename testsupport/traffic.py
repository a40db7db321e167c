"""Concurrent HTTP clients for tests and benchmarks: every call timestamped and kept.

Each client is a thread with its own keep-alive ``http.client`` connection to the web
server, sending the requests a plan gives it until told to stop. Nothing is lost: a call
that raises is kept as a failed Call (status 0, the exception's text) and the client
reconnects and goes on; a client whose plan itself raises stops, and ``stop()`` re-raises
that, as it fails on a client that hangs. No Django here, so benchmarks use it too.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# A client whose call has not come back this long after stop() is hung.
JOIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: int = 200
    # Seconds the client waits after this call before asking its plan for the next.
    pause: float = 0.0


@dataclass(frozen=True)
class Call:
    client: int
    kind: str
    # time.time() when the request was sent and when its answer was read, comparable with
    # what the pipeline records (intents' time.time(), timestamps' datetimes).
    started: float
    finished: float
    status: int  # 0 when the call raised
    body: bytes
    error: str = ""
    expect: int = 200

    @property
    def ok(self) -> bool:
        return self.status == self.expect

    def describe(self) -> str:
        return f"{self.kind} {self.status or self.error} {self.body[:200]!r}"


# plan(client number, call number) -> the client's next request.
Plan = Callable[[int, int], Request]


class TrafficClients:
    def __init__(self, port: int, clients: int, plan: Plan, *, timeout: float = 30, keep_alive: bool = True) -> None:
        self.port, self.plan, self.timeout, self.keep_alive = port, plan, timeout, keep_alive
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._crashes: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, args=(number,), name=f"traffic-{number}", daemon=True)
            for number in range(clients)
        ]

    def __enter__(self) -> TrafficClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def calls(self) -> list[Call]:
        """Every call so far, in the order answers came back."""
        with self._lock:
            return list(self._calls)

    def calls_per_client_at_least(self, count: int) -> bool:
        """True once every client has finished ``count`` calls (all clients really run)."""
        finished = [0] * len(self._threads)
        for call in self.calls:
            finished[call.client] += 1
        return min(finished) >= count

    def stop(self) -> list[Call]:
        """Stop every client; every call made. Raises if a client crashed or hung."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=JOIN_TIMEOUT)
        hung = [thread.name for thread in self._threads if thread.is_alive()]
        if self._crashes:
            raise AssertionError(f"a traffic client crashed: {self._crashes[0]!r}") from self._crashes[0]
        if hung:
            raise AssertionError(f"traffic clients did not stop within {JOIN_TIMEOUT} s: {hung}")
        return self.calls

    def _run(self, number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            sequence = 0
            while not self._stop.is_set():
                request = self.plan(number, sequence)
                sequence += 1
                call = self._call(connection, number, request)
                if not (call.ok and self.keep_alive) or request.pause:
                    # A fresh connection after anything odd (a half-read answer poisons it),
                    # after a pause (the server closes idle connections: gunicorn after 2 s),
                    # or for every call: gunicorn then spreads the calls over its processes.
                    connection.close()
                with self._lock:
                    self._calls.append(call)
                if request.pause:
                    self._stop.wait(request.pause)
        except BaseException as exc:  # the plan's own bug: stop() re-raises it
            with self._lock:
                self._crashes.append(exc)
        finally:
            connection.close()

    @staticmethod
    def _call(connection: http.client.HTTPConnection, number: int, request: Request) -> Call:
        started = time.time()
        try:
            connection.request(request.method, request.path, body=request.body or None, headers=dict(request.headers))
            response = connection.getresponse()
            body = response.read()
        except Exception as exc:  # counted as a failed call, never lost
            error = f"{type(exc).__name__}: {exc}"
            return Call(number, request.kind, started, time.time(), 0, b"", error, request.expect)
        return Call(number, request.kind, started, time.time(), response.status, body, expect=request.expect)


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` (0..1) of ``values`` lie (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def workers_rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` and its children (gunicorn's or Celery's pool
    workers), in KiB, from /proc: their children (a podman command a task runs) are not
    counted. 0 for a process that is gone."""
    total = 0
    for current in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found
