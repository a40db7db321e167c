"""Generates compose's secrets once into /secrets (a volume only rdeploy's own services
mount): Django's secret key, the Redis and PostgreSQL passwords, and the URLs holding them.
Runs as compose's `secrets` service before everything else; an existing file is kept, so
restarts and upgrades keep their passwords."""

import os
import secrets
from pathlib import Path

SECRETS = Path(os.environ.get("RDEPLOY_SECRETS_DIR", "/secrets"))


def keep_or_create(name: str, value: str) -> str:
    path = SECRETS / name
    if not path.exists():
        # Readable by the services that mount the volume (postgres, redis and the app run as
        # different uids); nothing else mounts it, and endpoint containers never do.
        path.write_text(value + "\n")
        path.chmod(0o644)
    return path.read_text().strip()


def main() -> None:
    SECRETS.mkdir(parents=True, exist_ok=True)
    keep_or_create("django_secret_key", secrets.token_urlsafe(50))
    redis_password = keep_or_create("redis_password", secrets.token_hex(24))
    postgres_password = keep_or_create("postgres_password", secrets.token_hex(24))
    keep_or_create("redis_url", f"redis://:{redis_password}@redis:6379/0")
    keep_or_create("database_url", f"postgres://rdeploy:{postgres_password}@postgres:5432/rdeploy")


if __name__ == "__main__":
    main()
