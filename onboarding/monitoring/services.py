"""Writes of monitoring: handing out due checks, recording a check, opening and resolving alerts.

- `ensure_monitors` and `claim_due` are the beat tick: a fixed number of queries whatever the number
  of live connections (the monitors are claimed with SKIP LOCKED and moved on in one UPDATE).
- `record_check` runs a probe's result through the alert rules in one transaction with the monitor
  row locked. A check is unique per monitor and due time, and at most one alert per connection and
  kind is open (constraints, not lookups), so a redelivered task opens nothing twice and each alert
  notifies once when it opens and once when it resolves.
- Acknowledging and assigning an alert are audited actions of vendor staff.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from connections.errors import RemoteError
from connections.services import build_adapter
from onboarding.live.maintenance import maintenance_at
from onboarding.live.models import LiveStage, LiveState
from onboarding.live.probe import ProbeResult, probe
from onboarding.live.traffic import traffic_summary
from onboarding.models import Onboarding
from onboarding.monitoring import policy as policies
from onboarding.monitoring.models import Alert, AlertKind, HealthCheck, Monitor, MonitoringPolicy, MonitorStatus
from portal import audit
from portal.access import AuthUser, User, require_perm, tenants_for
from portal.notifications.services import NotificationKind, notify, notify_address
from portal.people.selectors import staff_assigned_to
from portal.roles import CUSTOMER_SUCCESS, ENGINEERS

logger = logging.getLogger(__name__)

LIVE = (LiveStage.PILOT, LiveStage.FULL)
ACT_PERM = "onboarding.run_step"
# The latency rule needs a few checks in its window before a p95 means anything.
LATENCY_MIN_CHECKS = 3


class AlertRefused(ValueError):
    """An alert action that cannot be taken (already resolved, an assignee who may not see it...)."""


# --- The beat tick ---------------------------------------------------------------------------------------


def _spread(onboarding_id: int, seconds: int) -> timedelta:
    # New monitors start spread over one interval, so a thousand connections that went live together
    # are not all checked in the same second ever after.
    return timedelta(seconds=zlib.crc32(str(onboarding_id).encode()) % max(seconds, 1))


def ensure_monitors(now: datetime | None = None, *, onboarding_id: int | None = None) -> int:
    """Make the monitor of every live connection (or of that one) that has none yet; returns how many were made."""
    now = now or timezone.now()
    missing_states = LiveState.objects.filter(stage__in=LIVE, onboarding__monitor__isnull=True)
    if onboarding_id is not None:
        missing_states = missing_states.filter(onboarding_id=onboarding_id)
    missing = list(missing_states.values_list("onboarding_id", "tenant_id"))
    if not missing:
        return 0
    tenant_ids = {tenant_id for _, tenant_id in missing}
    known = {p.tenant_id: p for p in MonitoringPolicy.objects.filter(tenant_id__in=tenant_ids)}
    monitors = []
    for onboarding_id, tenant_id in missing:
        policy = known.get(tenant_id) or MonitoringPolicy(tenant_id=tenant_id)
        seconds = policies.interval_s(policy)
        monitors.append(
            Monitor(
                onboarding_id=onboarding_id,
                tenant_id=tenant_id,
                interval_s=seconds,
                # The first check soon after go-live, within one interval (and a minute at most).
                next_check_at=now + _spread(onboarding_id, min(seconds, 60)),
                next_drift_at=now + timedelta(days=policy.drift_every_days),
            )
        )
    Monitor.objects.bulk_create(monitors, ignore_conflicts=True)
    return len(monitors)


def claim_due(now: datetime | None = None, *, limit: int | None = None) -> list[tuple[int, datetime]]:
    """Claim the checks due by now: [(monitor id, due time)], each moved on to its next due time.

    Rows another beat or transaction holds are skipped (SKIP LOCKED), so no check is handed out twice.
    """
    now = now or timezone.now()
    limit = limit or int(settings.MONITORING_DISPATCH_BATCH)
    with transaction.atomic():
        due = list(
            Monitor.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(next_check_at__lte=now, onboarding__live__stage__in=LIVE)
            .order_by("next_check_at")
            .values_list("id", "next_check_at", "interval_s")[:limit]
        )
        if not due:
            return []
        moved = []
        for monitor_id, due_at, seconds in due:
            following = due_at + timedelta(seconds=seconds)
            # Behind by more than an interval (an outage of beat): start again from now, skip the backlog.
            moved.append(
                Monitor(id=monitor_id, next_check_at=following if following > now else now + timedelta(seconds=seconds))
            )
        Monitor.objects.bulk_update(moved, ["next_check_at"])
    return [(monitor_id, due_at) for monitor_id, due_at, _ in due]


# --- One check -------------------------------------------------------------------------------------------


def run_probe(live: LiveState) -> ProbeResult:
    """Probe a live connection through its adapter; a failure to even build the adapter is a failed probe."""
    if not live.probe_patient_id:
        return ProbeResult(False, None, None, "no_probe_patient", "No probe patient was chosen at go-live.")
    try:
        adapter = build_adapter(live.onboarding.connection)
    except RemoteError as exc:
        return ProbeResult(False, None, None, exc.kind.value, exc.message)
    try:
        return probe(adapter, live.probe_patient_id)
    finally:
        adapter.client.close()


def check_monitor(monitor_id: int, due_at: datetime) -> HealthCheck | None:
    """Run one claimed check: probe, then record it. None when the connection is no longer live or
    this check was recorded already (a redelivered task)."""
    monitor = (
        Monitor.objects.select_related("onboarding__connection", "onboarding__tenant").filter(pk=monitor_id).first()
    )
    if monitor is None:
        return None
    live = LiveState.objects.filter(onboarding_id=monitor.onboarding_id, stage__in=LIVE).first()
    if live is None or HealthCheck.objects.filter(monitor_id=monitor_id, due_at=due_at).exists():
        return None
    live.onboarding = monitor.onboarding
    result = run_probe(live)
    return record_check(monitor, live, due_at=due_at, result=result)


def record_go_live_check(onboarding_id: int, result: ProbeResult, *, now: datetime | None = None) -> HealthCheck | None:
    """One of the go-live step's first health checks, kept in the series as a scheduled check is, so
    the hypercare dashboard shows the connection's state and latency from its first minute live
    rather than "not checked yet" until beat's first check. None when it is not live."""
    now = now or timezone.now()
    ensure_monitors(now, onboarding_id=onboarding_id)
    monitor = (
        Monitor.objects.select_related("onboarding__connection", "onboarding__tenant")
        .filter(onboarding_id=onboarding_id)
        .first()
    )
    live = LiveState.objects.filter(onboarding_id=onboarding_id, stage__in=LIVE).first()
    if monitor is None or live is None:
        return None
    live.onboarding = monitor.onboarding
    return record_check(monitor, live, due_at=now, result=result, now=now)


def record_check(
    monitor: Monitor, live: LiveState, *, due_at: datetime, result: ProbeResult, now: datetime | None = None
) -> HealthCheck | None:
    """Store a probe's result and apply every alert rule to the connection, in one transaction."""
    now = now or timezone.now()
    onboarding = monitor.onboarding
    window = maintenance_at(onboarding, now)
    check = HealthCheck(
        monitor=monitor,
        onboarding=onboarding,
        due_at=due_at,
        ran_at=now,
        ok=result.ok,
        planned=not result.ok and window is not None,
        latency_ms=result.latency_ms,
        metadata_ms=result.metadata_ms,
        patient_ms=result.patient_ms,
        error_kind=result.error_kind[:32],
        error_message=result.error_message[:300],
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                check.save()
        except IntegrityError:
            return None  # recorded by an earlier delivery of this task
        locked = Monitor.objects.select_for_update().get(pk=monitor.pk)
        if locked.last_due_at is not None and due_at < locked.last_due_at:
            return check  # a late, older check: kept in the series, but the state is newer than it
        policy = policies.policy_for(onboarding.tenant)
        _apply_check(locked, check, policy, now)
        if window is None:
            _traffic_rules(locked, live, policy, now)
        locked.last_due_at, locked.last_ran_at = due_at, now
        locked.save(
            update_fields=[
                "status",
                "consecutive_failures",
                "last_due_at",
                "last_ran_at",
                "last_latency_ms",
                "last_error",
            ]
        )
    return check


def _apply_check(monitor: Monitor, check: HealthCheck, policy: MonitoringPolicy, now: datetime) -> None:
    onboarding = monitor.onboarding
    monitor.last_latency_ms = check.latency_ms
    monitor.last_error = "" if check.ok else f"{check.error_kind}: {check.error_message}"[:300]
    if check.ok:
        monitor.consecutive_failures = 0
        monitor.status = MonitorStatus.UP
        resolve_alert(onboarding, AlertKind.CHECKS_FAILING, now=now, resolution="Health checks pass again.")
    elif check.planned:
        # Planned downtime: recorded, never counted towards an alert; an outage already open stays open.
        monitor.status = MonitorStatus.MAINTENANCE
    else:
        monitor.consecutive_failures += 1
        monitor.status = MonitorStatus.DOWN
        if monitor.consecutive_failures >= policy.failures_to_alert:
            alert = open_alert(
                onboarding,
                AlertKind.CHECKS_FAILING,
                now=now,
                title=f"{onboarding.connection.name} is not answering its health checks",
                detail=(
                    f"{monitor.consecutive_failures} health checks in a row failed "
                    f"(the policy alerts after {policy.failures_to_alert}). Last error: {monitor.last_error}"
                ),
                facts={"failures": monitor.consecutive_failures, "error_kind": check.error_kind},
            )
            _escalate_if_due(alert, policy, now)
        else:
            monitor.status = MonitorStatus.DEGRADED if monitor.consecutive_failures else MonitorStatus.UP
    if check.ok or not check.planned:
        _latency_rule(monitor, policy, now)


def _latency_rule(monitor: Monitor, policy: MonitoringPolicy, now: datetime) -> None:
    since = now - timedelta(minutes=policy.latency_window_min)
    latencies = sorted(
        ms
        for ms in HealthCheck.objects.filter(
            onboarding_id=monitor.onboarding_id, ran_at__gte=since, ok=True, latency_ms__isnull=False
        ).values_list("latency_ms", flat=True)
        if ms is not None
    )
    if len(latencies) < LATENCY_MIN_CHECKS:
        return
    p95 = percentile(latencies, 0.95)
    onboarding = monitor.onboarding
    if p95 > policy.latency_p95_ms:
        open_alert(
            onboarding,
            AlertKind.LATENCY,
            now=now,
            title=f"{onboarding.connection.name} answers slowly",
            detail=(
                f"The p95 of the health checks over the last {policy.latency_window_min} minutes is "
                f"{p95:.0f} ms, above the threshold of {policy.latency_p95_ms} ms."
            ),
            facts={"p95_ms": round(p95, 1), "threshold_ms": policy.latency_p95_ms, "checks": len(latencies)},
        )
    else:
        resolve_alert(onboarding, AlertKind.LATENCY, now=now, resolution=f"p95 back to {p95:.0f} ms.")


def _traffic_rules(monitor: Monitor, live: LiveState, policy: MonitoringPolicy, now: datetime) -> None:
    onboarding = monitor.onboarding
    # Whole minutes up to and including the current one, which is still filling.
    until = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    errors = traffic_summary(onboarding.pk, since=until - timedelta(minutes=policy.error_window_min), until=until)
    if errors.requests >= policy.error_min_requests and errors.error_rate * 100 > policy.error_rate_pct:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(errors.errors_by_kind.items()))
        open_alert(
            onboarding,
            AlertKind.ERROR_RATE,
            now=now,
            title=f"Production requests to {onboarding.connection.name} are failing",
            detail=(
                f"{errors.errors} of {errors.requests} product requests failed in the last {policy.error_window_min} "
                f"minutes ({errors.error_rate * 100:.1f}%, threshold {policy.error_rate_pct:g}%): {kinds}."
            ),
            facts={"requests": errors.requests, "errors": errors.errors, "by_kind": errors.errors_by_kind},
        )
    elif errors.requests == 0 or errors.requests >= policy.error_min_requests:
        resolve_alert(onboarding, AlertKind.ERROR_RATE, now=now, resolution="The error rate is below the threshold.")
    if not policy.no_traffic_min:
        resolve_alert(onboarding, AlertKind.NO_TRAFFIC, now=now, resolution="The no-traffic alert was turned off.")
        return
    since = until - timedelta(minutes=policy.no_traffic_min)
    if live.live_since is None or live.live_since > since:
        return  # not live for a whole window yet: silence says nothing
    if traffic_summary(onboarding.pk, since=since, until=until).requests == 0:
        open_alert(
            onboarding,
            AlertKind.NO_TRAFFIC,
            now=now,
            title=f"No production traffic to {onboarding.connection.name}",
            detail=f"The product sent no request through this connection in the last {policy.no_traffic_min} minutes.",
            facts={"window_min": policy.no_traffic_min},
        )
    else:
        resolve_alert(onboarding, AlertKind.NO_TRAFFIC, now=now, resolution="Production traffic is back.")


def percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of an ascending list (share 0-1)."""
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]


# --- Alerts ------------------------------------------------------------------------------------------------


def open_alert(
    onboarding: Onboarding, kind: str, *, now: datetime, title: str, detail: str, facts: dict[str, Any]
) -> Alert:
    """The connection's open alert of this kind: the one already open, else a new one, announced once."""
    alert = Alert(
        onboarding=onboarding,
        tenant=onboarding.tenant,
        kind=kind,
        title=title[:200],
        detail=detail[:4000],
        facts=facts,
        opened_at=now,
    )
    try:
        with transaction.atomic():
            alert.save()
    except IntegrityError:
        return Alert.objects.get(onboarding=onboarding, kind=kind, resolved_at__isnull=True)
    audit.record(
        action="monitoring.alert_opened",
        tenant=onboarding.tenant,
        obj=alert,
        detail={"kind": kind, "title": alert.title},
    )
    _announce(alert, "opened")
    return alert


def resolve_alert(onboarding: Onboarding, kind: str, *, now: datetime, resolution: str) -> Alert | None:
    """Resolve the connection's open alert of this kind, if one is open; announced once."""
    alert = (
        Alert.objects.select_for_update()
        .filter(onboarding=onboarding, kind=kind, resolved_at__isnull=True)
        .select_related("onboarding__connection", "tenant")
        .first()
    )
    if alert is None:
        return None
    alert.resolved_at, alert.resolution = now, resolution[:300]
    alert.save(update_fields=["resolved_at", "resolution"])
    audit.record(
        action="monitoring.alert_resolved",
        tenant=alert.tenant,
        obj=alert,
        detail={"kind": kind, "open_for_s": round((now - alert.opened_at).total_seconds())},
    )
    _announce(alert, "resolved")
    return alert


def responders(alert: Alert) -> list[AuthUser]:
    """Who is told when the alert opens and resolves: the tenant's assigned vendor staff and its assignee."""
    people = {user.pk: user for user in staff_assigned_to(alert.tenant)}
    if alert.assigned_to is not None:
        people[alert.assigned_to.pk] = alert.assigned_to
    return list(people.values())


def _announce(alert: Alert, event: str) -> None:
    connection = alert.onboarding.connection
    kind = NotificationKind.ALERT_OPENED if event == "opened" else NotificationKind.ALERT_RESOLVED
    subject = (
        f"Alert: {alert.get_kind_display()} at {connection.name}"
        if event == "opened"
        else f"Resolved: {alert.get_kind_display()} at {connection.name}"
    )
    body = alert.detail if event == "opened" else f"{alert.title}: resolved. {alert.resolution}"
    notify(
        kind=kind,
        recipients=responders(alert),
        subject=subject,
        body=body[:2000],
        link=reverse("alert_detail", kwargs={"code": alert.code}),
        key=f"alert:{alert.code}:{event}",
        tenant=alert.tenant,
    )


def _escalate_if_due(alert: Alert, policy: MonitoringPolicy, now: datetime) -> None:
    if alert.escalated_at is not None or now - alert.opened_at < timedelta(minutes=policy.escalate_after_min):
        return
    # Conditional: of two checks racing past the limit, only one escalates.
    if not Alert.objects.filter(pk=alert.pk, escalated_at__isnull=True).update(escalated_at=now):
        return
    alert.escalated_at = now
    live = LiveState.objects.filter(onboarding_id=alert.onboarding_id).first()
    contacts = list(live.hypercare_contacts) if live is not None else []
    minutes = round((now - alert.opened_at).total_seconds() / 60)
    subject = f"Escalated: {alert.onboarding.connection.name} down for {minutes} minutes"
    body = f"{alert.title}, for {minutes} minutes now (escalation after {policy.escalate_after_min}). {alert.detail}"
    link = reverse("alert_detail", kwargs={"code": alert.code})
    key = f"alert:{alert.code}:escalated"
    user_ids = [c["user_id"] for c in contacts if isinstance(c, dict) and isinstance(c.get("user_id"), int)]
    users = list(get_user_model().objects.filter(pk__in=user_ids, is_active=True))
    notify(
        kind=NotificationKind.ALERT_OPENED,
        recipients=users,
        subject=subject,
        body=body[:2000],
        link=link,
        key=key,
        tenant=alert.tenant,
    )
    for contact in contacts:
        if isinstance(contact, dict) and not contact.get("user_id") and contact.get("email"):
            try:
                notify_address(
                    kind=NotificationKind.ALERT_OPENED,
                    email=str(contact["email"]),
                    subject=subject,
                    body=body[:2000],
                    link=link,
                    key=key,
                    tenant=alert.tenant,
                )
            except ValueError:
                logger.warning("A hypercare contact of onboarding %s has no usable email", alert.onboarding_id)
    audit.record(
        action="monitoring.alert_escalated",
        tenant=alert.tenant,
        obj=alert,
        detail={"contacts": len(contacts), "after_min": minutes},
    )


def acknowledge(*, user: User, alert: Alert, request: HttpRequest | None = None) -> Alert:
    """Mark the alert seen by this person (once; a second acknowledgement changes nothing)."""
    require_perm(user, ACT_PERM, alert.tenant)
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        if locked.acknowledged_at is not None:
            return locked
        locked.acknowledged_at = timezone.now()
        locked.acknowledged_by = user  # type: ignore[assignment]
        locked.save(update_fields=["acknowledged_at", "acknowledged_by"])
        audit.record(
            action="monitoring.alert_acknowledged", actor=user, tenant=locked.tenant, obj=locked, request=request
        )
    return locked


def assignable_people(alert: Alert) -> list[AuthUser]:
    """Who an alert may be given to: active people who may see its tenant (vendor staff, its hospital IT)."""
    users = (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(groups__name__in=(CUSTOMER_SUCCESS, ENGINEERS)) | Q(memberships__tenant=alert.tenant))
    )
    return [
        user for user in users.distinct().order_by("username") if tenants_for(user).filter(pk=alert.tenant_id).exists()
    ]


def assign(*, user: User, alert: Alert, assignee: AuthUser | None, request: HttpRequest | None = None) -> Alert:
    """Give the alert to one person (or to nobody); the assignee must be able to see the alert's tenant."""
    require_perm(user, ACT_PERM, alert.tenant)
    if assignee is not None and not tenants_for(assignee).filter(pk=alert.tenant_id).exists():
        raise AlertRefused("That person cannot see this hospital, so the alert cannot be theirs.")
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        if locked.assigned_to_id == (assignee.pk if assignee else None):
            return locked
        before = locked.assigned_to.get_username() if locked.assigned_to else ""
        locked.assigned_to = assignee
        locked.assigned_at = timezone.now() if assignee else None
        locked.save(update_fields=["assigned_to", "assigned_at"])
        audit.record(
            action="monitoring.alert_assigned",
            actor=user,
            tenant=locked.tenant,
            obj=locked,
            request=request,
            detail={"from": before, "to": assignee.get_username() if assignee else ""},
        )
    return locked


# --- Retention -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    checks: int


def purge_old_checks(now: datetime | None = None) -> Purged:
    """Delete health checks older than the retention period."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.MONITORING_CHECK_RETENTION_DAYS)
    deleted, _ = HealthCheck.objects.filter(ran_at__lt=cutoff).delete()
    return Purged(checks=deleted)
