"""API for tenants and API tokens. Input and output serializers are separate so reads never accept writes."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth import authenticate
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from knox.models import AuthToken
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from portal import tokens, twofactor
from portal.access import AuthUser, get_tenant_for_user, require_perm, tenants_for
from portal.models import Tenant, validate_timezone
from portal.people.services import PeopleError
from portal.services import create_tenant, update_tenant


class DownloadNegotiation(DefaultContentNegotiation):
    """For views that answer a file themselves (CSV, FHIR JSON): any Accept header will do.

    DRF would answer ``Accept: text/csv`` with 406, as no renderer makes CSV; the view writes the
    file, and a refusal (404, 403) still comes as JSON.
    """

    def select_renderer(self, request: Any, renderers: Any, format_suffix: str | None = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


class TenantOutput(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["code", "name", "timezone", "contact_name", "contact_email", "require_two_factor", "created_at"]
        read_only_fields = fields


class TenantInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    timezone = serializers.CharField(max_length=64, default="America/New_York", validators=[validate_timezone])
    contact_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    contact_email = serializers.EmailField(required=False, allow_blank=True, default="")
    require_two_factor = serializers.BooleanField(
        required=False, default=False, help_text="Everyone of the hospital must set up two-factor sign-in."
    )
    invite_contact = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Invite contact_email as the hospital's approver (an email with a sign-in link), as the page does.",
    )


class TenantUpdateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    timezone = serializers.CharField(max_length=64, required=False, validators=[validate_timezone])
    contact_name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    contact_email = serializers.EmailField(required=False, allow_blank=True)
    require_two_factor = serializers.BooleanField(
        required=False, help_text="Everyone of the hospital must set up two-factor sign-in."
    )


def django_errors(exc: DjangoValidationError) -> serializers.ValidationError:
    """Turn a model validation error into DRF's field-keyed form."""
    if hasattr(exc, "message_dict"):
        return serializers.ValidationError(exc.message_dict)
    return serializers.ValidationError({"non_field_errors": exc.messages})


class TenantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Hospitals the caller may see. Vendor staff with the permission may create and change one."""

    serializer_class = TenantOutput
    lookup_field = "code"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> Any:
        return tenants_for(self.request.user).order_by("name")

    def get_serializer_class(self) -> Any:
        if self.action == "create":
            return TenantInput
        return TenantUpdateInput if self.action == "partial_update" else TenantOutput

    def get_object(self) -> Tenant:
        return get_tenant_for_user(self.request.user, self.kwargs["code"])

    @extend_schema(request=TenantUpdateInput, responses={200: TenantOutput})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the hospital's details, e.g. require two-factor sign-in of its people."""
        tenant = self.get_object()
        require_perm(request.user, "portal.change_tenant", tenant)
        data = TenantUpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        try:
            tenant = update_tenant(
                user=request.user, tenant=tenant, fields=data.validated_data, request=request._request
            )
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        return Response(TenantOutput(tenant).data)

    def create(self, request: Request) -> Response:
        data = TenantInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            tenant = create_tenant(
                user=request.user,
                fields=data.validated_data,
                invite_contact=data.validated_data["invite_contact"],
                request=request._request,
            )
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        except PeopleError as exc:
            raise serializers.ValidationError({"contact_email": [str(exc)]}) from None
        return Response(TenantOutput(tenant).data, status=status.HTTP_201_CREATED)


class TokenRequest(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False, write_only=True)
    otp_token = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        write_only=True,
        help_text="Required for vendor staff (and anyone who enrolled two-factor): the current authenticator code.",
    )


class TokenResponse(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as `Authorization: Token <token>`; it is shown only this once.")
    id = serializers.CharField(help_text="Names the token in /api/v1/auth/tokens/ and on the account page.")
    expires_at = serializers.DateTimeField(allow_null=True)


class TokenOutput(serializers.Serializer):
    """One of the caller's tokens; the key itself is never shown again."""

    id = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(source="created")
    expires_at = serializers.DateTimeField(source="expiry", allow_null=True)
    current = serializers.SerializerMethodField(help_text="Whether this request was made with this token.")

    def get_id(self, token: AuthToken) -> str:
        return tokens.token_id(token)

    def get_current(self, token: AuthToken) -> bool:
        used = self.context["request"].auth
        return isinstance(used, AuthToken) and used.digest == token.digest


@extend_schema(request=TokenRequest, responses={200: TokenResponse}, operation_id="auth_token_create")
@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def obtain_token(request: Request) -> Response:
    """Exchange a user name, password (and, for staff, a two-factor code) for an API token.

    Lockout counts these attempts like the login page's; staff cannot skip the second factor here.
    """
    data = TokenRequest(data=request.data)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    user = authenticate(request._request, username=values["username"], password=values["password"])
    if user is None:
        return Response(
            {"non_field_errors": ["Unable to log in with the user name and password given."]},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if twofactor.requires_two_factor(user) and not twofactor.verify(
        request=request._request, user=user, token=values["otp_token"]
    ):
        return Response(
            {"otp_token": ["Give the current code of your authenticator app (or a backup code) as otp_token."]},
            status=status.HTTP_400_BAD_REQUEST,
        )
    token, key = tokens.issue_token(user=user, request=request._request)
    return Response({"token": key, "id": tokens.token_id(token), "expires_at": token.expiry})


@extend_schema(responses={200: TokenOutput(many=True)}, operation_id="auth_tokens_list")
@api_view(["GET"])
def token_list(request: Request) -> Response:
    """The caller's live API tokens (never their keys), newest first."""
    live = tokens.live_tokens(request.user)
    return Response(TokenOutput(live, many=True, context={"request": request}).data)


@extend_schema(responses={204: OpenApiResponse(description="Revoked.")}, operation_id="auth_tokens_destroy")
@api_view(["DELETE"])
def token_detail(request: Request, token_id: str) -> Response:
    """Revoke one of the caller's own tokens at once (another person's is a 404, as a missing one)."""
    token = tokens.get_own_token(request.user, token_id)
    tokens.revoke_token(user=cast(AuthUser, request.user), token=token, request=request._request)
    return Response(status=status.HTTP_204_NO_CONTENT)
