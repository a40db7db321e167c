"""API tokens: created once, stored hashed, revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.utils import timezone

from deployer.models import ApiToken

TOKEN_PREFIX = "rdp_"  # noqa: S105 (a marker that makes leaked tokens greppable, not a secret)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret (tokens and public API keys)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    # The plain token: returned once to the caller, never stored.
    secret: str


def api_token_create(*, user: User, name: str = "") -> IssuedToken:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100], prefix=secret[:12], key_hash=hash_secret(secret))
    return IssuedToken(token=token, secret=secret)


def api_token_revoke(*, token: ApiToken) -> None:
    """Revoking twice is a no-op; the row stays for the audit trail."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def api_token_authenticate(*, secret: str) -> ApiToken | None:
    """The active token for `secret`, or None. Marks it used at most once a minute."""
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_secret(secret), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
