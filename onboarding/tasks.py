"""Celery tasks: thin interfaces that take an id, load the row and call the engine."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from onboarding import services


@shared_task(
    name="onboarding.run_step",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.STEP_SOFT_TIME_LIMIT,
    time_limit=settings.STEP_TIME_LIMIT,
    ignore_result=True,
)
def run_step(run_id: int) -> None:
    """Run one step attempt; safe to deliver twice (the claim lets only one through)."""
    services.execute_run(run_id)


@shared_task(name="onboarding.reap_stale_runs", soft_time_limit=60, time_limit=90, ignore_result=True)
def reap_stale_runs() -> int:
    """Fail runs whose worker stopped sending heartbeats."""
    return services.reap_stale_runs()


@shared_task(name="onboarding.resend_queued_runs", soft_time_limit=60, time_limit=90, ignore_result=True)
def resend_queued_runs() -> int:
    """Re-send runs left queued by a lost publish or a broker restart."""
    return services.resend_queued_runs()
