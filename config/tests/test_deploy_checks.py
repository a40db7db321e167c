"""`manage.py check --deploy` is clean with production values and with the environment
docker-compose.yml gives the app (issue 12, finding 10), and compose publishes its plain
HTTP port on loopback only."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import compose_secrets

BASE_DIR = Path(__file__).resolve().parents[2]


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`check --deploy` failing on warnings, in a process with only ``env`` (and PATH)."""
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _compose() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def _with_defaults(value: str) -> str:
    """What compose makes of ``${NAME:-default}`` when NAME is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def production(tmp_path: Path, **overrides: str) -> dict[str, str]:
    return {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_HTTPS": "1",
        "DJANGO_BEHIND_TLS_PROXY": "1",
        "DJANGO_ALLOWED_HOSTS": "rdeploy.example.com",
        "DATABASE_URL": "postgres://rdeploy:secret@db.internal:5432/rdeploy",
        "REDIS_URL": "redis://:secret@redis.internal:6379/0",
        "RDEPLOY_DATA_DIR": str(tmp_path / "data"),
        **overrides,
    }


def test_check_deploy_is_clean_with_production_values(tmp_path: Path) -> None:
    done = check_deploy(production(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_deploy_is_clean_with_the_environment_compose_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_dir = tmp_path / "secrets"
    monkeypatch.setattr(compose_secrets, "SECRETS", secrets_dir)
    compose_secrets.main()
    env = {name: _with_defaults(str(value)) for name, value in _compose()["services"]["web"]["environment"].items()}
    assert env["DJANGO_HTTPS"] == "0"
    # The generated secrets, where compose mounts them; the data directory is a host path.
    env = {name: value.replace("/secrets/", f"{secrets_dir}/") for name, value in env.items()}
    env["RDEPLOY_DATA_DIR"] = str(tmp_path / "data")
    done = check_deploy(env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_plain_http_for_a_real_host_name_fails_check_deploy(tmp_path: Path) -> None:
    done = check_deploy(production(tmp_path, DJANGO_HTTPS="0"))
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr + done.stdout


def test_compose_publishes_the_plain_http_port_on_loopback_only() -> None:
    ports = [_with_defaults(port) for port in _compose()["services"]["web"]["ports"]]
    assert ports == ["127.0.0.1:8000:8000"]
    # Every other service is reached on compose's own network only.
    assert [name for name, spec in _compose()["services"].items() if spec.get("ports")] == ["web"]
