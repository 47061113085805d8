"""Ending a person's access at once: their sessions and their API tokens.

Sessions are found through the keys kept at login (UserSession), so ending them never scans every
session of the site; the session engine deletes each, whichever engine is configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.sessions.models import Session
from django.http import HttpRequest
from django.utils import timezone

from portal import tokens
from portal.access import AuthUser
from portal.models import UserSession


@dataclass(frozen=True)
class Ended:
    """How many sessions and API tokens were ended."""

    sessions: int
    tokens: int


def track_session(request: HttpRequest | None, user: AuthUser) -> None:
    """Remember the session key of a login (or of a session whose key was just cycled)."""
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if not key or not getattr(user, "pk", None):
        return
    UserSession.objects.update_or_create(session_key=key, defaults={"user": user})
    # Keys of sessions that ended meanwhile (logout, expiry, key cycled) are dropped here, so the
    # table stays as small as the number of live sessions.
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.db":
        live = Session.objects.filter(expire_date__gt=timezone.now()).values("session_key")
        UserSession.objects.filter(user=user).exclude(session_key__in=live).delete()


def on_login(sender: Any, request: HttpRequest | None, user: AuthUser, **_: Any) -> None:
    """The user_logged_in receiver: login() has given the session its new key by now."""
    track_session(request, user)


def end_sessions_and_tokens(user: AuthUser) -> Ended:
    """End every session and API token of this user now: their next request is anonymous.

    The one place that knows where sessions and tokens are kept, so that can change later.
    """
    engine = import_module(settings.SESSION_ENGINE)
    ended = 0
    for key in UserSession.objects.filter(user=user).values_list("session_key", flat=True):
        store = engine.SessionStore(session_key=key)
        if store.exists(key):
            store.delete(key)
            ended += 1
    UserSession.objects.filter(user=user).delete()
    # Token storage belongs to portal.tokens (django-rest-knox): it deletes whatever model is in use.
    return Ended(sessions=ended, tokens=tokens.revoke_all_tokens(user))
