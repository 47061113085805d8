"""Tenant pages owned by the portal core: creating a hospital."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from portal.access import require_perm
from portal.forms import COMMON_ZONES, TenantForm
from portal.services import create_tenant


@login_required
@require_http_methods(["GET", "POST"])
def tenant_create(request: HttpRequest) -> HttpResponse:
    require_perm(request.user, "portal.add_tenant")
    form = TenantForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            tenant = create_tenant(user=request.user, fields=form.cleaned_data, request=request)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"{tenant.name} was created. Add its EHR connection next.")
            return redirect("tenant_detail", code=tenant.code)
    return render(request, "portal/tenant_form.html", {"form": form, "zones": COMMON_ZONES})
