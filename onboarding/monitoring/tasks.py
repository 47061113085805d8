"""Monitoring's Celery tasks: thin interfaces over onboarding.monitoring.services and drift.

`dispatch_checks` is the one beat entry for every live connection's health checks: it claims the
checks that are due and sends each to the `monitoring` queue, where `run_check` runs it. The drift
check itself (`onboarding.monitoring.run_drift`) is registered by onboarding.steps.drift, which
holds the validate step's code it needs.
"""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.conf import settings

from onboarding.monitoring import drift, services


@shared_task(name="onboarding.monitoring.dispatch_checks", soft_time_limit=30, time_limit=45, ignore_result=True)
def dispatch_checks() -> int:
    """Claim the due checks and queue one run_check per check; returns how many were sent."""
    services.ensure_monitors()
    due = services.claim_due()
    for monitor_id, due_at in due:
        run_check.apply_async(args=(monitor_id, due_at.isoformat()))
    return len(due)


@shared_task(
    name="onboarding.monitoring.run_check",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.MONITORING_CHECK_SOFT_TIME_LIMIT,
    time_limit=settings.MONITORING_CHECK_TIME_LIMIT,
    ignore_result=True,
)
def run_check(monitor_id: int, due_at: str) -> None:
    """Run one claimed health check; a second delivery records nothing (one check per due time)."""
    services.check_monitor(monitor_id, datetime.fromisoformat(due_at))


@shared_task(name="onboarding.monitoring.dispatch_drift", soft_time_limit=60, time_limit=90, ignore_result=True)
def dispatch_drift() -> int:
    """End the drift runs that lost their worker, then start the scheduled checks that are due."""
    drift.reap_lost_drift()
    return len(drift.claim_due_drift())


@shared_task(name="onboarding.monitoring.purge_checks", soft_time_limit=300, time_limit=360, ignore_result=True)
def purge_checks() -> int:
    """Delete health checks past the retention period."""
    return services.purge_old_checks().checks
