"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from portal import twofactor
from portal.notifications.selectors import unread_count
from portal.roles import is_vendor_staff, role_label


def roles(request: HttpRequest) -> dict[str, Any]:
    """The user's role name, whether vendor-only navigation shows, and whether the second factor is still due."""
    user = request.user
    pending = user.is_authenticated and not twofactor.is_verified(user) and twofactor.requires_two_factor(user)
    return {"role_label": role_label(user), "is_vendor_staff": is_vendor_staff(user), "second_factor_pending": pending}


def inbox(request: HttpRequest) -> dict[str, Any]:
    """The signed-in person's unread notification count, for the header's inbox link (one COUNT query)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"inbox_unread": unread_count(user)}
