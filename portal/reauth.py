"""Re-authentication before raw PHI is shown.

A session left open on a shared workstation must not be enough to read a patient's record: a view
that shows raw payloads is wrapped in `require_recent_auth`, which sends the person to type their
password (and second factor, if they have one) again unless they did within REAUTH_MAX_AGE
seconds. The view still writes its own `phi.view` audit event for what it showed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from portal.middleware import send_to

REAUTH_AT = "portal_reauth_at"

View = Callable[..., HttpResponseBase]


def recently_authenticated(request: HttpRequest) -> bool:
    """Whether the person proved who they are within REAUTH_MAX_AGE seconds."""
    at = request.session.get(REAUTH_AT) if hasattr(request, "session") else None
    return at is not None and time.time() - float(at) <= settings.REAUTH_MAX_AGE


def mark_reauthenticated(request: HttpRequest) -> None:
    request.session[REAUTH_AT] = time.time()


def require_recent_auth(view: View) -> View:
    """Decorate a view that shows raw PHI; put it under @login_required."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not recently_authenticated(request):
            return send_to(request, "reauthenticate", message="Confirm your password to see raw patient data.")
        return view(request, *args, **kwargs)

    return wrapped
