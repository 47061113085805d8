"""What waits on each person: the first page after login, and `GET /api/v1/me/work/`.

- hospital IT: the requests of their tenant waiting for a decision (approvers decide, viewers see);
- customer success: rejections to answer, failed runs, and requests waiting on hospital IT, each
  with how long it has waited;
- engineers: the failed-runs queue;
- open monitoring alerts: customer success see those of their hospitals, and anyone sees the ones
  assigned to them.

Every list is bounded and read through the tenants the person may see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from onboarding.engine.selectors import latest_runs_query
from onboarding.gates import services as gates
from onboarding.gates.selectors import approvals_for
from onboarding.models import Approval, Decision, RunStatus, StepRun
from onboarding.monitoring.models import Alert
from onboarding.review import services as review
from portal.access import User, tenants_for
from portal.models import Tenant
from portal.people.selectors import tenants_assigned_to
from portal.roles import is_vendor_staff

LIMIT = 50
# Work on an archived connection waits on nobody: it stays readable by its links, out of the queues.
LIVE = {"onboarding__connection__archived_at": None}


@dataclass(frozen=True)
class WorkItem:
    """One thing that waits on someone: what it is, where, since when, and who owes it."""

    kind: str
    title: str
    tenant: str
    connection: str
    link: str
    since: datetime | None
    owed_by: str
    detail: str = ""
    zone: str = ""  # the hospital's time zone, to show `since` in

    @property
    def waited(self) -> str:
        """How long it has waited, in words."""
        return gates.duration(timezone.now() - self.since) if self.since else ""


@dataclass
class WorkSection:
    key: str
    title: str
    empty: str
    items: list[WorkItem] = field(default_factory=list)
    total: int = 0


def work_for(user: User) -> list[WorkSection]:
    """The sections of this person's work, in the order their role needs them."""
    sections: list[WorkSection] = []
    if not user.is_authenticated:
        return sections
    if not is_vendor_staff(user):
        sections.append(_decisions(user))
        return sections + _assigned_alerts(user)
    # Customer success are the vendor staff who create hospitals and drive their onboarding.
    if user.has_perm("portal.add_tenant"):
        # My hospitals: the ones this person is assigned to; all they may see when none are.
        mine = tenants_assigned_to(user)
        tenants = mine if mine.exists() else tenants_for(user)
        sections += [
            _alerts(user, tenants),
            _rejections(user, tenants),
            _failed_runs(tenants),
            _waiting_on_hospital(user, tenants),
        ]
    else:
        sections += _assigned_alerts(user)
    if user.has_perm("onboarding.review_runs"):
        sections.append(_review_queue(user))
    return sections


def _open_alerts(user: User) -> QuerySet[Alert]:
    return (
        Alert.objects.filter(tenant__in=tenants_for(user), resolved_at__isnull=True, **LIVE)
        .select_related("onboarding__tenant", "onboarding__connection", "assigned_to")
        .order_by("opened_at")
    )


def _alerts(user: User, tenants: QuerySet[Tenant]) -> WorkSection:
    alerts = _open_alerts(user).filter(Q(tenant__in=tenants) | Q(assigned_to_id=user.pk))
    section = WorkSection(key="alerts", title="Open alerts at live hospitals", empty="No alert is open.")
    return _fill(section, alerts, _alert_item)


def _assigned_alerts(user: User) -> list[WorkSection]:
    # Only for those an alert was given to: everyone else's page stays as their role has it.
    alerts = _open_alerts(user).filter(assigned_to_id=user.pk)
    if not alerts.exists():
        return []
    section = WorkSection(key="alerts", title="Open alerts assigned to you", empty="No alert is assigned to you.")
    return [_fill(section, alerts, _alert_item)]


def _alert_item(alert: Alert) -> WorkItem:
    onboarding = alert.onboarding
    owner = alert.assigned_to.get_username() if alert.assigned_to else "customer success"
    return WorkItem(
        kind="alert",
        title=alert.title,
        tenant=onboarding.tenant.name,
        connection=onboarding.connection.name,
        link=reverse("alert_detail", kwargs={"code": alert.code}),
        since=alert.opened_at,
        owed_by=owner,
        detail=("Acknowledged. " if alert.acknowledged_at else "Not acknowledged yet. ") + alert.detail[:160],
        zone=onboarding.tenant.timezone,
    )


def _decisions(user: User) -> WorkSection:
    pending = approvals_for(user).filter(decision="", voided_at__isnull=True, **LIVE).order_by("requested_at")
    may_decide = any(user.has_perm(gates.DECIDE_PERM, tenant) for tenant in tenants_for(user))
    section = WorkSection(
        key="decisions",
        title="Waiting for your decision" if may_decide else "Waiting for your hospital's approvers",
        empty="Nothing waits on your hospital's approvers.",
    )
    return _fill(section, pending, lambda a: _approval_item(a, "pending", "hospital IT"))


def _rejections(user: User, tenants: QuerySet[Tenant]) -> WorkSection:
    newer = Approval.objects.filter(
        onboarding=OuterRef("onboarding"), gate=OuterRef("gate"), requested_at__gt=OuterRef("requested_at")
    )
    rejected = (
        approvals_for(user)
        .filter(onboarding__tenant__in=tenants, decision=Decision.REJECTED, voided_at__isnull=True, **LIVE)
        .exclude(Exists(newer))
        .order_by("decided_at")
    )
    section = WorkSection(
        key="rejections", title="Rejected by hospital IT: change it and ask again", empty="No rejections to answer."
    )
    return _fill(section, rejected, lambda a: _approval_item(a, "rejected", "customer success"))


def _waiting_on_hospital(user: User, tenants: QuerySet[Tenant]) -> WorkSection:
    pending = (
        approvals_for(user)
        .filter(onboarding__tenant__in=tenants, decision="", voided_at__isnull=True, **LIVE)
        .order_by("requested_at")
    )
    section = WorkSection(key="waiting", title="Waiting on hospital IT", empty="Nothing waits on hospital IT.")
    return _fill(section, pending, lambda a: _approval_item(a, "waiting", "hospital IT"))


def _failed_runs(tenants: QuerySet[Tenant]) -> WorkSection:
    failed = (
        latest_runs_query()
        .filter(onboarding__tenant__in=tenants, status=RunStatus.FAILED, **LIVE)
        .exclude(error_kind__in=review.PRECONDITION_KINDS)
        .select_related("onboarding__tenant", "onboarding__connection")
        .order_by("finished_at")
    )
    section = WorkSection(
        key="failed", title="Failed runs", empty="No failed runs: every latest attempt passed or runs."
    )
    return _fill(section, failed, _run_item)


def _review_queue(user: User) -> WorkSection:
    runs = review.failed_runs(user, review.QueueFilters()).select_related(
        "onboarding__tenant", "onboarding__connection"
    )
    section = WorkSection(
        key="review", title="Failed validation runs to review", empty="The failed-runs queue is empty."
    )
    return _fill(section, runs, _run_item)


def _fill(section: WorkSection, rows: QuerySet[Any], make: Callable[[Any], WorkItem]) -> WorkSection:
    section.total = rows.count()
    section.items = [make(row) for row in rows[:LIMIT]]
    return section


def _approval_item(approval: Approval, kind: str, owed_by: str) -> WorkItem:
    onboarding = approval.onboarding
    try:
        label = gates.get_gate(approval.gate).label
    except KeyError:
        label = approval.gate
    since = approval.decided_at if kind == "rejected" else approval.requested_at
    detail = f"Reason: {approval.comment}" if kind == "rejected" else f"Asked by {approval.requested_by_label or '—'}"
    return WorkItem(
        kind=kind,
        title=f"{label}: {approval.artifact_label}",
        tenant=onboarding.tenant.name,
        connection=onboarding.connection.name,
        link=reverse("approval_detail", kwargs={"code": approval.code}),
        since=since,
        owed_by=owed_by,
        detail=detail,
        zone=onboarding.tenant.timezone,
    )


def _run_item(run: StepRun) -> WorkItem:
    onboarding = run.onboarding
    return WorkItem(
        kind="run_failed",
        title=f"{run.get_step_display()} attempt {run.attempt} failed ({run.error_kind or 'failed'})",
        tenant=onboarding.tenant.name,
        connection=onboarding.connection.name,
        link=reverse("run_detail", kwargs={"code": run.code}),
        since=run.finished_at,
        owed_by="customer success",
        detail=run.error_message[:200],
        zone=onboarding.tenant.timezone,
    )
