"""Mapping pages: the data profile, the inline code editor, CSV and ConceptMap, and the sign-off gate.

Customer success and engineers edit; hospital IT of the tenant see everything and sign off; anyone
else gets 404. Every change goes through ``onboarding.mapping.services``, which writes a new version.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from connections.models import EHRConnection
from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import ELEMENTS_BY_KEY, KNOWN_SYSTEM_LABELS, SYSTEM_LABELS
from onboarding.models import Mapping, Onboarding, ValidationPolicy
from portal.access import get_tenant_for_user, require_perm
from portal.middleware import api_equivalent
from portal.roles import is_vendor_staff
from portal.types import HtmxHttpRequest

MAX_UPLOAD_BYTES = mappings.MAX_CSV_BYTES


def _context(request: HttpRequest, connection_code: str) -> tuple[EHRConnection, Onboarding | None, Mapping | None]:
    connection = get_connection_for_user(request.user, connection_code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    mapping = mappings.latest_mapping(onboarding) if onboarding else None
    return connection, onboarding, mapping


def _seen_version(onboarding: Onboarding | None, request: HttpRequest) -> Mapping:
    """The mapping version the person was looking at when they posted."""
    if onboarding is None:
        raise Http404("There is no mapping yet.")
    try:
        return onboarding.mappings.get(version=int(request.POST.get("version", "")))
    except (ValueError, Mapping.DoesNotExist):
        raise Http404("No such mapping version.") from None


def _page_context(
    request: HttpRequest, connection: EHRConnection, onboarding: Onboarding | None, mapping: Mapping | None
) -> dict[str, Any]:
    map_run = mappings.latest_map_run(onboarding) if onboarding else None
    tenant = connection.tenant
    _, sign_reason = mappings.sign_off_state(mapping)
    profile = (map_run.result or {}).get("profile") if map_run else None
    choices = _mrn_choices(profile, mapping)
    return {
        "connection": connection,
        "tenant": tenant,
        "onboarding": onboarding,
        "mapping": mapping,
        "rows": _rows(mapping),
        "map_run": map_run,
        "profile": profile,
        "mrn_choices": choices,
        # "Another system" is chosen when the current one is not among the profile's, or there is no profile.
        "mrn_other": not choices or (bool(mapping and mapping.mrn_system) and not any(c["current"] for c in choices)),
        "mrn_other_value": MRN_OTHER,
        "coverage": mappings.coverage(mapping) if mapping else None,
        "sign_off": mappings.active_sign_off(mapping) if mapping else None,
        "history": list(mapping.onboarding.mappings.order_by("-version")[:10]) if mapping else [],
        "void_sign_offs": _void_sign_offs(onboarding),
        "can_edit": request.user.has_perm(mappings.EDIT_PERM),
        "state": gates.gate_state(onboarding, mappings.SIGN_OFF_GATE) if onboarding else None,
        "may_request": request.user.has_perm(gates.REQUEST_PERM),
        "may_decide_gate": _may_sign(request, connection),
        "sign_reason": sign_reason,
        "extension_choices": mappings.EXTENSION_CHOICES,
        "editing": request.GET.get("edit", ""),
    }


# The radio button that says "the system typed in the box", not one of the profile's.
MRN_OTHER = "other"


def _mrn_choices(profile: dict[str, Any] | None, mapping: Mapping | None) -> list[dict[str, Any]]:
    """The identifier systems the profile found, with their shares, to pick the MRN system from."""
    if not profile:
        return []
    current = mapping.mrn_system if mapping else ""
    return [
        {
            **item,
            "suggested": item.get("system") == profile.get("suggested_mrn_system"),
            "current": item.get("system") == current,
        }
        for item in profile.get("identifier_systems") or []
        if isinstance(item, dict) and item.get("system")
    ]


def _may_sign(request: HttpRequest, connection: EHRConnection) -> bool:
    if is_vendor_staff(request.user):
        return False
    try:
        require_perm(request.user, mappings.SIGN_OFF_PERM, connection.tenant)
    except PermissionDenied:
        return False
    return True


def _void_sign_offs(onboarding: Onboarding | None) -> list[Any]:
    if onboarding is None:
        return []
    return [approval for approval in gates.history(onboarding, mappings.SIGN_OFF_GATE) if approval.voided_at][:10]


def _rows(mapping: Mapping | None) -> list[dict[str, Any]]:
    """The code rows with what the editor needs: a key, the systems it may map to, labels."""
    if mapping is None:
        return []
    rows = []
    for index, row in enumerate(mapping.codes):
        element = ELEMENTS_BY_KEY.get(row["element"])
        rows.append(
            {
                **row,
                "index": index,
                "key": mappings.row_key(row),
                "targets": [(s, SYSTEM_LABELS[s]) for s in element.accepted] if element else [],
                "target_label": SYSTEM_LABELS.get(row.get("target_system", ""), ""),
                "source_label": KNOWN_SYSTEM_LABELS.get(row["system"], ""),
                "mapped": bool(row.get("target_code")),
            }
        )
    return rows


@login_required
@require_GET
def mapping_page(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """The mapping of a connection: version, coverage, sign-off, editor, import and the data profile."""
    connection, onboarding, mapping = _context(request, code)
    return render(request, "onboarding/mapping.html", _page_context(request, connection, onboarding, mapping))


@login_required
@require_http_methods(["GET", "POST"])
def mapping_code(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """One code row: GET shows it (or its edit form with ?edit=1); POST saves it (htmx or plain form)."""
    connection, onboarding, mapping = _context(request, code)
    if mapping is None:
        raise Http404("There is no mapping yet.")
    if request.method == "GET":
        key = request.GET.get("key", "")
        row = next((r for r in _rows(mapping) if r["key"] == key), None)
        if row is None:
            raise Http404("No such code in this mapping.")
        editing = request.GET.get("edit") == "1" and request.user.has_perm(mappings.EDIT_PERM)
        return _row_response(request, connection, mapping, row, editing=editing)
    seen = _seen_version(onboarding, request)
    before = mapping
    key = request.POST.get("key", "")
    try:
        mapping = mappings.update_code(
            user=request.user,
            mapping=seen,
            key=key,
            target_system=request.POST.get("target_system", ""),
            target_code=request.POST.get("target_code", ""),
            target_display=request.POST.get("target_display", ""),
            request=request,
        )
    except mappings.MappingError as exc:
        row = next((r for r in _rows(seen) if r["key"] == key), None)
        if not request.htmx or row is None:
            messages.error(request, str(exc))
            return redirect("mapping", code=connection.code)
        row.update(
            target_system=request.POST.get("target_system", ""),
            target_code=request.POST.get("target_code", ""),
            target_display=request.POST.get("target_display", ""),
        )
        # 200, so htmx swaps the form back in with the message (it leaves 4xx answers unswapped).
        return _row_response(request, connection, seen, row, editing=True, error=str(exc))
    if not request.htmx:
        _report_save(request, before, mapping, "Saved")
        return redirect("mapping", code=connection.code)
    row = next(r for r in _rows(mapping) if r["key"] == key)
    return _row_response(request, connection, mapping, row, editing=False, refresh_head=True)


def _row_response(
    request: HttpRequest,
    connection: EHRConnection,
    mapping: Mapping,
    row: dict[str, Any],
    *,
    editing: bool,
    error: str = "",
    refresh_head: bool = False,
) -> HttpResponse:
    context = {
        "connection": connection,
        "mapping": mapping,
        "row": row,
        "error": error,
        "can_edit": request.user.has_perm(mappings.EDIT_PERM),
    }
    template = "onboarding/mapping.html#code-edit" if editing else "onboarding/mapping.html#code-row"
    response = render(request, template, context)
    if refresh_head:
        # The version, coverage and sign-off box change with every save: swap them in too.
        full = _page_context(request, connection, mapping.onboarding, mapping)
        for part in ("version-head", "history"):
            response.content += render(request, f"onboarding/mapping.html#{part}", {**full, "oob": True}).content
    return response


@login_required
@require_POST
def mapping_mrn(request: HttpRequest, code: str) -> HttpResponse:
    """Save the MRN identifier system."""
    connection, onboarding, before = _context(request, code)
    seen = _seen_version(onboarding, request)
    system = request.POST.get("system", "")
    if system == MRN_OTHER:
        # "Another system": what was typed, for a system the sample did not hold.
        system = request.POST.get("other_system", "")
    try:
        mapping = mappings.set_mrn_system(user=request.user, mapping=seen, system=system, request=request)
    except mappings.MappingError as exc:
        messages.error(request, str(exc))
    else:
        _report_save(request, before, mapping, "MRN system saved")
    return redirect("mapping", code=connection.code)


@login_required
@require_POST
def mapping_extension(request: HttpRequest, code: str) -> HttpResponse:
    """Save the decision about one unknown extension."""
    connection, onboarding, before = _context(request, code)
    seen = _seen_version(onboarding, request)
    try:
        mapping = mappings.set_extension_handling(
            user=request.user,
            mapping=seen,
            url=request.POST.get("url", ""),
            handling=request.POST.get("handling", ""),
            request=request,
        )
    except mappings.MappingError as exc:
        messages.error(request, str(exc))
    else:
        _report_save(request, before, mapping, "Extension decision saved")
    return redirect("mapping", code=connection.code)


def _report_save(request: HttpRequest, before: Mapping | None, saved: Mapping, what: str) -> None:
    """Say what a save did: a new version, or none at all when nothing changed (no sign-off was voided).

    ``before`` is the latest version when the request came in: a save that made nothing returns it.
    """
    if before is not None and saved.version <= before.version:
        messages.info(request, f"Nothing changed: the mapping stays version {saved.version}.")
    else:
        messages.success(request, f"{what}: the mapping is now version {saved.version}.")


@api_equivalent("api_mapping_csv")
@login_required
@require_GET
def mapping_export_csv(request: HttpRequest, code: str) -> HttpResponse:
    """The latest version's code rows as a CSV download."""
    connection, _, mapping = _context(request, code)
    if mapping is None:
        raise Http404("There is no mapping yet.")
    response = HttpResponse(mappings.export_csv(mapping), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="mapping-{connection.code}-v{mapping.version}.csv"'
    return response


@login_required
@require_POST
def mapping_import_csv(request: HttpRequest, code: str) -> HttpResponse:
    """Import a CSV; a bad file shows its row-level errors on the page and saves nothing."""
    connection, onboarding, latest = _context(request, code)
    seen = _seen_version(onboarding, request)
    require_perm(request.user, mappings.EDIT_PERM, connection.tenant)
    upload = request.FILES.get("file")
    errors: list[tuple[int, str]] = []
    if upload is None:
        errors = [(0, "Choose a CSV file to import.")]
    elif upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
        errors = [(0, f"The file is larger than {MAX_UPLOAD_BYTES // 1024} KB.")]
    else:
        try:
            result = mappings.import_csv(user=request.user, mapping=seen, data=upload.read(), request=request)
        except mappings.MappingError as exc:
            errors = [(0, str(exc))]
        else:
            errors = result.errors
            if not errors and result.mapping is not None:
                if result.mapping.pk == seen.pk:
                    messages.info(request, "The file matches the mapping: nothing changed.")
                else:
                    messages.success(
                        request,
                        f"Imported: {result.changed} code{'s' if result.changed != 1 else ''} changed; "
                        f"the mapping is now version {result.mapping.version}.",
                    )
                return redirect("mapping", code=connection.code)
    context = _page_context(request, connection, onboarding, latest)
    context["import_errors"] = errors
    context["import_name"] = upload.name if upload is not None else ""
    return render(request, "onboarding/mapping.html", context, status=400)


@api_equivalent("api_mapping_concept_map")
@login_required
@require_GET
def mapping_concept_map(request: HttpRequest, code: str) -> HttpResponse:
    """The latest version as a FHIR ConceptMap download."""
    connection, _, mapping = _context(request, code)
    if mapping is None:
        raise Http404("There is no mapping yet.")
    body = json.dumps(mappings.concept_map(mapping), indent=2)
    response = HttpResponse(body, content_type="application/fhir+json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="conceptmap-{connection.code}-v{mapping.version}.json"'
    return response


# --- the tenant's validation policy ---------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def validation_policy(request: HttpRequest, code: str) -> HttpResponse:
    """Thresholds and sample sizes of the tenant's map and validate steps."""
    from django.forms import modelform_factory

    tenant = get_tenant_for_user(request.user, code)
    policy = mappings.policy_for(tenant)
    form_class = modelform_factory(
        ValidationPolicy,
        fields=list(mappings.POLICY_FIELDS),
    )
    can_edit = request.user.has_perm(mappings.EDIT_PERM)
    if request.method == "POST":
        require_perm(request.user, mappings.EDIT_PERM, tenant)
        form = form_class(request.POST, instance=policy)
        if form.is_valid():
            changes = {name: form.cleaned_data[name] for name in mappings.POLICY_FIELDS}
            mappings.update_policy(user=request.user, tenant=tenant, changes=changes, request=request)
            messages.success(request, "Validation policy saved. It applies from the next run.")
            return redirect("validation_policy", code=tenant.code)
        status = 400
    else:
        form = form_class(instance=policy)
        status = 200
    return render(
        request,
        "onboarding/validation_policy.html",
        {"tenant": tenant, "form": form, "can_edit": can_edit},
        status=status,
    )
