"""Gate pages: a request's page with its decision form, and the request, remind and decide actions.

Customer success request and remind; the tenant's approvers decide; anyone who may not see the
tenant gets 404. Every move goes through ``onboarding.gates.services``.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.gates.selectors import get_approval_for_user
from onboarding.models import Approval, Onboarding
from portal.access import User, require_perm
from portal.roles import is_vendor_staff


def may_decide(user: User, approval: Approval) -> bool:
    """Whether this person is one of the tenant's approvers (vendor staff never are)."""
    if is_vendor_staff(user):
        return False
    try:
        require_perm(user, gates.DECIDE_PERM, approval.onboarding.tenant)
    except PermissionDenied:
        return False
    return True


@login_required
@require_GET
def approval_detail(request: HttpRequest, code: str) -> HttpResponse:
    approval = get_approval_for_user(request.user, code)
    onboarding = approval.onboarding
    try:
        gate = gates.get_gate(approval.gate)
    except KeyError:
        raise Http404("No such gate.") from None
    state = gates.gate_state(onboarding, approval.gate)
    zone = gates.tenant_zone(onboarding.tenant)
    return render(
        request,
        "onboarding/approval_detail.html",
        {
            "approval": approval,
            "gate": gate,
            "state": state,
            "artifact_link": gate.link(onboarding) if gate.link else "",
            "history": gates.history(onboarding, approval.gate),
            "connection": onboarding.connection,
            "tenant": onboarding.tenant,
            "may_decide": approval.is_pending and may_decide(request.user, approval),
            "may_request": request.user.has_perm(gates.REQUEST_PERM),
            "window": gates.window_text(approval),
            "zone_name": str(zone),
            "window_default_from": timezone.now().astimezone(zone).strftime("%Y-%m-%dT%H:%M"),
        },
    )


@login_required
@require_POST
def request_approval(request: HttpRequest, code: str, gate: str) -> HttpResponse:
    """Customer success put the gate's current artifact to hospital IT."""
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    if onboarding is None:
        raise Http404("Nothing has run on this connection yet.")
    try:
        gates.get_gate(gate)
    except KeyError:
        raise Http404("No such gate.") from None
    try:
        approval = gates.request_approval(
            user=request.user, onboarding=onboarding, gate_key=gate, note=request.POST.get("note", ""), request=request
        )
    except gates.GateError as exc:
        messages.error(request, str(exc))
        return redirect(_back(request, connection.code))
    messages.success(request, f"{approval.artifact_label} is with hospital IT of {onboarding.tenant.name} now.")
    return redirect("approval_detail", code=approval.code)


@login_required
@require_POST
def remind(request: HttpRequest, code: str) -> HttpResponse:
    approval = get_approval_for_user(request.user, code)
    try:
        gates.remind(user=request.user, approval=approval, request=request)
    except gates.GateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Hospital IT were reminded.")
    return redirect("approval_detail", code=approval.code)


@login_required
@require_POST
def decide(request: HttpRequest, code: str) -> HttpResponse:
    """An approver approves or rejects the exact artifact they were shown."""
    approval = get_approval_for_user(request.user, code)
    decision = request.POST.get("decision", "")
    zone = gates.tenant_zone(approval.onboarding.tenant)
    try:
        valid_from = _local_datetime(request.POST.get("valid_from", ""), zone, "start")
        valid_until = _local_datetime(request.POST.get("valid_until", ""), zone, "end")
        decided = gates.decide(
            user=request.user,
            approval=approval,
            decision=decision,
            comment=request.POST.get("comment", ""),
            artifact_hash=request.POST.get("artifact_hash") or None,
            valid_from=valid_from,
            valid_until=valid_until,
            request=request,
        )
    except gates.GateError as exc:
        messages.error(request, str(exc))
        return redirect("approval_detail", code=approval.code)
    messages.success(request, f"You {decided.get_decision_display().lower()} {decided.artifact_label}.")
    return redirect("approval_detail", code=approval.code)


def _local_datetime(value: str, zone: tzinfo, which: str) -> datetime | None:
    """A date and time typed in the hospital's time zone (an HTML datetime-local value), made aware."""
    value = value.strip()
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise gates.GateError(f"Enter the window's {which} as a date and a time, e.g. 2026-05-04 09:00.") from None
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone)


def _back(request: HttpRequest, connection_code: object) -> str:
    """Where a refused request returns: the page it came from on this site, else the connection."""
    from django.urls import reverse
    from django.utils.http import url_has_allowed_host_and_scheme

    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return reverse("connection_detail", kwargs={"code": connection_code})
