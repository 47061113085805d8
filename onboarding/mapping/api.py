"""API for a connection's mapping and the tenant's validation policy: what the mapping page does.

Reads are open to everyone who may see the connection (hospital IT included); every write needs
the permission to run steps, as on the page, and names the mapping ``version`` the client read.
That version is the optimistic lock the page's hidden field is: a change someone else made to the
same thing since answers 409 and overwrites nothing. A write that changes nothing makes no version.
The sign-off itself is the gates API (``/api/v1/connections/<code>/gates/``).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.models import EHRConnection
from connections.selectors import get_connection_for_user
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import ELEMENTS_BY_KEY, KNOWN_SYSTEM_LABELS, SYSTEM_LABELS
from onboarding.models import Mapping, Onboarding, ValidationPolicy
from portal.access import get_tenant_for_user, require_perm
from portal.api import DownloadNegotiation, django_errors

HISTORY_LENGTH = 10

# --- output ---------------------------------------------------------------------------------------------


class TargetSystemOutput(serializers.Serializer):
    system = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)


class CodeRowOutput(serializers.Serializer):
    key = serializers.CharField(help_text="Names the row in writes: element|local system|local code.")
    element = serializers.CharField()
    system = serializers.CharField(help_text="The hospital's code system.")
    system_label = serializers.CharField(help_text="The name of a known system (e.g. ICD-9-CM), else empty.")
    code = serializers.CharField()
    display = serializers.CharField()
    count = serializers.IntegerField(help_text="Resources of the map run's sample carrying this code.")
    target_system = serializers.CharField()
    target_code = serializers.CharField()
    target_display = serializers.CharField()
    mapped = serializers.BooleanField()
    targets = TargetSystemOutput(many=True, help_text="The standard systems this element may be mapped to.")


class ExtensionOutput(serializers.Serializer):
    url = serializers.CharField()
    handling = serializers.CharField(help_text="use, ignore, or empty while undecided")


class CoverageOutput(serializers.Serializer):
    complete = serializers.BooleanField(help_text="The MRN system is set and every local code is mapped.")
    mrn_system_set = serializers.BooleanField()
    unmapped = serializers.IntegerField(help_text="Local codes not mapped yet.")
    undecided_extensions = serializers.ListField(child=serializers.CharField())
    summary = serializers.CharField()


class IdentifierSystemOutput(serializers.Serializer):
    system = serializers.CharField()
    patients = serializers.IntegerField()
    share = serializers.FloatField(help_text="Percent of the sampled patients carrying it.")
    mrn_typed = serializers.BooleanField(help_text="Typed MR (medical record number) by the hospital.")


class VersionOutput(serializers.Serializer):
    version = serializers.IntegerField()
    source = serializers.CharField()  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(allow_null=True)
    content_hash = serializers.CharField()


class SignOffOutput(serializers.Serializer):
    signed = serializers.BooleanField(help_text="Hospital IT approved exactly this version.")
    approval = serializers.UUIDField(allow_null=True, help_text="The live approval, at /api/v1/approvals/<code>/.")
    requestable = serializers.BooleanField(help_text="May be put to hospital IT now (the gates API).")
    sentence = serializers.CharField()


class MappingOutput(serializers.Serializer):
    connection = serializers.UUIDField()
    code = serializers.UUIDField()
    version = serializers.IntegerField(help_text="Send it back as `version` with every write.")
    latest_version = serializers.IntegerField()
    content_hash = serializers.CharField(help_text="What a sign-off binds; the gates API's artifact_hash.")
    source = serializers.CharField(help_text="map_step, editor or csv_import")  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(allow_null=True)
    map_run = serializers.UUIDField(allow_null=True)
    mrn_system = serializers.CharField()
    identifier_systems = IdentifierSystemOutput(
        many=True, help_text="Patient identifier systems the latest map run found, to choose the MRN system from."
    )
    extensions = ExtensionOutput(many=True)
    codes = CodeRowOutput(many=True)
    coverage = CoverageOutput()
    sign_off = SignOffOutput()
    history = VersionOutput(many=True, help_text=f"The {HISTORY_LENGTH} newest versions, newest first.")


class MappingWriteOutput(serializers.Serializer):
    changed = serializers.BooleanField(help_text="False when the write matched the mapping: no version was made.")
    detail = serializers.CharField()
    mapping = MappingOutput()


class ImportOutput(MappingWriteOutput):
    changed_codes = serializers.IntegerField()


class LineErrorOutput(serializers.Serializer):
    line = serializers.IntegerField(help_text="The file's line (0: the file as a whole).")
    message = serializers.CharField()


class ImportErrorsOutput(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    errors = LineErrorOutput(many=True)  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)


class RefusalOutput(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField(help_text="invalid (fix the request) or conflict (reload and redo)")
    latest_version = serializers.IntegerField(required=False)


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def mapping_data(mapping: Mapping) -> dict[str, Any]:
    """Everything the mapping page shows about one version, as the API's output."""
    onboarding = mapping.onboarding
    latest = mappings.latest_mapping(onboarding)
    map_run = mappings.latest_map_run(onboarding)
    profile = (map_run.result or {}).get("profile") if map_run else None
    cover = mappings.coverage(mapping)
    requestable, sentence = mappings.sign_off_state(mapping)
    approval = mappings.active_sign_off(mapping)
    history = onboarding.mappings.select_related("created_by").order_by("-version")[:HISTORY_LENGTH]
    data = {
        "connection": onboarding.connection.code,
        "code": mapping.code,
        "version": mapping.version,
        "latest_version": latest.version if latest else mapping.version,
        "content_hash": mapping.content_hash,
        "source": mapping.source,
        "created_at": mapping.created_at,
        "created_by": _username(mapping.created_by),
        "map_run": mapping.map_run.code if mapping.map_run else None,
        "mrn_system": mapping.mrn_system,
        "identifier_systems": [
            {
                "system": str(found.get("system", "")),
                "patients": int(found.get("patients") or 0),
                "share": float(found.get("share") or 0),
                "mrn_typed": bool(found.get("mrn_typed")),
            }
            for found in (profile or {}).get("identifier_systems", [])
        ],
        "extensions": [{"url": url, "handling": h} for url, h in sorted(mapping.extension_handling.items())],
        "codes": [_row(row) for row in mapping.codes],
        "coverage": {
            "complete": cover.complete,
            "mrn_system_set": cover.mrn_system_set,
            "unmapped": len(cover.unmapped),
            "undecided_extensions": cover.undecided_extensions,
            "summary": cover.summary(),
        },
        "sign_off": {
            "signed": approval is not None,
            "approval": approval.code if approval else None,
            "requestable": requestable,
            "sentence": sentence,
        },
        "history": [
            {
                "version": old.version,
                "source": old.source,
                "created_at": old.created_at,
                "created_by": _username(old.created_by),
                "content_hash": old.content_hash,
            }
            for old in history
        ],
    }
    return dict(MappingOutput(data).data)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    element = ELEMENTS_BY_KEY.get(row["element"])
    return {
        "key": mappings.row_key(row),
        "element": row["element"],
        "system": row["system"],
        "system_label": KNOWN_SYSTEM_LABELS.get(row["system"], SYSTEM_LABELS.get(row["system"], "")),
        "code": row["code"],
        "display": row.get("display", ""),
        "count": int(row.get("count") or 0),
        "target_system": row.get("target_system", ""),
        "target_code": row.get("target_code", ""),
        "target_display": row.get("target_display", ""),
        "mapped": bool(row.get("target_code")),
        "targets": [{"system": s, "label": SYSTEM_LABELS[s]} for s in element.accepted] if element else [],
    }


# --- input ----------------------------------------------------------------------------------------------


class VersionedInput(serializers.Serializer):
    version = serializers.IntegerField(
        min_value=1, help_text="The mapping version you read (GET .../mapping/): refused with 409 if it changed since."
    )


class MrnInput(VersionedInput):
    system = serializers.CharField(max_length=300, help_text="The identifier system (a URI) that carries the MRN.")


class CodeInput(VersionedInput):
    key = serializers.CharField(max_length=1500, help_text="The row's key, as the mapping lists it.")
    target_system = serializers.CharField(
        max_length=300, allow_blank=True, default="", help_text="A standard system's URI or name (LOINC...)."
    )
    target_code = serializers.CharField(max_length=100, allow_blank=True, default="")
    target_display = serializers.CharField(max_length=1000, allow_blank=True, default="")


class ExtensionInput(VersionedInput):
    url = serializers.CharField(max_length=1000)
    handling = serializers.ChoiceField(
        choices=[(k, v) for k, v in mappings.EXTENSION_CHOICES.items()], allow_blank=True
    )


class ImportInput(VersionedInput):
    file = serializers.FileField(help_text="A CSV in the columns the export writes (UTF-8).")


# --- views ----------------------------------------------------------------------------------------------


def _connection(request: Request, code: str) -> tuple[EHRConnection, Onboarding]:
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    if onboarding is None or mappings.latest_mapping(onboarding) is None:
        raise Http404("There is no mapping yet: run the map step first.")
    return connection, onboarding


def _for_write(request: Request, code: str, serializer_class: type[VersionedInput]) -> tuple[Onboarding, Mapping, Any]:
    """The connection's pipeline, the version the client read and its valid input; 403 before 400."""
    connection, onboarding = _connection(request, code)
    require_perm(request.user, mappings.EDIT_PERM, connection.tenant)
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        seen = onboarding.mappings.get(version=data.validated_data["version"])
    except Mapping.DoesNotExist:
        refusal = {"version": ["This connection has no mapping version with that number."]}
        raise serializers.ValidationError(refusal) from None
    return onboarding, seen, data.validated_data


def _refused(exc: mappings.MappingError, onboarding: Onboarding) -> Response:
    latest = mappings.latest_mapping(onboarding)
    if isinstance(exc, mappings.MappingConflict):
        body: dict[str, Any] = {"detail": str(exc), "code": "conflict"}
        if latest is not None:
            body["latest_version"] = latest.version
        return Response(body, status=status.HTTP_409_CONFLICT)
    return Response({"detail": str(exc), "code": "invalid"}, status=status.HTTP_400_BAD_REQUEST)


def _written(before: Mapping, saved: Mapping, what: str) -> Response:
    changed = saved.version > before.version
    detail = (
        f"{what}: the mapping is now version {saved.version}."
        if changed
        else f"Nothing changed: the mapping stays version {saved.version}."
    )
    return Response({"changed": changed, "detail": detail, "mapping": mapping_data(saved)})


WRITE_RESPONSES = {
    200: MappingWriteOutput,
    400: OpenApiResponse(RefusalOutput, description="The change is refused; `detail` says what to fix."),
    409: OpenApiResponse(RefusalOutput, description="Someone changed the same thing since `version`: reload."),
}


@extend_schema(
    parameters=[OpenApiParameter("version", int, description="An older version to read; the latest by default.")],
    responses=MappingOutput,
    operation_id="connections_mapping_retrieve",
)
@api_view(["GET"])
def mapping_detail(request: Request, code: str) -> Response:
    """The connection's mapping: MRN system, extensions, local codes, coverage and sign-off state."""
    _, onboarding = _connection(request, code)
    mapping = mappings.latest_mapping(onboarding)
    wanted = request.query_params.get("version")
    if wanted:
        try:
            mapping = onboarding.mappings.get(version=int(wanted))
        except (ValueError, Mapping.DoesNotExist):
            raise Http404("No such mapping version.") from None
    assert mapping is not None  # _connection refused a pipeline without one
    return Response(mapping_data(mapping))


@extend_schema(request=MrnInput, responses=WRITE_RESPONSES, operation_id="connections_mapping_mrn_system")
@api_view(["POST"])
def mapping_mrn(request: Request, code: str) -> Response:
    """Choose the identifier system that carries the MRN."""
    onboarding, seen, data = _for_write(request, code, MrnInput)
    before = mappings.latest_mapping(onboarding)
    try:
        saved = mappings.set_mrn_system(
            user=request.user, mapping=seen, system=data["system"], request=request._request
        )
    except mappings.MappingError as exc:
        return _refused(exc, onboarding)
    assert before is not None
    return _written(before, saved, "MRN system saved")


@extend_schema(request=CodeInput, responses=WRITE_RESPONSES, operation_id="connections_mapping_code")
@api_view(["POST"])
def mapping_code(request: Request, code: str) -> Response:
    """Map one local code to a standard code, or clear its mapping with three blanks."""
    onboarding, seen, data = _for_write(request, code, CodeInput)
    before = mappings.latest_mapping(onboarding)
    try:
        saved = mappings.update_code(
            user=request.user,
            mapping=seen,
            key=data["key"],
            target_system=data["target_system"],
            target_code=data["target_code"],
            target_display=data["target_display"],
            request=request._request,
        )
    except mappings.MappingError as exc:
        return _refused(exc, onboarding)
    assert before is not None
    return _written(before, saved, "Saved")


@extend_schema(request=ExtensionInput, responses=WRITE_RESPONSES, operation_id="connections_mapping_extension")
@api_view(["POST"])
def mapping_extension(request: Request, code: str) -> Response:
    """Decide what the product does with an extension it does not know: use it, ignore it, or undecided."""
    onboarding, seen, data = _for_write(request, code, ExtensionInput)
    before = mappings.latest_mapping(onboarding)
    try:
        saved = mappings.set_extension_handling(
            user=request.user, mapping=seen, url=data["url"], handling=data["handling"], request=request._request
        )
    except mappings.MappingError as exc:
        return _refused(exc, onboarding)
    assert before is not None
    return _written(before, saved, "Extension decision saved")


class MappingCsv(APIView):
    """GET exports the mapping as CSV; POST imports one (multipart: ``version`` and ``file``)."""

    content_negotiation_class = DownloadNegotiation

    @extend_schema(
        responses={(200, "text/csv"): OpenApiTypes.STR},
        description="The latest version's code rows as CSV, in the columns the import reads back.",
        operation_id="connections_mapping_csv_export",
    )
    def get(self, request: Request, code: str) -> HttpResponse:
        connection, onboarding = _connection(request, code)
        mapping = mappings.latest_mapping(onboarding)
        assert mapping is not None
        response = HttpResponse(mappings.export_csv(mapping), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="mapping-{connection.code}-v{mapping.version}.csv"'
        return response

    @extend_schema(
        request={"multipart/form-data": ImportInput},
        responses={
            200: ImportOutput,
            400: OpenApiResponse(ImportErrorsOutput, description="Row-level errors; nothing was saved."),
            409: OpenApiResponse(RefusalOutput, description="The mapping changed since `version`: export again."),
        },
        description="Import a CSV of code mappings onto the version you read. Any bad row saves nothing.",
        operation_id="connections_mapping_csv_import",
    )
    def post(self, request: Request, code: str) -> Response:
        onboarding, seen, data = _for_write(request, code, ImportInput)
        upload = data["file"]
        if upload.size is not None and upload.size > mappings.MAX_CSV_BYTES:
            return _import_errors([(0, f"The file is larger than {mappings.MAX_CSV_BYTES // 1024} KB.")])
        try:
            result = mappings.import_csv(user=request.user, mapping=seen, data=upload.read(), request=request._request)
        except mappings.MappingError as exc:
            return _refused(exc, onboarding)
        if result.errors or result.mapping is None:
            return _import_errors(result.errors)
        changed = result.mapping.pk != seen.pk
        detail = (
            f"Imported: {result.changed} code{'s' if result.changed != 1 else ''} changed; "
            f"the mapping is now version {result.mapping.version}."
            if changed
            else "The file matches the mapping: nothing changed."
        )
        mapping = mapping_data(result.mapping)
        return Response({"changed": changed, "changed_codes": result.changed, "detail": detail, "mapping": mapping})


def _import_errors(errors: list[tuple[int, str]]) -> Response:
    count = len(errors)
    body = {
        "detail": f"Nothing was imported: the file has {count} error{'s' if count != 1 else ''}.",
        "code": "invalid",
        "errors": [{"line": line, "message": message} for line, message in errors],
    }
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


class MappingConceptMap(APIView):
    """The latest version as a FHIR R4 ConceptMap (status active once signed off, else draft)."""

    content_negotiation_class = DownloadNegotiation

    @extend_schema(
        responses={(200, "application/fhir+json"): OpenApiTypes.OBJECT},
        operation_id="connections_mapping_conceptmap",
    )
    def get(self, request: Request, code: str) -> HttpResponse:
        connection, onboarding = _connection(request, code)
        mapping = mappings.latest_mapping(onboarding)
        assert mapping is not None
        body = json.dumps(mappings.concept_map(mapping), indent=2)
        response = HttpResponse(body, content_type="application/fhir+json; charset=utf-8")
        name = f"conceptmap-{connection.code}-v{mapping.version}.json"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


# --- the tenant's validation policy ---------------------------------------------------------------------


class PolicyOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True)
    updated_by = serializers.SerializerMethodField()
    saved = serializers.SerializerMethodField(help_text="False while the tenant runs on the defaults.")

    class Meta:
        model = ValidationPolicy
        fields = ["tenant", *mappings.POLICY_FIELDS, "saved", "updated_at", "updated_by"]
        read_only_fields = fields

    def get_updated_by(self, policy: ValidationPolicy) -> str | None:
        return _username(policy.updated_by) if policy.pk else None

    def get_saved(self, policy: ValidationPolicy) -> bool:
        return policy.pk is not None


class PolicyInput(serializers.Serializer):
    max_error_patient_pct = serializers.FloatField(
        required=False, min_value=0.0, max_value=100.0, help_text="Fail above this % of patients with an error."
    )
    max_warning_patient_pct = serializers.FloatField(
        required=False, min_value=0.0, max_value=100.0, help_text="Fail above this % of patients with a warning."
    )
    map_sample_size = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    validate_sample_size = serializers.IntegerField(required=False, min_value=1, max_value=1000)


@extend_schema(methods=["GET"], responses=PolicyOutput, operation_id="tenants_validation_policy_retrieve")
@extend_schema(
    methods=["PATCH"],
    request=PolicyInput,
    responses=PolicyOutput,
    operation_id="tenants_validation_policy_update",
)
@api_view(["GET", "PATCH"])
def validation_policy(request: Request, code: str) -> Response:
    """The tenant's thresholds and sample sizes for map and validate; they apply from the next run."""
    tenant = get_tenant_for_user(request.user, code)
    if request.method == "PATCH":
        require_perm(request.user, mappings.EDIT_PERM, tenant)
        data = PolicyInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            policy = mappings.update_policy(
                user=request.user, tenant=tenant, changes=dict(data.validated_data), request=request._request
            )
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        return Response(PolicyOutput(policy).data)
    return Response(PolicyOutput(mappings.policy_for(tenant)).data)
