"""Where a local endpoint's files and containers are: one directory per rollout,
DATA_DIR/endpoints/<name>/<deployment id>/ (the model in ``model/``, the runtime's socket in
``socket-<start>/``, a serving image build in ``image-build/``), one container per rollout."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from deployer.models import Deployment

# Where a rollout builds its serving image when the engine lacks it (a detached job).
IMAGE_BUILD_DIR = "image-build"


def endpoint_dir(endpoint_name: str) -> Path:
    return Path(settings.DATA_DIR) / "endpoints" / endpoint_name


def rollout_dir(deployment: Deployment) -> Path:
    return endpoint_dir(deployment.endpoint.name) / str(deployment.pk)


def image_build_dir(deployment: Deployment) -> Path:
    """Where the rollout's serving image is built (removed with the rollout's files)."""
    return rollout_dir(deployment) / IMAGE_BUILD_DIR


def container_name(deployment: Deployment) -> str:
    return f"rdeploy-{settings.INSTALLATION_ID}-{deployment.endpoint.name}-{deployment.pk}"


def socket_dir(directory: Path, start: int) -> Path:
    """A directory per container start: a route cached from before a restart names a
    directory that is gone, never the new container's before its socket is checked."""
    return directory / f"socket-{start}"
