"""Where a local endpoint's files and containers are: one directory per rollout,
DATA_DIR/endpoints/<name>/<deployment id>/ (the model in ``model/``, the runtime's socket in
``socket-<start>/``, a serving image build in ``image-build/``), one container per rollout."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from deployer.integrations.containers.runtimes import SOCKET_NAME
from deployer.models import Deployment

# Where a rollout builds its serving image when the engine lacks it (a detached job).
IMAGE_BUILD_DIR = "image-build"
ENDPOINTS_DIR = "endpoints"
SOCKET_DIR_PREFIX = "socket-"


def endpoint_dir(endpoint_name: str) -> Path:
    return Path(settings.DATA_DIR) / ENDPOINTS_DIR / endpoint_name


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
    return directory / f"{SOCKET_DIR_PREFIX}{start}"


def socket_pool_key(socket_path: str) -> str:
    """The endpoint a runtime socket belongs to, as runtime_http's pool key (a new rollout's
    or restart's socket closes the pool of the endpoint's previous one). Read from the path
    (<...>/endpoints/<name>/<deployment>/socket-<start>/runtime.sock), so it holds whatever
    form DATA_DIR has in the web process; a socket elsewhere is its own key."""
    path = Path(socket_path)
    if (
        path.name == SOCKET_NAME
        and path.parent.name.startswith(SOCKET_DIR_PREFIX)
        and len(path.parents) > 3
        and path.parents[3].name == ENDPOINTS_DIR
    ):
        return str(path.parents[2])
    return socket_path
