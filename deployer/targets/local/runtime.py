"""A local endpoint's runtime container: started as SageMaker starts it, its socket taken
back and checked before anyone connects (``runtimes.lock_socket``), and asked ``/ping``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings

from deployer.integrations.containers import runtime_http, runtimes
from deployer.models import Deployment, ExternalResource
from deployer.targets.base import PermanentStepError
from deployer.targets.local.logs import keep_last_logs
from deployer.targets.local.paths import socket_dir, socket_pool_key

# After a restart the reconciler waits this long for the new container's socket, so the
# endpoint serves again within one reconciler run; a slower one is locked by the next run.
RESTART_SOCKET_WAIT = 5.0
# Right after starting a container the step itself waits this long for the socket (HAProxy
# makes it within a few hundred ms, while R is still starting) and locks it at once: the
# directory is the container's to write only until then.
START_SOCKET_WAIT = 3.0
SOCKET_POLL_SECONDS = 0.01
# A health check's answer: a runtime busy longer counts as not healthy yet.
PING_SECONDS = 5.0
PING_MAX_BYTES = 64 * 1024

DEFAULT_OPTIONS: dict[str, Any] = {"workers": 2, "startup_timeout": 60}
# The container's memory limit (all its processes together), unless options.memory_mb
# says otherwise (docs/pipeline.md, "The local runtime's isolation").
DEFAULT_MEMORY_MB = 4096


def example_request(inspection: Mapping[str, Any]) -> tuple[bytes, str] | None:
    """The inspection's example request (deployer/r/inspect.R) as (body, content type)."""
    example = inspection.get("example") or {}
    payload = example.get("payload")
    if payload is None:
        return None
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return body.encode(), str(example.get("content_type") or "application/json")


def runtime_request(socket_path: str, method: str, path: str, **options: Any) -> runtime_http.Response:
    """``runtime_http.request`` in the pool of the endpoint the socket belongs to."""
    return runtime_http.request(socket_path, method, path, pool_key=socket_pool_key(socket_path), **options)


def ping(socket_path: str) -> bool:
    try:
        response = runtime_request(socket_path, "GET", "/ping", timeout=PING_SECONDS, max_bytes=PING_MAX_BYTES)
    except runtime_http.RuntimeHTTPError:
        return False
    return response.status == 200


def start_container(
    *, name: str, image: str, deployment: Deployment, directory: Path, start: int, options: Mapping[str, Any]
) -> None:
    workers = int(options.get("workers", DEFAULT_OPTIONS["workers"]))
    runtimes.start(
        name=name,
        image=image,
        # As SageMaker starts it: `docker run IMAGE serve`.
        command=["serve"],
        endpoint=deployment.endpoint.name,
        deployment=deployment.pk,
        model_dir=directory / "model",
        socket_dir=socket_dir(directory, start),
        env={"RDEPLOY_MAX_WORKERS": str(workers), "RDEPLOY_GRACE_SECONDS": "5"},
        memory_mb=int(options.get("memory_mb", DEFAULT_MEMORY_MB)),
        # One core per R worker at most: a model cannot starve the machine's other endpoints.
        cpus=float(min(workers, os.cpu_count() or 1)),
    )


def locked_socket(directory: Path, container: ExternalResource) -> str | None:
    """The socket's path once locked and checked, or None while the runtime has not made
    it yet. A planted link or file stops the container (its last lines kept) and fails
    the rollout (PermanentStepError)."""
    try:
        # The data directory's group is the web processes' (compose runs them as another
        # user than the worker): they may connect.
        return str(runtimes.lock_socket(directory, group=Path(settings.DATA_DIR).stat().st_gid))
    except FileNotFoundError:
        return None
    except runtimes.UntrustedSocket as exc:
        if container.endpoint is not None:
            keep_last_logs(container.endpoint, container)
        runtimes.stop(container.identifier, grace=0)
        raise PermanentStepError(
            f"The runtime's socket was replaced or joined by something else ({exc}); the model's code did that, "
            "so rdeploy stopped it and does not connect to it."
        ) from exc


def lock_when_made(directory: Path, container: ExternalResource, *, wait: float) -> str | None:
    """locked_socket, polled for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while (socket_path := locked_socket(directory, container)) is None:
        if time.monotonic() >= deadline:
            return None
        time.sleep(SOCKET_POLL_SECONDS)
    return socket_path


def foreign_container(exc: runtimes.ForeignContainer) -> PermanentStepError:
    return PermanentStepError(
        f"The runtime cannot start: {exc}. Another rdeploy installation on this container engine uses that "
        "name, and rdeploy leaves its containers alone: give each installation its own RDEPLOY_INSTALLATION_ID."
    )


def oom_note(state: runtimes.ContainerState | None) -> str:
    return " (it ran out of memory: raise options.memory_mb)" if state is not None and state.oom_killed else ""
