"""API for go-live: windows, the plan, scheduling, rollback and promotion, service tokens, and the product's read API.

Pages and API do the same things through ``onboarding.golive.services`` and ``windows``; a refusal
is a 400 (bad input) or 409 (not now) with a ``detail`` that says what to fix. The read API
(``/api/v1/live/...``) authenticates only service tokens (``Authorization: Bearer svc_...``).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from connections.errors import RemoteError
from connections.selectors import get_connection_for_user
from onboarding.gates import services as gates
from onboarding.golive import readapi, services, windows
from onboarding.golive.models import ChangeWindow, ServiceAccount, ServiceToken, WindowChoice
from onboarding.live.models import MaintenanceWindow
from onboarding.live.state import live_state
from onboarding.models import Onboarding
from portal.access import get_tenant_for_user, require_perm, tenants_for

Detail = inline_serializer("GoLiveDetail", {"detail": serializers.CharField(), "field": serializers.CharField()})


def _refused(exc: Exception, code: int = status.HTTP_400_BAD_REQUEST) -> Response:
    return Response({"detail": str(exc), "field": getattr(exc, "field", None)}, status=code)


def _data(request: Request) -> dict[str, Any]:
    return request.data if isinstance(request.data, dict) else {}


def _forbid(exc: DjangoPermissionDenied) -> PermissionDenied:
    return PermissionDenied(str(exc))


# --- windows ------------------------------------------------------------------------------------


class ChangeWindowSerializer(serializers.ModelSerializer):
    timezone = serializers.CharField(required=False, allow_blank=True, help_text="IANA name; the tenant's by default.")

    class Meta:
        model = ChangeWindow
        fields = ["code", "weekday", "start_time", "end_time", "timezone", "note", "created_at"]
        read_only_fields = ["code", "created_at"]
        extra_kwargs = {"weekday": {"help_text": "0 Monday .. 6 Sunday."}}


class MaintenanceWindowSerializer(serializers.ModelSerializer):
    timezone = serializers.CharField(
        required=False, allow_blank=True, write_only=True, help_text="Zone of naive one-off times."
    )
    connection = serializers.UUIDField(required=False, allow_null=True, write_only=True, source="connection_code")

    class Meta:
        model = MaintenanceWindow
        fields = [
            "id",
            "kind",
            "weekday",
            "start_time",
            "end_time",
            "starts_at",
            "ends_at",
            "note",
            "timezone",
            "connection",
        ]
        read_only_fields = ["id"]


@extend_schema(methods=["GET"], responses=ChangeWindowSerializer(many=True), operation_id="tenant_change_windows")
@extend_schema(
    methods=["POST"],
    request=ChangeWindowSerializer,
    responses={201: ChangeWindowSerializer, 400: Detail},
    operation_id="tenant_change_window_add",
)
@api_view(["GET", "POST"])
def change_windows(request: Request, code: str) -> Response:
    """A tenant's weekly change windows (GET); add one (POST): refused if it ends before it starts or overlaps."""
    tenant = get_tenant_for_user(request.user, code)
    if request.method == "GET":
        return Response(ChangeWindowSerializer(windows.change_windows(tenant), many=True).data)
    serializer = ChangeWindowSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    try:
        window = windows.add_change_window(
            user=request.user,
            tenant=tenant,
            weekday=data["weekday"],
            start_time=data["start_time"],
            end_time=data["end_time"],
            zone=data.get("timezone", ""),
            note=data.get("note", ""),
            request=request._request,
        )
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None
    except windows.WindowRefused as exc:
        return _refused(exc)
    return Response(ChangeWindowSerializer(window).data, status=status.HTTP_201_CREATED)


@extend_schema(responses={204: None}, operation_id="change_window_remove")
@api_view(["DELETE"])
def change_window(request: Request, code: str) -> Response:
    """Remove a change window."""
    window = get_object_or_404(ChangeWindow, code=code, tenant__in=tenants_for(request.user))
    try:
        windows.remove_change_window(user=request.user, window=window, request=request._request)
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None
    return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(
    methods=["GET"], responses=MaintenanceWindowSerializer(many=True), operation_id="tenant_maintenance_windows"
)
@extend_schema(
    methods=["POST"],
    request=MaintenanceWindowSerializer,
    responses={201: MaintenanceWindowSerializer, 400: Detail},
    operation_id="tenant_maintenance_window_add",
)
@api_view(["GET", "POST"])
def maintenance_windows(request: Request, code: str) -> Response:
    """The EHR's planned maintenance windows (GET); add one, weekly or once (POST)."""
    tenant = get_tenant_for_user(request.user, code)
    if request.method == "GET":
        return Response(MaintenanceWindowSerializer(windows.maintenance_windows(tenant), many=True).data)
    serializer = MaintenanceWindowSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = dict(serializer.validated_data)
    connection = None
    if data.get("connection_code"):
        connection = tenant.connections.filter(code=data["connection_code"]).first()
        if connection is None:
            return _refused(windows.WindowRefused("No such connection of this hospital.", field="connection"))
    try:
        window = windows.add_maintenance_window(
            user=request.user,
            tenant=tenant,
            kind=data.get("kind", ""),
            weekday=data.get("weekday"),
            start_time=data.get("start_time"),
            end_time=data.get("end_time"),
            starts_at=data.get("starts_at"),
            ends_at=data.get("ends_at"),
            zone=data.get("timezone", ""),
            connection=connection,
            note=data.get("note", ""),
            request=request._request,
        )
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None
    except windows.WindowRefused as exc:
        return _refused(exc)
    return Response(MaintenanceWindowSerializer(window).data, status=status.HTTP_201_CREATED)


@extend_schema(responses={204: None}, operation_id="tenant_maintenance_window_remove")
@api_view(["DELETE"])
def maintenance_window(request: Request, code: str, pk: int) -> Response:
    """Remove a maintenance window."""
    tenant = get_tenant_for_user(request.user, code)
    window = get_object_or_404(MaintenanceWindow, pk=pk, tenant=tenant)
    try:
        windows.remove_maintenance_window(user=request.user, window=window, request=request._request)
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None
    return Response(status=status.HTTP_204_NO_CONTENT)


# --- the plan and the go-live ------------------------------------------------------------------------


class GoLivePlanInput(serializers.Serializer):
    seen_version = serializers.IntegerField(min_value=0, help_text="The version you read (0 for none).")
    window_choice = serializers.ChoiceField(choices=WindowChoice.choices)
    window_starts_at = serializers.DateTimeField(required=False, allow_null=True)
    rollout = serializers.ChoiceField(choices=services.Rollout.choices)
    pilot_percent = serializers.IntegerField(required=False, default=0)
    hypercare_contacts = serializers.ListField(
        child=inline_serializer("Contact", {"name": serializers.CharField(), "email": serializers.CharField()})
    )


def go_live_facts(onboarding: Onboarding | None) -> dict[str, Any]:
    """What the go-live page shows, as data: live state, plan, approval, schedule, readiness."""
    if onboarding is None:
        return {"live": None, "plan": None, "approval": None, "schedule": None, "ready": False, "problems": []}
    state = live_state(onboarding)
    plan = services.latest_plan(onboarding)
    gate = gates.gate_state(onboarding, services.GATE_KEY)
    schedule = onboarding.go_live_schedules.first()
    problems = services.readiness(onboarding)
    return {
        "live": {
            "stage": state.stage,
            "pilot_percent": state.pilot_percent,
            "live_since": state.live_since,
            "phase": state.phase,
            "hypercare_until": state.hypercare_until,
            "hypercare_contacts": [{"name": c["name"], "email": c["email"]} for c in state.hypercare_contacts],
        }
        if state is not None
        else None,
        "plan": services.describe_plan(plan) if plan else None,
        "approval": {"status": gate.status, "sentence": gate.sentence, "requestable": gate.requestable},
        "schedule": {
            "code": str(schedule.code),
            "status": schedule.status,
            "opens_at": schedule.opens_at,
            "closes_at": schedule.closes_at,
            "override": bool(schedule.override_reason),
            "note": schedule.status_note,
            "run": str(schedule.run.code) if schedule.run else None,
        }
        if schedule is not None
        else None,
        "ready": not problems,
        "problems": problems,
    }


GoLiveOutput = inline_serializer(
    "GoLive",
    {
        "live": serializers.DictField(allow_null=True),
        "plan": serializers.DictField(allow_null=True),
        "approval": serializers.DictField(allow_null=True),
        "schedule": serializers.DictField(allow_null=True),
        "ready": serializers.BooleanField(),
        "problems": serializers.ListField(child=serializers.CharField()),
    },
)


def _onboarding(request: Request, code: str) -> Onboarding:
    connection = get_connection_for_user(request.user, code)
    onboarding: Onboarding | None = getattr(connection, "onboarding", None)
    if onboarding is None:
        raise Http404("Nothing has run on this connection yet.")
    return onboarding


@extend_schema(responses=GoLiveOutput, operation_id="connections_go_live")
@api_view(["GET"])
def go_live(request: Request, code: str) -> Response:
    """A connection's go-live: live state, current plan, approval, schedule, and what stops it."""
    connection = get_connection_for_user(request.user, code)
    return Response(go_live_facts(getattr(connection, "onboarding", None)))


@extend_schema(
    request=GoLivePlanInput,
    responses={201: GoLiveOutput, 200: GoLiveOutput, 400: Detail, 409: Detail},
    operation_id="connections_go_live_plan_write",
)
@api_view(["POST"])
def go_live_plan(request: Request, code: str) -> Response:
    """Write the next go-live plan version (naming the ``seen_version`` read); a change voids the approval."""
    onboarding = _onboarding(request, code)
    serializer = GoLivePlanInput(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = dict(serializer.validated_data)
    seen = data.pop("seen_version")
    try:
        _, created = services.save_plan(
            user=request.user, onboarding=onboarding, values=data, seen_version=seen, request=request._request
        )
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None
    except services.GoLiveRefused as exc:
        return _refused(exc, status.HTTP_409_CONFLICT if exc.field is None else status.HTTP_400_BAD_REQUEST)
    return Response(go_live_facts(onboarding), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


ActionInput = inline_serializer(
    "GoLiveAction",
    {
        "override_reason": serializers.CharField(required=False, help_text="schedule: an emergency go-live now."),
        "reason": serializers.CharField(required=False, help_text="rollback: why (required)."),
    },
)
ACTIONS = ("schedule", "cancel", "rollback", "promote")


@extend_schema(
    request=ActionInput,
    responses={200: GoLiveOutput, 400: Detail, 409: Detail},
    parameters=[OpenApiParameter("action", str, OpenApiParameter.PATH, enum=list(ACTIONS))],
    operation_id="connections_go_live_action",
)
@api_view(["POST"])
def go_live_action(request: Request, code: str, action: str) -> Response:
    """schedule (in the plan's window, or now with ``override_reason``), cancel, rollback (with ``reason``), promote."""
    if action not in ACTIONS:
        raise Http404("No such go-live action.")
    onboarding = _onboarding(request, code)
    try:
        if action == "schedule":
            services.schedule_go_live(
                user=request.user,
                onboarding=onboarding,
                override_reason=str(_data(request).get("override_reason") or ""),
                request=request._request,
            )
        elif action == "cancel":
            schedule = services.active_schedule(onboarding)
            if schedule is None:
                raise services.GoLiveRefused("No go-live is waiting for its window.")
            services.cancel_schedule(user=request.user, schedule=schedule, request=request._request)
        elif action == "rollback":
            services.rollback(
                user=request.user,
                onboarding=onboarding,
                reason=str(_data(request).get("reason") or ""),
                request=request._request,
            )
        else:
            services.promote(user=request.user, onboarding=onboarding, request=request._request)
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None
    except services.GoLiveRefused as exc:
        return _refused(exc, status.HTTP_400_BAD_REQUEST if exc.field else status.HTTP_409_CONFLICT)
    return Response(go_live_facts(onboarding))


# --- service accounts -------------------------------------------------------------------------------


class ServiceTokenOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code")
    tenant_name = serializers.CharField(source="tenant.name")

    class Meta:
        model = ServiceToken
        fields = ["code", "prefix", "tenant", "tenant_name", "created_at", "expires_at", "revoked_at"]


class AccountOutput(serializers.ModelSerializer):
    tokens = ServiceTokenOutput(many=True, read_only=True)

    class Meta:
        model = ServiceAccount
        fields = ["code", "name", "created_at", "disabled_at", "tokens"]


def _require_manager(request: Request) -> None:
    try:
        require_perm(request.user, readapi.MANAGE_PERM)
    except DjangoPermissionDenied as exc:
        raise _forbid(exc) from None


@extend_schema(methods=["GET"], responses=AccountOutput(many=True), operation_id="service_accounts")
@extend_schema(
    methods=["POST"],
    request=inline_serializer("ServiceAccountInput", {"name": serializers.CharField()}),
    responses={201: AccountOutput, 400: Detail},
    operation_id="service_account_create",
)
@api_view(["GET", "POST"])
def service_accounts(request: Request) -> Response:
    """The product's service accounts and their tokens (GET); a new account (POST). Vendor staff only."""
    _require_manager(request)
    if request.method == "GET":
        accounts = ServiceAccount.objects.prefetch_related("tokens__tenant")
        return Response(AccountOutput(accounts, many=True).data)
    try:
        account = readapi.create_account(
            user=request.user, name=str(_data(request).get("name") or ""), request=request._request
        )
    except readapi.TokenRefused as exc:
        return _refused(exc)
    return Response(AccountOutput(account).data, status=status.HTTP_201_CREATED)


@extend_schema(
    request=inline_serializer("ServiceTokenInput", {"tenant": serializers.UUIDField()}),
    responses={
        201: inline_serializer("ServiceTokenIssued", {"token": ServiceTokenOutput(), "key": serializers.CharField()}),
        400: Detail,
    },
    operation_id="service_token_issue",
)
@api_view(["POST"])
def service_tokens(request: Request, code: str) -> Response:
    """Issue a token of the account for one tenant; its key is in this answer only."""
    _require_manager(request)
    account = get_object_or_404(ServiceAccount, code=code)
    tenant = get_tenant_for_user(request.user, str(_data(request).get("tenant") or ""))
    try:
        token, key = readapi.issue_token(user=request.user, account=account, tenant=tenant, request=request._request)
    except readapi.TokenRefused as exc:
        return _refused(exc)
    return Response({"token": ServiceTokenOutput(token).data, "key": key}, status=status.HTTP_201_CREATED)


@extend_schema(request=None, responses={200: ServiceTokenOutput, 409: Detail}, operation_id="service_token_revoke")
@api_view(["POST"])
def service_token_revoke(request: Request, code: str) -> Response:
    """Revoke a service token at once."""
    _require_manager(request)
    token = get_object_or_404(ServiceToken.objects.select_related("tenant", "account"), code=code)
    try:
        readapi.revoke_token(user=request.user, token=token, request=request._request)
    except readapi.TokenRefused as exc:
        return _refused(exc, status.HTTP_409_CONFLICT)
    token.refresh_from_db()
    return Response(ServiceTokenOutput(token).data)


# --- the product's read API -----------------------------------------------------------------------


class ServiceTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer svc_...``: a service account's token for one tenant."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[readapi.Caller, None] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Send one service token: Authorization: Bearer svc_...")
        # The connection the URL names, so its live state is read with the token in one round trip.
        kwargs = (getattr(request, "parser_context", None) or {}).get("kwargs") or {}
        caller = readapi.caller_for(parts[1].decode(errors="replace"), str(kwargs.get("code") or ""))
        if caller is None:
            raise AuthenticationFailed("This service token is unknown, revoked or expired.")
        return caller, None

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class ServiceTokenScheme(OpenApiAuthenticationExtension):
    """The read API's service tokens in the OpenAPI schema: a bearer token, one tenant's scope."""

    target_class = "onboarding.golive.api.ServiceTokenAuthentication"
    name = "serviceToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A service account's token for one tenant (svc_...), issued on /service-accounts/.",
        }


def _caller(request: Request) -> readapi.Caller:
    if not isinstance(request.user, readapi.Caller):
        raise AuthenticationFailed("The read API takes a service token: Authorization: Bearer svc_...")
    return request.user


def _serve(request: Request, code: str, **kwargs: Any) -> Response:
    try:
        body = readapi.serve(_caller(request), code, request=request._request, **kwargs)
    except readapi.NotFound as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)
    except readapi.NotLive as exc:
        return Response({"detail": str(exc), "code": exc.code}, status=status.HTTP_409_CONFLICT)
    except RemoteError as exc:
        code_ = status.HTTP_404_NOT_FOUND if exc.kind.value == "not_found" else status.HTTP_502_BAD_GATEWAY
        return Response({"detail": exc.message, "error_kind": exc.kind.value}, status=code_)
    return Response(body)


NormalisedPatient = inline_serializer(
    "NormalisedPatient",
    {
        "id": serializers.CharField(),
        "mrn": serializers.CharField(allow_null=True),
        "name": inline_serializer(
            "PatientName",
            {"family": serializers.CharField(), "given": serializers.ListField(child=serializers.CharField())},
        ),
        "birth_date": serializers.CharField(allow_null=True),
        "gender": serializers.CharField(allow_null=True),
    },
)
ReadErrors = {404: Detail, 409: Detail, 502: Detail}


@extend_schema(
    parameters=[OpenApiParameter("mrn", str, required=True, description="In the signed mapping's MRN system.")],
    responses={200: NormalisedPatient, **ReadErrors},
    operation_id="live_patient_by_mrn",
)
@api_view(["GET"])
@authentication_classes([ServiceTokenAuthentication])
@permission_classes([])
def live_patients(request: Request, code: str) -> Response:
    """A live hospital's patient by MRN, normalised (service token)."""
    mrn = str(request.query_params.get("mrn") or "").strip()
    if not mrn:
        _caller(request)
        return Response({"detail": "Give the MRN: ?mrn=...", "field": "mrn"}, status=status.HTTP_400_BAD_REQUEST)
    return _serve(request, code, mrn=mrn)


@extend_schema(responses={200: NormalisedPatient, **ReadErrors}, operation_id="live_patient")
@api_view(["GET"])
@authentication_classes([ServiceTokenAuthentication])
@permission_classes([])
def live_patient(request: Request, code: str, patient_id: str) -> Response:
    """A live hospital's patient by id, normalised (service token)."""
    return _serve(request, code, patient_id=patient_id)


@extend_schema(
    parameters=[OpenApiParameter("resource", str, OpenApiParameter.PATH, enum=list(readapi.CLINICAL_TYPES))],
    responses={
        200: inline_serializer(
            "LiveClinical",
            {
                "patient": serializers.CharField(),
                "resource_type": serializers.CharField(),
                "items": serializers.ListField(child=serializers.DictField()),
            },
        ),
        **ReadErrors,
    },
    operation_id="live_patient_clinical",
)
@api_view(["GET"])
@authentication_classes([ServiceTokenAuthentication])
@permission_classes([])
def live_clinical(request: Request, code: str, patient_id: str, resource: str) -> Response:
    """A live patient's Observations, Conditions or Encounters, local codes followed by their mapped codes."""
    if resource not in readapi.CLINICAL_TYPES:
        raise Http404("No such resource list.")
    return _serve(request, code, patient_id=patient_id, resource=resource)
