"""DRF authentication by `Authorization: Token <token>` against hashed API tokens.

A wrong token counts against the caller's address (deployer/services/login_throttle.py):
past the limit, 429 with Retry-After; 503 while the counters cannot be reached.
"""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions, status
from rest_framework.request import Request

from deployer.services.login_throttle import SignInLocked, SignInRefused, client_address, token_failure_record
from deployer.services.tokens import api_token_authenticate


class AuthenticationUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"

    def __init__(self, refusal: SignInRefused) -> None:
        super().__init__(refusal.message, refusal.code)
        self.wait = refusal.retry_after  # DRF's handler sends it as Retry-After


def token_refusal(meta: dict[str, Any]) -> exceptions.APIException:
    """What a wrong token is answered: 401, or 429 once its address is locked."""
    try:
        token_failure_record(address=client_address(meta))
    except SignInLocked as exc:
        return exceptions.Throttled(wait=exc.retry_after, detail=exc.message)
    except SignInRefused as exc:
        return AuthenticationUnavailable(exc)
    return exceptions.AuthenticationFailed("Invalid or revoked token.")


class HashedTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: expected 'Token <token>'.")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        token = api_token_authenticate(secret=secret)
        if token is None:
            raise token_refusal(request.META)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
