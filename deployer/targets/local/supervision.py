"""Supervision of the ``local`` target's runtimes, run by the reconciler: a container that
stopped (a crash, the engine restarted) is started again with backoff and traffic routed to
it once its socket is locked and checked; a container whose resource was removed is reaped.

Everything here acts on what it read a moment ago while steps change the same endpoint: a
route's writes hold only while it still names the container, and a restart is recorded
under the endpoint's row lock only while the endpoint still serves through that container
(and no other run restarted it meanwhile), then checked the same way once started; no
engine call runs while the row is locked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from deployer.integrations import processes
from deployer.integrations.containers import runtimes
from deployer.models import Endpoint, ExternalResource, LogLine
from deployer.targets.base import PermanentStepError
from deployer.targets.local.logs import keep_last_logs, last_lines
from deployer.targets.local.paths import socket_dir
from deployer.targets.local.runtime import (
    RESTART_SOCKET_WAIT,
    foreign_container,
    lock_when_made,
    oom_note,
    start_container,
)

# Restart with exponential backoff; fail after this many crashes within CRASH_WINDOW seconds.
MAX_CRASHES = 5
CRASH_WINDOW = 600


class Route:
    """Where a supervised container's socket is routed: the live route or the shadow's.
    Each write holds only while the route still names that container (a switch or an
    end_shadow may have moved it since the reconciler read the endpoint)."""

    # How its messages name the runtime.
    runtime_name = "The R runtime"

    def __init__(self, endpoint: Endpoint, container: str) -> None:
        self.endpoint, self.container = endpoint, container

    def socket(self) -> str | None:
        return self.endpoint.runtime.get("socket")

    def routed_container(self, endpoint: Endpoint) -> str | None:
        return endpoint.runtime.get("container")

    def supervised_resource(self, resource: ExternalResource) -> ExternalResource | None:
        """``resource`` read again, if the endpoint still serves, this route still names the
        container and the resource is live; the endpoint's row, then the resource's, stay
        locked until the caller's transaction ends (keep it short: no engine call in it).
        A stop, delete or switch that began after the reconciler read the endpoint removes
        the container itself; restarting it then left one running that nothing recorded."""
        locked = Endpoint.objects.select_for_update(no_key=True).filter(pk=self.endpoint.pk).first()
        if locked is None or locked.status not in Endpoint.SERVING or self.routed_container(locked) != self.container:
            return None
        return ExternalResource.objects.live().select_for_update().filter(pk=resource.pk).first()

    def set_socket(self, socket_path: str | None) -> None:
        runtime = {**self.endpoint.runtime, "socket": socket_path}
        Endpoint.objects.filter(pk=self.endpoint.pk, runtime__container=self.container).update(
            runtime=runtime, updated_at=timezone.now()
        )
        self.endpoint.runtime = runtime


class ShadowRoute(Route):
    runtime_name = "The shadow's R runtime"

    def socket(self) -> str | None:
        return (self.endpoint.shadow_runtime.get("runtime") or {}).get("socket")

    def routed_container(self, endpoint: Endpoint) -> str | None:
        return (endpoint.shadow_runtime.get("runtime") or {}).get("container")

    def set_socket(self, socket_path: str | None) -> None:
        facts = self.endpoint.shadow_runtime
        value = {**facts, "runtime": {**facts["runtime"], "socket": socket_path}}
        self._write(value)

    def stop_copies(self) -> None:
        self._write({})

    def _write(self, value: dict[str, Any]) -> None:
        Endpoint.objects.filter(pk=self.endpoint.pk, shadow_runtime__runtime__container=self.container).update(
            shadow_runtime=value, updated_at=timezone.now()
        )
        self.endpoint.shadow_runtime = value


def supervise(endpoint: Endpoint, *, target: str) -> None:
    """Restart a runtime whose container stopped (a crash, the engine restarted), with
    backoff; route traffic to the restarted one once its socket is locked and checked.
    A shadow's runtime is supervised the same way, except that crashing too often
    stops the copies to it (the live version is fine) instead of failing the endpoint."""
    if legacy := endpoint.runtime.get("process"):
        # Started by an rdeploy that ran runtimes as host processes: stop it, never serve
        # model code outside a container again.
        processes.stop(str(legacy), pid=endpoint.runtime.get("pid"), grace=1)
        raise PermanentStepError(
            "This endpoint's runtime ran as a process on the server, which rdeploy no longer does; it was "
            "stopped. Deploy the model again: it will run in a container."
        )
    if name := endpoint.runtime.get("container"):
        _supervise(endpoint, Route(endpoint, name), target=target)
    if name := (endpoint.shadow_runtime.get("runtime") or {}).get("container"):
        try:
            _supervise(endpoint, ShadowRoute(endpoint, name), target=target)
        except PermanentStepError as exc:
            ShadowRoute(endpoint, name).stop_copies()
            LogLine.objects.create(
                endpoint=endpoint,
                source=LogLine.Source.ENDPOINT,
                level=LogLine.Level.WARNING,
                message=f"Copies to the shadow stopped; stop or promote it. {exc.message}",
            )


def _recent_crashes(details: dict[str, Any], now: float) -> list[float]:
    return [t for t in details.get("crashes", []) if now - t < CRASH_WINDOW]


def _supervise(endpoint: Endpoint, route: Route, *, target: str) -> None:
    name = route.container
    resource = ExternalResource.objects.live().named(target, ExternalResource.Kind.CONTAINER, name).first()
    if resource is None:
        return
    current = runtimes.state(name)
    if current is not None and current.running:
        if not route.socket():
            _route_to_restarted(route, resource, wait=0)
        return
    seen_start = int(resource.details.get("start", 0))
    # Engine calls before the locks below: a slow engine must not hold the endpoint's row.
    keep_last_logs(endpoint, resource)
    crashed_out = len(_recent_crashes(resource.details, time.time())) >= MAX_CRASHES
    tail = last_lines(name) if crashed_out else ""
    with transaction.atomic():
        locked = route.supervised_resource(resource)
        if locked is None or int(locked.details.get("start", 0)) != seen_start:
            return  # removed meanwhile, or another reconciler run restarted it
        now = time.time()
        crashes = _recent_crashes(locked.details, now)
        if len(crashes) >= MAX_CRASHES:
            raise PermanentStepError(
                f"{route.runtime_name} crashed {len(crashes)} times in {CRASH_WINDOW // 60} minutes and was not "
                f"restarted again{oom_note(current)}. Its last log lines:\n{tail}"
            )
        if crashes and now - crashes[-1] < min(2 ** len(crashes), 60):
            return  # backing off; the next reconciler run restarts it
        # Recorded before it starts: another reconciler run sees the new start and leaves it be.
        route.set_socket(None)  # no route while the new container's socket is unchecked
        locked.merge_details(start=seen_start + 1, socket=None, crashes=[*crashes, now], log_cursor=None)
    _restart(endpoint, route, locked, current, restart=len(crashes) + 1)


def _restart(
    endpoint: Endpoint,
    route: Route,
    resource: ExternalResource,
    current: runtimes.ContainerState | None,
    *,
    restart: int,
) -> None:
    name, details, start = route.container, resource.details, int(resource.details["start"])
    directory = Path(details["directory"])
    shutil.rmtree(socket_dir(directory, start - 1), ignore_errors=True)
    assert resource.deployment is not None  # a container is recorded by its rollout
    try:
        start_container(
            name=name,
            image=details["image"],
            deployment=resource.deployment,
            directory=directory,
            start=start,
            options=endpoint.options,
        )
    except runtimes.ForeignContainer as exc:
        raise foreign_container(exc) from exc
    with transaction.atomic():
        supervised = route.supervised_resource(resource) is not None
    if not supervised:
        # A stop, delete or switch began while it started and may have looked already.
        runtimes.stop(name, grace=1)
        return
    LogLine.objects.create(
        endpoint=endpoint,
        source=LogLine.Source.ENDPOINT,
        level=LogLine.Level.WARNING,
        message=f"{route.runtime_name} had stopped{oom_note(current)}; restarted it (restart {restart}).",
    )
    _route_to_restarted(route, resource, wait=RESTART_SOCKET_WAIT)


def _route_to_restarted(route: Route, resource: ExternalResource, *, wait: float) -> None:
    directory = socket_dir(Path(resource.details["directory"]), int(resource.details["start"]))
    socket_path = lock_when_made(directory, resource, wait=wait)
    if socket_path is None:
        return  # still starting: the next reconciler run looks again
    resource.merge_details(socket=socket_path)
    route.set_socket(socket_path)


def reap_removed_runtimes(*, target: str) -> int:
    """Remove runtime containers whose resource was removed but which still exist: one
    a step started after its rollout was discarded or cancelled, or one a stop did not
    end. (A container is recorded before it starts, so none runs unrecorded.)"""
    existing = runtimes.names()
    removed = (
        ExternalResource.objects.removed()
        .filter(target=target, kind=ExternalResource.Kind.CONTAINER, identifier__in=existing)
        .select_related("endpoint")
    )
    stopped = 0
    for resource in removed:
        runtimes.stop(resource.identifier, grace=1)
        stopped += 1
        if resource.endpoint is not None:
            LogLine.objects.create(
                endpoint=resource.endpoint,
                source=LogLine.Source.ENDPOINT,
                level=LogLine.Level.WARNING,
                message=f"Removed runtime {resource.identifier}: it ran though it had been removed.",
            )
    return stopped
