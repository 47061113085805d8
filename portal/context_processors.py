"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from portal.roles import is_vendor_staff, role_label


def roles(request: HttpRequest) -> dict[str, Any]:
    """The user's role name and whether vendor-only navigation shows."""
    user = request.user
    return {"role_label": role_label(user), "is_vendor_staff": is_vendor_staff(user)}
