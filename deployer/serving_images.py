"""Which serving image a model version runs in: its build context (deployer/build_context.py:
one recipe per package set) and the local image named by that context's content hash.

Below the services on purpose: both targets and inspection name the same image. Building
it is ``deployer.services.images.serving_image_ensure``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from deployer.build_context import BuildContext, render_build_context
from deployer.model_files import model_version_materialize
from deployer.models import ModelVersion

# Images built on this machine: localhost/rdeploy-runtime:<context tag>.
LOCAL_REPOSITORY = "localhost/rdeploy-runtime"


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
