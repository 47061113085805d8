"""Go-live pages: a hospital's windows, a connection's go-live (plan, approval, schedule, rollback), service accounts.

Each POST calls ``onboarding.golive.services`` / ``windows`` / ``readapi`` and shows the refusal's
message beside the field at fault; nothing is written on a refusal.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.golive import readapi, services, windows
from onboarding.golive.models import ChangeWindow, Rollout, ServiceAccount, ServiceToken, WindowChoice
from onboarding.live.models import MaintenanceKind, MaintenanceWindow
from onboarding.live.state import live_state
from onboarding.models import Onboarding
from portal.access import get_tenant_for_user, require_perm, tenants_for
from portal.models import Tenant
from portal.roles import is_vendor_staff

WEEKDAY_CHOICES = list(enumerate(windows.WEEKDAYS))


class ChangeWindowForm(forms.Form):
    weekday = forms.TypedChoiceField(choices=WEEKDAY_CHOICES, coerce=int)
    start_time = forms.TimeField(label="Starts (local time)", widget=forms.TimeInput(attrs={"type": "time"}))
    end_time = forms.TimeField(label="Ends (local time)", widget=forms.TimeInput(attrs={"type": "time"}))
    timezone = forms.CharField(label="Time zone", max_length=64, help_text="An IANA name; the hospital's by default.")
    note = forms.CharField(required=False, max_length=200)


class MaintenanceForm(forms.Form):
    kind = forms.ChoiceField(choices=MaintenanceKind.choices, widget=forms.RadioSelect, initial=MaintenanceKind.WEEKLY)
    weekday = forms.TypedChoiceField(choices=WEEKDAY_CHOICES, coerce=int, required=False, label="Weekday (weekly)")
    start_time = forms.TimeField(
        required=False, label="Starts (weekly)", widget=forms.TimeInput(attrs={"type": "time"})
    )
    end_time = forms.TimeField(
        required=False,
        label="Ends (weekly; before the start runs to the next day)",
        widget=forms.TimeInput(attrs={"type": "time"}),
    )
    starts_at = forms.DateTimeField(
        required=False, label="Starts (once)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    ends_at = forms.DateTimeField(
        required=False, label="Ends (once)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    timezone = forms.CharField(label="Time zone", max_length=64)
    note = forms.CharField(required=False, max_length=200)


def _may_edit(request: HttpRequest, tenant: Tenant) -> bool:
    return windows.may_edit_windows(request.user, tenant)


@login_required
@require_http_methods(["GET", "POST"])
def tenant_windows(request: HttpRequest, code: str) -> HttpResponse:
    """A hospital's change windows and the EHR's maintenance windows; POST adds one (``form=change|maintenance``)."""
    tenant = get_tenant_for_user(request.user, code)
    change_form = ChangeWindowForm(initial={"timezone": tenant.timezone, "weekday": 1})
    maintenance_form = MaintenanceForm(initial={"timezone": tenant.timezone}, prefix="m")
    status = 200
    if request.method == "POST":
        if not _may_edit(request, tenant):
            raise PermissionDenied("Only customer success and the hospital's approvers keep its windows.")
        which = request.POST.get("form")
        if which == "change":
            change_form = ChangeWindowForm(request.POST)
            if change_form.is_valid():
                data = change_form.cleaned_data
                try:
                    window = windows.add_change_window(
                        user=request.user,
                        tenant=tenant,
                        weekday=data["weekday"],
                        start_time=data["start_time"],
                        end_time=data["end_time"],
                        zone=data["timezone"],
                        note=data["note"],
                        request=request,
                    )
                except windows.WindowRefused as exc:
                    change_form.add_error(exc.field if exc.field in change_form.fields else None, str(exc))
                else:
                    messages.success(request, f"Change window {windows.describe(window)} is kept.")
                    return redirect("tenant_windows", code=tenant.code)
        elif which == "maintenance":
            maintenance_form = MaintenanceForm(request.POST, prefix="m")
            if maintenance_form.is_valid():
                data = maintenance_form.cleaned_data
                try:
                    windows.add_maintenance_window(
                        user=request.user,
                        tenant=tenant,
                        kind=data["kind"],
                        weekday=data["weekday"] if data["weekday"] != "" else None,
                        start_time=data["start_time"],
                        end_time=data["end_time"],
                        starts_at=data["starts_at"] and data["starts_at"].replace(tzinfo=None),
                        ends_at=data["ends_at"] and data["ends_at"].replace(tzinfo=None),
                        zone=data["timezone"],
                        note=data["note"],
                        request=request,
                    )
                except windows.WindowRefused as exc:
                    maintenance_form.add_error(exc.field if exc.field in maintenance_form.fields else None, str(exc))
                else:
                    messages.success(request, "The maintenance window is kept.")
                    return redirect("tenant_windows", code=tenant.code)
        else:
            raise Http404("No such form.")
        status = 400
    now = timezone.now()
    return render(
        request,
        "golive/windows.html",
        {
            "tenant": tenant,
            "change_windows": [(w, windows.describe(w)) for w in windows.change_windows(tenant)],
            "maintenance": [
                (w, windows.describe_maintenance(w, tenant.timezone)) for w in windows.maintenance_windows(tenant)
            ],
            "upcoming": windows.occurrences(windows.change_windows(tenant), after=now)[:4],
            "open_now": windows.window_at(tenant, now),
            "change_form": change_form,
            "maintenance_form": maintenance_form,
            "may_edit": _may_edit(request, tenant),
        },
        status=status,
    )


@login_required
@require_POST
def change_window_delete(request: HttpRequest, code: str) -> HttpResponse:
    window = get_object_or_404(
        ChangeWindow.objects.select_related("tenant"), code=code, tenant__in=tenants_for(request.user)
    )
    windows.remove_change_window(user=request.user, window=window, request=request)
    messages.success(request, "The change window is removed.")
    return redirect("tenant_windows", code=window.tenant.code)


@login_required
@require_POST
def maintenance_window_delete(request: HttpRequest, code: str, pk: int) -> HttpResponse:
    tenant = get_tenant_for_user(request.user, code)
    window = get_object_or_404(MaintenanceWindow, pk=pk, tenant=tenant)
    windows.remove_maintenance_window(user=request.user, window=window, request=request)
    messages.success(request, "The maintenance window is removed.")
    return redirect("tenant_windows", code=tenant.code)


# --- a connection's go-live ------------------------------------------------------------------------


class PlanForm(forms.Form):
    seen_version = forms.IntegerField(widget=forms.HiddenInput, min_value=0)
    window_choice = forms.ChoiceField(choices=WindowChoice.choices, widget=forms.RadioSelect, label="Window")
    window_starts_at = forms.ChoiceField(required=False, label="The chosen window")
    rollout = forms.ChoiceField(choices=Rollout.choices, widget=forms.RadioSelect, label="Rollout")
    pilot_percent = forms.IntegerField(required=False, min_value=0, max_value=100, label="Pilot share (% of patients)")
    hypercare_contacts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Hypercare contacts",
        help_text="One a line: Pat Lee <pat@hospital.org>",
    )


def _plan_form(onboarding: Onboarding, data: Any = None) -> PlanForm:
    form = PlanForm(data)
    zone = gates.tenant_zone(onboarding.tenant)
    choices = [("", "—")] + [
        (
            o.starts_at.isoformat(),
            f"{windows.WEEKDAYS[o.window.weekday]} {o.starts_at.astimezone(zone):%Y-%m-%d %H:%M %Z}",
        )
        for o in windows.occurrences(windows.change_windows(onboarding.tenant), after=timezone.now(), days=28)
        if o.starts_at > timezone.now()
    ]
    field = form.fields["window_starts_at"]
    assert isinstance(field, forms.ChoiceField)
    field.choices = choices
    return form


@login_required
@require_http_methods(["GET", "POST"])
def go_live(request: HttpRequest, code: str) -> HttpResponse:
    """A connection's go-live: live state, plan (POST writes its next version), approval, schedule, rollback."""
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    latest = services.latest_plan(onboarding) if onboarding else None
    form = _plan_form(onboarding, None) if onboarding else None
    status = 200
    if request.method == "POST":
        require_perm(request.user, services.EDIT_PERM, connection.tenant)
        if onboarding is None:
            raise Http404("Nothing has run on this connection yet.")
        form = _plan_form(onboarding, request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                from django.utils.dateparse import parse_datetime

                values = {
                    "window_choice": data["window_choice"],
                    "window_starts_at": parse_datetime(data["window_starts_at"]) if data["window_starts_at"] else None,
                    "rollout": data["rollout"],
                    "pilot_percent": data["pilot_percent"] or 0,
                    "hypercare_contacts": services.parse_contacts(data["hypercare_contacts"]),
                }
                plan, created = services.save_plan(
                    user=request.user,
                    onboarding=onboarding,
                    values=values,
                    seen_version=data["seen_version"],
                    request=request,
                )
            except services.GoLiveRefused as exc:
                form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            else:
                if created:
                    messages.success(
                        request, f"Go-live plan version {plan.version} is saved. Ask hospital IT to approve it."
                    )
                else:
                    messages.info(request, f"Nothing changed: version {plan.version} stays the current plan.")
                return redirect("go_live", code=connection.code)
        status = 400
    elif form is not None:
        contacts = "\n".join(f"{c['name']} <{c['email']}>" for c in latest.hypercare_contacts) if latest else ""
        form.initial = {
            "seen_version": latest.version if latest else 0,
            "window_choice": latest.window_choice if latest else WindowChoice.NEXT,
            "window_starts_at": latest.window_starts_at.isoformat() if latest and latest.window_starts_at else "",
            "rollout": latest.rollout if latest else Rollout.FULL,
            "pilot_percent": latest.pilot_percent if latest and latest.pilot_percent else 10,
            "hypercare_contacts": contacts,
        }
    state = live_state(onboarding) if onboarding else None
    tenant = connection.tenant
    return render(
        request,
        "golive/go_live.html",
        {
            "connection": connection,
            "tenant": tenant,
            "onboarding": onboarding,
            "plan": latest,
            "facts": services.describe_plan(latest) if latest else None,
            "gate": gates.gate_state(onboarding, services.GATE_KEY) if onboarding else None,
            "schedule": onboarding.go_live_schedules.select_related("run").first() if onboarding else None,
            "problems": services.readiness(onboarding) if onboarding else [],
            "live": state,
            "next_window": windows.next_window(tenant, timezone.now()),
            "open_now": windows.window_at(tenant, timezone.now()),
            "form": form,
            "can_edit": request.user.has_perm(services.EDIT_PERM) and onboarding is not None,
            "may_request": request.user.has_perm(gates.REQUEST_PERM),
            "may_decide_gate": not is_vendor_staff(request.user) and request.user.has_perm(gates.DECIDE_PERM, tenant),
            "may_roll_back": onboarding is not None and services.may_roll_back(request.user, onboarding),
        },
        status=status,
    )


@login_required
@require_POST
def go_live_action(request: HttpRequest, code: str, action: str) -> HttpResponse:
    """schedule (optionally with an emergency override reason), cancel, rollback (with its reason), promote."""
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    if onboarding is None or action not in ("schedule", "cancel", "rollback", "promote"):
        raise Http404("No such go-live action.")
    try:
        if action == "schedule":
            schedule = services.schedule_go_live(
                user=request.user,
                onboarding=onboarding,
                override_reason=request.POST.get("override_reason", ""),
                request=request,
            )
            if schedule.override_reason:
                messages.warning(request, "Emergency go-live: it starts now. The hospital's approvers are told.")
            else:
                when = schedule.opens_at.astimezone(gates.tenant_zone(connection.tenant))
                messages.success(
                    request,
                    f"The go-live is scheduled: it starts when the change window opens, {when:%a %Y-%m-%d %H:%M %Z}.",
                )
        elif action == "cancel":
            held = services.active_schedule(onboarding)
            if held is None:
                raise services.GoLiveRefused("No go-live is waiting for its window.")
            services.cancel_schedule(user=request.user, schedule=held, request=request)
            messages.success(request, "The scheduled go-live is cancelled.")
        elif action == "rollback":
            services.rollback(
                user=request.user, onboarding=onboarding, reason=request.POST.get("reason", ""), request=request
            )
            messages.success(
                request, "Rolled back: the connection is as it was before go-live, and the product is not served."
            )
        else:
            services.promote(user=request.user, onboarding=onboarding, request=request)
            messages.success(request, "The pilot is promoted: every patient is served now.")
    except services.GoLiveRefused as exc:
        messages.error(request, str(exc))
    return redirect("go_live", code=connection.code)


# --- service accounts -------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def service_accounts(request: HttpRequest) -> HttpResponse:
    """The product's service accounts; POST creates one. Vendor staff who manage hospitals only."""
    require_perm(request.user, readapi.MANAGE_PERM)
    if request.method == "POST":
        try:
            account = readapi.create_account(user=request.user, name=request.POST.get("name", ""), request=request)
        except readapi.TokenRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Service account {account.name} is created. Issue it a token per hospital.")
            return redirect("service_account", code=account.code)
    return render(
        request, "golive/service_accounts.html", {"accounts": ServiceAccount.objects.prefetch_related("tokens")}
    )


@login_required
@require_http_methods(["GET", "POST"])
def service_account(request: HttpRequest, code: str) -> HttpResponse:
    """One service account and its tokens; POST issues a token for a hospital (its key is shown once)."""
    require_perm(request.user, readapi.MANAGE_PERM)
    account = get_object_or_404(ServiceAccount, code=code)
    key = None
    if request.method == "POST":
        tenant = get_tenant_for_user(request.user, request.POST.get("tenant", ""))
        try:
            _, key = readapi.issue_token(user=request.user, account=account, tenant=tenant, request=request)
        except readapi.TokenRefused as exc:
            messages.error(request, str(exc))
    return render(
        request,
        "golive/service_account.html",
        {
            "account": account,
            "tokens": account.tokens.select_related("tenant"),
            "tenants": tenants_for(request.user).order_by("name"),
            "key": key,
        },
    )


@login_required
@require_POST
def service_token_revoke(request: HttpRequest, code: str) -> HttpResponse:
    require_perm(request.user, readapi.MANAGE_PERM)
    token = get_object_or_404(ServiceToken.objects.select_related("account", "tenant"), code=code)
    try:
        readapi.revoke_token(user=request.user, token=token, request=request)
    except readapi.TokenRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Token {token.prefix}… is revoked.")
    return redirect("service_account", code=token.account.code)
