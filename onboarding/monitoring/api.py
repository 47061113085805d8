"""Monitoring's API: what the hypercare dashboard, a connection's monitoring page, an alert page and
the policy page do.

- ``GET /api/v1/hypercare/``: every live connection the caller may see, with status and open alerts;
- ``GET /api/v1/alerts/`` (``?open=true``), ``GET /api/v1/alerts/<code>/``, ``POST .../acknowledge/``,
  ``POST .../assign/`` (``{"assignee": <user id> | null}``);
- ``GET /api/v1/connections/<code>/monitoring/``: status, SLA figures, recent checks, drift runs and
  the stabilisation report; ``POST .../monitoring/drift/`` starts a drift check, ``POST .../handoff/``
  hands the connection off to operations;
- ``GET``/``PATCH /api/v1/tenants/<code>/monitoring-policy/``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from onboarding.monitoring import drift, policy, selectors, services, sla
from onboarding.monitoring.models import Alert, DriftRun, HealthCheck, Monitor
from portal.access import get_tenant_for_user, require_perm

# --- output --------------------------------------------------------------------------------------------


class AlertOutput(serializers.ModelSerializer):
    connection = serializers.UUIDField(source="onboarding.connection.code")
    connection_name = serializers.CharField(source="onboarding.connection.name")
    tenant = serializers.UUIDField(source="tenant.code")
    is_open = serializers.BooleanField()
    acknowledged_by = serializers.CharField(source="acknowledged_by.username", allow_null=True, default=None)
    assigned_to = serializers.IntegerField(source="assigned_to_id", allow_null=True)
    assigned_to_name = serializers.CharField(source="assigned_to.username", allow_null=True, default=None)

    class Meta:
        model = Alert
        fields = [
            "code",
            "kind",
            "title",
            "detail",
            "facts",
            "is_open",
            "opened_at",
            "resolved_at",
            "resolution",
            "acknowledged_at",
            "acknowledged_by",
            "assigned_to",
            "assigned_to_name",
            "assigned_at",
            "escalated_at",
            "connection",
            "connection_name",
            "tenant",
        ]
        read_only_fields = fields


class LiveRowOutput(serializers.Serializer):
    connection = serializers.UUIDField()
    connection_name = serializers.CharField()
    tenant = serializers.UUIDField()
    status = serializers.CharField(help_text="unknown, up, degraded, down or maintenance")
    stage = serializers.CharField(help_text="pilot or full")
    pilot_percent = serializers.IntegerField()
    phase = serializers.CharField(help_text="hypercare or operational")
    live_since = serializers.DateTimeField(allow_null=True)
    days_live = serializers.IntegerField(allow_null=True)
    open_alerts = serializers.IntegerField()
    last_latency_ms = serializers.FloatField(allow_null=True)


class CheckOutput(serializers.ModelSerializer):
    lag_s = serializers.FloatField()

    class Meta:
        model = HealthCheck
        fields = ["due_at", "ran_at", "lag_s", "ok", "planned", "latency_ms", "metadata_ms", "patient_ms", "error_kind"]
        read_only_fields = fields


class DriftRunOutput(serializers.ModelSerializer):
    alert = serializers.UUIDField(source="alert.code", allow_null=True, default=None)

    class Meta:
        model = DriftRun
        fields = [
            "code",
            "trigger",
            "status",
            "created_at",
            "started_at",
            "finished_at",
            "patients",
            "new_findings",
            "changes",
            "error_message",
            "alert",
        ]
        read_only_fields = fields


class PeriodOutput(serializers.Serializer):
    period = serializers.CharField()
    checks = serializers.IntegerField()
    ok = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Failed outside planned maintenance.")
    planned_downtime_checks = serializers.IntegerField()
    planned_downtime_minutes = serializers.FloatField()
    uptime_pct = serializers.FloatField(allow_null=True)
    p95_ms = serializers.FloatField(allow_null=True)


class StabilisationReportOutput(serializers.Serializer):
    alerts_opened = serializers.IntegerField()
    alerts_resolved = serializers.IntegerField()
    alerts_open_now = serializers.IntegerField()
    acknowledged = serializers.IntegerField()
    median_minutes_to_acknowledge = serializers.FloatField(allow_null=True)
    checks = serializers.IntegerField()
    uptime_pct = serializers.FloatField(allow_null=True)
    planned_downtime_checks = serializers.IntegerField()
    traffic_per_day = serializers.ListField(child=serializers.IntegerField())
    traffic_steady = serializers.BooleanField()
    traffic_sentence = serializers.CharField()
    ended = serializers.BooleanField(help_text="Whether the hypercare period is over.")


class MonitoringOutput(serializers.Serializer):
    connection = serializers.UUIDField()
    stage = serializers.CharField()
    phase = serializers.CharField()
    live_since = serializers.DateTimeField(allow_null=True)
    hypercare_until = serializers.DateTimeField(allow_null=True)
    handed_off_at = serializers.DateTimeField(allow_null=True)
    status = serializers.CharField()
    interval_s = serializers.IntegerField(allow_null=True)
    next_check_at = serializers.DateTimeField(allow_null=True)
    sla_days = PeriodOutput(many=True)
    sla_weeks = PeriodOutput(many=True)
    checks = CheckOutput(many=True)
    alerts = AlertOutput(many=True)
    drift_runs = DriftRunOutput(many=True)
    stabilisation_report = StabilisationReportOutput()


class MonitoringPolicyOutput(serializers.Serializer):
    tenant = serializers.UUIDField()
    check_interval_min = serializers.IntegerField()
    failures_to_alert = serializers.IntegerField()
    latency_p95_ms = serializers.IntegerField()
    latency_window_min = serializers.IntegerField()
    error_rate_pct = serializers.FloatField()
    error_window_min = serializers.IntegerField()
    error_min_requests = serializers.IntegerField()
    no_traffic_min = serializers.IntegerField(help_text="0: the no-traffic alert is off.")
    escalate_after_min = serializers.IntegerField()
    drift_every_days = serializers.IntegerField()
    drift_sample_size = serializers.IntegerField()


class MonitoringPolicyInput(serializers.Serializer):
    """Any of the policy's settings; those left out keep their value."""

    check_interval_min = serializers.IntegerField(required=False)
    failures_to_alert = serializers.IntegerField(required=False)
    latency_p95_ms = serializers.IntegerField(required=False)
    latency_window_min = serializers.IntegerField(required=False)
    error_rate_pct = serializers.FloatField(required=False)
    error_window_min = serializers.IntegerField(required=False)
    error_min_requests = serializers.IntegerField(required=False)
    no_traffic_min = serializers.IntegerField(required=False)
    escalate_after_min = serializers.IntegerField(required=False)
    drift_every_days = serializers.IntegerField(required=False)
    drift_sample_size = serializers.IntegerField(required=False)


class AssignInput(serializers.Serializer):
    assignee = serializers.IntegerField(allow_null=True, help_text="A user id, or null for nobody.")


class Refusal(serializers.Serializer):
    detail = serializers.CharField()
    field = serializers.CharField(required=False)


# --- views ---------------------------------------------------------------------------------------------


@extend_schema(responses=LiveRowOutput(many=True), operation_id="hypercare_list")
@api_view(["GET"])
def hypercare(request: Request) -> Response:
    """Every live connection the caller may see, with status, rollout stage, open alerts and days live."""
    rows = [
        {
            "connection": row.connection.code,
            "connection_name": row.connection.name,
            "tenant": row.live.tenant.code,
            "status": row.status,
            "stage": row.live.stage,
            "pilot_percent": row.live.pilot_percent,
            "phase": row.live.phase,
            "live_since": row.live.live_since,
            "days_live": row.days_live,
            "open_alerts": row.open_alerts,
            "last_latency_ms": row.last_latency_ms,
        }
        for row in selectors.dashboard_rows(request.user)
    ]
    return Response(LiveRowOutput(rows, many=True).data)


@extend_schema(
    parameters=[OpenApiParameter("open", bool, description="only the open ones")],
    responses=AlertOutput(many=True),
    operation_id="alerts_list",
)
@api_view(["GET"])
def alert_list(request: Request) -> Response:
    """Alerts of the tenants the caller may see, newest first (at most 200)."""
    alerts = selectors.alerts_for(request.user)
    if request.query_params.get("open", "").lower() in ("1", "true", "yes"):
        alerts = alerts.filter(resolved_at__isnull=True)
    return Response(AlertOutput(alerts[:200], many=True).data)


@extend_schema(responses=AlertOutput, operation_id="alerts_retrieve")
@api_view(["GET"])
def alert_detail(request: Request, code: str) -> Response:
    """One alert."""
    return Response(AlertOutput(selectors.get_alert_for_user(request.user, code)).data)


@extend_schema(request=None, responses=AlertOutput, operation_id="alerts_acknowledge")
@api_view(["POST"])
def alert_acknowledge(request: Request, code: str) -> Response:
    """Acknowledge the alert (a second acknowledgement changes nothing)."""
    alert = selectors.get_alert_for_user(request.user, code)
    return Response(AlertOutput(services.acknowledge(user=request.user, alert=alert, request=request._request)).data)


@extend_schema(request=AssignInput, responses={200: AlertOutput, 400: Refusal}, operation_id="alerts_assign")
@api_view(["POST"])
def alert_assign(request: Request, code: str) -> Response:
    """Give the alert to a person who may see its hospital, or to nobody (null)."""
    alert = selectors.get_alert_for_user(request.user, code)
    require_perm(request.user, services.ACT_PERM, alert.tenant)
    data = AssignInput(data=request.data)
    data.is_valid(raise_exception=True)
    chosen = data.validated_data["assignee"]
    assignee = None
    if chosen is not None:
        assignee = get_user_model().objects.filter(pk=chosen, is_active=True).first()
        if assignee is None:
            return Response({"detail": "No such person.", "field": "assignee"}, status=status.HTTP_400_BAD_REQUEST)
    try:
        alert = services.assign(user=request.user, alert=alert, assignee=assignee, request=request._request)
    except services.AlertRefused as exc:
        return Response({"detail": str(exc), "field": "assignee"}, status=status.HTTP_400_BAD_REQUEST)
    return Response(AlertOutput(alert).data)


def _monitoring_data(request: Request, code: str) -> dict[str, Any]:
    live = selectors.get_live_for_user(request.user, code)
    monitor = Monitor.objects.filter(onboarding_id=live.onboarding_id).first()
    tenant_policy = policy.policy_for(live.onboarding.tenant)
    figures = sla.sla_figures(live, interval_s=monitor.interval_s if monitor else policy.interval_s(tenant_policy))
    since = timezone.now() - timedelta(days=1)
    return {
        "connection": live.onboarding.connection.code,
        "stage": live.stage,
        "phase": live.phase,
        "live_since": live.live_since,
        "hypercare_until": sla.hypercare_until(live),
        "handed_off_at": live.handed_off_at,
        "status": monitor.status if monitor else "unknown",
        "interval_s": monitor.interval_s if monitor else None,
        "next_check_at": monitor.next_check_at if monitor else None,
        "sla_days": [p.as_dict() for p in figures.days],
        "sla_weeks": [p.as_dict() for p in figures.weeks],
        "checks": list(selectors.checks_of(live, since=since).order_by("-ran_at")[:100]),
        "alerts": list(selectors.alerts_for(request.user).filter(onboarding_id=live.onboarding_id)[:50]),
        "drift_runs": list(selectors.drift_runs_of(live)[:20]),
        "stabilisation_report": sla.stabilisation_report(live),
    }


@extend_schema(responses=MonitoringOutput, operation_id="connections_monitoring_retrieve")
@api_view(["GET"])
def connection_monitoring(request: Request, code: str) -> Response:
    """A live connection's status, SLA figures per day and week, recent checks, alerts, drift runs and report."""
    return Response(MonitoringOutput(_monitoring_data(request, code)).data)


@extend_schema(request=None, responses={202: DriftRunOutput, 409: Refusal}, operation_id="connections_monitoring_drift")
@api_view(["POST"])
def monitoring_drift(request: Request, code: str) -> Response:
    """Start a drift check now (answers the one already waiting or running, if any)."""
    live = selectors.get_live_for_user(request.user, code)
    try:
        run = drift.request_drift(user=request.user, onboarding=live.onboarding, request=request._request)
    except drift.DriftRefused as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return Response(DriftRunOutput(run).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    request=None, responses={200: MonitoringOutput, 409: Refusal}, operation_id="connections_monitoring_handoff"
)
@api_view(["POST"])
def monitoring_handoff(request: Request, code: str) -> Response:
    """Hand the connection off from hypercare to operations (after hypercare, with no alert open)."""
    live = selectors.get_live_for_user(request.user, code)
    try:
        sla.hand_off(user=request.user, live=live, request=request._request)
    except sla.HandoffRefused as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return Response(MonitoringOutput(_monitoring_data(request, code)).data)


@extend_schema(methods=["GET"], responses=MonitoringPolicyOutput, operation_id="tenants_monitoring_policy_retrieve")
@extend_schema(
    methods=["PATCH"],
    request=MonitoringPolicyInput,
    responses={200: MonitoringPolicyOutput, 400: Refusal},
    operation_id="tenants_monitoring_policy_update",
)
@api_view(["GET", "PATCH"])
def monitoring_policy(request: Request, code: str) -> Response:
    """The tenant's monitoring policy; customer success change any of its settings."""
    tenant = get_tenant_for_user(request.user, code)
    current = policy.policy_for(tenant)
    if request.method == "PATCH":
        require_perm(request.user, policy.EDIT_PERM, tenant)
        data = MonitoringPolicyInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            current, _ = policy.update_policy(
                user=request.user,
                tenant=tenant,
                values={**policy.values_of(current), **data.validated_data},
                request=request._request,
            )
        except policy.PolicyRefused as exc:
            return Response({"detail": str(exc), "field": exc.field}, status=status.HTTP_400_BAD_REQUEST)
    return Response(MonitoringPolicyOutput({"tenant": tenant.code, **policy.values_of(current)}).data)
