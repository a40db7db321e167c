"""The WSGI fast path for the two prediction routes answers exactly what Django answers.

Each request goes once through Django alone and once through the fast path in front of
it (which must not hand it to Django), and the two answers are compared whole: status,
every header, body. Requests the fast path must leave to Django are checked to reach it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import override_settings

from deployer.api.fast_path import InvocationFastPath, WSGIApp
from deployer.models import Endpoint
from deployer.services import gateway
from deployer.services.tokens import api_token_create
from deployer.tests.gateway_support import echo_socket, live_public

__all__ = ["echo_socket"]  # a fixture: pytest finds it in this module's namespace

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_gateway_routes")]

Answer = tuple[str, dict[str, str], bytes]


class CountingApp:
    """Django's application, counting the requests handed to it."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.calls += 1
        return self.app(environ, start_response)


@pytest.fixture(autouse=True)
def _keep_the_test_transaction_open() -> Iterator[None]:
    # What Django's test client does: request signals would close the connection that
    # holds this test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def apps() -> tuple[WSGIApp, InvocationFastPath, CountingApp]:
    django_app = get_wsgi_application()
    behind = CountingApp(get_wsgi_application())
    return django_app, InvocationFastPath(behind), behind


def call(app: WSGIApp, path: str, *, body: bytes = b"a,b\n1,2\n", method: str = "POST", **headers: Any) -> Answer:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "CONTENT_TYPE": "text/csv",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        **headers,
    }
    started: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started["status"], started["headers"] = status, dict(response_headers)

    result = app(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started["status"], started["headers"], content


def same_answer(django_answer: Answer, fast_answer: Answer) -> None:
    # The measured round trip differs from call to call; its presence must not.
    for _, headers, _ in (django_answer, fast_answer):
        if "X-Rdeploy-Runtime-Ms" in headers:
            headers["X-Rdeploy-Runtime-Ms"] = "<ms>"
    assert fast_answer == django_answer


def test_public_route_answers_like_django_for_every_outcome(
    owner: User, echo_socket: str, apps: tuple[WSGIApp, InvocationFastPath, CountingApp]
) -> None:
    django_app, fast_app, behind = apps
    key = live_public(owner, "open", echo_socket)
    model = live_public(owner, "private", echo_socket)
    Endpoint.objects.filter(name="private").update(public=False)
    live_public(owner, "stopped", echo_socket)
    Endpoint.objects.filter(name="stopped").update(status=Endpoint.Status.FAILED)
    cases: list[tuple[str, dict[str, Any], bytes]] = [
        ("/e/open/invocations", {"HTTP_X_API_KEY": key, "HTTP_ACCEPT": "text/csv", "HTTP_COOKIE": "x=1"}, b"1,2\n"),
        ("/e/open/invocations", {"HTTP_X_API_KEY": "rdk_wrong"}, b"1,2\n"),
        ("/e/open/invocations", {}, b"1,2\n"),
        ("/e/nowhere/invocations", {"HTTP_X_API_KEY": key}, b"1,2\n"),
        ("/e/private/invocations", {"HTTP_X_API_KEY": model}, b"1,2\n"),
        ("/e/stopped/invocations", {"HTTP_X_API_KEY": key}, b"1,2\n"),
        ("/e/open/invocations", {"HTTP_X_API_KEY": key}, b"x" * (gateway.MAX_BODY_BYTES + 1)),
    ]
    for path, headers, body in cases:
        same_answer(call(django_app, path, body=body, **headers), call(fast_app, path, body=body, **headers))
    assert behind.calls == 0

    status, headers, content = call(fast_app, "/e/open/invocations", body=b"1,2\n", HTTP_X_API_KEY=key)
    assert status == "200 OK"
    assert json.loads(content)["body"] == "1,2\n"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"


def test_throttled_public_requests_get_the_same_429(
    owner: User, echo_socket: str, apps: tuple[WSGIApp, InvocationFastPath, CountingApp]
) -> None:
    django_app, fast_app, behind = apps
    answers = []
    for app, name in ((django_app, "one"), (fast_app, "two")):
        key = live_public(owner, name, echo_socket, throttle={"rate": 0.01, "burst": 1})
        call(app, f"/e/{name}/invocations", HTTP_X_API_KEY=key)
        answers.append(call(app, f"/e/{name}/invocations", HTTP_X_API_KEY=key))
    assert answers[0][0] == "429 Too Many Requests"
    same_answer(*answers)
    assert behind.calls == 0


def test_token_route_answers_like_django_for_owner_stranger_and_bad_tokens(
    owner: User, colleague: User, echo_socket: str, apps: tuple[WSGIApp, InvocationFastPath, CountingApp]
) -> None:
    django_app, fast_app, behind = apps
    live_public(owner, "mine", echo_socket)
    own = api_token_create(user=owner, name="ci").secret
    strangers = api_token_create(user=colleague, name="ci").secret
    path = "/api/v1/endpoints/mine/invocations"
    for authorization in (f"Token {own}", f"Token {strangers}", "Token rdp_nope", "Bearer x", "Token a b"):
        same_answer(
            call(django_app, path, HTTP_AUTHORIZATION=authorization),
            call(fast_app, path, HTTP_AUTHORIZATION=authorization),
        )
    assert behind.calls == 0
    status, _, content = call(fast_app, path, HTTP_AUTHORIZATION=f"Token {own}")
    assert status == "200 OK"
    assert json.loads(content)["body"] == "a,b\n1,2\n"


def test_an_endpoint_at_its_in_flight_limit_gets_the_same_503_on_both_routes_and_paths(
    owner: User,
    echo_socket: str,
    apps: tuple[WSGIApp, InvocationFastPath, CountingApp],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    django_app, fast_app, behind = apps
    key = live_public(owner, "busy", echo_socket)
    token = api_token_create(user=owner, name="ci").secret
    # As if GATEWAY_MAX_INFLIGHT requests to it were in progress in this process.
    monkeypatch.setitem(gateway._inflight, Endpoint.objects.get(name="busy").pk, 4)
    # No waiting for a slot: the refusal this test is about comes at once.
    with override_settings(GATEWAY_MAX_INFLIGHT=4, GATEWAY_MAX_QUEUED=0):
        cases: list[tuple[str, dict[str, Any]]] = [
            ("/e/busy/invocations", {"HTTP_X_API_KEY": key}),
            ("/api/v1/endpoints/busy/invocations", {"HTTP_AUTHORIZATION": f"Token {token}"}),
        ]
        for path, headers in cases:
            answer = call(fast_app, path, **headers)
            assert answer[0] == "503 Service Unavailable"
            assert answer[1]["Retry-After"] == "1"
            assert "4 requests in progress" in json.loads(answer[2])["message"]
            same_answer(call(django_app, path, **headers), answer)
    assert behind.calls == 0


def test_requests_the_fast_path_does_not_own_are_left_to_django(
    owner: User, echo_socket: str, apps: tuple[WSGIApp, InvocationFastPath, CountingApp]
) -> None:
    django_app, fast_app, behind = apps
    key = live_public(owner, "open", echo_socket)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/e/open/invocations", {"HTTP_X_API_KEY": key}),
        ("POST", "/e/open/invocations/", {"HTTP_X_API_KEY": key}),
        ("POST", "/e/open/invocations", {"HTTP_X_API_KEY": key, "HTTP_HOST": "evil.example"}),
        # A browser session's invocation needs Django's session, auth and CSRF checks.
        ("POST", "/api/v1/endpoints/open/invocations", {}),
        ("POST", "/healthz", {}),
    ]
    for number, (method, path, headers) in enumerate(cases, start=1):
        answer = call(fast_app, path, method=method, **headers)
        assert behind.calls == number, path
        # Django answered it (its pages carry a fresh CSRF token: compare the status).
        assert answer[0] == call(django_app, path, method=method, **headers)[0]
    assert call(fast_app, "/e/open/invocations", HTTP_X_API_KEY=key, HTTP_HOST="evil.example")[0].startswith("400")


def test_https_redirect_and_hsts_apply_on_the_fast_path_too(owner: User, echo_socket: str) -> None:
    key = live_public(owner, "open", echo_socket)
    with override_settings(SECURE_SSL_REDIRECT=True, SECURE_HSTS_SECONDS=3600):
        django_app = get_wsgi_application()
        fast_app = InvocationFastPath(CountingApp(get_wsgi_application()))
        plain: dict[str, Any] = {"HTTP_X_API_KEY": key}
        redirected = call(fast_app, "/e/open/invocations", **plain)
        assert redirected[0] == "301 Moved Permanently"
        assert redirected[1]["Location"] == "https://testserver/e/open/invocations"
        same_answer(call(django_app, "/e/open/invocations", **plain), redirected)

        secure: dict[str, Any] = {**plain, "wsgi.url_scheme": "https", "SERVER_PORT": "443"}
        answer = call(fast_app, "/e/open/invocations", **secure)
        assert answer[0] == "200 OK"
        assert answer[1]["Strict-Transport-Security"] == "max-age=3600"
        same_answer(call(django_app, "/e/open/invocations", **secure), answer)
