"""Redis stopped and started again under a running web app (issue 11, "Redis down").

The public route's throttle lives in Redis: without it the route fails closed (503 with
Retry-After and a JSON reason, never an unthrottled call, never a 500) and throttles
again once Redis is back, without restarting the web app. Everything else a signed-in
user or a REST client reads (dashboard pages, endpoints, model versions, logs) and the
token invocation route (its route and token caches are in process memory, no throttle)
keep working; the readiness report (/readyz) names the broker as failing.

The Redis stopped here is the test's own, on a port of its own, and the web app is a
real gunicorn pointed at it: the session's shared Redis keeps serving every other test.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deployer.models import ModelVersion
from deployer.services import gateway
from deployer.services.tokens import api_token_create
from deployer.tests.gateway_support import echo_socket, live_public
from testsupport.services import RedisServer, WebServer, session_database_url

__all__ = ["echo_socket"]  # a fixture: pytest finds it in this module's namespace

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(None, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def web_on_private_redis(private_redis: RedisServer, tmp_path: Path) -> Iterator[WebServer]:
    """gunicorn on the test database whose Redis (throttle, cache, broker) is private_redis."""
    server = WebServer(
        session_database_url(),
        tmp_path / "web.log",
        workers=1,
        threads=2,
        env={"REDIS_URL": private_redis.url},
    )
    server.start()
    yield server
    server.stop()


class Browser:
    """HTTP to the live web app, keeping cookies; answers (status, headers, body), errors included."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        url = self.base + path
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310 (local)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), error.read()

    def sign_in(self, username: str, password: str) -> None:
        _, _, page = self.request("GET", "/accounts/login/")
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, "the sign-in page has a CSRF token"
        form = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": match[1].decode(), "username": username, "password": password}
        )
        status, _, page = self.request(
            "POST",
            "/accounts/login/",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Referer": self.base + "/accounts/login/"},
        )
        assert status == 200, page[:500]
        assert b"Log out" in page  # signed in: the redirect's page shows the account


def public_call(web: Browser, name: str, key: str) -> tuple[int, dict[str, str], bytes]:
    return web.request("POST", f"/e/{name}/invocations", b"a,b\n1,2\n", {"x-api-key": key, "Content-Type": "text/csv"})


@pytest.fixture
def open_endpoint(owner: User, echo_socket: str) -> str:
    """A public endpoint answered by an echo runtime; its bucket of 2 refills one token per
    1000 s, so nothing a slow machine does between two calls refills it."""
    return live_public(owner, "open", echo_socket, throttle={"rate": 0.001, "burst": 2})


def test_the_public_route_fails_closed_while_redis_is_down_and_throttles_again_once_it_is_back(
    open_endpoint: str, private_redis: RedisServer, web_on_private_redis: WebServer
) -> None:
    web = Browser(web_on_private_redis.url)
    assert public_call(web, "open", open_endpoint)[0] == 200

    private_redis.stop()
    refusals = [public_call(web, "open", open_endpoint) for _ in range(3)]

    for status, headers, body in refusals:
        assert status == 503
        assert headers["Retry-After"] == str(gateway.THROTTLE_DOWN_RETRY_AFTER)
        assert headers["Content-Type"] == "application/json"
        assert "Throttling is unavailable" in json.loads(body)["message"]

    private_redis.start()  # empty: the bucket starts full again
    statuses = [public_call(web, "open", open_endpoint)[0] for _ in range(3)]

    assert statuses == [200, 200, 429]

    # A restart between two calls: the first call after it is not refused for the
    # connection the restart closed (and the bucket starts full again).
    private_redis.stop()
    private_redis.start()
    assert public_call(web, "open", open_endpoint)[0] == 200


def test_dashboard_rest_reads_and_token_invocations_work_while_redis_is_down(
    owner: User, open_endpoint: str, private_redis: RedisServer, web_on_private_redis: WebServer
) -> None:
    browser = Browser(web_on_private_redis.url)
    browser.sign_in("owner", "owner-password-123")
    token = {"Authorization": f"Token {api_token_create(user=owner).secret}"}
    model_id = ModelVersion.objects.get(owner=owner).pk

    private_redis.stop()

    for path in ("/", "/endpoints/", "/endpoints/open/", "/endpoints/open/logs/", "/models/", f"/models/{model_id}/"):
        status, _, page = browser.request("GET", path)
        assert status == 200, (path, page[:300])
        assert b"open" in page or path.startswith("/models"), path
    status, _, chart = browser.request("GET", "/endpoints/open/?fragment=chart", headers={"HX-Request": "true"})
    assert status == 200
    assert b"<svg" in chart or b"chart" in chart
    rest = Browser(web_on_private_redis.url)
    for path in (
        "/api/v1/endpoints",
        "/api/v1/endpoints/open",
        "/api/v1/endpoints/open/logs",
        "/api/v1/models/",
        f"/api/v1/models/{model_id}/",
    ):
        status, _, body = rest.request("GET", path, headers=token)
        assert status == 200, (path, body[:300])
    assert json.loads(rest.request("GET", "/api/v1/endpoints/open", headers=token)[2])["name"] == "open"
    status, _, answer = rest.request(
        "POST", "/api/v1/endpoints/open/invocations", b"a,b\n1,2\n", {**token, "Content-Type": "text/csv"}
    )
    assert status == 200
    assert json.loads(answer)["body"] == "a,b\n1,2\n"


def test_readiness_names_the_broker_while_redis_is_down_and_liveness_stays_ok(
    private_redis: RedisServer, web_on_private_redis: WebServer
) -> None:
    private_redis.stop()
    web = Browser(web_on_private_redis.url)

    status, _, body = web.request("GET", "/readyz")

    assert status == 503
    report = json.loads(body)  # detailed: the caller is on this machine
    assert report["ok"] is False
    assert report["database"] == {"ok": True}
    assert report["broker"]["ok"] is False
    assert report["broker"]["error"]
    assert report["worker"]["ok"] is False  # no worker can be asked without the broker
    assert web.request("GET", "/healthz")[0] == 200  # the process itself is alive
