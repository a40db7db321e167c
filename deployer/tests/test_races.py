"""Concurrent requests through the real web server (gunicorn, four worker processes) on
PostgreSQL: twelve clients released together by a barrier update, delete, create or upload
the same thing. Exactly one wins; the others get the designed answer (409 for a rollout
refused, 202 for a delete already under way, 400 for a name taken, 200 with the existing
version for the same bytes); nothing is recorded twice and no deployment is left without
its steps or its queued task. No Celery worker reads their queue (the web server has a Redis
broker of its own, which the session's worker does not watch): the tasks wait there, where
the tests count them.

Row locks, conditional updates and unique constraints are what make this hold: see
docs/testing.md ("Races") for which protection each test fails without.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from deployer import task_names
from deployer.models import Deployment, Endpoint, ModelVersion, Shadow
from deployer.services.endpoints import endpoint_create
from deployer.services.tokens import api_token_create
from deployer.targets import get_target
from deployer.tests.intake_support import tar_gz
from testsupport.concurrency import Gate, queue_clear, queued_task_args, race
from testsupport.factories import make_model_version, make_user
from testsupport.services import RedisServer, WebServer, session_database_url

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The races are PostgreSQL's (row locks, the gate's table lock); SQLite runs one writer at a time.
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="PostgreSQL only"
    ),
]

CLIENTS = 12
WORKERS = 4
# Requests line up at their first read of these tables (testsupport/concurrency.py): the
# endpoint (the views' lookup, or the quota check of a creation) and the model versions (an
# upload's look for the same bytes).
AT_ENDPOINTS = Gate("deployer_endpoint", WORKERS)
AT_MODELS = Gate("deployer_modelversion", WORKERS)
ENDPOINTS = "/api/v1/endpoints/"
MODELS = "/api/v1/models/"


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """The races' own Redis: the session's Celery worker (started by an earlier test of a
    full run) listens on the session's Redis and would run the queued tasks mid-race."""
    server = RedisServer(None, Path(settings.DATA_DIR) / "redis-races")
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def web(django_db_setup: None, django_db_blocker: Any, broker: str) -> Iterator[WebServer]:
    """gunicorn with four worker processes: requests really run side by side. One connection
    per worker at a time (gthread would otherwise queue several in one busy worker while
    another idles), so the four requests in progress are in four processes."""
    server = WebServer(
        session_database_url(),
        Path(settings.DATA_DIR) / "web-races.log",
        workers=WORKERS,
        env={"GUNICORN_CMD_ARGS": "--worker-connections=1", "REDIS_URL": broker},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _empty_queue(broker: str) -> None:
    queue_clear(broker)


@pytest.fixture(scope="module")
def lm_rds(r_models: Path) -> bytes:
    return (r_models / "lm" / "model.rds").read_bytes()


Call = Callable[[], requests.Response]


def _client(web: WebServer, user: User) -> Callable[..., Call]:
    """call(method, path, **kwargs) -> a request to send later, with the user's API token."""
    headers = {"Authorization": f"Token {api_token_create(user=user).secret}"}

    def call(method: str, path: str, **kwargs: Any) -> Call:
        return lambda: requests.request(method, web.url + path, headers=headers, timeout=60, **kwargs)

    return call


def _ready(owner: User) -> ModelVersion:
    return make_model_version(owner, status=ModelVersion.Status.READY)


def _live_endpoint(owner: User, name: str = "race") -> Endpoint:
    """An endpoint live on its first version, its creation finished, nothing queued."""
    first = _ready(owner)
    endpoint = endpoint_create(owner=owner, name=name, model_version=first).endpoint
    Deployment.objects.filter(endpoint=endpoint).update(status=Deployment.Status.SUCCEEDED, finished_at=timezone.now())
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.LIVE, model_version=first)
    endpoint.refresh_from_db()
    return endpoint


def _assert_no_server_error(statuses: Any) -> None:
    assert not [status for status in statuses if status >= 500], statuses


def _assert_consistent(endpoint: Endpoint, broker: str) -> list[Deployment]:
    """Every deployment whole (all its steps, not claimed by anyone), at most one rollout and
    one teardown unfinished, the endpoint pointing at the latest, and exactly one queued task
    for each unfinished deployment (none for a transaction that rolled back)."""
    deployments = list(Deployment.objects.filter(endpoint=endpoint).order_by("id"))
    target = get_target(endpoint.target)
    for deployment in deployments:
        assert deployment.steps.count() == len(target.steps(deployment.kind, public=endpoint.public))
        assert deployment.status != Deployment.Status.RUNNING
        assert deployment.lease_until is None
    active = [deployment for deployment in deployments if deployment.status in Deployment.ACTIVE]
    assert len([d for d in active if d.kind in Deployment.ROLLOUT_KINDS]) <= 1, active
    assert len([d for d in active if d.kind == Deployment.Kind.DELETE]) <= 1, active
    endpoint.refresh_from_db()
    assert endpoint.current_deployment_id == deployments[-1].pk
    queued = sorted(args[0] for args in queued_task_args(broker, task_names.DEPLOYMENT_ADVANCE))
    assert queued == sorted(deployment.pk for deployment in active)
    return deployments


def _kinds(endpoint: Endpoint) -> list[str]:
    return list(Deployment.objects.filter(endpoint=endpoint).order_by("id").values_list("kind", flat=True))


def test_concurrent_updates_of_one_endpoint_start_one_rollout_and_the_others_get_409(
    owner: User, web: WebServer, broker: str
) -> None:
    endpoint = _live_endpoint(owner)
    second = _ready(owner)
    update = _client(web, owner)("POST", f"{ENDPOINTS}race/deployments", json={"model": second.pk})

    outcome = race([update] * CLIENTS, gate=AT_ENDPOINTS)

    assert outcome.statuses == {202: 1, 409: CLIENTS - 1}, outcome.statuses
    assert all("deployment in progress" in r.json()["detail"] for r in outcome.results if r.status_code == 409)
    assert _kinds(endpoint) == ["create", "update"]
    _assert_consistent(endpoint, broker)


def test_updates_racing_deletes_leave_one_teardown_and_at_most_one_rollout_accepted_before_it(
    owner: User, web: WebServer, broker: str
) -> None:
    endpoint = _live_endpoint(owner)
    second = _ready(owner)
    call = _client(web, owner)
    update = call("POST", f"{ENDPOINTS}race/deployments", json={"model": second.pk})
    delete = call("DELETE", f"{ENDPOINTS}race")

    outcome = race([update, delete] * (CLIENTS // 2), gate=AT_ENDPOINTS)

    updates, deletes = outcome.results[0::2], outcome.results[1::2]
    _assert_no_server_error(outcome.statuses)
    # A delete already under way is not an error: every delete is accepted (202).
    assert [r.status_code for r in deletes] == [202] * len(deletes)
    accepted = [r for r in updates if r.status_code == 202]
    assert len(accepted) <= 1
    assert len(accepted) + [r.status_code for r in updates].count(409) == len(updates)
    # An update accepted at all was accepted before the teardown, which will cancel it.
    assert _kinds(endpoint) == ["create", *["update"] * len(accepted), "delete"]
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.DELETING
    _assert_consistent(endpoint, broker)


@pytest.mark.parametrize("mix", ["rollbacks", "rollbacks-updates-shadows"])
def test_rollbacks_racing_each_other_updates_and_shadow_starts_start_one_deployment(
    mix: str, owner: User, web: WebServer, broker: str
) -> None:
    endpoint = _live_endpoint(owner)
    Endpoint.objects.filter(pk=endpoint.pk).update(previous_model_version=_ready(owner))
    call = _client(web, owner)
    rollback = call("POST", f"{ENDPOINTS}race/rollback")
    update = call("POST", f"{ENDPOINTS}race/deployments", json={"model": _ready(owner).pk})
    shadow_body = {"model": _ready(owner).pk, "sample_percent": 50, "duration": "1h"}
    shadow = call("POST", f"{ENDPOINTS}race/shadow", json=shadow_body)
    calls = [rollback] * CLIENTS if mix == "rollbacks" else [rollback, update, shadow] * (CLIENTS // 3)

    outcome = race(calls, gate=AT_ENDPOINTS)

    _assert_no_server_error(outcome.statuses)
    assert outcome.statuses == {202: 1, 409: CLIENTS - 1}, outcome.statuses
    won = [kind for kind in _kinds(endpoint) if kind != "create"]
    assert len(won) == 1
    assert won[0] in ({"rollback"} if mix == "rollbacks" else {"rollback", "update", "shadow"})
    assert Shadow.objects.filter(endpoint=endpoint).count() == (won == ["shadow"])
    _assert_consistent(endpoint, broker)


def test_concurrent_deletes_record_one_teardown_and_all_answer_202(owner: User, web: WebServer, broker: str) -> None:
    endpoint = _live_endpoint(owner)
    call = _client(web, owner)

    outcome = race([call("DELETE", f"{ENDPOINTS}race")] * CLIENTS, gate=AT_ENDPOINTS)

    assert outcome.statuses == {202: CLIENTS}, outcome.statuses
    assert {r.json()["status"] for r in outcome.results} == {"deleting"}
    assert _kinds(endpoint) == ["create", "delete"]
    _assert_consistent(endpoint, broker)


@pytest.mark.parametrize("owners", [1, 3], ids=["one-owner", "three-owners"])
def test_concurrent_creations_of_one_name_create_one_endpoint_and_the_others_get_400(
    owners: int, owner: User, web: WebServer, broker: str
) -> None:
    users = [owner, *(make_user(f"racer-{i}") for i in range(1, owners))]
    calls = []
    for user in users:
        call, model = _client(web, user), _ready(user)
        calls.append(call("POST", ENDPOINTS, json={"name": "taken", "model": model.pk}))

    outcome = race([calls[i % owners] for i in range(CLIENTS)], gate=AT_ENDPOINTS)

    assert outcome.statuses == {202: 1, 400: CLIENTS - 1}, outcome.statuses
    refused = [r.json() for r in outcome.results if r.status_code == 400]
    assert all("already exists" in body["name"][0] for body in refused), refused
    endpoint = Endpoint.objects.get(name="taken")
    assert Endpoint.objects.count() == 1
    assert _kinds(endpoint) == ["create"]
    _assert_consistent(endpoint, broker)


def _stored_files() -> set[Path]:
    root = Path(settings.DATA_DIR) / "artifacts" / "models"
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def _upload_temp_files() -> list[Path]:
    return [path for path in Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir() if path.name.endswith(".upload")]


def test_concurrent_uploads_of_the_same_bytes_store_one_version_and_the_others_get_it_with_200(
    owner: User, web: WebServer, broker: str, lm_rds: bytes
) -> None:
    call = _client(web, owner)
    before = _stored_files()
    uploads = [call("POST", MODELS, data={"name": "cars"}, files={"file": ("model.rds", lm_rds)})] * CLIENTS

    outcome = race(uploads, gate=AT_MODELS)

    assert outcome.statuses == {201: 1, 200: CLIENTS - 1}, outcome.statuses
    ids = {r.json()["id"] for r in outcome.results}
    assert len(ids) == 1
    version = ModelVersion.objects.get(owner=owner, name="cars")
    assert (version.pk, version.version) == (ids.pop(), 1)
    assert _stored_files() - before == {Path(version.artifact.path)}
    assert not _upload_temp_files()
    assert queued_task_args(broker, task_names.MODEL_VERSION_INSPECT) == [[version.pk]]


def test_concurrent_uploads_of_different_bytes_under_one_name_number_every_version_once(
    owner: User, web: WebServer, broker: str, lm_rds: bytes
) -> None:
    call = _client(web, owner)
    before = _stored_files()
    bundles = [tar_gz({"model.rds": lm_rds, "predict.R": f"# hooks {i}\n".encode()}) for i in range(CLIENTS)]
    uploads = [
        call("POST", MODELS, data={"name": "cars"}, files={"file": ("model.tar.gz", bundle)}) for bundle in bundles
    ]

    outcome = race(uploads, gate=AT_MODELS)

    assert outcome.statuses == {201: CLIENTS}, outcome.statuses
    versions = ModelVersion.objects.filter(owner=owner, name="cars")
    assert sorted(versions.values_list("version", flat=True)) == list(range(1, CLIENTS + 1))
    assert _stored_files() - before == {Path(version.artifact.path) for version in versions}
    assert sorted(args[0] for args in queued_task_args(broker, task_names.MODEL_VERSION_INSPECT)) == sorted(
        version.pk for version in versions
    )
