"""Fixtures for deployer tests: the session's trained R models, a moto server standing in for AWS."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from deployer import jobs
from deployer.models import Endpoint
from deployer.services import gateway
from deployer.tests.pipeline_support import FaultyWorker, stop_everything
from testsupport.moto import MotoServer
from testsupport.services import CeleryWorker, RedisServer, session_database_url


@pytest.fixture(scope="session")
def trained_models(r_models: Path) -> Path:
    """<dir>/<case>/model.rds (+ predict.R) and expected.json with rows and R's predictions,
    for lm, glm_binomial, randomforest, ranger, rpart, svm and bundle_log_dose (and more:
    testsupport/train_models.R)."""
    return r_models


@pytest.fixture(scope="session")
def iris_models(r_models: Path) -> Path:
    """<dir>/v1.rds, v2.rds and expected.json {rows, v1, v2} (R's own predictions)."""
    return r_models / "iris_versions"


@pytest.fixture
def aws(moto_server: MotoServer) -> MotoServer:
    """An empty AWS account holding what an operator sets up once: the bucket and the roles."""
    from deployer.integrations.aws import client

    moto_server.reset()
    iam = client.aws_client("iam")
    for role_arn in (settings.RDEPLOY_SAGEMAKER_ROLE_ARN, settings.RDEPLOY_CODEBUILD_ROLE_ARN):
        iam.create_role(RoleName=str(role_arn).rsplit("/", 1)[1], AssumeRolePolicyDocument="{}")
    client.aws_client("s3").create_bucket(Bucket=settings.RDEPLOY_S3_BUCKET)
    return moto_server


@pytest.fixture(scope="module")
def faulty_worker(request: pytest.FixtureRequest, celery_worker: CeleryWorker) -> Iterator[FaultyWorker]:
    """The only worker while a module's tests run (the session's is stopped meanwhile), with a
    short lease and a pause after each step's work for tests to kill it in (FAULT_ENV)."""
    celery_worker.stop()
    module = request.module.__name__.rsplit(".", 1)[-1]
    worker = FaultyWorker(session_database_url(), Path(settings.DATA_DIR) / f"{module}-worker.log")
    worker.start()
    yield worker
    worker.stop()
    celery_worker.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own (on a port it keeps across stop and start), for tests that
    stop it: the session's Redis serves every other test."""
    server = RedisServer(None, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_gateway_routes() -> None:
    """The public API's route cache starts empty, as in a freshly started web process."""
    gateway._routes.clear()


@pytest.fixture
def no_runtime_outlives_the_test() -> Iterator[None]:
    yield
    names = list(Endpoint.objects.values_list("name", flat=True))
    # A module's worker and its beat outlive the test: their supervision must not start
    # again what is removed here (it did, and the next test of the module found it).
    Endpoint.objects.update(status=Endpoint.Status.DELETED)
    stop_everything(names)


@pytest.fixture
def secret_file(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A world-readable secret handed to rdeploy as <NAME>_FILE, as Docker secrets are."""
    directory = Path(tempfile.mkdtemp(prefix="rdeploy-secret-"))
    directory.chmod(0o755)
    path = directory / "key"
    path.write_text("file-secret-that-must-not-leak\n")
    path.chmod(0o644)
    monkeypatch.setenv("RDEPLOY_TEST_SECRET_FILE", str(path))
    yield path
    shutil.rmtree(directory)


class RecordedTasks:
    """Takes the Celery app's place in deployer.jobs: tasks are recorded, not sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, args: list[Any] | None = None, **options: Any) -> None:
        self.sent.append((name, list(args or [])))


WORKER_FIXTURES = {"celery_worker", "faulty_worker", "web_server"}


@pytest.fixture(autouse=True)
def background_work_only_with_a_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that drive the pipeline in this process get no background work: the session's
    real worker, once started by an earlier test, would otherwise pick up what the services
    enqueue and race the test (seen under load: a second runtime, an update run without the
    test's fault, a killed runtime restarted behind its back). Tests that want a worker ask
    for one and keep the real queue."""
    if WORKER_FIXTURES & set(request.fixturenames):
        return
    monkeypatch.setattr(jobs, "current_app", RecordedTasks())
