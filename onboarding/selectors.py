"""Reads of pipelines and runs, always through the tenants the user may see."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

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
    """Tenants for the dashboard, filtered, with connections and runs prefetched.

    However many tenants match, a page costs the same few queries: one for the page, one for the
    count, one for connections with their onboardings, one for those onboardings' runs.
    """
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
    runs = StepRun.objects.only("id", "code", "onboarding_id", "step", "attempt", "status")
    connections = EHRConnection.objects.select_related("onboarding").only(
        "id", "code", "tenant_id", "name", "vendor", "environment", "onboarding__id", "onboarding__code"
    )
    return tenants.order_by("name").prefetch_related(
        Prefetch("connections", queryset=connections),
        Prefetch(
            "onboardings",
            queryset=Onboarding.objects.only("id", "tenant_id", "connection_id").prefetch_related(
                Prefetch("runs", queryset=runs)
            ),
        ),
    )
