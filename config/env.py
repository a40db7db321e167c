"""Typed readers for environment variables that fail loudly on bad values.

Every setting of rdeploy comes from the environment (twelve-factor); a typo such as
`DJANGO_DEBUG=ture` must stop the process at start-up, not silently mean False.
Secrets may also come from a file named by `<NAME>_FILE` (Docker/Kubernetes secrets).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ImproperlyConfiguredEnv(ValueError):
    """An environment variable holds a value rdeploy cannot use."""


class Env:
    """Reads settings from a mapping (os.environ by default) so tests can pass their own."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        file_name = self.environ.get(f"{name}_FILE")
        if file_name:
            try:
                return Path(file_name).read_text().strip()
            except OSError as exc:
                raise ImproperlyConfiguredEnv(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
        return self.environ.get(name)

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value.strip()

    def optional_text(self, name: str) -> str | None:
        value = self._raw(name)
        return value.strip() if value and value.strip() else None

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfiguredEnv(f"{name}={value!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off")

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._raw(name)
        if value is None or not value.strip():
            return default
        try:
            number = int(value.strip().replace("_", ""))
        except ValueError:
            raise ImproperlyConfiguredEnv(f"{name}={value!r} is not an integer") from None
        if minimum is not None and number < minimum:
            raise ImproperlyConfiguredEnv(f"{name}={number} is below the minimum of {minimum}")
        return number

    def items(self, name: str, default: list[str]) -> list[str]:
        value = self._raw(name)
        if value is None:
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        value = self.text(name, default)
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            raise ImproperlyConfiguredEnv(
                f"{name}={value!r} must be a URL starting with one of: {', '.join(s + '://' for s in schemes)}"
            )
        return value

    def matching(self, name: str, default: str, *, pattern: str, meaning: str) -> str:
        """Text that matches ``pattern`` entirely; ``meaning`` says what that is, for the error."""
        value = self.text(name, default)
        if not re.fullmatch(pattern, value):
            raise ImproperlyConfiguredEnv(f"{name}={value!r} must be {meaning}")
        return value

    def choice(self, name: str, default: str, *, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ImproperlyConfiguredEnv(f"{name}={value!r} must be one of: {', '.join(choices)}")
        return value
