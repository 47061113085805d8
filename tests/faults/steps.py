"""Steps that misbehave on purpose, for the fault suite only. Importing this module registers them.

They are added to the step registry by key, not to PIPELINE, so no page or API lists them.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from onboarding import steps as registry
from onboarding.steps.base import StepContext, StepModule, StepOutcome


def release_path(connection_code: object, base: Path | None = None) -> Path:
    """The file a test creates to let a held step finish; the worker finds it under FAULTS_DIR."""
    return (base or Path(os.environ.get("FAULTS_DIR", tempfile.gettempdir()))) / f"release-{connection_code}"


class HoldStep(StepModule):
    """Waits, without reporting progress, until released: a long remote call, or a hang outside HTTP."""

    key = "fault_hold"
    label = "Hold"
    description = "Fault suite: wait until the test releases the step."

    def run(self, ctx: StepContext) -> StepOutcome:
        ctx.progress(0, 1, "Holding until released")
        release = release_path(ctx.connection.code)
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ctx.log("released")
        ctx.progress(1, 1, "Released")
        return StepOutcome(passed=True, summary={"released": release.exists()})


class CrashStep(StepModule):
    """Kills its own worker process, as an out-of-memory kill or a crash in native code would."""

    key = "fault_crash"
    label = "Crash"
    description = "Fault suite: SIGKILL the worker process running it, every time."

    def run(self, ctx: StepContext) -> StepOutcome:
        ctx.progress(0, 1, "About to crash")
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: the process is gone")


class StubbornStep(StepModule):
    """Ignores the soft time limit, so only the hard limit (the pool killing its process) stops it."""

    key = "fault_stubborn"
    label = "Stubborn"
    description = "Fault suite: swallow SoftTimeLimitExceeded and keep going."

    def run(self, ctx: StepContext) -> StepOutcome:
        ctx.progress(0, 1, "Working forever")
        while True:
            try:
                time.sleep(3600)
            except SoftTimeLimitExceeded:
                continue


FAULT_STEPS = (HoldStep(), CrashStep(), StubbornStep())
for _step in FAULT_STEPS:
    registry._BY_KEY.setdefault(_step.key, _step)  # test-only registration; PIPELINE is left alone
