"""Pipeline pages: the dashboard, a hospital, a connection's pipeline, a step run with live progress."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from connections.models import Vendor
from connections.selectors import get_connection_for_user
from onboarding.engine import selectors, services, work
from onboarding.gates import services as gates
from onboarding.loadtest import selectors as load_tests
from onboarding.models import Onboarding, Step, StepRun
from onboarding.steps import PIPELINE
from portal.access import get_tenant_for_user, require_perm
from portal.roles import is_vendor_staff
from portal.types import HtmxHttpRequest

DASHBOARD_PAGE_SIZE = 25


@login_required
@require_GET
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()[:100]
    vendor = request.GET.get("vendor", "")
    vendor = vendor if vendor in Vendor.values else ""
    state = request.GET.get("state", "")
    state = state if state in selectors.DASHBOARD_FILTERS else ""
    # Vendor staff choose between the hospitals assigned to them and all of them.
    scopes = is_vendor_staff(request.user)
    scope = request.GET.get("scope", "")
    scope = (
        scope if scopes and scope in ("mine", "all") else (selectors.default_scope(request.user) if scopes else "all")
    )
    tenants = selectors.dashboard_tenants(request.user, search=search, vendor=vendor, state=state, mine=scope == "mine")
    page = Paginator(tenants, DASHBOARD_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = selectors.dashboard_rows(page.object_list, state=state)
    context = {
        "page": page,
        "rows": rows,
        "search": search,
        "vendor": vendor,
        "state": state,
        "scope": scope,
        "scopes": scopes,
        "vendors": Vendor.choices,
        "states": selectors.DASHBOARD_FILTERS,
        "steps": PIPELINE,
    }
    template = "onboarding/dashboard.html#tenant-table" if request.htmx else "onboarding/dashboard.html"
    return render(request, template, context)


@login_required
@require_GET
def tenant_detail(request: HttpRequest, code: str) -> HttpResponse:
    tenant = get_tenant_for_user(request.user, code)
    connections = []
    for connection in (
        tenant.connections.filter(archived_at=None)
        .select_related("onboarding")
        .prefetch_related("onboarding__runs", "onboarding__approvals")
        .order_by("name")
    ):
        onboarding = getattr(connection, "onboarding", None)
        runs = list(onboarding.runs.all()) if onboarding is not None else []
        approvals = list(onboarding.approvals.all()) if onboarding is not None else []
        connections.append({"connection": connection, "cells": selectors.step_cells(runs, approvals)})
    recent = (
        StepRun.objects.filter(onboarding__tenant=tenant)
        .select_related("onboarding__connection", "requested_by")
        .order_by("-queued_at")[:20]
    )
    return render(
        request,
        "onboarding/tenant_detail.html",
        {
            "tenant": tenant,
            "connections": connections,
            # Out of the list, one click away: kept with their history, restorable from their page.
            "archived": list(tenant.connections.exclude(archived_at=None).order_by("name")),
            "recent_runs": recent,
        },
    )


@login_required
@require_GET
def connection_detail(request: HttpRequest, code: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, code)
    onboarding = getattr(connection, "onboarding", None)
    runs = list(onboarding.runs.select_related("requested_by").order_by("-queued_at")) if onboarding else []
    approvals = list(onboarding.approvals.all()) if onboarding else []
    return render(
        request,
        "onboarding/connection_detail.html",
        {
            "connection": connection,
            "tenant": connection.tenant,
            "onboarding": onboarding,
            "cells": selectors.step_cells(runs, approvals),
            "gate_states": [gates.gate_state(onboarding, gate.key) for gate in gates.all_gates()] if onboarding else [],
            "may_request": request.user.has_perm(gates.REQUEST_PERM),
            "runs": runs,
            "can_run": request.user.has_perm("onboarding.run_step"),
            "can_edit": request.user.has_perm("connections.change_ehrconnection"),
            **selectors.discovery_facts(connection, runs),
        },
    )


@login_required
@require_POST
def start_step(request: HtmxHttpRequest, code: str, step: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, code)
    # Refuse before anything is written: ensure_onboarding may create a row.
    require_perm(request.user, "onboarding.run_step", connection.tenant)
    onboarding: Onboarding = services.ensure_onboarding(connection)
    try:
        run = services.start_step(user=request.user, onboarding=onboarding, step=step, request=request)
    except services.StepError as exc:
        messages.error(request, str(exc))
        return redirect("connection_detail", code=connection.code)
    messages.success(request, f"{run.get_step_display()} attempt {run.attempt} is queued.")
    if request.htmx:
        return HttpResponseClientRedirect(run_url(run))
    return redirect("run_detail", code=run.code)


def run_url(run: StepRun) -> str:
    from django.urls import reverse

    return reverse("run_detail", kwargs={"code": run.code})


@login_required
@require_GET
def run_detail(request: HtmxHttpRequest, code: str) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, code)
    context = {
        "run": run,
        "connection": run.onboarding.connection,
        "tenant": run.onboarding.tenant,
        "can_cancel": request.user.has_perm("onboarding.cancel_step"),
        "can_run": request.user.has_perm("onboarding.run_step"),
        "next": selectors.next_action(run) if not run.is_active else None,
    }
    if run.step == Step.LOAD_TEST:
        context.update(load_tests.run_page(run))
    if request.htmx:
        response = render(request, "onboarding/run_detail.html#progress", context)
        if not run.is_active:
            # Swap in the final state once, then tell htmx to stop polling.
            response.status_code = HttpResponseStopPolling.status_code
        return response
    return render(request, "onboarding/run_detail.html", context)


@login_required
@require_POST
def cancel_run(request: HttpRequest, code: str) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, code)
    try:
        services.cancel_run(user=request.user, run=run, request=request)
    except services.StepError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "The run was cancelled.")
    return redirect("run_detail", code=run.code)


@login_required
@require_GET
def my_work(request: HttpRequest) -> HttpResponse:
    """The first page after login: what waits on this person, and who owes each next action."""
    return render(request, "onboarding/work.html", {"sections": work.work_for(request.user)})
