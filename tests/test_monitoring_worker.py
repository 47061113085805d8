"""Done-when 2 of issue 12: a real Celery worker and a real beat process watch a live sandbox connection.

The connection goes live through the go-live step on the worker. The session worker
(tests/conftest.py) consumes the `monitoring` queue with checks 2 s apart; this
module starts `celery beat` beside it with a 1 s tick. The sandbox's 5xx fault switched on opens
exactly one alert and one "opened" notification, switched off exactly one "resolved"; inside a
declared maintenance window the same fault opens no alert.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from onboarding.golive import services as golive
from onboarding.live.models import LiveStage, LiveState, MaintenanceKind, MaintenanceWindow
from onboarding.models import FINAL_STATUSES, RunStatus, StepRun
from onboarding.monitoring import policy
from onboarding.monitoring.models import Alert, HealthCheck, Monitor
from portal.models import StaffAssignment
from portal.notifications.models import Notification
from tests.faults.harness import CeleryProcess, beat_args, wait_until
from tests.golive_helpers import approve_go_live, evening_windows, ready_to_go_live

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def beat(celery_worker_process: Any, tmp_path: Path) -> Iterator[CeleryProcess]:
    """`celery beat` on the test broker, handing out due checks every second."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        MONITORING_TICK_SECONDS="1",
        GO_LIVE_BEAT_INTERVAL="1",
    )
    process = CeleryProcess(beat_args(tmp_path), env, tmp_path / "beat.log").start(ready_marker="Starting")
    yield process
    process.stop()


def checks(live: Any, **filters: Any) -> int:
    return HealthCheck.objects.filter(onboarding_id=live.onboarding_id, **filters).count()


def wait_for_checks(live: Any, more: int, **filters: Any) -> None:
    """Wait until `more` further checks matching the filters were recorded by the worker."""
    target = checks(live, **filters) + more
    wait_until(lambda: checks(live, **filters) >= target, 120, f"{more} more checks {filters}", interval=0.2)


def opened_and_resolved() -> tuple[int, int]:
    rows = Notification.objects.filter(key__startswith="alert:")
    return rows.filter(kind="alert_opened").count(), rows.filter(kind="alert_resolved").count()


def test_a_5xx_outage_notifies_once_when_it_opens_and_once_when_it_resolves(
    beat: CeleryProcess, sandboxes: dict[str, Any], clean_faults: None, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    hospital = sandboxes["generic"]
    StaffAssignment.objects.create(tenant=tenant_a, user=cs_user)
    current = policy.policy_for(tenant_a)
    current.failures_to_alert = 2
    current.save()
    # Taken live the way customer success do: the approved plan, then the go-live itself, which beat
    # starts and the worker runs (pre-flight, cutover, first checks). The override starts it now
    # rather than at the next change window, so the test does not depend on the time of day.
    onboarding = ready_to_go_live(tenant_a, cs_user, it_a, hospital)
    evening_windows(tenant_a, cs_user)
    approve_go_live(cs_user, it_a, onboarding)
    golive.schedule_go_live(user=cs_user, onboarding=onboarding, override_reason="Monitoring test: go live now.")
    wait_until(
        lambda: StepRun.objects.filter(onboarding=onboarding, step="go_live", status__in=FINAL_STATUSES).exists(),
        120,
        "the go-live step to finish",
    )
    go_live = StepRun.objects.get(onboarding=onboarding, step="go_live")
    assert go_live.status == RunStatus.PASSED, (go_live.error_kind, go_live.error_message)
    live = LiveState.objects.get(onboarding=onboarding, stage=LiveStage.FULL)

    wait_for_checks(live, 2, ok=True)
    assert Monitor.objects.get(onboarding_id=live.onboarding_id).interval_s == 2

    hospital.set_faults(rate_5xx=1.0)
    wait_until(lambda: Alert.objects.filter(resolved_at__isnull=True).exists(), 120, "the alert to open")
    wait_for_checks(live, 3, ok=False)  # the outage goes on: more failed checks, no more notifications
    assert opened_and_resolved() == (1, 0)
    (alert,) = Alert.objects.all()
    assert alert.kind == "checks_failing" and "server_error" in alert.detail

    hospital.set_faults()
    wait_until(lambda: Alert.objects.filter(resolved_at__isnull=False).exists(), 120, "the alert to resolve")
    wait_for_checks(live, 3, ok=True)
    assert opened_and_resolved() == (1, 1)
    assert Alert.objects.count() == 1
    # Every check ran once per due time, however the beat's ticks and the worker's deliveries fell.
    due_times = list(HealthCheck.objects.filter(onboarding_id=live.onboarding_id).values_list("due_at", flat=True))
    assert len(due_times) == len(set(due_times))

    unplanned = checks(live, ok=False, planned=False)
    now = timezone.now()
    MaintenanceWindow.objects.create(
        tenant=tenant_a,
        kind=MaintenanceKind.ONCE,
        starts_at=now - timedelta(minutes=5),
        ends_at=now + timedelta(hours=1),
    )
    hospital.set_faults(rate_5xx=1.0)
    wait_for_checks(live, 4, ok=False, planned=True)
    hospital.set_faults()
    wait_for_checks(live, 1, ok=True)
    assert checks(live, ok=False, planned=False) == unplanned  # every failure since was planned downtime
    assert Alert.objects.count() == 1
    assert opened_and_resolved() == (1, 1)
