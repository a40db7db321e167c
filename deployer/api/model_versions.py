"""`/api/v1/models/`: upload, list, show and delete model versions (docs/model-intake.md)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from deployer.api.schema import VALIDATION_ERROR_SCHEMA, NameField, error
from deployer.artifacts.uploads import HashingUploadHandler
from deployer.models import ModelVersion
from deployer.services.model_intake import (
    UPLOAD_FILE_FIELDS,
    model_version_delete,
    model_version_upload,
)


class ModelVersionSerializer(serializers.ModelSerializer[ModelVersion]):
    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "version",
            "status",
            "status_reason",
            "sha256",
            "size",
            "artifact_kind",
            "original_filename",
            "requested_packages",
            "inspection",
            "created_at",
            "inspected_at",
        ]
        read_only_fields = fields


class ModelUploadSerializer(serializers.Serializer[Any]):
    name = NameField(max_length=63, help_text="Lowercase letters, digits and hyphens, 1-63 characters.")
    file = serializers.FileField(help_text="A model saved with saveRDS(), or a .tar.gz/.zip bundle holding model.rds.")
    sample = serializers.FileField(
        required=False, help_text="A few input rows: CSV with a header row, or JSON records."
    )
    packages = serializers.CharField(
        required=False, allow_blank=True, help_text="Extra R packages the model needs, comma-separated."
    )


@extend_schema(tags=["models"])
class ModelVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet[ModelVersion]
):
    serializer_class = ModelVersionSerializer
    parser_classes = [MultiPartParser]

    def get_queryset(self) -> QuerySet[ModelVersion]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return ModelVersion.objects.none()
        queryset = ModelVersion.objects.visible_to(self.request.user)
        name = self.request.query_params.get("name")
        if name and "\x00" in name:
            # No name holds a NUL, and PostgreSQL refuses one in a query (a 500): none match.
            return queryset.none()
        return queryset.filter(name=name) if name else queryset

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before anything reads the body: the upload handler the dashboard shares
        # (RDEPLOY_MAX_UPLOAD_BYTES for the request's files together, the expected file fields
        # only, hashed on the way).
        if request.method == "POST":
            request.upload_handlers = [HashingUploadHandler(request, fields=UPLOAD_FILE_FIELDS)]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        parameters=[OpenApiParameter("name", str, description="Only versions of this model name.")],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request={"multipart/form-data": ModelUploadSerializer},
        responses={
            201: ModelVersionSerializer,
            200: OpenApiResponse(
                ModelVersionSerializer, description="The same bytes under this name: the existing version."
            ),
            400: OpenApiResponse(VALIDATION_ERROR_SCHEMA, description="Refused: the message says what is wrong."),
            413: error("Above RDEPLOY_MAX_UPLOAD_BYTES."),
        },
    )
    def create(self, request: Request) -> Response:
        upload = ModelUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        outcome = model_version_upload(
            owner=request.user,  # type: ignore[arg-type]
            name=data["name"],
            file=data["file"],
            sample=data.get("sample"),
            packages=data.get("packages", ""),
        )
        return Response(
            ModelVersionSerializer(outcome.model_version).data,
            status=status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK,
        )

    @extend_schema(responses={204: None, 409: error("An endpoint uses this version.")})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        model_version_delete(model_version=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
