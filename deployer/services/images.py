"""Serving images: one recipe (deployer/build_context.py) per package set, built by the local
container engine and named by its content hash, so the same inputs never build twice.

Inspection runs model code in ``serving_image_ensure(packages=..., renv_lock=...)``, local
endpoints run in the image of ``model_version_image_context``, and with
RDEPLOY_IMAGE_BUILDER=docker the SageMaker target pushes that same local image to ECR.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from deployer.build_context import BuildContext, render_build_context
from deployer.integrations.containers import images
from deployer.models import ModelVersion
from deployer.services.model_versions import model_version_materialize

# Images built on this machine: localhost/rdeploy-runtime:<context tag>.
LOCAL_REPOSITORY = "localhost/rdeploy-runtime"
# A cold build of packages Debian has takes well under a minute; compiling from
# RDEPLOY_CRAN_REPO can take several.
BUILD_TIMEOUT_SECONDS = 900


def serving_image_context(
    *, packages: Iterable[str], renv_lock: bytes | None = None, base_image: str | None = None
) -> BuildContext:
    """The build context for ``packages`` on ``base_image`` (default settings.BASE_IMAGE),
    with RDEPLOY_CRAN_REPO for what Debian lacks. ValueError for a bad package name,
    renv.lock or repository."""
    return render_build_context(
        packages=packages,
        renv_lock=renv_lock,
        base_image=base_image or settings.BASE_IMAGE,
        cran_repo=settings.CRAN_REPO,
    )


def local_image(context: BuildContext) -> str:
    return f"{LOCAL_REPOSITORY}:{context.tag}"


def serving_image_ensure(
    *, packages: Iterable[str], renv_lock: bytes | None = None, timeout: float = BUILD_TIMEOUT_SECONDS
) -> str:
    """The local image name for ``packages`` (plus the runtime's), building it now if the
    engine lacks it.

    Raises ValueError (as serving_image_context), images.ImageBuildFailed (with the
    build's last lines) and cli.EngineUnavailable / cli.EngineCommandFailed.
    """
    context = serving_image_context(packages=packages, renv_lock=renv_lock)
    image = local_image(context)
    if not images.image_present(image):
        images.build(context=context, tags=[image], timeout=timeout)
    return image


def model_version_packages(model_version: ModelVersion) -> list[str]:
    """The R packages a model version's image needs: those inspection found, and those
    the uploader asked for."""
    inspection = model_version.inspection or {}
    packages = [str(package["name"]) for package in (inspection.get("packages") or {}).get("required", [])]
    return packages + [str(name) for name in model_version.requested_packages or []]


def model_version_renv_lock(model_version: ModelVersion) -> bytes | None:
    """The bundle's ``renv.lock``; None for a bare .rds or a bundle without one. Read from
    the model directory as the runtime gets it."""
    if model_version.artifact_kind == ModelVersion.ArtifactKind.RDS:
        return None
    scratch = Path(settings.DATA_DIR) / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="image-lock-") as tmp:
        model_dir = model_version_materialize(model_version=model_version, destination=Path(tmp) / "model")
        lock = model_dir / "renv.lock"
        return lock.read_bytes() if lock.is_file() else None


def model_version_image_context(*, model_version: ModelVersion, base_image: str | None = None) -> BuildContext:
    """The serving image's context for a model version (its packages, its bundle's
    renv.lock). ValueError when none can be rendered."""
    return serving_image_context(
        packages=model_version_packages(model_version),
        renv_lock=model_version_renv_lock(model_version),
        base_image=base_image,
    )
