"""Pages to add and edit a hospital's EHR connection."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from connections.forms import ConnectionForm
from connections.selectors import get_connection_for_user
from connections.services import create_connection, update_connection
from portal.access import get_tenant_for_user, require_perm


@login_required
@require_http_methods(["GET", "POST"])
def connection_create(request: HttpRequest, code: str) -> HttpResponse:
    tenant = get_tenant_for_user(request.user, code)
    require_perm(request.user, "connections.add_ehrconnection", tenant)
    form = ConnectionForm(request.POST or None, tenant=tenant)
    if request.method == "POST" and form.is_valid():
        try:
            connection = create_connection(
                user=request.user,
                tenant=tenant,
                fields=form.editable_values(),
                secret=form.cleaned_data["secret"],
                request=request,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Connection “{connection.name}” saved. Run configure to check it.")
            return redirect("connection_detail", code=connection.code)
    return render(request, "connections/connection_form.html", {"form": form, "tenant": tenant, "connection": None})


@login_required
@require_http_methods(["GET", "POST"])
def connection_edit(request: HttpRequest, code: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, code)
    require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
    form = ConnectionForm(request.POST or None, instance=connection, tenant=connection.tenant)
    if request.method == "POST" and form.is_valid():
        try:
            update_connection(
                user=request.user,
                connection=connection,
                fields=form.editable_values(),
                secret=form.cleaned_data["secret"],
                request=request,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Connection updated. Re-run configure and test to check the change.")
            return redirect("connection_detail", code=connection.code)
    return render(
        request,
        "connections/connection_form.html",
        {"form": form, "tenant": connection.tenant, "connection": connection},
    )
