"""The REST API's one exception handler: a domain error's kind decides the status, its message the body."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from deployer.api.errors import exception_handler
from deployer.errors import DomainError


@pytest.mark.parametrize(
    ("kind", "status"),
    [("invalid", 400), ("conflict", 409), ("too_large", 413), ("forbidden", 403)],
)
def test_each_kind_of_domain_error_has_its_status_and_a_detail_body(kind: str, status: int) -> None:
    error = type("Refusal", (DomainError,), {"kind": kind})("what is wrong", field="name")
    response = exception_handler(error, {})
    assert response is not None
    assert (response.status_code, response.data) == (status, {"detail": "what is wrong"})


def test_a_services_validation_error_is_a_400_by_field() -> None:
    response = exception_handler(ValidationError({"name": "Taken."}), {})
    assert response is not None
    assert (response.status_code, response.data) == (400, {"name": ["Taken."]})


def test_other_exceptions_are_left_to_django() -> None:
    assert exception_handler(RuntimeError("bug"), {}) is None
