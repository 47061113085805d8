"""Monitoring's pages: the hypercare dashboard, a live connection's monitoring, an alert, the policy.

Everyone who may see a tenant reads its pages; vendor staff acknowledge and assign alerts and start
a drift check; customer success edit the policy and hand a connection off to operations.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from onboarding.monitoring import drift, policy, selectors, services, sla
from onboarding.monitoring.models import Monitor
from portal.access import get_tenant_for_user, require_perm


@login_required
def hypercare(request: HttpRequest) -> HttpResponse:
    """Every live connection the user may see: status, stage, latency sparkline, open alerts, days live."""
    rows = selectors.dashboard_rows(request.user)
    open_alerts = list(selectors.alerts_for(request.user).filter(resolved_at__isnull=True).order_by("opened_at")[:50])
    return render(request, "monitoring/hypercare.html", {"rows": rows, "open_alerts": open_alerts})


def monitoring_context(request: HttpRequest, live: Any) -> dict[str, Any]:
    """What a live connection's monitoring page (and its API) shows."""
    monitor = Monitor.objects.filter(onboarding_id=live.onboarding_id).first()
    tenant_policy = policy.policy_for(live.onboarding.tenant)
    interval = monitor.interval_s if monitor else policy.interval_s(tenant_policy)
    return {
        "live": live,
        "connection": live.onboarding.connection,
        "tenant": live.onboarding.tenant,
        "monitor": monitor,
        "policy": tenant_policy,
        "sla": sla.sla_figures(live, interval_s=interval),
        "checks": list(selectors.checks_of(live, since=timezone.now() - timedelta(days=1)).order_by("-ran_at")[:20]),
        "alerts": list(selectors.alerts_for(request.user).filter(onboarding_id=live.onboarding_id)[:20]),
        "drift_runs": list(selectors.drift_runs_of(live)[:10]),
        "report": sla.stabilisation_report(live),
        "hypercare_until": sla.hypercare_until(live),
        "may_act": request.user.has_perm(services.ACT_PERM),
        "may_hand_off": request.user.has_perm(sla.HANDOFF_PERM),
    }


@login_required
def connection_monitoring(request: HttpRequest, code: str) -> HttpResponse:
    """A live connection's monitoring: status, SLA figures, checks, alerts, drift watch and hypercare."""
    live = selectors.get_live_for_user(request.user, code)
    return render(request, "monitoring/connection.html", monitoring_context(request, live))


@login_required
@require_POST
def monitoring_drift(request: HttpRequest, code: str) -> HttpResponse:
    """Start a drift check of the connection now."""
    live = selectors.get_live_for_user(request.user, code)
    try:
        run = drift.request_drift(user=request.user, onboarding=live.onboarding, request=request)
    except drift.DriftRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Drift check {str(run.code)[:8]} is {run.get_status_display()}.")
    return redirect("connection_monitoring", code=live.onboarding.connection.code)


@login_required
@require_POST
def monitoring_handoff(request: HttpRequest, code: str) -> HttpResponse:
    """Hand the connection off from hypercare to operations."""
    live = selectors.get_live_for_user(request.user, code)
    try:
        sla.hand_off(user=request.user, live=live, request=request)
    except sla.HandoffRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Handed off: the connection is operational.")
    return redirect("connection_monitoring", code=live.onboarding.connection.code)


class AssignForm(forms.Form):
    assignee = forms.ChoiceField(label="Assign to", required=False)

    def __init__(self, *args: Any, people: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.people = {str(person.pk): person for person in people}
        field = self.fields["assignee"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Nobody")] + [(str(p.pk), p.get_full_name() or p.get_username()) for p in people]


@login_required
def alert_detail(request: HttpRequest, code: str) -> HttpResponse:
    """One alert: what is wrong, since when, who acknowledged it and who has it."""
    alert = selectors.get_alert_for_user(request.user, code)
    may_act = request.user.has_perm(services.ACT_PERM)
    form = AssignForm(
        people=services.assignable_people(alert) if may_act else [],
        initial={"assignee": str(alert.assigned_to_id or "")},
    )
    return render(
        request,
        "monitoring/alert.html",
        {
            "alert": alert,
            "tenant": alert.tenant,
            "connection": alert.onboarding.connection,
            "may_act": may_act,
            "form": form,
        },
    )


@login_required
@require_POST
def alert_acknowledge(request: HttpRequest, code: str) -> HttpResponse:
    """Acknowledge the alert (once)."""
    alert = selectors.get_alert_for_user(request.user, code)
    services.acknowledge(user=request.user, alert=alert, request=request)
    messages.success(request, "Alert acknowledged.")
    return redirect("alert_detail", code=alert.code)


@login_required
@require_POST
def alert_assign(request: HttpRequest, code: str) -> HttpResponse:
    """Give the alert to a person, or to nobody."""
    alert = selectors.get_alert_for_user(request.user, code)
    require_perm(request.user, services.ACT_PERM, alert.tenant)
    form = AssignForm(request.POST, people=services.assignable_people(alert))
    if not form.is_valid():
        messages.error(request, "Choose a person from the list.")
        return redirect("alert_detail", code=alert.code)
    chosen = form.cleaned_data["assignee"]
    assignee = get_user_model().objects.get(pk=int(chosen)) if chosen else None
    try:
        services.assign(user=request.user, alert=alert, assignee=assignee, request=request)
    except services.AlertRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"Assigned to {assignee.get_username()}." if assignee else "Nobody has this alert now."
        )
    return redirect("alert_detail", code=alert.code)


class PolicyForm(forms.Form):
    """The policy's settings as number fields, bounds from onboarding.monitoring.policy.FIELDS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in policy.FIELDS:
            label, help_text = f"{field.label} ({field.unit})", field.help
            self.fields[field.name] = (
                forms.IntegerField(
                    label=label, min_value=int(field.low), max_value=int(field.high), help_text=help_text
                )
                if field.whole
                else forms.FloatField(label=label, min_value=field.low, max_value=field.high, help_text=help_text)
            )


@login_required
@require_http_methods(["GET", "POST"])
def monitoring_policy(request: HttpRequest, code: str) -> HttpResponse:
    """A tenant's monitoring policy; customer success change it."""
    tenant = get_tenant_for_user(request.user, code)
    current = policy.policy_for(tenant)
    may_edit = request.user.has_perm(policy.EDIT_PERM)
    status = 200
    if request.method == "POST":
        require_perm(request.user, policy.EDIT_PERM, tenant)
        form = PolicyForm(request.POST)
        if form.is_valid():
            try:
                _, changed = policy.update_policy(
                    user=request.user, tenant=tenant, values=form.cleaned_data, request=request
                )
            except policy.PolicyRefused as exc:
                form.add_error(exc.field or None, str(exc))
            else:
                messages.success(request, "Monitoring policy saved." if changed else "Nothing changed.")
                return redirect("monitoring_policy", code=tenant.code)
        status = 400
    else:
        form = PolicyForm(initial=policy.values_of(current))
    return render(
        request,
        "monitoring/policy.html",
        {"tenant": tenant, "policy": current, "form": form, "may_edit": may_edit},
        status=status,
    )
