"""`docker compose up` cannot run here (its images come from Docker Hub, unreachable), so
the compose file and Dockerfile are checked by structure; scripts/compose_secrets.py runs."""

import re
import stat
from pathlib import Path

import yaml

from scripts import compose_secrets

BASE_DIR = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def test_compose_runs_secrets_web_worker_beat_redis_and_postgres() -> None:
    services = _compose()["services"]
    assert set(services) == {"secrets", "web", "worker", "beat", "redis", "postgres"}
    assert "celery -A tasks worker" in services["worker"]["command"]
    assert "celery -A tasks beat" in services["beat"]["command"]
    assert "gunicorn config.wsgi" in services["web"]["command"]
    for name in ("web", "worker", "beat"):
        environment = services[name]["environment"]
        # Every secret comes from a generated file, none from the compose file itself.
        assert environment["DATABASE_URL_FILE"] == "/secrets/database_url"
        assert environment["REDIS_URL_FILE"] == "/secrets/redis_url"
        assert environment["DJANGO_SECRET_KEY_FILE"] == "/secrets/django_secret_key"
        assert not any("PASSWORD" in key or key == "SECRET_KEY" for key in environment)
        assert services[name]["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}
        assert set(services[name]["depends_on"]) == {"secrets", "postgres", "redis"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert "/secrets/redis_password" in " ".join(services["redis"]["command"])
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["healthcheck"]["test"])


def test_compose_web_processes_have_as_many_threads_as_make_runs() -> None:
    # The gateway's default bounds are sized against these threads (config/settings.py,
    # GATEWAY_MAX_INFLIGHT): one number for both ways of running rdeploy.
    threads = re.findall(r"--threads (\d+)", _compose()["services"]["web"]["command"])
    assert threads == re.findall(r"--threads (\d+)", (BASE_DIR / "scripts" / "run.sh").read_text())
    assert len(threads) == 1


def test_only_the_worker_reaches_the_container_engine() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        mounts = " ".join(service.get("volumes", []))
        assert ("docker.sock" in mounts) == (name == "worker"), name
    assert services["worker"]["environment"]["RDEPLOY_CONTAINER_CLI"] == "docker"
    # Bind mounts are resolved on the host: the data directory has the same path on both sides.
    data = services["worker"]["environment"]["RDEPLOY_DATA_DIR"]
    assert f"{data}:{data}" in services["worker"]["volumes"]
    assert f"{data}:{data}" in services["web"]["volumes"]


def test_compose_secrets_are_generated_once_and_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(compose_secrets, "SECRETS", tmp_path)
    compose_secrets.main()
    first = {path.name: path.read_text() for path in tmp_path.iterdir()}
    compose_secrets.main()
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == first
    password = first["postgres_password"].strip()
    assert len(password) >= 32
    assert f":{password}@postgres:5432/" in first["database_url"]
    assert first["redis_password"].strip() in first["redis_url"]
    assert stat.S_IMODE((tmp_path / "database_url").stat().st_mode) == 0o644
    other = tmp_path / "other"
    monkeypatch.setattr(compose_secrets, "SECRETS", other)
    compose_secrets.main()
    assert (other / "postgres_password").read_text() != first["postgres_password"]


def test_dockerfile_builds_from_the_repository_with_its_pinned_requirements() -> None:
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "USER rdeploy" in dockerfile
    # Model code never runs in the app's image: it has no R.
    assert "r-base" not in dockerfile
    assert (BASE_DIR / "requirements.txt").read_text().count("==") >= 10
