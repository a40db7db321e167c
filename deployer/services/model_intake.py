"""Model versions in and out: upload (checked, hashed, stored, its inspection queued),
inspection queued again (re-inspection, lost messages), deletion. The inspection itself is
deployer/services/model_inspection.py."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Max, ProtectedError, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from deployer import task_names
from deployer.artifacts import ArtifactRejected, ArtifactTooLarge, bundles, sniffing, uploads
from deployer.build_context import PACKAGE_NAME
from deployer.errors import DomainError
from deployer.jobs import enqueue
from deployer.models import Deployment, Endpoint, ModelVersion, name_validator

logger = logging.getLogger(__name__)

SAMPLE_MAX_BYTES = 5 * 1024 * 1024
# The files an upload sends, as both doors name them (artifacts.uploads.HashingUploadHandler receives
# only these, once each).
UPLOAD_FILE_FIELDS = ("file", "sample")
_EXTENSIONS = {"rds": "rds", "tar.gz": "tar.gz", "zip": "zip"}


class ModelVersionInUse(DomainError):
    """The version serves (or served) an endpoint; the message names it (HTTP 409)."""

    kind = "conflict"


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
        if not PACKAGE_NAME.match(package):
            raise ArtifactRejected(f"'{package}' is not a valid R package name", field="packages")
    return names


def _check_sample(sample: UploadedFile) -> str:
    """The sample's extension (csv or json) after light checks; R parses it for real."""
    if sample.size is not None and sample.size > SAMPLE_MAX_BYTES:
        raise ArtifactRejected(
            f"the sample is larger than {SAMPLE_MAX_BYTES} bytes: a few rows are enough", field="sample"
        )
    sample.seek(0)
    head = sample.read(4096)
    sample.seek(0)
    if not head.strip():
        raise ArtifactRejected("the sample is empty", field="sample")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut in half at the 4 KiB boundary
            raise ArtifactRejected(
                "the sample must be UTF-8 text: CSV with a header row, or JSON records", field="sample"
            ) from exc
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
        raise ArtifactRejected(f"invalid name '{name}': {' '.join(exc.messages)}", field="name") from exc
    requested = _parse_packages(packages)
    # One limit for the request's files together, as the doors' upload handler counts them.
    if sum(upload.size or 0 for upload in (file, sample) if upload is not None) > settings.MAX_UPLOAD_BYTES:
        raise ArtifactTooLarge(settings.MAX_UPLOAD_BYTES)
    sha256 = uploads.uploaded_sha256(file)
    existing = ModelVersion.objects.filter(owner=owner, name=name, sha256=sha256).first()
    if existing is not None:
        if existing.status == ModelVersion.Status.INVALID:
            # "Fix it and upload again": the packages, the sample or the server may have
            # changed since, so the same bytes are inspected again.
            existing = _retry_invalid(existing, sample=sample, requested=requested)
        return UploadOutcome(existing, created=False)

    with uploads.local_copy(file) as path:
        size = path.stat().st_size
        if size > settings.MAX_UPLOAD_BYTES:
            raise ArtifactTooLarge(settings.MAX_UPLOAD_BYTES)
        if size == 0:
            raise ArtifactRejected("the file is empty")
        kind = sniffing.sniff_file(path).kind
        if kind != ModelVersion.ArtifactKind.RDS:
            bundles.inspect_bundle(path, kind)
    sample_extension = _check_sample(sample) if sample is not None else None

    storage = _artifact_storage()
    base = _stored_name(owner.pk, name, sha256)
    stored: list[str] = []
    try:
        file.seek(0)
        stored.append(storage.save(f"{base}.{_EXTENSIONS[kind]}", file))
        if sample is not None:
            sample.seek(0)
            stored.append(storage.save(f"{base}.sample.{sample_extension}", sample))
        model_version, created = _create_row(
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
    if not created:
        # Another request stored the same bytes first: keep its files, drop ours.
        for stored_name in stored:
            storage.delete(stored_name)
    return UploadOutcome(model_version, created=created)


def _stored_name(owner_id: int, name: str, sha256: str) -> str:
    """Where one request stores a version's files (without the extension): a name no other
    request writes, so a request never overwrites nor, cleaning up, deletes a file another
    request's row references. A name derived from the bytes alone would be shared by two
    uploads of the same bytes at once: Django moves a temporary upload by checking that the
    name is free and then renaming (S3 simply overwrites), so the second sample replaced
    the first's, and a failed request's cleanup deleted the model the other's row held."""
    return f"models/{owner_id}/{name}/{sha256}-{secrets.token_hex(8)}"


def _retry_invalid(model_version: ModelVersion, *, sample: UploadedFile | None, requested: list[str]) -> ModelVersion:
    storage = _artifact_storage()
    old_sample = str(model_version.sample.name or "")
    new_sample = old_sample
    if sample is not None:
        extension = _check_sample(sample)
        sample.seek(0)
        new_sample = storage.save(
            f"{_stored_name(model_version.owner_id, model_version.name, model_version.sha256)}.sample.{extension}",
            sample,
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
                enqueue(task_names.MODEL_VERSION_INSPECT, model_version.pk)
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
                enqueue(task_names.MODEL_VERSION_INSPECT, model_version.pk)
                requeued.append(model_version.pk)
    if requeued:
        logger.warning("re-queued stuck inspections of model versions %s", requeued)
    return requeued


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
            enqueue(task_names.MODEL_VERSION_INSPECT, model_version.pk)
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
) -> tuple[ModelVersion, bool]:
    """The new version (True), or the one holding these bytes already (False)."""
    for _attempt in range(3):
        try:
            with transaction.atomic():
                # One numbering at a time per owner: concurrent uploads under one name would
                # otherwise keep taking each other's number (four at once ran out of retries).
                # FOR NO KEY UPDATE, as endpoints' quota lock, so the row's key-share locks pass.
                get_user_model().objects.select_for_update(no_key=True).filter(pk=owner.pk).first()
                existing = ModelVersion.objects.filter(owner=owner, name=name, sha256=sha256).first()
                if existing is not None:
                    return existing, False
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
                enqueue(task_names.MODEL_VERSION_INSPECT, model_version.pk)
                return model_version, True
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
