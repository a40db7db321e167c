"""Shared helpers for the pipeline and local-target tests: two real iris classifiers
trained by R at test time (the `iris_models` fixture; v2 predicts the species in reverse
order, so a client can tell which version answered), ready ModelVersions for them,
waiting helpers, and the worker the fault tests kill."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from deployer.models import Deployment, Endpoint, ModelVersion
from testsupport.pipeline import ready_model
from testsupport.r_models import expected, train_models
from testsupport.services import CeleryWorker
from testsupport.waiting import wait_for


def train_iris_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the `iris_models` fixture gives, for modules outside deployer/tests (the
    session's one training run: testsupport/r_models.py)."""
    return train_models(tmp_path_factory) / "iris_versions"


def iris_version(owner: User, models: Path, version: str, **inspection: Any) -> ModelVersion:
    """A ready ModelVersion of v1/v2 with the example request inspection records."""
    rows = expected(models)["rows"][:2]
    example = {"content_type": "application/json", "payload": json.dumps(rows), "rows": len(rows)}
    return ready_model(owner, (models / f"{version}.rds").read_bytes(), **{"example": example, **inspection})


def broken_model(owner: User, models: Path) -> ModelVersion:
    """A model whose runtime cannot start: it needs an R package nobody installed."""
    return iris_version(owner, models, "v1", rdeploy_json={"format_version": 1, "packages": ["rdeployNoSuchPackage"]})


def endpoint_status(name: str) -> str:
    return str(Endpoint.objects.get(name=name).status)


def stop_everything(endpoint_names: Iterator[str] | list[str]) -> None:
    """Test cleanup: no runtime container outlives its test, whatever state it ended in."""
    from deployer.integrations.containers import cli, runtimes

    for name in endpoint_names:
        for container in runtimes.names(endpoint=name):
            cli.remove(container)


def container_running(container: str) -> bool:
    from deployer.integrations.containers import runtimes

    state = runtimes.state(container)
    return state is not None and state.running


def kill_runtime(container: str) -> None:
    """Kill the runtime's main process (``serve``) through the engine, as a crash would."""
    from deployer.integrations.containers import cli

    cli.check(["kill", "--signal", "KILL", container])
    wait_for(lambda: not container_running(container), what=f"{container} to stop")


def running_containers(endpoint_name: str) -> list[str]:
    from deployer.integrations.containers import runtimes

    return [name for name in runtimes.names(endpoint=endpoint_name) if container_running(name)]


# A short lease and a reconciler every second (run by the worker's own beat) so a killed
# step is resumed within seconds, and a pause after each step's work (before its outcome is
# saved) that is the window the worker is killed in.
FAULT_ENV = {
    "RDEPLOY_PIPELINE_LEASE_SECONDS": "5",
    "RDEPLOY_PIPELINE_RECONCILE_SECONDS": "1",
    "RDEPLOY_PIPELINE_FAULT_PAUSE_MS": "700",
}


class FaultyWorker(CeleryWorker):
    """A worker with Celery beat embedded (-B): the beat schedule of settings, so the
    reconciler runs on its schedule; SIGKILL takes beat down with the worker."""

    def __init__(self, database_url: str, logfile: Path) -> None:
        super().__init__(database_url, logfile, beat=True)
        self.logged = 0

    def start(self) -> None:
        self.logged = self.logfile.stat().st_size if self.logfile.exists() else 0
        saved = {name: os.environ.get(name) for name in FAULT_ENV}
        os.environ.update(FAULT_ENV)
        try:
            super().start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the worker logs that it is ready. Not a ping: a solo worker answers none while
        a task runs, and it runs one at once (the deployment a kill interrupted), so a test
        waiting for a ping would miss the step it means to kill the worker in."""

        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"Celery worker exited; see {self.logfile}")
            with self.logfile.open("rb") as log:
                log.seek(self.logged)
                return b" ready.\n" in log.read()

        wait_for(ready, timeout=timeout, interval=0.02, what=f"the worker to be ready; see {self.logfile}")


def finish(deployment: Deployment, *, timeout: float = 120) -> Deployment:
    """Wait until the deployment is done; the test does nothing to resume it: a killed
    worker's deployment is resumed by the reconciler that beat runs."""
    wait_for(
        lambda: Deployment.objects.get(pk=deployment.pk).is_terminal,
        timeout=timeout,
        interval=0.2,
        what=f"deployment {deployment.pk} to finish",
    )
    deployment.refresh_from_db()
    return deployment
