"""`python manage.py rdeploy_gc [--delete]`: cloud resources this installation tagged that
no live database row owns (leaks from crashes or manual edits), untagged log groups under
rdeploy's names that no live endpoint writes to (SageMaker or Lambda recreate a group for a
line written after teardown), and unused images past their grace period. Lists them; with
--delete, removes them (docs/sagemaker.md, "Garbage collection"). Also lists, never deletes,
endpoints stopped for longer than RDEPLOY_GC_STOPPED_AFTER_DAYS and images no endpoint uses,
with the monthly cost each still has (docs/cost.md)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from deployer.services.cloud_gc import cloud_orphans, cloud_orphans_delete
from deployer.services.forgotten import forgotten_report


class Command(BaseCommand):
    help = "List (or --delete) AWS resources tagged by this installation that no endpoint owns."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--delete", action="store_true", help="delete what is listed")

    def handle(self, *args: Any, delete: bool = False, **options: Any) -> None:
        # Listed only, never deleted: a stopped endpoint is its owner's to delete, and unused
        # images past their grace period are among the orphans below.
        for item in forgotten_report():
            self.stdout.write(
                f"Still costs {item.monthly.quantize(Decimal('0.01'))} {item.currency}/month: {item.kind} "
                f"{item.name} (since {item.since:%Y-%m-%d})"
            )
        orphans = cloud_orphans()
        for resource in orphans:
            owner = f" (endpoint {resource.endpoint})" if resource.endpoint else ""
            self.stdout.write(f"{resource.kind} {resource.identifier}{owner}")
        if not orphans:
            self.stdout.write("No orphaned resources.")
        elif delete:
            refused = cloud_orphans_delete(orphans)
            for refusal in refused:
                self.stdout.write(f"Left alone: {refusal.message}")
            self.stdout.write(f"Deleted {len(orphans) - len(refused)} orphaned resource(s).")
        else:
            self.stdout.write(f"{len(orphans)} orphaned resource(s); run with --delete to remove them.")
