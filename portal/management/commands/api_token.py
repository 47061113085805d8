"""`manage.py api_token <user>`: issue an API token for a person (or revoke all of theirs), from a shell.

For operators setting up an API client without the token endpoint's two-factor exchange; the token
expires like any other (API_TOKEN_TTL) and the issue is audited.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import tokens


class Command(BaseCommand):
    help = "Print a new API token for USER (it expires after API_TOKEN_TTL), or --revoke-all of USER's tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--revoke-all", action="store_true", help="End every API token of the user instead.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}.")
        if options["revoke_all"]:
            count = tokens.revoke_all_tokens(user)
            self.stdout.write(f"Revoked {count} API token(s) of {user.get_username()}.")
            return
        if not user.is_active:
            raise CommandError(f"{user.get_username()} is deactivated: an API token would be refused.")
        token, key = tokens.issue_token(user=user)
        expires = token.expiry.isoformat() if token.expiry else "never"
        self.stdout.write(f"Token {tokens.token_id(token)} for {user.get_username()}, expires {expires}:")
        self.stdout.write(key)
