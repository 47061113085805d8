"""The pipeline engine: every legal move of a step run, and nothing else moves one.

Moves are conditional UPDATEs (or row locks) so that two workers, a double click, a redelivered
task or the reaper racing a finishing run can never leave two outcomes. Each move writes its audit
event in the same transaction. Tasks are sent only after the transaction commits.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.http import HttpRequest
from django.utils import timezone

from connections.errors import RemoteError
from connections.models import EHRConnection
from connections.services import build_adapter
from onboarding.models import ACTIVE_STATUSES, Onboarding, RunStatus, StepRun
from onboarding.steps import get_step
from onboarding.steps.base import StepContext, StepOutcome
from portal import audit
from portal.access import AuthUser, User, require_perm

logger = logging.getLogger(__name__)

MAX_LOG_LINES = 500


class StepError(Exception):
    """A move the engine refuses; the message is shown to the person who asked."""


class StepNotAvailable(StepError):
    pass


class StepBlocked(StepError):
    pass


class StepAlreadyActive(StepError):
    pass


class RunCancelled(Exception):
    """Raised inside a running step when someone cancelled it, to stop the work early."""


def ensure_onboarding(connection: EHRConnection) -> Onboarding:
    """The connection's pipeline, made on first need."""
    onboarding, _ = Onboarding.objects.get_or_create(connection=connection, defaults={"tenant": connection.tenant})
    return onboarding


def latest_runs(onboarding: Onboarding) -> dict[str, StepRun]:
    """The newest attempt of each step."""
    latest: dict[str, StepRun] = {}
    for run in onboarding.runs.order_by("step", "-attempt"):
        latest.setdefault(run.step, run)
    return latest


def start_step(
    *,
    user: User,
    onboarding: Onboarding,
    step: str,
    request: HttpRequest | None = None,
) -> StepRun:
    """Queue a new attempt of a step and send it to a worker once the transaction commits."""
    require_perm(user, "onboarding.run_step", onboarding.tenant)
    try:
        module = get_step(step)
    except KeyError:
        raise StepNotAvailable(f"There is no step called “{step}”.") from None
    if not module.available:
        raise StepNotAvailable(f"The {module.label} step is not available yet.")

    with transaction.atomic():
        # Locking the onboarding serialises starts of the same pipeline, so attempt numbers never clash.
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        latest = latest_runs(onboarding)
        for needed in module.requires:
            prior = latest.get(needed)
            if prior is None or prior.status != RunStatus.PASSED:
                label = get_step(needed).label
                raise StepBlocked(f"{label} must pass before {module.label} can run.")
        current = latest.get(step)
        if current is not None and current.is_active:
            raise StepAlreadyActive(f"{module.label} is already {current.status}.")
        attempt = (onboarding.runs.filter(step=step).aggregate(n=Max("attempt"))["n"] or 0) + 1
        try:
            with transaction.atomic():
                run = StepRun.objects.create(
                    onboarding=onboarding, step=step, attempt=attempt, requested_by=_user_or_none(user)
                )
        except IntegrityError:
            raise StepAlreadyActive(f"{module.label} is already queued or running.") from None
        audit.record(
            action="step.start",
            actor=user,
            tenant=onboarding.tenant,
            obj=run,
            request=request,
            detail={"step": step, "attempt": attempt},
        )
        transaction.on_commit(lambda: send_run(run.pk))
    return run


def send_run(run_id: int) -> bool:
    """Publish the task for a queued run. A broker outage is logged, not raised: the sweep re-sends."""
    from onboarding.tasks import run_step

    StepRun.objects.filter(pk=run_id).update(last_sent_at=timezone.now())
    try:
        run_step.apply_async(args=(run_id,))
    except Exception:  # any broker/transport failure; the database row is the source of truth
        logger.warning("Could not publish step run %s; the sweep will re-send it", run_id, exc_info=True)
        return False
    return True


def claim_run(run_id: int) -> bool:
    """Move a queued run to running. Exactly one delivery wins; the others do nothing."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT)
    claimed = StepRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, deliveries=F("deliveries") + 1
    )
    if claimed:
        return True
    # A run whose worker died (no heartbeat for the timeout) may be taken over by a redelivery.
    return bool(
        StepRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, heartbeat_at__lt=stale).update(
            started_at=now, heartbeat_at=now, deliveries=F("deliveries") + 1
        )
    )


def report_progress(run_id: int, done: int, total: int, message: str, lines: list[dict[str, Any]]) -> None:
    """Heartbeat plus progress and new log lines. Raises RunCancelled if the run was cancelled."""
    with transaction.atomic():
        run = StepRun.objects.select_for_update().only("status", "log").get(pk=run_id)
        if run.status != RunStatus.RUNNING:
            raise RunCancelled()
        fields: dict[str, Any] = {"heartbeat_at": timezone.now(), "progress_done": done, "progress_total": total}
        if message:
            fields["progress_message"] = message[:300]
        if lines:
            fields["log"] = (list(run.log) + lines)[-MAX_LOG_LINES:]
        StepRun.objects.filter(pk=run_id).update(**fields)


def finish_run(run_id: int, outcome: StepOutcome, *, lines: list[dict[str, Any]] | None = None) -> bool:
    """Record a step's outcome, if the run is still running (a cancel or the reaper may have won)."""
    status = RunStatus.PASSED if outcome.passed else RunStatus.FAILED
    with transaction.atomic():
        run = StepRun.objects.select_for_update().select_related("onboarding__tenant").get(pk=run_id)
        if run.status != RunStatus.RUNNING:
            return False
        run.status = status
        run.finished_at = timezone.now()
        run.result = outcome.summary
        run.error_kind = "" if outcome.passed else (outcome.error_kind or "failed")
        run.error_message = "" if outcome.passed else outcome.error_message
        run.error_hint = "" if outcome.passed else outcome.error_hint
        if outcome.passed:
            run.progress_message = "Passed"
        if lines:
            run.log = (list(run.log) + lines)[-MAX_LOG_LINES:]
        run.save()
        audit.record(
            action=f"step.{status}",
            tenant=run.onboarding.tenant,
            obj=run,
            detail={"step": run.step, "attempt": run.attempt, "error_kind": run.error_kind},
        )
    return True


def fail_run(
    run_id: int,
    *,
    kind: str,
    message: str,
    hint: str = "",
    detail: dict[str, Any] | None = None,
    from_statuses: tuple[str, ...] = (RunStatus.RUNNING,),
) -> bool:
    """End a run as failed with a typed error, if it is still in one of the given states."""
    with transaction.atomic():
        run = StepRun.objects.select_for_update().select_related("onboarding__tenant").get(pk=run_id)
        if run.status not in from_statuses:
            return False
        run.status = RunStatus.FAILED
        run.finished_at = timezone.now()
        run.error_kind, run.error_message, run.error_hint = kind, message, hint
        run.error_detail = detail or {}
        run.save()
        audit.record(
            action="step.failed",
            tenant=run.onboarding.tenant,
            obj=run,
            detail={"step": run.step, "attempt": run.attempt, "error_kind": kind},
        )
    return True


def cancel_run(*, user: User, run: StepRun, request: HttpRequest | None = None) -> None:
    """Cancel a queued or running attempt. A running step notices at its next progress report."""
    tenant = run.onboarding.tenant
    require_perm(user, "onboarding.cancel_step", tenant)
    with transaction.atomic():
        changed = StepRun.objects.filter(pk=run.pk, status__in=ACTIVE_STATUSES).update(
            status=RunStatus.CANCELLED, finished_at=timezone.now(), progress_message="Cancelled"
        )
        if not changed:
            raise StepError("This run has already finished.")
        audit.record(action="step.cancel", actor=user, tenant=tenant, obj=run, request=request)


def execute_run(run_id: int) -> None:
    """The body of the run_step task: claim, run the step, record the outcome. Never raises for a step's failure."""
    if not claim_run(run_id):
        logger.info("Step run %s was already claimed or finished; this delivery does nothing", run_id)
        return
    run = StepRun.objects.select_related("onboarding__connection__tenant").get(pk=run_id)
    module = get_step(run.step)
    connection = run.onboarding.connection
    ctx = StepContext(
        connection=connection,
        adapter_factory=lambda: build_adapter(connection),
        report=lambda done, total, message, lines: report_progress(run_id, done, total, message, lines),
    )
    try:
        outcome = module.run(ctx)
        ctx.flush()
    except RunCancelled:
        logger.info("Step run %s was cancelled while running", run_id)
        return
    except RemoteError as exc:
        ctx.log(exc.message, level="error", error_kind=exc.kind.value)
        _flush_quietly(ctx)
        fail_run(run_id, kind=exc.kind.value, message=exc.message, hint=exc.hint, detail=exc.detail)
        return
    except SoftTimeLimitExceeded:
        fail_run(
            run_id,
            kind="time_limit",
            message=f"The step ran longer than its {settings.STEP_SOFT_TIME_LIMIT} s limit and was stopped.",
            hint="Check the hospital endpoint's latency in the test step, then re-run.",
        )
        return
    except Exception as exc:
        # A bug of ours must still end the run, never leave it "running".
        logger.exception("Step run %s crashed", run_id)
        fail_run(
            run_id,
            kind="internal",
            message="The step stopped because of an error in the portal. Engineers have the details in the logs.",
            hint="Re-run the step; if it fails the same way, ask an engineer.",
            detail={"exception": type(exc).__name__},
        )
        return
    finish_run(run_id, outcome)


def _flush_quietly(ctx: StepContext) -> None:
    # A cancel that lands while we record a failure just means the run is already final.
    with contextlib.suppress(RunCancelled):
        ctx.flush()


def reap_stale_runs() -> int:
    """Fail running runs whose heartbeat stopped (their worker died and nothing redelivered them)."""
    cutoff = timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT)
    reaped = 0
    for run_id in StepRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).values_list(
        "pk", flat=True
    ):
        reaped += fail_run(
            run_id,
            kind="stalled",
            message=f"The worker running this step stopped responding for over {settings.STEP_HEARTBEAT_TIMEOUT} s.",
            hint="Re-run the step. If it keeps stalling, ask an engineer to check the workers.",
        )
    return reaped


def resend_queued_runs() -> int:
    """Re-send queued runs whose task was probably lost (crash after commit, broker restart)."""
    cutoff = timezone.now() - timedelta(seconds=settings.STEP_REQUEUE_AFTER)
    sent = 0
    for run in StepRun.objects.filter(status=RunStatus.QUEUED, last_sent_at__lt=cutoff).only("pk", "deliveries"):
        if run.deliveries >= settings.STEP_MAX_DELIVERIES:
            fail_run(
                run.pk,
                kind="dead",
                message=f"The step was handed to workers {run.deliveries} times without finishing.",
                hint="Ask an engineer to check the workers before re-running.",
                from_statuses=(RunStatus.QUEUED,),
            )
            continue
        sent += send_run(run.pk)
    return sent


def _user_or_none(user: User) -> AuthUser | None:
    return user if user.is_authenticated and isinstance(user, AuthUser) else None
