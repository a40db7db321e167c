"""Invocation answers are served from the dashboard's origin with a Content-Type the model
chooses: a model answering text/html must not get a page that runs on that origin
(issue 12, finding 9; deployer/api/endpoints.py's _response, both routes and both paths)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client

from deployer.models import Deployment
from deployer.services.endpoints import endpoint_create
from deployer.services.tokens import api_token_create
from deployer.tests.gateway_support import live_public, unix_runtime
from deployer.tests.test_runtime_attacks import hostile_model
from testsupport.pipeline import drive
from testsupport.services import WebServer

PAGE = b'<!doctype html><script>fetch("/api/v1/tokens/").then(r => r.text()).then(alert)</script>'
# A model whose every answer is an HTML page with a script, as a crafted .rds could make
# it (PAGE goes in an R string in single quotes).
HTML_R = (
    b"""
load_fn <- function(model_dir) list()
predict_fn <- function(model, data) "page"
output_fn <- function(prediction, accept) list(body = '"""
    + PAGE
    + b"""', content_type = "text/html; charset=utf-8")
"""
)


def assert_inert(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 200
    assert body == PAGE
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["Content-Disposition"] == "attachment"
    assert headers["X-Content-Type-Options"] == "nosniff"


def over_http(server: WebServer, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("POST", path, body=b"a\n1\n", headers={"Content-Type": "text/csv", **headers})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_runtime_outlives_the_test")
def test_an_html_answer_of_a_real_runtime_is_sandboxed_and_downloaded_on_both_routes(
    owner: User, iris_models: Path, web_server: WebServer
) -> None:
    issued = endpoint_create(
        owner=owner, name="page", model_version=hostile_model(owner, iris_models, HTML_R, {}), public=True
    )
    assert drive(issued.endpoint.current_deployment).status == Deployment.Status.SUCCEEDED  # type: ignore[arg-type]
    assert issued.api_key
    token = api_token_create(user=owner).secret
    routes = [
        ("/api/v1/endpoints/page/invocations", {"Authorization": f"Token {token}"}),
        ("/e/page/invocations", {"x-api-key": issued.api_key}),
    ]
    for path, credentials in routes:
        # gunicorn serving config.wsgi: the prediction fast path.
        assert_inert(*over_http(web_server, path, **credentials))
        # Django's own request handling (what the fast path hands anything unusual to).
        meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in credentials.items()}
        response = Client().post(path, b"a\n1\n", content_type="text/csv", **meta)  # type: ignore[arg-type]
        assert_inert(response.status_code, dict(response.headers), response.content)


class Untyped(BaseHTTPRequestHandler):
    """A runtime answering bytes without a Content-Type."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def address_string(self) -> str:
        return "gateway"

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def untyped_socket() -> Iterator[str]:
    with unix_runtime(Untyped) as path:
        yield path


@pytest.mark.django_db
def test_an_answer_without_a_type_is_bytes_not_django_default_html(owner: User, untyped_socket: str) -> None:
    key = live_public(owner, "untyped", untyped_socket)
    response = Client().post("/e/untyped/invocations", b"{}", content_type="application/json", HTTP_X_API_KEY=key)
    assert response.status_code == 200
    assert response.content == PAGE
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Security-Policy"] == "sandbox"
    assert response["Content-Disposition"] == "attachment"


@pytest.mark.django_db
def test_json_answers_and_gateway_refusals_are_sandboxed_but_not_downloads(owner: User) -> None:
    refused = Client().post("/e/nothing/invocations", b"{}", content_type="application/json", HTTP_X_API_KEY="x")
    assert refused.status_code == 403
    assert refused["Content-Type"] == "application/json"
    assert refused["Content-Security-Policy"] == "sandbox"
    assert "Content-Disposition" not in refused
