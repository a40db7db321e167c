"""rdeploy's error vocabulary: what went wrong, in terms a door can translate.

A `DomainError` says which kind of refusal it is (``invalid``, ``conflict``, ``too_large``,
``forbidden``: over a quota) and, when it is about one input, which ``field``. The REST API
maps the kind to 400/409/413/403 in one place (`deployer.api.errors.exception_handler`); the
dashboard puts the message on ``field``. The message is for people; code never matches on its
text. There is no "not found": services take rows, not ids, and the doors that look them up
answer 404 themselves (DRF's ``get_object``, ``get_object_or_404``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

Kind = Literal["invalid", "conflict", "too_large", "forbidden"]


class DomainError(Exception):
    """A refusal the client can act on; ``message`` says what is wrong."""

    kind: ClassVar[Kind] = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
