"""Retention of notifications: inbox items and email records older than NOTIFICATION_RETENTION_DAYS go.

Not PHI (notifications never hold any), so this is housekeeping, not the PHI purge of
portal/retention.py; it still writes one audit event with the counts, like that purge.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal import audit
from portal.notifications.models import EmailDelivery, Notification


def purge_notifications(*, days: int | None = None, now: datetime | None = None, batch: int = 1000) -> dict[str, int]:
    """Delete notifications (and their email records) and address-only emails older than `days`."""
    days = settings.NOTIFICATION_RETENTION_DAYS if days is None else days
    cutoff = (now or timezone.now()) - timedelta(days=days)
    counts = {"notifications": 0, "emails": 0}
    with transaction.atomic():
        while ids := list(Notification.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:batch]):
            _total, per_model = Notification.objects.filter(pk__in=ids).delete()
            counts["notifications"] += per_model.get(Notification._meta.label, 0)
            counts["emails"] += per_model.get(EmailDelivery._meta.label, 0)
        # Invitations' emails have no notification to go with; a pending one this old is moot too.
        orphans = EmailDelivery.objects.filter(notification__isnull=True, created_at__lt=cutoff)
        counts["emails"] += orphans.delete()[1].get(EmailDelivery._meta.label, 0)
        if counts["notifications"] or counts["emails"]:
            audit.record(
                action="notification.purge",
                detail={"older_than_days": days, "cutoff": cutoff.isoformat(), "purged": counts},
            )
    return counts
