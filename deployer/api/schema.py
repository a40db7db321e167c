"""The OpenAPI description's own parts (drf-spectacular): token authentication, and the
error answers every operation can give, in the shapes deployer/api/errors.py produces.

`AutoSchema` (settings.REST_FRAMEWORK's DEFAULT_SCHEMA_CLASS) adds the errors that follow
from an operation's shape; the views add their own (409, 413) with `extend_schema` and
`ERROR`. The test deployer/tests/test_api_fuzz.py holds every answer to this description.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers

from deployer.models import NAME_PATTERN


class HashedTokenScheme(OpenApiAuthenticationExtension):
    target_class = "deployer.authentication.HashedTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'An API token as "Token <token>" (create one with `manage.py create_api_token`).',
        }


@extend_schema_field({"type": "string", "pattern": NAME_PATTERN, "maxLength": 63})
class NameField(serializers.CharField):
    """An endpoint's or a model's name. The services check it and say why in their words; the
    schema shows the rule, so a client (or a fuzzer) knows which names are valid."""


class ErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField(help_text="What is wrong, for people; code should not match on it.")


# DRF's validation errors: {field: [messages]} (nested for nested fields), a {detail} for a
# refusal about no one field, or a bare list of messages.
VALIDATION_ERROR_SCHEMA: dict[str, Any] = {
    "description": "Field names to their messages, or {detail}.",
    "anyOf": [
        {"type": "object", "additionalProperties": {}},
        {"type": "array", "items": {"type": "string"}},
    ],
}


def error(description: str) -> OpenApiResponse:
    """An error answer with the {detail} body, for a view's `extend_schema(responses=...)`."""
    return OpenApiResponse(ErrorSerializer, description=description)


CONFLICT = error("The object's state does not allow this now (for example, a deployment is in progress).")

# Answers any operation can give, whatever it does.
COMMON_ERRORS = {
    "401": "No credentials, or an invalid or revoked token.",
    "403": "Not allowed: a session request without its CSRF token, or over a quota.",
    "429": "Too many requests (for example, repeated failed token authentication); see Retry-After.",
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, plus the error answers that follow from each operation's
    inputs: 400 where it takes a body or a query, 404 where the path names an object or the
    query a page, 415 where it takes a body, and COMMON_ERRORS everywhere."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        inputs = {parameter["in"] for parameter in operation.get("parameters", [])}
        names = {parameter["name"] for parameter in operation.get("parameters", [])}
        takes_body = "requestBody" in operation
        errors = dict(COMMON_ERRORS)
        if takes_body or "query" in inputs:
            errors["400"] = "Refused input."
        if "path" in inputs or "page" in names:
            errors["404"] = "No such object among those this user may see (or no such page)."
        if takes_body:
            errors["415"] = "The request's Content-Type is not one the operation takes."
        responses = operation["responses"]
        for code, description in errors.items():
            if code not in responses:
                body = VALIDATION_ERROR_SCHEMA if code == "400" else ErrorSerializer
                responses[code] = self._get_response_for_code(body, code) | {"description": description}
        operation["responses"] = dict(sorted(responses.items()))
        return operation
