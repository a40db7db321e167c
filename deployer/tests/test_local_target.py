"""The local target driven by the pipeline in this process: real R runtimes, no worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile

from deployer.integrations import processes
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, LogLine
from deployer.services.endpoints import endpoint_create, endpoint_delete, endpoint_invoke, endpoint_update
from deployer.services.pipeline import pipeline_reconcile
from deployer.targets.local import endpoint_dir
from deployer.tests.pipeline_support import (
    broken_model,
    drive,
    expected,
    ready_model,
    rows_csv,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_runtime_outlives_the_test"),
]


def invoke(owner: User, name: str, body: bytes, content_type: str) -> tuple[int, object]:
    result = endpoint_invoke(user=owner, name=name, body=body, headers={"Content-Type": content_type})
    assert result is not None
    return result.status, json.loads(result.body)


def live_process(endpoint: Endpoint) -> dict[str, object]:
    endpoint.refresh_from_db()
    return dict(endpoint.runtime)


def test_created_endpoint_goes_live_and_predicts_what_r_predicts(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="iris", model_version=ready_model(owner, iris_models, "v1"))
    deployment = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    endpoint = Endpoint.objects.get(name="iris")
    assert endpoint.status == Endpoint.Status.LIVE
    assert [step.status for step in deployment.steps.all()] == ["succeeded"] * 5 + ["skipped"]
    truth = expected(iris_models)
    assert invoke(owner, "iris", rows_csv(truth["rows"]), "text/csv") == (200, {"predictions": truth["v1"]})
    assert invoke(owner, "iris", json.dumps(truth["rows"]).encode(), "application/json") == (
        200,
        {"predictions": truth["v1"]},
    )


def test_deleting_stops_the_process_frees_the_port_and_removes_the_files(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="gone", model_version=ready_model(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    runtime = live_process(issued.endpoint)
    assert processes.find(str(runtime["process"]))
    assert endpoint_dir("gone").exists()

    deployment = endpoint_delete(endpoint=issued.endpoint)
    assert deployment is not None
    drive(deployment)

    endpoint = Endpoint.objects.get(name="gone")
    assert endpoint.status == Endpoint.Status.DELETED
    assert processes.find(str(runtime["process"])) == []
    assert not processes.port_is_open(int(runtime["port"]))  # type: ignore[call-overload]
    assert not endpoint_dir("gone").exists()
    assert not ExternalResource.objects.filter(endpoint=endpoint, deleted_at__isnull=True).exists()


def test_a_runtime_that_cannot_load_fails_the_rollout_with_its_log_lines(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="broken", model_version=broken_model(owner, iris_models))
    deployment = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]

    assert deployment.status == Deployment.Status.FAILED
    assert "rdeployNoSuchPackage" in deployment.error
    assert "last log lines" in deployment.error
    endpoint = Endpoint.objects.get(name="broken")
    assert endpoint.status == Endpoint.Status.FAILED
    assert "rdeployNoSuchPackage" in endpoint.error
    assert deployment.steps.get(name="wait_healthy").status == DeploymentStep.Status.FAILED
    # What the failed rollout created is gone.
    assert processes.find(f"broken-{deployment.pk}") == []
    assert not ExternalResource.objects.filter(deployment=deployment, deleted_at__isnull=True).exists()


def test_a_failed_update_leaves_the_previous_version_serving(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="steady", model_version=ready_model(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    serving = live_process(issued.endpoint)

    update = drive(endpoint_update(endpoint=issued.endpoint, model_version=broken_model(owner, iris_models)))

    assert update.status == Deployment.Status.FAILED
    endpoint = Endpoint.objects.get(name="steady")
    assert endpoint.status == Endpoint.Status.LIVE
    assert "rdeployNoSuchPackage" in endpoint.error
    assert endpoint.runtime == serving
    truth = expected(iris_models)
    assert invoke(owner, "steady", rows_csv(truth["rows"]), "text/csv") == (200, {"predictions": truth["v1"]})


def test_starting_the_runtime_twice_starts_one_process(owner: User, iris_models: Path) -> None:
    from deployer.services.pipeline import serving_deployment
    from deployer.targets import get_target
    from deployer.targets.base import StepContext

    issued = endpoint_create(owner=owner, name="twice", model_version=ready_model(owner, iris_models, "v1"))
    deployment = issued.endpoint.current_deployment
    assert deployment is not None
    target = get_target("local")
    for name in ("prepare_model_dir", "start_runtime", "start_runtime", "prepare_model_dir"):
        step = deployment.steps.get(name=name)
        deployment.refresh_from_db()
        target.run_step(
            name, StepContext(deployment=deployment, step=step, previous=serving_deployment(issued.endpoint))
        )

    identifier = f"twice-{deployment.pk}"
    assert len(ExternalResource.objects.filter(kind="process", identifier=identifier)) == 1
    # One serve script: no second runtime. Counted by command line, top-level only: R's
    # per-connection children come and go, and bash's forks for subshells and background
    # jobs carry serve's command line until they exec (their parent is serve itself).
    wait_for(lambda: processes.port_is_open(int(ExternalResource.objects.get(identifier=identifier).details["port"])))
    serve_pids = {pid for pid in processes.find(identifier) if command_line(pid).endswith("runtime/serve")}
    top_level = [pid for pid in serve_pids if processes.parent_pid(pid) not in serve_pids]
    assert len(top_level) == 1, [command_line(pid) for pid in serve_pids]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_a_killed_runtime_is_restarted_by_the_reconciler(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="phoenix", model_version=ready_model(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    runtime = live_process(issued.endpoint)
    for pid in processes.find(str(runtime["process"])):
        with contextlib.suppress(ProcessLookupError):  # serve's short-lived children exit on their own
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not processes.find(str(runtime["process"])), what="the runtime to die")

    pipeline_reconcile()

    truth = expected(iris_models)
    wait_for(
        lambda: invoke(owner, "phoenix", rows_csv(truth["rows"]), "text/csv") == (200, {"predictions": truth["v1"]}),
        timeout=30,
        what="the restarted runtime to answer",
    )
    endpoint = Endpoint.objects.get(name="phoenix")
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.runtime["pid"] != runtime["pid"]
    assert LogLine.objects.filter(endpoint=endpoint, message__contains="restarted it").exists()


def test_a_runtime_that_keeps_crashing_marks_the_endpoint_failed_with_its_log(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="crashy", model_version=ready_model(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    runtime = live_process(issued.endpoint)
    resource = ExternalResource.objects.get(kind="process", identifier=runtime["process"])
    # Four restarts already happened in the last minutes; this crash is the fifth.
    now = time.time()
    resource.details = {**resource.details, "crashes": [now - 200, now - 150, now - 100, now - 60]}
    resource.save()
    for pid in processes.find(str(runtime["process"])):
        with contextlib.suppress(ProcessLookupError):  # serve's short-lived children exit on their own
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not processes.find(str(runtime["process"])), what="the runtime to die")

    pipeline_reconcile()  # the fifth restart
    assert Endpoint.objects.get(name="crashy").status == Endpoint.Status.LIVE
    resource.refresh_from_db()
    wait_for(lambda: processes.find(str(runtime["process"])), what="the restart")
    for pid in processes.find(str(runtime["process"])):
        with contextlib.suppress(ProcessLookupError):  # serve's short-lived children exit on their own
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not processes.find(str(runtime["process"])), what="the runtime to die again")

    pipeline_reconcile()

    endpoint = Endpoint.objects.get(name="crashy")
    assert endpoint.status == Endpoint.Status.FAILED
    assert "crashed 5 times" in endpoint.error
    assert "last log lines" in endpoint.error
    assert processes.find(str(runtime["process"])) == []


def test_a_runtime_that_never_answers_ping_fails_after_the_startup_timeout_with_its_log(
    owner: User, iris_models: Path
) -> None:
    from deployer.models import ModelVersion
    from deployer.tests.intake_support import tar_gz

    hanging = tar_gz(
        {
            "model.rds": (iris_models / "v1.rds").read_bytes(),
            "predict.R": b'load_fn <- function(model_dir) { message("loading forever"); Sys.sleep(3600) }\n',
        }
    )
    model = ready_model(owner, iris_models, "v1")
    model.artifact.save("hanging.tar.gz", ContentFile(hanging), save=False)
    model.artifact_kind = ModelVersion.ArtifactKind.TAR_GZ
    model.save()
    issued = endpoint_create(owner=owner, name="sleepy", model_version=model, options={"startup_timeout": 5})

    deployment = drive(issued.endpoint.current_deployment, timeout=60)  # type: ignore[arg-type]

    assert deployment.status == Deployment.Status.FAILED
    assert "did not answer /ping within 5 s" in deployment.error
    assert "loading forever" in deployment.error
    assert processes.find(f"sleepy-{deployment.pk}") == []
