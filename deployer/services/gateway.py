"""The request path to a live endpoint, kept lean: it runs for every prediction.

- Routes (an endpoint's target, ``runtime``, owner, key hash, throttle) are cached in
  process memory for ``ROUTE_CACHE_SECONDS``; a request costs no database query while its
  route is cached and no database write ever.
- The public API (``/e/<name>/invocations``, what API Gateway + Lambda are on AWS):
  ``x-api-key`` checked against the stored SHA-256; a wrong or missing key and an unknown
  or private endpoint get the same 403 body; a per-key token bucket in Redis with API
  Gateway's usage-plan semantics (``rate`` tokens per second refill a bucket of ``burst``)
  answers 429 when empty (busy processes lease a few tokens at a time, see
  ``LEASE_SECONDS``); bodies above SageMaker's 6 MiB get 413. When Redis does not
  answer, the route fails closed: 503 with Retry-After, never an unthrottled call.
- Every route: at most ``GATEWAY_MAX_INFLIGHT`` requests per endpoint in progress in a
  web process; up to ``GATEWAY_MAX_QUEUED`` more wait for a slot, each at most
  ``GATEWAY_QUEUE_SECONDS``, so a short burst above the cap is served late rather than
  refused; the rest, and a waiter whose time ran out, get 503 with Retry-After. Waiters
  hold threads too: together both bounds keep one tenant's slow model from holding every
  thread. The target bounds each request's time and answer (local: 504 after 65 s in
  all, 502 for an answer above SageMaker's 6 MiB).
- REST tokens on the invocations route are checked through the same kind of cache, so
  a revoked token stops working within ``ROUTE_CACHE_SECONDS`` everywhere.
- A stopped endpoint answers 503 with Retry-After and ``"reason": "endpoint is stopped"``;
  with option ``wake_on_request`` the call also enqueues its start (docs/pipeline.md).
- A request that finds no runtime (it was replaced moments ago) re-reads the route from
  the database once and retries if the route changed.
- While a shadow runs, a sample of answered requests is copied to it after the caller's
  answer is ready, through a bounded queue (``deployer.services.shadow_copies``).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from deployer import task_names
from deployer.jobs import enqueue
from deployer.models import Endpoint
from deployer.services.shadow_copies import shadow_copy_offer
from deployer.services.tokens import api_token_authenticate, hash_secret
from deployer.targets import get_target
from deployer.targets.base import ROUTE_CACHE_SECONDS, InvocationResult, RuntimeUnavailable

# SageMaker real-time endpoints accept at most 6 MiB (InvokeEndpoint's Body limit).
MAX_BODY_BYTES = 6 * 1024 * 1024
FORWARDED_HEADERS = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
JSON = {"Content-Type": "application/json"}
# Retry-After of a stopped endpoint: soon while it starts; later while nothing starts it.
WAKE_RETRY_AFTER = 5
STOPPED_RETRY_AFTER = 60

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    endpoint_id: int
    name: str
    owner_id: int
    target: str
    status: str
    runtime: Mapping[str, Any]
    public: bool
    api_key_hash: str
    rate: float
    burst: int
    wake_on_request: bool = False
    # Endpoint.shadow_runtime: where copies go while a shadow runs ({} when none).
    shadow: Mapping[str, Any] = field(default_factory=dict)

    @property
    def serving(self) -> bool:
        return self.status in Endpoint.SERVING and bool(self.runtime)


_routes: dict[str, tuple[float, Route | None]] = {}
# Unknown names are cached too (a client retrying a wrong URL costs no query), so the
# cache is bounded: requests for made-up names must not grow a web process's memory.
_MAX_CACHED_ROUTES = 10_000


def _load_route(name: str) -> Route | None:
    row = (
        Endpoint.objects.filter(name=name)
        .values("id", "owner_id", "target", "status", "runtime", "public", "api_key_hash", "options", "shadow_runtime")
        .first()
    )
    if row is None:
        route = None
    else:
        throttle = (row["options"] or {}).get("throttle") or {}
        route = Route(
            endpoint_id=row["id"],
            name=name,
            owner_id=row["owner_id"],
            target=row["target"],
            status=row["status"],
            runtime=row["runtime"] or {},
            public=row["public"],
            api_key_hash=row["api_key_hash"],
            rate=float(throttle.get("rate", settings.GATEWAY_DEFAULT_RATE)),
            burst=int(throttle.get("burst", settings.GATEWAY_DEFAULT_BURST)),
            wake_on_request=bool((row["options"] or {}).get("wake_on_request")),
            shadow=row["shadow_runtime"] or {},
        )
    if len(_routes) >= _MAX_CACHED_ROUTES and name not in _routes:
        _routes.clear()
    _routes[name] = (time.monotonic() + ROUTE_CACHE_SECONDS, route)
    return route


def route_for(name: str) -> Route | None:
    """The endpoint's route, from this process's cache when fresh."""
    cached = _routes.get(name)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    return _load_route(name)


@dataclass(frozen=True)
class TokenPrincipal:
    """Who a REST token belongs to, as much as routing a prediction needs."""

    pk: int
    is_staff: bool
    is_authenticated: bool = True


_principals: dict[str, tuple[float, TokenPrincipal | None]] = {}
# Unknown tokens are cached too (a client retrying a bad token costs no query); bounded.
_MAX_CACHED_PRINCIPALS = 10_000


def token_principal(secret: str) -> TokenPrincipal | None:
    """The active token's user, from this process's cache when fresh; None if invalid."""
    key = hash_secret(secret)
    cached = _principals.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    token = api_token_authenticate(secret=secret)
    principal = TokenPrincipal(pk=token.user.pk, is_staff=token.user.is_staff) if token else None
    if len(_principals) >= _MAX_CACHED_PRINCIPALS:
        _principals.clear()
    _principals[key] = (time.monotonic() + ROUTE_CACHE_SECONDS, principal)
    return principal


def route_forget(name: str) -> None:
    """Drop this process's cached route (the endpoint changed here)."""
    _routes.pop(name, None)


def _error(status: int, message: str, **headers: str) -> InvocationResult:
    return InvocationResult(status=status, body=json.dumps({"message": message}).encode(), headers={**JSON, **headers})


def _asleep(route: Route) -> InvocationResult:
    """A stopping or stopped endpoint answers 503 until it is live again; with
    ``wake_on_request`` a call to a stopped one starts it (endpoint_wake starts it once
    however many calls ask)."""
    if route.status == Endpoint.Status.STOPPED and route.wake_on_request:
        enqueue(task_names.ENDPOINT_WAKE, route.endpoint_id)
        message, retry_after = (
            f"Endpoint {route.name} is stopped and is being started; retry shortly.",
            WAKE_RETRY_AFTER,
        )
    elif route.status in (Endpoint.Status.STARTING, Endpoint.Status.STOPPING):
        verb = "starting" if route.status == Endpoint.Status.STARTING else "stopping"
        message, retry_after = f"Endpoint {route.name} is {verb}; retry shortly.", WAKE_RETRY_AFTER
    else:
        message, retry_after = f"Endpoint {route.name} is stopped; its owner can start it.", STOPPED_RETRY_AFTER
    body = {"message": message, "reason": "endpoint is stopped"}
    return InvocationResult(
        status=503, body=json.dumps(body).encode(), headers={**JSON, "Retry-After": str(retry_after)}
    )


# Requests per endpoint in this process: in progress (GATEWAY_MAX_INFLIGHT at most each)
# and waiting for one of those slots (GATEWAY_MAX_QUEUED at most, GATEWAY_QUEUE_SECONDS
# each at most): a slow model holds at most the two together of the process's threads,
# never all of them.
_inflight: dict[int, int] = {}
_waiting: dict[int, int] = {}
_inflight_lock = threading.Lock()
# One condition per endpoint with waiters (all on _inflight_lock): a finished request
# wakes one waiter of its own endpoint, not every waiter of the process.
_slot_freed: dict[int, threading.Condition] = {}


def gateway_forward(*, route: Route, body: bytes, headers: Mapping[str, str]) -> InvocationResult:
    """Send one request to what serves the endpoint, adding the round-trip time header."""
    if route.status in (Endpoint.Status.STOPPING, *Endpoint.ASLEEP):
        return _asleep(route)
    if not route.serving:
        return _error(503, f"Endpoint {route.name} is not serving (status {route.status}).")
    if not _take_slot(route.endpoint_id):
        return _error(
            503,
            f"Endpoint {route.name} already has {settings.GATEWAY_MAX_INFLIGHT} requests in progress here; "
            "try again shortly.",
            **{"Retry-After": "1"},
        )
    try:
        return _forward(route=route, body=body, headers=headers)
    finally:
        _release_slot(route.endpoint_id)


def _take_slot(endpoint_id: int) -> bool:
    """A slot for one request to the endpoint, waiting for one when all are taken and
    fewer than GATEWAY_MAX_QUEUED requests wait already; False when none came in time."""
    limit = settings.GATEWAY_MAX_INFLIGHT
    with _inflight_lock:
        if _inflight.get(endpoint_id, 0) >= limit:
            if _waiting.get(endpoint_id, 0) >= settings.GATEWAY_MAX_QUEUED:
                return False
            freed = _slot_freed.setdefault(endpoint_id, threading.Condition(_inflight_lock))
            _waiting[endpoint_id] = _waiting.get(endpoint_id, 0) + 1
            try:
                got = freed.wait_for(lambda: _inflight.get(endpoint_id, 0) < limit, settings.GATEWAY_QUEUE_SECONDS)
            finally:
                if (still := _waiting[endpoint_id] - 1) > 0:
                    _waiting[endpoint_id] = still
                else:
                    del _waiting[endpoint_id], _slot_freed[endpoint_id]
            if not got:
                return False
        _inflight[endpoint_id] = _inflight.get(endpoint_id, 0) + 1
        return True


def _release_slot(endpoint_id: int) -> None:
    with _inflight_lock:
        if (left := _inflight[endpoint_id] - 1) > 0:
            _inflight[endpoint_id] = left
        else:
            del _inflight[endpoint_id]
        if (freed := _slot_freed.get(endpoint_id)) is not None:
            freed.notify()


def _forward(*, route: Route, body: bytes, headers: Mapping[str, str]) -> InvocationResult:
    forwarded = {name: value for name in FORWARDED_HEADERS if (value := headers.get(name))}
    started = time.perf_counter()
    try:
        result = get_target(route.target).invoke(route.runtime, body, forwarded)
    except RuntimeUnavailable:
        fresh = _load_route(route.name)
        if fresh is None or not fresh.serving or fresh.runtime == route.runtime:
            return _error(503, f"Endpoint {route.name} is not answering; try again shortly.")
        started = time.perf_counter()
        try:
            result = get_target(fresh.target).invoke(fresh.runtime, body, forwarded)
        except RuntimeUnavailable:
            return _error(503, f"Endpoint {route.name} is not answering; try again shortly.")
    elapsed_ms = (time.perf_counter() - started) * 1000
    if route.shadow:
        shadow_copy_offer(
            target=route.target, shadow=route.shadow, body=body, headers=forwarded, live=result, live_ms=elapsed_ms
        )
    return InvocationResult(
        status=result.status, body=result.body, headers={**result.headers, "X-Rdeploy-Runtime-Ms": f"{elapsed_ms:.2f}"}
    )


# --- throttling -----------------------------------------------------------------------------
# A token bucket per key, updated atomically in Redis; the clock is Redis's own, so every
# web process agrees. A call gives back ARGV[4] tokens (a lapsed lease's unspent ones),
# takes up to ARGV[3] tokens at once and returns {tokens taken, seconds until a token is
# available}.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate + refund)
local taken = 0
local wait = 0
if tokens >= 1 then
  taken = math.min(want, math.floor(tokens))
  tokens = tokens - taken
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, tostring(wait)}
"""
# A busy process takes the tokens of the next LEASE_SECONDS of the rate in one Redis
# call and spends them locally, so most requests cost no round trip; the unspent ones of a
# lapsed lease go back with the process's next call (kept, several processes each leasing
# for a few requests would drain a key's rate far below its limit: issue 11's load test).
# Limits stay exact for rates below 1 / LEASE_SECONDS per second; above, a process may
# run ahead of the shared bucket by at most one lease, the "best effort" API Gateway
# documents for its own throttling.
LEASE_SECONDS = 0.05
_redis_lock = threading.Lock()
_bucket_script: Any = None
_leases: dict[str, tuple[float, int]] = {}
_leases_lock = threading.Lock()
# What a refused caller is told to wait while Redis does not answer (a restart takes seconds).
THROTTLE_DOWN_RETRY_AFTER = 5


def _bucket() -> Any:
    global _bucket_script
    if _bucket_script is None:
        with _redis_lock:
            if _bucket_script is None:
                # Fail fast when Redis is down: each waiting request holds a web thread, and
                # redis-py's default retries a connection ten times. No retry is needed for
                # a connection a Redis restart closed: the pool replaces it on checkout.
                client = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_connect_timeout=0.5,
                    socket_timeout=2,
                    health_check_interval=30,
                    retry=Retry(NoBackoff(), 0),
                )
                _bucket_script = client.register_script(_BUCKET_LUA)
    return _bucket_script


def gateway_take_token(*, route: Route) -> float | None:
    """None when the request may pass, else the seconds until the bucket has a token."""
    key = f"rdeploy:throttle:{route.endpoint_id}:{route.api_key_hash[:16]}"
    now = time.monotonic()
    with _leases_lock:
        expires, left = _leases.get(key, (0.0, 0))
        if left > 0 and expires > now:
            _leases[key] = (expires, left - 1)
            return None
        # Popped under the lock: one thread only gives the lapsed lease's tokens back.
        _leases.pop(key, None)
    want = max(1, min(int(route.rate * LEASE_SECONDS), route.burst // 10))
    taken, wait = _bucket()(keys=[key], args=[route.rate, route.burst, want, left])
    taken = int(taken)
    if not taken:
        return float(wait)
    if taken > 1:
        with _leases_lock:
            _leases[key] = (now + LEASE_SECONDS, taken - 1)
    return None


def gateway_public_invoke(
    *,
    name: str,
    api_key: str | None,
    content_length: int,
    read_body: Callable[[], bytes],
    headers: Mapping[str, str],
) -> InvocationResult:
    """The public route: key, body limit, throttle, then forward."""
    route = route_for(name)
    if (
        route is None
        or not route.public
        or not route.api_key_hash
        or not api_key
        or not hmac.compare_digest(hash_secret(api_key), route.api_key_hash)
    ):
        return _error(403, "Forbidden")
    if content_length > MAX_BODY_BYTES:
        return _error(413, f"Request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        wait = gateway_take_token(route=route)
    except redis.RedisError as exc:
        # Fail closed: without the shared bucket nothing knows the key's rate, and an
        # unthrottled public route is what the throttle exists to prevent.
        logger.warning("public route %s refused: the throttle's Redis does not answer (%s)", name, exc)
        return _error(
            503,
            "Throttling is unavailable (its Redis does not answer), so calls are refused; try again shortly.",
            **{"Retry-After": str(THROTTLE_DOWN_RETRY_AFTER)},
        )
    if wait is not None:
        return _error(429, "Too Many Requests", **{"Retry-After": str(max(1, round(wait + 0.5)))})
    return gateway_forward(route=route, body=read_body(), headers=headers)
