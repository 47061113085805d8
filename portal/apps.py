"""App config: keeps the role groups in step with the code after every migrate, and wires audit signals
and the removal of a deactivated person's API tokens."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PortalConfig(AppConfig):
    name = "portal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from portal import signals, tokens
        from portal.people import signals as people_signals
        from portal.roles import sync_role_groups

        # After every app's migrate, so the permissions of later apps exist already.
        post_migrate.connect(sync_role_groups, dispatch_uid="portal.sync_role_groups")
        signals.connect()
        people_signals.connect()
        tokens.connect()
