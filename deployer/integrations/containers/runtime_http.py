"""HTTP/1.1 to a runtime container over its Unix socket (it has no network): keep-alive
connections pooled per socket path and shared by a web process's threads, each request
bounded by one deadline and a size cap.

Pools follow rollouts: a caller names the pool key its socket belongs to (the local
target: the endpoint, whose every rollout and restart has a new socket path), so the
key's previous pool is closed once a request goes to a new path of it; idle connections
and pools are closed after IDLE_SECONDS, and the least recently used pools beyond MAX_POOLS.

The runtime's HAProxy closes a connection idle for its keep-alive, so a connection idle
for IDLE_SECONDS (shorter) is never reused; a request that fails on a reused connection
before a byte of the answer arrived is sent once more, on a new connection.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A prediction's answer, whole, within this many seconds: above SageMaker's 60 s, so the
# runtime's own limit answers first (its HAProxy's `timeout server`); this one ends what a
# socket timeout would not, an answer trickling in a byte at a time.
INVOCATION_SECONDS = 65.0
# SageMaker's limit on a real-time endpoint's response; the gateway reads no more.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
# The runtime's HAProxy closes a kept-alive connection idle this long (its `timeout
# http-keep-alive` in container_templates/runtime/haproxy.cfg: keep the two equal).
RUNTIME_KEEP_ALIVE_SECONDS = 15.0
# A connection idle this long is not reused, and a pool unused as long is closed: clearly
# before the runtime closes it, so no request goes out on a connection the runtime is closing
# (its clock starts when it has sent an answer, ours once the answer is read).
IDLE_SECONDS = RUNTIME_KEEP_ALIVE_SECONDS - 5.0


@dataclass(frozen=True)
class Response:
    status: int
    data: bytes
    # Lower-case names.
    headers: Mapping[str, str]


class RuntimeHTTPError(Exception):
    """The runtime did not answer (refused, reset, closed, or an HTTP error)."""


class DeadlineExceeded(RuntimeHTTPError):
    """The runtime had not answered, in full, by the request's deadline."""


class ResponseTooLarge(RuntimeHTTPError):
    """The runtime's answer is larger than the gateway reads."""


class _DeadlineSocket(socket.socket):
    """A socket whose every wait ends at one deadline: a runtime answering a byte at a time
    cannot hold a gateway thread longer than the request may take (a socket timeout alone
    restarts with every byte). Without a deadline, each wait gets ``wait`` seconds."""

    deadline: float | None = None
    wait = INVOCATION_SECONDS
    # Bytes received since the current request began.
    received = 0

    def remaining(self) -> float:
        if self.deadline is None:
            return self.wait
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        return remaining

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(self.remaining())
        count = super().recv_into(buffer, nbytes, flags)
        self.received += count
        return count

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(self.remaining())
        super().sendall(data, flags)


class OneWriteHTTPConnection(http.client.HTTPConnection):
    """http.client writes a request's headers and its body in two sends, so the runtime's
    HAProxy wakes up twice per prediction; one write of both saves a measurable share of
    the 1 ms the gateway may add (docs/pipeline.md)."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or encode_chunked:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        buffer: list[bytes] = self._buffer  # type: ignore[attr-defined]
        buffer.extend((b"", b""))
        head = b"\r\n".join(buffer)
        del buffer[:]
        self.send(head + message_body)


class UnixHTTPConnection(OneWriteHTTPConnection):
    """HTTP/1.1 over a runtime container's Unix socket (it has no network)."""

    sock: _DeadlineSocket | None

    def __init__(self, path: str, *, timeout: float = INVOCATION_SECONDS) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path
        self.wait = timeout
        # When the current request must be over (time.monotonic()); None: ``timeout`` per wait.
        self.deadline: float | None = None

    def connect(self) -> None:
        sock = _DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.deadline, sock.wait = self.deadline, self.wait
        try:
            while True:
                sock.settimeout(sock.remaining())
                try:
                    sock.connect(self.path)
                    break
                except BlockingIOError:
                    # The runtime's accept queue is full: a Unix socket with a timeout
                    # refuses at once instead of waiting, so wait here, within the deadline.
                    time.sleep(0.002)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _read_body(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The whole body, or ResponseTooLarge as soon as it is known to be above ``limit``
    (from Content-Length, before a byte of it is read; else after ``limit`` + 1 bytes)."""
    if response.length is not None:
        if response.length > limit:
            raise ResponseTooLarge(f"the runtime's answer is larger than {limit} bytes")
        return response.read()
    chunks = []
    size = 0
    while chunk := response.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"the runtime's answer is larger than {limit} bytes")
    return b"".join(chunks)


class _Connections:
    """Keep-alive HTTP/1.1 connections to one runtime socket, shared by a process's threads."""

    MAX_IDLE = 16

    def __init__(self, path: str) -> None:
        self.path = path
        # (connection, when it was last used), the most recently used last.
        self.idle: list[tuple[UnixHTTPConnection, float]] = []
        self.lock = threading.Lock()
        self.closed = False
        self.used = time.monotonic()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        *,
        deadline: float,
        max_bytes: int,
    ) -> Response:
        conn = self._take()
        while True:
            if conn is None:
                conn = UnixHTTPConnection(self.path)
            conn.deadline = deadline
            kept = conn.sock  # a reused connection's; a new one connects in conn.request
            if kept is not None:
                kept.deadline, kept.received = deadline, 0
            try:
                conn.request(method, path, body=body, headers=dict(headers))
                response = conn.getresponse()
                data = _read_body(response, max_bytes)
            except ResponseTooLarge:
                conn.close()  # the rest of the answer is never read
                raise
            except TimeoutError as exc:
                conn.close()
                raise DeadlineExceeded("the runtime did not answer in time") from exc
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if kept is not None and kept.received == 0:
                    # The runtime closed a kept-alive connection before answering a byte (as
                    # it closes those idle for its keep-alive): nothing of this POST was
                    # served, so once more, within the deadline, on a new connection (another
                    # idle one may be just as closed); a new connection's failure is final.
                    conn = None
                    continue
                raise RuntimeHTTPError(f"the runtime did not answer: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise RuntimeHTTPError(f"the runtime did not answer: {exc}") from exc
            if response.will_close:
                conn.close()
            else:
                with self.lock:
                    if not self.closed and len(self.idle) < self.MAX_IDLE:
                        self.idle.append((conn, time.monotonic()))
                        conn = None
                if conn is not None:
                    conn.close()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return Response(status=response.status, data=data, headers=headers)

    def _take(self) -> UnixHTTPConnection | None:
        """The most recently used idle connection, unless it has been idle IDLE_SECONDS
        (then all are, and are closed): None, open a new one."""
        reusable_after = time.monotonic() - IDLE_SECONDS
        with self.lock:
            if self.idle and self.idle[-1][1] > reusable_after:
                return self.idle.pop()[0]
            closing, self.idle = self.idle, []
        for conn, _ in closing:
            conn.close()
        return None

    def close_idle(self, *, older_than: float | None = None) -> None:
        """Close the idle connections last used before ``older_than`` (all without it)."""
        with self.lock:
            if older_than is None:
                closing, self.idle = self.idle, []
            else:
                closing = [entry for entry in self.idle if entry[1] < older_than]
                self.idle = [entry for entry in self.idle if entry[1] >= older_than]
        for conn, _ in closing:
            conn.close()

    def close(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        with self.lock:
            self.closed = True
        self.close_idle()


# A web process keeps a pool per socket path. Each rollout and each restart of a runtime
# has a new path, so pools are dropped: that of a pool key's previous path once a request
# goes to its new one; idle connections unused for IDLE_SECONDS and pools unused as long;
# the least recently used pools beyond MAX_POOLS.
_connections: dict[str, _Connections] = {}
# The socket path each pool key's requests went to last.
_current_paths: dict[str, str] = {}
_connections_lock = threading.Lock()
MAX_POOLS = 256
_next_sweep = 0.0


def _pool(socket_path: str, pool_key: str) -> _Connections:
    """The socket's pool; every IDLE_SECONDS / 2 also closes what has been idle too long."""
    global _next_sweep
    now = time.monotonic()
    connections = _connections.get(socket_path)
    if connections is not None and now < _next_sweep:
        connections.used = now
        return connections
    retired: list[_Connections] = []
    sweep: list[_Connections] = []
    with _connections_lock:
        connections = _connections.get(socket_path)
        if connections is None:
            connections = _connections[socket_path] = _Connections(socket_path)
            previous = _current_paths.get(pool_key)
            _current_paths[pool_key] = socket_path
            if previous is not None and previous != socket_path and previous in _connections:
                retired.append(_connections.pop(previous))
            if len(_connections) > MAX_POOLS:
                oldest = min(_connections.values(), key=lambda pool: pool.used)
                retired.append(_connections.pop(oldest.path))
        connections.used = now
        if now >= _next_sweep:
            _next_sweep = now + IDLE_SECONDS / 2
            for pool in list(_connections.values()):
                if pool.used < now - IDLE_SECONDS:
                    retired.append(_connections.pop(pool.path))
                else:
                    sweep.append(pool)
            for key, path in list(_current_paths.items()):
                if path not in _connections:
                    del _current_paths[key]
    for pool in retired:
        pool.close()
    for pool in sweep:
        pool.close_idle(older_than=now - IDLE_SECONDS)
    return connections


def request(
    socket_path: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    max_bytes: int | None = None,
    pool_key: str | None = None,
) -> Response:
    """One request to a runtime: its answer within ``timeout`` seconds in all (else
    DeadlineExceeded) and at most ``max_bytes`` long (else ResponseTooLarge); a
    prediction's limits unless told. ``pool_key`` (opaque; default: the socket path) says
    whose socket it is: a new path of the same key closes the pool of its previous one."""
    deadline = time.monotonic() + (INVOCATION_SECONDS if timeout is None else timeout)
    limit = MAX_RESPONSE_BYTES if max_bytes is None else max_bytes
    pool = _pool(socket_path, pool_key or socket_path)
    return pool.request(method, path, body, headers or {}, deadline=deadline, max_bytes=limit)
