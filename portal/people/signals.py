"""Receivers of the people package: a Person code for every new user, session keys kept at login.

Connected once from PortalConfig.ready.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in
from django.db.models.signals import post_save

from portal.people.sessions import on_login


def connect() -> None:
    """Wire the receivers (idempotent thanks to the dispatch uids)."""
    user_logged_in.connect(on_login, dispatch_uid="portal.people.track_session")
    post_save.connect(on_user_saved, sender=get_user_model(), dispatch_uid="portal.people.person")


def on_user_saved(sender: Any, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    """Give every new user their opaque code at once, however the user was made."""
    if created and not raw:
        from portal.models import Person

        Person.objects.get_or_create(user=instance)
