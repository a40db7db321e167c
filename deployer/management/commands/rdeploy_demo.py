"""`make run`'s demo: the bundled example model, live on the local target, with its URLs.

Trains examples/iris/train.R (deterministic), uploads it as the demo user through the
intake service, waits for the worker's inspection, creates the public endpoint
``iris-demo`` and waits until it is live; then prints the dashboard URL and curl lines.
Running it again reuses what exists. The demo key is kept in the data directory (mode
600, like the demo password) so every start can print a working curl line.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from deployer.models import Endpoint, ModelVersion
from deployer.services.endpoints import endpoint_create, endpoint_rotate_key
from deployer.services.model_intake import model_version_upload
from deployer.services.tokens import hash_secret
from deployer.services.users import demo_user_ensure

NAME = "iris-demo"
TRAIN_SCRIPT = Path(settings.BASE_DIR) / "examples" / "iris" / "train.R"


class Command(BaseCommand):
    help = "Deploy the example iris model as the demo user's public endpoint and print its URLs."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for inspection and rollout")

    def handle(self, *args: Any, **options: Any) -> None:
        user, _ = demo_user_ensure()
        deadline = time.monotonic() + options["timeout"]
        endpoint = Endpoint.objects.filter(name=NAME).exclude(status=Endpoint.Status.DELETED).first()
        if endpoint is None:
            model_version = self._upload(user)
            while model_version.status == ModelVersion.Status.INSPECTING:
                self._wait(deadline, "the worker to inspect the example model")
                model_version.refresh_from_db()
            if model_version.status != ModelVersion.Status.READY:
                raise CommandError(f"The example model is {model_version.status}: {model_version.status_reason}")
            issued = endpoint_create(owner=user, name=NAME, model_version=model_version, public=True)
            endpoint = issued.endpoint
            self._key_file().write_text(issued.api_key or "")
            self._key_file().chmod(0o600)
        while endpoint.status not in (Endpoint.Status.LIVE, Endpoint.Status.FAILED):
            self._wait(deadline, f"{NAME} to go live")
            endpoint.refresh_from_db()
        if endpoint.status == Endpoint.Status.FAILED:
            raise CommandError(f"{NAME} failed: {endpoint.error}")
        key = self._key(endpoint)
        sample = "Sepal.Length,Sepal.Width,Petal.Length,Petal.Width\\n5.1,3.5,1.4,0.2\\n6.3,3.3,6,2.5\\n"
        page = settings.PUBLIC_BASE_URL + reverse("webui:endpoint_detail", args=[NAME])
        self.stdout.write(
            f"Example endpoint {NAME} is live: {page}\n"
            f"  curl -s -X POST {endpoint.public_url} -H 'x-api-key: {key}' "
            f"-H 'Content-Type: text/csv' --data-binary $'{sample}'\n"
        )

    def _upload(self, user: Any) -> ModelVersion:
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory)
            subprocess.run([settings.RSCRIPT, "--vanilla", str(TRAIN_SCRIPT), str(out)], check=True)
            model = SimpleUploadedFile("iris-rf.rds", (out / "iris-rf.rds").read_bytes())
            sample = SimpleUploadedFile("sample.csv", (out / "sample.csv").read_bytes(), "text/csv")
            return model_version_upload(owner=user, name=NAME, file=model, sample=sample).model_version

    def _key_file(self) -> Path:
        return Path(settings.DATA_DIR) / "demo_api_key"

    def _key(self, endpoint: Endpoint) -> str:
        """The demo key from the data directory, rotated if it no longer matches."""
        path = self._key_file()
        key = path.read_text().strip() if path.exists() else ""
        if not key or hash_secret(key) != endpoint.api_key_hash:
            key = endpoint_rotate_key(endpoint=endpoint)
            path.write_text(key)
            path.chmod(0o600)
        return key

    def _wait(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise CommandError(f"Timed out waiting for {what}; is the Celery worker running?")
        time.sleep(0.2)
