"""The REST API's one translation of errors into answers (settings.REST_FRAMEWORK EXCEPTION_HANDLER)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status, views
from rest_framework.response import Response

from deployer.errors import DomainError

STATUS_BY_KIND = {
    "invalid": status.HTTP_400_BAD_REQUEST,
    "conflict": status.HTTP_409_CONFLICT,
    "too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    "forbidden": status.HTTP_403_FORBIDDEN,
}


def _api_exception(exc: Exception) -> Exception:
    if isinstance(exc, DomainError):
        translated = exceptions.APIException(exc.message, code=exc.kind)
        translated.status_code = STATUS_BY_KIND[exc.kind]
        return translated
    if isinstance(exc, DjangoValidationError):
        # A service's field errors (endpoint name, model, options): DRF's 400 with the same fields.
        return exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, after domain errors and Django's ValidationError become API exceptions."""
    return views.exception_handler(_api_exception(exc), context)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 (config/urls.py's handler404): under /api/ the API's own {detail} body,
    for paths no route matches (an id that is not a number, a name with other characters)."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
