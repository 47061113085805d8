"""Writing audit events. Call inside the transaction of the change being recorded."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.http import HttpRequest

from portal.access import User
from portal.models import AuditEvent, Tenant


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address; behind a proxy, REMOTE_ADDR must be set by the proxy layer."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(
    *,
    action: str,
    actor: User | None = None,
    tenant: Tenant | None = None,
    obj: models.Model | None = None,
    request: HttpRequest | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event. The detail must never hold secrets or PHI."""
    user = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        actor=user,
        actor_label=user.get_username() if user is not None else "system",
        tenant=tenant,
        action=action,
        object_type=obj._meta.label if obj is not None else "",
        object_id=str(getattr(obj, "code", None) or getattr(obj, "pk", "") or "") if obj is not None else "",
        detail=detail or {},
        ip=client_ip(request),
        user_agent=(request.META.get("HTTP_USER_AGENT", "")[:300] if request is not None else ""),
    )
