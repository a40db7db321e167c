"""Who may do what, for every route (issue 12): one table, one row per URL name (and
dashboard fragment, and HTTP method), with the status each of four callers gets:
anonymous, the objects' owner, another user (a colleague) and staff.

The objects in the URLs belong to the owner. Another user must get 404 for them (never
403 or a page that says they exist); staff see every endpoint and model version, but API
tokens stay personal. Dashboard pages sign in with a session, the REST API with a token.
A route, a fragment or a REST method added later without a row here fails
`test_every_route_is_in_the_table`; a method a view answers without a row fails
`test_methods_without_a_row_are_refused`.

Django's admin (`admin:*`) is left out of the table: every one of its views sits behind
its own staff check, which `test_admin_is_for_staff_only` asks of its index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from deployer.models import ApiToken, Deployment, Endpoint, ModelVersion, Shadow
from deployer.services.tokens import api_token_create
from testsupport.factories import make_endpoint, make_model_version, make_shadow

ROLES = ("anonymous", "owner", "colleague", "staff")
# The dashboard's polling fragments answer 286 (htmx: stop polling) once nothing is in progress.
STOP = 286
# Readiness reports the machine, not the caller: 503 while the session's worker is not up.
READY = (200, 503)


@dataclass(frozen=True)
class Row:
    """Expected statuses, in ROLES order; a tuple where the answer may be either."""

    anonymous: int | tuple[int, ...]
    owner: int | tuple[int, ...]
    colleague: int | tuple[int, ...]
    staff: int | tuple[int, ...]
    data: str = ""  # a key of BODIES


def row(
    anonymous: int | tuple[int, ...],
    owner: int | tuple[int, ...],
    colleague: int | tuple[int, ...],
    staff: int | tuple[int, ...],
    data: str = "",
) -> Row:
    return Row(anonymous, owner, colleague, staff, data)


# (URL name, ?fragment=, method) -> statuses. Dashboard pages send anonymous callers to the
# login page (302); the REST API answers them 401.
TABLE: dict[tuple[str, str, str], Row] = {
    ("healthz", "", "GET"): row(200, 200, 200, 200),
    ("readyz", "", "GET"): row(READY, READY, READY, READY),
    ("login", "", "GET"): row(200, 200, 200, 200),
    ("login", "", "POST"): row(200, 200, 200, 200, data="bad_login"),
    ("login", "", "PUT"): row(200, 200, 200, 200),  # FormView treats PUT as POST
    ("logout", "", "POST"): row(302, 302, 302, 302),
    ("api-schema", "", "GET"): row(200, 200, 200, 200),
    ("api-docs", "", "GET"): row(200, 200, 200, 200),
    ("api-root", "", "GET"): row(401, 200, 200, 200),
    ("api-token-list", "", "GET"): row(401, 200, 200, 200),
    ("api-token-list", "", "POST"): row(401, 201, 201, 201, data="token"),
    ("api-token-detail", "", "GET"): row(401, 200, 404, 404),
    ("api-token-detail", "", "DELETE"): row(401, 204, 404, 404),
    ("model-version-list", "", "GET"): row(401, 200, 200, 200),
    ("model-version-list", "", "POST"): row(401, 400, 400, 400, data="no_file"),
    ("model-version-detail", "", "GET"): row(401, 200, 404, 200),
    ("model-version-detail", "", "DELETE"): row(401, 204, 404, 204),
    ("endpoint-list", "", "GET"): row(401, 200, 200, 200),
    ("cost-summary", "", "GET"): row(401, 200, 200, 200),
    # Another user cannot name the owner's model (400: no such model); staff can see it but
    # an endpoint serves only its own owner's models.
    ("endpoint-list", "", "POST"): row(401, 202, 400, 400, data="new_endpoint"),
    ("endpoint-detail", "", "GET"): row(401, 200, 404, 200),
    ("endpoint-detail", "", "DELETE"): row(401, 202, 404, 202),
    ("endpoint-deployments", "", "POST"): row(401, 202, 404, 202, data="other_version"),
    ("endpoint-logs", "", "GET"): row(401, 200, 404, 200),
    ("endpoint-rollback", "", "POST"): row(401, 202, 404, 202),
    ("endpoint-rotate-key", "", "POST"): row(401, 200, 404, 200),
    ("endpoint-stop", "", "POST"): row(401, 202, 404, 202),
    # The endpoint is live: only a stopped one starts (409), but the caller was let through.
    ("endpoint-start", "", "POST"): row(401, 409, 404, 409),
    # The endpoint's shadow has ended: it is shown, a new one starts, and there is none to
    # promote or stop (409, but the caller was let through).
    ("endpoint-shadow", "", "GET"): row(401, 200, 404, 200),
    ("endpoint-shadow", "", "POST"): row(401, 202, 404, 202, data="shadow"),
    ("endpoint-shadow-promote", "", "POST"): row(401, 409, 404, 409),
    ("endpoint-shadow-stop", "", "POST"): row(401, 409, 404, 409),
    # No runtime answers in this test: the gateway's 503 means the request was let through.
    ("endpoint-invocations", "", "POST"): row(401, 503, 404, 503, data="csv"),
    # The public route knows API keys, not users: without the key, 403 for everyone.
    ("public-invocations", "", "POST"): row(403, 403, 403, 403, data="csv"),
    ("webui:home", "", "GET"): row(302, 302, 302, 302),
    ("webui:model_list", "", "GET"): row(302, 200, 200, 200),
    ("webui:model_list", "rows", "GET"): row(302, STOP, STOP, STOP),
    ("webui:model_upload", "", "GET"): row(302, 200, 200, 200),
    ("webui:model_upload", "", "POST"): row(302, 400, 400, 400, data="no_file"),
    ("webui:model_detail", "", "GET"): row(302, 200, 404, 200),
    ("webui:model_detail", "inspection", "GET"): row(302, STOP, 404, STOP),
    # Staff see the model, but an endpoint serves only its owner's models: the form says so.
    ("webui:model_deploy", "", "POST"): row(302, 302, 404, 400, data="deploy"),
    ("webui:endpoint_list", "", "GET"): row(302, 200, 200, 200),
    ("webui:endpoint_list", "changes", "GET"): row(302, STOP, STOP, STOP),
    ("webui:endpoint_detail", "", "GET"): row(302, 200, 404, 200),
    ("webui:endpoint_detail", "overview", "GET"): row(302, STOP, 404, STOP),
    ("webui:endpoint_detail", "chart", "GET"): row(302, 200, 404, 200),
    ("webui:endpoint_logs", "", "GET"): row(302, STOP, 404, STOP),
    ("webui:endpoint_invoke", "", "POST"): row(302, 200, 404, 200, data="invoke"),
    ("webui:endpoint_update", "", "POST"): row(302, 302, 404, 302, data="update"),
    ("webui:endpoint_rollback", "", "POST"): row(302, 302, 404, 302),
    ("webui:endpoint_stop", "", "POST"): row(302, 302, 404, 302),
    ("webui:endpoint_start", "", "POST"): row(302, 302, 404, 302),
    # The shadow ended: the panel answers 286; a new one starts; promote and stop say there
    # is no shadow (a message, then back to the page).
    ("webui:endpoint_detail", "shadow", "GET"): row(302, STOP, 404, STOP),
    ("webui:endpoint_shadow", "", "POST"): row(302, 302, 404, 302, data="shadow_form"),
    ("webui:endpoint_shadow_promote", "", "POST"): row(302, 302, 404, 302),
    ("webui:endpoint_shadow_stop", "", "POST"): row(302, 302, 404, 302),
    ("webui:endpoint_delete", "", "GET"): row(302, 200, 404, 200),
    ("webui:endpoint_delete", "", "POST"): row(302, 302, 404, 302),
    ("webui:endpoint_rotate_key", "", "POST"): row(302, 200, 404, 200),
    ("webui:token_list", "", "GET"): row(302, 200, 200, 200),
    ("webui:token_list", "", "POST"): row(302, 200, 200, 200, data="token"),
    ("webui:token_revoke", "", "POST"): row(302, 302, 404, 404),
}


@dataclass
class Owned:
    """The owner's objects that fill the URLs (`spare`: a model version no endpoint uses)."""

    model: ModelVersion
    spare: ModelVersion
    other_version: ModelVersion
    endpoint: Endpoint
    token: ApiToken


@pytest.fixture
def owned(owner: User) -> Owned:
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    other_version = make_model_version(owner, status=ModelVersion.Status.READY)
    # Public, live, with a finished rollout, an earlier version and a shadow that ended:
    # every action applies.
    endpoint = make_endpoint(
        owner, "owned", model_version=model, previous_model_version=other_version, status=Endpoint.Status.LIVE
    )
    endpoint.public = True
    endpoint.current_deployment = Deployment.objects.create(
        endpoint=endpoint, model_version=model, kind=Deployment.Kind.CREATE, status=Deployment.Status.SUCCEEDED
    )
    endpoint.save()
    make_shadow(endpoint, other_version, status=Shadow.Status.ENDED)
    spare = make_model_version(owner, "spare", status=ModelVersion.Status.READY)
    return Owned(model, spare, other_version, endpoint, api_token_create(user=owner, name="owned").token)


def _bodies(owned: Owned) -> dict[str, dict[str, Any]]:
    return {
        "": {},
        "bad_login": {"username": "owner", "password": "not-the-password"},
        "token": {"name": "another"},
        "no_file": {"name": "iris"},
        "new_endpoint": {"name": "brand-new", "model": owned.model.pk},
        "other_version": {"model": owned.other_version.pk},
        "csv": {},
        "deploy": {"name": "brand-new", "target": "local", "options": "{}"},
        "invoke": {"payload": "a,b\n1,2\n", "content_type": "text/csv"},
        "update": {"model_version": owned.other_version.pk},
        "shadow": {"model": owned.other_version.pk, "sample_percent": 10, "duration": "2h"},
        "shadow_form": {"model_version": owned.other_version.pk, "sample_percent": 10, "duration": "2h"},
    }


def _url(name: str, owned: Owned) -> str:
    kwargs: dict[str, Any] = {}
    pattern = _patterns()[name]
    if "name" in pattern.pattern.regex.groupindex or "<slug:name>" in str(pattern.pattern):
        kwargs["name"] = owned.endpoint.name
    if "pk" in pattern.pattern.regex.groupindex or "<int:pk>" in str(pattern.pattern):
        kwargs["pk"] = owned.token.pk if "token" in name else owned.spare.pk
    return reverse(name, kwargs=kwargs)


def _client(role: str, url: str, users: dict[str, User]) -> Client:
    # An address of its own (still loopback), so other tests' failed logins do not count.
    client = Client(REMOTE_ADDR="127.0.0.12")
    if role == "anonymous":
        return client
    if url.startswith("/api/v1/"):
        # The REST API as its clients call it: with a token.
        client.defaults["HTTP_AUTHORIZATION"] = f"Token {api_token_create(user=users[role]).secret}"
    else:
        client.force_login(users[role])
    return client


def _send(client: Client, method: str, url: str, data: dict[str, Any], fragment: str) -> Any:
    headers = {"HX-Request": "true"} if fragment else {}
    if fragment:
        url = f"{url}?fragment={fragment}"
    if method == "GET":
        return client.get(url, headers=headers)
    if method == "POST" and url.endswith("/invocations"):
        return client.post(url, data=b"a,b\n1,2\n", content_type="text/csv", headers=headers)
    if method == "POST":
        return client.post(url, data=data, headers=headers)
    return client.generic(method, url, headers=headers)


@pytest.fixture(autouse=True)
def _quick_users_and_no_lockout(settings: Any) -> None:
    # Users are made for every row: a cheap hasher. The login rows fail on purpose, more often
    # than the login throttle allows one username or address (webui/login.py).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_FAILURES_PER_USERNAME = settings.LOGIN_FAILURES_PER_ADDRESS = 1000


@pytest.mark.parametrize(("name", "fragment", "method"), list(TABLE), ids=lambda value: value or "-")
def test_each_caller_gets_the_status_in_the_table(
    name: str, fragment: str, method: str, owned: Owned, owner: User, colleague: User, staff: User
) -> None:
    entry = TABLE[(name, fragment, method)]
    url = _url(name, owned)
    users = {"owner": owner, "colleague": colleague, "staff": staff}
    answers: dict[str, Any] = {}
    for role in ROLES:
        # Each caller meets the objects as they were: what another's request changed is undone.
        with transaction.atomic():
            response = _send(_client(role, url, users), method, url, _bodies(owned)[entry.data], fragment)
            transaction.set_rollback(True)
        expected = getattr(entry, role)
        if response.status_code not in (expected if isinstance(expected, tuple) else (expected,)):
            answers[role] = (response.status_code, response.content[:200])
        elif response.status_code == 302 and role == "anonymous" and not url.startswith("/accounts/"):
            assert response["Location"].startswith(reverse("login")), "anonymous callers are sent to sign in"
    assert answers == {}, f"{method} {url} {fragment}: not the table's statuses"


def _walk(resolver: URLResolver, namespace: str = "") -> dict[str, URLPattern]:
    found: dict[str, URLPattern] = {}
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}:{pattern.namespace}" if namespace and pattern.namespace else pattern.namespace
            found |= _walk(pattern, inner or namespace)
        elif pattern.name:
            # The first pattern of a name is the one reverse() builds without a format suffix.
            found.setdefault(f"{namespace}:{pattern.name}" if namespace else pattern.name, pattern)
    return found


def _patterns() -> dict[str, URLPattern]:
    return {name: pattern for name, pattern in _walk(get_resolver()).items() if not name.startswith("admin:")}


def _dashboard_fragments() -> set[str]:
    """The `?fragment=` values webui/views.py compares against."""
    source = (Path(__file__).resolve().parents[2] / "webui" / "views.py").read_text()
    return set(re.findall(r'fragment"?\)? == "([\w-]+)"', source))


def test_every_route_is_in_the_table() -> None:
    patterns = _patterns()
    named = {name for name, _, _ in TABLE}
    assert set(patterns) - named == set(), "routes without a row in TABLE"
    assert named - set(patterns) == set(), "rows for routes that no longer exist"
    assert _dashboard_fragments() == {fragment for _, fragment, _ in TABLE if fragment}
    for name, pattern in patterns.items():
        actions = getattr(pattern.callback, "actions", None)
        if actions:  # a DRF viewset: the methods it routes
            routed = {method.upper() for method in actions} - {"HEAD"}  # HEAD: GET without a body
            assert routed == {m for n, f, m in TABLE if n == name and not f}, name


@pytest.mark.parametrize("name", sorted({name for name, _, _ in TABLE}))
def test_methods_without_a_row_are_refused(name: str, owned: Owned, owner: User, staff: User) -> None:
    url = _url(name, owned)
    client = _client("staff", url, {"staff": staff})
    for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - {m for n, _, m in TABLE if n == name}:
        response = _send(client, method, url, {}, "")
        assert response.status_code in (403, 405), f"{method} {url} answered {response.status_code}"


def test_admin_is_for_staff_only(owner: User, colleague: User, staff: User) -> None:
    url = reverse("admin:index")
    assert Client().get(url).status_code == 302
    for user, status in ((owner, 302), (colleague, 302), (staff, 200)):
        client = Client()
        client.force_login(user)
        assert client.get(url).status_code == status, user.username
