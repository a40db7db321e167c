"""The interface every deployment target implements; the pipeline drives only this.

A target (``local``, ``sagemaker``) is a stateless object registered by name in
``deployer.targets``. The pipeline (``deployer.services.pipeline``) never branches on a
target's name: it asks the target for an ordered list of step names, persists them as
``DeploymentStep`` rows, and runs them one at a time, in short Celery tasks, through
``run_step``. What each step does is the target's business.

Lifecycle of a deployment (``Deployment.kind``):

- ``create`` / ``update`` / ``rollback`` roll one ``ModelVersion`` out. The last steps
  switch traffic (``ctx.set_runtime(...)``: from then on ``invoke`` reaches the new
  version) and then retire what the previously live deployment (``ctx.previous``)
  created. Until the switch the previous version keeps serving: blue/green.
- ``delete`` tears the endpoint down: its steps remove every live ``ExternalResource``
  of the endpoint (``ctx.live_resources()``), in reverse creation order.

Contract for ``run_step(name, ctx)``:

- Idempotent and resumable. A worker may die at any line, and the step then runs again
  from the top. Before creating anything outside the database, call
  ``ctx.record_resource(kind, identifier)`` with a *deterministic* identifier (derived
  from the endpoint name and deployment id) so a rerun finds it instead of making a
  second one, and teardown and garbage collection can find it either way.
- Short. Return ``StepOutcome.wait(seconds, message)`` to be polled again later
  (an endpoint coming up, an image building) instead of blocking the worker.
  ``ctx.elapsed()`` is the time since the step first started, for the step's own
  deadline; ``ctx.intent`` is a small JSON dict persisted on the step between polls.
- Raise ``PermanentStepError(message)`` for what retrying cannot fix (a missing R
  package, a runtime that never becomes healthy, bad options): the deployment fails at
  once with that message, which is shown to the user verbatim, so write it for a data
  scientist (name the package, quote the runtime's last log lines).
- Raise ``TransientStepError(message)`` for throttling, timeouts and lost connections:
  the pipeline retries the step with exponential backoff and fails the deployment after
  ``MAX_TRANSIENT_ATTEMPTS``. Any other exception counts as transient too.

When a rollout fails the pipeline calls ``discard(ctx)``: remove what *this* deployment
created (``ctx.deployment.resources`` / ``ctx.deployment_resources()``), never what the
live version needs. It must be idempotent as well. Not once its version serves, though:
a target declares in ``switches_traffic_at`` the step after whose success the rollout's
version serves traffic; a failure after that step rolls forward instead (the new version
stays live, nothing is discarded, the endpoint shows the failed step's error), because
the previous version no longer serves and what would be discarded does.

Outside deployments:

- ``invoke(runtime, body, headers)`` forwards one prediction request to what serves
  traffic now. ``runtime`` is ``Endpoint.runtime`` as written by ``ctx.set_runtime`` (the
  gateway caches it, so ``invoke`` must not touch the database). Raises
  ``RuntimeUnavailable`` when nothing answers.
- ``check(endpoint)`` is called by the periodic reconciler for every live endpoint:
  repair what drifted (local: restart a crashed runtime, with backoff) and raise
  ``PermanentStepError`` when the endpoint cannot be kept alive; the reconciler then marks
  it failed with that message.
- ``push_api_key(endpoint)`` runs (as a task) right after a key rotation, whatever the
  endpoint's status: a target hosting its own public API hands it the new key's hash.
- ``reap()`` is called by the periodic reconciler: stop what runs for a resource already
  recorded as deleted (an orphan), so nothing keeps running that no teardown will find.
- ``collect_logs(endpoint)`` copies new runtime or cloud log lines into ``LogLine`` rows
  (source ``runtime`` / ``endpoint`` / ``build``); called by the reconciler and before a
  failure message is composed. Returns the number of lines stored.

Shadows (docs/pipeline.md, "Shadow rollout"): three more deployment kinds.

- ``shadow`` starts ``ctx.model_version`` beside the live version (the rollout's steps up
  to, not including, the traffic switch) and ends with a step that calls
  ``ctx.set_shadow_runtime(...)``: with a ``runtime`` fact (what ``invoke`` needs) the
  gateway sends copies of the chosen share of live requests there itself; without one the
  target copies requests on its own (SageMaker's shadow variants) and its
  ``collect_shadow_pairs(shadow)`` (called by the reconciler) stores the pairs.
  ``ctx.shadow`` is the ``Shadow`` row. The live version is never touched, so ``discard``
  removes only what this deployment created.
- ``promote`` makes the running shadow live without a build or a start: its steps take
  over the shadow deployment's resources (``ctx.adopt_shadow_resources()``), switch
  traffic to them (``switches_traffic_at``) and retire the previous version.
- ``end_shadow`` stops the copies (``ctx.set_shadow_runtime()``), waits for copies in
  flight, and removes the shadow deployment's resources.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from django.db.models import QuerySet
from django.utils import timezone

from deployer.durations import idle_stop_after_parse
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, LogLine, ModelVersion, Shadow

# A step failing with transient errors this many times in a row fails the deployment.
MAX_TRANSIENT_ATTEMPTS = 6
# Web processes cache an endpoint's route (its ``runtime``) this long: after a traffic
# switch, the previous runtime must keep serving at least this long before it stops.
ROUTE_CACHE_SECONDS = 1.0


class TargetOptionsError(ValueError):
    """Options a user gave for a target are invalid; the message says why."""


# Options of every target about stopping (docs/pipeline.md, "Stop and start").
STOP_OPTIONS = frozenset({"wake_on_request", "idle_stop_after"})


def check_stop_options(options: Mapping[str, Any]) -> None:
    """``wake_on_request``: a call to the stopped endpoint starts it. ``idle_stop_after``
    ("72h", or "off" against the installation's default): the reconciler stops the endpoint
    after that long without an invocation."""
    if not isinstance(options.get("wake_on_request", False), bool):
        raise TargetOptionsError("Option 'wake_on_request' must be true or false.")
    if "idle_stop_after" in options:
        try:
            idle_stop_after_parse(options["idle_stop_after"])
        except ValueError as error:
            raise TargetOptionsError(f"Option {error}") from None


class PermanentStepError(Exception):
    """Retrying cannot help: fail the deployment with this user-facing message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientStepError(Exception):
    """Throttled, timed out, connection lost: retry the step later with backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class RuntimeUnavailable(Exception):
    """``invoke`` could not reach anything serving the endpoint."""


@dataclass(frozen=True)
class StepOutcome:
    """What ``run_step`` returns: done, skipped (nothing to do), or poll again later."""

    DONE: ClassVar[str] = "done"
    SKIPPED: ClassVar[str] = "skipped"
    WAIT: ClassVar[str] = "wait"

    kind: str
    message: str = ""
    wait_seconds: float = 0.0

    @classmethod
    def done(cls, message: str = "") -> StepOutcome:
        return cls(cls.DONE, message)

    @classmethod
    def skipped(cls, message: str = "") -> StepOutcome:
        return cls(cls.SKIPPED, message)

    @classmethod
    def wait(cls, seconds: float, message: str = "") -> StepOutcome:
        return cls(cls.WAIT, message, max(0.1, float(seconds)))


@dataclass(frozen=True)
class InvocationResult:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StepContext:
    """Everything a step may read, and the only ways it writes to the database."""

    deployment: Deployment
    step: DeploymentStep
    # The rollout whose version serves traffic now (None before the first one is live).
    previous: Deployment | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self.deployment.endpoint

    @property
    def model_version(self) -> ModelVersion:
        return self.deployment.model_version

    @property
    def options(self) -> dict[str, Any]:
        """The endpoint's options as returned by the target's ``validate_options``."""
        return dict(self.endpoint.options or {})

    @property
    def intent(self) -> dict[str, Any]:
        """A JSON dict kept on the step between polls; save with ``save_intent``."""
        return self.step.intent

    def save_intent(self) -> None:
        DeploymentStep.objects.filter(pk=self.step.pk).update(intent=self.step.intent)

    def elapsed(self) -> float:
        """Seconds since this step first started (survives worker restarts)."""
        started = self.step.started_at or timezone.now()
        return (timezone.now() - started).total_seconds()

    def record_resource(self, kind: str, identifier: str, details: Mapping[str, Any] | None = None) -> ExternalResource:
        """Record (before creating it) or update what this deployment creates outside the DB.

        Also stored as ``deployment.resources[kind] = identifier`` so later steps, a
        resumed run and ``discard`` find it. Recording the same thing twice is a no-op
        apart from merging ``details``.
        """
        resource, created = ExternalResource.objects.get_or_create(
            target=self.endpoint.target,
            kind=kind,
            identifier=identifier,
            defaults={"endpoint": self.endpoint, "deployment": self.deployment, "details": dict(details or {})},
        )
        if not created:
            resource.details = {**resource.details, **(details or {})}
            resource.endpoint = self.endpoint
            resource.deployment = self.deployment
            resource.deleted_at = None
            resource.save(update_fields=["details", "endpoint", "deployment", "deleted_at"])
        if self.deployment.resources.get(kind) != identifier:
            self.deployment.resources = {**self.deployment.resources, kind: identifier}
            Deployment.objects.filter(pk=self.deployment.pk).update(resources=self.deployment.resources)
        return resource

    def resource_id(self, kind: str) -> str:
        """The identifier this deployment recorded for ``kind``; KeyError if none yet."""
        return str(self.deployment.resources[kind])

    def resource(self, kind: str) -> ExternalResource:
        """The row this deployment recorded for ``kind``; KeyError if none yet."""
        return ExternalResource.objects.get(target=self.endpoint.target, kind=kind, identifier=self.resource_id(kind))

    def is_recorded(self, kind: str, identifier: str) -> bool:
        """Whether a row exists for the resource (deleted or not), whoever recorded it."""
        return ExternalResource.objects.named(self.endpoint.target, kind, identifier).exists()

    def update_resource_details(self, resource: ExternalResource, **details: Any) -> None:
        """Merge ``details`` into the resource's row (and the instance)."""
        resource.merge_details(**details)

    def hand_over_resource(self, resource: ExternalResource, deployment: Deployment) -> None:
        """``deployment`` (of this or another endpoint) uses the resource too: it owns the row now."""
        resource.update_record(endpoint=deployment.endpoint, deployment=deployment)

    def release_resource(self, resource: ExternalResource, **details: Any) -> None:
        """No endpoint uses the resource any more, but it is kept (``rdeploy_gc`` removes it later)."""
        resource.update_record(endpoint=None, details=details)

    def mark_resource_deleted(self, kind: str, identifier: str) -> None:
        """Record that the thing is gone; a no-op when it already was."""
        ExternalResource.objects.live().named(self.endpoint.target, kind, identifier).update(deleted_at=timezone.now())

    def deployment_resources(self, deployment: Deployment | None = None) -> QuerySet[ExternalResource]:
        """Live resources created by ``deployment`` (default: this one), oldest first."""
        return ExternalResource.objects.live().filter(deployment=deployment or self.deployment).order_by("id")

    def live_resources(self) -> QuerySet[ExternalResource]:
        """Every resource of the endpoint not yet deleted, oldest first (for teardown)."""
        return ExternalResource.objects.live().of_endpoint(self.endpoint).order_by("id")

    def log(self, message: str, *, level: str = LogLine.Level.INFO, source: str = LogLine.Source.PIPELINE) -> None:
        LogLine.objects.create(
            endpoint=self.endpoint, deployment=self.deployment, source=source, level=level, message=message
        )

    def log_lines(self, messages: Iterable[str], *, source: str) -> None:
        """Many lines at once (a build's output), at level info."""
        LogLine.objects.bulk_create(
            LogLine(endpoint=self.endpoint, deployment=self.deployment, source=source, message=message)
            for message in messages
        )

    def set_runtime(self, **facts: Any) -> None:
        """Switch traffic: replace ``Endpoint.runtime`` with what ``invoke`` needs now."""
        self.endpoint.runtime = facts
        Endpoint.objects.filter(pk=self.endpoint.pk).update(runtime=facts, updated_at=timezone.now())

    @property
    def shadow(self) -> Shadow | None:
        """The endpoint's shadow a shadow, promote or end_shadow deployment is about."""
        if self.deployment.kind == Deployment.Kind.SHADOW:
            return Shadow.objects.filter(deployment=self.deployment).first()
        return Shadow.objects.filter(endpoint=self.endpoint, status__in=Shadow.ACTIVE).first()

    def set_shadow_runtime(self, **facts: Any) -> None:
        """Route copies of live requests to the shadow (``facts``; with a ``runtime`` fact the
        gateway sends them), or stop the copies (no facts)."""
        shadow = self.shadow
        value = {**facts, "shadow_id": shadow.pk, "sample_percent": shadow.sample_percent} if facts and shadow else {}
        self.endpoint.shadow_runtime = value
        Endpoint.objects.filter(pk=self.endpoint.pk).update(shadow_runtime=value, updated_at=timezone.now())

    def adopt_shadow_resources(self) -> list[ExternalResource]:
        """Promote: the running shadow's resources become this deployment's, recorded in
        its ``resources`` as if it had created them; idempotent."""
        shadow = self.shadow
        if shadow is None:
            raise PermanentStepError("The endpoint has no shadow to promote.")
        adopted = list(self.deployment_resources(shadow.deployment)) + list(self.deployment_resources())
        for resource in adopted:
            if resource.deployment_id != self.deployment.pk:
                resource.update_record(deployment=self.deployment)
        merged = {**shadow.deployment.resources, **self.deployment.resources}
        if merged != self.deployment.resources:
            self.deployment.resources = merged
            Deployment.objects.filter(pk=self.deployment.pk).update(resources=merged)
        return adopted

    def set_public_url(self, url: str) -> None:
        """For a target that hosts its own public API (API Gateway); the default is rdeploy's."""
        self.endpoint.public_url = url
        Endpoint.objects.filter(pk=self.endpoint.pk).update(public_url=url)


class Target(abc.ABC):
    """One place models can be deployed to. Instances are stateless singletons."""

    name: ClassVar[str]
    # How often an endpoint's log is collected at most (dashboard, API and reconciler).
    log_collect_seconds: ClassVar[int] = 3
    # Steps during which an endpoint being created shows status "building" (not "deploying").
    build_steps: ClassVar[frozenset[str]] = frozenset()
    # Per rollout kind, the step after whose success the rollout's version serves traffic.
    switches_traffic_at: ClassVar[Mapping[str, str]] = {
        Deployment.Kind.CREATE: "switch_traffic",
        Deployment.Kind.UPDATE: "switch_traffic",
        Deployment.Kind.ROLLBACK: "switch_traffic",
        Deployment.Kind.PROMOTE: "switch_traffic",
    }

    @abc.abstractmethod
    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Normalised options (defaults filled in); raise ``TargetOptionsError`` if invalid."""

    @abc.abstractmethod
    def steps(self, kind: str, *, public: bool) -> list[str]:
        """Ordered step names for a deployment of ``kind`` (a ``Deployment.Kind``)."""

    @abc.abstractmethod
    def run_step(self, name: str, ctx: StepContext) -> StepOutcome:
        """Run (or poll) one step; see the module docstring for the contract."""

    @abc.abstractmethod
    def discard(self, ctx: StepContext) -> None:
        """Remove what the failed rollout ``ctx.deployment`` created; keep the live version."""

    @abc.abstractmethod
    def invoke(self, runtime: Mapping[str, Any], body: bytes, headers: Mapping[str, str]) -> InvocationResult:
        """Forward one request to what serves traffic now; no database access."""

    def check(self, endpoint: Endpoint) -> None:  # noqa: B027 (optional hook; nothing to do by default)
        """Reconciler hook for a live endpoint: repair drift or raise ``PermanentStepError``."""

    def collect_logs(self, endpoint: Endpoint) -> int:
        """Copy new runtime/cloud log lines into ``LogLine``; returns how many. Unthrottled:
        callers go through ``services.endpoint_logs.endpoint_logs_collect``."""
        return 0

    def push_api_key(self, endpoint: Endpoint) -> None:  # noqa: B027 (optional hook; nothing to do by default)
        """After a key rotation: give ``endpoint.api_key_hash`` to a public API the target
        hosts itself (rdeploy's own gateway reads it from the database)."""

    def public_calls_since(self, endpoint: Endpoint, since: datetime) -> int | None:
        """For a stopped endpoint with ``wake_on_request``: how many calls its public route
        answered "stopped" since ``since``, for a route that cannot start the endpoint itself
        (the reconciler starts it when there were any). None: the route wakes the endpoint
        on its own, as rdeploy's gateway does, or the endpoint has no such route."""
        return None

    def collect_shadow_pairs(self, shadow: Shadow) -> int:
        """For a target that copies requests to a shadow itself: store the answered pairs
        found since the last call as ``ShadowPair`` rows; returns how many."""
        return 0

    def reap(self) -> int:
        """Reconciler hook: stop what still runs though its ``ExternalResource`` was removed
        (e.g. started by a step whose rollout was discarded meanwhile); returns how many."""
        return 0
