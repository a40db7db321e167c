"""Users for the quick start."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User


def demo_user_ensure(*, username: str = "demo") -> tuple[User, str]:
    """The demo user and its password, created once; the password is kept in the data dir
    (mode 600) so `make run` can print it again on every start."""
    password_file = Path(settings.DATA_DIR) / "demo_password"
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(12))
        password_file.chmod(0o600)
    password = password_file.read_text().strip()
    user, created = User.objects.get_or_create(username=username)
    if created or not user.check_password(password):
        user.set_password(password)
        user.save()
    return user, password
