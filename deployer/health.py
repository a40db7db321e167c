"""The state of what rdeploy depends on, for `GET /healthz`."""

from __future__ import annotations

from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.db import connection


def system_health() -> dict[str, Any]:
    checks = {"database": _database(), "broker": _broker(), "worker": _worker()}
    return {"ok": all(check["ok"] for check in checks.values()), **checks}


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


def worker_selfcheck(*, nonce: str, hostname: str) -> None:
    """Proves a worker can reach the database and the cache: answers under `nonce`."""
    from django.core.cache import cache

    database = _database()
    cache.set(f"selfcheck:{nonce}", {"hostname": hostname, "database": database["ok"]}, timeout=300)
