"""`/api/v1/endpoints/`: create, list, show, update, roll back, stop, start, shadow, tail logs,
delete; invoke.

Also the public route `/e/<name>/invocations` (mounted in config/urls.py). The two
invocation views are plain Django views, not DRF: they run for every prediction, and
the gateway service keeps that path lean (see deployer/services/gateway.py).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from deployer import selectors
from deployer.api.costs import CostSerializer
from deployer.api.schema import CONFLICT, NameField
from deployer.api.shadow_comparison import ShadowComparisonSerializer
from deployer.authentication import token_refusal
from deployer.models import Deployment, DeploymentStep, Endpoint, LogLine, ModelVersion, Shadow
from deployer.services import endpoints as services
from deployer.services import shadows
from deployer.services.costs import endpoint_cost_estimate
from deployer.services.endpoint_logs import endpoint_logs_collect
from deployer.services.gateway import MAX_BODY_BYTES, gateway_public_invoke, token_principal
from deployer.services.shadow_comparison import shadow_comparison_shown, shadow_latest
from deployer.targets.base import InvocationResult


class ModelRefSerializer(serializers.ModelSerializer[ModelVersion]):
    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version"]


class StepSerializer(serializers.ModelSerializer[DeploymentStep]):
    class Meta:
        model = DeploymentStep
        fields = ["name", "status", "started_at", "finished_at", "message"]


class DeploymentSerializer(serializers.ModelSerializer[Deployment]):
    model = ModelRefSerializer(source="model_version", read_only=True)
    steps = StepSerializer(many=True, read_only=True)

    class Meta:
        model = Deployment
        fields = ["id", "kind", "status", "model", "error", "created_at", "finished_at", "steps"]


class EndpointSerializer(serializers.ModelSerializer[Endpoint]):
    model = serializers.SerializerMethodField()
    steps = serializers.SerializerMethodField()
    deployment = DeploymentSerializer(source="current_deployment", read_only=True, allow_null=True)
    cost = serializers.SerializerMethodField()

    class Meta:
        model = Endpoint
        fields = [
            "name",
            "target",
            "status",
            "model",
            "steps",
            "invoke_url",
            "public_url",
            "public",
            "api_key_prefix",
            "options",
            "error",
            "deployment",
            "cost",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(ModelRefSerializer(allow_null=True))
    def get_model(self, endpoint: Endpoint) -> dict[str, Any] | None:
        """The version serving traffic, or the one being deployed before the first is live."""
        version = endpoint.model_version or (
            endpoint.current_deployment.model_version if endpoint.current_deployment else None
        )
        return dict(ModelRefSerializer(version).data) if version else None

    @extend_schema_field(CostSerializer)
    def get_cost(self, endpoint: Endpoint) -> dict[str, Any]:
        """The estimated cost per hour and month (docs/cost.md)."""
        return endpoint_cost_estimate(endpoint=endpoint).as_dict()

    @extend_schema(responses=StepSerializer(many=True))
    def get_steps(self, endpoint: Endpoint) -> list[dict[str, Any]]:
        deployment = endpoint.current_deployment
        return list(StepSerializer(deployment.steps.all(), many=True).data) if deployment else []


class EndpointCreateSerializer(serializers.Serializer[Any]):
    name = NameField(max_length=63)
    model = serializers.IntegerField()
    target = serializers.ChoiceField(choices=Endpoint.Target.choices, default=Endpoint.Target.LOCAL)
    options = serializers.DictField(default=dict)
    public = serializers.BooleanField(default=False)


class CreatedEndpointSerializer(EndpointSerializer):
    api_key = serializers.CharField(read_only=True, help_text="Public endpoints only; shown once.")

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "api_key"]


class ModelRequestSerializer(serializers.Serializer[Any]):
    model = serializers.IntegerField()


# Lines per page of GET .../logs.
LOG_PAGE = 500


class LogLineSerializer(serializers.ModelSerializer[LogLine]):
    class Meta:
        model = LogLine
        fields = ["id", "created_at", "source", "level", "message", "deployment"]


def log_page_lines(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """What ``LogLineSerializer(lines, many=True).data`` gives for these rows, without a
    serializer per line (a 500-line page took 17 ms, over half of it in DRF's fields)."""
    created_at = serializers.DateTimeField()
    return [
        dict(zip(selectors.LOG_PAGE_FIELDS, (line_id, created_at.to_representation(created), *rest), strict=True))
        for line_id, created, *rest in rows
    ]


class LogPageSerializer(serializers.Serializer[Any]):
    lines = LogLineSerializer(many=True)
    next = serializers.IntegerField(help_text="Pass as ?after= to get the following lines.")


class ApiKeySerializer(serializers.Serializer[Any]):
    api_key = serializers.CharField(help_text="Shown once; the previous key stops working.")


class ShadowRequestSerializer(serializers.Serializer[Any]):
    model = serializers.IntegerField(help_text="The model version to run beside the live one.")
    sample_percent = serializers.IntegerField(
        min_value=1, max_value=100, help_text="The share of live requests copied to it."
    )
    duration = serializers.CharField(
        max_length=16, help_text='How long it runs before it stops itself: "30m", "2h", "1d".'
    )


class ShadowSerializer(serializers.ModelSerializer[Shadow]):
    model = ModelRefSerializer(source="model_version", read_only=True)
    deployment = DeploymentSerializer(read_only=True)
    comparison = serializers.SerializerMethodField()

    class Meta:
        model = Shadow
        fields = [
            "id",
            "model",
            "status",
            "sample_percent",
            "duration",
            "started_at",
            "ends_at",
            "finished_at",
            "outcome",
            "copies_sent",
            "copies_dropped",
            "created_at",
            "deployment",
            "comparison",
        ]

    @extend_schema_field(ShadowComparisonSerializer)
    def get_comparison(self, shadow: Shadow) -> dict[str, Any]:
        return dict(ShadowComparisonSerializer(asdict(shadow_comparison_shown(shadow))).data)


class EndpointViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Endpoint]):
    serializer_class = EndpointSerializer
    lookup_field = "name"
    lookup_value_regex = "[a-z0-9-]+"

    def get_queryset(self) -> QuerySet[Endpoint]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Endpoint.objects.none()
        steps = Prefetch("current_deployment__steps", queryset=DeploymentStep.objects.order_by("position"))
        return (
            Endpoint.objects.visible_to(self.request.user)
            .select_related("model_version", "current_deployment__model_version")
            .prefetch_related(steps)
            .order_by("-updated_at", "-id")
        )

    def _model(self, model_id: int) -> ModelVersion:
        model = ModelVersion.objects.visible_to(self.request.user).filter(pk=model_id).first()
        if model is None:
            raise exceptions.ValidationError({"model": f"No model with id {model_id}."})
        return model

    def _fresh(self, endpoint: Endpoint) -> dict[str, Any]:
        return dict(EndpointSerializer(self.get_queryset().get(pk=endpoint.pk)).data)

    @extend_schema(request=EndpointCreateSerializer, responses={202: CreatedEndpointSerializer})
    def create(self, request: Request) -> Response:
        data = EndpointCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.endpoint_create(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: a User
            name=data.validated_data["name"],
            model_version=self._model(data.validated_data["model"]),
            target=data.validated_data["target"],
            options=data.validated_data["options"],
            public=data.validated_data["public"],
        )
        body = self._fresh(issued.endpoint)
        if issued.api_key:
            body["api_key"] = issued.api_key
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: EndpointSerializer, 409: CONFLICT})
    def destroy(self, request: Request, name: str) -> Response:
        endpoint = self.get_object()
        services.endpoint_delete(endpoint=endpoint)
        return Response(self._fresh(endpoint), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ModelRequestSerializer, responses={202: EndpointSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def deployments(self, request: Request, name: str) -> Response:
        """Blue/green update to another model version."""
        endpoint = self.get_object()
        data = ModelRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.endpoint_update(endpoint=endpoint, model_version=self._model(data.validated_data["model"]))
        return Response(self._fresh(endpoint), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: EndpointSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, name: str) -> Response:
        """Back to the previously live model version."""
        endpoint = self.get_object()
        services.endpoint_rollback(endpoint=endpoint)
        return Response(self._fresh(endpoint), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: EndpointSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, name: str) -> Response:
        """Stop serving: remove the runtime (local) or the SageMaker endpoint, keep the rest."""
        endpoint = self.get_object()
        services.endpoint_stop(endpoint=endpoint)
        return Response(self._fresh(endpoint), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: EndpointSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def start(self, request: Request, name: str) -> Response:
        """Serve a stopped endpoint again from what its stop kept (nothing is rebuilt)."""
        endpoint = self.get_object()
        services.endpoint_start(endpoint=endpoint)
        return Response(self._fresh(endpoint), status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], request=None, responses={200: ShadowSerializer})
    @extend_schema(methods=["POST"], request=ShadowRequestSerializer, responses={202: ShadowSerializer, 409: CONFLICT})
    @action(detail=True, methods=["get", "post"])
    def shadow(self, request: Request, name: str) -> Response:
        """GET: the active shadow (else the latest) with its comparison to the live version.
        POST: start a model version beside the live one, answering copies of live requests."""
        endpoint = self.get_object()
        if request.method == "POST":
            data = ShadowRequestSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            started = shadows.shadow_start(
                endpoint=endpoint,
                model_version=self._model(data.validated_data["model"]),
                sample_percent=data.validated_data["sample_percent"],
                duration=data.validated_data["duration"],
            )
            return Response(ShadowSerializer(started).data, status=status.HTTP_202_ACCEPTED)
        latest = shadow_latest(endpoint)
        if latest is None:
            raise exceptions.NotFound(f"Endpoint {endpoint.name} never had a shadow.")
        return Response(ShadowSerializer(latest).data)

    @extend_schema(request=None, responses={202: DeploymentSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="shadow/promote")
    def shadow_promote(self, request: Request, name: str) -> Response:
        """Make the running shadow live through the blue/green switch (nothing is rebuilt)."""
        deployment = shadows.shadow_promote(endpoint=self.get_object())
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: DeploymentSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="shadow/stop")
    def shadow_stop(self, request: Request, name: str) -> Response:
        """Stop the copies and remove the shadow; the live version is not touched."""
        deployment = shadows.shadow_end(endpoint=self.get_object())
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="Cursor: the last line id seen (0 for all).")],
        responses=LogPageSerializer,
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, name: str) -> Response:
        """Pipeline, build and runtime log lines after a cursor."""
        endpoint = self.get_object()
        try:
            after = max(0, int(request.query_params.get("after", 0)))
        except ValueError:
            raise exceptions.ValidationError({"after": "Must be a whole number (a log line id)."}) from None
        endpoint_logs_collect(endpoint=endpoint)
        rows = selectors.log_line_rows_after(endpoint=endpoint, after=after, limit=LOG_PAGE)
        return Response({"lines": log_page_lines(rows), "next": rows[-1][0] if rows else after})

    @extend_schema(request=None, responses={200: ApiKeySerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="rotate-key")
    def rotate_key(self, request: Request, name: str) -> Response:
        """A new public API key, shown once; the old one stops working."""
        key = services.endpoint_rotate_key(endpoint=self.get_object())
        return Response({"api_key": key})


# application/json and the +json types (problem+json, ...): displayed as text, never run.
_JSON_TYPE = re.compile(r"application/([a-z0-9.+-]+\+)?json", re.IGNORECASE)


def _response(result: InvocationResult) -> HttpResponse:
    """The answer as the model gave it, made inert: it is served from the dashboard's origin,
    and a model chooses its Content-Type (text/html included). `sandbox` gives the document
    an opaque origin without scripts, a non-JSON answer downloads instead of rendering, and
    an answer without a type is bytes (Django's default would be text/html)."""
    content_type = result.headers.get("Content-Type") or "application/octet-stream"
    response = HttpResponse(result.body, status=result.status, content_type=content_type)
    for header, value in result.headers.items():
        if header != "Content-Type":
            response[header] = value
    response["Content-Security-Policy"] = "sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    # A comma lists several types, and a browser takes the last ("application/json,text/html"
    # renders as HTML): only a single JSON type is shown inline.
    if "," in content_type or not _JSON_TYPE.fullmatch(content_type.split(";", 1)[0].strip()):
        response["Content-Disposition"] = "attachment"
    return response


# Read straight from the WSGI environ: building request.headers costs more than the rest
# of the view (the invocation views are the hot path).
_FORWARDED_META = {
    "Content-Type": "CONTENT_TYPE",
    "Accept": "HTTP_ACCEPT",
    "X-Amzn-SageMaker-Custom-Attributes": "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES",
}


def _forwarded_headers(request: HttpRequest) -> dict[str, str]:
    return {name: value for name, key in _FORWARDED_META.items() if (value := request.META.get(key))}


def _not_found() -> JsonResponse:
    return JsonResponse({"detail": "No Endpoint matches the given query."}, status=404)


class _CsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, answering the reason instead of an HTML page (as DRF does)."""

    def _reject(self, request: HttpRequest, reason: str) -> str:
        return reason


def _csrf_failure(request: HttpRequest) -> str | None:
    check = _CsrfCheck(lambda _: HttpResponse())
    check.process_request(request)
    # No callback: the view's own csrf_exempt mark would skip the check.
    reason: str | None = check.process_view(request, None, (), {})  # type: ignore[arg-type,assignment]
    return reason


def _refused(exc: exceptions.APIException) -> JsonResponse:
    """A DRF refusal answered as DRF's handler would, for this plain view."""
    response = JsonResponse({"detail": str(exc.detail)}, status=exc.status_code)
    if wait := getattr(exc, "wait", None):
        response["Retry-After"] = str(int(wait))
    return response


def _too_large() -> JsonResponse:
    return JsonResponse({"message": f"Request body is larger than {MAX_BODY_BYTES} bytes."}, status=413)


@csrf_exempt  # a token request needs no CSRF token; a session request is checked below
@require_POST
def endpoint_invocations(request: HttpRequest, name: str) -> HttpResponse:
    """`POST /api/v1/endpoints/<name>/invocations`: token (or session) auth, owner or staff."""
    user: Any = request.user
    authorization = request.META.get("HTTP_AUTHORIZATION", "").split()
    if authorization:
        if len(authorization) != 2 or authorization[0].lower() != "token":
            return JsonResponse({"detail": "Invalid token header: expected 'Token <token>'."}, status=401)
        user = token_principal(authorization[1])
        if user is None:
            return _refused(token_refusal(request.META))
    if not user.is_authenticated:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=401)
    if not authorization and (reason := _csrf_failure(request)):
        # A browser session authenticates itself: a cross-site form must not invoke for it.
        return JsonResponse({"detail": f"CSRF Failed: {reason}"}, status=403)
    # The same limit as the public route, refused before the body is read.
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_BODY_BYTES:
            return _too_large()
    except ValueError:
        pass
    try:
        body = request.body
    except RequestDataTooBig:
        return _too_large()
    result = services.endpoint_invoke(user=user, name=name, body=body, headers=_forwarded_headers(request))
    return _not_found() if result is None else _response(result)


@csrf_exempt
def public_invocations(request: HttpRequest, name: str) -> HttpResponse:
    """`POST /e/<name>/invocations`: the public API, authenticated by `x-api-key`."""
    if request.method != "POST":
        return JsonResponse({"message": "Forbidden"}, status=403)
    try:
        content_length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        content_length = 0
    result = gateway_public_invoke(
        name=name,
        api_key=request.META.get("HTTP_X_API_KEY"),
        content_length=content_length,
        read_body=lambda: request.body,
        headers=_forwarded_headers(request),
    )
    return _response(result)


class _OptionalSlashRouter(SimpleRouter):
    """The issue's paths have no trailing slash; Django-style clients add one. Accept both."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = _OptionalSlashRouter()
router.register("endpoints", EndpointViewSet, basename="endpoint")
