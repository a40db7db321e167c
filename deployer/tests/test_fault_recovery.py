"""Faults outside the worker's own death (issue 11, "faults that provably happen"): the web
process killed mid-upload, Redis restarted and PostgreSQL restarted while a deployment's
step runs. Each fault is shown to land where it is meant to (the upload's temp file is on
disk and growing; the worker says it is inside the step), and recovery comes from the
worker's own Celery beat on its schedule, never from the test.

Redis: the test's own (the worker, its beat and this process's enqueues all use it), so
the session's Redis is never stopped. PostgreSQL: the session's cluster, restarted. Only
this pytest process and the workers and web servers it started use it, and each of them
reconnects (Django closes a connection that failed; the worker's Celery fixup does so
after each task): a private cluster would need a migrated database of its own that the
test's ORM does not see.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections

from deployer import jobs
from deployer.integrations.containers import runtimes
from deployer.models import Deployment, DeploymentStep, Endpoint, ModelVersion
from deployer.services import gateway
from deployer.services.endpoints import endpoint_create, endpoint_invoke
from deployer.services.tokens import api_token_create
from deployer.services.upload_cleanup import upload_temp_files_remove_stale
from deployer.tests.pipeline_support import FaultyWorker, finish, iris_version
from testsupport.pipeline import reconciled, wait_inside_step
from testsupport.postgres import PostgresServer
from testsupport.r_models import expected, rows_csv
from testsupport.services import RedisServer, WebServer, session_database_url
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_gateway_routes", "no_runtime_outlives_the_test"),
]


class PrivateBrokerWorker(FaultyWorker):
    """A FaultyWorker (beat embedded, short lease, fault pause) whose broker is private_redis."""


@pytest.fixture
def start_worker(
    private_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], PrivateBrokerWorker]]:
    """Starts the only worker of this test's tasks: beat embedded, on private_redis, which
    this process's enqueues use too. Upload temp files count as stale after 2 s unwritten,
    and beat looks for them every second."""
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    monkeypatch.setenv("RDEPLOY_UPLOAD_TEMP_MAX_AGE", "2")
    monkeypatch.setenv("RDEPLOY_UPLOAD_TEMP_CLEAN_SECONDS", "1")
    # Not the current app: the process's own app must stay the one other tests send through.
    client = Celery("rdeploy-test-client", set_as_current=False)
    client.config_from_object("django.conf:settings", namespace="CELERY")
    client.conf.update(broker_url=private_redis.url)
    monkeypatch.setattr(jobs, "current_app", client)
    workers: list[PrivateBrokerWorker] = []

    def start() -> PrivateBrokerWorker:
        worker = PrivateBrokerWorker(session_database_url(), tmp_path / "worker.log")
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    client.close()


def log_since(worker: FaultyWorker, offset: int) -> bytes:
    with worker.logfile.open("rb") as log:
        log.seek(offset)
        return log.read()


def answers_with(owner: User, name: str, truth: dict[str, Any], version: str) -> None:
    gateway._routes.clear()
    result = endpoint_invoke(user=owner, name=name, body=rows_csv(truth["rows"]), headers={"Content-Type": "text/csv"})
    assert result is not None
    assert (result.status, truth[version][0] in result.body.decode()) == (200, True), result.body


def assert_live_and_whole(owner: User, name: str, deployment: Deployment, truth: dict[str, Any]) -> None:
    """Deployed once, every step done once, serving from one runtime."""
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    steps = list(deployment.steps.order_by("position").values_list("name", "status"))
    assert {status for _, status in steps} <= {DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED}, steps
    endpoint = Endpoint.objects.get(name=name)
    assert endpoint.status == Endpoint.Status.LIVE
    assert runtimes.names(endpoint=name) == [endpoint.runtime["container"]]
    answers_with(owner, name, truth, "v1")


# --- Redis ----------------------------------------------------------------------------


def test_redis_restarted_while_a_step_runs_loses_no_deployment(
    owner: User, iris_models: Path, private_redis: RedisServer, start_worker: Callable[[], PrivateBrokerWorker]
) -> None:
    worker = start_worker()
    pid = worker.process.pid  # type: ignore[union-attr]
    issued = endpoint_create(owner=owner, name="ebb", model_version=iris_version(owner, iris_models, "v1"))
    deployment = issued.endpoint.current_deployment
    assert deployment is not None

    wait_inside_step(worker, deployment, "start_runtime")
    port = private_redis.port
    stopped = worker.logfile.stat().st_size
    private_redis.stop()
    # Down (without persistence: every queued and scheduled message is gone) until the
    # worker's task, having saved the step's outcome, failed to send its successor: a
    # message that never reached any broker, which only the reconciler can make up for.
    wait_for(
        lambda: re.search(rb"Task rdeploy\.deployment_advance\[[^\]]+\] raised unexpected", log_since(worker, stopped)),
        what="the worker's task to fail without a broker",
    )
    assert deployment.steps.get(name="start_runtime").status == DeploymentStep.Status.SUCCEEDED
    logged = worker.logfile.stat().st_size
    private_redis.start()
    assert private_redis.port == port

    deployment = finish(deployment)

    assert_live_and_whole(owner, "ebb", deployment, expected(iris_models))
    # The same worker and its beat carried on over the new Redis: nothing was restarted.
    assert worker.process is not None
    assert worker.process.pid == pid
    assert worker.process.poll() is None
    assert reconciled(worker, since=logged) >= 1


# --- The web process killed mid-upload ------------------------------------------------


def upload_temp_files() -> set[Path]:
    return {path for path in Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir() if ".upload" in path.name}


def artifact_files() -> set[Path]:
    return {path for path in (Path(settings.DATA_DIR) / "artifacts").rglob("*") if path.is_file()}


def test_a_web_process_killed_mid_upload_leaves_no_version_no_artifact_and_beat_removes_its_temp_file(
    owner: User, tmp_path: Path, start_worker: Callable[[], PrivateBrokerWorker]
) -> None:
    web = WebServer(session_database_url(), tmp_path / "web.log", workers=1, threads=2)
    web.start()
    temp_before, artifacts_before = upload_temp_files(), artifact_files()
    boundary = "rdeploy-fault-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\niris\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="model.rds"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size, sent = 64 * 1024 * 1024, 4 * 1024 * 1024
    request = (
        "POST /api/v1/models/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {api_token_create(user=owner).secret}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=30) as client:
            client.sendall(request + head + b"\0" * sent)
            # The web process is streaming the file to disk: most of what was sent is there.
            temp = wait_for(
                lambda: [path for path in upload_temp_files() - temp_before if path.stat().st_size >= sent // 2],
                what="the upload's temp file",
            )[0]
            assert web.process is not None
            os.killpg(web.process.pid, signal.SIGKILL)
            web.process.wait(timeout=10)
            try:
                answer = client.recv(1024)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "the request was answered before the kill"
    finally:
        web.stop()

    assert not ModelVersion.objects.exists()
    assert artifact_files() == artifacts_before
    # What a killed process cannot clean up; a live web process never sees it again.
    assert temp.exists()

    start_worker()

    wait_for(lambda: not temp.exists(), what=f"beat's cleanup to remove {temp.name}")
    assert not ModelVersion.objects.exists()


def test_the_cleanup_removes_only_upload_temp_files_not_written_for_the_max_age(tmp_path: Path) -> None:
    directory = Path(settings.FILE_UPLOAD_TEMP_DIR)
    aged = time.time() - settings.UPLOAD_TEMP_MAX_AGE_SECONDS - 60
    names = {
        "stale": "tmpab12cd34.upload.rds",
        "stale_copy": "upload-4242-140000000",
        "receiving": "tmpef56gh78.upload.tar.gz",
        "foreign": "tmpzz99yy88.notes",
    }
    paths = {key: directory / name for key, name in names.items()}
    for key, path in paths.items():
        path.write_bytes(b"x")
        if key != "receiving":
            os.utime(path, (aged, aged))
    (directory / "upload-1-2").mkdir()
    os.utime(directory / "upload-1-2", (aged, aged))
    try:
        removed = upload_temp_files_remove_stale()

        assert sorted(removed) == sorted([names["stale"], names["stale_copy"]])
        assert {key for key, path in paths.items() if path.exists()} == {"receiving", "foreign"}
        assert (directory / "upload-1-2").is_dir()
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
        (directory / "upload-1-2").rmdir()


# --- PostgreSQL -----------------------------------------------------------------------


def session_postgres() -> PostgresServer:
    """The session's cluster (testsupport/env.py started it): its socket directory is the HOST."""
    server = PostgresServer(Path(settings.DATABASES["default"]["HOST"]).parent)
    server.running = True
    return server


@pytest.mark.skipif(
    os.environ.get("RDEPLOY_TEST_DATABASE") != "postgres", reason="restarts the session's PostgreSQL cluster"
)
def test_postgresql_restarted_while_a_step_runs_loses_no_deployment(
    owner: User, iris_models: Path, faulty_worker: FaultyWorker
) -> None:
    issued = endpoint_create(owner=owner, name="flow", model_version=iris_version(owner, iris_models, "v1"))
    deployment = issued.endpoint.current_deployment
    assert deployment is not None

    pid = wait_inside_step(faulty_worker, deployment, "start_runtime")
    server = session_postgres()
    server.stop()  # fast: every connection, the worker's inside the step too, is cut
    server.start()
    connections.close_all()  # this process's, cut too

    deployment = finish(deployment)

    assert_live_and_whole(owner, "flow", deployment, expected(iris_models))
    # The step's outcome was lost with the connection: it ran again, in the same worker.
    assert deployment.steps.get(name="start_runtime").attempts == 2
    assert faulty_worker.process is not None
    assert faulty_worker.process.pid == pid
