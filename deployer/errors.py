"""rdeploy's error vocabulary: what went wrong, in terms a door can translate.

A `DomainError` says which kind of refusal it is (``invalid``, ``not_found``, ``conflict``,
``too_large``, ``forbidden``: over a quota) and, when it is about one input, which ``field``.
The REST API maps the kind to 400/404/409/413/403 in one place
(`deployer.api.errors.exception_handler`); the dashboard puts the message on ``field``.
The message is for people; code never matches on its text.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Kind = Literal["invalid", "not_found", "conflict", "too_large", "forbidden"]


class DomainError(Exception):
    """A refusal the client can act on; ``message`` says what is wrong."""

    kind: ClassVar[Kind] = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
