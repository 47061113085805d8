"""API for tenants. Input and output serializers are separate so reads never accept writes."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from portal.access import tenants_for
from portal.models import Tenant, validate_timezone
from portal.services import create_tenant


class TenantOutput(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["code", "name", "timezone", "contact_name", "contact_email", "created_at"]
        read_only_fields = fields


class TenantInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    timezone = serializers.CharField(max_length=64, default="America/New_York", validators=[validate_timezone])
    contact_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    contact_email = serializers.EmailField(required=False, allow_blank=True, default="")


def django_errors(exc: DjangoValidationError) -> serializers.ValidationError:
    """Turn a model validation error into DRF's field-keyed form."""
    if hasattr(exc, "message_dict"):
        return serializers.ValidationError(exc.message_dict)
    return serializers.ValidationError({"non_field_errors": exc.messages})


class TenantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Hospitals the caller may see. Vendor staff with the permission may create one."""

    serializer_class = TenantOutput
    lookup_field = "code"

    def get_queryset(self) -> Any:
        return tenants_for(self.request.user).order_by("name")

    def get_serializer_class(self) -> Any:
        return TenantInput if self.action == "create" else TenantOutput

    def create(self, request: Request) -> Response:
        data = TenantInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            tenant = create_tenant(user=request.user, fields=data.validated_data, request=request._request)
        except DjangoValidationError as exc:
            raise django_errors(exc) from None
        return Response(TenantOutput(tenant).data, status=status.HTTP_201_CREATED)
