"""Load test: drive the production request mix at the approved plan's rate and judge it against its SLA.

A thin wrapper around the load engine (``connections.loadgen``, no Django in it):

1. the plan hospital IT approved, still inside its window (a delivery after a lost worker may
   come later than the start the engine let through), and still inside the hard caps;
2. the records the requests are built from: the first N patients of a Patient search (N is the
   tenant's validate sample size, so they are the patients validate pulled) with their MRNs in the
   signed mapping's MRN system, read through the adapter;
3. the address and credential, checked and pinned once by the adapter (``load_target``); a token
   that would expire before the run ends is refused up front, as the engine sends one for the run;
4. the run, on the engine's own event loop, reporting each second: progress (which is also the
   heartbeat's companion and the cancel check) and the seconds it measured, kept as rows;
5. the report: the final per-second series and the summary (``onboarding.loadtest.services``).

It runs on its own queue (``load_tests``) with its own time limits, so a half-hour test never holds
up the short steps of other hospitals.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.utils import timezone

from connections import loadgen
from connections.loadgen import mix as loadmix
from onboarding.gates import services as gates
from onboarding.loadtest import services as loadtests
from onboarding.mapping import services as mappings
from onboarding.models import LoadTestPlan, Onboarding, RunStatus, Step
from onboarding.review import services as review
from onboarding.steps.base import StepContext, StepModule, StepOutcome
from onboarding.validation.fhirjson import as_items

if TYPE_CHECKING:
    from connections.loadgen.results import LoadResult

PATIENT_PAGE_SIZE = 50
# How long a stopped step waits for the engine to notice (it checks once a second) and return.
ENGINE_STOP_WAIT_S = 5.0
_DONE = object()
# A token is refused when it would expire within this margin of the run's last possible answer.
TOKEN_MARGIN_S = 60


class LoadTestStep(StepModule):
    """Send the approved plan's request mix to the hospital and report throughput, latency and errors."""

    key = "load_test"
    label = "Load test"
    description = "Send the production request mix at the agreed rate; report throughput and latency."
    requires = ("validate",)
    gates = (loadtests.GATE_KEY,)
    queue = "load_tests"

    def time_limits(self) -> tuple[int, int]:
        """The load_tests queue's own limits (LOAD_TEST_SOFT_TIME_LIMIT, LOAD_TEST_TIME_LIMIT)."""
        return settings.LOAD_TEST_SOFT_TIME_LIMIT, settings.LOAD_TEST_TIME_LIMIT

    def run(self, ctx: StepContext) -> StepOutcome:
        """Check the approval, pull the records, run the plan, store and judge what was measured."""
        run = ctx.run
        onboarding = run.onboarding
        plan = loadtests.latest_plan(onboarding)
        approval = gates.live_approval(onboarding, loadtests.GATE_KEY)
        if plan is None or approval is None or approval.artifact_id != plan.pk:
            refused = gates.check_start(onboarding, self.gates) or "There is no approved load-test plan."
            return StepOutcome(
                passed=False,
                summary={"plan_version": plan.version if plan else None},
                error_kind="not_approved",
                error_message=f"The load test did not start: {refused}",
                error_hint="Have hospital IT approve the current plan for a window that is open now, then re-run.",
            )
        try:
            loadtests.check(plan)
        except loadtests.PlanRefused as exc:
            return StepOutcome(
                passed=False,
                summary={"plan_version": plan.version},
                error_kind="plan_refused",
                error_message=f"Load-test plan version {plan.version} cannot run as written: {exc}",
                error_hint="Change the plan (hospital IT then approve the new version), or have the cap raised.",
            )
        earlier = loadtests.start_delivery(run.pk, ctx.lease)
        if earlier is not None:
            ctx.log(
                f"Delivery {ctx.lease} runs the plan again from its start: delivery {earlier.delivery} lost its "
                f"worker after measuring {earlier.seconds} s ({earlier.sent:,} requests sent, {earlier.answered:,} "
                "answered), which this run's series replaces.",
                level="warning",
            )
        records = _records(ctx, onboarding, plan)
        if isinstance(records, StepOutcome):
            return records
        pool, facts = records
        mix = loadmix.standard_mix({name: float(w) for name, w in loadtests.weights(plan).items() if w}, pool)
        engine_plan = loadtests.engine_plan(plan, mix)
        target, token = ctx.adapter.load_target()
        needed = engine_plan.total_duration_s + target.deadline + 1 + TOKEN_MARGIN_S
        if token is not None and token.expires_in < needed:
            return StepOutcome(
                passed=False,
                summary={"plan_version": plan.version, "records": facts},
                error_kind="token_too_short",
                error_message=(
                    f"The hospital's access token lasts {token.expires_in} s, but this plan needs one token for "
                    f"{needed:.0f} s: the load test sends the same token for the whole run."
                ),
                error_hint="Ask the hospital for a longer token lifetime for this client, or shorten the plan.",
            )
        window = gates.window_text(approval)
        if approval.valid_until is not None:
            # The hospital allowed load inside its window only: a run that could outlast it never starts.
            left = (approval.valid_until - timezone.now()).total_seconds()
            if left < engine_plan.total_duration_s + target.deadline + 1:
                return StepOutcome(
                    passed=False,
                    summary={"plan_version": plan.version, "records": facts},
                    error_kind="window_too_short",
                    error_message=(
                        f"The plan runs for {engine_plan.total_duration_s} s (and up to {target.deadline:.0f} s more "
                        f"for its last answers), but hospital IT's window ({window}) ends in {max(0, left):.0f} s."
                    ),
                    error_hint="Start it earlier in the window, or ask hospital IT for a new window.",
                )
        ctx.log(
            f"Running load-test plan version {plan.version} ({loadtests.load_sentence(plan)}), approved by "
            f"{approval.decided_by_label}{', ' + window if window else ''}."
        )
        live = _Live(ctx)
        caps = loadtests.caps()
        result = live.drive(
            lambda: loadgen.run(target, engine_plan, caps, progress=live.progress, cancelled=live.cancelled)
        )
        summary = loadtests.summarize(
            result,
            plan,
            records=facts,
            approval={
                "code": str(approval.code),
                "decided_by": approval.decided_by_label,
                "decided_at": approval.decided_at.isoformat() if approval.decided_at else None,
                "window": window,
                "valid_from": approval.valid_from.isoformat() if approval.valid_from else None,
                "valid_until": approval.valid_until.isoformat() if approval.valid_until else None,
            },
        )
        try:
            stored = loadtests.record_result(run.pk, ctx.lease, plan=plan, result=result, summary=summary)
        except Exception:
            if live.error is not None:
                raise live.error from None
            raise
        if live.error is not None:
            # Cancelled, or the run is no longer this delivery's: what was measured is kept, the rest
            # is the engine's to decide (RunCancelled, or a lost database connection).
            raise live.error
        if not stored:
            return StepOutcome(
                passed=False, summary=summary, error_kind="lost", error_message="The run was taken over."
            )
        return _outcome(result, summary, ctx)


class _Live:
    """Runs the engine on a thread of its own and turns its once-a-second reports into database writes.

    The engine's callbacks run on its event loop, where every millisecond spent delays requests
    that are due (and shows in their latency), and where Django would open a database connection
    of the loop's own. So they only hand over: ``progress`` queues the report, ``cancelled`` reads
    a flag. This thread, the step's own with its own connection, writes progress (which also
    notices a cancel, or a lost lease) and the seconds measured; when a write is refused, the flag
    tells the engine to stop, and the refusal is raised once the engine has returned what it measured.
    """

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.error: BaseException | None = None
        self._updates: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()

    def progress(self, progress: Any) -> None:
        """The engine's progress callback (on its loop): hand the report over."""
        self._updates.put(progress)

    def cancelled(self) -> bool:
        """The engine's cancel check (on its loop)."""
        return self._stop.is_set()

    def drive(self, work: Callable[[], LoadResult]) -> LoadResult:
        """Run ``work`` (the engine) on its own thread; write its reports here until it returns."""
        outcome: dict[str, Any] = {}

        def engine() -> None:
            try:
                outcome["result"] = work()
            except BaseException as exc:  # handed to the step's thread, which raises it
                outcome["error"] = exc
            finally:
                self._updates.put(_DONE)

        thread = threading.Thread(target=engine, name=f"load-engine-run-{self.ctx.run.pk}", daemon=True)
        thread.start()
        try:
            while self._write(self._next()):
                pass
        except BaseException:
            # The soft time limit (or a stop of the worker) interrupts this thread: stop the engine too.
            self._stop.set()
            thread.join(timeout=ENGINE_STOP_WAIT_S)
            raise
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return cast("LoadResult", outcome["result"])

    def _next(self) -> list[Any]:
        """The next report, with any that queued up behind it while the database was slow."""
        items = [self._updates.get()]
        while items[-1] is not _DONE:
            try:
                items.append(self._updates.get_nowait())
            except queue.Empty:
                break
        return items

    def _write(self, items: list[Any]) -> bool:
        """Write the reports' progress (the last one) and seconds (all); False once the engine is done."""
        done = items[-1] is _DONE
        reports = [item for item in items if item is not _DONE]
        if reports and self.error is None:
            last = reports[-1]
            try:
                self.ctx.progress(int(last.elapsed_s), max(1, int(last.planned_s)), _line(last))
                seconds = tuple(second for report in reports for second in report.seconds)
                loadtests.record_seconds(self.ctx.run.pk, self.ctx.lease, seconds)
            except Exception as exc:
                self.error = exc
                self._stop.set()
        return not done


def _line(progress: Any) -> str:
    """One progress line for the run page: where the run is and how the server holds up."""
    p95 = f"p95 {progress.last_second_p95_ms:.0f} ms" if progress.last_second_p95_ms is not None else "p95 —"
    text = (
        f"{progress.stage or 'running'} · {progress.elapsed_s:.0f} of {progress.planned_s:.0f} s · "
        f"{progress.last_second_rps:.0f} req/s (target {progress.target_rps:.0f}) · {p95} · "
        f"{progress.sent:,} sent, {progress.errors:,} errors, {progress.dropped:,} dropped"
    )
    if progress.throttled:
        text += f" · throttled {progress.throttled} (HTTP 429){', paused' if progress.paused else ''}"
    return text


def _records(
    ctx: StepContext, onboarding: Onboarding, plan: LoadTestPlan
) -> tuple[loadmix.RecordPool, dict[str, Any]] | StepOutcome:
    """The real patients (and their MRNs) the requests are built from, or why there are none."""
    wants_mrn = plan.weight_patient_by_identifier > 0
    system = ""
    if wants_mrn:
        mapping = mappings.signed_mapping(onboarding)
        if mapping is None or not mapping.mrn_system:
            return StepOutcome(
                passed=False,
                summary={"plan_version": plan.version},
                error_kind="not_signed_off",
                error_message="The plan searches patients by MRN, but the current mapping has no signed MRN system.",
                error_hint="Have hospital IT sign the mapping off (with its MRN system), or give that request "
                "type a weight of 0.",
            )
        system = mapping.mrn_system
    size = mappings.policy_for(onboarding.tenant).validate_sample_size
    ctx.progress(0, 1, f"Reading the {size} patients the requests are built from")
    ids: list[str] = []
    identifiers: list[tuple[str, str]] = []
    # A remote error here fails the run with its kind and message (the engine records it).
    for patient in ctx.adapter.iter_raw_patients(limit=size, page_size=min(size, PATIENT_PAGE_SIZE)):
        patient_id = str(patient.get("id") or "")
        if not patient_id:
            continue
        ids.append(patient_id)
        for identifier in as_items(patient.get("identifier")):
            if isinstance(identifier, dict) and identifier.get("system") == system and identifier.get("value"):
                identifiers.append((system, str(identifier["value"])))
    if not ids:
        return StepOutcome(
            passed=False,
            summary={"plan_version": plan.version},
            error_kind="no_data",
            error_message="The Patient search returned no patients, so there is nothing real to send requests for.",
            error_hint="Ask the hospital to grant this client access to (test) patients, then re-run.",
        )
    if wants_mrn and not identifiers:
        return StepOutcome(
            passed=False,
            summary={"plan_version": plan.version},
            error_kind="no_mrn",
            error_message=f"None of the {len(ids)} patients read carries an MRN in {system}.",
            error_hint="Check the mapping's MRN system, or give the search by identifier a weight of 0.",
        )
    keys = set(_validated_keys(onboarding))
    checked = sum(1 for pid in ids if review.patient_key(onboarding.tenant, pid) in keys)
    ctx.log(
        f"Requests are built from {len(ids)} patients ({checked} of them checked by the latest validate run)"
        + (f" and {len(identifiers)} MRNs in {system}." if wants_mrn else ".")
    )
    facts = {"patients": len(ids), "identifiers": len(identifiers), "mrn_system": system, "validated": checked}
    return ctx.adapter.load_pool(tuple(ids), tuple(identifiers)), facts


def _validated_keys(onboarding: Onboarding) -> list[str]:
    run = onboarding.runs.filter(step=Step.VALIDATE, status=RunStatus.PASSED).order_by("-attempt").first()
    keys = (run.result or {}).get("patient_keys") if run is not None else None
    return [str(key) for key in keys] if isinstance(keys, list) else []


def _outcome(result: Any, summary: dict[str, Any], ctx: StepContext) -> StepOutcome:
    """Passed when the run completed and met its SLA; otherwise failed, saying why in words."""
    verdict = summary["verdict"]
    outcome = result.outcome.value
    if outcome == "completed" and result.sla is not None and result.sla.passed:
        ctx.log(verdict)
        return StepOutcome(passed=True, summary=summary)
    if outcome == "failed":
        kind, hint = "target_failed", "Check that the hospital's endpoint is up (the test step), then re-run."
    elif outcome == "aborted":
        kind, hint = "aborted", "Look at the errors by status below with the hospital's IT team before re-running."
    else:
        kind, hint = "sla_missed", "Share the report with the hospital's IT team; re-run after they tune the endpoint."
    ctx.log(verdict, level="error")
    message = verdict if outcome == "completed" else f"The run was {outcome}: {result.reason}."
    return StepOutcome(passed=False, summary=summary, error_kind=kind, error_message=message, error_hint=hint)
