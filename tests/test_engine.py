"""The engine's legal moves: start, claim, progress, finish, cancel, reap and sweep."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from onboarding import services
from onboarding.models import RunStatus, StepRun
from onboarding.steps.base import StepOutcome
from portal.models import AuditEvent
from tests.factories import ConnectionFactory


@pytest.fixture
def onboarding(tenant_a: Any) -> Any:
    return services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))


def _sent_run_ids(callbacks: list[Any], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr(services, "send_run", lambda run_id: sent.append(run_id) or True)
    for callback in callbacks:
        callback()
    return sent


def test_start_queues_an_attempt_and_sends_after_commit(
    onboarding: Any, cs_user: Any, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert run.status == RunStatus.QUEUED
    assert run.attempt == 1
    assert _sent_run_ids(callbacks, monkeypatch) == [run.pk]
    event = AuditEvent.objects.get(action="step.start")
    assert event.actor == cs_user
    assert event.tenant == onboarding.tenant


def test_rolled_back_start_sends_nothing(
    onboarding: Any, cs_user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.db import transaction

    with django_capture_on_commit_callbacks() as callbacks:
        try:
            with transaction.atomic():
                services.start_step(user=cs_user, onboarding=onboarding, step="configure")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
    assert callbacks == []
    assert not StepRun.objects.exists()


def test_a_second_start_while_active_is_refused(onboarding: Any, cs_user: Any) -> None:
    services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    with pytest.raises(services.StepAlreadyActive):
        services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert StepRun.objects.count() == 1


@pytest.mark.parametrize("step", ["map", "validate", "load_test", "go_live"])
def test_unbuilt_steps_cannot_start(onboarding: Any, cs_user: Any, step: str) -> None:
    with pytest.raises(services.StepNotAvailable, match="not available yet"):
        services.start_step(user=cs_user, onboarding=onboarding, step=step)
    assert not StepRun.objects.exists()


def test_test_step_needs_a_passed_configure(onboarding: Any, cs_user: Any) -> None:
    with pytest.raises(services.StepBlocked, match="Configure must pass"):
        services.start_step(user=cs_user, onboarding=onboarding, step="test")
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert services.claim_run(run.pk)
    services.finish_run(run.pk, StepOutcome(passed=True))
    assert services.start_step(user=cs_user, onboarding=onboarding, step="test").attempt == 1


def test_hospital_it_may_not_start_steps(onboarding: Any, it_a: Any) -> None:
    with pytest.raises(PermissionDenied):
        services.start_step(user=it_a, onboarding=onboarding, step="configure")


def test_only_one_delivery_claims_a_run(onboarding: Any, cs_user: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert services.claim_run(run.pk) is True
    assert services.claim_run(run.pk) is False
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert run.deliveries == 1


def test_attempts_are_numbered_and_kept(onboarding: Any, cs_user: Any) -> None:
    for expected in (1, 2, 3):
        run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
        assert run.attempt == expected
        services.claim_run(run.pk)
        services.finish_run(run.pk, StepOutcome(passed=False, error_kind="unsupported", error_message="no"))
    assert list(StepRun.objects.order_by("attempt").values_list("status", flat=True)) == ["failed"] * 3


def test_finish_does_not_overwrite_a_cancel(onboarding: Any, cs_user: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    services.cancel_run(user=cs_user, run=run)
    assert services.finish_run(run.pk, StepOutcome(passed=True)) is False
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_progress_after_cancel_stops_the_step(onboarding: Any, cs_user: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    services.report_progress(run.pk, 1, 2, "half", [{"message": "one"}])
    services.cancel_run(user=cs_user, run=run)
    with pytest.raises(services.RunCancelled):
        services.report_progress(run.pk, 2, 2, "done", [])
    run.refresh_from_db()
    assert run.log == [{"message": "one"}]


def test_cancel_of_a_finished_run_is_refused(onboarding: Any, cs_user: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    services.finish_run(run.pk, StepOutcome(passed=True))
    with pytest.raises(services.StepError, match="already finished"):
        services.cancel_run(user=cs_user, run=run)


def test_reaper_fails_runs_whose_heartbeat_stopped(onboarding: Any, cs_user: Any, settings: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    fresh = services.start_step(
        user=cs_user, onboarding=services.ensure_onboarding(ConnectionFactory()), step="configure"
    )
    services.claim_run(fresh.pk)
    StepRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT + 5)
    )
    assert services.reap_stale_runs() == 1
    run.refresh_from_db()
    fresh.refresh_from_db()
    assert (run.status, run.error_kind) == (RunStatus.FAILED, "stalled")
    assert fresh.status == RunStatus.RUNNING


def test_a_redelivery_takes_over_a_run_whose_worker_died(onboarding: Any, cs_user: Any, settings: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    StepRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT + 5)
    )
    assert services.claim_run(run.pk) is True
    run.refresh_from_db()
    assert run.deliveries == 2


def test_sweep_resends_runs_left_queued(
    onboarding: Any, cs_user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    recent = services.start_step(
        user=cs_user, onboarding=services.ensure_onboarding(ConnectionFactory()), step="configure"
    )
    old = timezone.now() - timedelta(seconds=settings.STEP_REQUEUE_AFTER + 5)
    StepRun.objects.filter(pk=run.pk).update(last_sent_at=old)
    StepRun.objects.filter(pk=recent.pk).update(last_sent_at=timezone.now())
    sent: list[int] = []
    monkeypatch.setattr(services, "send_run", lambda run_id: sent.append(run_id) or True)
    assert services.resend_queued_runs() == 1
    assert sent == [run.pk]


def test_sweep_gives_up_after_the_delivery_limit(onboarding: Any, cs_user: Any, settings: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    old = timezone.now() - timedelta(seconds=settings.STEP_REQUEUE_AFTER + 5)
    StepRun.objects.filter(pk=run.pk).update(last_sent_at=old, deliveries=settings.STEP_MAX_DELIVERIES)
    services.resend_queued_runs()
    run.refresh_from_db()
    assert (run.status, run.error_kind) == (RunStatus.FAILED, "dead")
