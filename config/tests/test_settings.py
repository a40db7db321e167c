import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import Env, ImproperlyConfiguredEnv

BASE_DIR = Path(__file__).resolve().parents[2]


def test_booleans_accept_the_usual_spellings() -> None:
    env = Env({"A": "yes", "B": "0", "C": " TRUE "})
    assert env.flag("A", False) is True
    assert env.flag("B", True) is False
    assert env.flag("C", False) is True
    assert env.flag("MISSING", True) is True


def test_a_typo_in_a_boolean_fails_loudly_naming_the_variable() -> None:
    with pytest.raises(ImproperlyConfiguredEnv, match="DJANGO_DEBUG='ture' is not a boolean"):
        Env({"DJANGO_DEBUG": "ture"}).flag("DJANGO_DEBUG", False)


def test_integers_are_parsed_and_checked_against_their_minimum() -> None:
    assert Env({"N": "1_000"}).integer("N", 5) == 1000
    with pytest.raises(ImproperlyConfiguredEnv, match="N='lots' is not an integer"):
        Env({"N": "lots"}).integer("N", 5)
    with pytest.raises(ImproperlyConfiguredEnv, match="below the minimum of 1"):
        Env({"N": "0"}).integer("N", 5, minimum=1)


def test_urls_must_use_an_allowed_scheme() -> None:
    assert Env({}).url("REDIS_URL", "redis://h:1/0", schemes=("redis",)) == "redis://h:1/0"
    with pytest.raises(ImproperlyConfiguredEnv, match="must be a URL starting with one of: redis://"):
        Env({"REDIS_URL": "localhost:6379"}).url("REDIS_URL", "", schemes=("redis",))


def test_choices_and_lists() -> None:
    with pytest.raises(ImproperlyConfiguredEnv, match="must be one of: filesystem, s3"):
        Env({"S": "ftp"}).choice("S", "filesystem", choices=("filesystem", "s3"))
    assert Env({"H": "a.example, b.example,,"}).items("H", []) == ["a.example", "b.example"]


def test_secrets_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("s3cret\n")
    assert Env({"KEY_FILE": str(secret_file)}).optional_text("KEY") == "s3cret"
    with pytest.raises(ImproperlyConfiguredEnv, match=r"KEY_FILE=.* cannot be read"):
        Env({"KEY_FILE": str(tmp_path / "missing")}).optional_text("KEY")


def _load_settings(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RDEPLOY_", "DATABASE_URL"))}
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "-c", "import config.settings"], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = _load_settings(DJANGO_DEBUG="0", RDEPLOY_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set" in result.stderr


def test_production_refuses_a_weak_secret_key(tmp_path: Path) -> None:
    result = _load_settings(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="changeme", RDEPLOY_DATA_DIR=str(tmp_path))
    assert "DJANGO_SECRET_KEY is too weak" in result.stderr


def test_a_bad_value_stops_start_up(tmp_path: Path) -> None:
    result = _load_settings(DJANGO_DEBUG="maybe", RDEPLOY_DATA_DIR=str(tmp_path))
    assert "DJANGO_DEBUG='maybe' is not a boolean" in result.stderr


@pytest.mark.parametrize("installation", ["prod-eu", "Prod", "", "x" * 33])
def test_an_installation_id_that_names_could_read_two_ways_stops_start_up(tmp_path: Path, installation: str) -> None:
    result = _load_settings(DJANGO_DEBUG="1", RDEPLOY_DATA_DIR=str(tmp_path), RDEPLOY_INSTALLATION_ID=installation)
    assert result.returncode != 0
    assert "must be 1-32 lowercase letters and digits" in result.stderr


def test_deploy_checks_are_clean_with_production_values(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RDEPLOY_", "DATABASE_URL"))}
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="x7Pq2-" * 10,
        DJANGO_ALLOWED_HOSTS="rdeploy.example.com",
        DJANGO_SECURE_HSTS_PRELOAD="1",
        RDEPLOY_DATA_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout
