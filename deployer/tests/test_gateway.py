"""The public route /e/<name>/invocations: key, body limit, per-key throttle, forwarding.

A stand-in runtime (a tiny HTTP server echoing what reached it) takes the place of R
here; the end-to-end tests put the real R runtime behind the same route."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from deployer.integrations.containers import runtime_http
from deployer.models import Endpoint, ModelVersion
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_rotate_key
from deployer.targets.base import InvocationResult
from deployer.targets.local import LocalTarget
from deployer.targets.local.paths import endpoint_dir, socket_dir
from deployer.tests.gateway_support import Echo, UnixHTTPServer, echo_socket, live_public
from testsupport.factories import make_model_version
from testsupport.waiting import wait_for

__all__ = ["echo_socket"]  # a fixture: pytest finds it in this module's namespace

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_gateway_routes", "fresh_pools")]


@pytest.fixture
def fresh_pools() -> None:
    """This process keeps no connection to a runtime yet."""
    for pool in runtime_http._connections.values():
        pool.close()
    runtime_http._connections.clear()
    runtime_http._current_paths.clear()
    runtime_http._next_sweep = 0.0


def call(name: str, key: str | None, body: bytes = b"a,b\n1,2\n", **headers: str) -> tuple[int, dict[str, object]]:
    extra: dict[str, Any] = {**headers, **({"HTTP_X_API_KEY": key} if key is not None else {})}
    response = Client().post(f"/e/{name}/invocations", body, content_type="text/csv", **extra)
    return response.status_code, response.json() | {"_headers": dict(response.headers)}


def test_the_right_key_reaches_the_runtime_with_only_the_forwarded_headers(owner: User, echo_socket: str) -> None:
    key = live_public(owner, "open", echo_socket)
    status, body = call(
        "open",
        key,
        HTTP_ACCEPT="text/csv",
        HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES="type=prob",
        HTTP_COOKIE="sessionid=secret",
        HTTP_AUTHORIZATION="Token rdp_secret",
    )
    assert status == 200
    assert body["body"] == "a,b\n1,2\n"
    received = {name.lower(): value for name, value in body["headers"].items()}  # type: ignore[attr-defined]
    assert received["content-type"] == "text/csv"
    assert received["accept"] == "text/csv"
    assert received["x-amzn-sagemaker-custom-attributes"] == "type=prob"
    assert not {"x-api-key", "cookie", "authorization"} & set(received)
    assert float(body["_headers"]["X-Rdeploy-Runtime-Ms"]) > 0  # type: ignore[index]


def test_wrong_missing_or_old_keys_and_unknown_or_private_endpoints_all_get_the_same_403(
    owner: User, echo_socket: str
) -> None:
    key = live_public(owner, "open", echo_socket)
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    endpoint_create(owner=owner, name="private", model_version=model)
    Endpoint.objects.filter(name="private").update(status=Endpoint.Status.LIVE, runtime={"socket": echo_socket})

    answers = [
        call("open", "rdk_wrong"),
        call("open", None),
        call("open", ""),
        call("nowhere", key),
        call("private", key),
    ]
    endpoint_rotate_key(endpoint=Endpoint.objects.get(name="open"))
    answers.append(call("open", key))

    for status, body in answers:
        assert status == 403
        assert {k: v for k, v in body.items() if k != "_headers"} == {"message": "Forbidden"}
    assert Client().get("/e/open/invocations", HTTP_X_API_KEY=key).status_code == 403


def age_bucket(route_name: str, seconds: float) -> None:
    """Move the key's bucket ``seconds`` into the past, as if that long had gone by."""
    route = gateway.route_for(route_name)
    assert route is not None
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = f"rdeploy:throttle:{route.endpoint_id}:{route.api_key_hash[:16]}"
    client.hset(key, "at", str(float(client.hget(key, "at") or 0) - seconds))


def test_requests_above_the_rate_and_burst_get_429_until_the_bucket_refills(owner: User, echo_socket: str) -> None:
    # One token per 1000 s: however slow the machine, nothing refills during the calls.
    key = live_public(owner, "limited", echo_socket, throttle={"rate": 0.001, "burst": 3})

    statuses = [call("limited", key)[0] for _ in range(5)]

    assert statuses == [200, 200, 200, 429, 429]  # the burst, then an empty bucket
    status, body = call("limited", key)
    assert status == 429
    assert body["message"] == "Too Many Requests"
    assert int(body["_headers"]["Retry-After"]) >= 999  # type: ignore[index]

    age_bucket("limited", 1000)  # one token's worth of time
    assert [call("limited", key)[0] for _ in range(2)] == [200, 429]


def test_leased_tokens_never_let_a_key_past_its_burst_and_rate(
    owner: User, echo_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leases of 10 tokens (a burst's tenth) that outlast the test, and no refill meanwhile:
    # the shared bucket's 100 tokens are all there is, however the calls are timed.
    monkeypatch.setattr(gateway, "LEASE_SECONDS", 10_000)
    monkeypatch.setattr(gateway, "_leases", {})
    key = live_public(owner, "busy", echo_socket, throttle={"rate": 0.001, "burst": 100})
    taken: list[int] = []
    bucket = gateway._bucket()

    def counted(*, keys: list[str], args: list[object]) -> list[object]:
        answer = bucket(keys=keys, args=args)
        taken.append(int(answer[0]))
        return list(answer)

    monkeypatch.setattr(gateway, "_bucket", lambda: counted)
    statuses = [call("busy", key)[0] for _ in range(150)]

    assert statuses == [200] * 100 + [429] * 50
    assert max(taken) == 10  # tokens were leased, not fetched one by one
    assert sum(taken) == 100  # and never more than the bucket held


def test_a_lapsed_leases_unspent_tokens_go_back_to_the_shared_bucket(
    owner: User, echo_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leases of 10 tokens and no refill meanwhile; a process that spent one of its lease
    # must not cost the key the other nine (several processes leasing for a few requests
    # each drained a busy key's rate far below its limit).
    monkeypatch.setattr(gateway, "LEASE_SECONDS", 10_000)
    monkeypatch.setattr(gateway, "_leases", {})
    key = live_public(owner, "lapsing", echo_socket, throttle={"rate": 0.001, "burst": 100})
    assert call("lapsing", key)[0] == 200
    [(lease, (_, left))] = gateway._leases.items()
    assert left == 9
    gateway._leases[lease] = (0.0, left)  # the lease lapses unspent

    assert call("lapsing", key)[0] == 200
    # 100 - 10 + 9 given back - 10 taken again.
    assert float(redis.Redis.from_url(settings.REDIS_URL).hget(lease, "tokens") or 0) == pytest.approx(89, abs=0.1)


def test_each_key_has_its_own_bucket(owner: User, echo_socket: str) -> None:
    # One token per 1000 s: no refill between the calls, however slow the machine.
    first = live_public(owner, "one", echo_socket, throttle={"rate": 0.001, "burst": 1})
    second = live_public(owner, "two", echo_socket, throttle={"rate": 0.001, "burst": 1})
    assert [call("one", first)[0], call("one", first)[0]] == [200, 429]
    assert call("two", second)[0] == 200


def test_bodies_above_sagemakers_limit_are_refused_before_they_are_read(owner: User, echo_socket: str) -> None:
    key = live_public(owner, "big", echo_socket)
    status, body = call("big", key, body=b"x" * (gateway.MAX_BODY_BYTES + 1))
    assert status == 413
    assert "larger than" in str(body["message"])


def test_a_route_whose_runtime_vanished_is_a_503_not_a_crash(owner: User, tmp_path: Path) -> None:
    key = live_public(owner, "vanished", str(tmp_path / "gone" / "runtime.sock"))
    status, body = call("vanished", key)
    assert status == 503
    assert "not answering" in str(body["message"])


def test_requests_for_made_up_names_do_not_grow_the_route_cache_without_bound(
    owner: User, echo_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "_MAX_CACHED_ROUTES", 50, raising=False)
    key = live_public(owner, "known", echo_socket)

    for i in range(200):
        assert call(f"nope{i}", "rdk_guess")[0] == 403
        assert len(gateway._routes) <= 50

    assert call("known", key)[0] == 200


# --- what a runtime may cost the gateway ---------------------------------------------------
class Drip(Echo):
    """A runtime answering a byte at a time: every read returns something, so no socket
    timeout ever fires."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "40")
        self.end_headers()
        for _ in range(40):
            self.wfile.write(b" ")
            self.wfile.flush()
            time.sleep(0.25)


class Flood(Echo):
    """A runtime answering 7 MiB, with a Content-Length or chunked (?chunked)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunk = b"A" * 1024**2
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        chunked = self.headers.get("X-Amzn-SageMaker-Custom-Attributes") == "chunked"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(7 * len(chunk)))
        self.end_headers()
        try:
            for _ in range(7):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway stopped reading


class Held(Echo):
    """A runtime whose answers wait until the test lets them go."""

    release = threading.Event()
    arrived = threading.Semaphore(0)

    def do_POST(self) -> None:
        self.arrived.release()
        self.release.wait(30)
        super().do_POST()


def stand_in(path: Path, handler: type[Echo]) -> Iterator[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    server = UnixHTTPServer(str(path), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield str(path)
    server.shutdown()
    server.server_close()


@pytest.fixture
def drip_socket(tmp_path: Path) -> Iterator[str]:
    yield from stand_in(tmp_path / "drip.sock", Drip)


@pytest.fixture
def flood_socket(tmp_path: Path) -> Iterator[str]:
    yield from stand_in(tmp_path / "flood.sock", Flood)


@pytest.fixture
def held_socket(tmp_path: Path) -> Iterator[str]:
    Held.release.clear()
    Held.arrived = threading.Semaphore(0)
    yield from stand_in(tmp_path / "held.sock", Held)
    Held.release.set()


def test_an_answer_trickling_in_byte_by_byte_ends_at_the_deadline_with_504(
    owner: User, drip_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_http, "INVOCATION_SECONDS", 1.0)
    key = live_public(owner, "drip", drip_socket)

    status, body = call("drip", key)

    # The runtime's answer would be complete, each byte in time, after 10 s: a 504 is the deadline.
    assert status == 504
    assert "did not answer within" in str(body["message"])


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_answer_above_sagemakers_6_mib_is_a_502_and_is_not_read_whole(
    owner: User, flood_socket: str, framing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = live_public(owner, "flood", flood_socket)
    read: list[int] = []
    read_body = runtime_http._read_body

    def counting(response: Any, limit: int) -> bytes:
        try:
            return read_body(response, limit)
        finally:
            read.append(response.length)

    monkeypatch.setattr(runtime_http, "_read_body", counting)
    attributes = "chunked" if framing == "chunked" else "plain"
    status, body = call("flood", key, HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES=attributes)

    assert status == 502
    assert str(runtime_http.MAX_RESPONSE_BYTES) in str(body["message"])
    assert body["_headers"]["Content-Type"] == "application/json"  # type: ignore[index]
    assert read == [7 * 1024**2 if framing == "content-length" else None]
    assert call("flood", key, body=b"again")[0] == 502  # a new connection, not the unread rest


@pytest.fixture
def slow_and_other(owner: User, held_socket: str, echo_socket: str) -> tuple[gateway.Route, gateway.Route]:
    """Routes of an endpoint whose answers wait for Held.release and of one answering at once."""
    live_public(owner, "slow", held_socket)
    live_public(owner, "other", echo_socket)
    slow, other = gateway.route_for("slow"), gateway.route_for("other")
    assert slow is not None
    assert other is not None
    return slow, other


def forwarding(route: gateway.Route, answers: list[InvocationResult]) -> threading.Thread:
    """A started thread forwarding one request to ``route``, its answer appended to ``answers``."""

    def forward() -> None:
        answers.append(gateway.gateway_forward(route=route, body=b"x", headers={}))

    thread = threading.Thread(target=forward)
    thread.start()
    return thread


def holding(route: gateway.Route, count: int, answers: list[InvocationResult]) -> list[threading.Thread]:
    """``count`` requests to ``route`` started, once every one that got a slot reached the runtime."""
    threads = [forwarding(route, answers) for _ in range(count)]
    for _ in range(min(count, settings.GATEWAY_MAX_INFLIGHT)):
        assert Held.arrived.acquire(timeout=10)
    return threads


def release(threads: list[threading.Thread]) -> None:
    """The held answers go; ``threads`` are done."""
    Held.release.set()
    for thread in threads:
        thread.join(10)


def statuses(answers: list[InvocationResult]) -> list[int]:
    return [answer.status for answer in answers]


def waiting(route: gateway.Route, count: int) -> None:
    wait_for(lambda: gateway._waiting.get(route.endpoint_id, 0) == count, timeout=10, what=f"{count} waiting")


def test_an_endpoint_gets_at_most_its_share_of_a_web_process_and_the_rest_get_503_at_once(
    slow_and_other: tuple[gateway.Route, gateway.Route], settings: Any
) -> None:
    settings.GATEWAY_MAX_INFLIGHT, settings.GATEWAY_MAX_QUEUED, settings.GATEWAY_QUEUE_SECONDS = 2, 1, 60
    slow, other = slow_and_other
    answers: list[InvocationResult] = []
    held = holding(slow, 2, answers)
    queued = forwarding(slow, answers)
    waiting(slow, 1)

    refused: list[InvocationResult] = []
    # Past both bounds: answered at once, not after the waiter's 60 s. A generous join so
    # that a request waiting behind the others fails here instead of hanging the test.
    forwarding(slow, refused).join(10)
    assert statuses(refused) == [503]
    assert refused[0].headers["Retry-After"] == "1"
    assert "2 requests in progress" in json.loads(refused[0].body)["message"]
    assert all(thread.is_alive() for thread in [*held, queued])
    assert gateway._waiting == {slow.endpoint_id: 1}
    # Another endpoint is not affected.
    assert gateway.gateway_forward(route=other, body=b"x", headers={}).status == 200

    release([*held, queued])
    assert statuses(answers) == [200, 200, 200]  # the waiter got a slot once one was free
    assert gateway.gateway_forward(route=slow, body=b"x", headers={}).status == 200
    assert (gateway._inflight, gateway._waiting, gateway._slot_freed) == ({}, {}, {})


def test_a_short_burst_above_the_cap_waits_for_slots_and_every_request_succeeds(
    slow_and_other: tuple[gateway.Route, gateway.Route], settings: Any
) -> None:
    settings.GATEWAY_MAX_INFLIGHT, settings.GATEWAY_MAX_QUEUED, settings.GATEWAY_QUEUE_SECONDS = 2, 2, 60
    slow, _ = slow_and_other
    answers: list[InvocationResult] = []
    burst = holding(slow, 4, answers)
    waiting(slow, 2)
    assert answers == []  # two in progress, two waiting: none refused

    release(burst)
    assert statuses(answers) == [200, 200, 200, 200]
    assert (gateway._inflight, gateway._waiting, gateway._slot_freed) == ({}, {}, {})


def test_a_request_that_waited_its_time_without_a_slot_gets_503(
    slow_and_other: tuple[gateway.Route, gateway.Route], settings: Any
) -> None:
    settings.GATEWAY_MAX_INFLIGHT, settings.GATEWAY_MAX_QUEUED, settings.GATEWAY_QUEUE_SECONDS = 1, 1, 0.05
    slow, _ = slow_and_other
    answers: list[InvocationResult] = []
    (held,) = holding(slow, 1, answers)

    late = gateway.gateway_forward(route=slow, body=b"x", headers={})

    assert late.status == 503
    assert late.headers["Retry-After"] == "1"
    assert held.is_alive()  # no slot was freed while it waited
    assert gateway._waiting == {}
    release([held])
    assert statuses(answers) == [200]


def rollout_socket(endpoint: str, deployment: int, start: int = 0) -> Path:
    return socket_dir(endpoint_dir(endpoint) / str(deployment), start) / "runtime.sock"


def idle_connections() -> int:
    return sum(len(pool.idle) for pool in runtime_http._connections.values())


def test_the_pool_of_an_endpoints_previous_runtime_is_closed_once_requests_go_to_the_new_one() -> None:
    target = LocalTarget()
    for deployment in range(1, 11):  # ten rollouts (or restarts), each its own socket
        socket_path = rollout_socket("churn", deployment)
        servers = stand_in(socket_path, Echo)
        next(servers)
        threads = [
            threading.Thread(target=target.invoke, args=({"socket": str(socket_path)}, b"{}", {})) for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        next(servers, None)  # the old runtime is removed

    churn = [path for path in runtime_http._connections if "/churn/" in path]
    assert churn == [str(rollout_socket("churn", 10))]
    assert idle_connections() <= runtime_http._Connections.MAX_IDLE


def test_idle_connections_and_pools_are_closed_after_a_while_and_pools_are_bounded(
    tmp_path: Path, echo_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_http, "MAX_POOLS", 3)
    monkeypatch.setattr(runtime_http, "IDLE_SECONDS", 0.2)
    sockets = [str(tmp_path / f"{i}.sock") for i in range(5)]
    servers = [stand_in(Path(path), Echo) for path in sockets]
    for server in servers:
        next(server)
    for path in sockets:
        runtime_http.request(path, "POST", "/invocations", body=b"{}")
        assert len(runtime_http._connections) <= 3
    assert list(runtime_http._connections) == sockets[-3:]  # the least recently used went first

    time.sleep(0.3)
    runtime_http.request(echo_socket, "POST", "/invocations", body=b"{}")

    assert list(runtime_http._connections) == [echo_socket]
    assert idle_connections() == 1
    for server in servers:
        next(server, None)


# --- kept-alive connections the runtime closed -------------------------------------------
class Forgetful(Echo):
    """A runtime that counts the connections it accepted and closes them when told, as
    HAProxy closes those idle for its keep-alive (``forget``). ``then`` says how it answers
    the requests after: "echo"; "nothing" (closed unanswered); "half" (a few bytes of an
    answer, then closed with the request's body unread, which the gateway reads as a reset)."""

    lock = threading.Lock()
    accepted = 0
    posts = 0
    connections: list[socket.socket] = []
    then = "echo"
    # Holds each answer until as many requests have arrived (several pooled connections).
    together: threading.Barrier | None = None

    def setup(self) -> None:
        super().setup()
        with self.lock:
            Forgetful.accepted += 1
            self.connections.append(self.connection)

    def finish(self) -> None:
        with self.lock:
            self.connections.remove(self.connection)
        super().finish()

    def do_POST(self) -> None:
        with self.lock:
            Forgetful.posts += 1
        if self.then == "half":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
            os.close(self.connection.detach())
            self.close_connection = True
        elif self.then == "nothing":
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.close_connection = True
        else:
            if self.together is not None:
                self.together.wait(timeout=30)
            super().do_POST()

    @classmethod
    def forget(cls) -> None:
        """Closes every connection, and returns once the server has."""
        with cls.lock:
            for connection in cls.connections:
                connection.shutdown(socket.SHUT_RDWR)
        wait_for(lambda: not cls.connections, timeout=10, interval=0.01, what="the runtime to close its connections")


@pytest.fixture
def forgetful_socket(tmp_path: Path) -> Iterator[str]:
    Forgetful.accepted, Forgetful.posts, Forgetful.connections, Forgetful.then = 0, 0, [], "echo"
    Forgetful.together = None
    yield from stand_in(tmp_path / "forgetful.sock", Forgetful)


def post(socket_path: str, body: bytes = b"{}") -> runtime_http.Response:
    return runtime_http.request(socket_path, "POST", "/invocations", body=body, timeout=10)


def test_connections_the_runtime_closed_while_idle_cost_one_new_connection_not_an_error(
    forgetful_socket: str,
) -> None:
    Forgetful.together = threading.Barrier(2)
    both = [threading.Thread(target=post, args=(forgetful_socket,)) for _ in range(2)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    assert (Forgetful.accepted, idle_connections()) == (2, 2)
    Forgetful.together = None

    Forgetful.forget()  # both pooled connections, as HAProxy after its keep-alive

    assert post(forgetful_socket).status == 200
    assert Forgetful.accepted == 3  # the retry went to a new connection, not the other pooled one


def test_a_new_connections_failure_is_not_retried(forgetful_socket: str) -> None:
    Forgetful.then = "nothing"
    with pytest.raises(runtime_http.RuntimeHTTPError):
        post(forgetful_socket)
    assert Forgetful.accepted == 1

    Forgetful.then = "echo"
    post(forgetful_socket)
    Forgetful.forget()
    Forgetful.then = "nothing"
    with pytest.raises(runtime_http.RuntimeHTTPError):
        post(forgetful_socket)
    assert Forgetful.accepted == 3  # the pooled one, then one new one: no third


def test_a_request_the_runtime_began_to_answer_is_not_sent_again(forgetful_socket: str) -> None:
    post(forgetful_socket)
    Forgetful.then = "half"

    # Above the server's 8 KiB read buffer, so it closes with some unread (a reset); in one
    # write to the socket, so the gateway's send never fails.
    with pytest.raises(runtime_http.RuntimeHTTPError, match="reset"):
        post(forgetful_socket, body=b"x" * 16 * 1024)

    assert (Forgetful.accepted, Forgetful.posts) == (1, 2)


def test_a_connection_idle_for_idle_seconds_is_closed_not_reused(
    forgetful_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = runtime_http._Connections(forgetful_socket)
    for _ in range(2):
        pool.request("POST", "/invocations", b"{}", {}, deadline=time.monotonic() + 10, max_bytes=1000)
    assert Forgetful.accepted == 1
    monkeypatch.setattr(runtime_http, "IDLE_SECONDS", 0.0)  # as if that long had gone by

    pool.request("POST", "/invocations", b"{}", {}, deadline=time.monotonic() + 10, max_bytes=1000)

    assert Forgetful.accepted == 2
    wait_for(lambda: len(Forgetful.connections) == 1, timeout=10, interval=0.01, what="the idle connection to close")
    pool.close()


def test_the_gateway_stops_reusing_a_connection_well_before_the_runtimes_keep_alive_ends() -> None:
    config = (Path(settings.RUNTIME_DIR) / "haproxy.cfg").read_text()
    (keep_alive,) = re.findall(r"^\s*timeout http-keep-alive (\d+)s$", config, re.MULTILINE)
    assert float(keep_alive) == runtime_http.RUNTIME_KEEP_ALIVE_SECONDS
    assert runtime_http.IDLE_SECONDS <= runtime_http.RUNTIME_KEEP_ALIVE_SECONDS - 5
