"""The ``local`` target: the R runtime as a supervised process on this machine.

Each rollout gets its own directory, DATA_DIR/endpoints/<name>/<deployment id>/ (the
runtime's model directory in ``model/``, the runtime's output in ``runtime.log``), and
its own runtime process on a free loopback port. Blue/green: the new runtime starts
beside the old one, must answer ``/ping`` and a test invocation of the inspection's
example payload, then ``switch_traffic`` points ``Endpoint.runtime`` at it and
``stop_previous`` stops the old runtime once every web process has seen the switch
(the gateway caches routes for ``ROUTE_CACHE_SECONDS``).

Processes are started and stopped only through ``deployer.integrations.processes``;
requests reach them through keep-alive connections pooled per port and process.

With ``options.runner = "docker"`` (accepted only where ``docker info`` answers) the
runtime is the SageMaker image instead (same build-context recipe, built once per R
package set by the local engine, through ``deployer.integrations.docker_engine``): an
attached ``docker run`` is the supervised process, with the model directory mounted at
/opt/ml/model and port 8080 published on the loopback port.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployer.integrations import docker_engine, processes
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine, ModelVersion
from deployer.services.model_versions import model_version_materialize
from deployer.targets.base import (
    ROUTE_CACHE_SECONDS,
    InvocationResult,
    PermanentStepError,
    RuntimeUnavailable,
    StepContext,
    StepOutcome,
    Target,
    TargetOptionsError,
    TransientStepError,
)

# The previous runtime stops this long after the switch: every web process has seen the
# new route by then, and requests already sent to the old runtime have had time to finish.
DRAIN_SECONDS = ROUTE_CACHE_SECONDS + 1.5
# Crash supervision: restart with exponential backoff; fail after this many crashes
# within CRASH_WINDOW seconds.
MAX_CRASHES = 5
# How long after its removal the reconciler still looks for a runtime that kept running.
REAP_WINDOW = timedelta(hours=1)
CRASH_WINDOW = 600
# The runtime's own log lines, copied into LogLine at most this many per collection.
MAX_LOG_LINES_PER_COLLECT = 2000
# Above SageMaker's 60 s for an invocation: the runtime's own limits answer first.
READ_TIMEOUT = 65.0

_DEFAULT_OPTIONS: dict[str, Any] = {"workers": 2, "startup_timeout": 60}
# Address space of each runtime process (RLIMIT_AS; each Rserve child has its own),
# unless options.memory_mb says otherwise (docs/pipeline.md, "The local runtime's isolation").
DEFAULT_MEMORY_MB = 4096
RUNNERS = ("process", "docker")
# Local name of runtime images built for the docker runner (tag: the build context's hash).
LOCAL_IMAGE = "rdeploy-runtime"
IMAGE_BUILD_DIR = "image-build"
IMAGE_BUILD_POLL_SECONDS = 2.0
MAX_BUILD_LINES_PER_POLL = 2000


def endpoint_dir(endpoint_name: str) -> Path:
    return Path(settings.DATA_DIR) / "endpoints" / endpoint_name


def rollout_dir(deployment: Deployment) -> Path:
    return endpoint_dir(deployment.endpoint.name) / str(deployment.pk)


def image_build_dir(deployment: Deployment) -> Path:
    """Where the docker runner builds the rollout's image (removed with the rollout's files)."""
    return rollout_dir(deployment) / IMAGE_BUILD_DIR


def process_identifier(deployment: Deployment) -> str:
    return f"{deployment.endpoint.name}-{deployment.pk}"


def container_name(identifier: str) -> str:
    return f"rdeploy-{settings.INSTALLATION_ID}-{identifier}"


def example_request(inspection: Mapping[str, Any]) -> tuple[bytes, str] | None:
    """The inspection's example request (deployer/r/inspect.R) as (body, content type)."""
    example = inspection.get("example") or {}
    payload = example.get("payload")
    if payload is None:
        return None
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return body.encode(), str(example.get("content_type") or "application/json")


# --- HTTP to the runtime -----------------------------------------------------------------
@dataclass(frozen=True)
class _Response:
    status: int
    data: bytes
    # Lower-case names.
    headers: Mapping[str, str]


class OneWriteHTTPConnection(http.client.HTTPConnection):
    """http.client writes a request's headers and its body in two sends, so the runtime's
    HAProxy wakes up twice per prediction; one write of both saves a measurable share of
    the 1 ms the gateway may add (docs/pipeline.md)."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or encode_chunked:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        buffer: list[bytes] = self._buffer  # type: ignore[attr-defined]
        buffer.extend((b"", b""))
        head = b"\r\n".join(buffer)
        del buffer[:]
        self.send(head + message_body)


class _Connections:
    """Keep-alive HTTP/1.1 connections to one runtime port, shared by a process's threads."""

    MAX_IDLE = 16

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def request(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> _Response:
        for attempt in range(2):
            with self.lock:
                conn = self.idle.pop() if self.idle else None
            reused = conn is not None
            if conn is None:
                conn = OneWriteHTTPConnection("127.0.0.1", self.port, timeout=READ_TIMEOUT)
            try:
                # http.client connects on first use, with TCP_NODELAY.
                conn.request(method, path, body=body, headers=dict(headers))
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # the runtime closed an idle keep-alive connection: use a new one
                raise RuntimeUnavailable(f"the runtime on port {self.port} did not answer: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise RuntimeUnavailable(f"the runtime on port {self.port} did not answer: {exc}") from exc
            if response.will_close:
                conn.close()
            else:
                with self.lock:
                    if len(self.idle) < self.MAX_IDLE:
                        self.idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return _Response(status=response.status, data=data, headers=headers)
        raise AssertionError("unreachable")


_connections: dict[int, _Connections] = {}
_connections_lock = threading.Lock()


def _request(
    port: int, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> _Response:
    connections = _connections.get(port)
    if connections is None:
        with _connections_lock:
            connections = _connections.setdefault(port, _Connections(port))
    return connections.request(method, path, body, headers or {})


def _ping(port: int) -> bool:
    try:
        return _request(port, "GET", "/ping").status == 200
    except RuntimeUnavailable:
        return False


def _last_lines(log_path: Path, count: int = 15) -> str:
    """The runtime's last lines for an error message, without the access lines of our own
    health checks, which would push out what R said."""
    lines = [line for line in processes.tail(log_path, lines=500) if "/ping " not in line][-count:]
    return "\n".join(lines) if lines else "(the runtime wrote nothing)"


class LocalTarget(Target):
    name = "local"

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - {*_DEFAULT_OPTIONS, "runner", "memory_mb"})
        if unknown:
            raise TargetOptionsError(f"Unknown option(s) for the local target: {', '.join(unknown)}.")
        merged = {**_DEFAULT_OPTIONS, **options}
        for key, low, high in (("workers", 1, 64), ("startup_timeout", 5, 3600)):
            value = merged[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise TargetOptionsError(f"Option {key!r} must be a whole number from {low} to {high}.")
        memory = merged.get("memory_mb", DEFAULT_MEMORY_MB)
        if not isinstance(memory, int) or isinstance(memory, bool) or not 256 <= memory <= 1024**2:
            raise TargetOptionsError("Option 'memory_mb' must be a whole number of MiB from 256 to 1048576.")
        runner = merged.get("runner", "process")
        if runner not in RUNNERS:
            raise TargetOptionsError('Option \'runner\' must be "process" (the default) or "docker".')
        if runner == "docker" and not docker_engine.is_available():
            raise TargetOptionsError(
                'Option runner="docker" needs a Docker engine, and none answers `docker info` on this server; '
                'use the default "process" runner.'
            )
        return merged

    def steps(self, kind: str, *, public: bool) -> list[str]:
        if kind == Deployment.Kind.DELETE:
            return ["stop_runtime", "remove_files"]
        return ["prepare_model_dir", "start_runtime", "wait_healthy", "smoke_test", "switch_traffic", "stop_previous"]

    def run_step(self, name: str, ctx: StepContext) -> StepOutcome:
        step = getattr(self, f"_step_{name}", None)
        if step is None:
            raise PermanentStepError(f"The local target has no step {name!r}.")
        outcome: StepOutcome = step(ctx)
        return outcome

    # --- rollout steps ----------------------------------------------------------------
    def _step_prepare_model_dir(self, ctx: StepContext) -> StepOutcome:
        model_dir = rollout_dir(ctx.deployment) / "model"
        complete = model_dir.parent / ".model-complete"
        ctx.record_resource("model_dir", str(model_dir.parent))
        if complete.exists():
            return StepOutcome.skipped("The model directory is already prepared.")
        model_version_materialize(model_version=ctx.model_version, destination=model_dir)
        complete.touch()
        return StepOutcome.done(f"Prepared {ctx.model_version} for the runtime.")

    @staticmethod
    def _launch(
        *,
        identifier: str,
        directory: Path,
        port: int,
        options: Mapping[str, Any],
        model_version: ModelVersion,
        image: str | None = None,
    ) -> processes.StartedProcess:
        """Start a runtime serving ``directory/model`` on ``port`` (in ``image`` if given)."""
        if image is not None:
            return docker_engine.start_container(
                identifier=identifier,
                name=container_name(identifier),
                image=image,
                port=port,
                model_dir=directory / "model",
                env={
                    "RDEPLOY_MAX_WORKERS": str(options.get("workers", _DEFAULT_OPTIONS["workers"])),
                    "RDEPLOY_GRACE_SECONDS": "5",
                },
                cwd=directory,
                log_path=directory / "runtime.log",
            )
        env = {
            "RDEPLOY_MODEL_DIR": str(directory / "model"),
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "RDEPLOY_BIND": "127.0.0.1",
            "RDEPLOY_MAX_WORKERS": str(options.get("workers", _DEFAULT_OPTIONS["workers"])),
            "RDEPLOY_GRACE_SECONDS": "5",
            "TMPDIR": str(directory / "tmp"),
        }
        # Packages inspection installed from RDEPLOY_CRAN_REPO live in a cached library per
        # dependency set; the endpoint serves from the same one, as an image would.
        libraries = [str(library) for library in model_version.inspection.get("r_library") or []]
        if libraries:
            env["R_LIBS"] = os.pathsep.join(libraries)
        # The model's code runs in it: its own uid; of this machine's files it sees only its
        # rollout directory (read-only but for tmp/), the runtime and its R libraries.
        sandbox = processes.Sandbox(
            read_only=(directory, Path(settings.RUNTIME_DIR), *(Path(library) for library in libraries)),
            writable=(directory / "tmp",),
            # Readable to it whatever the worker's umask; read-only all the same.
            owned=(directory,),
            memory_bytes=int(options.get("memory_mb", DEFAULT_MEMORY_MB)) * 1024**2,
        )
        return processes.start(
            identifier=identifier,
            command=[str(Path(settings.RUNTIME_DIR) / "serve")],
            env=env,
            cwd=directory,
            log_path=directory / "runtime.log",
            sandbox=sandbox,
        )

    def _step_start_runtime(self, ctx: StepContext) -> StepOutcome:
        identifier = process_identifier(ctx.deployment)
        resource = ExternalResource.objects.filter(target=self.name, kind="process", identifier=identifier).first()
        details = resource.details if resource else {}
        if details.get("pid") and processes.is_running(details["pid"], details["start_ticks"]):
            return StepOutcome.skipped(f"The runtime already runs on port {details['port']}.")
        image: str | None = None
        if ctx.options.get("runner") == "docker":
            ready = self._runtime_image(ctx)
            if isinstance(ready, StepOutcome):
                return ready
            image = ready
        # A previous attempt may have started it and died before recording it.
        processes.stop(identifier, grace=1)
        port = processes.free_port()
        directory = rollout_dir(ctx.deployment)
        facts: dict[str, Any] = {"port": port, "log": str(directory / "runtime.log")}
        if image is not None:
            facts.update(image=image, container=container_name(identifier))
        ctx.record_resource("process", identifier, facts)
        started = self._launch(
            identifier=identifier,
            directory=directory,
            port=port,
            options=ctx.options,
            model_version=ctx.model_version,
            image=image,
        )
        ctx.record_resource("process", identifier, {"pid": started.pid, "start_ticks": started.start_ticks})
        where = f"in container {container_name(identifier)} ({image})" if image else "as a process"
        return StepOutcome.done(f"Started the R runtime {where} on port {port}.")

    def _runtime_image(self, ctx: StepContext) -> str | StepOutcome:
        """The docker runner's image, or a wait while the local engine builds it (a
        detached job, polled; its lines stream into the deployment's log)."""
        # The SageMaker image recipe; imported here so serving local endpoints loads no boto3.
        from deployer.targets.sagemaker import image_build_context

        tag = ctx.intent.get("image_tag")
        if not tag:
            tag = image_build_context(ctx.model_version).tag
            ctx.intent["image_tag"] = tag
            ctx.save_intent()
        image = f"{LOCAL_IMAGE}:{tag}"
        directory = image_build_dir(ctx.deployment)
        job = ctx.intent.get("image_build")
        if job is None:
            if docker_engine.image_present(image):
                return image
            started = docker_engine.start_build(
                directory=directory,
                context_tar_gz=image_build_context(ctx.model_version).tar_gz(),
                image=image,
                platform=None,
            )
            job = {"pid": started.pid, "ticks": started.start_ticks, "offset": 0}
            ctx.intent["image_build"] = job
            ctx.save_intent()
            ctx.log(f"Building the runtime image {image} with Docker.", source=LogLine.Source.BUILD)
        state = docker_engine.job_state(docker_engine.Job(directory, "build", job["pid"], job["ticks"]))
        lines, offset = docker_engine.read_output(directory, int(job["offset"]))
        if lines:
            skipped = max(0, len(lines) - MAX_BUILD_LINES_PER_POLL)
            LogLine.objects.bulk_create(
                LogLine(endpoint=ctx.endpoint, deployment=ctx.deployment, source=LogLine.Source.BUILD, message=line)
                for line in lines[skipped:]
            )
            ctx.intent["image_build"] = {**job, "offset": offset}
            ctx.save_intent()
        if state.running:
            return StepOutcome.wait(IMAGE_BUILD_POLL_SECONDS, "Building the runtime image with Docker.")
        tail = "\n".join(docker_engine.last_output(directory))
        docker_engine.remove_job(directory)
        del ctx.intent["image_build"]
        ctx.save_intent()
        if state.exit_code == 0:
            return image
        if state.exit_code is None:
            raise TransientStepError("The runtime image build stopped without an exit status; starting it again.")
        raise PermanentStepError(
            f"Building the runtime image failed (docker build exited with status {state.exit_code}). "
            f"Its last lines:\n{tail}"
        )

    def _process(self, ctx: StepContext) -> dict[str, Any]:
        resource = ExternalResource.objects.get(target=self.name, kind="process", identifier=ctx.resource_id("process"))
        return dict(resource.details)

    def _step_wait_healthy(self, ctx: StepContext) -> StepOutcome:
        process = self._process(ctx)
        if _ping(process["port"]):
            if not process.get("container") and not processes.listens_as(ctx.resource_id("process"), process["port"]):
                raise PermanentStepError(
                    f"Port {process['port']} answers, but another process holds it, not this runtime; "
                    "deploy again to get another port."
                )
            return StepOutcome.done(f"The runtime answered /ping after {ctx.elapsed():.1f} s.")
        log_path = Path(process["log"])
        if not processes.is_running(process["pid"], process["start_ticks"]):
            raise PermanentStepError(
                f"The R runtime exited before it became healthy. Its last log lines:\n{_last_lines(log_path)}"
            )
        timeout = ctx.options.get("startup_timeout", _DEFAULT_OPTIONS["startup_timeout"])
        if ctx.elapsed() > timeout:
            raise PermanentStepError(
                f"The R runtime did not answer /ping within {timeout} s. Its last log lines:\n{_last_lines(log_path)}"
            )
        return StepOutcome.wait(0.2, "Waiting for the runtime to load the model.")

    def _step_smoke_test(self, ctx: StepContext) -> StepOutcome:
        example = example_request(ctx.model_version.inspection)
        if example is None:
            return StepOutcome.skipped("The model has no example payload to try.")
        body, content_type = example
        process = self._process(ctx)
        try:
            response = _request(
                process["port"],
                "POST",
                "/invocations",
                body=body,
                headers={"Content-Type": content_type, "Accept": "application/json"},
            )
        except RuntimeUnavailable as exc:
            raise TransientStepError(str(exc)) from exc
        if response.status != 200:
            raise PermanentStepError(
                f"The test prediction with the model's example payload failed with HTTP {response.status}: "
                f"{response.data.decode('utf-8', 'replace')[:500]}\n"
                f"The runtime's last log lines:\n{_last_lines(Path(process['log']))}"
            )
        return StepOutcome.done(f"Test prediction: {response.data.decode('utf-8', 'replace')[:200]}")

    def _step_switch_traffic(self, ctx: StepContext) -> StepOutcome:
        process = self._process(ctx)
        identifier = ctx.resource_id("process")
        if ctx.endpoint.runtime.get("process") != identifier:
            ctx.set_runtime(
                port=process["port"],
                pid=process["pid"],
                start_ticks=process["start_ticks"],
                process=identifier,
                deployment=ctx.deployment.pk,
            )
        if "switched_at" not in ctx.intent:
            ctx.intent["switched_at"] = time.time()
            ctx.save_intent()
        return StepOutcome.done(f"Traffic goes to {ctx.model_version} on port {process['port']}.")

    def _step_stop_previous(self, ctx: StepContext) -> StepOutcome:
        previous = [
            resource
            for resource in ctx.live_resources()
            if resource.deployment_id != ctx.deployment.pk and resource.kind in ("process", "model_dir")
        ]
        if not previous:
            return StepOutcome.skipped("No previous runtime to stop.")
        switched_at = ctx.deployment.steps.get(name="switch_traffic").intent.get("switched_at", 0)
        remaining = switched_at + DRAIN_SECONDS - time.time()
        if remaining > 0:
            return StepOutcome.wait(remaining, "Letting requests to the previous runtime finish.")
        for resource in previous:
            self._remove(ctx, resource)
        return StepOutcome.done("Stopped the previous runtime.")

    def _remove(self, ctx: StepContext, resource: ExternalResource) -> None:
        if resource.kind == "process":
            processes.stop(resource.identifier, pid=resource.details.get("pid"))
            if resource.details.get("container"):
                docker_engine.remove_container(resource.details["container"])
        elif resource.kind == "model_dir":
            # The docker runner's image build, if one still runs for this rollout.
            docker_engine.remove_job(Path(resource.identifier) / IMAGE_BUILD_DIR)
            shutil.rmtree(resource.identifier, ignore_errors=True)
        ctx.mark_resource_deleted(resource.kind, resource.identifier)

    def discard(self, ctx: StepContext) -> None:
        serving = ctx.endpoint.runtime.get("process")
        for resource in reversed(list(ctx.deployment_resources())):
            if resource.identifier != serving:
                self._remove(ctx, resource)

    # --- teardown ---------------------------------------------------------------------
    def _step_stop_runtime(self, ctx: StepContext) -> StepOutcome:
        ctx.set_runtime()
        for resource in ctx.live_resources().filter(kind="process"):
            self._remove(ctx, resource)
        return StepOutcome.done("Stopped the runtime.")

    def _step_remove_files(self, ctx: StepContext) -> StepOutcome:
        for resource in ctx.live_resources().filter(kind="model_dir"):
            self._remove(ctx, resource)
        shutil.rmtree(endpoint_dir(ctx.endpoint.name), ignore_errors=True)
        return StepOutcome.done("Removed the endpoint's files.")

    # --- serving ----------------------------------------------------------------------
    def invoke(self, runtime: Mapping[str, Any], body: bytes, headers: Mapping[str, str]) -> InvocationResult:
        port = runtime.get("port")
        if not port:
            raise RuntimeUnavailable("the endpoint has no running runtime")
        response = _request(int(port), "POST", "/invocations", body=body, headers=headers)
        return InvocationResult(
            status=response.status,
            body=response.data,
            headers={
                name: value
                for name in ("Content-Type", "X-Amzn-SageMaker-Custom-Attributes")
                if (value := response.headers.get(name.lower())) is not None
            },
        )

    def check(self, endpoint: Endpoint) -> None:
        """Restart a crashed runtime (after a crash or a reboot) on its port, with backoff."""
        identifier = endpoint.runtime.get("process")
        if not identifier:
            return
        resource = ExternalResource.objects.filter(
            target=self.name, kind="process", identifier=identifier, deleted_at__isnull=True
        ).first()
        if resource is None:
            return
        details = dict(resource.details)
        if processes.is_running(details["pid"], details["start_ticks"]):
            return
        now = time.time()
        crashes = [t for t in details.get("crashes", []) if now - t < CRASH_WINDOW]
        log_path = Path(details["log"])
        if len(crashes) >= MAX_CRASHES:
            raise PermanentStepError(
                f"The R runtime crashed {len(crashes)} times in {CRASH_WINDOW // 60} minutes and was not restarted "
                f"again. Its last log lines:\n{_last_lines(log_path)}"
            )
        if crashes and now - crashes[-1] < min(2 ** len(crashes), 60):
            return  # backing off; the next reconciler run restarts it
        processes.stop(identifier, grace=1)
        port = details["port"] if not processes.port_is_open(details["port"]) else processes.free_port()
        directory = log_path.parent
        assert endpoint.model_version is not None  # check() runs only for live endpoints
        started = self._launch(
            identifier=identifier,
            directory=directory,
            port=port,
            options=endpoint.options,
            model_version=endpoint.model_version,
            image=details.get("image"),
        )
        details.update(port=port, pid=started.pid, start_ticks=started.start_ticks, crashes=[*crashes, now])
        ExternalResource.objects.filter(pk=resource.pk).update(details=details)
        runtime = {**endpoint.runtime, "port": port, "pid": started.pid, "start_ticks": started.start_ticks}
        Endpoint.objects.filter(pk=endpoint.pk).update(runtime=runtime, updated_at=timezone.now())
        LogLine.objects.create(
            endpoint=endpoint,
            source=LogLine.Source.ENDPOINT,
            level=LogLine.Level.WARNING,
            message=f"The R runtime had stopped; restarted it on port {port} (restart {len(crashes) + 1}).",
        )

    def reap(self) -> int:
        """Stop runtimes whose process resource was removed within ``REAP_WINDOW`` but which
        still run: one a step started after its rollout was discarded or cancelled, or one a
        stop did not end. (A runtime is recorded before it starts, so none runs unrecorded.)"""
        stopped = 0
        recently_removed = ExternalResource.objects.filter(
            target=self.name, kind="process", deleted_at__gte=timezone.now() - REAP_WINDOW
        ).select_related("endpoint")
        for resource in recently_removed:
            if not processes.find(resource.identifier):
                continue
            processes.stop(resource.identifier, grace=1)
            if resource.details.get("container"):
                docker_engine.remove_container(resource.details["container"])
            stopped += 1
            if resource.endpoint is not None:
                LogLine.objects.create(
                    endpoint=resource.endpoint,
                    source=LogLine.Source.ENDPOINT,
                    level=LogLine.Level.WARNING,
                    message=f"Stopped runtime {resource.identifier}: it ran though it had been removed.",
                )
        return stopped

    def collect_logs(self, endpoint: Endpoint) -> int:
        stored = 0
        for resource_id in ExternalResource.objects.filter(
            endpoint=endpoint, kind="process", target=self.name
        ).values_list("pk", flat=True):
            # One transaction per file: concurrent collectors queue on the write lock, and the
            # second one reads the offset the first one stored, so no line is stored twice.
            with transaction.atomic():
                resource = ExternalResource.objects.select_for_update().get(pk=resource_id)
                offset = int(resource.details.get("log_offset", 0))
                lines, new_offset = processes.read_log(Path(resource.details.get("log", "")), offset)
                if new_offset == offset:
                    continue
                skipped = max(0, len(lines) - MAX_LOG_LINES_PER_COLLECT)
                messages = ([f"… {skipped} runtime log lines skipped"] if skipped else []) + lines[skipped:]
                LogLine.objects.bulk_create(
                    LogLine(
                        endpoint=endpoint,
                        deployment_id=resource.deployment_id,
                        source=LogLine.Source.RUNTIME,
                        message=message,
                    )
                    for message in messages
                )
                resource.details = {**resource.details, "log_offset": new_offset}
                resource.save(update_fields=["details"])
                stored += len(messages)
        return stored
