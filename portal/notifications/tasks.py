"""Celery tasks of notifications: thin, taking ids, safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from portal.notifications import retention, services


@shared_task(
    name="portal.deliver_notification_email",
    bind=True,
    soft_time_limit=60,
    time_limit=90,
    ignore_result=True,
    # Retries are counted on the delivery row (NOTIFICATION_EMAIL_MAX_ATTEMPTS); this only stops
    # Celery from refusing a retry the row still allows.
    max_retries=None,
)
def deliver_notification_email(self: Any, delivery_id: int) -> str:
    """Send one notification email; a second delivery of this task sends nothing."""
    outcome = services.deliver_email(delivery_id=delivery_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.state


@shared_task(name="portal.sweep_notification_emails", soft_time_limit=60, time_limit=90, ignore_result=True)
def sweep_notification_emails() -> dict[str, int]:
    """Re-send emails whose task was lost; fail the ones a dead worker left half-sent (beat, every minute)."""
    return services.sweep_emails()


@shared_task(name="portal.purge_old_notifications", soft_time_limit=300, time_limit=360, ignore_result=True)
def purge_old_notifications() -> dict[str, int]:
    """Delete notifications older than NOTIFICATION_RETENTION_DAYS (beat runs it hourly)."""
    return retention.purge_notifications()
