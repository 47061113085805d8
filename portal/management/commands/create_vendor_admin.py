"""`manage.py create_vendor_admin`: the very first vendor administrator of a new installation.

Everyone else is invited in the portal: the vendor administrator invites customer success and
engineers from the Staff page, and customer success invite hospital people. The password comes
from VENDOR_ADMIN_PASSWORD or is asked for twice; the second factor is set up at first login.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.people import selectors, services
from portal.roles import VENDOR_ADMINS

PASSWORD_VARIABLE = "VENDOR_ADMIN_PASSWORD"  # noqa: S105 - the name of a variable, not a password


class Command(BaseCommand):
    help = "Create the first vendor administrator (who then invites everyone else in the portal)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True, help="The administrator's user name.")
        parser.add_argument("--email", required=True, help="Their work email (invitations they send name them).")
        parser.add_argument("--first-name", default="", help="Optional.")
        parser.add_argument("--last-name", default="", help="Optional.")
        parser.add_argument(
            "--another",
            action="store_true",
            help="Create one although an active vendor administrator exists (e.g. the only one lost their phone).",
        )
        parser.add_argument(
            "--no-input", action="store_true", help=f"Never prompt: the password must be in {PASSWORD_VARIABLE}."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        existing = selectors.vendor_staff().filter(groups__name=VENDOR_ADMINS, is_active=True).first()
        if existing is not None and not options["another"]:
            raise CommandError(
                f"A vendor administrator exists already ({existing.get_username()}); they invite everyone else "
                "from the Staff page. Give --another to create one more anyway."
            )
        password = os.environ.get(PASSWORD_VARIABLE) or self._ask_password(no_input=options["no_input"])
        try:
            user = services.create_vendor_admin(
                username=options["username"],
                email=options["email"],
                password=password,
                first_name=options["first_name"],
                last_name=options["last_name"],
            )
        except services.PeopleError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Vendor administrator {user.get_username()} created. Log in at the portal: two-factor "
                "authentication is set up at the first login, then invite staff from the Staff page."
            )
        )

    def _ask_password(self, *, no_input: bool) -> str:
        if no_input:
            raise CommandError(f"Set {PASSWORD_VARIABLE} to the password, or leave out --no-input to type it.")
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandError("The two passwords differ. Run the command again.")
        return first
