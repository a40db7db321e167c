"""Model versions: upload (checked, hashed, stored), inspection in a container, deletion.
The runtime's model directory is written by deployer/model_files.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Max, ProtectedError, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from deployer import artifacts
from deployer.artifacts import ArtifactRejected, ArtifactTooLarge
from deployer.build_context import MAX_RENV_LOCK_BYTES, check_renv_lock
from deployer.integrations.containers import cli, images, sandbox
from deployer.jobs import enqueue
from deployer.model_files import artifact_unpack
from deployer.model_files import model_version_directory_digest as model_version_directory_digest
from deployer.model_files import model_version_materialize as model_version_materialize
from deployer.models import Deployment, Endpoint, ModelVersion, name_validator
from deployer.services.images import serving_image_ensure

logger = logging.getLogger(__name__)

RENV_LOCK = "renv.lock"
INSPECT_SCRIPT = Path(__file__).resolve().parent.parent / "r" / "inspect.R"
# The sample's name in the inspection container's scratch (inspect.R sniffs CSV or JSON).
SAMPLE_NAME = "sample"
# Room in the inspection container's tmpfs for R's temporary files, beyond the model.
SCRATCH_HEADROOM_BYTES = 256 * 1024**2
# What the model's output may put into a reason and into the record the uploader sees.
MAX_REASON_CHARS = 2000
# What inspect.R reports that the inspection record keeps (its other fields are rdeploy's).
OUTCOME_FIELDS = frozenset(
    {"class", "hooks", "packages", "schema", "schema_source", "prediction", "example", "warnings"}
    | {"code", "reason", "missing_packages"}
)
STDERR_TAIL_CHARS = 4000
SAMPLE_MAX_BYTES = 5 * 1024 * 1024
# R's own rule for package names (Writing R Extensions, 1.1.1).
_PACKAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]$")
_EXTENSIONS = {"rds": "rds", "tar.gz": "tar.gz", "zip": "zip"}
# Image builds install the packages the inspected R reports: a ceiling keeps a hostile
# model from turning one upload into a build of a whole repository.
MAX_PACKAGES_TO_INSTALL = 50
MAX_IMAGE_ROUNDS = 3


class ModelVersionInUse(Exception):
    """The version serves (or served) an endpoint; the message names it (HTTP 409)."""


@dataclass(frozen=True)
class UploadOutcome:
    model_version: ModelVersion
    # False when the same bytes were already uploaded under this name: the existing version.
    created: bool


def _artifact_storage() -> Storage:
    return storages["artifacts"]


def _parse_packages(packages: str | Iterable[str]) -> list[str]:
    items = packages.split(",") if isinstance(packages, str) else list(packages)
    names = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    for package in names:
        if not _PACKAGE_NAME.match(package):
            raise ArtifactRejected(f"'{package}' is not a valid R package name")
    return names


def _check_sample(sample: UploadedFile) -> str:
    """The sample's extension (csv or json) after light checks; R parses it for real."""
    if sample.size is not None and sample.size > SAMPLE_MAX_BYTES:
        raise ArtifactRejected(f"the sample is larger than {SAMPLE_MAX_BYTES} bytes: a few rows are enough")
    sample.seek(0)
    head = sample.read(4096)
    sample.seek(0)
    if not head.strip():
        raise ArtifactRejected("the sample is empty")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut in half at the 4 KiB boundary
            raise ArtifactRejected("the sample must be UTF-8 text: CSV with a header row, or JSON records") from exc
        text = head[: exc.start].decode("utf-8")
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def model_version_upload(
    *,
    owner: User,
    name: str,
    file: UploadedFile,
    sample: UploadedFile | None = None,
    packages: str | Iterable[str] = (),
) -> UploadOutcome:
    """Checks and stores an uploaded model, then queues its inspection.

    Raises ArtifactRejected (bad name, format, bundle or sample) or ArtifactTooLarge; a
    refused upload leaves no row and no stored file. The same bytes under the same name
    return the existing version (created=False), so CI can re-run safely."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise ArtifactRejected(f"invalid name '{name}': {' '.join(exc.messages)}") from exc
    requested = _parse_packages(packages)
    if file.size is not None and file.size > settings.MAX_UPLOAD_BYTES:
        raise ArtifactTooLarge(settings.MAX_UPLOAD_BYTES)
    sha256 = artifacts.uploaded_sha256(file)
    existing = ModelVersion.objects.filter(owner=owner, name=name, sha256=sha256).first()
    if existing is not None:
        if existing.status == ModelVersion.Status.INVALID:
            # "Fix it and upload again": the packages, the sample or the server may have
            # changed since, so the same bytes are inspected again.
            existing = _retry_invalid(existing, sample=sample, requested=requested)
        return UploadOutcome(existing, created=False)

    with artifacts.local_copy(file) as path:
        size = path.stat().st_size
        if size > settings.MAX_UPLOAD_BYTES:
            raise ArtifactTooLarge(settings.MAX_UPLOAD_BYTES)
        if size == 0:
            raise ArtifactRejected("the file is empty")
        kind = artifacts.sniff_file(path).kind
        if kind != ModelVersion.ArtifactKind.RDS:
            artifacts.inspect_bundle(path, kind)
    sample_extension = _check_sample(sample) if sample is not None else None

    storage = _artifact_storage()
    base = f"models/{owner.pk}/{name}/{sha256}"
    stored: list[str] = []
    try:
        file.seek(0)
        stored.append(storage.save(f"{base}.{_EXTENSIONS[kind]}", file))
        if sample is not None:
            sample.seek(0)
            stored.append(storage.save(f"{base}.sample.{sample_extension}", sample))
        model_version = _create_row(
            owner=owner,
            name=name,
            kind=kind,
            sha256=sha256,
            size=size,
            stored=stored,
            original_filename=(file.name or "")[:255],
            requested=requested,
        )
    except BaseException:
        for stored_name in stored:
            storage.delete(stored_name)
        raise
    if model_version.artifact.name not in stored:
        # Another request stored the same bytes first: keep its files, drop ours.
        for stored_name in stored:
            storage.delete(stored_name)
        return UploadOutcome(model_version, created=False)
    return UploadOutcome(model_version, created=True)


def _retry_invalid(model_version: ModelVersion, *, sample: UploadedFile | None, requested: list[str]) -> ModelVersion:
    storage = _artifact_storage()
    old_sample = str(model_version.sample.name or "")
    new_sample = old_sample
    if sample is not None:
        extension = _check_sample(sample)
        sample.seek(0)
        new_sample = storage.save(
            f"models/{model_version.owner_id}/{model_version.name}/{model_version.sha256}.sample.{extension}", sample
        )
    try:
        with transaction.atomic():
            changed = ModelVersion.objects.filter(pk=model_version.pk, status=ModelVersion.Status.INVALID).update(
                status=ModelVersion.Status.INSPECTING,
                status_reason="",
                inspection=_queued(),
                inspected_at=None,
                sample=new_sample,
                requested_packages=requested or model_version.requested_packages,
            )
            if changed:
                enqueue("rdeploy.model_version_inspect", model_version.pk)
                if old_sample and old_sample != new_sample:
                    transaction.on_commit(lambda: storage.delete(old_sample))
    except BaseException:
        if new_sample != old_sample:
            storage.delete(new_sample)
        raise
    if not changed and new_sample != old_sample:
        storage.delete(new_sample)
    model_version.refresh_from_db()
    return model_version


def _queued() -> dict[str, Any]:
    """The inspection record while waiting: when the inspection was queued (for the reaper)."""
    return {"queued_at": timezone.now().isoformat()}


def model_versions_requeue_stuck() -> list[int]:
    """Queues again the inspections whose message was lost (a broker restart, a failed
    send after commit). Only versions queued longer ago than a task may run (the Celery
    hard time limit, plus a margin): no worker can still be inspecting them. A duplicate
    message is harmless: inspection of a finished version is a no-op."""
    stale = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    requeued = []
    for model_version in ModelVersion.objects.filter(status=ModelVersion.Status.INSPECTING).only("pk", "inspection"):
        queued_at = parse_datetime(str(model_version.inspection.get("queued_at") or ""))
        if queued_at is not None and queued_at >= stale:
            continue
        with transaction.atomic():
            changed = ModelVersion.objects.filter(
                pk=model_version.pk, status=ModelVersion.Status.INSPECTING, inspection=model_version.inspection
            ).update(inspection=_queued())
            if changed:
                enqueue("rdeploy.model_version_inspect", model_version.pk)
                requeued.append(model_version.pk)
    if requeued:
        logger.warning("re-queued stuck inspections of model versions %s", requeued)
    return requeued


def inspection_containers_remove_leftovers() -> None:
    """Removes the stopped inspection containers of workers that died mid-inspection (their
    inspections are queued again by `model_versions_requeue_stuck`)."""
    try:
        sandbox.remove_leftovers(wall_seconds=settings.INSPECT_TIMEOUT_SECONDS)
    except (cli.EngineUnavailable, cli.EngineCommandFailed):
        # /healthz reports an engine that does not answer; the next round tries again.
        logger.warning("could not remove leftover inspection containers", exc_info=True)


def model_version_reinspect(*, model_version: ModelVersion) -> bool:
    """Inspects a `ready` or `invalid` version again (after RDEPLOY_CRAN_REPO, the base
    image or the runtime changed). False when it is already being inspected."""
    with transaction.atomic():
        changed = (
            ModelVersion.objects.filter(pk=model_version.pk)
            .exclude(status=ModelVersion.Status.INSPECTING)
            .update(status=ModelVersion.Status.INSPECTING, status_reason="", inspection=_queued(), inspected_at=None)
        )
        if changed:
            enqueue("rdeploy.model_version_inspect", model_version.pk)
    model_version.refresh_from_db()
    return bool(changed)


def _create_row(
    *,
    owner: User,
    name: str,
    kind: str,
    sha256: str,
    size: int,
    stored: list[str],
    original_filename: str,
    requested: list[str],
) -> ModelVersion:
    for _attempt in range(3):
        try:
            with transaction.atomic():
                existing = ModelVersion.objects.filter(owner=owner, name=name, sha256=sha256).first()
                if existing is not None:
                    return existing
                latest = ModelVersion.objects.filter(owner=owner, name=name).aggregate(n=Max("version"))["n"]
                model_version = ModelVersion.objects.create(
                    owner=owner,
                    name=name,
                    version=(latest or 0) + 1,
                    artifact=stored[0],
                    artifact_kind=kind,
                    original_filename=original_filename,
                    sha256=sha256,
                    size=size,
                    sample=stored[1] if len(stored) > 1 else "",
                    requested_packages=requested,
                    status=ModelVersion.Status.INSPECTING,
                    inspection=_queued(),
                )
                enqueue("rdeploy.model_version_inspect", model_version.pk)
                return model_version
        except IntegrityError:
            # A concurrent upload under the same name took this version number (or
            # stored the same bytes): look again.
            continue
    raise IntegrityError(f"could not number a new version of '{name}'")


def model_version_delete(*, model_version: ModelVersion) -> None:
    """Deletes a version and its files; refused while an endpoint or a rollout uses it."""
    endpoint = (
        Endpoint.objects.filter(Q(model_version=model_version) | Q(previous_model_version=model_version))
        .exclude(status=Endpoint.Status.DELETED)
        .first()
    )
    if endpoint is not None:
        raise ModelVersionInUse(
            f"{model_version} is used by endpoint '{endpoint.name}' ({endpoint.status}): "
            "deploy another version there or delete the endpoint first"
        )
    deployment = Deployment.objects.filter(model_version=model_version).select_related("endpoint").first()
    if deployment is not None:
        raise ModelVersionInUse(
            f"{model_version} is in the deployment history of endpoint '{deployment.endpoint.name}'"
        )
    names = [model_version.artifact.name, model_version.sample.name]
    storage = _artifact_storage()

    def delete_files() -> None:
        for stored_name in names:
            if stored_name:
                storage.delete(stored_name)

    try:
        with transaction.atomic():
            model_version.delete()
            transaction.on_commit(delete_files)
    except ProtectedError as exc:
        # E.g. a deleted endpoint's row still records the version it last served.
        holders = ", ".join(sorted({str(obj) for obj in exc.protected_objects}))
        raise ModelVersionInUse(f"{model_version} is still referenced by: {holders}") from exc


# ---- Inspection ----------------------------------------------------------------------------


def _inspection_limits(files: dict[str, Path]) -> sandbox.Limits:
    # The tmpfs holds the unpacked model and sample, plus room for R's temporary files;
    # its pages count against the container's memory limit too.
    staged = sum(
        path.stat().st_size for source in files.values() for path in [source, *source.rglob("*")] if path.is_file()
    )
    return sandbox.Limits(
        memory_bytes=settings.INSPECT_MEMORY_BYTES,
        wall_seconds=settings.INSPECT_TIMEOUT_SECONDS,
        scratch_bytes=staged + SCRATCH_HEADROOM_BYTES,
    )


def _run_inspection(
    *,
    model_version: ModelVersion,
    image: str,
    files: dict[str, Path],
    limits: sandbox.Limits,
    requested: list[str],
) -> tuple[dict[str, Any], sandbox.Result | None]:
    """One run of inspect.R in a container of `image`: its verdict, and the run's result
    (None when the container engine could not run it)."""
    sample = f"{sandbox.SCRATCH}/{SAMPLE_NAME}" if SAMPLE_NAME in files else ""
    try:
        result = sandbox.run(
            image=image,
            files=files,
            command=[
                "Rscript",
                "--vanilla",
                f"{sandbox.SCRATCH}/rdeploy/inspect.R",
                f"{sandbox.SCRATCH}/model",
                sample,
                ",".join(requested),
            ],
            limits=limits,
            environment={"RDEPLOY_RUNTIME_DIR": f"{sandbox.SCRATCH}/rdeploy"},
            name_hint=str(model_version.pk),
        )
    except sandbox.SandboxUnavailable as exc:
        return {"status": "invalid", "code": "engine", "reason": _engine_reason(str(exc))}, None
    if result.timed_out:
        limit = settings.INSPECT_TIMEOUT_SECONDS
        return {
            "status": "invalid",
            "code": "timeout",
            "reason": f"inspection did not finish within {limit} s (RDEPLOY_INSPECT_TIMEOUT): "
            "loading or predicting with the model takes too long",
        }, result
    if result.output_exceeded:
        return {
            "status": "invalid",
            "code": "too_much_output",
            "reason": f"the model printed more than {sandbox.OUTPUT_LIMIT // 1024**2} MiB while being inspected",
        }, result
    if result.out_of_memory:
        limit_mib = settings.INSPECT_MEMORY_BYTES // 1024**2
        return {
            "status": "invalid",
            "code": "out_of_memory",
            "reason": f"R ran out of memory inspecting the model (limit {limit_mib} MiB, RDEPLOY_INSPECT_MEMORY_BYTES)",
        }, result
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.exit_code == 0 and lines:
        try:
            return _checked_outcome(json.loads(lines[-1])), result
        # RecursionError: JSON nested deeper than Python's parser goes, printed by the model.
        except (ValueError, RecursionError) as exc:
            reason = f"the inspection's result could not be read ({exc}): the model's code may have printed over it"
            return {"status": "invalid", "code": "bad_result", "reason": reason}, result
    stderr = result.stderr_tail.strip().splitlines()
    detail = " ".join(stderr[-3:])[-MAX_REASON_CHARS:] if stderr else f"exit status {result.exit_code}"
    return {"status": "invalid", "code": "crashed", "reason": f"R stopped while inspecting the model: {detail}"}, result


def _checked_outcome(outcome: Any) -> dict[str, Any]:
    """inspect.R's verdict, which the model's own code could have printed instead: the
    shape the rest of rdeploy reads, or ValueError."""
    if not isinstance(outcome, dict) or outcome.get("status") not in ("ok", "invalid"):
        raise ValueError("not a verdict")
    if outcome["status"] == "invalid":
        if not isinstance(outcome.get("code"), str) or not isinstance(outcome.get("reason", ""), str):
            raise ValueError("a refusal without a code")
        outcome["reason"] = outcome.get("reason", "")[:MAX_REASON_CHARS]
        return outcome
    packages = outcome.get("packages")
    prediction = outcome.get("prediction")
    if not (
        isinstance(outcome.get("class"), list)
        and all(isinstance(name, str) for name in outcome["class"])
        and isinstance(packages, dict)
        and isinstance(packages.get("required"), list)
        and isinstance(prediction, dict)
        and isinstance(prediction.get("kind"), str)
        and all(isinstance(outcome.get(field), dict | None) for field in ("schema", "example"))
        and isinstance(outcome.get("warnings", []), list)
    ):
        raise ValueError("an acceptance without a class, packages or prediction kind")
    # Serving images are built with these names later: the rules the packages to add obey.
    required = packages["required"]
    if len(required) > MAX_PACKAGES_TO_INSTALL or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and _PACKAGE_NAME.match(p["name"]) for p in required
    ):
        raise ValueError(f"the required packages are not at most {MAX_PACKAGES_TO_INSTALL} R package names")
    return outcome


def _packages_to_install(outcome: dict[str, Any]) -> list[str]:
    """What a serving image with more packages could fix: packages the model needs, or that
    its renv.lock lists (predict.R may load them), that the image lacks.

    The list comes from the container's stdout, which the model's own code can write:
    ValueError unless it is at most MAX_PACKAGES_TO_INSTALL valid R package names, since
    image builds run with network access."""
    if outcome.get("code") == "missing_packages":
        names = outcome.get("missing_packages")
    elif outcome.get("status") == "ok":
        names = (outcome.get("packages") or {}).get("renv_missing") or []
    else:
        return []
    if not isinstance(names, list):
        raise ValueError("the inspection reported its missing packages in an unexpected form: no image was built")
    for name in names:
        if not isinstance(name, str) or not _PACKAGE_NAME.match(name):
            raise ValueError(
                f"the inspection reported {str(name)[:80]!r} as a package to install, which is not an R package "
                "name: no image was built"
            )
    unique = list(dict.fromkeys(names))
    if len(unique) > MAX_PACKAGES_TO_INSTALL:
        raise ValueError(_too_many_packages(len(unique)))
    return unique


class ImageUnavailable(Exception):
    """No serving image for the model's packages; ``code`` is "engine" when the container
    engine is the problem, "image_build_failed" when the packages are."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _serving_image(packages: list[str], renv_lock: bytes | None) -> str:
    """The serving image with ``packages`` (built now when the engine lacks it): inspection
    runs in the image the model will be served in, locally and on SageMaker."""
    try:
        return serving_image_ensure(packages=packages, renv_lock=renv_lock)
    except (cli.EngineUnavailable, cli.EngineCommandFailed) as exc:
        raise ImageUnavailable("engine", _engine_reason(cli.engine_problem() or str(exc))) from exc
    except images.ImageBuildFailed as exc:
        # A missing base image fails the build too: that is the operator's to fix.
        if problem := cli.engine_problem():
            raise ImageUnavailable("engine", _engine_reason(problem)) from exc
        errors = [line.strip() for line in exc.lines if line.strip().startswith("Error")]
        detail = errors[0] if errors else " ".join(exc.lines[-3:]) or str(exc)
        named = ", ".join(packages) or "no extra R packages"
        reason = f"the serving image (with {named}) could not be built: {detail}"[:MAX_REASON_CHARS]
        raise ImageUnavailable("image_build_failed", reason) from exc
    except ValueError as exc:
        raise ImageUnavailable("image_build_failed", f"the serving image cannot be described: {exc}") from exc


def _engine_reason(problem: str) -> str:
    return f"this server cannot run model code now: {problem}"


def _too_many_packages(count: int) -> str:
    return (
        f"the model needs {count} R packages its image lacks, and rdeploy adds at most "
        f"{MAX_PACKAGES_TO_INSTALL} per model: use fewer packages, then upload again"
    )


def _rdeploy_json(outcome: dict[str, Any], writer_r_version: str | None) -> dict[str, Any]:
    """The runtime's rdeploy.json (container_templates/runtime/README.md)."""
    found = outcome["prediction"]
    prediction: dict[str, Any] = {"kind": found["kind"]}
    if found.get("classes"):
        prediction["levels"] = found["classes"]
    if "probabilities" in found:
        prediction["probabilities"] = found["probabilities"]
    config: dict[str, Any] = {
        "format_version": 1,
        "r_version": writer_r_version or outcome.get("reader_r_version"),
        "packages": outcome["packages"]["required"],
        "model_class": outcome["class"],
        "prediction": prediction,
    }
    if outcome.get("schema"):
        config["schema"] = outcome["schema"]
    return config


@dataclass(frozen=True)
class _Inspected:
    outcome: dict[str, Any]
    # The last image inspected in ("" when none could be had) and its packages.
    image: str
    image_packages: list[str]
    runs: list[sandbox.Result]


def _inspect_in_serving_images(
    *,
    model_version: ModelVersion,
    files: dict[str, Path],
    limits: sandbox.Limits,
    renv_lock: bytes | None,
    timings: dict[str, float],
) -> _Inspected:
    """Inspects in the serving image with the packages the uploader asked for, then, while
    R reports packages that image lacks, in the image with those added: adding one can
    reveal the next (the model loads further each round), so a few rounds, one image per
    package set."""
    requested = list(model_version.requested_packages)
    wanted = list(requested)
    image, image_packages = "", list(wanted)
    runs: list[sandbox.Result] = []
    outcome: dict[str, Any] = {}
    for round_ in range(MAX_IMAGE_ROUNDS):
        stage = timezone.now()
        try:
            image, image_packages = _serving_image(wanted, renv_lock), list(wanted)
        except ImageUnavailable as exc:
            outcome = {"status": "invalid", "code": exc.code, "reason": str(exc)}
            break
        finally:
            timings["image"] = timings.get("image", 0.0) + (timezone.now() - stage).total_seconds()
        outcome, result = _run_inspection(
            model_version=model_version, image=image, files=files, limits=limits, requested=requested
        )
        if result is not None:
            runs.append(result)
        try:
            new = [p for p in _packages_to_install(outcome) if p not in wanted]
            if len(wanted) + len(new) > MAX_PACKAGES_TO_INSTALL:
                raise ValueError(_too_many_packages(len(wanted) + len(new)))
        except ValueError as exc:
            outcome = {"status": "invalid", "code": "bad_package_list", "reason": str(exc)}
            break
        if not new:
            break
        if round_ == MAX_IMAGE_ROUNDS - 1:
            outcome = {
                "status": "invalid",
                "code": "missing_packages",
                "reason": f"the model still needs R packages after {MAX_IMAGE_ROUNDS} image builds: "
                f"{', '.join(new)}: name every package it needs in `packages` and upload again",
            }
            break
        wanted += new
    return _Inspected(outcome, image, image_packages, runs)


def model_version_inspect(*, model_version: ModelVersion) -> ModelVersion:
    """Loads and test-predicts the model in a locked-down container of the serving image;
    the version becomes `ready` with its inspection record (and the image that serves it),
    or `invalid` with a reason. A no-op unless `inspecting`."""
    if model_version.status != ModelVersion.Status.INSPECTING:
        return model_version
    started = timezone.now()
    timings: dict[str, float] = {}
    # Only rdeploy writes here: the model's code runs in a container that gets a copy.
    with tempfile.TemporaryDirectory(prefix="rdeploy-inspect-") as directory:
        staging = Path(directory)
        stage = timezone.now()
        model_dir = staging / "model"
        try:
            artifact_unpack(model_version, model_dir)
        except ArtifactRejected as exc:
            return _finish(model_version, status=ModelVersion.Status.INVALID, reason=str(exc), inspection={})
        except FileNotFoundError as exc:
            reason = f"the stored model file is missing: {exc}"
            return _finish(model_version, status=ModelVersion.Status.INVALID, reason=reason, inspection={})
        except OSError as exc:
            # Left uncaught, the version would stay `inspecting` and be re-queued forever.
            # Uploading the same bytes again inspects them again (after e.g. a full disk).
            logger.exception("could not unpack model version %s", model_version.pk)
            reason = f"the model could not be unpacked on this server: {exc}"
            return _finish(model_version, status=ModelVersion.Status.INVALID, reason=reason, inspection={})
        lock = model_dir / RENV_LOCK
        renv_lock = None
        if lock.is_file():
            # One byte past the limit is enough for check_renv_lock to refuse it.
            with lock.open("rb") as lock_file:
                renv_lock = lock_file.read(MAX_RENV_LOCK_BYTES + 1)
            # Said here, at upload, rather than when an image build for SageMaker refuses it.
            try:
                check_renv_lock(renv_lock)
            except ValueError as exc:
                return _finish(model_version, status=ModelVersion.Status.INVALID, reason=str(exc), inspection={})
        files = {
            "model": model_dir,
            "rdeploy/rdeploy_runtime.R": Path(settings.RUNTIME_DIR) / "rdeploy_runtime.R",
            "rdeploy/inspect.R": INSPECT_SCRIPT,
        }
        if model_version.sample:
            files[SAMPLE_NAME] = staging / SAMPLE_NAME
            with model_version.sample.open("rb") as source:
                artifacts.copy_stream(source, files[SAMPLE_NAME])
        header = artifacts.sniff_file(model_dir / artifacts.MODEL_FILE).rds
        limits = _inspection_limits(files)
        timings["prepare"] = (timezone.now() - stage).total_seconds()

        inspected = _inspect_in_serving_images(
            model_version=model_version, files=files, limits=limits, renv_lock=renv_lock, timings=timings
        )

    outcome, image, runs = inspected.outcome, inspected.image, inspected.runs
    timings["container"] = sum(run.seconds for run in runs)
    timings["total"] = (timezone.now() - started).total_seconds()
    inspection: dict[str, Any] = {
        **{key: value for key, value in outcome.items() if key in OUTCOME_FIELDS},
        "r_version": {
            "writer": header.writer_r_version if header else None,
            "reader": outcome.get("reader_r_version"),
        },
        "rds": dataclasses.asdict(header) if header else None,
        "image": image,
        # What `image` was built with beyond the runtime (with the bundle's renv.lock): the
        # same list renders the same image for the local target and SageMaker.
        "image_packages": inspected.image_packages,
        "sandbox": sandbox.isolation(image, limits) if runs else None,
        "timings": {"r_script": outcome.get("timings", {}), **timings},
    }
    if outcome.get("status") == "ok":
        inspection["rdeploy_json"] = _rdeploy_json(outcome, header.writer_r_version if header else None)
        return _finish(model_version, status=ModelVersion.Status.READY, reason="", inspection=inspection)
    if runs:
        inspection["exit_code"] = runs[-1].exit_code
        inspection["stderr_tail"] = runs[-1].stderr_tail[-STDERR_TAIL_CHARS:]
    return _finish(
        model_version, status=ModelVersion.Status.INVALID, reason=str(outcome.get("reason")), inspection=inspection
    )


def model_version_inspection_abandon(*, model_version: ModelVersion, reason: str) -> ModelVersion:
    """Ends an inspection that cannot finish (the task's time limit): `invalid` with `reason`."""
    return _finish(model_version, status=ModelVersion.Status.INVALID, reason=reason, inspection={})


def _finish(model_version: ModelVersion, *, status: str, reason: str, inspection: dict[str, Any]) -> ModelVersion:
    """Guarded transition: only an `inspecting` version takes a verdict (a re-delivered
    task finding it done changes nothing)."""
    now = timezone.now()
    ModelVersion.objects.filter(pk=model_version.pk, status=ModelVersion.Status.INSPECTING).update(
        status=status, status_reason=reason, inspection=inspection, inspected_at=now
    )
    model_version.refresh_from_db()
    logger.info("model version %s inspected: %s %s", model_version.pk, model_version.status, reason)
    return model_version
