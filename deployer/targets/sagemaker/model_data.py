"""Step ``upload_model_data``: the runtime's model directory as a reproducible
``model.tar.gz`` in S3, keyed by its content digest (shared by every endpoint deploying the
same model directory)."""

from __future__ import annotations

import gzip
import tarfile
import tempfile
from pathlib import Path

from django.conf import settings

from deployer.integrations.aws import s3
from deployer.model_files import model_version_directory_digest, model_version_materialize
from deployer.models import ExternalResource
from deployer.targets.base import StepContext, StepOutcome
from deployer.targets.sagemaker.names import prefix, required_setting, step_tags
from deployer.targets.sagemaker.ownership import ensure_ours


def model_data_tarball(directory: Path, destination: Path) -> None:
    """``model.tar.gz`` with sorted entries and zeroed times/owners: same content, same bytes."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with (
        destination.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=clean)


def upload_model_data(ctx: StepContext) -> StepOutcome:
    bucket = required_setting("RDEPLOY_S3_BUCKET")
    model_version = ctx.model_version
    key = f"{prefix()}/model-data/{model_version_directory_digest(model_version)}/model.tar.gz"
    uri = f"s3://{bucket}/{key}"
    ensure_ours(ExternalResource.Kind.MODEL_DATA, uri)
    ctx.record_resource(ExternalResource.Kind.MODEL_DATA, uri)
    if s3.object_exists(bucket, key):
        return StepOutcome.skipped(f"Model data already in S3 ({uri}).")
    scratch = Path(settings.DATA_DIR) / "tmp"
    with tempfile.TemporaryDirectory(dir=scratch, prefix="sagemaker-model-") as tmp:
        model_dir = model_version_materialize(model_version=model_version, destination=Path(tmp) / "model")
        tarball = Path(tmp) / "model.tar.gz"
        model_data_tarball(model_dir, tarball)
        s3.upload_file(bucket, key, tarball, tags=step_tags(ctx))
        size = tarball.stat().st_size
    return StepOutcome.done(f"Uploaded the model data to {uri} ({size} bytes).")
