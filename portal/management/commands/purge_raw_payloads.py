"""`manage.py purge_raw_payloads`: delete raw FHIR payloads older than the retention limit now."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import retention


class Command(BaseCommand):
    help = "Purge raw payloads older than RAW_PAYLOAD_RETENTION_DAYS (or --days) from every registered store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="Override RAW_PAYLOAD_RETENTION_DAYS.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be purged; change nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.RAW_PAYLOAD_RETENTION_DAYS
        if days < 1:
            raise CommandError("--days must be at least 1.")
        counts = retention.purge(days=days, dry_run=options["dry_run"])
        if not counts:
            self.stdout.write("No model stores raw payloads yet; nothing to purge.")
            return
        verb = "would purge" if options["dry_run"] else "purged"
        for label, count in counts.items():
            self.stdout.write(f"{label}: {verb} {count} row(s) older than {days} days")
