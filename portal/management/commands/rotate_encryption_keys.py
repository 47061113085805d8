"""`manage.py rotate_encryption_keys`: re-encrypt every stored secret under the newest key.

Rotation: put a new Fernet key first in FIELD_ENCRYPTION_KEYS and keep the old ones after it,
deploy, run this command, then drop the old keys. Every EncryptedTextField of every model is found
by itself, so a secret column added later is rotated too.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import keyrotation


class Command(BaseCommand):
    help = "Re-encrypt every secret at rest under the first key of FIELD_ENCRYPTION_KEYS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check", action="store_true", help="Only check that every stored secret decrypts; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = keyrotation.rotate_all(check_only=options["check"])
        for column in report.columns:
            verb = "decrypt" if options["check"] else "re-encrypted under the newest key"
            self.stdout.write(f"{column.label}: {column.done} value(s) {verb}, {len(column.failed)} failed")
        if report.failed:
            ids = "; ".join(f"{c.label} rows {', '.join(c.failed[:20])}" for c in report.columns if c.failed)
            raise CommandError(
                f"{report.failed} stored value(s) cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS "
                f"({ids}). Add back the key they were written with, then run this again."
            )
