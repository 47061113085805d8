"""API for EHR connections. The secret is write-only: accepted on input, never in any output.

A SMART Backend Services connection's key pair is made by the portal (``generate-key``); its
public key set is readable (``jwks``), its private key never leaves the database.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from connections import forms
from connections.keys import ALGORITHMS
from connections.models import AuthMethod, EHRConnection, Environment
from connections.selectors import connections_for, listed_connections_for
from connections.services import (
    EDITABLE_FIELDS,
    ArchiveError,
    archive_connection,
    create_connection,
    generate_key_pair,
    restore_connection,
    set_without_capability_statement,
    update_connection,
)
from portal.access import get_tenant_for_user, require_perm
from portal.api import django_errors


class JWKSOutput(serializers.Serializer):
    keys = serializers.ListField(child=serializers.DictField(), help_text="Public JWKs only.")


class ConnectionOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True)
    has_secret = serializers.BooleanField(read_only=True)
    has_key = serializers.BooleanField(read_only=True)
    jwks = JWKSOutput(read_only=True, help_text="The public key set to register with the hospital.")

    class Meta:
        model = EHRConnection
        fields = [
            "code",
            "tenant",
            "name",
            "vendor",
            "environment",
            "base_url",
            "auth_method",
            "client_id",
            "token_url",
            "token_auth_method",
            "scope",
            "mrn_system",
            "extra_search_params",
            "without_capability_statement",
            "pull_concurrency",
            "pull_rate",
            "pull_method",
            "bulk_group_id",
            "bulk_export_levels",
            "has_secret",
            "secret_updated_at",
            "has_key",
            "key_algorithm",
            "key_id",
            "key_created_at",
            "jwks",
            "archived_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ConnectionInput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(write_only=True, help_text="The tenant's code.")
    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        default="",
        help_text="Client secret or password. Write-only; blank on update keeps the stored one.",
    )

    class Meta:
        model = EHRConnection
        fields = ["tenant", "secret", *EDITABLE_FIELDS]
        # The per-tenant name check is done in the view, where the tenant is known and access-checked.
        validators: list[Any] = []

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance = self.instance
        environment = attrs.get("environment", instance.environment if instance else Environment.SANDBOX)
        if "base_url" in attrs:
            try:
                attrs["base_url"] = forms.check_fhir_base_url(attrs["base_url"], environment=environment)
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"base_url": exc.messages}) from None
        if "extra_search_params" in attrs:
            try:
                attrs["extra_search_params"] = forms.check_extra_search_params(attrs["extra_search_params"])
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"extra_search_params": exc.messages}) from None
        method = attrs.get("auth_method", instance.auth_method if instance else AuthMethod.NONE)
        if method in {AuthMethod.BASIC, AuthMethod.CLIENT_CREDENTIALS, AuthMethod.SMART_BACKEND}:
            client_id = attrs.get("client_id", instance.client_id if instance else "")
            if not client_id:
                raise serializers.ValidationError({"client_id": "This authentication method needs a client id."})
        has_secret = bool(attrs.get("secret")) or bool(instance and instance.has_secret)
        if method in {AuthMethod.BASIC, AuthMethod.CLIENT_CREDENTIALS} and not has_secret:
            raise serializers.ValidationError({"secret": "This authentication method needs a secret."})
        if method == AuthMethod.SMART_BACKEND and attrs.get("secret"):
            raise serializers.ValidationError(
                {"secret": "SMART Backend Services signs with a key pair made by the portal; send no secret."}
            )
        return attrs


class GenerateKeyInput(serializers.Serializer):
    algorithm = serializers.ChoiceField(choices=list(ALGORITHMS), default="RS384")
    replace = serializers.BooleanField(
        default=False, help_text="Must be true to replace an existing key pair; the old key stops working at once."
    )


class CapabilityStatementInput(serializers.Serializer):
    continue_without = serializers.BooleanField(
        help_text="True: go on without a CapabilityStatement (configure skips and lists the checks that need it); "
        "false: require one again."
    )


class ConnectionUpdateInput(ConnectionInput):
    class Meta(ConnectionInput.Meta):
        fields = ["secret", *EDITABLE_FIELDS]


class ConnectionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """EHR connections of the tenants the caller may see."""

    lookup_field = "code"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> Any:
        if self.action == "list":
            # Lists hide archived connections, as the pages do; ?archived=true lists only those.
            archived = self.request.query_params.get("archived", "").lower() in ("true", "1")
            return listed_connections_for(self.request.user, archived=archived).order_by("tenant__name", "name")
        return connections_for(self.request.user).order_by("tenant__name", "name")

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "archived", bool, description="true: only archived connections; otherwise only the live ones."
            )
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def get_serializer_class(self) -> Any:
        if self.action == "create":
            return ConnectionInput
        if self.action in {"update", "partial_update"}:
            return ConnectionUpdateInput
        return ConnectionOutput

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = ConnectionInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        tenant = get_tenant_for_user(request.user, values.pop("tenant"))
        secret = values.pop("secret", "")
        if EHRConnection.objects.filter(tenant=tenant, name__iexact=values["name"]).exists():
            raise serializers.ValidationError({"name": "This hospital already has a connection with that name."})
        try:
            connection = create_connection(
                user=request.user, tenant=tenant, fields=values, secret=secret, request=request._request
            )
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        return Response(ConnectionOutput(connection).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=JWKSOutput)
    @action(detail=True, methods=["get"])
    def jwks(self, request: Request, code: str | None = None) -> Response:
        """The public key set (JWKS) the hospital registers; empty until a key pair is generated."""
        return Response(self.get_object().jwks)

    @extend_schema(request=GenerateKeyInput, responses={201: ConnectionOutput})
    @action(detail=True, methods=["post"], url_path="generate-key")
    def generate_key(self, request: Request, code: str | None = None) -> Response:
        """Make a SMART Backend Services key pair; the private key is stored encrypted and never returned."""
        connection = self.get_object()
        require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
        data = GenerateKeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            connection = generate_key_pair(
                user=request.user,
                connection=connection,
                algorithm=data.validated_data["algorithm"],
                replace_existing=data.validated_data["replace"],
                request=request._request,
            )
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        return Response(ConnectionOutput(connection).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=CapabilityStatementInput, responses=ConnectionOutput)
    @action(detail=True, methods=["post"], url_path="capability-statement")
    def capability_statement(self, request: Request, code: str | None = None) -> Response:
        """Choose to go on without a CapabilityStatement for a server that has none, or require one again (audited)."""
        connection = self.get_object()
        require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
        data = CapabilityStatementInput(data=request.data)
        data.is_valid(raise_exception=True)
        connection = set_without_capability_statement(
            user=request.user,
            connection=connection,
            enabled=data.validated_data["continue_without"],
            request=request._request,
        )
        return Response(ConnectionOutput(connection).data)

    @extend_schema(request=None, responses=ConnectionOutput)
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, code: str | None = None) -> Response:
        """Archive: hidden from lists and closed to new runs, kept with its whole history (audited)."""
        return self._archive_or_restore(request, archive_connection)

    @extend_schema(request=None, responses=ConnectionOutput)
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, code: str | None = None) -> Response:
        """Bring an archived connection back into the lists; its steps can run again (audited)."""
        return self._archive_or_restore(request, restore_connection)

    def _archive_or_restore(self, request: Request, service: Any) -> Response:
        connection = self.get_object()
        require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
        try:
            connection = service(user=request.user, connection=connection, request=request._request)
        except ArchiveError as exc:
            # Already in the asked state: a conflict with what the caller believed, nothing changed.
            return Response({"detail": " ".join(exc.messages)}, status=status.HTTP_409_CONFLICT)
        return Response(ConnectionOutput(connection).data)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        connection = self.get_object()
        # Refuse people who may not edit before looking at what they sent (403, not a 400).
        require_perm(request.user, "connections.change_ehrconnection", connection.tenant)
        data = ConnectionUpdateInput(connection, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        secret = values.pop("secret", "")
        try:
            connection = update_connection(
                user=request.user, connection=connection, fields=values, secret=secret, request=request._request
            )
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        return Response(ConnectionOutput(connection).data)
