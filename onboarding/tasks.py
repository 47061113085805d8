"""Where Celery's autodiscovery finds the app's tasks: each wing keeps its own, imported here."""

from __future__ import annotations

from onboarding.engine.tasks import reap_stale_runs, resend_queued_runs, run_load_test_step, run_step

__all__ = ["reap_stale_runs", "resend_queued_runs", "run_load_test_step", "run_step"]
