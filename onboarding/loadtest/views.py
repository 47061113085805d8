"""The load-test plan page: the plan and its versions, the caps, the permission, and the editor.

Customer success and engineers write the plan; hospital IT of the tenant read every version (it is
what they approve) and decide the permission from its request; anyone else gets 404. Every change
goes through ``onboarding.loadtest.services``, which writes a new version.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from connections.models import EHRConnection
from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.loadtest import services
from onboarding.loadtest.forms import PlanForm
from onboarding.models import LoadTestPlan, Onboarding
from portal.access import require_perm
from portal.roles import is_vendor_staff


@login_required
@require_http_methods(["GET", "POST"])
def load_test_plan(request: HttpRequest, code: str) -> HttpResponse:
    """A connection's load-test plan (``?version=N`` for an older one); POST writes the next version."""
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    latest = services.latest_plan(onboarding) if onboarding else None
    shown = _shown_version(request, onboarding, latest)
    can_edit = request.user.has_perm(services.EDIT_PERM)
    status = 200
    if request.method == "POST":
        require_perm(request.user, services.EDIT_PERM, connection.tenant)
        if onboarding is None:
            raise Http404("Nothing has run on this connection yet.")
        form = PlanForm(request.POST)
        if form.is_valid():
            values = {name: form.cleaned_data[name] for name in services.PLAN_FIELDS}
            try:
                plan, created = services.save_plan(
                    user=request.user,
                    onboarding=onboarding,
                    values=values,
                    seen_version=form.cleaned_data["seen_version"],
                    request=request,
                )
            except services.PlanConflict as exc:
                messages.error(request, str(exc))
                return redirect("load_test_plan", code=connection.code)
            except services.PlanRefused as exc:
                form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            else:
                if created:
                    messages.success(
                        request,
                        f"Load-test plan version {plan.version} is saved. "
                        "Ask hospital IT for their permission to run it.",
                    )
                else:
                    messages.info(request, f"Nothing changed: version {plan.version} stays the current plan.")
                return redirect("load_test_plan", code=connection.code)
        status = 400
    else:
        form = PlanForm(initial={**services.plan_values(latest), "seen_version": latest.version if latest else 0})
    return render(
        request,
        "onboarding/load_test_plan.html",
        _context(request, connection, onboarding, latest, shown, form, can_edit),
        status=status,
    )


def _shown_version(
    request: HttpRequest, onboarding: Onboarding | None, latest: LoadTestPlan | None
) -> LoadTestPlan | None:
    raw = request.GET.get("version", "")
    if not raw:
        return latest
    if onboarding is None:
        raise Http404("There is no load-test plan yet.")
    try:
        plan = services.plan_version(onboarding, int(raw))
    except ValueError:
        raise Http404("No such plan version.") from None
    if plan is None:
        raise Http404("No such plan version.")
    return plan


def _context(
    request: HttpRequest,
    connection: EHRConnection,
    onboarding: Onboarding | None,
    latest: LoadTestPlan | None,
    shown: LoadTestPlan | None,
    form: PlanForm,
    can_edit: bool,
) -> dict[str, Any]:
    return {
        "connection": connection,
        "tenant": connection.tenant,
        "onboarding": onboarding,
        "plan": shown,
        "latest": latest,
        "facts": services.describe(shown) if shown else None,
        "is_latest": shown is not None and latest is not None and shown.pk == latest.pk,
        "history": list(onboarding.load_test_plans.order_by("-version")[:20]) if onboarding else [],
        "caps": services.caps_facts(),
        "state": gates.gate_state(onboarding, services.GATE_KEY) if onboarding else None,
        "may_request": request.user.has_perm(gates.REQUEST_PERM),
        "may_decide_gate": not is_vendor_staff(request.user)
        and request.user.has_perm(gates.DECIDE_PERM, connection.tenant),
        "can_edit": can_edit and onboarding is not None,
        "form": form,
        "weight_fields": [form[field] for field in services.WEIGHT_FIELDS.values()],
        "rate_fields": [form[name] for name in ("target_rate",)],
        "peak_fields": [form[name] for name in ("normal_peak", "stress_factor")],
        "staircase_fields": [
            form[name] for name in ("staircase_start", "staircase_step", "staircase_steps", "staircase_step_s")
        ],
        "shape_fields": [form[name] for name in ("ramp_s", "duration_s", "concurrency")],
        "sla_fields": [form[name] for name in services.SLA_FIELDS],
    }
