"""Reads of load-test reports for the run page, the API and the evidence pack.

Callers reach the run through the access helpers first (``onboarding.engine.selectors``); these
reads only follow it to its report, its per-second rows and the connection's previous test.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.utils.safestring import SafeString

from onboarding.loadtest import charts
from onboarding.models import LoadTestPlan, LoadTestReport, LoadTestSecond, Step, StepRun
from portal.access import User, tenants_for

# Figures the comparison with the previous test shows: (key path in the summary, label, unit, lower is better).
COMPARED = (
    (("target_rps",), "Target rate", "req/s", None),
    (("achieved_rps",), "Achieved rate", "req/s", False),
    (("latency", "p50_ms"), "p50", "ms", True),
    (("latency", "p95_ms"), "p95", "ms", True),
    (("latency", "p99_ms"), "p99", "ms", True),
    (("latency", "max_ms"), "max", "ms", True),
    (("error_pct",), "Errors", "%", True),
    (("dropped",), "Dropped", "requests", True),
    (("highest_passing_rate",), "Highest rate meeting the SLA", "req/s", False),
)


def load_test_runs_for(user: User) -> QuerySet[StepRun]:
    """Load-test attempts of the tenants the user may see."""
    return StepRun.objects.filter(step=Step.LOAD_TEST, onboarding__tenant__in=tenants_for(user)).select_related(
        "onboarding__tenant", "onboarding__connection"
    )


def get_load_test_run(user: User, code: uuid.UUID | str) -> StepRun:
    """A load-test run the user may see, else 404 (another tenant's looks missing)."""
    try:
        return load_test_runs_for(user).get(code=code)
    except (StepRun.DoesNotExist, ValueError):
        raise Http404("No such load-test run.") from None


def report_for(run: StepRun) -> LoadTestReport | None:
    """The stored report of a load-test run (a cancelled run has one too), or None."""
    if run.step != Step.LOAD_TEST:
        return None
    return LoadTestReport.objects.filter(run=run).select_related("plan").first()


def seconds_for(run: StepRun) -> list[LoadTestSecond]:
    """The run's per-second rows, in order: the final series, or what a running test measured so far."""
    return list(LoadTestSecond.objects.filter(run=run).order_by("second"))


def previous_report(run: StepRun) -> LoadTestReport | None:
    """The report of the newest earlier load test of the same connection, if any."""
    return (
        LoadTestReport.objects.filter(
            run__onboarding_id=run.onboarding_id, run__step=Step.LOAD_TEST, run__attempt__lt=run.attempt
        )
        .select_related("run", "plan")
        .order_by("-run__attempt")
        .first()
    )


@dataclass(frozen=True)
class Compared:
    """One figure of this test beside the previous test's."""

    label: str
    unit: str
    previous: float | None
    now: float | None
    change: str  # "better", "worse", "same" or "" (not comparable)

    @property
    def delta(self) -> float | None:
        if self.previous is None or self.now is None:
            return None
        return round(self.now - self.previous, 3)


def comparison(summary: dict[str, Any], previous: dict[str, Any]) -> list[Compared]:
    """This test's main figures beside the previous test's, each marked better, worse or the same."""
    rows = []
    for path, label, unit, lower_is_better in COMPARED:
        now, before = _dig(summary, path), _dig(previous, path)
        if now is None and before is None:
            continue
        change = ""
        if now is not None and before is not None and lower_is_better is not None:
            if abs(now - before) <= max(abs(before) * 0.02, 1e-9):
                change = "same"
            elif (now < before) == lower_is_better:
                change = "better"
            else:
                change = "worse"
        rows.append(Compared(label, unit, before, now, change))
    return rows


@dataclass(frozen=True)
class Charts:
    """The report's three charts, as SVG markup."""

    latency: SafeString
    throughput: SafeString
    histogram: SafeString


def charts_for(run: StepRun, summary: dict[str, Any], rows: list[LoadTestSecond]) -> Charts:
    """The charts of a run from its per-second rows and its summary's histogram."""
    points = [
        charts.SecondPoint(
            second=row.second,
            answered=row.answered,
            p50_ms=row.p50_ms,
            p95_ms=row.p95_ms,
            p99_ms=row.p99_ms,
            target_rps=row.target_rps,
            throughput=row.throughput,
            errors=row.errors,
        )
        for row in rows
    ]
    sla = ((summary.get("plan") or {}).get("sla") or {}).get("p95_ms")
    if sla is None and run.is_active:
        plan = _plan_of(run)
        sla = plan.sla_p95_ms if plan is not None else None
    # While the run goes, the time axis spans the plan, so the charts fill up as it runs.
    span = run.progress_total if run.is_active and run.progress_total > 1 else 0
    return Charts(
        latency=charts.latency_over_time(points, sla_p95_ms=sla, chart_id=f"latency-{run.code}", span_s=span),
        throughput=charts.throughput_over_time(points, chart_id=f"throughput-{run.code}", span_s=span),
        histogram=charts.latency_histogram(summary.get("histogram") or [], chart_id=f"histogram-{run.code}"),
    )


def live_summary(rows: list[LoadTestSecond]) -> dict[str, Any]:
    """What a running test has measured so far, from the seconds it wrote (no report exists yet)."""
    answered = sum(r.answered for r in rows)
    return {
        "seconds": len(rows),
        "sent": sum(r.sent for r in rows),
        "answered": answered,
        "errors": sum(r.errors for r in rows),
        "dropped": sum(r.dropped for r in rows),
        "worst_p95_ms": max((r.p95_ms for r in rows if r.answered), default=None),
    }


def _plan_of(run: StepRun) -> LoadTestPlan | None:
    """The plan a running test runs: the latest version (a change would have voided its permission)."""
    return LoadTestPlan.objects.filter(onboarding_id=run.onboarding_id).order_by("-version").first()


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_page(run: StepRun) -> dict[str, Any]:
    """What the run page shows of a load-test run: live figures while it runs, then the report.

    The summary is the stored report's (a cancelled run has one, though its result stays empty),
    else the run's result; the charts come from the per-second rows, as far as they go.
    """
    report = report_for(run)
    rows = seconds_for(run)
    summary: dict[str, Any] = (report.summary if report is not None else None) or dict(run.result or {})
    measured = bool(summary.get("latency")) or bool(rows)
    previous = previous_report(run) if report is not None else None
    return {
        "lt_report": report,
        "lt_summary": summary if summary.get("latency") else None,
        "lt_live": live_summary(rows) if rows and report is None and run.is_active else None,
        # A run that ended with no report (its worker was lost for good) still shows what it measured.
        "lt_partial": live_summary(rows) if rows and report is None and not run.is_active else None,
        "lt_charts": charts_for(run, summary, rows) if measured else None,
        "lt_previous": previous,
        "lt_comparison": comparison(summary, previous.summary) if previous is not None and report is not None else [],
        "lt_tables": tables(summary) if summary.get("latency") else None,
    }


def tables(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's tables, as rows the template can loop over."""
    labels = summary.get("type_labels") or {}
    statuses = summary.get("statuses") or {}
    attempts = (summary.get("answered") or 0) + (summary.get("failed") or 0)
    return {
        "types": [
            {**row, "label": labels.get(row.get("name"), row.get("name"))} for row in summary.get("per_type") or []
        ],
        "statuses": [
            {
                "status": code,
                "count": count,
                "pct": round(100 * count / attempts, 3) if attempts else 0.0,
                "error": not str(code).startswith("2"),
            }
            for code, count in sorted(statuses.items())
        ],
        "kinds": [
            {"kind": kind, "count": count, "pct": (summary.get("error_pct_by_kind") or {}).get(kind, 0.0)}
            for kind, count in sorted((summary.get("errors_by_kind") or {}).items())
        ],
        "stages": summary.get("stages") or [],
        "dropped": sorted((summary.get("dropped_by_reason") or {}).items()),
    }
