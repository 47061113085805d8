"""A live connection as a fixture: the LiveState a cutover writes, without running the go-live step.

For tests of what comes after go-live (monitoring's rules, pages, the route matrix), where the
cutover itself is not under test. The go-live step's own cutover is tested in tests/test_golive.py,
and tests/test_monitoring_worker.py takes its connection live through it on the worker.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from onboarding.live.models import LivePhase, LiveStage, LiveState
from onboarding.models import Onboarding, RunStatus, StepRun


def make_live(
    onboarding: Onboarding,
    *,
    stage: str = LiveStage.FULL,
    pilot_percent: int = 0,
    probe_patient_id: str = "",
    baseline_run: StepRun | None = None,
    hypercare_contacts: list[dict[str, Any]] | None = None,
    live_since: datetime | None = None,
    hypercare_days: int = 30,
) -> LiveState:
    """Write the onboarding's live state as a cutover would; the baseline defaults to its latest passed
    validation run."""
    now = live_since or timezone.now()
    if baseline_run is None:
        baseline_run = (
            StepRun.objects.filter(onboarding=onboarding, step="validate", status=RunStatus.PASSED)
            .order_by("-attempt")
            .first()
        )
    connection = onboarding.connection
    live, _ = LiveState.objects.update_or_create(
        onboarding=onboarding,
        defaults={
            "tenant": onboarding.tenant,
            "stage": stage,
            "pilot_percent": pilot_percent if stage == LiveStage.PILOT else 0,
            "live_since": now,
            "phase": LivePhase.HYPERCARE,
            "hypercare_until": now + timedelta(days=hypercare_days),
            "baseline_run": baseline_run,
            "probe_patient_id": probe_patient_id,
            "hypercare_contacts": hypercare_contacts or [],
            "before_cutover": {"environment": connection.environment},
        },
    )
    return live
