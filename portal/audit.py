"""Writing audit events. Call inside the transaction of the change being recorded.

The table is append-only: on PostgreSQL a trigger refuses UPDATE and DELETE (migration 0002).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from typing import Any

from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from portal.access import User, tenants_for
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
    actor_label: str = "",
) -> AuditEvent:
    """Append one audit event. The detail must never hold secrets or PHI.

    `actor_label` names who acted when there is no signed-in user, e.g. the user name typed into
    a failed login.
    """
    user = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        actor=user,
        actor_label=(user.get_username() if user is not None else actor_label or "system")[:150],
        tenant=tenant,
        action=action,
        object_type=obj._meta.label if obj is not None else "",
        object_id=str(getattr(obj, "code", None) or getattr(obj, "pk", "") or "") if obj is not None else "",
        detail=detail or {},
        ip=client_ip(request),
        user_agent=(request.META.get("HTTP_USER_AGENT", "")[:300] if request is not None else ""),
    )


def home_tenant(user: User | None) -> Tenant | None:
    """The one hospital a hospital IT user belongs to, so their sign-ins show on its audit page."""
    if user is None or not user.is_authenticated or user.has_perm("portal.view_all_tenants"):
        return None
    tenants = list(tenants_for(user)[:2])
    return tenants[0] if len(tenants) == 1 else None


def filter_events(events: QuerySet[AuditEvent], filters: dict[str, Any]) -> QuerySet[AuditEvent]:
    """Apply the audit page's filters: an action or action prefix ("auth."), who, object, date range."""
    if "action" in filters:
        events = events.filter(action__startswith=filters["action"])
    if "actor" in filters:
        events = events.filter(actor_label__icontains=filters["actor"])
    if "object_id" in filters:
        events = events.filter(object_id=filters["object_id"])
    if "since" in filters:
        events = events.filter(created_at__date__gte=filters["since"])
    if "until" in filters:
        events = events.filter(created_at__date__lte=filters["until"])
    return events


CSV_COLUMNS = ("time_utc", "who", "tenant", "action", "object_type", "object_id", "ip", "user_agent", "detail")


def csv_rows(events: QuerySet[AuditEvent]) -> Iterator[list[str]]:
    """The export's header and rows, oldest first (written through ``portal.csvsafe``)."""
    yield list(CSV_COLUMNS)
    for event in events.select_related("tenant").order_by("created_at", "id").iterator(chunk_size=500):
        yield [
            event.created_at.astimezone(UTC).isoformat(),
            event.actor_label,
            event.tenant.name if event.tenant else "",
            event.action,
            event.object_type,
            event.object_id,
            event.ip or "",
            event.user_agent,
            json.dumps(event.detail, sort_keys=True),
        ]
