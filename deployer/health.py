"""What rdeploy depends on: `GET /healthz` (liveness) and `GET /readyz` (readiness).

Liveness is answered by the web process alone (config/views.py): a load balancer asks it
often, and it must not cost a query or wait for a worker. Readiness checks the database,
the broker, a worker and the workers' container engine; one check serves every caller for
`READY_CACHE_SECONDS`, so a burst of calls costs one Celery ping, not one per thread.
Only staff and loopback callers see the detail (worker hostnames, error text); others
learn which component is not ready and nothing more.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from deployer.integrations.containers import cli

# Workers report on their container engine (model code runs only there); the web process
# may not reach that engine at all (compose mounts its socket into the worker only).
ENGINE_REPORT_KEY = "health:container_engine"
# Beat asks for a report every 30 s (settings); older than this, the report is stale.
ENGINE_REPORT_SECONDS = 120
# One readiness check per web process serves every caller for this long.
READY_CACHE_SECONDS = 5.0

_ready_lock = threading.Lock()
_ready: tuple[float, dict[str, Any]] | None = None


def system_health() -> dict[str, Any]:
    """Every component's state, checked now (each check bounded to about a second)."""
    checks = {
        "database": _database(),
        "broker": _broker(),
        "worker": _worker(),
        "container_engine": _container_engine(),
    }
    return {"ok": all(check["ok"] for check in checks.values()), **checks}


def system_readiness(*, detail: bool) -> dict[str, Any]:
    """`system_health()` at most `READY_CACHE_SECONDS` old; without `detail`, only whether
    each component is ready (no hostnames, no error text)."""
    global _ready
    cached = _ready
    # While one caller checks, the others answer the previous report if there is one, so
    # a burst never holds more than one thread for the check's second.
    if (cached is None or cached[0] <= time.monotonic()) and _ready_lock.acquire(blocking=cached is None):
        try:
            if _ready is None or _ready[0] <= time.monotonic():
                _ready = (time.monotonic() + READY_CACHE_SECONDS, system_health())
            cached = _ready
        finally:
            _ready_lock.release()
    assert cached is not None
    report = cached[1]
    if detail:
        return report
    return {name: ({"ok": value["ok"]} if isinstance(value, dict) else value) for name, value in report.items()}


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any driver error means "not healthy", reported as text
        return {"ok": False, "error": str(exc)}


def _broker() -> dict[str, Any]:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        return {"ok": True}
    except redis.RedisError as exc:
        return {"ok": False, "error": str(exc)}


def _worker() -> dict[str, Any]:
    try:
        replies = current_app.control.ping(timeout=1.0)
    except Exception as exc:  # kombu raises transport-specific errors when Redis is down
        return {"ok": False, "error": str(exc)}
    if not replies:
        return {"ok": False, "error": "no Celery worker answered within 1 s"}
    return {"ok": True, "workers": sorted(name for reply in replies for name in reply)}


def container_engine_report() -> dict[str, Any]:
    """Runs in a worker: whether its engine answers and has the base image, kept for /readyz."""
    problem = cli.engine_problem()
    report: dict[str, Any] = {"ok": problem is None, "checked_at": time.time()}
    if problem:
        report["error"] = problem
    cache.set(ENGINE_REPORT_KEY, report, timeout=ENGINE_REPORT_SECONDS)
    return report


def _container_engine() -> dict[str, Any]:
    try:
        report = cache.get(ENGINE_REPORT_KEY)
    except redis.RedisError as exc:
        return {"ok": False, "error": f"the workers' report is unreadable: {exc}"}
    if not isinstance(report, dict) or not isinstance(report.get("ok"), bool):
        return {
            "ok": False,
            "error": f"no worker reported on the container engine in the last {ENGINE_REPORT_SECONDS} s; "
            "inspections and local endpoints need one",
        }
    return dict(report)


def worker_selfcheck(*, nonce: str, hostname: str) -> None:
    """Proves a worker can reach the database and the cache: answers under `nonce`."""
    database = _database()
    cache.set(f"selfcheck:{nonce}", {"hostname": hostname, "database": database["ok"]}, timeout=300)
