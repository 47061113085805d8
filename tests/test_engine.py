"""The engine's legal moves: start, claim, progress, finish, cancel, reap and sweep."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from celery import current_app
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from onboarding.engine import services
from onboarding.models import RunStatus, StepRun
from onboarding.steps.base import StepContext, StepModule, StepOutcome
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


def test_go_live_is_built_and_needs_every_earlier_step_first(onboarding: Any, cs_user: Any) -> None:
    with pytest.raises(services.StepBlocked, match="Configure must pass before Go live can run"):
        services.start_step(user=cs_user, onboarding=onboarding, step="go_live")
    with pytest.raises(services.StepNotAvailable, match="There is no step called"):
        services.start_step(user=cs_user, onboarding=onboarding, step="launch")
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


def test_reaper_requeues_runs_whose_heartbeat_stopped(
    onboarding: Any,
    cs_user: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    fresh = services.start_step(
        user=cs_user, onboarding=services.ensure_onboarding(ConnectionFactory()), step="configure"
    )
    services.claim_run(fresh.pk)
    StepRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT + 5)
    )
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.reap_stale_runs() == 1
    assert _sent_run_ids(callbacks, monkeypatch) == [run.pk]
    run.refresh_from_db()
    fresh.refresh_from_db()
    assert (run.status, run.last_sent_at) == (RunStatus.QUEUED, None)
    assert "sent no heartbeat" in run.log[-1]["message"]
    assert AuditEvent.objects.filter(action="step.retry", object_id=str(run.code)).count() == 1
    assert fresh.status == RunStatus.RUNNING
    # The next delivery claims it as a new delivery; the dead one's lease no longer counts.
    assert services.claim(run.pk) == 2


def test_reaper_declares_a_run_dead_at_the_delivery_limit(
    onboarding: Any,
    cs_user: Any,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    services.claim_run(run.pk)
    StepRun.objects.filter(pk=run.pk).update(
        deliveries=settings.STEP_MAX_DELIVERIES,
        heartbeat_at=timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT + 5),
    )
    with (
        caplog.at_level(logging.ERROR, logger="onboarding.engine.services"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert services.reap_stale_runs() == 1
    run.refresh_from_db()
    assert (run.status, run.error_kind) == (RunStatus.FAILED, "dead")
    assert "never finished" in run.error_message and "engineer" in run.error_hint
    assert AuditEvent.objects.filter(action="step.dead", object_id=str(run.code)).count() == 1
    assert [r.levelname for r in caplog.records if "ALERT" in r.getMessage()] == ["ERROR"]


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


def test_sweep_sends_runs_whose_publish_failed_once_past_the_grace(
    onboarding: Any, cs_user: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(current_app, "send_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    run.refresh_from_db()
    assert (run.status, run.last_sent_at) == (RunStatus.QUEUED, None)  # never sent
    sent: list[int] = []
    monkeypatch.setattr(services, "send_run", lambda run_id: sent.append(run_id) or True)
    assert services.resend_queued_runs() == 0  # the request that queued it may still be publishing
    StepRun.objects.filter(pk=run.pk).update(queued_at=timezone.now() - services.SEND_GRACE - timedelta(seconds=1))
    assert services.resend_queued_runs() == 1
    assert sent == [run.pk]


def test_a_successful_send_records_its_time_on_the_steps_queue_without_time_limits_in_the_message(
    onboarding: Any, cs_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, **kwargs: published.append((name, kwargs)))
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert services.send_run(run.pk) is True
    run.refresh_from_db()
    assert run.last_sent_at is not None
    # The step's queue; the worker's own limits apply (its visibility timeout is derived from them).
    assert published == [
        ("onboarding.run_step", {"args": (run.pk,), "queue": "steps", "time_limit": None, "soft_time_limit": None})
    ]


def test_sweep_resends_every_waiting_run_when_the_broker_holds_fewer_messages(
    onboarding: Any, cs_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [services.start_step(user=cs_user, onboarding=onboarding, step="configure")]
    runs += [
        services.start_step(user=cs_user, onboarding=services.ensure_onboarding(ConnectionFactory()), step="configure")
        for _ in range(2)
    ]
    a_while_ago = timezone.now() - services.SEND_GRACE - timedelta(seconds=1)
    StepRun.objects.update(last_sent_at=a_while_ago)  # sent, recently enough not to be overdue
    sent: list[int] = []
    monkeypatch.setattr(services, "send_run", lambda run_id: sent.append(run_id) or True)
    assert services.resend_queued_runs(broker_backlog=3) == 0  # every run still has its message
    assert services.resend_queued_runs(broker_backlog=None) == 0  # the broker could not say
    assert services.resend_queued_runs(broker_backlog=1) == 3  # Redis lost some: which cannot be told
    assert sorted(sent) == sorted(run.pk for run in runs)


def test_a_lost_pool_process_puts_its_run_back_in_the_queue(onboarding: Any, cs_user: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert services.claim(run.pk, worker="host-a:101") == 1
    # A report about another process (a no-op delivery that died) changes nothing.
    assert services.retry_lost_run(run.pk, worker="host-a:102", reason="x", requeued_by_broker=True) == "unchanged"
    outcome = services.retry_lost_run(
        run.pk, worker="host-a:101", reason="its worker process stopped", requeued_by_broker=True
    )
    assert outcome == "retried"
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.last_sent_at is not None  # the broker re-queued the message itself
    assert services.claim(run.pk, worker="host-a:103") == 2


def test_a_run_that_loses_its_worker_too_often_is_declared_dead(
    onboarding: Any,
    cs_user: Any,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    with (
        caplog.at_level(logging.ERROR, logger="onboarding.engine.services"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        for delivery in range(1, settings.STEP_MAX_DELIVERIES + 1):
            assert services.claim(run.pk, worker=f"h:{delivery}") == delivery
            expected = "retried" if delivery < settings.STEP_MAX_DELIVERIES else "dead"
            assert services.retry_lost_run(run.pk, worker=f"h:{delivery}", reason="crashed") == expected
    run.refresh_from_db()
    assert (run.status, run.error_kind, run.deliveries) == (RunStatus.FAILED, "dead", settings.STEP_MAX_DELIVERIES)
    assert run.error_detail["last_worker"] == f"h:{settings.STEP_MAX_DELIVERIES}"
    assert services.claim(run.pk) is None  # the message the broker re-queues does nothing
    actions = list(AuditEvent.objects.filter(object_id=str(run.code)).values_list("action", flat=True))
    assert sorted(actions) == sorted(["step.start", "step.dead"] + ["step.retry"] * (settings.STEP_MAX_DELIVERIES - 1))
    assert len([r for r in caplog.records if "ALERT" in r.getMessage()]) == 1


def test_a_delivery_that_lost_its_lease_can_write_nothing(onboarding: Any, cs_user: Any, settings: Any) -> None:
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    old = services.claim(run.pk, worker="h:1")
    assert old == 1
    StepRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT + 5)
    )
    assert services.claim(run.pk, worker="h:2") == 2  # taken over: the first worker only froze
    assert services.heartbeat(run.pk, lease=1) is False
    with pytest.raises(services.RunCancelled):
        services.report_progress(run.pk, 1, 2, "late", [{"message": "late"}], lease=1)
    assert services.finish_run(run.pk, StepOutcome(passed=False, error_kind="x"), lease=1) is False
    assert services.fail_run(run.pk, kind="x", message="late", lease=1) is False
    services.report_progress(run.pk, 1, 2, "half", [{"message": "current"}], lease=2)
    assert services.finish_run(run.pk, StepOutcome(passed=True), lease=2) is True
    run.refresh_from_db()
    assert run.status == RunStatus.PASSED
    assert [line.get("delivery") for line in run.log if line["message"] == "current"] == [2]
    assert not [line for line in run.log if line["message"] == "late"]


class _SilentStep(StepModule):
    """Waits without reporting progress, like a step on one slow hospital request."""

    key = "configure"
    label = "Silent"
    description = "test"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, ctx: StepContext) -> StepOutcome:
        ctx.progress(0, 1, "waiting")
        time.sleep(self.seconds)
        return StepOutcome(passed=True)


@pytest.mark.django_db(transaction=True)
def test_a_background_heartbeat_keeps_a_silent_step_alive(
    tenant_a: Any, cs_user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.STEP_HEARTBEAT_INTERVAL = 0.1
    step = _SilentStep(seconds=0.6)
    monkeypatch.setattr(services, "get_step", lambda key: step)
    monkeypatch.setattr(services, "send_run", lambda run_id: True)
    run = services.start_step(
        user=cs_user, onboarding=services.ensure_onboarding(ConnectionFactory(tenant=tenant_a)), step="configure"
    )
    beats: list[Any] = []

    def watch() -> None:
        from django.db import connection

        try:
            for _ in range(30):
                beats.append(StepRun.objects.values_list("heartbeat_at", flat=True).get(pk=run.pk))
                time.sleep(0.02)
        finally:
            connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    services.execute_run(run.pk)
    watcher.join()
    run.refresh_from_db()
    assert run.status == RunStatus.PASSED
    distinct = sorted({beat for beat in beats if beat is not None})
    # Claim and first progress, then beats from the thread while the step said nothing.
    assert len(distinct) >= 3, distinct
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat-run-")]


class _DatabaseGoneStep(StepModule):
    """Fails the way a step does when our own database connection dies under it."""

    key = "configure"
    label = "Database gone"
    description = "test"

    def run(self, ctx: StepContext) -> StepOutcome:
        from django.db import OperationalError

        raise OperationalError("terminating connection due to administrator command")


def test_a_step_that_loses_the_database_is_queued_again_not_failed(
    onboarding: Any, cs_user: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    monkeypatch.setattr(services, "get_step", lambda key: _DatabaseGoneStep())
    sent: list[int] = []
    monkeypatch.setattr(services, "send_run", lambda run_id: sent.append(run_id) or True)
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    with django_capture_on_commit_callbacks(execute=True):
        services.execute_run(run.pk)
    run.refresh_from_db()
    assert (run.status, run.deliveries) == (RunStatus.QUEUED, 1)
    assert "database connection was lost" in run.progress_message
    assert sent == [run.pk]  # sent again at once, not left for the sweep


def test_progress_is_held_back_within_the_interval_and_flushed_on_demand() -> None:
    reports: list[tuple[int, int, str, list[dict[str, Any]]]] = []
    ctx = StepContext(
        run=None,  # type: ignore[arg-type]
        lease=1,
        connection=None,  # type: ignore[arg-type]
        adapter_factory=lambda: None,  # type: ignore[arg-type,return-value]
        report=lambda done, total, message, lines: reports.append((done, total, message, lines)),
        report_interval=3600,
    )
    ctx.log("first")
    ctx.progress(1, 3, "one")
    ctx.progress(2, 3, "two")
    assert reports == []  # inside the interval counted from the claim: nothing written yet
    ctx.flush()
    assert [(d, t, m, [line["message"] for line in lines]) for d, t, m, lines in reports] == [(2, 3, "two", ["first"])]
    ctx.log("last")
    assert [line["message"] for line in ctx.take_pending_log()] == ["last"]
    ctx.flush()
    assert len(reports) == 1  # nothing left to send


def test_without_an_interval_every_progress_is_written() -> None:
    reports: list[int] = []
    ctx = StepContext(
        run=None,  # type: ignore[arg-type]
        lease=1,
        connection=None,  # type: ignore[arg-type]
        adapter_factory=lambda: None,  # type: ignore[arg-type,return-value]
        report=lambda done, total, message, lines: reports.append(done),
    )
    for done in range(3):
        ctx.progress(done, 3, "working")
    assert reports == [0, 1, 2]


class _ChattyStep(StepModule):
    """Reports progress three times and logs twice within a few milliseconds, like configure."""

    key = "configure"
    label = "Chatty"
    description = "test"

    def run(self, ctx: StepContext) -> StepOutcome:
        for done in range(3):
            ctx.log(f"line {done}")
            ctx.progress(done + 1, 3, f"part {done + 1}")
        return StepOutcome(passed=True, summary={"parts": 3})


@pytest.mark.django_db(transaction=True)
def test_a_short_step_writes_its_claim_and_its_outcome_only(
    tenant_a: Any, cs_user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.STEP_PROGRESS_INTERVAL = 3600
    monkeypatch.setattr(services, "get_step", lambda key: _ChattyStep())
    monkeypatch.setattr(services, "send_run", lambda run_id: True)
    run = services.start_step(
        user=cs_user, onboarding=services.ensure_onboarding(ConnectionFactory(tenant=tenant_a)), step="configure"
    )
    with CaptureQueriesContext(connection) as queries:
        services.execute_run(run.pk)
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "onboarding_steprun"')]
    assert len(updates) == 2, updates  # the claim, then the outcome with the held-back progress and lines
    run.refresh_from_db()
    assert run.status == RunStatus.PASSED
    assert (run.progress_done, run.progress_total, run.progress_message) == (3, 3, "Passed")
    assert [(line["message"], line["delivery"]) for line in run.log] == [("line 0", 1), ("line 1", 1), ("line 2", 1)]
    assert run.result == {"parts": 3}
