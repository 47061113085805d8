"""API for gates: each connection's gates with who owes the next action, and the request, remind
and decide moves. The same access rules as the pages: another tenant's request is a 404."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.gates.selectors import approvals_for
from onboarding.models import Approval, Decision, Onboarding


class ApprovalOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="onboarding.tenant.code", read_only=True)
    connection = serializers.UUIDField(source="onboarding.connection.code", read_only=True)
    onboarding = serializers.UUIDField(source="onboarding.code", read_only=True)
    state = serializers.CharField(read_only=True, help_text="pending, approved, rejected or voided")
    artifact = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by_label", read_only=True)
    decided_by = serializers.CharField(source="decided_by_label", read_only=True)

    class Meta:
        model = Approval
        fields = [
            "code",
            "tenant",
            "connection",
            "onboarding",
            "gate",
            "state",
            "artifact",
            "requested_by",
            "requested_at",
            "request_note",
            "reminders",
            "reminded_at",
            "decision",
            "decided_by",
            "decided_at",
            "comment",
            "valid_from",
            "valid_until",
            "voided_at",
            "voided_reason",
        ]
        read_only_fields = fields

    def get_artifact(self, approval: Approval) -> dict[str, Any]:
        return {
            "kind": approval.artifact_kind,
            "version": approval.artifact_version,
            "content_hash": approval.artifact_hash,
            "label": approval.artifact_label,
        }


class GateStateOutput(serializers.Serializer):
    gate = serializers.CharField(source="gate.key")
    title = serializers.CharField(source="gate.label")
    status = serializers.CharField(help_text="approved, pending, rejected, voided, ready or not_ready")
    owed_by = serializers.CharField(help_text="who owes the next action: hospital IT, customer success, or empty")
    sentence = serializers.CharField()
    requestable = serializers.BooleanField()
    artifact = serializers.SerializerMethodField()
    latest = serializers.SerializerMethodField()

    def get_artifact(self, state: gates.GateState) -> dict[str, Any] | None:
        artifact = state.artifact
        if artifact is None:
            return None
        return {"kind": artifact.kind, "version": artifact.version, "content_hash": artifact.content_hash}

    def get_latest(self, state: gates.GateState) -> str | None:
        return str(state.latest.code) if state.latest is not None else None


class RequestInput(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=gates.MAX_COMMENT, default="")


class DecideInput(serializers.Serializer):
    decision = serializers.ChoiceField(choices=Decision.choices)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=gates.MAX_COMMENT, default="")
    artifact_hash = serializers.CharField(
        required=False, max_length=64, help_text="the content hash you reviewed; refused if it changed since"
    )
    valid_from = serializers.DateTimeField(required=False, allow_null=True, default=None)
    valid_until = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApprovalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Approval requests of every gate, newest first; filter with ?state=pending, ?gate= or ?connection=."""

    serializer_class = ApprovalOutput
    lookup_field = "code"

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=["pending", "approved", "rejected", "voided"]),
            OpenApiParameter("gate", str),
            OpenApiParameter("connection", str, description="a connection's code"),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        approvals = approvals_for(self.request.user).order_by("-requested_at", "-id")
        params = self.request.query_params
        state = params.get("state")
        if state == "pending":
            approvals = approvals.filter(decision="", voided_at__isnull=True)
        elif state == "voided":
            approvals = approvals.filter(voided_at__isnull=False)
        elif state in Decision.values:
            approvals = approvals.filter(decision=state, voided_at__isnull=True)
        if params.get("gate"):
            approvals = approvals.filter(gate=params["gate"])
        if params.get("connection"):
            try:
                code = uuid.UUID(params["connection"])
            except ValueError:  # a malformed code matches nothing, as on the pages
                return approvals.none()
            approvals = approvals.filter(onboarding__connection__code=code)
        return approvals

    @extend_schema(request=DecideInput, responses=ApprovalOutput)
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, code: str) -> Response:
        """Approve or reject (a rejection needs its comment). Only the tenant's approvers may."""
        approval = self.get_object()
        data = _valid(DecideInput, request)
        try:
            decided = gates.decide(user=request.user, approval=approval, request=request._request, **data)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from None
        except gates.GateError as exc:
            return Response({"detail": str(exc), "code": "refused"}, status=status.HTTP_409_CONFLICT)
        return Response(ApprovalOutput(decided).data)

    @extend_schema(request=None, responses=ApprovalOutput)
    @action(detail=True, methods=["post"])
    def remind(self, request: Request, code: str) -> Response:
        """Send the approvers the pending request again (at most once an hour)."""
        approval = self.get_object()
        try:
            reminded = gates.remind(user=request.user, approval=approval, request=request._request)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from None
        except gates.GateError as exc:
            return Response({"detail": str(exc), "code": "refused"}, status=status.HTTP_409_CONFLICT)
        return Response(ApprovalOutput(reminded).data)


@extend_schema(responses=GateStateOutput(many=True), operation_id="connections_gates_list")
@api_view(["GET"])
def connection_gates(request: Request, code: str) -> Response:
    """Every gate of this connection: its state, who owes the next action, and the newest request."""
    onboarding = _onboarding(request, code)
    states = [gates.gate_state(onboarding, gate.key) for gate in gates.all_gates()] if onboarding else []
    return Response(GateStateOutput(states, many=True).data)


@extend_schema(request=RequestInput, responses={201: ApprovalOutput}, operation_id="connections_gates_request")
@api_view(["POST"])
def request_gate(request: Request, code: str, gate: str) -> Response:
    """Put the gate's current artifact to the tenant's approvers (customer success)."""
    onboarding = _onboarding(request, code)
    if onboarding is None:
        return Response({"detail": "Nothing has run on this connection yet.", "code": "refused"}, status=409)
    try:
        gates.get_gate(gate)
    except KeyError:
        raise Http404("No such gate.") from None
    data = _valid(RequestInput, request)
    try:
        approval = gates.request_approval(
            user=request.user, onboarding=onboarding, gate_key=gate, note=data["note"], request=request._request
        )
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None
    except gates.GateError as exc:
        return Response({"detail": str(exc), "code": "refused"}, status=status.HTTP_409_CONFLICT)
    return Response(ApprovalOutput(approval).data, status=status.HTTP_201_CREATED)


def _onboarding(request: Request, code: str) -> Onboarding | None:
    connection = get_connection_for_user(request.user, code)
    return getattr(connection, "onboarding", None)


def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
