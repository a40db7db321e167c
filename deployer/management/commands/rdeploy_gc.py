"""`python manage.py rdeploy_gc [--delete]`: cloud resources this installation tagged that
no live database row owns (leaks from crashes or manual edits), untagged log groups under
rdeploy's names that no live endpoint writes to (SageMaker or Lambda recreate a group for a
line written after teardown), and unused images past their grace period. Lists them; with
--delete, removes them (docs/sagemaker.md, "Garbage collection"). Also lists, never deletes,
endpoints stopped for longer than RDEPLOY_GC_STOPPED_AFTER_DAYS and images no endpoint uses,
with the monthly cost each still has (docs/cost.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from deployer.services.cloud_gc import cloud_orphans, cloud_orphans_delete, gc_report


class Command(BaseCommand):
    help = "List (or --delete) AWS resources tagged by this installation that no endpoint owns."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--delete", action="store_true", help="delete what is listed")

    def handle(self, *args: Any, delete: bool = False, **options: Any) -> None:
        orphans = cloud_orphans()
        for line in gc_report(orphans):
            self.stdout.write(line)
        if not orphans:
            return
        if delete:
            refused = cloud_orphans_delete(orphans)
            for refusal in refused:
                self.stdout.write(f"Left alone: {refusal.message}")
            self.stdout.write(f"Deleted {len(orphans) - len(refused)} orphaned resource(s).")
        else:
            self.stdout.write(f"{len(orphans)} orphaned resource(s); run with --delete to remove them.")
