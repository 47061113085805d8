"""Reads of pipelines and runs, always through the tenants the user may see."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Q, QuerySet

from connections.models import EHRConnection
from onboarding.models import ACTIVE_STATUSES, Onboarding, RunStatus, StepRun
from onboarding.steps import PIPELINE
from portal.access import User, tenants_for
from portal.models import Tenant


def onboardings_for(user: User) -> QuerySet[Onboarding]:
    return Onboarding.objects.filter(tenant__in=tenants_for(user)).select_related("tenant", "connection")


def runs_for(user: User) -> QuerySet[StepRun]:
    return StepRun.objects.filter(onboarding__tenant__in=tenants_for(user)).select_related(
        "onboarding__tenant", "onboarding__connection"
    )


def get_onboarding_for_user(user: User, code: uuid.UUID | str) -> Onboarding:
    from django.http import Http404

    try:
        return onboardings_for(user).get(code=code)
    except (Onboarding.DoesNotExist, ValueError):
        raise Http404("No such onboarding.") from None


def get_run_for_user(user: User, code: uuid.UUID | str) -> StepRun:
    from django.http import Http404

    try:
        return runs_for(user).get(code=code)
    except (StepRun.DoesNotExist, ValueError):
        raise Http404("No such step run.") from None


@dataclass(frozen=True)
class StepCell:
    """One step of one pipeline as the pages show it."""

    key: str
    label: str
    available: bool
    run: StepRun | None

    @property
    def state(self) -> str:
        if not self.available:
            return "unavailable"
        return self.run.status if self.run is not None else "not_started"

    @property
    def state_label(self) -> str:
        if not self.available:
            return "not available yet"
        return self.run.get_status_display().lower() if self.run is not None else "not started"


def step_cells(runs: list[StepRun]) -> list[StepCell]:
    """The six steps with the newest attempt of each, from runs already loaded."""
    newest: dict[str, StepRun] = {}
    for run in runs:
        if run.step not in newest or run.attempt > newest[run.step].attempt:
            newest[run.step] = run
    return [StepCell(step.key, step.label, step.available, newest.get(step.key)) for step in PIPELINE]


_newer_attempt = StepRun.objects.filter(
    onboarding=OuterRef("onboarding"), step=OuterRef("step"), attempt__gt=OuterRef("attempt")
)
_latest_runs = StepRun.objects.annotate(superseded=Exists(_newer_attempt)).filter(superseded=False)

DASHBOARD_FILTERS = {
    "running": "In progress",
    "failed": "Needs attention",
    "not_started": "Not started",
}


def dashboard_tenants(user: User, *, search: str = "", vendor: str = "", state: str = "") -> QuerySet[Tenant]:
    """Tenants for the dashboard, filtered and ordered; dashboard_rows() loads what a page shows of them."""
    tenants = tenants_for(user)
    if search:
        tenants = tenants.filter(Q(name__icontains=search) | Q(connections__name__icontains=search)).distinct()
    if vendor:
        tenants = tenants.filter(connections__vendor=vendor).distinct()
    runs_of_tenant = _latest_runs.filter(onboarding__tenant=OuterRef("pk"))
    if state == "running":
        tenants = tenants.filter(Exists(runs_of_tenant.filter(status__in=ACTIVE_STATUSES)))
    elif state == "failed":
        tenants = tenants.filter(Exists(runs_of_tenant.filter(status=RunStatus.FAILED)))
    elif state == "not_started":
        tenants = tenants.filter(~Exists(StepRun.objects.filter(onboarding__tenant=OuterRef("pk"))))
    return tenants.order_by("name")


@dataclass(frozen=True)
class ConnectionRow:
    """A connection with its pipeline's six step cells."""

    connection: EHRConnection
    cells: list[StepCell]


@dataclass(frozen=True)
class DashboardRow:
    """A tenant with each of its connections."""

    tenant: Tenant
    connections: list[ConnectionRow]


def dashboard_rows(tenants: Iterable[Tenant]) -> list[DashboardRow]:
    """The rows of one dashboard page: two queries however many tenants, connections and runs it holds.

    Plain queries grouped here, not prefetch_related: the prefetch machinery builds a queryset per
    tenant and relation, and on a page of 25 tenants that cost more than the queries themselves.
    """
    tenants = list(tenants)
    connections = list(
        EHRConnection.objects.filter(tenant__in=tenants)
        .select_related("onboarding")
        .only("id", "code", "tenant_id", "name", "vendor", "environment", "onboarding__id")
        .order_by("name", "pk")
    )
    onboarding_ids = [c.onboarding.pk for c in connections if _onboarding_of(c) is not None]
    runs_by_onboarding: dict[int, list[StepRun]] = {}
    for run in StepRun.objects.filter(onboarding_id__in=onboarding_ids).only(
        "id", "code", "onboarding_id", "step", "attempt", "status"
    ):
        runs_by_onboarding.setdefault(run.onboarding_id, []).append(run)
    by_tenant: dict[int, list[ConnectionRow]] = {tenant.pk: [] for tenant in tenants}
    for connection in connections:
        onboarding = _onboarding_of(connection)
        runs = runs_by_onboarding.get(onboarding.pk, []) if onboarding is not None else []
        by_tenant[connection.tenant_id].append(ConnectionRow(connection, step_cells(runs)))
    return [DashboardRow(tenant, by_tenant[tenant.pk]) for tenant in tenants]


def _onboarding_of(connection: EHRConnection) -> Onboarding | None:
    try:
        return connection.onboarding
    except Onboarding.DoesNotExist:
        return None


# The configure failures a missing CapabilityStatement gives: an answer that is FHIR but not one, or a 404.
NO_CAPABILITY_KINDS = ("no_capability_statement", "not_found")


def discovery_facts(connection: EHRConnection, runs: Iterable[StepRun]) -> dict[str, object]:
    """What the latest configure found that the connection page shows: the discovered token URL, and
    whether to offer going on without a CapabilityStatement.

    ``runs`` are the connection's runs, newest first.
    """
    configure = next((run for run in runs if run.step == "configure" and not run.is_active), None)
    result = (configure.result or {}) if configure is not None else {}
    smart = result.get("smart_configuration") or {}
    token_url = smart.get("token_endpoint") if isinstance(smart, dict) else None
    offer = (
        configure is not None
        and configure.status == RunStatus.FAILED
        and configure.error_kind in NO_CAPABILITY_KINDS
        and not connection.without_capability_statement
    )
    return {
        "discovered_token_url": token_url if isinstance(token_url, str) else "",
        "discovery_run": configure,
        "offer_without_capability_statement": offer,
    }
