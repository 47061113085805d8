"""Pages to add and edit a hospital's EHR connection, and to manage its SMART key pair."""

from __future__ import annotations

import json
import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from connections.forms import ConnectionForm, KeyPairForm
from connections.selectors import get_connection_for_user
from connections.services import (
    ArchiveError,
    archive_connection,
    create_connection,
    generate_key_pair,
    restore_connection,
    set_without_capability_statement,
    update_connection,
)
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


@login_required
@require_http_methods(["GET", "POST"])
def smart_key(request: HttpRequest, code: str) -> HttpResponse:
    """Generate or replace the SMART Backend Services key pair; the private key is never shown."""
    connection = get_connection_for_user(request.user, code)
    require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
    form = KeyPairForm(request.POST or None, connection=connection)
    if request.method == "POST" and form.is_valid():
        try:
            connection = generate_key_pair(
                user=request.user,
                connection=connection,
                algorithm=form.cleaned_data["algorithm"],
                replace_existing=bool(form.cleaned_data.get("confirm_replace")),
                request=request,
            )
        except ValidationError as exc:
            # Someone else made a key pair meanwhile, or the connection changed method.
            form.add_error(None, exc)
            return render(
                request,
                "connections/smart_key.html",
                {"form": form, "connection": connection, "tenant": connection.tenant},
            )
        messages.success(
            request,
            f"New {connection.key_algorithm} key pair made (key id {connection.key_id}). Send the hospital the "
            "public key set below to register before the next test run.",
        )
        return redirect("connection_detail", code=connection.code)
    return render(
        request,
        "connections/smart_key.html",
        {"form": form, "connection": connection, "tenant": connection.tenant},
    )


@login_required
@require_POST
def capability_statement_choice(request: HttpRequest, code: str) -> HttpResponse:
    """Go on without a CapabilityStatement (a server that has none), or require one again; audited."""
    connection = get_connection_for_user(request.user, code)
    enabled = request.POST.get("continue_without") == "1"
    connection = set_without_capability_statement(
        user=request.user, connection=connection, enabled=enabled, request=request
    )
    if enabled:
        messages.success(
            request,
            "This connection goes on without a CapabilityStatement. Re-run configure: it skips, and lists, the "
            "checks that need one.",
        )
    else:
        messages.success(request, "This connection requires a CapabilityStatement again. Re-run configure.")
    return redirect("connection_detail", code=connection.code)


@login_required
@require_GET
def jwks_download(request: HttpRequest, code: str) -> HttpResponse:
    """The public key set as a JSON file, for the hospital to register. Public keys only."""
    connection = get_connection_for_user(request.user, code)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", connection.name).strip("-").lower() or "connection"
    response = HttpResponse(json.dumps(connection.jwks, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{slug}-jwks.json"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
def connection_archive(request: HttpRequest, code: str) -> HttpResponse:
    """Archive a connection, after a confirmation page: hidden from lists, kept with its history."""
    connection = get_connection_for_user(request.user, code)
    require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
    if request.method == "POST":
        try:
            archive_connection(user=request.user, connection=connection, request=request)
        except ArchiveError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("connection_detail", code=connection.code)
        messages.success(
            request,
            f"“{connection.name}” is archived: it is hidden from the lists and its steps cannot run. Its history is "
            "kept; restore it from its page (the dashboard's “Archived” filter lists it).",
        )
        return redirect("tenant_detail", code=connection.tenant.code)
    return render(request, "connections/archive_confirm.html", {"connection": connection, "tenant": connection.tenant})


@login_required
@require_POST
def connection_restore(request: HttpRequest, code: str) -> HttpResponse:
    """Bring an archived connection back into the lists."""
    connection = get_connection_for_user(request.user, code)
    try:
        restore_connection(user=request.user, connection=connection, request=request)
    except ArchiveError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"“{connection.name}” is restored: it is back in the lists and its steps can run.")
    return redirect("connection_detail", code=connection.code)
