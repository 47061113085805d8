"""The small interface every pipeline step implements, and what a step gets to work with."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from connections.adapters.base import FHIRAdapter
    from connections.models import EHRConnection


@dataclass
class StepOutcome:
    """What a finished step reports: pass or fail, a summary for people and the API, and why it failed."""

    passed: bool
    summary: dict[str, Any] = field(default_factory=dict)
    error_kind: str = ""
    error_message: str = ""
    error_hint: str = ""


class StepContext:
    """Handed to a step's run(): the connection, its adapter, and ways to report progress."""

    def __init__(
        self,
        *,
        connection: EHRConnection,
        adapter_factory: Callable[[], FHIRAdapter],
        report: Callable[[int, int, str, list[dict[str, Any]]], None],
    ) -> None:
        self.connection = connection
        self._adapter_factory = adapter_factory
        self._adapter: FHIRAdapter | None = None
        self._report = report
        self._pending_log: list[dict[str, Any]] = []
        self.done = 0
        self.total = 0

    @property
    def adapter(self) -> FHIRAdapter:
        """The vendor adapter for this connection, built on first use."""
        if self._adapter is None:
            self._adapter = self._adapter_factory()
        return self._adapter

    def log(self, message: str, *, level: str = "info", **data: Any) -> None:
        """Add a structured log line; it reaches the database with the next progress report."""
        self._pending_log.append({"at": time.time(), "level": level, "message": message, **data})

    def progress(self, done: int, total: int, message: str) -> None:
        """Report progress; also the heartbeat that tells the reaper this run is alive."""
        self.done, self.total = done, total
        pending, self._pending_log = self._pending_log, []
        self._report(done, total, message, pending)

    def flush(self) -> None:
        """Send log lines still buffered without changing progress."""
        if self._pending_log:
            self.progress(self.done, self.total, "")


class StepModule:
    """One pipeline step. Subclasses set the class attributes and implement run()."""

    key: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    available: ClassVar[bool] = True
    # Earlier steps whose latest attempt must have passed before this one may start.
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: StepContext) -> StepOutcome:
        raise NotImplementedError


class NotAvailableStep(StepModule):
    """A step listed in the pipeline but not built yet: it cannot start and never looks passed."""

    available = False

    def run(self, ctx: StepContext) -> StepOutcome:
        raise RuntimeError(f"The {self.label} step is not available yet.")
