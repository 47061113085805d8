"""Celery tasks: thin interfaces that take an id, load the row and call the engine.

run_step has its own request class. The request lives in the worker's main process, the only one
that sees a pool process die (killed, out of memory, a crash in native code) or be stopped at the
hard time limit. It tells the engine at once, so the run goes back to the queue (or fails with a
time-limit error) without waiting for its heartbeat to go stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Task, current_app, shared_task
from celery.worker.request import Request
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.db import connection as db_connection
from kombu.exceptions import ChannelError

from onboarding.engine import services
from onboarding.steps import PIPELINE

logger = logging.getLogger(__name__)

STEPS_QUEUE = "steps"
LOAD_TESTS_QUEUE = "load_tests"
# Every queue a step may declare (each step module names its own), for the sweep's backlog count.
STEP_QUEUES = tuple(dict.fromkeys(step.queue for step in PIPELINE))
# Each queue has its own task with its own limits (below). A step on a new queue must add its task
# here (services.task_for_queue names it), or the worker refuses to start.
SERVED_QUEUES = (STEPS_QUEUE, LOAD_TESTS_QUEUE)
_UNSERVED = [queue for queue in STEP_QUEUES if queue not in SERVED_QUEUES]
if _UNSERVED:
    raise ImproperlyConfigured(f"No run_step task serves the step queue(s) {', '.join(_UNSERVED)}.")


def _queue_limits(queue: str) -> tuple[int, int]:
    """(soft, hard) limits of a queue's task: the longest its steps declare (their time_limits())."""
    limits = [step.time_limits() for step in PIPELINE if step.queue == queue] or [
        (settings.STEP_SOFT_TIME_LIMIT, settings.STEP_TIME_LIMIT)
    ]
    return max(soft for soft, _ in limits), max(hard for _, hard in limits)


class StepRequest(Request):
    """run_step's request in the worker's main process: reports a lost or time-limited pool process."""

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # unwrap ExceptionWithTraceback
        # Billiard may report a pool process's exit as SystemExit; Celery then treats it as lost too.
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt):
            # Celery re-queues the message itself (acks_late + reject_on_worker_lost).
            self._tell_engine(
                lambda run_id, worker: services.retry_lost_run(
                    run_id, worker=worker, reason=f"its worker process stopped ({exc})", requeued_by_broker=True
                )
            )
        elif isinstance(exc, TimeLimitExceeded):
            self._tell_engine(
                lambda run_id, worker: services.fail_run(
                    run_id,
                    kind="time_limit",
                    message=f"The step was still running at its hard limit of {self._hard_limit()} s "
                    "and its worker process was stopped.",
                    hint="Check the hospital endpoint's latency in the test step, then re-run.",
                    worker=worker,
                )
            )
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _hard_limit(self) -> int:
        # The limit the message carried, else the task's own (its queue's), else the worker's default.
        limits = getattr(self, "time_limits", None) or (None, None)
        return int(limits[0] or getattr(self.task, "time_limit", None) or settings.STEP_TIME_LIMIT)

    def _tell_engine(self, action: Callable[[int, str], Any]) -> None:
        if not self.args or self.worker_pid is None:
            return
        run_id = int(self.args[0])
        # The main process keeps no connection between such rare events, so a stale one never bites.
        close_old_connections()
        try:
            action(run_id, services.worker_identity(int(self.worker_pid)))
        except Exception:
            logger.exception("Could not report the lost worker of step run %s; the reaper will re-queue it", run_id)
        finally:
            db_connection.close()


class StepTask(Task[Any, Any]):
    """The run_step task class, carrying its request class."""

    Request = "onboarding.engine.tasks:StepRequest"


_STEP_LIMITS = _queue_limits(STEPS_QUEUE)
_LOAD_TEST_LIMITS = _queue_limits(LOAD_TESTS_QUEUE)


@shared_task(
    name="onboarding.run_step",
    base=StepTask,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=_STEP_LIMITS[0],
    time_limit=_STEP_LIMITS[1],
    ignore_result=True,
)
def run_step(run_id: int) -> None:
    """Run one step attempt; safe to deliver twice (the claim lets only one through)."""
    services.execute_run(run_id)


@shared_task(
    name="onboarding.run_step.load_tests",
    base=StepTask,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=_LOAD_TEST_LIMITS[0],
    time_limit=_LOAD_TEST_LIMITS[1],
    ignore_result=True,
)
def run_load_test_step(run_id: int) -> None:
    """run_step for the load_tests queue: the same body, with the load test's own (longer) limits."""
    services.execute_run(run_id)


@shared_task(name="onboarding.reap_stale_runs", soft_time_limit=60, time_limit=90, ignore_result=True)
def reap_stale_runs() -> int:
    """Re-queue runs whose worker stopped sending heartbeats."""
    return services.reap_stale_runs()


@shared_task(name="onboarding.resend_queued_runs", soft_time_limit=60, time_limit=90, ignore_result=True)
def resend_queued_runs() -> int:
    """Re-send runs left queued by a failed publish or a broker that lost its messages."""
    return services.resend_queued_runs(broker_backlog=steps_backlog())


def steps_backlog() -> int | None:
    """How many messages wait in the broker's step queues; None when the broker cannot say."""
    total = 0
    for queue in STEP_QUEUES:
        try:
            with current_app.connection_for_read() as connection:
                channel: Any = connection.default_channel
                total += int(channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            continue  # the queue does not exist (a broker that lost everything): nothing waits in it
        except Exception:
            logger.warning("Could not read the length of the %s queue", queue, exc_info=True)
            return None
    return total
