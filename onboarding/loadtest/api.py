"""API for load tests: what the plan page and a load-test run's report do.

- ``GET /api/v1/connections/<code>/load-test-plan/`` reads the current plan (``?version=N`` an older
  one) with the caps and the permission's state; ``POST`` writes the next version, naming the
  ``seen_version`` read (0 for none): a plan changed since answers 409, a plan above a cap 400 with
  the cap named, and a write that changes nothing makes no version.
- ``GET /api/v1/runs/<code>/load-test/`` is a run's report: the summary, the per-second series and
  the comparison with the connection's previous load test.

The permission itself is the gates API (``/api/v1/connections/<code>/gates/``, ``/api/v1/approvals/``),
whose decide takes ``valid_from`` and ``valid_until``. Reads are open to everyone who may see the
connection; writes need the permission to run steps, as on the page.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.loadtest import selectors, services
from onboarding.models import LoadMode, LoadTestPlan, Onboarding, StepRun
from portal.access import require_perm

# --- output ---------------------------------------------------------------------------------------------


class MixOutput(serializers.Serializer):
    type = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    weight = serializers.IntegerField()
    share_pct = serializers.FloatField()


class PlanOutput(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by_label", read_only=True)
    load = serializers.SerializerMethodField(help_text="The load in words.")
    target_rps = serializers.SerializerMethodField(help_text="The rate at the plan's peak, req/s.")
    total_duration_s = serializers.SerializerMethodField(help_text="The whole run, ramp and steps included.")
    expected_requests = serializers.SerializerMethodField()
    mix = serializers.SerializerMethodField()

    class Meta:
        model = LoadTestPlan
        fields = [
            "code",
            "version",
            "content_hash",
            "created_at",
            "created_by",
            *services.PLAN_FIELDS,
            "load",
            "target_rps",
            "total_duration_s",
            "expected_requests",
            "mix",
        ]
        read_only_fields = fields

    def get_load(self, plan: LoadTestPlan) -> str:
        return services.load_sentence(plan)

    def get_target_rps(self, plan: LoadTestPlan) -> float:
        return services.target_rate(plan)

    def get_total_duration_s(self, plan: LoadTestPlan) -> int:
        return int(services.describe(plan)["total_duration_s"])

    def get_expected_requests(self, plan: LoadTestPlan) -> int:
        return int(services.describe(plan)["expected_requests"])

    @extend_schema_field(MixOutput(many=True))
    def get_mix(self, plan: LoadTestPlan) -> list[dict[str, Any]]:
        return list(services.describe(plan)["mix"])


class CapOutput(serializers.Serializer):
    setting = serializers.CharField()
    value = serializers.FloatField()
    unit = serializers.CharField()
    limits = serializers.CharField()


class PermissionOutput(serializers.Serializer):
    status = serializers.CharField(
        help_text="approved, pending, rejected, voided, scheduled, expired, ready or not_ready"
    )
    sentence = serializers.CharField()
    requestable = serializers.BooleanField()
    latest = serializers.UUIDField(allow_null=True, help_text="The newest request, at /api/v1/approvals/<code>/.")


class PlanPageOutput(serializers.Serializer):
    connection = serializers.UUIDField()
    latest_version = serializers.IntegerField(help_text="Send it back as `seen_version` when you write (0: none yet).")
    plan = PlanOutput(allow_null=True)
    caps = CapOutput(many=True)
    permission = PermissionOutput(allow_null=True)


class PlanWriteOutput(serializers.Serializer):
    changed = serializers.BooleanField(help_text="False when the write matched the plan: no version was made.")
    detail = serializers.CharField()
    plan = PlanOutput()


class PlanRefusalOutput(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField(help_text="invalid (fix the plan), conflict (reload and redo) or refused")
    field = serializers.CharField(allow_null=True, required=False)
    cap = serializers.CharField(allow_null=True, required=False, help_text="The hard cap the plan exceeds.")
    latest_version = serializers.IntegerField(required=False)


class SecondOutput(serializers.Serializer):
    second = serializers.IntegerField()
    target_rps = serializers.FloatField()
    sent = serializers.IntegerField()
    dropped = serializers.IntegerField()
    answered = serializers.IntegerField()
    failed = serializers.IntegerField()
    errors = serializers.IntegerField()  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    throughput = serializers.IntegerField(help_text="Answers received during this second.")
    p50_ms = serializers.FloatField()
    p90_ms = serializers.FloatField()
    p95_ms = serializers.FloatField()
    p99_ms = serializers.FloatField()
    max_ms = serializers.FloatField()
    statuses = serializers.DictField(child=serializers.IntegerField())
    error_kinds = serializers.DictField(child=serializers.IntegerField())


SECOND_FIELDS = tuple(SecondOutput().fields)


class ComparedOutput(serializers.Serializer):
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like a Serializer attribute (the API's key)
    unit = serializers.CharField()
    previous = serializers.FloatField(allow_null=True)
    now = serializers.FloatField(allow_null=True)
    delta = serializers.FloatField(allow_null=True)
    change = serializers.CharField(help_text="better, worse, same, or empty")


class ReportOutput(serializers.Serializer):
    run = serializers.UUIDField()
    status = serializers.CharField()
    summary = serializers.DictField(
        allow_null=True, help_text="What the run measured (the run's result); null while it runs or when nothing was."
    )
    per_second = SecondOutput(many=True)
    previous_run = serializers.UUIDField(allow_null=True)
    comparison = ComparedOutput(many=True)


# --- input ----------------------------------------------------------------------------------------------


class PlanInput(serializers.Serializer):
    seen_version = serializers.IntegerField(
        min_value=0, help_text="The latest_version you read (0 when there was no plan): refused with 409 if it changed."
    )
    weight_patient_read = serializers.IntegerField(min_value=0, max_value=1000, default=0)
    weight_patient_by_identifier = serializers.IntegerField(min_value=0, max_value=1000, default=0)
    weight_observation_by_patient = serializers.IntegerField(min_value=0, max_value=1000, default=0)
    weight_condition_by_patient = serializers.IntegerField(min_value=0, max_value=1000, default=0)
    weight_encounter_by_patient = serializers.IntegerField(min_value=0, max_value=1000, default=0)
    load_mode = serializers.ChoiceField(choices=LoadMode.choices)
    target_rate = serializers.FloatField(required=False, allow_null=True, default=None)
    normal_peak = serializers.FloatField(required=False, allow_null=True, default=None)
    stress_factor = serializers.FloatField(required=False, default=2.0)
    staircase_start = serializers.FloatField(required=False, allow_null=True, default=None)
    staircase_step = serializers.FloatField(required=False, allow_null=True, default=None)
    staircase_steps = serializers.IntegerField(required=False, allow_null=True, default=None)
    staircase_step_s = serializers.IntegerField(required=False, allow_null=True, default=None)
    ramp_s = serializers.IntegerField(min_value=0, required=False, default=0)
    duration_s = serializers.IntegerField(min_value=0, required=False, default=60)
    concurrency = serializers.IntegerField(min_value=1, required=False, default=50)
    sla_p95_ms = serializers.FloatField()
    sla_p99_ms = serializers.FloatField()
    sla_max_error_pct = serializers.FloatField()
    abort_error_pct = serializers.FloatField(required=False, default=50.0)


# --- views ----------------------------------------------------------------------------------------------


@extend_schema(
    methods=["GET"],
    parameters=[OpenApiParameter("version", int, description="an older version")],
    responses=PlanPageOutput,
    operation_id="connections_load_test_plan_retrieve",
)
@extend_schema(
    methods=["POST"],
    request=PlanInput,
    responses={201: PlanWriteOutput, 200: PlanWriteOutput, 400: PlanRefusalOutput, 409: PlanRefusalOutput},
    operation_id="connections_load_test_plan_write",
)
@api_view(["GET", "POST"])
def load_test_plan(request: Request, code: str) -> Response:
    """The connection's load-test plan, the hard caps and the permission (GET); the next version (POST)."""
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    if request.method == "POST":
        return _write(request, connection.tenant, onboarding)
    latest = services.latest_plan(onboarding) if onboarding else None
    plan = latest
    if request.query_params.get("version"):
        try:
            plan = services.plan_version(onboarding, int(request.query_params["version"])) if onboarding else None
        except ValueError:
            plan = None
        if plan is None:
            raise Http404("No such plan version.")
    state = gates.gate_state(onboarding, services.GATE_KEY) if onboarding else None
    data = {
        "connection": connection.code,
        "latest_version": latest.version if latest else 0,
        "plan": plan,
        "caps": services.caps_facts(),
        "permission": (
            {
                "status": state.status,
                "sentence": state.sentence,
                "requestable": state.requestable,
                "latest": state.latest.code if state.latest else None,
            }
            if state is not None
            else None
        ),
    }
    return Response(PlanPageOutput(data).data)


def _write(request: Request, tenant: Any, onboarding: Onboarding | None) -> Response:
    try:
        require_perm(request.user, services.EDIT_PERM, tenant)
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None
    if onboarding is None:
        return Response(
            {"detail": "Nothing has run on this connection yet: run the earlier steps first.", "code": "refused"},
            status=status.HTTP_409_CONFLICT,
        )
    serializer = PlanInput(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = dict(serializer.validated_data)
    seen = data.pop("seen_version")
    try:
        plan, created = services.save_plan(
            user=request.user, onboarding=onboarding, values=data, seen_version=seen, request=request._request
        )
    except services.PlanConflict as exc:
        latest = services.latest_plan(onboarding)
        return Response(
            {"detail": str(exc), "code": "conflict", "latest_version": latest.version if latest else 0},
            status=status.HTTP_409_CONFLICT,
        )
    except services.PlanRefused as exc:
        return Response(
            {"detail": str(exc), "code": "invalid", "field": exc.field, "cap": exc.cap},
            status=status.HTTP_400_BAD_REQUEST,
        )
    detail = (
        f"Load-test plan version {plan.version} is saved." if created else f"Nothing changed: version {plan.version}."
    )
    return Response(
        PlanWriteOutput({"changed": created, "detail": detail, "plan": plan}).data,
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
    )


@extend_schema(responses=ReportOutput, operation_id="runs_load_test_report")
@api_view(["GET"])
def load_test_report(request: Request, code: str) -> Response:
    """A load-test run's report: its summary, per-second series and the comparison with the previous test."""
    run: StepRun = selectors.get_load_test_run(request.user, code)
    report = selectors.report_for(run)
    summary = (report.summary if report is not None else None) or (run.result or None)
    previous = selectors.previous_report(run) if report is not None else None
    comparison = selectors.comparison(summary or {}, previous.summary) if previous is not None else []
    data = {
        "run": run.code,
        "status": run.status,
        "summary": summary if summary and summary.get("latency") else None,
        "per_second": [{name: getattr(row, name) for name in SECOND_FIELDS} for row in selectors.seconds_for(run)],
        "previous_run": previous.run.code if previous is not None else None,
        "comparison": [
            {
                "label": row.label,
                "unit": row.unit,
                "previous": row.previous,
                "now": row.now,
                "delta": row.delta,
                "change": row.change,
            }
            for row in comparison
        ],
    }
    return Response(ReportOutput(data).data)
