"""Audit events for what happens outside our services: sign-in, sign-out, failures, lockouts, roles.

Connected once in PortalConfig.ready.
"""

from __future__ import annotations

import time
from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed
from django.http import HttpRequest

from portal import audit
from portal.middleware import LOGIN_AT, SEEN_AT


def connect() -> None:
    """Wire the handlers (idempotent thanks to the dispatch uids)."""
    user_logged_in.connect(on_login, dispatch_uid="portal.audit.login")
    user_logged_out.connect(on_logout, dispatch_uid="portal.audit.logout")
    user_login_failed.connect(on_login_failed, dispatch_uid="portal.audit.login_failed")
    user_locked_out.connect(on_locked_out, dispatch_uid="portal.audit.locked_out")
    m2m_changed.connect(on_groups_changed, sender=get_user_model().groups.through, dispatch_uid="portal.audit.groups")


def on_login(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    """Start the session's clocks and record the login."""
    if request is not None and hasattr(request, "session"):
        now = time.time()
        request.session[LOGIN_AT] = now
        request.session[SEEN_AT] = now
    audit.record(action="auth.login", actor=user, tenant=audit.home_tenant(user), obj=user, request=request)


def on_logout(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if user is None:
        return
    reason = getattr(request, "portal_logout_reason", "user")
    audit.record(
        action="auth.logout",
        actor=user,
        tenant=audit.home_tenant(user),
        obj=user,
        request=request,
        detail={"reason": reason},
    )


def on_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    """A wrong password (credentials arrive with the password already masked by Django)."""
    username = str(credentials.get("username", ""))[:150]
    known = get_user_model().objects.filter(username=username).first()
    audit.record(
        action="auth.login_failed",
        actor_label=username,
        tenant=audit.home_tenant(known),
        request=request,
        detail={"username": username, "locked_out": bool(getattr(request, "axes_locked_out", False))},
    )


def on_locked_out(sender: Any, request: HttpRequest | None, username: str | None, **_: Any) -> None:
    known = get_user_model().objects.filter(username=username or "").first()
    audit.record(
        action="auth.locked_out",
        actor_label=(username or "")[:150],
        tenant=audit.home_tenant(known),
        request=request,
        detail={"username": (username or "")[:150]},
    )


def on_groups_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **_: Any
) -> None:
    """Role changes made anywhere (the admin included), as role.group_add / role.group_remove."""
    if action not in {"post_add", "post_remove", "pre_clear"}:
        return
    User = get_user_model()
    if reverse:
        groups = [instance.name]
        users = list(User.objects.filter(pk__in=pk_set or ()).values_list("username", flat=True))
    else:
        users = [instance.get_username()]
        group_rows = Group.objects.filter(pk__in=pk_set) if pk_set else instance.groups.all()
        groups = list(group_rows.values_list("name", flat=True))
    if not groups or not users:
        return
    verb = "role.group_add" if action == "post_add" else "role.group_remove"
    audit.record(action=verb, detail={"users": users, "groups": groups})
