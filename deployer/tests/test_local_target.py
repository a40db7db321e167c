"""The local target driven by the pipeline in this process: real R runtimes in real
containers (the session's engine), no worker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile

from deployer.integrations.containers import cli, runtimes
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, LogLine
from deployer.services.endpoints import (
    endpoint_create,
    endpoint_delete,
    endpoint_invoke,
    endpoint_stop,
    endpoint_update,
)
from deployer.services.reconciler import pipeline_reconcile
from deployer.targets.base import TargetOptionsError
from deployer.targets.local import LocalTarget, supervision
from deployer.targets.local.paths import container_name, endpoint_dir
from deployer.tests.pipeline_support import broken_model, container_running, iris_version, kill_runtime
from testsupport.pipeline import drive
from testsupport.r_models import expected, rows_csv
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_runtime_outlives_the_test"),
]


def invoke(owner: User, name: str, body: bytes, content_type: str) -> tuple[int, object]:
    result = endpoint_invoke(user=owner, name=name, body=body, headers={"Content-Type": content_type})
    assert result is not None
    return result.status, json.loads(result.body)


def live_runtime(endpoint: Endpoint) -> dict[str, str]:
    endpoint.refresh_from_db()
    return dict(endpoint.runtime)


def test_created_endpoint_goes_live_and_predicts_what_r_predicts(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="iris", model_version=iris_version(owner, iris_models, "v1"))
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


def test_the_runtime_is_a_locked_down_container_reached_only_through_its_checked_socket(
    owner: User, iris_models: Path
) -> None:
    issued = endpoint_create(
        owner=owner, name="boxed", model_version=iris_version(owner, iris_models, "v1"), options={"memory_mb": 1024}
    )
    deployment = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    runtime = live_runtime(issued.endpoint)

    assert runtime["container"] == container_name(deployment)
    socket_path = Path(runtime["socket"])
    assert socket_path.is_socket()
    # Taken back from the container before anyone connected: root's, not writable by it.
    assert (socket_path.parent.stat().st_uid, socket_path.parent.stat().st_mode & 0o777) == (0, 0o755)
    # Connectable by the worker and the data directory's group (the web processes), no one else.
    data_group = Path(settings.DATA_DIR).stat().st_gid
    assert (socket_path.stat().st_uid, socket_path.stat().st_gid, socket_path.stat().st_mode & 0o777) == (
        0,
        data_group,
        0o660,
    )
    config = json.loads(cli.check(["inspect", "--type", "container", runtime["container"]]))[0]
    host = config["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == 1024 * 1024**2
    assert host["PidsLimit"] == runtimes.PIDS_LIMIT
    assert "no-new-privileges" in " ".join(host["SecurityOpt"])
    uid = runtimes.runtime_uid(deployment.pk)
    assert config["Config"]["User"] == f"{uid}:{uid}"
    assert config["Config"]["Labels"][runtimes.LABEL_ENDPOINT] == "boxed"
    assert "DJANGO_SECRET_KEY" not in " ".join(config["Config"]["Env"])


def test_deleting_removes_the_container_and_the_files(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="gone", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    runtime = live_runtime(issued.endpoint)
    assert container_running(runtime["container"])
    assert endpoint_dir("gone").exists()

    deployment = endpoint_delete(endpoint=issued.endpoint)
    assert deployment is not None
    drive(deployment)

    endpoint = Endpoint.objects.get(name="gone")
    assert endpoint.status == Endpoint.Status.DELETED
    assert runtimes.state(runtime["container"]) is None
    assert runtimes.names(endpoint="gone") == []
    assert not Path(runtime["socket"]).exists()
    assert not endpoint_dir("gone").exists()
    assert not ExternalResource.objects.filter(endpoint=endpoint, deleted_at__isnull=True).exists()
    # What the runtime said while it served is in the endpoint's log.
    assert LogLine.objects.filter(endpoint=endpoint, source=LogLine.Source.RUNTIME, message__contains="model loaded")


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
    assert runtimes.names(endpoint="broken") == []
    assert not ExternalResource.objects.filter(deployment=deployment, deleted_at__isnull=True).exists()


def test_a_failed_update_leaves_the_previous_version_serving(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="steady", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    serving = live_runtime(issued.endpoint)

    update = drive(endpoint_update(endpoint=issued.endpoint, model_version=broken_model(owner, iris_models)))

    assert update.status == Deployment.Status.FAILED
    endpoint = Endpoint.objects.get(name="steady")
    assert endpoint.status == Endpoint.Status.LIVE
    assert "rdeployNoSuchPackage" in endpoint.error
    assert endpoint.runtime == serving
    truth = expected(iris_models)
    assert invoke(owner, "steady", rows_csv(truth["rows"]), "text/csv") == (200, {"predictions": truth["v1"]})


def test_starting_the_runtime_twice_starts_one_container(owner: User, iris_models: Path) -> None:
    from deployer.services.pipeline import serving_deployment
    from deployer.targets import get_target
    from deployer.targets.base import StepContext

    issued = endpoint_create(owner=owner, name="twice", model_version=iris_version(owner, iris_models, "v1"))
    deployment = issued.endpoint.current_deployment
    assert deployment is not None
    target = get_target("local")
    for name in ("prepare_model_dir", "start_runtime", "start_runtime", "prepare_model_dir"):
        step = deployment.steps.get(name=name)
        deployment.refresh_from_db()
        target.run_step(
            name, StepContext(deployment=deployment, step=step, previous=serving_deployment(issued.endpoint))
        )

    name = container_name(deployment)
    assert len(ExternalResource.objects.filter(kind=ExternalResource.Kind.CONTAINER, identifier=name)) == 1
    assert runtimes.names(endpoint="twice") == [name]
    assert container_running(name)


def test_a_killed_runtime_is_restarted_by_the_reconciler(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="phoenix", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    runtime = live_runtime(issued.endpoint)
    kill_runtime(runtime["container"])

    pipeline_reconcile()

    truth = expected(iris_models)
    wait_for(
        lambda: invoke(owner, "phoenix", rows_csv(truth["rows"]), "text/csv") == (200, {"predictions": truth["v1"]}),
        timeout=30,
        what="the restarted runtime to answer",
    )
    endpoint = Endpoint.objects.get(name="phoenix")
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.runtime["container"] == runtime["container"]
    assert endpoint.runtime["socket"] != runtime["socket"]
    assert not Path(runtime["socket"]).exists()
    assert ExternalResource.objects.get(identifier=runtime["container"]).details["start"] == 1
    assert LogLine.objects.filter(endpoint=endpoint, message__contains="restarted it (restart 1)").exists()


def test_a_runtime_a_stop_removes_is_not_restarted_by_a_reconciler_that_read_the_endpoint_before(
    owner: User, iris_models: Path
) -> None:
    """The reconciler reads the serving endpoints, then supervises each: a stop requested
    in between removes the container before it marks its resource removed, and the
    reconciler saw a live resource whose container was gone and started it again (a
    full CI run caught one left running after the stop)."""
    issued = endpoint_create(owner=owner, name="no-zombie", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    read_before = Endpoint.objects.get(name="no-zombie")
    container = read_before.runtime["container"]
    endpoint_stop(endpoint=read_before)
    runtimes.stop(container)  # the stop step's removal, its resource not yet marked

    LocalTarget().check(read_before)

    assert ExternalResource.objects.live().filter(identifier=container).exists()
    assert runtimes.names(endpoint="no-zombie") == []
    assert not LogLine.objects.filter(endpoint=read_before, message__contains="restarted it").exists()


def test_a_runtime_restarted_while_a_stop_begins_is_removed_again(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart is recorded under the endpoint's lock, the container started without it
    (a slow engine must not hold the row): a stop requested during the start is seen by
    the check after it, and the container is not left running."""
    issued = endpoint_create(owner=owner, name="late-stop", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    endpoint = Endpoint.objects.get(name="late-stop")
    kill_runtime(endpoint.runtime["container"])
    started = supervision.start_container

    def start_while_a_stop_is_requested(**arguments: Any) -> None:
        started(**arguments)
        assert container_running(arguments["name"])
        endpoint_stop(endpoint=Endpoint.objects.get(name="late-stop"))

    monkeypatch.setattr(supervision, "start_container", start_while_a_stop_is_requested)

    LocalTarget().check(endpoint)

    assert runtimes.names(endpoint="late-stop") == []
    assert not LogLine.objects.filter(endpoint=endpoint, message__contains="restarted it").exists()


def test_a_restart_waits_for_its_backoff(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="patient", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    container = live_runtime(issued.endpoint)["container"]
    resource = ExternalResource.objects.get(kind=ExternalResource.Kind.CONTAINER, identifier=container)
    # Two crashes, the last one a second ago: the third restart waits 4 s.
    resource.details = {**resource.details, "crashes": [time.time() - 30, time.time() - 1]}
    resource.save()
    kill_runtime(container)

    pipeline_reconcile()
    assert not container_running(container)
    assert Endpoint.objects.get(name="patient").status == Endpoint.Status.LIVE

    time.sleep(4)
    pipeline_reconcile()
    assert container_running(container)
    resource.refresh_from_db()
    assert len(resource.details["crashes"]) == 3


def test_a_runtime_that_keeps_crashing_marks_the_endpoint_failed_with_its_log(owner: User, iris_models: Path) -> None:
    issued = endpoint_create(owner=owner, name="crashy", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    container = live_runtime(issued.endpoint)["container"]
    resource = ExternalResource.objects.get(kind=ExternalResource.Kind.CONTAINER, identifier=container)
    # Four restarts already happened in the last minutes; this crash is the fifth.
    now = time.time()
    resource.details = {**resource.details, "crashes": [now - 200, now - 150, now - 100, now - 60]}
    resource.save()
    kill_runtime(container)

    pipeline_reconcile()  # the fifth restart
    assert Endpoint.objects.get(name="crashy").status == Endpoint.Status.LIVE
    wait_for(lambda: container_running(container), what="the restart")
    kill_runtime(container)

    pipeline_reconcile()

    endpoint = Endpoint.objects.get(name="crashy")
    assert endpoint.status == Endpoint.Status.FAILED
    assert "crashed 5 times" in endpoint.error
    assert "last log lines" in endpoint.error
    assert not container_running(container)


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
    model = iris_version(owner, iris_models, "v1")
    model.artifact.save("hanging.tar.gz", ContentFile(hanging), save=False)
    model.artifact_kind = ModelVersion.ArtifactKind.TAR_GZ
    model.save()
    issued = endpoint_create(owner=owner, name="sleepy", model_version=model, options={"startup_timeout": 5})

    deployment = drive(issued.endpoint.current_deployment, timeout=60)  # type: ignore[arg-type]

    assert deployment.status == Deployment.Status.FAILED
    assert "did not answer /ping within 5 s" in deployment.error
    assert "loading forever" in deployment.error
    assert runtimes.names(endpoint="sleepy") == []


def test_without_a_container_engine_a_local_deploy_fails_its_first_step_and_runs_nothing(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = endpoint_create(owner=owner, name="engineless", model_version=iris_version(owner, iris_models, "v1"))
    monkeypatch.setenv("PATH", "/nonexistent")

    deployment = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]

    monkeypatch.undo()
    assert deployment.status == Deployment.Status.FAILED
    assert deployment.steps.get(name="prepare_model_dir").status == DeploymentStep.Status.FAILED
    assert "Local endpoints run in containers" in deployment.error
    assert "no podman command" in deployment.error
    assert runtimes.names(endpoint="engineless") == []
    assert not endpoint_dir("engineless").exists()


def test_the_runner_option_is_refused_and_memory_is_a_whole_number_of_mib_within_bounds() -> None:
    target = LocalTarget()

    for runner in ("process", "docker"):
        with pytest.raises(TargetOptionsError, match="every local endpoint now runs in a container"):
            target.validate_options({"runner": runner})
    assert target.validate_options({"memory_mb": 2048})["memory_mb"] == 2048
    for wrong in (100, 2**21, "4096", 1.5, True):
        with pytest.raises(TargetOptionsError, match="memory_mb"):
            target.validate_options({"memory_mb": wrong})


def test_runtime_output_reaches_the_endpoints_log_once_through_the_engine(owner: User, iris_models: Path) -> None:
    from deployer.targets import get_target

    issued = endpoint_create(owner=owner, name="chatty", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    endpoint = Endpoint.objects.get(name="chatty")
    target = get_target("local")
    target.collect_logs(endpoint)
    truth = expected(iris_models)
    invoke(owner, "chatty", rows_csv(truth["rows"]), "text/csv")

    wait_for(lambda: target.collect_logs(endpoint), what="the access line")
    target.collect_logs(endpoint)

    lines = list(
        LogLine.objects.filter(endpoint=endpoint, source=LogLine.Source.RUNTIME).values_list("message", flat=True)
    )
    assert sum("model loaded" in line for line in lines) == 1
    assert sum("POST /invocations 200" in line for line in lines) == 2  # the smoke test's and ours
    assert len(lines) == len(set(lines))  # none stored twice (access lines carry their time)


def test_a_runtime_left_running_as_a_host_process_by_an_earlier_rdeploy_is_stopped_and_the_endpoint_fails(
    owner: User, tmp_path: Path
) -> None:
    from deployer.integrations import processes
    from deployer.models import ModelVersion
    from testsupport.factories import make_endpoint, make_model_version

    started = processes.start(
        identifier="legacy-1", command=["sleep", "120"], env={}, cwd=tmp_path, log_path=tmp_path / "runtime.log"
    )
    model = make_model_version(owner, status=ModelVersion.Status.READY)
    endpoint = make_endpoint(
        owner,
        name="legacy",
        model_version=model,
        status=Endpoint.Status.LIVE,
        runtime={"port": 12345, "pid": started.pid, "start_ticks": started.start_ticks, "process": "legacy-1"},
    )

    pipeline_reconcile()

    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.FAILED
    assert "Deploy the model again" in endpoint.error
    assert processes.find("legacy-1") == []


def test_a_log_that_cannot_be_read_does_not_keep_the_runtime_from_being_deleted(
    owner: User, iris_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = endpoint_create(owner=owner, name="unreadable", model_version=iris_version(owner, iris_models, "v1"))
    drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    container = live_runtime(issued.endpoint)["container"]

    def unreadable(name: str, cursor: str | None, **_: object) -> tuple[list[str], str | None]:
        raise ValueError("a log line nobody can parse")

    monkeypatch.setattr(runtimes, "read_logs", unreadable)
    pipeline_reconcile()  # collecting fails, supervising goes on
    deployment = endpoint_delete(endpoint=issued.endpoint)
    assert deployment is not None

    assert drive(deployment).status == Deployment.Status.SUCCEEDED
    assert runtimes.state(container) is None


def test_a_container_of_another_installation_with_the_rollouts_name_is_left_alone(
    owner: User, iris_models: Path
) -> None:
    issued = endpoint_create(owner=owner, name="squatted", model_version=iris_version(owner, iris_models, "v1"))
    deployment = issued.endpoint.current_deployment
    assert deployment is not None
    name = container_name(deployment)
    labels = ["--label", f"{cli.LABEL_INSTALLATION}=elsewhere", "--label", f"{cli.LABEL_ROLE}={runtimes.ROLE}"]
    cli.check(["run", "--detach", "--name", name, *labels, "--network", "none", settings.BASE_IMAGE, "sleep", "120"])
    try:
        deployment = drive(deployment)

        assert deployment.status == Deployment.Status.FAILED
        assert "not this rdeploy installation's" in deployment.error
        assert container_running(name)
        assert cli.check(["inspect", "--format", "{{.Config.Labels}}", name]).count("elsewhere") == 1
    finally:
        cli.remove(name)
