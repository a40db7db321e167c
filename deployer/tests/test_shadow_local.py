"""Shadow rollout on the local target, end to end (issue 16): real R runtimes in real
containers, a real Celery worker, and clients calling through a gunicorn of several
processes (each with its own route cache and its own copy senders).

What the shadow answered is checked against what R computes for the same rows in the
serving image (testsupport/shadow_models.py): every stored pair is one call's live and
shadow answers, so the pairs, as a multiset, equal R's answers for the calls made; the
comparison's figures (deployer/services/shadow_comparison.py) follow from those."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import shutil
import socket
import socketserver
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

from deployer.integrations.containers import cli
from deployer.integrations.containers.runtimes import SOCKET_NAME
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine, ModelVersion, Shadow, ShadowPair
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_delete, endpoint_invoke, endpoint_start, endpoint_stop
from deployer.services.images import serving_image_ensure
from deployer.services.reconciler import pipeline_reconcile
from deployer.services.shadow_comparison import shadow_comparison
from deployer.services.shadow_copies import MAX_IN_FLIGHT_PER_SHADOW, shadow_copy_offer, shadow_pairs_store
from deployer.services.shadows import shadow_end, shadow_promote, shadow_start
from deployer.services.tokens import api_token_create
from deployer.targets.base import ROUTE_CACHE_SECONDS, InvocationResult
from deployer.targets.local import LocalTarget
from deployer.targets.local.paths import endpoint_dir
from deployer.tests.pipeline_support import broken_model, finish, kill_runtime, running_containers
from tasks.pipeline import pipeline_reconcile_task
from testsupport.factories import make_endpoint, make_shadow
from testsupport.pipeline import ready_model
from testsupport.r_models import rows_csv
from testsupport.services import WebServer, session_database_url
from testsupport.shadow_models import FRAGILE_ERROR, FRAGILE_LIMIT, shadow_models
from testsupport.traffic import Call, Request, TrafficClients
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_worker", "no_runtime_outlives_the_test"),
]

WEB_PROCESSES = 3
CLIENTS = 4
# Each batch is sent at least this often in a comparison phase.
ROUNDS = 2


@pytest.fixture(scope="module")
def web_processes(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> Iterator[WebServer]:
    server = WebServer(
        session_database_url(), Path(settings.DATA_DIR) / "web-shadow.log", workers=WEB_PROCESSES, threads=2
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory, iris_models: Path) -> dict[str, Any]:
    """R's answers, computed in the serving image the test models run in."""
    return shadow_models(tmp_path_factory.mktemp("shadow-models"), serving_image_ensure(packages=[]), iris_models)


def version(owner: User, content: bytes, example_rows: list[dict[str, Any]], *, bundle: bool = False) -> ModelVersion:
    example = {"content_type": "application/json", "payload": json.dumps(example_rows), "rows": len(example_rows)}
    model_version = ready_model(owner, content, example=example)
    if bundle:
        ModelVersion.objects.filter(pk=model_version.pk).update(artifact_kind=ModelVersion.ArtifactKind.TAR_GZ)
        model_version.refresh_from_db()
    return model_version


def bundle(directory: Path) -> bytes:
    """The directory's files as a .tar.gz bundle, at its root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def go_live(owner: User, name: str, model_version: ModelVersion) -> Endpoint:
    options = {"throttle": {"rate": 5000, "burst": 5000}}
    issued = endpoint_create(owner=owner, name=name, model_version=model_version, options=options)
    deployment = finish(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    return Endpoint.objects.get(name=name)


def start_shadow(endpoint: Endpoint, model_version: ModelVersion, *, duration: str = "2h") -> Shadow:
    shadow = shadow_start(endpoint=endpoint, model_version=model_version, sample_percent=100, duration=duration)
    deployment = finish(shadow.deployment)
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.RUNNING
    return shadow


def engine_id(container: str) -> str:
    return cli.check(["inspect", "--format", "{{.Id}}", container]).strip()


def batches(rows: list[dict[str, Any]], size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, len(rows)))) for start in range(0, len(rows), size)]


def send_batches(server: WebServer, name: str, rows: list[dict[str, Any]], groups: list[list[int]]) -> list[Call]:
    """Every batch of rows sent ROUNDS times at least, by CLIENTS concurrent clients
    through the token route; each call's kind is its batch's number."""
    token = api_token_create(user=Endpoint.objects.get(name=name).owner, name=f"shadow-{time.monotonic()}").secret
    bodies = [rows_csv([rows[index] for index in group]) for group in groups]

    def plan(client: int, sequence: int) -> Request:
        number = (sequence * CLIENTS + client) % len(groups)
        headers = {"Content-Type": "text/csv", "Authorization": f"Token {token}"}
        return Request(str(number), "POST", f"/api/v1/endpoints/{name}/invocations", bodies[number], headers)

    # Every web process's cached route (without the shadow) has expired by now.
    time.sleep(ROUTE_CACHE_SECONDS + 0.5)
    with TrafficClients(server.port, CLIENTS, plan, keep_alive=False) as traffic:
        wait_for(lambda: len(traffic.calls) >= ROUNDS * len(groups), what="every batch sent")
    return traffic.stop()


def stored_pairs(shadow: Shadow, calls: list[Call]) -> list[ShadowPair]:
    """Once every call's copy was stored (or counted as dropped): the shadow's pairs."""
    wait_for(
        lambda: (
            sum(Shadow.objects.filter(pk=shadow.pk).values_list("copies_sent", "copies_dropped").get()) >= len(calls)
        ),
        what="every copy stored",
    )
    shadow.refresh_from_db()
    assert (shadow.copies_sent, shadow.copies_dropped) == (len(calls), 0)
    return list(shadow.pairs.all())


def answer(output: Any) -> tuple[Any, ...]:
    """A pair's stored answer (its rows)."""
    assert isinstance(output, list), output
    return tuple(output)


def predictions(call: Call) -> list[Any]:
    return list(json.loads(call.body)["predictions"])


def test_a_classifier_shadow_sees_every_call_answered_by_v1_and_is_promoted_without_a_failed_call_or_a_new_runtime(
    owner: User, iris_models: Path, truth: dict[str, Any], web_processes: WebServer
) -> None:
    rows, live_labels, shadow_labels, agree = truth["iris"], truth["iris_v1"], truth["iris_v2"], truth["iris_agree"]
    v1 = version(owner, (iris_models / "v1.rds").read_bytes(), rows[:2])
    v2 = version(owner, (iris_models / "v2.rds").read_bytes(), rows[:2])
    endpoint = go_live(owner, "irises", v1)
    live_container = endpoint.runtime["container"]
    shadow = start_shadow(endpoint, v2)
    shadow_container = ExternalResource.objects.get(deployment=shadow.deployment, kind="container").identifier
    assert sorted(running_containers("irises")) == sorted([live_container, shadow_container])
    shadow_engine_id = engine_id(shadow_container)
    groups = batches(rows, 10)

    calls = send_batches(web_processes, "irises", rows, groups)

    assert [call.describe() for call in calls if not call.ok] == []
    # Callers get v1's answers only.
    for call in calls:
        assert predictions(call) == [live_labels[index] for index in groups[int(call.kind)]], call.kind
    pairs = stored_pairs(shadow, calls)
    expected_pairs = Counter(
        (
            tuple(live_labels[index] for index in groups[int(call.kind)]),
            tuple(shadow_labels[index] for index in groups[int(call.kind)]),
        )
        for call in calls
    )
    stored = Counter((answer(pair.live_output), answer(pair.shadow_output)) for pair in pairs)
    assert stored == expected_pairs
    assert {(pair.live_status, pair.shadow_status, pair.shadow_error) for pair in pairs} == {(200, 200, "")}
    comparison = shadow_comparison(shadow)
    compared_rows = [index for call in calls for index in groups[int(call.kind)]]
    assert comparison.kind == "class"
    assert (comparison.requests, comparison.rows_compared) == (len(calls), len(compared_rows))
    agreed = sum(agree[index] for index in compared_rows)
    assert (comparison.agreed, comparison.agreement_rate) == (agreed, agreed / len(compared_rows))
    assert comparison.shadow_errors == 0

    # Promote while clients keep calling: none fails, and v2 answers once it is done.
    body = rows_csv(rows)
    token = api_token_create(user=owner, name="promote").secret
    headers = {"Content-Type": "text/csv", "Authorization": f"Token {token}"}

    def plan(client: int, sequence: int) -> Request:
        return Request("all", "POST", "/api/v1/endpoints/irises/invocations", body, headers)

    with TrafficClients(web_processes.port, CLIENTS, plan, keep_alive=False) as traffic:
        wait_for(lambda: traffic.calls_per_client_at_least(3), what="every client's first answers")
        promote = finish(shadow_promote(endpoint=endpoint))
        promoted_at = time.time()
        wait_for(
            lambda: sum(call.started > promoted_at for call in traffic.calls) >= CLIENTS, what="calls after the promote"
        )
    during = traffic.stop()

    assert promote.status == Deployment.Status.SUCCEEDED, promote.error
    assert [call.describe() for call in during if not call.ok] == []
    assert {tuple(predictions(call)) for call in during} <= {tuple(live_labels), tuple(shadow_labels)}
    assert {tuple(predictions(call)) for call in during if call.started > promoted_at} == {tuple(shadow_labels)}
    endpoint.refresh_from_db()
    assert (endpoint.model_version, endpoint.runtime["container"]) == (v2, shadow_container)
    assert endpoint.shadow_runtime == {}
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.PROMOTED
    # The shadow's own container serves, never restarted, and no other was made.
    assert running_containers("irises") == [shadow_container]
    assert engine_id(shadow_container) == shadow_engine_id
    containers = ExternalResource.objects.filter(endpoint=endpoint, kind=ExternalResource.Kind.CONTAINER)
    assert sorted(containers.values_list("identifier", flat=True)) == sorted([live_container, shadow_container])
    assert containers.get(identifier=shadow_container).details["start"] == 0
    assert containers.get(identifier=shadow_container).deployment == promote
    assert containers.get(identifier=live_container).deleted_at is not None

    # Stopped and started again, the endpoint serves v2 from the promoted runtime's files.
    assert finish(endpoint_stop(endpoint=endpoint)).status == Deployment.Status.SUCCEEDED
    started = finish(endpoint_start(endpoint=Endpoint.objects.get(pk=endpoint.pk)))
    assert started.status == Deployment.Status.SUCCEEDED, started.error
    gateway._routes.clear()
    result = endpoint_invoke(user=owner, name="irises", body=body, headers={"Content-Type": "text/csv"})
    assert result is not None
    assert (result.status, json.loads(result.body)["predictions"]) == (200, shadow_labels)


def test_a_numeric_shadow_records_exact_differences_and_its_errors_callers_never_see_then_ends_and_expires(
    owner: User, truth: dict[str, Any], web_processes: WebServer
) -> None:
    directory = Path(truth["directory"])
    rows, live_values, shadow_values = truth["mtcars"], truth["lm_v1"], truth["lm_v2"]
    difference = [float(value) for value in truth["lm_difference"]]
    v1 = version(owner, (directory / "lm_v1" / "model.rds").read_bytes(), rows[:2])
    v2 = version(owner, (directory / "lm_v2" / "model.rds").read_bytes(), rows[:2])
    fragile = version(owner, bundle(directory / "lm_fragile"), rows[:2], bundle=True)
    endpoint = go_live(owner, "cars", v1)
    live_container = endpoint.runtime["container"]
    live_engine_id = engine_id(live_container)
    shadow = start_shadow(endpoint, fragile)
    groups = batches(rows, 4)
    failing = {number for number, group in enumerate(groups) if any(rows[i]["wt"] > FRAGILE_LIMIT for i in group)}
    assert 0 < len(failing) < len(groups)

    calls = send_batches(web_processes, "cars", rows, groups)

    assert [call.describe() for call in calls if not call.ok] == []
    for call in calls:
        assert predictions(call) == [float(live_values[index]) for index in groups[int(call.kind)]], call.kind
    pairs = stored_pairs(shadow, calls)

    def expected_pair(call: Call) -> tuple[Any, ...]:
        group = groups[int(call.kind)]
        live = tuple(float(live_values[index]) for index in group)
        if int(call.kind) in failing:
            return (live, None)
        return (live, tuple(float(shadow_values[index]) for index in group))

    def stored_pair(pair: ShadowPair) -> tuple[Any, ...]:
        return (answer(pair.live_output), answer(pair.shadow_output) if pair.shadow_output is not None else None)

    assert Counter(stored_pair(pair) for pair in pairs) == Counter(expected_pair(call) for call in calls)
    errors = [pair for pair in pairs if pair.shadow_output is None]
    assert len(errors) == sum(int(call.kind) in failing for call in calls) > 0
    assert all(pair.shadow_status == 500 and FRAGILE_ERROR in pair.shadow_error for pair in errors), [
        (pair.shadow_status, pair.shadow_error) for pair in errors
    ]
    # Each row's difference, to the last bit, is R's (a batch is known by its live answers).
    group_of = {tuple(float(live_values[index]) for index in group): group for group in groups}
    for pair in pairs:
        if pair.shadow_output is not None:
            live = answer(pair.live_output)
            differences = [new - old for old, new in zip(live, answer(pair.shadow_output), strict=True)]
            assert differences == [difference[index] for index in group_of[live]]
    compared = [index for call in calls if int(call.kind) not in failing for index in groups[int(call.kind)]]
    comparison = shadow_comparison(shadow)
    assert comparison.kind == "numeric"
    assert (comparison.requests, comparison.shadow_errors, comparison.rows_compared) == (
        len(calls),
        len(errors),
        len(compared),
    )
    assert comparison.max_abs_difference == max(abs(difference[index]) for index in compared)
    assert comparison.mean_abs_difference == pytest.approx(
        sum(abs(difference[index]) for index in compared) / len(compared), rel=1e-12
    )
    assert [(error.message, error.count) for error in comparison.top_errors] == [(errors[0].shadow_error, len(errors))]

    # Stopping the shadow leaves v1 untouched.
    ended = finish(shadow_end(endpoint=endpoint))
    assert ended.status == Deployment.Status.SUCCEEDED, ended.error
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.ENDED
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.model_version, endpoint.runtime["container"]) == ("live", v1, live_container)
    assert endpoint.shadow_runtime == {}
    assert running_containers("cars") == [live_container]
    assert engine_id(live_container) == live_engine_id
    assert not ExternalResource.objects.live().filter(deployment=shadow.deployment).exists()
    # Asked from this process, so the answer is v1's own: the gateway's route cache holds
    # nothing of the shadow (runtime_http no longer reuses a connection idle past the
    # runtime's keep-alive, 04fb4f2; gunicorn's would have been idle past it by now).
    gateway._routes.clear()
    group = groups[0]
    result = endpoint_invoke(
        user=owner, name="cars", body=rows_csv([rows[i] for i in group]), headers={"Content-Type": "text/csv"}
    )
    assert result is not None
    assert (result.status, json.loads(result.body)["predictions"]) == (200, [float(live_values[i]) for i in group])

    # A shadow whose duration is over is ended by the reconciler (as beat runs it).
    expiring = start_shadow(endpoint, v2, duration="5m")
    Shadow.objects.filter(pk=expiring.pk).update(ends_at=timezone.now() - timedelta(seconds=1))

    assert pipeline_reconcile_task()["shadows_ended"] == 1

    wait_for(lambda: Shadow.objects.get(pk=expiring.pk).status == Shadow.Status.ENDED, what="the expired shadow")
    expiring.refresh_from_db()
    assert "duration" in expiring.outcome
    assert running_containers("cars") == [live_container]
    assert engine_id(live_container) == live_engine_id
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.model_version, endpoint.shadow_runtime) == ("live", v1, {})


def test_a_crashed_shadow_runtime_is_restarted_and_deleting_the_endpoint_removes_it(
    owner: User, truth: dict[str, Any]
) -> None:
    directory = Path(truth["directory"])
    rows = truth["mtcars"]
    v1 = version(owner, (directory / "lm_v1" / "model.rds").read_bytes(), rows[:2])
    v2 = version(owner, (directory / "lm_v2" / "model.rds").read_bytes(), rows[:2])
    endpoint = go_live(owner, "wrecks", v1)
    shadow = start_shadow(endpoint, v2)
    endpoint.refresh_from_db()
    route = dict(endpoint.shadow_runtime["runtime"])
    kill_runtime(route["container"])

    pipeline_reconcile()

    endpoint.refresh_from_db()
    restarted = endpoint.shadow_runtime["runtime"]
    assert restarted["container"] == route["container"]
    assert restarted["socket"] not in (None, route["socket"])
    assert sorted(running_containers("wrecks")) == sorted([endpoint.runtime["container"], route["container"]])
    assert LogLine.objects.filter(endpoint=endpoint, message__contains="The shadow's R runtime had stopped").exists()

    deletion = endpoint_delete(endpoint=endpoint)
    assert deletion is not None
    assert finish(deletion).status == Deployment.Status.SUCCEEDED

    assert running_containers("wrecks") == []
    assert not ExternalResource.objects.live().filter(endpoint=endpoint).exists()
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.ENDED
    assert Endpoint.objects.get(pk=endpoint.pk).shadow_runtime == {}


def test_a_shadow_that_cannot_start_fails_removing_only_its_own_runtime_and_v1_serves_on(
    owner: User, iris_models: Path, truth: dict[str, Any]
) -> None:
    rows = truth["iris"]
    endpoint = go_live(owner, "sturdy", version(owner, (iris_models / "v1.rds").read_bytes(), rows[:2]))
    live_container = endpoint.runtime["container"]
    live_engine_id = engine_id(live_container)

    shadow = shadow_start(
        endpoint=endpoint, model_version=broken_model(owner, iris_models), sample_percent=100, duration="2h"
    )
    failed = finish(shadow.deployment)

    assert failed.status == Deployment.Status.FAILED
    assert "rdeployNoSuchPackage" in failed.error
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.FAILED
    assert shadow.outcome.startswith("Starting the shadow failed")
    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.runtime["container"], endpoint.shadow_runtime) == ("live", live_container, {})
    assert running_containers("sturdy") == [live_container]
    assert engine_id(live_container) == live_engine_id
    assert not ExternalResource.objects.live().filter(deployment=shadow.deployment).exists()
    gateway._routes.clear()
    result = endpoint_invoke(user=owner, name="sturdy", body=rows_csv(rows[:3]), headers={"Content-Type": "text/csv"})
    assert result is not None
    assert (result.status, json.loads(result.body)["predictions"]) == (200, truth["iris_v1"][:3])


# --- the copy senders, without a runtime ---------------------------------------------


def test_a_shadows_pairs_are_trimmed_to_the_newest_max_pairs_and_a_deleted_shadow_gets_none(owner: User) -> None:
    live = ready_model(owner, b"live")
    endpoint = make_endpoint(owner, "trimmed", model_version=live)
    shadow = make_shadow(endpoint, ready_model(owner, b"shadow"))
    gone = make_shadow(make_endpoint(owner, "gone", model_version=live), ready_model(owner, b"other"))
    gone_id = gone.pk
    Shadow.objects.filter(pk=gone_id).delete()

    def batch(count: int, shadow_id: int) -> list[ShadowPair]:
        return [ShadowPair(shadow_id=shadow_id, live_status=200, live_output=[n]) for n in range(count)]

    with override_settings(SHADOW_MAX_PAIRS=100):
        for _ in range(3):
            shadow_pairs_store([*batch(60, shadow.pk), *batch(5, gone_id)])

    shadow.refresh_from_db()
    assert shadow.copies_sent == 180
    kept = list(shadow.pairs.order_by("id").values_list("id", flat=True))
    assert len(kept) == 100
    # The newest: the last 100 stored.
    assert kept == list(ShadowPair.objects.filter(shadow=shadow).order_by("-id").values_list("id", flat=True))[::-1]
    assert not ShadowPair.objects.filter(shadow_id=gone_id).exists()


class HungRuntime:
    """A Unix socket that accepts connections and reads requests but never answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.server.accept()[0])

    def close(self) -> None:
        for connection in self.held:
            connection.close()
        self.server.close()


def test_a_hung_shadow_holds_one_sender_only_for_its_deadline_and_copies_that_waited_too_long_are_dropped(
    owner: User, tmp_path: Path
) -> None:
    live = ready_model(owner, b"live")
    shadow = make_shadow(make_endpoint(owner, "hung", model_version=live), ready_model(owner, b"shadow"))
    hung = HungRuntime(tmp_path / "runtime.sock")
    runtime = {"socket": str(hung.path), "timeout": 3.0, "queue_seconds": 1.0, "pool": "shadow"}
    route = {"runtime": runtime, "shadow_id": shadow.pk, "sample_percent": 100}
    answer = InvocationResult(200, b'{"predictions": [1]}')
    try:
        for _ in range(10):
            shadow_copy_offer(target="local", shadow=route, body=b"x", headers={}, live=answer, live_ms=1.0)

        wait_for(
            lambda: sum(Shadow.objects.filter(pk=shadow.pk).values_list("copies_sent", "copies_dropped").get()) == 10,
            what="every copy sent or dropped",
        )
    finally:
        hung.close()

    shadow.refresh_from_db()
    # One sender took one copy (a shadow has one in flight) and waited out its deadline; the
    # others waited longer than queue_seconds for it, and were dropped rather than sent late.
    assert (shadow.copies_sent, shadow.copies_dropped) == (MAX_IN_FLIGHT_PER_SHADOW, 10 - MAX_IN_FLIGHT_PER_SHADOW)
    assert {(pair.shadow_status, pair.shadow_error) for pair in shadow.pairs.all()} == {
        (504, '{"message": "The model did not answer within 3 seconds."}')
    }


class CountingRuntime(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A runtime's socket answering every POST at once over keep-alive HTTP/1.1, counting
    the connections it was given."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True)
        self.connections = 0
        super().__init__(str(path), _Answer)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)


class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"] or 0))
        body = b'{"predictions": [1]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_hung_shadow_does_not_starve_another_shadows_copies(owner: User, tmp_path: Path) -> None:
    live = ready_model(owner, b"live")
    hung_shadow = make_shadow(make_endpoint(owner, "stuck", model_version=live), ready_model(owner, b"stuck"))
    fast_shadow = make_shadow(make_endpoint(owner, "brisk", model_version=live), ready_model(owner, b"brisk"))
    fast_path = tmp_path / "fast" / "runtime.sock"
    hung, fast = HungRuntime(tmp_path / "hung.sock"), CountingRuntime(fast_path)
    # The fast shadow's copies may wait less than the hung one's deadline: without one copy
    # in flight per shadow, both senders wait that out on the hung shadow's copies.
    hung_route = {
        "runtime": {"socket": str(hung.path), "timeout": 4.0, "queue_seconds": 1.0, "pool": "shadow"},
        "shadow_id": hung_shadow.pk,
        "sample_percent": 100,
    }
    fast_route = {
        "runtime": {"socket": str(fast_path), "timeout": 4.0, "queue_seconds": 2.0, "pool": "shadow"},
        "shadow_id": fast_shadow.pk,
        "sample_percent": 100,
    }
    answer = InvocationResult(200, b'{"predictions": [1]}')

    def copies(shadow: Shadow) -> tuple[int, int]:
        return Shadow.objects.filter(pk=shadow.pk).values_list("copies_sent", "copies_dropped").get()

    try:
        # The hung shadow's copies first: the oldest queued.
        for route in [hung_route] * 10 + [fast_route] * 10:
            shadow_copy_offer(target="local", shadow=route, body=b"x", headers={}, live=answer, live_ms=1.0)

        wait_for(lambda: sum(copies(hung_shadow)) == sum(copies(fast_shadow)) == 10, what="every copy sent or dropped")
    finally:
        hung.close()
        fast.shutdown()

    assert copies(fast_shadow) == (10, 0)
    assert ShadowPair.objects.filter(shadow=fast_shadow, shadow_status=200, shadow_error="").count() == 10
    assert copies(hung_shadow) == (MAX_IN_FLIGHT_PER_SHADOW, 10 - MAX_IN_FLIGHT_PER_SHADOW)
    assert ShadowPair.objects.filter(shadow=hung_shadow, shadow_status=504).count() == MAX_IN_FLIGHT_PER_SHADOW


def test_copies_to_a_shadow_leave_the_live_runtimes_kept_alive_connection_open() -> None:
    # Two rollouts of one endpoint, as the local target lays out their sockets.
    live_path, shadow_path = (endpoint_dir("pooled") / rollout / "socket-0" / SOCKET_NAME for rollout in ("1", "2"))
    live, shadow = CountingRuntime(live_path), CountingRuntime(shadow_path)
    try:
        for _ in range(3):
            assert LocalTarget().invoke({"socket": str(live_path)}, b"x", {}).status == 200
            assert LocalTarget().invoke({"socket": str(shadow_path), "pool": "shadow"}, b"x", {}).status == 200
    finally:
        live.shutdown()
        shadow.shutdown()
        shutil.rmtree(endpoint_dir("pooled"))

    assert (live.connections, shadow.connections) == (1, 1)
