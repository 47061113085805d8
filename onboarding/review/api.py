"""API for the review of validation runs: the queue, findings grouped as the run page shows them,
examples, the diff against the previous run, exports, and waivers.

Everyone who may see a tenant reads its runs (hospital IT too); only engineers waive and revoke.
Raw resources (PHI) are not served here: they stay behind the audited, re-authenticated engineer
page (``/review/findings/<code>/raw/``), which an API token cannot open. Examples say whether a
raw copy is still kept.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.models import Vendor
from onboarding.models import Finding, Severity, StepRun, Waiver
from onboarding.review import services as review
from portal.access import require_perm, tenants_for
from portal.api import DownloadNegotiation


class GroupPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


# --- the queue ------------------------------------------------------------------------------------------


class QueueRunOutput(serializers.Serializer):
    code = serializers.UUIDField()
    tenant = serializers.UUIDField(source="onboarding.tenant.code")
    tenant_name = serializers.CharField(source="onboarding.tenant.name")
    connection = serializers.UUIDField(source="onboarding.connection.code")
    connection_name = serializers.CharField(source="onboarding.connection.name")
    vendor = serializers.CharField(source="onboarding.connection.vendor")
    attempt = serializers.IntegerField()
    finished_at = serializers.DateTimeField(allow_null=True)
    errors = serializers.IntegerField(help_text="Error findings of the run.")  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    warnings = serializers.IntegerField()
    error_kind = serializers.CharField()
    error_message = serializers.CharField()


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise serializers.ValidationError({name: [f"“{value}” is not a date: use YYYY-MM-DD."]}) from None


@extend_schema_view(
    get=extend_schema(
        parameters=[
            OpenApiParameter("tenant", str, description="a tenant's code"),
            OpenApiParameter("vendor", str, enum=list(Vendor.values)),
            OpenApiParameter("rule", str),
            OpenApiParameter("severity", str, enum=list(Severity.values)),
            OpenApiParameter("since", OpenApiTypes.DATE),
            OpenApiParameter("until", OpenApiTypes.DATE),
        ],
        operation_id="review_queue_list",
    )
)
class ReviewQueue(generics.ListAPIView):
    """Failed validation runs to review, newest first: a failure leaves once a later attempt passed."""

    serializer_class = QueueRunOutput

    def get_queryset(self) -> Any:
        params = self.request.query_params
        tenant = params.get("tenant", "")
        visible = {str(code) for code in tenants_for(self.request.user).values_list("code", flat=True)}
        if tenant and tenant not in visible:
            return StepRun.objects.none()  # a tenant the caller may not see lists nothing, as a missing one
        filters = review.QueueFilters(
            tenant=tenant,
            vendor=params.get("vendor", "") if params.get("vendor", "") in Vendor.values else "",
            rule=params.get("rule", "")[:64],
            severity=params.get("severity", "") if params.get("severity", "") in Severity.values else "",
            since=_date(params.get("since"), "since"),
            until=_date(params.get("until"), "until"),
        )
        return review.failed_runs(self.request.user, filters)


# --- one run: grouped findings, examples, diff ------------------------------------------------------------


class WaiverRefOutput(serializers.Serializer):
    code = serializers.UUIDField()
    reason = serializers.CharField()
    approver = serializers.CharField(source="approver_label")
    expires_at = serializers.DateTimeField()


class FindingGroupOutput(serializers.Serializer):
    rule = serializers.CharField()
    path = serializers.CharField(help_text="The element, without list positions.")
    severity = serializers.CharField()
    resource_type = serializers.CharField()
    count = serializers.IntegerField(help_text="Findings in the group.")
    patients = serializers.IntegerField(help_text="Patients with at least one.")
    share = serializers.FloatField(help_text="Percent of the run's patients.")
    waived = serializers.BooleanField()
    waiver = WaiverRefOutput(allow_null=True, help_text="The waiver in force that covers the group.")
    sample_message = serializers.CharField()


@extend_schema_view(
    get=extend_schema(
        parameters=[OpenApiParameter("severity", str, enum=list(Severity.values))],
        operation_id="runs_findings_list",
    )
)
class RunFindings(generics.ListAPIView):
    """The run's findings grouped by rule and path, worst and biggest first, as the review page shows them."""

    serializer_class = FindingGroupOutput
    pagination_class = GroupPagination

    def get_queryset(self) -> Any:
        run = review.get_validation_run(self.request.user, self.kwargs["code"])
        groups = review.grouped_findings(run)
        severity = self.request.query_params.get("severity")
        return [g for g in groups if g.severity == severity] if severity else groups


class FindingOutput(serializers.ModelSerializer):
    raw_kept = serializers.SerializerMethodField(
        help_text="Whether the resource is still kept for the engineers' audited raw view (a page, not the API)."
    )

    class Meta:
        model = Finding
        fields = [
            "code",
            "severity",
            "rule",
            "resource_type",
            "path",
            "location",
            "message",
            "profile",
            "patient_key",
            "resource_key",
            "fingerprint",
            "raw_kept",
        ]
        read_only_fields = fields

    def get_raw_kept(self, finding: Finding) -> bool:
        return finding.raw_id is not None and finding.raw is not None and finding.raw.expires_at > self.context["now"]


@extend_schema(
    parameters=[
        OpenApiParameter("rule", str, required=True),
        OpenApiParameter("path", str, required=True),
    ],
    responses=FindingOutput(many=True),
    operation_id="runs_findings_examples",
)
@api_view(["GET"])
def finding_examples(request: Request, code: str) -> Response:
    """A few findings of one group (rule and path), to drill into; pseudonymous keys only, never PHI."""
    from django.utils import timezone

    run = review.get_validation_run(request.user, code)
    rule, path = request.query_params.get("rule", ""), request.query_params.get("path", "")
    if not rule or not path:
        raise serializers.ValidationError({"rule": ["Give the group's rule and path."]})
    examples = review.group_examples(run, rule, path)
    return Response(FindingOutput(examples, many=True, context={"now": timezone.now()}).data)


class RunRefOutput(serializers.Serializer):
    code = serializers.UUIDField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    finished_at = serializers.DateTimeField(allow_null=True)


class PairCountOutput(serializers.Serializer):
    rule = serializers.CharField()
    path = serializers.CharField()
    count = serializers.IntegerField()


class DiffOutput(serializers.Serializer):
    run = RunRefOutput()
    previous = RunRefOutput(allow_null=True, help_text="The previous finished attempt; null for the first run.")
    new = PairCountOutput(many=True)
    new_count = serializers.IntegerField()
    fixed = PairCountOutput(many=True)
    fixed_count = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    compared_patients = serializers.IntegerField(
        allow_null=True, help_text="Patients both runs checked; null when a run did not record them."
    )
    not_compared = PairCountOutput(many=True, help_text="Findings on patients only one of the runs checked.")
    not_compared_count = serializers.IntegerField()
    only_this_run = serializers.IntegerField(help_text="Patients this run checked and the previous did not.")
    only_previous = serializers.IntegerField()


def _pairs(pairs: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    return [{"rule": rule, "path": path, "count": count} for rule, path, count in pairs]


@extend_schema(responses=DiffOutput, operation_id="runs_diff")
@api_view(["GET"])
def run_diff(request: Request, code: str) -> Response:
    """New, fixed and unchanged findings against the previous run, on the patients both runs checked."""
    run = review.get_validation_run(request.user, code)
    diff = review.diff_against_previous(run)
    data = {
        "run": run,
        "previous": diff.previous,
        "new": _pairs(diff.new),
        "new_count": diff.new_count,
        "fixed": _pairs(diff.fixed),
        "fixed_count": diff.fixed_count,
        "unchanged": diff.unchanged,
        "compared_patients": diff.compared_patients,
        "not_compared": _pairs(diff.not_compared),
        "not_compared_count": diff.not_compared_count,
        "only_this_run": diff.only_this_run,
        "only_previous": diff.only_previous,
    }
    return Response(DiffOutput(data).data)


# --- exports --------------------------------------------------------------------------------------------


class ExportFindingOutput(serializers.Serializer):
    finding = serializers.UUIDField()
    severity = serializers.CharField()
    rule = serializers.CharField()
    resource_type = serializers.CharField()
    path = serializers.CharField()
    location = serializers.CharField()
    message = serializers.CharField()
    patient_key = serializers.CharField()
    resource_key = serializers.CharField()
    fingerprint = serializers.CharField()
    waived = serializers.BooleanField()
    waiver_expires = serializers.CharField()


class ExportOutput(serializers.Serializer):
    run = serializers.UUIDField()
    tenant = serializers.UUIDField()
    connection = serializers.UUIDField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    finished_at = serializers.CharField(allow_null=True)
    summary = serializers.JSONField(help_text="The run's result, as GET /api/v1/runs/<code>/ gives it.")
    findings = ExportFindingOutput(many=True)


@extend_schema(responses=ExportOutput, operation_id="runs_export")
@api_view(["GET"])
def run_export(request: Request, code: str) -> Response:
    """The run, its summary and every finding, as the page's JSON export; audited."""
    run = review.get_validation_run(request.user, code)
    review.record_export(user=request.user, run=run, fmt="json", request=request._request)
    return Response(review.export_json(run))


class RunExportCsv(APIView):
    """The run's findings as CSV, streamed (formulas defused); audited."""

    content_negotiation_class = DownloadNegotiation

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR}, operation_id="runs_export_csv")
    def get(self, request: Request, code: str) -> StreamingHttpResponse:
        run = review.get_validation_run(request.user, code)
        review.record_export(user=request.user, run=run, fmt="csv", request=request._request)
        response = StreamingHttpResponse(review.export_csv(run), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="validation-{run.code}.csv"'
        return response


# --- waivers --------------------------------------------------------------------------------------------


class WaiverOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True)
    approver = serializers.CharField(source="approver_label", read_only=True)
    in_force = serializers.SerializerMethodField(help_text="Not revoked and not expired.")

    class Meta:
        model = Waiver
        fields = ["code", "tenant", "rule", "path", "reason", "approver", "created_at", "expires_at", "revoked_at"]
        fields += ["in_force"]
        read_only_fields = fields

    def get_in_force(self, waiver: Waiver) -> bool:
        return review.waiver_in_force(waiver)


class WaiverInput(serializers.Serializer):
    run = serializers.UUIDField(help_text="The validation run whose finding group is waived; it names the tenant.")
    rule = serializers.CharField(max_length=64)
    path = serializers.CharField(max_length=200)
    reason = serializers.CharField(max_length=2000, help_text="Why it is acceptable (at least 10 characters).")
    expires_on = serializers.DateField(help_text="The last day it applies: after today, at most a year ahead.")


class RevokeInput(serializers.Serializer):
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class WaiverRefusalOutput(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("tenant", str, description="a tenant's code"),
            OpenApiParameter("state", str, enum=["in_force", "revoked", "expired"]),
        ]
    )
)
class WaiverViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Waivers of the tenants the caller may see, newest first. Engineers create and revoke them."""

    serializer_class = WaiverOutput
    lookup_field = "code"

    def get_queryset(self) -> Any:
        from django.utils import timezone

        waivers = review.waivers_for(self.request.user).order_by("-created_at", "-id")
        params = self.request.query_params
        if params.get("tenant"):
            try:
                waivers = waivers.filter(tenant__code=params["tenant"])
            except Exception:  # a malformed code matches nothing
                waivers = waivers.none()
        now = timezone.now()
        state = params.get("state")
        if state == "in_force":
            waivers = waivers.filter(revoked_at__isnull=True, expires_at__gt=now)
        elif state == "revoked":
            waivers = waivers.filter(revoked_at__isnull=False)
        elif state == "expired":
            waivers = waivers.filter(revoked_at__isnull=True, expires_at__lte=now)
        return waivers

    def get_object(self) -> Waiver:
        return review.get_waiver(self.request.user, self.kwargs["code"])

    @extend_schema(
        request=WaiverInput,
        responses={201: WaiverOutput, 400: OpenApiResponse(WaiverRefusalOutput, description="What to fix.")},
    )
    def create(self, request: Request) -> Response:
        """Waive a rule at a path for the run's tenant until a date (engineers); re-run validate to apply it."""
        # Only engineers ever waive (a permission held by the group, never per tenant): refuse others first.
        require_perm(request.user, review.REVIEW_PERM)
        data = WaiverInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        run = review.get_validation_run(request.user, values["run"])
        try:
            waiver = review.create_waiver(
                user=request.user,
                tenant=run.onboarding.tenant,
                rule=values["rule"],
                path=values["path"],
                reason=values["reason"],
                expires_on=values["expires_on"],
                run=run,
                request=request._request,
            )
        except review.WaiverError as exc:
            return Response({"detail": str(exc), "code": "invalid"}, status=status.HTTP_400_BAD_REQUEST)
        return Response(WaiverOutput(waiver).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RevokeInput,
        responses={200: WaiverOutput, 409: OpenApiResponse(WaiverRefusalOutput, description="Already ended.")},
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, code: str) -> Response:
        """End a waiver now (engineers): the next validation run counts its findings again. The row is kept."""
        waiver = self.get_object()
        require_perm(request.user, review.REVIEW_PERM, waiver.tenant)
        data = RevokeInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            waiver = review.revoke_waiver(
                user=request.user, waiver=waiver, reason=data.validated_data["reason"], request=request._request
            )
        except review.WaiverError as exc:
            return Response({"detail": str(exc), "code": "refused"}, status=status.HTTP_409_CONFLICT)
        return Response(WaiverOutput(waiver).data)
