"""Celery tasks of the portal core: thin, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from portal import retention


@shared_task(name="portal.purge_raw_payloads", soft_time_limit=300, time_limit=360, ignore_result=True)
def purge_raw_payloads() -> int:
    """Delete raw payloads older than RAW_PAYLOAD_RETENTION_DAYS (beat runs it hourly)."""
    return sum(retention.purge().values())


# The notifications' tasks live in their sub-package; importing them here registers them with the
# worker (Celery's autodiscovery looks only at portal.tasks).
from portal.notifications.tasks import (  # noqa: E402
    deliver_notification_email,
    purge_old_notifications,
    sweep_notification_emails,
)

__all__ = ["deliver_notification_email", "purge_old_notifications", "purge_raw_payloads", "sweep_notification_emails"]
