"""Reads of monitoring through the tenants a person may see: another tenant's alert or connection is a 404."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.safestring import SafeString

from connections.selectors import get_connection_for_user
from onboarding.live.models import LiveState
from onboarding.live.state import live_states
from onboarding.monitoring import charts
from onboarding.monitoring.models import Alert, DriftRun, HealthCheck, Monitor, MonitorStatus
from portal.access import User, tenants_for

SPARKLINE_HOURS = 6


def alerts_for(user: User) -> QuerySet[Alert]:
    """Alerts of the tenants the user may see, newest first."""
    return Alert.objects.filter(tenant__in=tenants_for(user)).select_related(
        "onboarding__connection", "tenant", "assigned_to", "acknowledged_by"
    )


def get_alert_for_user(user: User, code: uuid.UUID | str) -> Alert:
    """An alert the user may see, else 404."""
    try:
        return alerts_for(user).get(code=code)
    except (Alert.DoesNotExist, ValueError):
        raise Http404("No such alert.") from None


def get_live_for_user(user: User, code: uuid.UUID | str) -> LiveState:
    """The live state of a connection the user may see (live now or once), else 404."""
    connection = get_connection_for_user(user, code)
    live = (
        LiveState.objects.filter(onboarding__connection=connection)
        .select_related("onboarding__connection", "onboarding__tenant", "tenant", "handed_off_by")
        .first()
    )
    if live is None:
        raise Http404("This connection has not gone live.")
    return live


def drift_runs_of(live: LiveState) -> QuerySet[DriftRun]:
    """The connection's drift checks, newest first."""
    return DriftRun.objects.filter(onboarding_id=live.onboarding_id).select_related("alert")


def checks_of(live: LiveState, *, since: datetime) -> QuerySet[HealthCheck]:
    """The connection's health checks since a moment, oldest first."""
    return HealthCheck.objects.filter(onboarding_id=live.onboarding_id, ran_at__gte=since).order_by("ran_at")


@dataclass(frozen=True)
class LiveRow:
    """One live connection on the hypercare dashboard."""

    live: LiveState
    status: str
    status_label: str
    open_alerts: int
    days_live: int | None
    sparkline: SafeString
    last_latency_ms: float | None

    @property
    def connection(self):  # type: ignore[no-untyped-def]
        return self.live.onboarding.connection


def dashboard_rows(user: User, now: datetime | None = None) -> list[LiveRow]:
    """Every live connection the user may see, with its status, sparkline, open alerts and days live.

    A fixed number of queries for any number of connections: states, monitors, open alerts, checks.
    """
    now = now or timezone.now()
    states = list(live_states(tenants=tenants_for(user)).order_by("tenant__name", "onboarding__connection__name"))
    ids = [s.onboarding_id for s in states]
    monitors = {m.onboarding_id: m for m in Monitor.objects.filter(onboarding_id__in=ids)}
    open_counts = dict(
        Alert.objects.filter(onboarding_id__in=ids, resolved_at__isnull=True)
        .values_list("onboarding_id")
        .annotate(n=Count("id"))
        .values_list("onboarding_id", "n")
    )
    series: dict[int, list[tuple[datetime, float | None, bool]]] = {i: [] for i in ids}
    for onboarding_id, ran_at, latency, ok in (
        HealthCheck.objects.filter(onboarding_id__in=ids, ran_at__gte=now - timedelta(hours=SPARKLINE_HOURS))
        .order_by("ran_at")
        .values_list("onboarding_id", "ran_at", "latency_ms", "ok")
    ):
        series[onboarding_id].append((ran_at, latency, ok))
    rows = []
    for state in states:
        monitor = monitors.get(state.onboarding_id)
        status = monitor.status if monitor else MonitorStatus.UNKNOWN
        name = state.onboarding.connection.name
        rows.append(
            LiveRow(
                live=state,
                status=status,
                status_label=MonitorStatus(status).label,
                open_alerts=open_counts.get(state.onboarding_id, 0),
                days_live=(now - state.live_since).days if state.live_since else None,
                sparkline=charts.sparkline(
                    series[state.onboarding_id], chart_id=f"spark-{state.onboarding.code}", name=name
                ),
                last_latency_ms=monitor.last_latency_ms if monitor else None,
            )
        )
    return rows
