"""Reads of pipelines and runs, always through the tenants the user may see."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet

from connections.models import EHRConnection
from onboarding.gates import services as gates
from onboarding.models import ACTIVE_STATUSES, Approval, Decision, Onboarding, RunStatus, StepRun
from onboarding.review import services as review
from onboarding.steps import PIPELINE, get_step
from portal.access import User, tenants_for
from portal.models import Tenant
from portal.people.selectors import tenants_assigned_to
from portal.roles import CUSTOMER_SUCCESS


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
    """One step of one pipeline as the pages show it, with the gate its result goes to, if any.

    A passed step whose artifact waits on hospital IT is "waiting", never "passed": the chip says
    who owes the next action.
    """

    key: str
    label: str
    available: bool
    run: StepRun | None
    gate_label: str = ""
    # The state of the gate's newest request: pending, approved, rejected, voided, or "" for none.
    gate_state: str = ""

    @property
    def state(self) -> str:
        if not self.available:
            return "unavailable"
        if self.run is None:
            return "not_started"
        if self.gate_label and self.gate_state in ("pending", "approved") and not self.run.is_active:
            # What the step produced is with hospital IT, or approved: that is its state now, even
            # when its last run failed (a mapping finished in the editor after an incomplete map).
            return "waiting" if self.gate_state == "pending" else "passed"
        if self.run.status == RunStatus.PASSED and self.gate_label:
            return "rejected" if self.gate_state == "rejected" else "action"
        return self.run.status

    @property
    def state_label(self) -> str:
        if not self.available:
            return "not available yet"
        if self.run is None:
            return "not started"
        state = self.state
        gate = self.gate_label.lower()
        if state == "waiting":
            return "waiting for hospital IT"
        if state == "rejected":
            return f"{gate} rejected"
        if state == "action":
            return f"passed · {gate} to request"
        if state == "passed" and self.gate_label:
            return f"passed · {gate} approved"
        return self.run.get_status_display().lower()


def step_cells(runs: list[StepRun], approvals: list[Approval] | None = None) -> list[StepCell]:
    """The six steps with the newest attempt of each, from runs (and approvals) already loaded."""
    newest: dict[str, StepRun] = {}
    for run in runs:
        if run.step not in newest or run.attempt > newest[run.step].attempt:
            newest[run.step] = run
    latest_request: dict[str, Approval] = {}
    for approval in approvals or ():
        held = latest_request.get(approval.gate)
        if held is None or (approval.requested_at, approval.pk) > (held.requested_at, held.pk):
            latest_request[approval.gate] = approval
    cells = []
    for step in PIPELINE:
        gate = _gate_shown_on(step.key)
        request = latest_request.get(gate.key) if gate is not None else None
        cells.append(
            StepCell(
                step.key,
                step.label,
                step.available,
                newest.get(step.key),
                gate_label=gate.label if gate is not None else "",
                gate_state=request.state if request is not None else "",
            )
        )
    return cells


def approvals_of(onboarding_ids: Iterable[int]) -> dict[int, list[Approval]]:
    """Every approval of these pipelines, grouped by pipeline: one query, the few fields chips need."""
    grouped: dict[int, list[Approval]] = {}
    for approval in Approval.objects.filter(onboarding_id__in=list(onboarding_ids)).only(
        "id", "onboarding_id", "gate", "requested_at", "decision", "voided_at"
    ):
        grouped.setdefault(approval.onboarding_id, []).append(approval)
    return grouped


def _gate_shown_on(step: str) -> gates.Gate | None:
    """The gate whose state a step's chip shows: the one that approves what the step produced.

    A gate the step itself needs before it starts (the load-test permission) approves a plan, not
    the step's result, so it never turns the step's chip "passed".
    """
    needs = set(get_step(step).gates)
    for gate in gates.all_gates():
        if gate.step == step and gate.key not in needs:
            return gate
    return None


_newer_attempt = StepRun.objects.filter(
    onboarding=OuterRef("onboarding"), step=OuterRef("step"), attempt__gt=OuterRef("attempt")
)
_latest_runs = StepRun.objects.annotate(superseded=Exists(_newer_attempt)).filter(superseded=False)


def latest_runs_query() -> QuerySet[StepRun]:
    """Only the newest attempt of each step of each pipeline (unfiltered: callers scope it)."""
    return _latest_runs.all()


DASHBOARD_FILTERS = {
    "running": "In progress",
    "failed": "Needs attention",
    "not_started": "Not started",
    "archived": "Archived",
}


def _newest_requests() -> QuerySet[Approval]:
    """Each gate's newest request of each pipeline (unfiltered: callers scope it)."""
    newer = Approval.objects.filter(
        onboarding=OuterRef("onboarding"), gate=OuterRef("gate"), requested_at__gt=OuterRef("requested_at")
    )
    return Approval.objects.annotate(superseded=Exists(newer)).filter(superseded=False)


def _runs_needing_attention() -> QuerySet[StepRun]:
    """Latest attempts that failed and that nobody has answered yet.

    The same failures a step chip shows as "failed": a failed step whose artifact is already with
    hospital IT, or approved (a mapping finished in the editor after an incomplete map), is not one;
    nor is a refusal of a precondition (no signed mapping), which says nothing about the hospital.
    """
    runs = _latest_runs.filter(status=RunStatus.FAILED).exclude(error_kind__in=review.PRECONDITION_KINDS)
    for gate in gates.all_gates():
        settled = _newest_requests().filter(
            onboarding=OuterRef("onboarding"),
            gate=gate.key,
            voided_at=None,
            decision__in=["", Decision.APPROVED],
        )
        runs = runs.exclude(Q(step=gate.step) & Exists(settled))
    return runs


def connection_state_filter(state: str) -> Q:
    """The connections a dashboard state filter keeps, as a condition on EHRConnection.

    "failed" ("Needs attention") is a latest run that failed and was not answered, or a gate's newest
    request that hospital IT rejected: what customer success owe an action on. "archived" keeps only
    archived connections; every other state, and no state, only live ones.
    """
    if state == "archived":
        return Q(archived_at__isnull=False)
    live = Q(archived_at=None)
    if state == "running":
        return live & Q(
            Exists(StepRun.objects.filter(onboarding__connection=OuterRef("pk"), status__in=ACTIVE_STATUSES))
        )
    if state == "failed":
        failed = Exists(_runs_needing_attention().filter(onboarding__connection=OuterRef("pk")))
        rejected = Exists(
            _newest_requests().filter(onboarding__connection=OuterRef("pk"), decision=Decision.REJECTED, voided_at=None)
        )
        return live & (Q(failed) | Q(rejected))
    if state == "not_started":
        return live & ~Q(Exists(StepRun.objects.filter(onboarding__connection=OuterRef("pk"))))
    return live


def default_scope(user: User) -> str:
    """ "mine" for customer success with hospitals assigned to them, else "all".

    A customer success person with nothing assigned yet would otherwise land on an empty page.
    """
    if not user.is_authenticated or not user.groups.filter(name=CUSTOMER_SUCCESS).exists():
        return "all"
    return "mine" if tenants_assigned_to(user).exists() else "all"


def dashboard_tenants(
    user: User, *, search: str = "", vendor: str = "", state: str = "", mine: bool = False
) -> QuerySet[Tenant]:
    """Tenants for the dashboard, filtered and ordered; dashboard_rows() loads what a page shows of them.

    `mine` keeps the hospitals the user is assigned to (vendor staff's "My hospitals").
    """
    tenants = tenants_for(user)
    if mine:
        tenants = tenants.filter(pk__in=tenants_assigned_to(user).values("pk"))
    if search:
        tenants = tenants.filter(Q(name__icontains=search) | Q(connections__name__icontains=search)).distinct()
    if vendor:
        tenants = tenants.filter(connections__vendor=vendor).distinct()
    if state:
        matching = EHRConnection.objects.filter(connection_state_filter(state), tenant=OuterRef("pk"))
        if state == "not_started":
            # A hospital with no connection yet has not started either.
            tenants = tenants.filter(
                Exists(matching) | ~Exists(EHRConnection.objects.filter(tenant=OuterRef("pk"), archived_at=None))
            )
        else:
            tenants = tenants.filter(Exists(matching))
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
    archived: int = 0  # archived connections of the tenant not shown (the "Archived" filter shows them)


def dashboard_rows(tenants: Iterable[Tenant], *, state: str = "") -> list[DashboardRow]:
    """The rows of one dashboard page: three queries however many tenants, connections, runs and approvals.

    Only the connections the state filter keeps are shown (see connection_state_filter): a hospital
    listed under "Needs attention" shows the connections that need it, not the healthy ones beside them.
    Plain queries grouped here, not prefetch_related: the prefetch machinery builds a queryset per
    tenant and relation, and on a page of 25 tenants that cost more than the queries themselves.
    """
    tenants = list(tenants)
    # One query for every connection of the page's tenants, each marked shown or not: the ones not
    # shown are counted, so a hospital whose connections are all archived does not look empty.
    every = list(
        EHRConnection.objects.filter(tenant__in=tenants)
        .annotate(shown=ExpressionWrapper(connection_state_filter(state), output_field=BooleanField()))
        .select_related("onboarding")
        .only("id", "code", "tenant_id", "name", "vendor", "environment", "archived_at", "onboarding__id")
        .order_by("name", "pk")
    )
    connections = [c for c in every if c.shown]
    archived: Counter[int] = Counter(c.tenant_id for c in every if c.archived_at is not None and not c.shown)
    onboarding_ids = [c.onboarding.pk for c in connections if _onboarding_of(c) is not None]
    runs_by_onboarding: dict[int, list[StepRun]] = {}
    for run in StepRun.objects.filter(onboarding_id__in=onboarding_ids).only(
        "id", "code", "onboarding_id", "step", "attempt", "status"
    ):
        runs_by_onboarding.setdefault(run.onboarding_id, []).append(run)
    approvals = approvals_of(onboarding_ids)
    by_tenant: dict[int, list[ConnectionRow]] = {tenant.pk: [] for tenant in tenants}
    for connection in connections:
        onboarding = _onboarding_of(connection)
        runs = runs_by_onboarding.get(onboarding.pk, []) if onboarding is not None else []
        gated = approvals.get(onboarding.pk, []) if onboarding is not None else []
        by_tenant[connection.tenant_id].append(ConnectionRow(connection, step_cells(runs, gated)))
    return [DashboardRow(tenant, by_tenant[tenant.pk], archived[tenant.pk]) for tenant in tenants]


def _onboarding_of(connection: EHRConnection) -> Onboarding | None:
    try:
        return connection.onboarding
    except Onboarding.DoesNotExist:
        return None


@dataclass(frozen=True)
class NextAction:
    """What a finished run's page offers next: start a step, request a gate, or wait on someone."""

    kind: str  # "start", "request", "wait" or "done"
    sentence: str
    step: str = ""
    step_label: str = ""
    gate: str = ""
    gate_state: gates.GateState | None = None

    # Where the gate's artifact is read and written (its wing's page), when there is one.
    link: str = ""


def next_action(run: StepRun) -> NextAction | None:
    """The next thing to do after this run, for whoever owes it; None when the run is not the newest."""
    onboarding = run.onboarding
    newest = onboarding.runs.filter(step=run.step).order_by("-attempt").values_list("pk", flat=True).first()
    if newest != run.pk or run.status != RunStatus.PASSED:
        return None
    gate = _gate_shown_on(run.step)
    if gate is not None:
        state = gates.gate_state(onboarding, gate.key)
        if state.status == "pending":
            return NextAction("wait", state.sentence, gate=gate.key, gate_state=state)
        if state.status != "approved":
            return NextAction("request", state.sentence, gate=gate.key, gate_state=state)
    keys = [step.key for step in PIPELINE]
    for step in PIPELINE[keys.index(run.step) + 1 :]:
        if not step.available:
            return NextAction("done", f"{step.label} is the next step; it is not available yet.")
        for key in step.gates:
            # The next step needs an approval first: asking for it (or waiting) is the next action.
            state = gates.gate_state(onboarding, key)
            if state.status == "approved":
                continue
            kind = "wait" if state.status in ("pending", "scheduled") else "request"
            link = state.gate.link(onboarding) if state.gate.link is not None else ""
            return NextAction(kind, f"Next: {step.label}. {state.sentence}", gate=key, gate_state=state, link=link)
        return NextAction("start", f"Next: {step.label}. {step.description}", step=step.key, step_label=step.label)
    return NextAction("done", "This was the last step.")


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
