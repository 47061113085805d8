"""API for the evidence pack: the same document as the page's JSON download, for API clients.

The same rule as the pages: whoever may read the hospital's audit trail (its hospital IT and vendor
staff) may take the pack, another hospital's onboarding is a 404, and each download is audited.
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from onboarding.engine.selectors import get_onboarding_for_user
from onboarding.evidence import services as evidence
from onboarding.evidence.views import pdf_response


class NamedRefOutput(serializers.Serializer):
    name = serializers.CharField()
    code = serializers.UUIDField()


class PackConnectionOutput(NamedRefOutput):
    vendor = serializers.CharField()
    environment = serializers.CharField()
    fhir_base_url = serializers.CharField()


class PackOnboardingOutput(serializers.Serializer):
    code = serializers.UUIDField()
    created_at = serializers.CharField(help_text="ISO 8601")


class StepStateOutput(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    available = serializers.BooleanField()
    state = serializers.CharField()


class AttemptOutput(serializers.Serializer):
    step = serializers.CharField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    requested_by = serializers.CharField()
    queued_at = serializers.CharField(allow_null=True)
    started_at = serializers.CharField(allow_null=True)
    finished_at = serializers.CharField(allow_null=True)
    queue_wait_s = serializers.FloatField(allow_null=True, help_text="seconds it waited for a worker")
    run_time_s = serializers.FloatField(allow_null=True, help_text="seconds it ran, start to finish")
    error_kind = serializers.CharField()
    error_message = serializers.CharField()


class TimelineOutput(serializers.Serializer):
    steps = StepStateOutput(many=True)
    attempts = AttemptOutput(many=True, help_text="Every attempt, in the order it was asked for.")


class AuditExtractOutput(serializers.Serializer):
    total = serializers.IntegerField()
    shown = serializers.IntegerField()
    note = serializers.CharField()
    events = serializers.ListField(child=serializers.DictField(), help_text="at, who, action, object, ip, detail")


class EvidencePackOutput(serializers.Serializer):
    """The evidence pack (format ``onboarding-evidence-pack/1``). Parts whose step is not built say
    ``available: false`` with the note "not available yet"; nothing in it is made up."""

    format = serializers.CharField()
    generated_at = serializers.CharField()
    generated_by = serializers.CharField()
    hospital = NamedRefOutput()
    connection = PackConnectionOutput()
    onboarding = PackOnboardingOutput()
    timeline = TimelineOutput()
    gates = serializers.ListField(
        child=serializers.DictField(), help_text="Each gate with its whole history of requests and decisions."
    )
    validation = serializers.DictField(help_text="The newest validation run's outcome, findings and waivers.")
    load_test = serializers.DictField()
    security = serializers.DictField(help_text="How the portal reaches the hospital and keeps credentials.")
    audit = AuditExtractOutput()


@extend_schema(responses=EvidencePackOutput, operation_id="onboardings_evidence")
@api_view(["GET"])
def evidence_pack(request: Request, code: str) -> Response:
    """The onboarding's evidence pack as JSON: timeline, gates, validation, load test, security, audit."""
    onboarding = get_onboarding_for_user(request.user, code)
    pack = evidence.export_pack(user=request.user, onboarding=onboarding, fmt="json", request=request._request)
    # The document itself, unfiltered: the serializer above describes it for the schema.
    return Response(pack)


@extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY}, operation_id="onboardings_evidence_pdf")
@api_view(["GET"])
def evidence_pack_pdf(request: Request, code: str) -> HttpResponse:
    """The evidence pack as a PDF file (the page's "Download PDF"): the same six sections, typeset; audited."""
    onboarding = get_onboarding_for_user(request.user, code)
    pack = evidence.export_pack(user=request.user, onboarding=onboarding, fmt="pdf", request=request._request)
    return pdf_response(onboarding, evidence.pack_pdf(onboarding, pack, request=request._request))
