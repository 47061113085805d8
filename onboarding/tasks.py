"""Where Celery's autodiscovery finds the app's tasks: each wing keeps its own, imported here."""

from __future__ import annotations

from onboarding.engine.tasks import reap_stale_runs, resend_queued_runs, run_load_test_step, run_step
from onboarding.monitoring.tasks import dispatch_checks, dispatch_drift, purge_checks, run_check
from onboarding.steps.drift import run_drift

__all__ = [
    "dispatch_checks",
    "dispatch_drift",
    "purge_checks",
    "reap_stale_runs",
    "resend_queued_runs",
    "run_check",
    "run_drift",
    "run_load_test_step",
    "run_step",
]
