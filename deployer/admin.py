from django.contrib import admin

from deployer.models import (
    ApiToken,
    Deployment,
    DeploymentStep,
    Endpoint,
    ExternalResource,
    LogLine,
    ModelVersion,
    UserQuota,
)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin[ModelVersion]):
    list_display = ["name", "version", "owner", "status", "size", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "sha256"]
    readonly_fields = ["sha256", "size", "inspection", "created_at", "inspected_at"]


class DeploymentStepInline(admin.TabularInline[DeploymentStep, Deployment]):
    model = DeploymentStep
    extra = 0
    readonly_fields = ["position", "name", "status", "message", "started_at", "finished_at"]


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin[Endpoint]):
    list_display = ["name", "owner", "target", "status", "model_version", "updated_at"]
    list_filter = ["status", "target"]
    search_fields = ["name"]
    # Written by the pipeline alone: an edit here would contradict what really serves.
    readonly_fields = [
        "status",
        "model_version",
        "previous_model_version",
        "current_deployment",
        "invoke_url",
        "public_url",
        "api_key_hash",
        "api_key_prefix",
        "runtime",
        "error",
    ]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin[Deployment]):
    list_display = ["id", "endpoint", "kind", "model_version", "status", "created_at", "finished_at"]
    list_filter = ["status", "kind"]
    inlines = [DeploymentStepInline]
    # Written by the pipeline alone (a lease edited by hand would let two workers run a step).
    readonly_fields = [
        "status",
        "error",
        "resources",
        "lease_until",
        "attempts",
        "traffic_switched_at",
        "started_at",
        "finished_at",
    ]


@admin.register(LogLine)
class LogLineAdmin(admin.ModelAdmin[LogLine]):
    list_display = ["id", "endpoint", "source", "level", "created_at", "message"]
    list_filter = ["source", "level"]
    raw_id_fields = ["endpoint", "deployment"]


@admin.register(ExternalResource)
class ExternalResourceAdmin(admin.ModelAdmin[ExternalResource]):
    list_display = ["kind", "identifier", "target", "endpoint", "created_at", "deleted_at"]
    list_filter = ["target", "kind"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "key_hash"]


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin[UserQuota]):
    """Staff raise or lower one user's limits here (deployer/services/quotas.py); a blank
    limit is the installation's default."""

    list_display = ["user", "max_endpoints", "max_instances", "max_local_memory_mb"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]
