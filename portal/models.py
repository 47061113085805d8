"""Tenants (hospitals) and the audit log."""

from __future__ import annotations

import uuid
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


def validate_timezone(value: str) -> None:
    """Accept only IANA zone names, because change windows are computed in the hospital's zone."""
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"“{value}” is not a time zone name. Use a name such as America/Chicago.")


class Tenant(models.Model):
    """A customer hospital or health system; everything else hangs off one."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200, unique=True)
    timezone = models.CharField(max_length=64, default="America/New_York", validators=[validate_timezone])
    contact_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        permissions = [
            ("view_all_tenants", "Can see every tenant (vendor staff)"),
            ("access_tenant", "Can see this tenant's onboarding"),
            ("approve_gates", "Can approve this tenant's gated steps (hospital IT)"),
            ("view_audit", "Can read this tenant's audit trail and export it"),
        ]

    def __str__(self) -> str:
        return self.name


class AuditEvent(models.Model):
    """Who did what to which object, when and from where. Written with the change it records."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too, so the trail still says who after a user is deleted.
    actor_label = models.CharField(max_length=150, blank=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label or 'system'} {self.action}"


# The notifications' models belong to this app; importing them here is how Django finds them.
from portal.notifications.models import (  # noqa: E402
    EmailDelivery,
    Notification,
    NotificationKind,
    NotificationPreference,
)

__all__ = ["AuditEvent", "EmailDelivery", "Notification", "NotificationKind", "NotificationPreference", "Tenant"]
