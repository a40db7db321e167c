"""No Docker engine runs here, so the compose file and Dockerfile are checked by structure."""

from pathlib import Path

import yaml

BASE_DIR = Path(__file__).resolve().parents[2]


def test_compose_runs_web_worker_beat_redis_and_postgres() -> None:
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"web", "worker", "beat", "redis", "postgres"}
    assert "celery -A tasks worker" in services["worker"]["command"]
    assert "celery -A tasks beat" in services["beat"]["command"]
    assert "gunicorn config.wsgi" in services["web"]["command"]
    for name in ("web", "worker", "beat"):
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://")
        assert environment["REDIS_URL"] == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0"
        assert set(services[name]["depends_on"]) == {"postgres", "redis"}
    assert set(compose["volumes"]) == {"rdeploy-data", "postgres-data"}
    # Runtimes run user code beside the worker: the broker needs the password they lack.
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["healthcheck"]["test"])


def test_dockerfile_builds_from_the_repository_with_its_pinned_requirements() -> None:
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "USER rdeploy" in dockerfile
    assert (BASE_DIR / "requirements.txt").read_text().count("==") >= 10
