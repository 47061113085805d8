"""The pipeline engine: every legal move of a step run, and nothing else moves one.

A gated step starts only with a live approval of its gates' current artifacts (``onboarding.gates``):
otherwise the start is refused, and no run is written. Starting a step voids the approvals of
gates that rest on its results.

Moves take the row lock or are conditional UPDATEs, so two workers, a double click, a redelivered
task or the reaper racing a finishing run can never leave two outcomes. Each move writes its audit
event in the same transaction. Tasks are sent only after the transaction commits.

Execution is at least once, and every run ends passed, failed or cancelled:
- each claim hands the delivery a lease (its delivery number); a delivery that lost its run (put
  back in the queue, taken over, cancelled) can no longer write progress or an outcome;
- a pool process that dies is reported by the worker's main process (onboarding.engine.tasks.StepRequest)
  and its run goes straight back to the queue;
- a whole worker that dies stops its run's heartbeat, and the reaper puts the run back in the queue;
- a task the broker lost leaves its run queued, and the sweep sends it again;
- a run that keeps losing its worker is declared dead after STEP_MAX_DELIVERIES, with an alert.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db import connection as db_connection
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from connections.errors import RemoteError
from connections.models import EHRConnection
from connections.services import build_adapter
from onboarding.engine import notices
from onboarding.gates import services as gates
from onboarding.models import ACTIVE_STATUSES, Onboarding, RunStatus, StepRun
from onboarding.steps import get_step
from onboarding.steps.base import StepContext, StepModule, StepOutcome
from portal import audit
from portal.access import AuthUser, User, require_perm

logger = logging.getLogger(__name__)

MAX_LOG_LINES = 500
# A run whose task was never published (the broker was down, or the process died first) is sent by
# the sweep once it is this old, which leaves the request that queued it time to publish.
SEND_GRACE = timedelta(seconds=10)

# The task is sent by name: the engine never imports its own tasks module, which imports it.
RUN_STEP_TASK = "onboarding.run_step"
# No time limits in a task's message: the worker's own settings apply (see send_run).
WORKER_TIME_LIMITS: dict[str, Any] = {"time_limit": None, "soft_time_limit": None}


def task_for_queue(queue: str) -> str:
    """The task name a step queue's workers run: each queue has its own task, with its own limits."""
    return RUN_STEP_TASK if queue == "steps" else f"{RUN_STEP_TASK}.{queue}"


# What finish_run writes; the rest of the row (the claim's, the request's) is left as it is.
FINISH_FIELDS = (
    "status",
    "finished_at",
    "result",
    "error_kind",
    "error_message",
    "error_hint",
    "error_detail",
    "progress_message",
    "progress_done",
    "progress_total",
    "log",
)

T = TypeVar("T")
LostRunOutcome = Literal["retried", "dead", "unchanged"]
# Errors that mean the database connection is gone (a killed backend, a restart, a failover).
CONNECTION_ERRORS = (OperationalError, InterfaceError)


class StepError(Exception):
    """A move the engine refuses; the message is shown to the person who asked."""


class StepNotAvailable(StepError):
    pass


class StepBlocked(StepError):
    pass


class StepAlreadyActive(StepError):
    pass


class RunCancelled(Exception):
    """Raised inside a running step that should stop: it was cancelled, or this delivery lost its lease."""


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


def worker_identity(pid: int | None = None) -> str:
    """A worker process as "host:pid"; the worker's main process builds the same string for a pool process."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


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
    if onboarding.connection.is_archived:
        raise StepBlocked(f"This connection is archived: restore it before running {module.label}.")

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
        refused = gates.check_start(onboarding, module.gates) or module.refuse_start(onboarding)
        if refused is not None:
            raise StepBlocked(f"{module.label} cannot start yet. {refused}")
        gates.void_for_rerun(onboarding, step, user=user, request=request)
        attempt = (current.attempt if current is not None else 0) + 1
        try:
            # No savepoint: on a clash the whole transaction is rolled back as the error leaves it.
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
    """Publish the task for a queued run. A broker outage is logged, not raised: the sweep re-sends.

    The message goes to the step's own queue, as the task that queue's workers run. It carries no
    time limits: the worker's own apply (its broker visibility timeout is derived from them),
    whatever the publishing process was configured with. The send time is written only once the
    broker took the message, so a run whose publish failed (or whose process died before
    publishing) has none, and the next sweep sends it.
    """
    step = StepRun.objects.filter(pk=run_id).values_list("step", flat=True).first()
    if step is None:
        return False
    queue = get_step(step).queue
    try:
        current_app.send_task(task_for_queue(queue), args=(run_id,), queue=queue, **WORKER_TIME_LIMITS)
    except Exception:  # any broker/transport failure; the database row is the source of truth
        logger.warning("Could not publish step run %s; the sweep will send it", run_id, exc_info=True)
        return False
    StepRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(last_sent_at=timezone.now())
    return True


def claim_run(run_id: int) -> bool:
    """Move a queued run to running. Exactly one delivery wins; the others do nothing."""
    return claim(run_id) is not None


def claim(run_id: int, *, worker: str = "") -> int | None:
    """Take a run for this delivery; its lease (the delivery number), or None if it is not ours to run.

    A queued run is taken; so is a running one whose heartbeat went stale (its worker died and
    nothing put it back yet). A run already handed out STEP_MAX_DELIVERIES times is declared dead.
    """
    run = _claim(run_id, worker=worker)
    return run.deliveries if run is not None else None


def _claim(run_id: int, *, worker: str = "") -> StepRun | None:
    """claim(), returning the claimed run with its connection and tenant, as the step needs them."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT)
    with transaction.atomic():
        run = _locked(run_id, related="onboarding__connection__tenant")
        if run is None:
            return None
        taking_over = run.status == RunStatus.RUNNING and (run.heartbeat_at is None or run.heartbeat_at < stale)
        if run.status != RunStatus.QUEUED and not taking_over:
            return None
        if run.deliveries >= settings.STEP_MAX_DELIVERIES:
            _declare_dead(run, reason="it was delivered again after its last worker was lost")
            return None
        if taking_over:
            run.log = _append_log(
                run.log,
                [
                    _line(
                        f"Delivery {run.deliveries + 1} takes over from {run.worker or 'a worker'}, "
                        f"silent for over {settings.STEP_HEARTBEAT_TIMEOUT} s.",
                        level="warning",
                    )
                ],
            )
        run.status = RunStatus.RUNNING
        run.started_at = run.heartbeat_at = now
        run.deliveries += 1
        run.worker = worker or worker_identity()
        run.save(update_fields=["status", "started_at", "heartbeat_at", "deliveries", "worker", "log"])
        return run


def heartbeat(run_id: int, *, lease: int) -> bool:
    """Mark a running attempt alive; False once it is no longer this lease's (ended, cancelled, re-queued)."""
    return bool(
        StepRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, deliveries=lease).update(
            heartbeat_at=timezone.now()
        )
    )


def report_progress(
    run_id: int,
    done: int,
    total: int,
    message: str,
    lines: list[dict[str, Any]],
    *,
    lease: int | None = None,
) -> None:
    """Heartbeat plus progress and new log lines. Raises RunCancelled if the run is no longer ours."""
    with transaction.atomic():
        run = StepRun.objects.select_for_update().only("status", "log", "deliveries").get(pk=run_id)
        if run.status != RunStatus.RUNNING or (lease is not None and run.deliveries != lease):
            raise RunCancelled()
        fields: dict[str, Any] = {"heartbeat_at": timezone.now(), "progress_done": done, "progress_total": total}
        if message:
            fields["progress_message"] = message[:300]
        if lines:
            fields["log"] = _append_log(run.log, _tagged(lines, lease))
        StepRun.objects.filter(pk=run_id).update(**fields)


def finish_run(
    run_id: int,
    outcome: StepOutcome,
    *,
    lines: list[dict[str, Any]] | None = None,
    progress: tuple[int, int] | None = None,
    lease: int | None = None,
    message: str = "",
) -> bool:
    """Record a step's outcome, if the run is still this delivery's (a cancel or a takeover may have won).

    `lines`, `progress` and `message` are what the step reported last and had not sent yet; a failed
    run keeps that last progress line, so it never shows an older one than its counts.
    """
    status = RunStatus.PASSED if outcome.passed else RunStatus.FAILED
    with transaction.atomic():
        run = _locked(run_id)
        if run is None or not _holds(run, lease=lease):
            return False
        run.status = status
        run.finished_at = timezone.now()
        run.result = json_safe(outcome.summary)
        run.error_kind = "" if outcome.passed else (outcome.error_kind or "failed")
        run.error_message = "" if outcome.passed else outcome.error_message
        run.error_hint = "" if outcome.passed else outcome.error_hint
        run.error_detail = {} if outcome.passed else json_safe(outcome.error_detail)
        if outcome.passed:
            run.progress_message = "Passed"
        elif message:
            run.progress_message = message[:300]
        if progress is not None:
            run.progress_done, run.progress_total = progress
        if lines:
            run.log = _append_log(run.log, _tagged(lines, lease))
        run.save(update_fields=FINISH_FIELDS)
        audit.record(
            action=f"step.{status}",
            tenant=run.onboarding.tenant,
            obj=run,
            detail={"step": run.step, "attempt": run.attempt, "error_kind": run.error_kind},
        )
        if status == RunStatus.FAILED:
            notices.run_failed(run)
    return True


def fail_run(
    run_id: int,
    *,
    kind: str,
    message: str,
    hint: str = "",
    detail: dict[str, Any] | None = None,
    from_statuses: tuple[str, ...] = (RunStatus.RUNNING,),
    lease: int | None = None,
    worker: str | None = None,
) -> bool:
    """End a run as failed with a typed error, if it is still in one of the given states.

    With a lease or a worker, only while that delivery or worker process still holds the run.
    """
    with transaction.atomic():
        run = _locked(run_id)
        if run is None or not _holds(run, lease=lease, worker=worker, statuses=from_statuses):
            return False
        _fail(run, kind=kind, message=message, hint=hint, detail=detail or {}, action="step.failed")
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


def retry_lost_run(
    run_id: int,
    *,
    reason: str,
    worker: str | None = None,
    lease: int | None = None,
    stale_before: datetime | None = None,
    requeued_by_broker: bool = False,
) -> LostRunOutcome:
    """Put a running attempt whose worker was lost back in the queue, or declare it dead at the limit.

    Only the holder named by `worker` or `lease`, or one silent since `stale_before`, is touched, so
    a late report about an older delivery never disturbs the current one. Unless the broker itself
    re-queues the message (a pool process died under acks_late), the task is sent again on commit.
    """
    with transaction.atomic():
        run = _locked(run_id)
        if run is None or not _holds(run, lease=lease, worker=worker):
            return "unchanged"
        if stale_before is not None and run.heartbeat_at is not None and run.heartbeat_at >= stale_before:
            return "unchanged"
        if run.deliveries >= settings.STEP_MAX_DELIVERIES:
            _declare_dead(run, reason=reason)
            return "dead"
        run.status = RunStatus.QUEUED
        run.progress_message = f"Queued again: {reason}"[:300]
        run.log = _append_log(
            run.log,
            [
                _line(
                    f"Delivery {run.deliveries} ended: {reason}. Queued again "
                    f"({run.deliveries} of {settings.STEP_MAX_DELIVERIES} deliveries used).",
                    level="warning",
                )
            ],
        )
        run.last_sent_at = timezone.now() if requeued_by_broker else None
        run.save(update_fields=["status", "progress_message", "log", "last_sent_at"])
        audit.record(
            action="step.retry",
            tenant=run.onboarding.tenant,
            obj=run,
            detail={"step": run.step, "attempt": run.attempt, "delivery": run.deliveries, "reason": reason},
        )
        if not requeued_by_broker:
            transaction.on_commit(lambda: send_run(run_id))
    return "retried"


def execute_run(run_id: int, *, worker: str = "") -> None:
    """The body of the run_step task: claim, run the step under a heartbeat, record the outcome.

    Never raises for a step's failure. A lost database connection is retried once on a new
    connection; if the database stays away, the run is left to the reaper, which re-queues it.
    """
    run = _reconnecting(lambda: _claim(run_id, worker=worker))
    if run is None:
        logger.info("Step run %s is held by another delivery or has ended; this delivery does nothing", run_id)
        return
    lease = run.deliveries
    connection = run.onboarding.connection

    def report(done: int, total: int, message: str, lines: list[dict[str, Any]]) -> None:
        _reconnecting(lambda: report_progress(run_id, done, total, message, lines, lease=lease))

    module = get_step(run.step)
    ctx = StepContext(
        run=run,
        lease=lease,
        connection=connection,
        adapter_factory=lambda: build_adapter(connection),
        report=report,
        report_interval=settings.STEP_PROGRESS_INTERVAL,
        soft_time_limit=module.time_limits()[0],
    )
    with _Heartbeat(run_id, lease):
        _run_step(module, ctx, run_id, lease)


def _run_step(module: StepModule, ctx: StepContext, run_id: int, lease: int) -> None:
    try:
        outcome = module.run(ctx)
    except RunCancelled:
        logger.info("Step run %s was cancelled or re-queued while delivery %s ran it", run_id, lease)
        return
    except RemoteError as exc:
        ctx.log(exc.message, level="error", error_kind=exc.kind.value)
        _flush_quietly(ctx)
        error = exc  # a name the lambda may close over: the except clause unbinds exc when it ends
        throttling = ctx.throttling()
        detail = {**error.detail, "throttling": throttling} if throttling else error.detail
        _record_outcome(
            lambda: fail_run(
                run_id, kind=error.kind.value, message=error.message, hint=error.hint, detail=detail, lease=lease
            ),
            run_id,
            lease,
        )
        return
    except SoftTimeLimitExceeded:
        _reconnecting(
            lambda: fail_run(
                run_id,
                kind="time_limit",
                message=f"The step ran longer than its {module.time_limits()[0]} s limit and was stopped.",
                hint="Check the hospital endpoint's latency in the test step, then re-run.",
                lease=lease,
            )
        )
        return
    except CONNECTION_ERRORS:
        # Our database went away under the step (not the hospital): run it again.
        logger.warning("Step run %s lost its database connection; queueing it again", run_id, exc_info=True)
        _reconnecting(lambda: retry_lost_run(run_id, reason="the database connection was lost", lease=lease))
        return
    except Exception as exc:
        # A bug of ours must still end the run, never leave it "running".
        logger.exception("Step run %s crashed", run_id)
        detail = {"exception": type(exc).__name__}
        _reconnecting(
            lambda: fail_run(
                run_id,
                kind="internal",
                message="The step stopped because of an error in the portal. Engineers have the details in the logs.",
                hint="Re-run the step; if it fails the same way, ask an engineer.",
                detail=detail,
                lease=lease,
            )
        )
        return
    # The outcome carries the last progress and log lines in the same write: one transaction, not two.
    lines = ctx.take_pending_log()
    progress = (ctx.done, ctx.total)
    message = ctx.progress_line
    _record_outcome(
        lambda: finish_run(run_id, outcome, lines=lines, progress=progress, lease=lease, message=message),
        run_id,
        lease,
    )


def _record_outcome(write: Callable[[], Any], run_id: int, lease: int) -> None:
    """Record a step's outcome; if the outcome itself cannot be stored, still end the run.

    A value the database refuses (say, from a hospital's odd answer) must not leave the run
    "running" until the reaper re-queues it again and again.
    """
    try:
        _reconnecting(write)
    except CONNECTION_ERRORS:
        raise
    except Exception:
        logger.exception("Step run %s: its outcome could not be stored", run_id)
        _reconnecting(
            lambda: fail_run(
                run_id,
                kind="internal",
                message="The step finished, but its report could not be stored. Engineers have the details.",
                hint="Re-run the step; if it fails the same way, ask an engineer.",
                lease=lease,
            )
        )


def json_safe(value: Any) -> Any:
    """A copy of a JSON value with non-finite numbers (NaN, inf) replaced by None.

    Python's json writes them, but PostgreSQL's jsonb refuses them, and they can come from a hospital.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _flush_quietly(ctx: StepContext) -> None:
    # A cancel that lands while we record a failure just means the run is already final.
    with contextlib.suppress(RunCancelled):
        ctx.flush()


def reap_stale_runs() -> int:
    """Re-queue running attempts whose heartbeat stopped (their worker died or froze); bury them at the limit."""
    cutoff = timezone.now() - timedelta(seconds=settings.STEP_HEARTBEAT_TIMEOUT)
    stale = StepRun.objects.filter(status=RunStatus.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True)
    )
    handled = 0
    for run_id, worker in stale.values_list("pk", "worker"):
        outcome = retry_lost_run(
            run_id,
            reason=f"its worker ({worker or 'unknown'}) sent no heartbeat for over {settings.STEP_HEARTBEAT_TIMEOUT} s",
            stale_before=cutoff,
        )
        handled += outcome != "unchanged"
    return handled


def resend_queued_runs(*, broker_backlog: int | None = None) -> int:
    """Send again the queued runs whose task was probably lost; bury those handed out too often.

    Sent again: runs never published (the broker was down), runs sent longer than
    STEP_REQUEUE_AFTER ago, and, when the broker's queue holds fewer messages than there are runs
    waiting for one (`broker_backlog`, e.g. after Redis restarted without saving), every waiting
    run, since which ones were lost cannot be told. A duplicate delivery does nothing.
    """
    now = timezone.now()
    queued = StepRun.objects.filter(status=RunStatus.QUEUED)
    due = queued.filter(
        Q(last_sent_at__isnull=True, queued_at__lt=now - SEND_GRACE)
        | Q(last_sent_at__lt=now - timedelta(seconds=settings.STEP_REQUEUE_AFTER))
    )
    if broker_backlog is not None:
        # Runs sent a while ago should each have a message waiting; recently sent ones may be in flight.
        waiting = queued.filter(last_sent_at__lt=now - SEND_GRACE)
        count = waiting.count()
        if count > broker_backlog:
            logger.warning(
                "%s queued step runs but only %s messages in the broker: sending them all again", count, broker_backlog
            )
            due = due | waiting
    sent = 0
    for run in due.only("pk", "deliveries"):
        if run.deliveries >= settings.STEP_MAX_DELIVERIES:
            with transaction.atomic():
                locked = _locked(run.pk)
                if locked is not None and locked.status == RunStatus.QUEUED:
                    _declare_dead(locked, reason="it was queued again after its last worker was lost")
            continue
        sent += send_run(run.pk)
    return sent


# --- helpers -----------------------------------------------------------------------------------


class _Heartbeat:
    """Refreshes a running attempt's heartbeat from a background thread while its step works.

    A step may wait minutes on one slow hospital request without reporting progress; the thread
    keeps such a run from looking dead, so only a dead or frozen worker process goes silent. It is
    not started inside a caller's transaction (a step run in-process by a test): another database
    connection could neither see that run nor update it without waiting for the transaction.
    """

    def __init__(self, run_id: int, lease: int) -> None:
        self._run_id = run_id
        self._lease = lease
        self._interval = float(settings.STEP_HEARTBEAT_INTERVAL)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if not db_connection.in_atomic_block:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{self._run_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            # Bounded: a heartbeat stuck on a hung database must not hold the task's end.
            self._thread.join(timeout=self._interval)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    if not heartbeat(self._run_id, lease=self._lease):
                        return  # ended, cancelled or re-queued: nothing of ours to keep alive
                except CONNECTION_ERRORS:
                    logger.warning("Heartbeat of step run %s failed; retrying on a new connection", self._run_id)
                    db_connection.close()
        finally:
            db_connection.close()  # this thread's own connection


def _reconnecting(write: Callable[[], T]) -> T:
    """Run a database call; if the connection was lost, run it once more on a new connection.

    Inside a caller's transaction the call cannot be repeated on its own, so the error stands.
    """
    try:
        return write()
    except CONNECTION_ERRORS:
        if db_connection.in_atomic_block:
            raise
        logger.warning("Database connection lost; retrying once on a new connection", exc_info=True)
        db_connection.close()
        return write()


def _locked(run_id: int, *, related: str = "onboarding__tenant") -> StepRun | None:
    """The run, row-locked (its onboarding and tenant are read along, not locked)."""
    return StepRun.objects.select_for_update(of=("self",)).select_related(related).filter(pk=run_id).first()


def _holds(
    run: StepRun,
    *,
    lease: int | None = None,
    worker: str | None = None,
    statuses: tuple[str, ...] = (RunStatus.RUNNING,),
) -> bool:
    """Whether the run is still in a holder's hands: the right state, delivery and worker process."""
    if run.status not in statuses:
        return False
    if lease is not None and run.deliveries != lease:
        return False
    return worker is None or run.worker == worker


def _fail(run: StepRun, *, kind: str, message: str, hint: str, detail: dict[str, Any], action: str) -> None:
    run.status = RunStatus.FAILED
    run.finished_at = timezone.now()
    run.error_kind, run.error_message, run.error_hint = kind, message, hint
    run.error_detail = json_safe(detail)
    run.save()
    audit.record(
        action=action,
        tenant=run.onboarding.tenant,
        obj=run,
        detail={"step": run.step, "attempt": run.attempt, "error_kind": kind, "deliveries": run.deliveries},
    )
    notices.run_failed(run)


def _declare_dead(run: StepRun, *, reason: str) -> None:
    """Fail a run that keeps losing its worker, and raise the alarm once the failure is committed."""
    last_worker = run.worker
    _fail(
        run,
        kind="dead",
        message=f"The step was handed to workers {run.deliveries} times and never finished; the last time, {reason}.",
        hint="The step may be crashing its worker. Ask an engineer to read the worker logs for this run "
        "before re-running it.",
        detail={"deliveries": run.deliveries, "last_worker": last_worker, "reason": reason},
        action="step.dead",
    )
    run_id, step, attempt, tenant = run.pk, run.step, run.attempt, run.onboarding.tenant.name
    transaction.on_commit(
        lambda: logger.error(
            "ALERT step run %s (%s attempt %s of %s) is dead after %s deliveries; last worker %s: %s",
            run_id,
            step,
            attempt,
            tenant,
            run.deliveries,
            last_worker or "unknown",
            reason,
        )
    )


def _line(message: str, *, level: str = "info") -> dict[str, Any]:
    return {"at": timezone.now().timestamp(), "level": level, "message": message}


def _tagged(lines: list[dict[str, Any]], lease: int | None) -> list[dict[str, Any]]:
    """Lines tagged with their delivery, so the log of a retried run shows which attempt said what."""
    return [{**line, "delivery": lease} for line in lines] if lease is not None else lines


def _append_log(log: list[dict[str, Any]], lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return (list(log) + lines)[-MAX_LOG_LINES:]


def _user_or_none(user: User) -> AuthUser | None:
    return user if user.is_authenticated and isinstance(user, AuthUser) else None
