"""API for pipelines and step runs: read status and results, start and cancel steps."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from connections.selectors import get_connection_for_user
from onboarding.engine import selectors, services
from onboarding.models import Onboarding, StepRun


class StepRunOutput(serializers.ModelSerializer):
    onboarding = serializers.UUIDField(source="onboarding.code", read_only=True)
    connection = serializers.UUIDField(source="onboarding.connection.code", read_only=True)
    tenant = serializers.UUIDField(source="onboarding.tenant.code", read_only=True)
    progress_percent = serializers.IntegerField(read_only=True)
    error = serializers.SerializerMethodField()

    class Meta:
        model = StepRun
        fields = [
            "code",
            "tenant",
            "connection",
            "onboarding",
            "step",
            "attempt",
            "status",
            "queued_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "progress_done",
            "progress_total",
            "progress_percent",
            "progress_message",
            "log",
            "result",
            "error",
        ]
        read_only_fields = fields

    def get_error(self, run: StepRun) -> dict[str, str] | None:
        if not run.error_kind:
            return None
        return {"kind": run.error_kind, "message": run.error_message, "hint": run.error_hint}


class StepCellOutput(serializers.Serializer):
    key = serializers.CharField()
    # Not "label": that name is a Field attribute every serializer already has.
    title = serializers.CharField(source="label")
    available = serializers.BooleanField()
    state = serializers.CharField(help_text="unavailable, not_started, queued, running, passed, failed or cancelled")
    run = serializers.SerializerMethodField()

    def get_run(self, cell: selectors.StepCell) -> str | None:
        return str(cell.run.code) if cell.run is not None else None


class OnboardingOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True)
    connection = serializers.UUIDField(source="connection.code", read_only=True)
    steps = serializers.SerializerMethodField()

    class Meta:
        model = Onboarding
        fields = ["code", "tenant", "connection", "created_at", "steps"]
        read_only_fields = fields

    @extend_schema(responses=StepCellOutput(many=True))
    def get_steps(self, onboarding: Onboarding) -> list[dict[str, Any]]:
        cells = selectors.step_cells(list(onboarding.runs.all()))
        return list(StepCellOutput(cells, many=True).data)


class OnboardingViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Each connection's pipeline with the state of its six steps. Steps not built yet say so."""

    serializer_class = OnboardingOutput
    lookup_field = "code"

    def get_queryset(self) -> Any:
        return selectors.onboardings_for(self.request.user).prefetch_related("runs").order_by("-created_at")


class StepRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Every attempt of every step, newest first."""

    serializer_class = StepRunOutput
    lookup_field = "code"

    def get_queryset(self) -> Any:
        runs = selectors.runs_for(self.request.user).order_by("-queued_at", "-id")
        step = self.request.query_params.get("step")
        if step:
            runs = runs.filter(step=step)
        run_status = self.request.query_params.get("status")
        if run_status:
            runs = runs.filter(status=run_status)
        return runs

    @extend_schema(request=None, responses=StepRunOutput)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, code: str) -> Response:
        run = self.get_object()
        try:
            services.cancel_run(user=request.user, run=run, request=request._request)
        except services.StepError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        run.refresh_from_db()
        return Response(StepRunOutput(run).data)


@extend_schema(request=None, responses={202: StepRunOutput}, operation_id="connections_steps_start")
@api_view(["POST"])
def start_step(request: Request, code: str, step: str) -> Response:
    """Queue a new attempt of a step of this connection's pipeline."""
    connection = get_connection_for_user(request.user, code)
    if not request.user.has_perm("onboarding.run_step"):
        raise PermissionDenied("You do not have permission to start steps.")
    onboarding = services.ensure_onboarding(connection)
    try:
        run = services.start_step(user=request.user, onboarding=onboarding, step=step, request=request._request)
    except services.StepNotAvailable as exc:
        return Response({"detail": str(exc), "code": "not_available"}, status=status.HTTP_400_BAD_REQUEST)
    except services.StepError as exc:
        return Response({"detail": str(exc), "code": "conflict"}, status=status.HTTP_409_CONFLICT)
    run = selectors.runs_for(request.user).get(pk=run.pk)
    return Response(StepRunOutput(run).data, status=status.HTTP_202_ACCEPTED)
