"""The rdeploy data model.

ModelVersion (an uploaded, inspected R model) -> Endpoint (a stable name serving one
version on a target) -> Deployment (one rollout, a sequence of DeploymentStep rows)
-> LogLine (tailable by id) and ExternalResource (everything created outside the
database, so teardown and garbage collection can find it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models, transaction

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

# DNS-label shaped, which is also what SageMaker, ECR and Lambda accept in names.
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
name_validator = RegexValidator(
    NAME_PATTERN,
    "Use 1-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit.",
)


class OwnedQuerySet(models.QuerySet[Any]):
    """Every query that reaches user data starts here: users see their own rows, staff all."""

    def visible_to(self, user: User | AnonymousUser) -> OwnedQuerySet:
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self.all()
        return self.filter(owner=user)


# A callable, so the storage is chosen by settings at run time, not frozen in migrations.
def _artifact_storage() -> Any:
    from django.core.files.storage import storages

    return storages["artifacts"]


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        INSPECTING = "inspecting"
        READY = "ready"
        INVALID = "invalid"

    class ArtifactKind(models.TextChoices):
        RDS = "rds"
        TAR_GZ = "tar.gz"
        ZIP = "zip"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_versions")
    name = models.CharField(max_length=63, validators=[name_validator])
    version = models.PositiveIntegerField()
    artifact = models.FileField(storage=_artifact_storage, max_length=500)
    artifact_kind = models.CharField(max_length=8, choices=ArtifactKind.choices)
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    sample = models.FileField(storage=_artifact_storage, max_length=500, blank=True)
    requested_packages = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.INSPECTING)
    # Why the model is invalid, in words a data scientist understands.
    status_reason = models.TextField(blank=True)
    # class, R versions, packages, input schema, prediction kind, example payload and
    # predictions, timings: written by inspection, read by targets and the dashboard.
    inspection = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    inspected_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name", "version"], name="unique_model_version"),
            models.UniqueConstraint(fields=["owner", "name", "sha256"], name="unique_model_content"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Endpoint(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        BUILDING = "building"
        DEPLOYING = "deploying"
        LIVE = "live"
        UPDATING = "updating"
        FAILED = "failed"
        DELETING = "deleting"
        DELETED = "deleted"
        # Stopped: what is billed (the runtime, the SageMaker endpoint) is removed, what is
        # needed to serve again (image, model, endpoint config, public API, key) is kept.
        STOPPING = "stopping"
        STOPPED = "stopped"
        STARTING = "starting"

    class Target(models.TextChoices):
        LOCAL = "local"
        SAGEMAKER = "sagemaker", "SageMaker"

    # States in which something is happening that a page should follow.
    BUSY = frozenset(
        {
            Status.PENDING,
            Status.BUILDING,
            Status.DEPLOYING,
            Status.UPDATING,
            Status.DELETING,
            Status.STOPPING,
            Status.STARTING,
        }
    )
    # States in which nothing serves until a start deployment has run.
    ASLEEP = frozenset({Status.STOPPED, Status.STARTING})
    # States in which the gateway forwards traffic.
    SERVING = frozenset({Status.LIVE, Status.UPDATING})

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="endpoints")
    target = models.CharField(max_length=16, choices=Target.choices, default=Target.LOCAL)
    options = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    # The version traffic goes to now; null until the first rollout is live.
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="serving_endpoints"
    )
    # The version live before the current one: what "rollback" goes back to.
    previous_model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    current_deployment = models.ForeignKey(
        "Deployment", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    invoke_url = models.URLField(blank=True)
    public_url = models.URLField(blank=True)
    public = models.BooleanField(default=False)
    # Public API key: only its hash is kept; the key is shown once on creation/rotation.
    api_key_hash = models.CharField(max_length=64, blank=True, db_index=True)
    api_key_prefix = models.CharField(max_length=12, blank=True)
    # Target-specific facts about what serves traffic now (local: port and pid; SageMaker:
    # endpoint name, region); written only by the target through the pipeline.
    runtime = models.JSONField(default=dict, blank=True)
    # Where copies of live requests go while a shadow runs ({} when none): the shadow's id,
    # its sample percent and the target's facts for reaching it; written by the pipeline.
    shadow_runtime = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """One rollout of one model version onto one endpoint (or its teardown)."""

    class Kind(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        ROLLBACK = "rollback"
        DELETE = "delete"
        # Remove what serves (and is billed) and keep the rest; start serves it again.
        STOP = "stop"
        START = "start"
        # A shadow: a version started beside the live one, receiving copies of its
        # requests; promote makes it live (no build or start), end_shadow removes it.
        SHADOW = "shadow"
        PROMOTE = "promote"
        END_SHADOW = "end_shadow"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED)
    # Not finished: at most one of these per endpoint runs at a time.
    ACTIVE = (Status.PENDING, Status.RUNNING)
    # Kinds that put a model version into service (delete is the other one).
    ROLLOUT_KINDS = (Kind.CREATE, Kind.UPDATE, Kind.ROLLBACK, Kind.PROMOTE)
    # Kinds after which the live version still serves, unchanged.
    SHADOW_KINDS = (Kind.SHADOW, Kind.END_SHADOW)
    # Kinds that run beside a live version: when one fails, that version still serves.
    BESIDE_LIVE_KINDS = (Kind.UPDATE, Kind.ROLLBACK, Kind.PROMOTE, *SHADOW_KINDS)

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deployments")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    error = models.TextField(blank=True)
    # Identifiers of what this rollout created, keyed by role ("model_data", "image",
    # "sagemaker_model", "process"...): the target reads them to resume and to tear down.
    resources = models.JSONField(default=dict, blank=True)
    # Guards concurrent advancement: a task claims the row until this time.
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # When the rollout's version started serving traffic (its target's switch step
    # succeeded): a later failure rolls forward instead of discarding what now serves.
    traffic_switched_at = models.DateTimeField(null=True, blank=True)
    # A stop the idle stop made: since when the endpoint had served no invocation.
    idle_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.endpoint} -> {self.model_version}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class DeploymentStep(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        SKIPPED = "skipped"
        FAILED = "failed"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    message = models.TextField(blank=True)
    # The deterministic name of what the step is about to create, written before creating
    # it, so a retry after a crash finds it instead of creating a duplicate.
    intent = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # When a waiting step (an endpoint coming up) should be polled next.
    next_check_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "position"]
        constraints = [models.UniqueConstraint(fields=["deployment", "position"], name="unique_step_position")]

    def __str__(self) -> str:
        return f"{self.position}. {self.name} ({self.status})"


class LogLine(models.Model):
    """A log line or pipeline event; its id is the cursor clients tail by."""

    class Source(models.TextChoices):
        PIPELINE = "pipeline"
        BUILD = "build"
        RUNTIME = "runtime"
        ENDPOINT = "endpoint"
        GATEWAY = "gateway"

    class Level(models.TextChoices):
        DEBUG = "debug"
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="log_lines")
    deployment = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()

    class Meta:
        ordering = ["id"]
        # Tailing is "lines of this endpoint with id > cursor": one index range scan.
        indexes = [models.Index(fields=["endpoint", "id"], name="logline_tail")]

    def __str__(self) -> str:
        return f"[{self.source}] {self.message[:80]}"


class ExternalResourceQuerySet(models.QuerySet["ExternalResource"]):
    def live(self) -> ExternalResourceQuerySet:
        """Not yet removed."""
        return self.filter(deleted_at__isnull=True)

    def removed(self) -> ExternalResourceQuerySet:
        return self.filter(deleted_at__isnull=False)

    def named(self, target: str, kind: str, identifier: str) -> ExternalResourceQuerySet:
        """The row for one resource (at most one: target, kind and identifier are unique)."""
        return self.filter(target=target, kind=kind, identifier=identifier)

    def of_endpoint(self, endpoint: Endpoint, kind: str | None = None) -> ExternalResourceQuerySet:
        """The endpoint's resources (of ``kind`` only, when given)."""
        mine = self.filter(endpoint=endpoint)
        return mine if kind is None else mine.filter(kind=kind)


class ExternalResource(models.Model):
    """Anything created outside the database (a container, an S3 object, a SageMaker model).

    Recorded as intent before creation and marked deleted after removal; teardown walks
    these rows in reverse, and `rdeploy_gc` compares them with what the cloud reports.
    """

    class Kind(models.TextChoices):
        # local
        MODEL_DIR = "model_dir"
        CONTAINER = "container"
        # Local runtimes before they ran in containers; kept so old rows still read.
        PROCESS = "process"
        # SageMaker
        MODEL_DATA = "model_data"
        BUILD_CONTEXT = "build_context"
        DOCKER_BUILD = "docker_build"
        ECR_IMAGE = "ecr_image"
        SAGEMAKER_MODEL = "sagemaker_model"
        SAGEMAKER_ENDPOINT_CONFIG = "sagemaker_endpoint_config"
        SAGEMAKER_ENDPOINT = "sagemaker_endpoint"
        AUTOSCALING_TARGET = "autoscaling_target"
        CLOUDWATCH_ALARM = "cloudwatch_alarm"
        LOG_GROUP = "log_group"
        IAM_ROLE = "iam_role"
        LAMBDA_FUNCTION = "lambda_function"
        APIGATEWAY_REST_API = "apigateway_rest_api"
        APIGATEWAY_USAGE_PLAN = "apigateway_usage_plan"
        APIGATEWAY_API_KEY = "apigateway_api_key"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="resources")
    deployment = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    target = models.CharField(max_length=16, choices=Endpoint.Target.choices)
    kind = models.CharField(max_length=64, choices=Kind.choices)
    identifier = models.CharField(max_length=512)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = ExternalResourceQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["target", "kind", "identifier"], name="unique_external_resource")
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.identifier}"

    def update_record(self, *, details: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """The one write of a recorded resource's row and this instance: ``details`` merged
        into the row's details as they are now (locked: this copy may be older), ``fields`` set."""
        with transaction.atomic():
            if details:
                fields["details"] = {**ExternalResource.objects.select_for_update().get(pk=self.pk).details, **details}
            ExternalResource.objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)

    def merge_details(self, **details: Any) -> None:
        self.update_record(details=details)

    def locked(self) -> ExternalResource:
        """This row read again and locked until the transaction ends: a writer that reads
        its details first (a log cursor) waits for another's commit instead of overwriting it."""
        return ExternalResource.objects.select_for_update().get(pk=self.pk)


class Shadow(models.Model):
    """A model version answering copies of an endpoint's live requests beside the live one.

    Started, promoted and ended by deployments (``Deployment.Kind.SHADOW`` ...); callers
    only ever get the live version's answers. See deployer/services/shadows.py.
    """

    class Status(models.TextChoices):
        STARTING = "starting"
        RUNNING = "running"
        PROMOTING = "promoting"
        ENDING = "ending"
        PROMOTED = "promoted"
        ENDED = "ended"
        FAILED = "failed"

    # At most one of these per endpoint (a partial unique constraint).
    ACTIVE = (Status.STARTING, Status.RUNNING, Status.PROMOTING, Status.ENDING)

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="shadows")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    # The deployment that started it: the shadow's runtime is its resources.
    deployment = models.OneToOneField(Deployment, on_delete=models.PROTECT, related_name="shadow")
    sample_percent = models.PositiveSmallIntegerField()
    duration = models.DurationField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTING, db_index=True)
    # Set when the shadow starts receiving copies: it ends itself at started_at + duration.
    started_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Why it ended (promoted, stopped by a user, its duration ran out, a failure).
    outcome = models.TextField(blank=True)
    # Requests copied to the shadow, and copies dropped because the senders were behind.
    copies_sent = models.PositiveBigIntegerField(default=0)
    copies_dropped = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                # Shadow.ACTIVE (the class's names are out of Meta's scope).
                fields=["endpoint"],
                condition=models.Q(status__in=["starting", "running", "promoting", "ending"]),
                name="one_active_shadow_per_endpoint",
            )
        ]

    def __str__(self) -> str:
        return f"shadow {self.model_version} on {self.endpoint}"


class ShadowPair(models.Model):
    """One request answered by both versions: the comparison is computed from these rows.

    Bounded per shadow (``settings.SHADOW_MAX_PAIRS``, oldest removed first)."""

    shadow = models.ForeignKey(Shadow, on_delete=models.CASCADE, related_name="pairs")
    created_at = models.DateTimeField(auto_now_add=True)
    live_status = models.PositiveSmallIntegerField()
    # Null when the shadow gave no HTTP answer (timeout, connection refused).
    shadow_status = models.PositiveSmallIntegerField(null=True, blank=True)
    live_ms = models.FloatField(null=True, blank=True)
    shadow_ms = models.FloatField(null=True, blank=True)
    # The answers' "predictions" (or whole JSON answer), truncated to SHADOW_MAX_ROWS rows.
    live_output = models.JSONField(null=True, blank=True)
    shadow_output = models.JSONField(null=True, blank=True)
    # Why the shadow failed on this request, as its answer or the transport said.
    shadow_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["shadow", "id"], name="shadowpair_recent")]

    def __str__(self) -> str:
        return f"pair {self.pk} of {self.shadow_id}"


class ApiToken(models.Model):
    """A REST API token. Only a SHA-256 of the token is stored: tokens are 256-bit random,
    so a slow password hash adds nothing but latency to every request."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    # The first characters, shown in lists so a user can tell tokens apart.
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class UserQuota(models.Model):
    """One user's limits, set by staff in the admin; a blank limit is the installation's
    default (settings.QUOTA_MAX_*). Enforced by deployer/services/quotas.py."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota")
    max_endpoints = models.PositiveIntegerField(
        null=True, blank=True, help_text="Endpoints not deleted. Blank: RDEPLOY_QUOTA_MAX_ENDPOINTS."
    )
    max_instances = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="SageMaker instances across the user's endpoints (the autoscaling maximum where larger). "
        "Blank: RDEPLOY_QUOTA_MAX_INSTANCES.",
    )
    max_local_memory_mb = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="MiB of memory across the user's local endpoints. Blank: RDEPLOY_QUOTA_MAX_LOCAL_MEMORY_MB.",
    )

    def __str__(self) -> str:
        return f"quota of {self.user}"
