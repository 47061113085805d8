"""The small interface every pipeline step implements, and what a step gets to work with."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings

if TYPE_CHECKING:
    from connections.adapters.base import FHIRAdapter
    from connections.models import EHRConnection
    from onboarding.models import Onboarding, StepRun


@dataclass
class StepOutcome:
    """What a finished step reports: pass or fail, a summary for people and the API, and why it failed."""

    passed: bool
    summary: dict[str, Any] = field(default_factory=dict)
    error_kind: str = ""
    error_message: str = ""
    error_hint: str = ""
    # The facts an engineer needs about the failure (a remote error's detail), stored on the run.
    error_detail: dict[str, Any] = field(default_factory=dict)


class StepContext:
    """Handed to a step's run(): its own run, the connection, its adapter, and ways to report progress.

    `run` is the attempt this delivery claimed (with its onboarding and tenant loaded) and `lease`
    the delivery number that holds it, so a step never looks "the active run" up again.

    Progress and log lines reach the database at most once per `report_interval` seconds, counted
    from the claim that started the run: a short step then writes only its claim and its outcome,
    while a long one still shows its progress live and notices a cancel at its next report.
    """

    def __init__(
        self,
        *,
        run: StepRun,
        lease: int,
        connection: EHRConnection,
        adapter_factory: Callable[[], FHIRAdapter],
        report: Callable[[int, int, str, list[dict[str, Any]]], None],
        report_interval: float = 0.0,
        soft_time_limit: float | None = None,
    ) -> None:
        self.run = run
        self.lease = lease
        self.connection = connection
        self._adapter_factory = adapter_factory
        self._adapter: FHIRAdapter | None = None
        self._report = report
        self._report_interval = report_interval
        self._last_report = time.monotonic()
        self._unsent = False
        self._pending_log: list[dict[str, Any]] = []
        self.done = 0
        self.total = 0
        self.message = ""
        # How a bulk export went (onboarding.steps.pull.BulkPull), for the run's summary; None for REST.
        self.bulk_export: dict[str, Any] | None = None
        # When the step must be done by (its soft time limit, from now): a wait a throttling hospital
        # asks for is honoured only if it fits.
        limit = settings.STEP_SOFT_TIME_LIMIT if soft_time_limit is None else soft_time_limit
        self.deadline = time.monotonic() + float(limit)

    @property
    def attempt(self) -> int:
        return self.run.attempt

    @property
    def adapter(self) -> FHIRAdapter:
        """The vendor adapter for this connection, built on first use."""
        if self._adapter is None:
            self._adapter = self._adapter_factory()
            self._adapter.client.wait_deadline = self.deadline
        return self._adapter

    def throttling(self) -> dict[str, Any]:
        """How often the hospital answered 429 (or 503) and how long the run waited; {} if it never did.

        With the connection's limiter, ``paused_s`` is the wall-clock time the whole connection was
        held: concurrent requests waiting out the same Retry-After count once.
        """
        if self._adapter is None:
            return {}
        client = self._adapter.client
        stats = client.stats
        if not (stats.throttled or stats.retries or stats.unavailable):
            return {}
        figures = stats.as_dict()
        if client.limiter is not None:
            figures["paused_s"] = round(client.limiter.stats.paused_s, 1)
        return figures

    @property
    def progress_line(self) -> str:
        """The progress message as people see it: with the throttling so far, once there was any."""
        client = self._adapter.client if self._adapter is not None else None
        if client is None or not (client.stats.throttled or client.stats.unavailable):
            return self.message
        stats = client.stats
        count = stats.throttled + stats.unavailable
        times = "time" if count == 1 else "times"
        statuses = "/".join(code for code, n in (("429", stats.throttled), ("503", stats.unavailable)) if n)
        waited_s = client.limiter.stats.paused_s if client.limiter is not None else stats.throttle_waited_s
        return f"{self.message} · throttled {count} {times} (HTTP {statuses}), {waited_s:.0f} s waiting"

    def log(self, message: str, *, level: str = "info", **data: Any) -> None:
        """Add a structured log line; it reaches the database with the next report or the outcome."""
        self._pending_log.append({"at": time.time(), "level": level, "message": message, **data})

    def progress(self, done: int, total: int, message: str) -> None:
        """Report progress; sent at once unless the last report went out under `report_interval` ago."""
        self.done, self.total = done, total
        if message:
            self.message = message
        self._unsent = True
        if time.monotonic() - self._last_report >= self._report_interval:
            self._send()

    def flush(self) -> None:
        """Send progress and log lines still held back."""
        if self._unsent or self._pending_log:
            self._send()

    def take_pending_log(self) -> list[dict[str, Any]]:
        """The log lines not sent yet, handed over to be written with the step's outcome."""
        pending, self._pending_log = self._pending_log, []
        self._unsent = False
        return pending

    def _send(self) -> None:
        pending, self._pending_log = self._pending_log, []
        self._unsent = False
        self._report(self.done, self.total, self.progress_line, pending)
        self._last_report = time.monotonic()


class StepModule:
    """One pipeline step. Subclasses set the class attributes and implement run()."""

    key: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    available: ClassVar[bool] = True
    # Earlier steps whose latest attempt must have passed before this one may start.
    requires: ClassVar[tuple[str, ...]] = ()
    # Gates (onboarding.gates) that need a live approval of their current artifact before it starts.
    gates: ClassVar[tuple[str, ...]] = ()
    # The Celery queue its task goes to: a step that runs for many minutes gets workers of its own,
    # so it never holds up the short steps of other hospitals. Each queue has its own task, whose
    # limits are the step's time_limits() as the worker's settings give them.
    queue: ClassVar[str] = "steps"

    def time_limits(self) -> tuple[int, int]:
        """(soft, hard) seconds the step may run, read from the settings of the worker that runs it."""
        return settings.STEP_SOFT_TIME_LIMIT, settings.STEP_TIME_LIMIT

    def refuse_start(self, onboarding: Onboarding) -> str | None:
        """Why the step may not start now beyond its requires and gates (a go-live outside a window); None if it may."""
        return None

    def run(self, ctx: StepContext) -> StepOutcome:
        raise NotImplementedError


class NotAvailableStep(StepModule):
    """A step listed in the pipeline but not built yet: it cannot start and never looks passed."""

    available = False

    def run(self, ctx: StepContext) -> StepOutcome:
        raise RuntimeError(f"The {self.label} step is not available yet.")
