"""Pages owned by the portal core: creating a hospital, and the audit trail with its CSV export."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from portal import audit, csvsafe
from portal.access import get_tenant_for_user, require_perm
from portal.forms import COMMON_ZONES, AuditFilterForm, NewTenantForm, TenantForm
from portal.models import AuditEvent, Tenant
from portal.people.services import PeopleError
from portal.services import create_tenant, update_tenant
from portal.types import HtmxHttpRequest

AUDIT_PAGE_SIZE = 50


@login_required
@require_http_methods(["GET", "POST"])
def tenant_create(request: HttpRequest) -> HttpResponse:
    require_perm(request.user, "portal.add_tenant")
    form = NewTenantForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        invite = form.cleaned_data["invite_contact"] and bool(form.cleaned_data["contact_email"])
        try:
            tenant = create_tenant(user=request.user, fields=form.cleaned_data, invite_contact=invite, request=request)
        except ValidationError as exc:
            form.add_error(None, exc)
        except PeopleError as exc:
            form.add_error("contact_email", str(exc))
        else:
            invited = f" {tenant.contact_email} is invited as its approver." if invite else ""
            messages.success(request, f"{tenant.name} was created.{invited} Add its EHR connection next.")
            return redirect("tenant_detail", code=tenant.code)
    return render(request, "portal/tenant_form.html", {"form": form, "zones": COMMON_ZONES})


@login_required
@require_http_methods(["GET", "POST"])
def tenant_edit(request: HttpRequest, code: str) -> HttpResponse:
    """Change a hospital's details, such as whether its people must use two-factor authentication."""
    tenant = get_tenant_for_user(request.user, code)
    require_perm(request.user, "portal.change_tenant", tenant)
    # The form gets its own copy: validating it writes the typed values onto its instance.
    form = TenantForm(request.POST or None, instance=get_tenant_for_user(request.user, code))
    if request.method == "POST" and form.is_valid():
        try:
            tenant = update_tenant(user=request.user, tenant=tenant, fields=form.cleaned_data, request=request)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"{tenant.name} was saved.")
            return redirect("tenant_detail", code=tenant.code)
    return render(request, "portal/tenant_form.html", {"form": form, "zones": COMMON_ZONES, "tenant": tenant})


@login_required
@require_GET
def tenant_audit(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """One hospital's audit trail, for its hospital IT and for vendor staff."""
    tenant = get_tenant_for_user(request.user, code)
    require_perm(request.user, "portal.view_audit", tenant)
    return _audit_page(request, AuditEvent.objects.filter(tenant=tenant), tenant=tenant)


@login_required
@require_GET
def tenant_audit_csv(request: HttpRequest, code: str) -> StreamingHttpResponse:
    tenant = get_tenant_for_user(request.user, code)
    require_perm(request.user, "portal.view_audit", tenant)
    return _audit_csv(request, AuditEvent.objects.filter(tenant=tenant), tenant=tenant)


@login_required
@require_GET
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    """Every event, sign-ins of vendor staff included: vendor staff only."""
    require_perm(request.user, "portal.view_all_tenants")
    require_perm(request.user, "portal.view_audit")
    return _audit_page(request, AuditEvent.objects.all(), tenant=None)


@login_required
@require_GET
def audit_log_csv(request: HttpRequest) -> StreamingHttpResponse:
    require_perm(request.user, "portal.view_all_tenants")
    require_perm(request.user, "portal.view_audit")
    return _audit_csv(request, AuditEvent.objects.all(), tenant=None)


def _audit_page(request: HtmxHttpRequest, events: QuerySet[AuditEvent], *, tenant: Tenant | None) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    filters = form.filters() if request.GET else {}
    matching = audit.filter_events(events, filters).select_related("tenant")
    page = Paginator(matching, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    context: dict[str, Any] = {
        "tenant": tenant,
        "form": form,
        "page": page,
        "actions": events.order_by("action").values_list("action", flat=True).distinct(),
        "query": request.GET.copy(),
    }
    context["query"].pop("page", None)
    template = "portal/audit.html#events" if request.htmx else "portal/audit.html"
    return render(request, template, context)


def _audit_csv(request: HttpRequest, events: QuerySet[AuditEvent], *, tenant: Tenant | None) -> StreamingHttpResponse:
    """The filtered trail as CSV; the export itself is an audit event, written before any row leaves."""
    filters = AuditFilterForm(request.GET or None).filters() if request.GET else {}
    matching = audit.filter_events(events, filters)
    with transaction.atomic():
        audit.record(
            action="audit.export",
            actor=request.user,
            tenant=tenant,
            request=request,
            detail={"format": "csv", "filters": {k: str(v) for k, v in filters.items()}, "rows": matching.count()},
        )
    response = StreamingHttpResponse(csvsafe.lines(audit.csv_rows(matching)), content_type="text/csv")
    scope = f"{tenant.code}" if tenant else "all"
    response["Content-Disposition"] = f'attachment; filename="audit-{scope}-{timezone.now():%Y%m%d-%H%M}.csv"'
    return response
