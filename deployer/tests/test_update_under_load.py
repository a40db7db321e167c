"""Zero failed calls under update, for real (issue 11): concurrent HTTP clients through a
gunicorn of several processes (each with its own route cache) call a local endpoint's
token and public routes without pause while a real Celery worker updates it blue/green to
another model version and rolls it back. Every call is timestamped client-side and
compared with what the pipeline records: the switch_traffic step's ``switched_at`` and the
old runtime container's ``deleted_at`` (docs/pipeline.md, "Updates under traffic")."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployer.models import Deployment, ExternalResource
from deployer.services.tokens import api_token_create
from deployer.tests.pipeline_support import iris_version, running_containers
from deployer.tests.test_pipeline import wait_endpoint
from testsupport.r_models import expected, rows_csv
from testsupport.services import WebServer, session_database_url
from testsupport.traffic import Call, Request, TrafficClients
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_worker", "no_runtime_outlives_the_test"),
]

WEB_PROCESSES = 3
CLIENTS = 6
# Calls that must start after the switch and end before the old runtime stopped: traffic
# really crossed the switch, through every process's route cache.
MIN_CALLS_IN_WINDOW = 20


@pytest.fixture(scope="module")
def web_processes(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> Iterator[WebServer]:
    """gunicorn with three worker processes, each with its own route cache, two threads each."""
    server = WebServer(
        session_database_url(), Path(settings.DATA_DIR) / "web-under-load.log", workers=WEB_PROCESSES, threads=2
    )
    server.start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Window:
    """From the switch to the new runtime until the old runtime's container was removed."""

    switched: float
    stopped: float

    def holds(self, call: Call) -> bool:
        return self.switched <= call.started and call.finished <= self.stopped


def switch_window(deployment: Deployment, previous: Deployment) -> Window:
    switched = float(deployment.steps.get(name="switch_traffic").intent["switched_at"])
    old = ExternalResource.objects.get(deployment=previous, kind=ExternalResource.Kind.CONTAINER)
    assert old.deleted_at is not None, "the old runtime was not stopped"
    return Window(switched, old.deleted_at.timestamp())


def gunicorn_workers(server: WebServer) -> int:
    assert server.process is not None
    pid = server.process.pid
    return len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def test_concurrent_clients_through_several_web_processes_see_no_failed_call_during_an_update_and_a_rollback(
    owner: User, api_client_for: Callable[[User], APIClient], iris_models: Path, web_processes: WebServer
) -> None:
    truth = expected(iris_models)
    # A row the two versions classify differently, so every answer names its version.
    row = next(i for i, (old, new) in enumerate(zip(truth["v1"], truth["v2"], strict=True)) if old != new)
    version_of = {truth["v1"][row]: 1, truth["v2"][row]: 2}
    body = rows_csv([truth["rows"][row]])
    client = api_client_for(owner)
    v1, v2 = iris_version(owner, iris_models, "v1"), iris_version(owner, iris_models, "v2")
    created = client.post(
        "/api/v1/endpoints/",
        {"name": "steady", "model": v1.pk, "public": True, "options": {"throttle": {"rate": 5000, "burst": 5000}}},
        format="json",
    )
    assert created.status_code == 202, created.json()
    api_key, token = created.json()["api_key"], api_token_create(user=owner, name="load").secret
    wait_endpoint(client, "steady", "live")
    assert gunicorn_workers(web_processes) == WEB_PROCESSES

    def plan(number: int, sequence: int) -> Request:
        headers = {"Content-Type": "text/csv"}
        if number % 2:
            return Request("public", "POST", "/e/steady/invocations", body, {**headers, "x-api-key": api_key})
        path = "/api/v1/endpoints/steady/invocations"
        return Request("token", "POST", path, body, {**headers, "Authorization": f"Token {token}"})

    def started_after(moment: float) -> int:
        return sum(call.started > moment for call in traffic.calls)

    # A connection per call: gunicorn hands kept-alive connections to one process unevenly.
    with TrafficClients(web_processes.port, CLIENTS, plan, keep_alive=False) as traffic:
        wait_for(lambda: traffic.calls_per_client_at_least(3), what="every client's first answers")
        assert client.post("/api/v1/endpoints/steady/deployments", {"model": v2.pk}, format="json").status_code == 202
        updated = wait_endpoint(client, "steady", "live", timeout=120)
        first, update = Deployment.objects.filter(endpoint__name="steady").order_by("pk")
        update_window = switch_window(update, first)
        wait_for(lambda: started_after(update_window.stopped) >= CLIENTS, what="calls after the update")

        assert client.post("/api/v1/endpoints/steady/rollback").status_code == 202
        rolled_back = wait_endpoint(client, "steady", "live", timeout=120)
        rollback = Deployment.objects.filter(endpoint__name="steady").latest("pk")
        rollback_window = switch_window(rollback, update)
        wait_for(lambda: started_after(rollback_window.stopped) >= CLIENTS, what="calls after the rollback")
    calls = traffic.stop()

    assert (updated["model"]["version"], updated["deployment"]["status"]) == (2, "succeeded")
    assert (rolled_back["model"]["version"], rolled_back["deployment"]["kind"]) == (1, "rollback")
    assert [call.describe() for call in calls if not call.ok] == []

    def version(call: Call) -> int:
        return version_of[json.loads(call.body)["predictions"][0]]

    stale = 0
    for window, old, new in ((update_window, 1, 2), (rollback_window, 2, 1)):
        crossing = [call for call in calls if window.holds(call)]
        answered = Counter(version(call) for call in crossing)
        summary = f"{len(crossing)} calls between the switch and the stop, answered by version: {dict(answered)}"
        assert len(crossing) >= MIN_CALLS_IN_WINDOW, summary
        assert set(Counter(call.kind for call in crossing)) == {"token", "public"}, summary
        assert answered[new] > 0, summary
        stale += answered[old]
    # The old runtime answered after a switch too: some process still had its route cached
    # (so it had to keep serving until the drain ended). Summed over both switches, as one
    # switch can land just before every process's cache expires.
    assert stale > 0
    # Before a switch only the old version answers; once the old runtime is gone, only the new one.
    between = [call for call in calls if update_window.stopped < call.started < rollback_window.switched]
    assert between
    assert {version(call) for call in between if call.finished < rollback_window.switched} == {2}
    assert {version(call) for call in calls if call.started > rollback_window.stopped} == {1}
    assert {version(call) for call in calls if call.finished < update_window.switched} == {1}
    serving = ExternalResource.objects.get(deployment=rollback, kind=ExternalResource.Kind.CONTAINER)
    assert running_containers("steady") == [serving.identifier]
