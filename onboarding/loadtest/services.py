"""Load-test plans and their permission, and the writes of what a load-test run measured.

A plan says what to send (weights over the product's five request types), how hard (a target rate,
"normal peak N req/s, stress factor F", or a staircase that searches for capacity), for how long,
and what counts as good enough (p95 and p99 in ms, the maximum error %, and an abort threshold).
Versions are immutable: each change writes the next version and voids the permission of the one
before (``gates.void_stale``). A plan above a hard cap in settings is refused with the cap named.

The permission is a gate (``load_test_permission``): hospital IT approve one exact version (its
content hash) for a time window, since it is their system that takes the load. The load-test step
declares the gate, so it cannot start without a live approval, or outside its window.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest

from connections.loadgen import mix as loadmix
from connections.loadgen.plan import (
    AbortRule,
    Caps,
    LoadPlan,
    PlanError,
    Schedule,
    Sla,
    Staircase,
    rate_for_peak,
    validate,
)
from onboarding.gates import services as gates
from onboarding.models import (
    LoadMode,
    LoadTestPlan,
    LoadTestReport,
    LoadTestSecond,
    Onboarding,
    RunStatus,
    Step,
    StepRun,
)
from portal import audit
from portal.access import AuthUser, User, require_perm

if TYPE_CHECKING:
    # Only for types: the results module imports hdrhistogram, which no web process needs.
    from connections.loadgen.results import LoadResult, SecondStats

GATE_KEY = "load_test_permission"
# Whoever drives the pipeline writes its plan; hospital IT approve it.
EDIT_PERM = "onboarding.run_step"

# The request types in the order the plan, its page and its reports list them, with their weight fields.
WEIGHT_FIELDS = {
    loadmix.PATIENT_READ: "weight_patient_read",
    loadmix.PATIENT_BY_IDENTIFIER: "weight_patient_by_identifier",
    loadmix.OBSERVATION_BY_PATIENT: "weight_observation_by_patient",
    loadmix.CONDITION_BY_PATIENT: "weight_condition_by_patient",
    loadmix.ENCOUNTER_BY_PATIENT: "weight_encounter_by_patient",
}
TYPE_LABELS = {
    loadmix.PATIENT_READ: "Patient read",
    loadmix.PATIENT_BY_IDENTIFIER: "Patient search by identifier (the mapped MRN system)",
    loadmix.OBSERVATION_BY_PATIENT: "Observation search by patient",
    loadmix.CONDITION_BY_PATIENT: "Condition search by patient",
    loadmix.ENCOUNTER_BY_PATIENT: "Encounter search by patient",
}
LOAD_FIELDS = (
    "load_mode",
    "target_rate",
    "normal_peak",
    "stress_factor",
    "staircase_start",
    "staircase_step",
    "staircase_steps",
    "staircase_step_s",
    "ramp_s",
    "duration_s",
    "concurrency",
)
SLA_FIELDS = ("sla_p95_ms", "sla_p99_ms", "sla_max_error_pct", "abort_error_pct")
# Everything a person may set, the page's form and the API alike.
PLAN_FIELDS = (*WEIGHT_FIELDS.values(), *LOAD_FIELDS, *SLA_FIELDS)
# Which fields each way of stating the load uses; the others are cleared on save and left out of the hash.
MODE_FIELDS: dict[str, tuple[str, ...]] = {
    LoadMode.RATE: ("target_rate", "ramp_s", "duration_s"),
    LoadMode.PEAK: ("normal_peak", "stress_factor", "ramp_s", "duration_s"),
    LoadMode.STAIRCASE: ("staircase_start", "staircase_step", "staircase_steps", "staircase_step_s", "ramp_s"),
}
DEFAULTS: dict[str, Any] = {
    "target_rate": None,
    "normal_peak": None,
    "stress_factor": 2.0,
    "staircase_start": None,
    "staircase_step": None,
    "staircase_steps": None,
    "staircase_step_s": None,
    "ramp_s": 0,
    "duration_s": 60,
}
MAX_STAIRCASE_STEPS = 50
# The caps' names in settings, so a refusal names the one to raise.
CAP_SETTINGS = {
    "max_rate": "LOAD_TEST_MAX_RATE",
    "max_concurrency": "LOAD_TEST_MAX_CONCURRENCY",
    "max_duration_s": "LOAD_TEST_MAX_DURATION",
    "max_total_requests": "LOAD_TEST_MAX_TOTAL_REQUESTS",
}
# Which form field a cap is about, so the page shows the refusal beside it.
CAP_FIELDS = {
    "max_rate": "target_rate",
    "max_concurrency": "concurrency",
    "max_duration_s": "duration_s",
    "max_total_requests": "duration_s",
}


class PlanRefused(Exception):
    """A plan that cannot be saved or run as written; the message says what to fix.

    ``field`` names the plan field at fault (None for the whole plan), ``cap`` the hard cap exceeded.
    """

    def __init__(self, message: str, *, field: str | None = None, cap: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.cap = cap


class PlanConflict(PlanRefused):
    """The plan changed since the person loaded it."""


# --- caps and reads -------------------------------------------------------------------------------------


def caps() -> Caps:
    """The hard caps from settings, which no plan exceeds and the engine enforces again while it runs."""
    return Caps(
        max_rate=float(settings.LOAD_TEST_MAX_RATE),
        max_concurrency=int(settings.LOAD_TEST_MAX_CONCURRENCY),
        max_duration_s=float(settings.LOAD_TEST_MAX_DURATION),
        max_total_requests=int(settings.LOAD_TEST_MAX_TOTAL_REQUESTS),
    )


def caps_facts() -> list[dict[str, Any]]:
    """The caps as the page and the API show them: the setting, its value and what it limits."""
    current = caps()
    return [
        {"setting": "LOAD_TEST_MAX_RATE", "value": current.max_rate, "unit": "req/s", "limits": "the highest rate"},
        {
            "setting": "LOAD_TEST_MAX_CONCURRENCY",
            "value": current.max_concurrency,
            "unit": "connections",
            "limits": "connections open at once",
        },
        {
            "setting": "LOAD_TEST_MAX_DURATION",
            "value": current.max_duration_s,
            "unit": "s",
            "limits": "the whole run, ramp and steps included",
        },
        {
            "setting": "LOAD_TEST_MAX_TOTAL_REQUESTS",
            "value": current.max_total_requests,
            "unit": "requests",
            "limits": "requests in one run",
        },
    ]


def latest_plan(onboarding: Onboarding) -> LoadTestPlan | None:
    """The newest version: the one people edit and hospital IT approve."""
    return onboarding.load_test_plans.order_by("-version").first()


def plan_version(onboarding: Onboarding, version: int) -> LoadTestPlan | None:
    return onboarding.load_test_plans.filter(version=version).first()


def weights(plan: LoadTestPlan) -> dict[str, int]:
    """The mix's weights by request type (zeros included)."""
    return {name: int(getattr(plan, field)) for name, field in WEIGHT_FIELDS.items()}


def target_rate(values: Mapping[str, Any] | LoadTestPlan) -> float:
    """The rate the plan drives at its peak: the target, normal peak times the factor, or the top step."""
    get = _getter(values)
    mode = get("load_mode")
    if mode == LoadMode.PEAK:
        return rate_for_peak(float(get("normal_peak") or 0), float(get("stress_factor") or 0))
    if mode == LoadMode.STAIRCASE:
        rates = _staircase_rates(get)
        return rates[-1] if rates else 0.0
    return float(get("target_rate") or 0)


def content(values: Mapping[str, Any] | LoadTestPlan) -> dict[str, Any]:
    """What an approval binds: the mix, the mode's own load fields and the SLA (nothing else)."""
    get = _getter(values)
    mode = str(get("load_mode"))
    fields = (*WEIGHT_FIELDS.values(), "load_mode", *MODE_FIELDS.get(mode, ()), "concurrency", *SLA_FIELDS)
    return {name: _plain(get(name)) for name in fields}


def content_hash(values: Mapping[str, Any] | LoadTestPlan) -> str:
    canonical = json.dumps(content(values), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def engine_plan(plan: LoadTestPlan, mix: tuple[loadmix.RequestType, ...]) -> LoadPlan:
    """The engine's plan for a stored version, with the request mix built from real records."""
    return _engine_plan(_getter(plan), mix)


def check(values: Mapping[str, Any] | LoadTestPlan) -> None:
    """Refuse a plan that is incomplete, malformed or above a cap; PlanRefused names the field or cap."""
    get = _getter(values)
    mix_weights: dict[str, Any] = {name: get(field) for name, field in WEIGHT_FIELDS.items()}
    for name, weight in mix_weights.items():
        if weight is None or isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1000:
            raise PlanRefused(
                f"The weight of {TYPE_LABELS[name]} must be a whole number from 0 to 1,000.", field=WEIGHT_FIELDS[name]
            )
    if not any(mix_weights.values()):
        raise PlanRefused("Give at least one request type a weight above 0.", field=WEIGHT_FIELDS[loadmix.PATIENT_READ])
    mode = get("load_mode")
    if mode not in LoadMode.values:
        raise PlanRefused("Choose how the load is stated: a target rate, a normal peak, or a staircase.")
    if mode == LoadMode.RATE:
        _positive(get, "target_rate", "the target rate (req/s)")
    elif mode == LoadMode.PEAK:
        _positive(get, "normal_peak", "the normal peak (req/s)")
        factor = _positive(get, "stress_factor", "the stress factor")
        if factor > 100:
            raise PlanRefused("The stress factor must be at most 100.", field="stress_factor")
    else:
        _positive(get, "staircase_start", "the staircase's first rate (req/s)")
        steps = get("staircase_steps")
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STAIRCASE_STEPS:
            raise PlanRefused(f"Give the staircase 1 to {MAX_STAIRCASE_STEPS} steps.", field="staircase_steps")
        if steps > 1:
            _positive(get, "staircase_step", "the rate added per step (req/s)")
        seconds = get("staircase_step_s")
        if not isinstance(seconds, int) or seconds < 1:
            raise PlanRefused("Each staircase step must last at least 1 second.", field="staircase_step_s")
    for name, words in (("ramp_s", "The ramp-up"), ("duration_s", "The duration"), ("concurrency", "Concurrency")):
        value = get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PlanRefused(f"{words} must be a whole number.", field=name)
    if mode != LoadMode.STAIRCASE and get("duration_s") < 1:
        raise PlanRefused("The duration must be at least 1 second.", field="duration_s")
    if get("concurrency") < 1:
        raise PlanRefused("Concurrency must be at least 1 connection.", field="concurrency")
    for name, words in (("sla_p95_ms", "The agreed p95"), ("sla_p99_ms", "The agreed p99")):
        _number(get, name, f"{words} (ms)", upper=3_600_000)
    _number(get, "sla_max_error_pct", "The maximum error %", upper=100)
    abort = _number(get, "abort_error_pct", "The abort threshold (%)", upper=100)
    if abort <= 0:
        raise PlanRefused("The abort threshold must be above 0%.", field="abort_error_pct")
    if get("sla_p99_ms") < get("sla_p95_ms"):
        raise PlanRefused("The agreed p99 cannot be below the agreed p95.", field="sla_p99_ms")
    # The engine's own checks, and the caps, on the plan as it would run (a stand-in record pool:
    # the real one is pulled at run time).
    try:
        mix = loadmix.standard_mix({n: float(w) for n, w in mix_weights.items()}, _STAND_IN)
        validate(_engine_plan(get, mix), caps())
    except PlanError as exc:
        if exc.cap is not None:
            setting = CAP_SETTINGS[exc.cap]
            raise PlanRefused(
                f"{exc} Lower the plan, or have the cap ({setting}) raised in the portal's settings.",
                field=CAP_FIELDS.get(exc.cap),
                cap=exc.cap,
            ) from None
        raise PlanRefused(str(exc)) from None


def describe(plan: LoadTestPlan) -> dict[str, Any]:
    """The plan in the words and figures the page, the API, the approval and the evidence pack show."""
    total_weight = sum(weights(plan).values()) or 1
    mix: list[dict[str, Any]] = [
        {
            "type": name,
            "label": TYPE_LABELS[name],
            "weight": weight,
            "share_pct": round(100 * weight / total_weight, 1),
        }
        for name, weight in weights(plan).items()
    ]
    included = {name: float(weight) for name, weight in weights(plan).items() if weight}
    shape = _engine_plan(_getter(plan), loadmix.standard_mix(included, _STAND_IN)) if included else None
    total_s = shape.total_duration_s if shape else 0
    requests = Schedule(shape.stages()).total if shape else 0
    return {
        "version": plan.version,
        "content_hash": plan.content_hash,
        "load": load_sentence(plan),
        "target_rps": target_rate(plan),
        "total_duration_s": total_s,
        "expected_requests": requests,
        "concurrency": plan.concurrency,
        "mix": mix,
        "sla": {
            "p95_ms": plan.sla_p95_ms,
            "p99_ms": plan.sla_p99_ms,
            "max_error_pct": plan.sla_max_error_pct,
            "abort_error_pct": plan.abort_error_pct,
        },
        "sla_sentence": (
            f"p95 at most {plan.sla_p95_ms:g} ms, p99 at most {plan.sla_p99_ms:g} ms, errors at most "
            f"{plan.sla_max_error_pct:g}%; stop early at {plan.abort_error_pct:g}% errors over 5 s"
        ),
        "created_at": plan.created_at.isoformat() if plan.created_at else None,
        "created_by": plan.created_by_label,
    }


def load_sentence(plan: LoadTestPlan) -> str:
    """The load in one sentence: "100 req/s (normal peak 50 req/s times 2) for 300 s after a 30 s ramp-up"."""
    ramp = f" after a {plan.ramp_s} s ramp-up" if plan.ramp_s else ""
    if plan.load_mode == LoadMode.STAIRCASE:
        rates = _staircase_rates(_getter(plan))
        shown = ", ".join(f"{r:g}" for r in rates[:8]) + (", …" if len(rates) > 8 else "")
        return (
            f"a staircase of {len(rates)} step{'s' if len(rates) != 1 else ''} of {plan.staircase_step_s} s each "
            f"({shown} req/s){ramp}, stopping at the first step that misses the SLA"
        )
    if plan.load_mode == LoadMode.PEAK:
        rate = f"{target_rate(plan):g} req/s (normal peak {plan.normal_peak:g} req/s times {plan.stress_factor:g})"
    else:
        rate = f"{target_rate(plan):g} req/s"
    return f"{rate} for {plan.duration_s} s{ramp}"


# --- writes ------------------------------------------------------------------------------------------------


def save_plan(
    *,
    user: User,
    onboarding: Onboarding,
    values: Mapping[str, Any],
    seen_version: int,
    request: HttpRequest | None = None,
) -> tuple[LoadTestPlan, bool]:
    """Write the next plan version from ``values`` (every plan field); (plan, False) when nothing changed.

    ``seen_version`` is the version the person was looking at (0 for none yet): a plan someone else
    changed since is a PlanConflict. A change voids the permission of the version before.
    """
    require_perm(user, EDIT_PERM, onboarding.tenant)
    unknown = sorted(set(values) - set(PLAN_FIELDS))
    if unknown:
        raise ValueError(f"Not plan fields: {', '.join(unknown)}")
    cleaned = _normalised(values)
    check(cleaned)
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        latest = latest_plan(onboarding)
        current = latest.version if latest else 0
        if seen_version != current:
            raise PlanConflict(
                f"The plan changed while you were editing it (it is version {current} now, you had "
                f"{'no plan' if seen_version == 0 else f'version {seen_version}'}). Reload the page and make your "
                "change again."
            )
        digest = content_hash(cleaned)
        if latest is not None and latest.content_hash == digest:
            return latest, False
        plan = LoadTestPlan.objects.create(
            onboarding=onboarding,
            version=current + 1,
            created_by=user if isinstance(user, AuthUser) else None,
            created_by_label=user.get_username(),
            content_hash=digest,
            **cleaned,
        )
        changed = (
            sorted(name for name in PLAN_FIELDS if getattr(latest, name) != getattr(plan, name))
            if latest
            else list(PLAN_FIELDS)
        )
        gates.void_stale(
            onboarding,
            GATE_KEY,
            reason=f"Load-test plan version {plan.version} replaced it.",
            user=user,
            request=request,
        )
        audit.record(
            action="load_test_plan.version",
            actor=user,
            tenant=onboarding.tenant,
            obj=plan,
            request=request,
            detail={"version": plan.version, "content_hash": digest, "changed": changed},
        )
    return plan, True


def plan_values(plan: LoadTestPlan | None) -> dict[str, Any]:
    """A plan's fields, to start the next version from (the defaults when there is none)."""
    if plan is None:
        blank = LoadTestPlan()
        return {name: getattr(blank, name) for name in PLAN_FIELDS}
    return {name: getattr(plan, name) for name in PLAN_FIELDS}


# --- the permission gate ---------------------------------------------------------------------------------


def _artifact(plan: LoadTestPlan | None) -> gates.Artifact | None:
    if plan is None:
        return None
    return gates.Artifact(
        kind="load_test_plan",
        id=plan.pk,
        version=plan.version,
        content_hash=plan.content_hash,
        label=f"Load-test plan version {plan.version}",
    )


def _current_artifact(onboarding: Onboarding) -> gates.Artifact | None:
    return _artifact(latest_plan(onboarding))


def _not_ready(onboarding: Onboarding, artifact: gates.Artifact | None) -> str | None:
    """Why the current plan cannot be put to hospital IT, or None."""
    if artifact is None:
        return "There is no load-test plan yet: write one on the load-test page first."
    plan = onboarding.load_test_plans.get(pk=artifact.id)
    try:
        check(plan)
    except PlanRefused as exc:
        # The caps may have been lowered since the plan was written.
        return f"The plan cannot run as written: {exc}"
    return None


def _plan_link(onboarding: Onboarding) -> str:
    from django.urls import reverse

    return reverse("load_test_plan", kwargs={"code": onboarding.connection.code})


PERMISSION = gates.register(
    gates.Gate(
        key=GATE_KEY,
        label="Permission to load-test",
        step=Step.LOAD_TEST,
        current=_current_artifact,
        not_ready=_not_ready,
        link=_plan_link,
        wants_window=True,
    )
)


# --- what runs measured ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlierDelivery:
    """What a delivery that lost the run had measured before the one now starting replaced it."""

    delivery: int
    seconds: int
    sent: int
    answered: int


def start_delivery(run_id: int, lease: int) -> EarlierDelivery | None:
    """Clear the per-second rows an earlier delivery of this run left (its worker was lost), saying what they held.

    The delivery now starting runs the plan from its beginning and writes its own rows, so the
    series never mixes two deliveries, nor counts a second twice.
    """
    with transaction.atomic():
        if not StepRun.objects.select_for_update().filter(pk=run_id, deliveries=lease).exists():
            return None
        earlier = LoadTestSecond.objects.filter(run_id=run_id, delivery__lt=lease)
        rows = list(earlier.values_list("delivery", "sent", "answered"))
        if not rows:
            return None
        earlier.delete()
        LoadTestReport.objects.filter(run_id=run_id, delivery__lt=lease).delete()
    return EarlierDelivery(
        delivery=max(r[0] for r in rows),
        seconds=len(rows),
        sent=sum(r[1] for r in rows),
        answered=sum(r[2] for r in rows),
    )


def record_seconds(run_id: int, lease: int, seconds: tuple[SecondStats, ...]) -> int:
    """Keep the seconds a running test just measured, while this delivery still holds the run.

    Written as the run goes, so a worker that dies mid-run leaves its series behind; the row of a
    second is replaced, never doubled (one row per run and second).
    """
    if not seconds:
        return 0
    if not StepRun.objects.filter(pk=run_id, deliveries=lease, status=RunStatus.RUNNING).exists():
        return 0
    rows = [_second_row(run_id, lease, second) for second in seconds]
    LoadTestSecond.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["run", "second"], update_fields=_SECOND_FIELDS
    )
    return len(rows)


def record_result(run_id: int, lease: int, *, plan: LoadTestPlan, result: LoadResult, summary: dict[str, Any]) -> bool:
    """Store a finished (or cancelled, or stopped) test's report and its whole per-second series.

    One transaction, and only while this delivery holds the run (running, or cancelled while it
    ran): the series the run wrote as it went is replaced by the final one, which has every late
    answer and drop in. False when the run is no longer this delivery's.
    """
    with transaction.atomic():
        held = (
            StepRun.objects.select_for_update()
            .filter(pk=run_id, deliveries=lease, status__in=(RunStatus.RUNNING, RunStatus.CANCELLED))
            .exists()
        )
        if not held:
            return False
        LoadTestSecond.objects.filter(run_id=run_id).delete()
        LoadTestSecond.objects.bulk_create([_second_row(run_id, lease, second) for second in result.per_second])
        LoadTestReport.objects.update_or_create(
            run_id=run_id,
            defaults={
                "plan": plan,
                "delivery": lease,
                "outcome": result.outcome.value,
                "summary": summary,
                "hdr": result.hdr,
            },
        )
    return True


def summarize(result: LoadResult, plan: LoadTestPlan, **facts: Any) -> dict[str, Any]:
    """The run's result: everything measured but the per-second series (a table of its own) and the
    encoded histogram, plus the plan version, the verdict in words and ``facts`` (records, approval)."""
    data = result.to_dict()
    data.pop("per_second", None)
    data.pop("hdr", None)
    data["seconds"] = len(result.per_second)
    target = result.target_rps
    data["achieved_pct"] = round(100 * result.achieved_rps / target, 1) if target else None
    data["plan"] = {"version": plan.version, "content_hash": plan.content_hash, **_plan_brief(plan)}
    data["verdict"] = verdict_sentence(result, plan)
    data["type_labels"] = TYPE_LABELS
    data.update(facts)
    return _finite(data)


def verdict_sentence(result: LoadResult, plan: LoadTestPlan) -> str:
    """Pass or fail against the SLA, with the reason in words."""
    sla = result.sla
    if sla is None:
        return "No SLA verdict: the run did not reach its load."
    if not sla.passed:
        return "Failed: " + "; ".join(sla.reasons) + "."
    if result.highest_passing_rate is not None:
        return (
            f"Passed: the highest rate that met the SLA was {result.highest_passing_rate:g} req/s "
            f"({'; '.join(sla.reasons)})."
            if sla.reasons
            else f"Passed: every step met the SLA, up to {result.highest_passing_rate:g} req/s."
        )
    lat = result.latency
    steady = next((s for s in reversed(result.stages) if s.label != "ramp-up"), None)
    if steady is not None:
        lat = steady.latency
    error_pct = steady.error_pct if steady is not None else result.error_pct
    return (
        f"Passed: p95 {lat.p95_ms:.0f} ms is within the agreed {plan.sla_p95_ms:g} ms, p99 {lat.p99_ms:.0f} ms "
        f"within {plan.sla_p99_ms:g} ms, and errors {error_pct:.2f}% within {plan.sla_max_error_pct:g}%."
    )


# --- helpers ----------------------------------------------------------------------------------------------

Getter = Callable[[str], Any]
# A record pool for checking a plan's shape before the real records are pulled at run time.
_STAND_IN = loadmix.RecordPool(patient_ids=("example",), identifiers=(("urn:example", "1"),))

_SECOND_FIELDS = [
    "delivery",
    "target_rps",
    "sent",
    "dropped",
    "answered",
    "failed",
    "errors",
    "throughput",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "statuses",
    "error_kinds",
]


def _second_row(run_id: int, lease: int, second: SecondStats) -> LoadTestSecond:
    lat = second.latency
    return LoadTestSecond(
        run_id=run_id,
        delivery=lease,
        second=second.second,
        target_rps=second.target_rps,
        sent=second.sent,
        dropped=second.dropped,
        answered=second.answered,
        failed=second.failed,
        errors=second.errors,
        throughput=second.throughput,
        p50_ms=lat.p50_ms,
        p90_ms=lat.p90_ms,
        p95_ms=lat.p95_ms,
        p99_ms=lat.p99_ms,
        max_ms=lat.max_ms,
        statuses={str(code): count for code, count in second.statuses.items()},
        error_kinds=dict(second.error_kinds),
    )


def _plan_brief(plan: LoadTestPlan) -> dict[str, Any]:
    return {
        "load": load_sentence(plan),
        "target_rps": target_rate(plan),
        "weights": weights(plan),
        "sla": {
            "p95_ms": plan.sla_p95_ms,
            "p99_ms": plan.sla_p99_ms,
            "max_error_pct": plan.sla_max_error_pct,
            "abort_error_pct": plan.abort_error_pct,
        },
    }


def _engine_plan(get: Getter, mix: tuple[loadmix.RequestType, ...]) -> LoadPlan:
    staircase = None
    if get("load_mode") == LoadMode.STAIRCASE:
        staircase = Staircase(tuple(_staircase_rates(get)), int(get("staircase_step_s") or 0))
    return LoadPlan(
        mix=mix,
        rate=target_rate(_as_mapping(get)),
        duration_s=int(get("duration_s") or 0),
        ramp_s=int(get("ramp_s") or 0),
        concurrency=int(get("concurrency") or 0),
        staircase=staircase,
        sla=Sla(
            p95_ms=_float_or_none(get("sla_p95_ms")),
            p99_ms=_float_or_none(get("sla_p99_ms")),
            max_error_pct=_float_or_none(get("sla_max_error_pct")),
        ),
        abort=AbortRule(error_pct=float(get("abort_error_pct") or 0)),
        seed=1,
    )


def _staircase_rates(get: Getter) -> list[float]:
    start = float(get("staircase_start") or 0)
    step = float(get("staircase_step") or 0)
    steps = int(get("staircase_steps") or 0)
    return [round(start + step * i, 6) for i in range(steps)]


def _normalised(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values with the fields the chosen mode does not use put back to their defaults."""
    cleaned = dict(values)
    used = MODE_FIELDS.get(str(values.get("load_mode")), ())
    for name, default in DEFAULTS.items():
        if name not in used:
            cleaned[name] = default
    return cleaned


def _getter(values: Mapping[str, Any] | LoadTestPlan) -> Getter:
    if isinstance(values, LoadTestPlan):
        return lambda name: getattr(values, name)
    return lambda name: values.get(name)


def _as_mapping(get: Getter) -> dict[str, Any]:
    return {name: get(name) for name in PLAN_FIELDS}


def _positive(get: Getter, name: str, words: str) -> float:
    value = get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PlanRefused(f"Give {words}: a number above 0.", field=name)
    return float(value)


def _number(get: Getter, name: str, words: str, *, upper: float) -> float:
    value = get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanRefused(f"{words} is required: a number from 0 to {upper:g}.", field=name)
    if not 0 <= value <= upper:
        raise PlanRefused(f"{words} must be from 0 to {upper:g}.", field=name)
    return float(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _plain(value: Any) -> Any:
    # Hash 2 and 2.0 alike: a rate saved from a form or from JSON must not change the hash.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
