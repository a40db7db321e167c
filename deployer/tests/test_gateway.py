"""The public route /e/<name>/invocations: key, body limit, per-key throttle, forwarding.

A stand-in runtime (a tiny HTTP server echoing what reached it) takes the place of R
here; the end-to-end tests put the real R runtime behind the same route."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from deployer.models import Endpoint, ModelVersion
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_rotate_key
from deployer.tests.gateway_support import echo_socket, live_public
from testsupport.factories import make_model_version

__all__ = ["echo_socket"]  # a fixture: pytest finds it in this module's namespace

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_gateway_routes")]


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


def test_requests_above_the_rate_and_burst_get_429_until_the_bucket_refills(owner: User, echo_socket: str) -> None:
    key = live_public(owner, "limited", echo_socket, throttle={"rate": 1, "burst": 3})

    started = time.monotonic()
    statuses = [call("limited", key)[0] for _ in range(5)]
    elapsed = time.monotonic() - started
    # The burst passes at once; then one token per second (at most one refilled meanwhile).
    assert statuses[:3] == [200, 200, 200]
    assert statuses.count(200) <= 3 + int(elapsed)
    assert 429 in statuses
    status, body = call("limited", key)
    assert status == 429
    assert body["message"] == "Too Many Requests"
    assert int(body["_headers"]["Retry-After"]) >= 1  # type: ignore[index]

    time.sleep(1.1)  # one token back
    assert call("limited", key)[0] == 200


def test_leased_tokens_never_let_a_key_past_its_burst_and_rate(owner: User, echo_socket: str) -> None:
    key = live_public(owner, "busy", echo_socket, throttle={"rate": 100, "burst": 100})
    started = time.monotonic()
    statuses = [call("busy", key)[0] for _ in range(150)]
    elapsed = time.monotonic() - started
    allowed = statuses.count(200)
    # At most the burst, what the rate refilled meanwhile, and one lease of this process.
    assert allowed <= 100 + 100 * elapsed + 5
    assert allowed >= min(150, 100)
    assert set(statuses) <= {200, 429}


def test_each_key_has_its_own_bucket(owner: User, echo_socket: str) -> None:
    first = live_public(owner, "one", echo_socket, throttle={"rate": 1, "burst": 1})
    second = live_public(owner, "two", echo_socket, throttle={"rate": 1, "burst": 1})
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
