"""Where Celery's autodiscovery finds the app's tasks: each wing keeps its own, imported here."""

from __future__ import annotations

import logging

from celery import shared_task
from django.core.exceptions import PermissionDenied

from onboarding.engine import services as engine
from onboarding.engine.tasks import reap_stale_runs, resend_queued_runs, run_load_test_step, run_step
from onboarding.golive import services as golive
from onboarding.monitoring.tasks import dispatch_checks, dispatch_drift, purge_checks, run_check
from onboarding.steps.drift import run_drift

__all__ = [
    "dispatch_checks",
    "dispatch_drift",
    "open_go_live_windows",
    "purge_checks",
    "reap_stale_runs",
    "resend_queued_runs",
    "run_check",
    "run_drift",
    "run_load_test_step",
    "run_step",
]

logger = logging.getLogger(__name__)


# Go-live's one beat entry: it lives here, above both the engine and the go-live wing, because it
# joins them (the wing knows when a window opens, the engine creates runs).
@shared_task(name="onboarding.open_go_live_windows", soft_time_limit=50, time_limit=60)
def open_go_live_windows() -> int:
    """Create the go-live run of every go-live whose window has opened; the number started.

    Run by beat every GO_LIVE_BEAT_INTERVAL seconds. Safe to run twice: a schedule is started once
    (the engine refuses a second active run, and the schedule leaves "scheduled" when it starts).
    """
    started = 0
    for schedule in golive.due_schedules():
        onboarding = schedule.onboarding
        if golive.missed(schedule):
            golive.mark_refused(schedule, "The change window closed before the go-live could start.")
            continue
        user = schedule.requested_by
        if user is None or not user.is_active:
            golive.mark_refused(schedule, "The person who scheduled it can no longer start steps.")
            continue
        try:
            run = engine.start_step(user=user, onboarding=onboarding, step="go_live")
        except (engine.StepError, PermissionDenied) as exc:
            golive.mark_refused(schedule, str(exc))
            logger.warning("Go-live %s could not start: %s", schedule.code, exc)
            continue
        golive.mark_started(schedule, run)
        started += 1
    return started
