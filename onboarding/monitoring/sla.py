"""SLA figures per live connection, the hypercare stabilisation report, and the handoff to operations.

Uptime counts the checks outside planned maintenance: a check failing inside the EHR's window is
planned downtime, shown apart and never held against the connection.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from onboarding.live.models import LivePhase, LiveState
from onboarding.live.traffic import traffic_summary
from onboarding.monitoring.models import Alert, HealthCheck
from onboarding.monitoring.services import LIVE, percentile
from portal import audit
from portal.access import User, require_perm

HANDOFF_PERM = "portal.change_tenant"
SLA_DAYS = 7
SLA_WEEKS = 4


class HandoffRefused(ValueError):
    """A handoff that cannot be made yet, with what to do first."""


@dataclass(frozen=True)
class Period:
    """The SLA figures of one day or week."""

    label: str
    checks: int
    ok: int
    failed: int  # outside planned maintenance
    planned: int  # failed inside it
    uptime_pct: float | None
    p95_ms: float | None
    planned_minutes: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.label,
            "checks": self.checks,
            "ok": self.ok,
            "failed": self.failed,
            "planned_downtime_checks": self.planned,
            "planned_downtime_minutes": self.planned_minutes,
            "uptime_pct": self.uptime_pct,
            "p95_ms": self.p95_ms,
        }


def _period(label: str, rows: list[tuple[datetime, bool, bool, float | None]], interval_s: int) -> Period:
    ok = sum(1 for _, good, _, _ in rows if good)
    planned = sum(1 for _, good, plan, _ in rows if not good and plan)
    failed = len(rows) - ok - planned
    latencies = sorted(ms for _, good, _, ms in rows if good and ms is not None)
    counted = ok + failed
    return Period(
        label=label,
        checks=len(rows),
        ok=ok,
        failed=failed,
        planned=planned,
        uptime_pct=round(100 * ok / counted, 3) if counted else None,
        p95_ms=round(percentile(latencies, 0.95), 1) if latencies else None,
        planned_minutes=round(planned * interval_s / 60, 1),
    )


@dataclass(frozen=True)
class SlaFigures:
    days: list[Period]
    weeks: list[Period]


def sla_figures(live: LiveState, *, interval_s: int, now: datetime | None = None) -> SlaFigures:
    """Uptime and p95 per day (the last 7, in the tenant's zone) and per week (the last 4, ISO weeks)."""
    now = now or timezone.now()
    zone = ZoneInfo(live.onboarding.tenant.timezone)
    today = now.astimezone(zone).date()
    first_week = today - timedelta(days=today.weekday() + 7 * (SLA_WEEKS - 1))
    since = datetime.combine(min(first_week, today - timedelta(days=SLA_DAYS - 1)), datetime.min.time(), zone)
    rows = list(
        HealthCheck.objects.filter(onboarding_id=live.onboarding_id, ran_at__gte=since).values_list(
            "ran_at", "ok", "planned", "latency_ms"
        )
    )
    by_day: dict[date, list[tuple[datetime, bool, bool, float | None]]] = {}
    for row in rows:
        by_day.setdefault(row[0].astimezone(zone).date(), []).append(row)
    days = [
        _period((today - timedelta(days=n)).isoformat(), by_day.get(today - timedelta(days=n), []), interval_s)
        for n in range(SLA_DAYS)
    ]
    weeks = []
    for n in range(SLA_WEEKS):
        start = today - timedelta(days=today.weekday() + 7 * n)
        week_rows = [r for d in range(7) for r in by_day.get(start + timedelta(days=d), [])]
        year, week, _ = start.isocalendar()
        weeks.append(_period(f"{year}-W{week:02d}", week_rows, interval_s))
    return SlaFigures(days=days, weeks=weeks)


# --- Hypercare ----------------------------------------------------------------------------------------


def hypercare_until(live: LiveState) -> datetime | None:
    """When the connection's hypercare ends: the go-live's date, else the default period after it went live."""
    if live.hypercare_until is not None:
        return live.hypercare_until
    if live.live_since is None:
        return None
    return live.live_since + timedelta(days=settings.MONITORING_HYPERCARE_DAYS)


def stabilisation_report(live: LiveState, now: datetime | None = None) -> dict[str, Any]:
    """How hypercare went: alerts opened and resolved, time to acknowledge, uptime, and whether traffic is steady."""
    now = now or timezone.now()
    # From go-live until now: hypercare lasts until the handoff, even past its planned end.
    since = live.live_since or now
    until = live.handed_off_at or now
    alerts = list(Alert.objects.filter(onboarding_id=live.onboarding_id, opened_at__gte=since, opened_at__lte=until))
    acks = [(a.acknowledged_at - a.opened_at).total_seconds() / 60 for a in alerts if a.acknowledged_at]
    checks = HealthCheck.objects.filter(onboarding_id=live.onboarding_id, ran_at__gte=since, ran_at__lte=until)
    ok = checks.filter(ok=True).count()
    failed = checks.filter(ok=False, planned=False).count()
    planned = checks.filter(ok=False, planned=True).count()
    return {
        "from": since,
        "until": until,
        "ended": hypercare_until(live) is not None and now >= (hypercare_until(live) or now),
        "alerts_opened": len(alerts),
        "alerts_resolved": sum(1 for a in alerts if a.resolved_at is not None),
        "alerts_open_now": Alert.objects.filter(onboarding_id=live.onboarding_id, resolved_at__isnull=True).count(),
        "alerts_by_kind": {kind: sum(1 for a in alerts if a.kind == kind) for kind in sorted({a.kind for a in alerts})},
        "acknowledged": len(acks),
        "median_minutes_to_acknowledge": round(statistics.median(acks), 1) if acks else None,
        "checks": ok + failed + planned,
        "uptime_pct": round(100 * ok / (ok + failed), 3) if ok + failed else None,
        "planned_downtime_checks": planned,
        **traffic_steadiness(live, now=until),
    }


def traffic_steadiness(live: LiveState, *, now: datetime, days: int = 7) -> dict[str, Any]:
    """Production requests per day over the last days, and whether they are steady (no silent day,
    and no day below half or above twice the median)."""
    start = now - timedelta(days=days)
    daily = [
        traffic_summary(
            live.onboarding_id, since=start + timedelta(days=n), until=start + timedelta(days=n + 1)
        ).requests
        for n in range(days)
    ]
    median = statistics.median(daily) if daily else 0
    if not any(daily):
        steady, why = False, "No production traffic has gone through the portal yet."
    elif 0 in daily:
        steady, why = False, "Some days had no production traffic at all."
    elif any(n < median / 2 or n > median * 2 for n in daily):
        steady, why = False, "Daily traffic swings by more than half or double the median."
    else:
        steady, why = True, "Traffic is steady: every day within half and double the median."
    return {"traffic_per_day": daily, "traffic_steady": steady, "traffic_sentence": why}


def hand_off(*, user: User, live: LiveState, request: HttpRequest | None = None) -> LiveState:
    """End hypercare: the connection becomes operational, recorded on its live state and audited."""
    require_perm(user, HANDOFF_PERM, live.tenant)
    with transaction.atomic():
        locked = LiveState.objects.select_for_update().select_related("onboarding__tenant").get(pk=live.pk)
        if locked.stage not in LIVE:
            raise HandoffRefused("The connection is not live, so there is nothing to hand off.")
        if locked.phase == LivePhase.OPERATIONAL:
            raise HandoffRefused("The connection was handed off to operations already.")
        until = hypercare_until(locked)
        now = timezone.now()
        if until is not None and now < until:
            raise HandoffRefused(f"Hypercare runs until {until:%Y-%m-%d %H:%M} UTC: hand off once it has ended.")
        if Alert.objects.filter(onboarding_id=locked.onboarding_id, resolved_at__isnull=True).exists():
            raise HandoffRefused("An alert is still open: resolve it before handing off.")
        report = stabilisation_report(locked, now)
        locked.phase = LivePhase.OPERATIONAL
        locked.handed_off_at = now
        locked.handed_off_by = user  # type: ignore[assignment]
        locked.save(update_fields=["phase", "handed_off_at", "handed_off_by", "updated_at"])
        audit.record(
            action="monitoring.handed_off",
            actor=user,
            tenant=locked.tenant,
            obj=locked.onboarding,
            request=request,
            detail={
                key: report[key]
                for key in ("alerts_opened", "alerts_resolved", "median_minutes_to_acknowledge", "uptime_pct")
            }
            | {"traffic_steady": report["traffic_steady"]},
        )
    return locked
