from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployer.models import ModelVersion
from deployer.services.model_intake import model_version_reinspect


class Command(BaseCommand):
    help = (
        "Inspect model versions again (by id, or every invalid one), e.g. after setting RDEPLOY_CRAN_REPO "
        "or building a new base image. A running worker picks them up."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", type=int, help="model version ids")
        parser.add_argument("--invalid", action="store_true", help="every invalid version")

    def handle(self, *args: Any, ids: list[int], invalid: bool, **options: Any) -> None:
        if not ids and not invalid:
            raise CommandError("Name model version ids, or pass --invalid.")
        versions = ModelVersion.objects.filter(pk__in=ids) if ids else ModelVersion.objects.none()
        if invalid:
            versions = versions | ModelVersion.objects.filter(status=ModelVersion.Status.INVALID)
        missing = set(ids) - set(versions.values_list("pk", flat=True))
        if missing:
            raise CommandError(f"No model versions with ids {sorted(missing)}.")
        for version in versions:
            queued = model_version_reinspect(model_version=version)
            self.stdout.write(f"{version} (id {version.pk}): {'queued' if queued else 'already inspecting'}")
