"""API of the inbox and notification preferences: each caller reaches only their own notifications."""

from __future__ import annotations

from typing import Any, cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response

from portal.access import AuthUser
from portal.notifications import services
from portal.notifications.models import AVAILABLE_KINDS, Notification, NotificationKind
from portal.notifications.selectors import get_notification_for_user, notifications_for, unread_count

UUID_PATTERN = "[0-9a-fA-F-]{36}"


class NotificationOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True, allow_null=True, default=None)
    tenant_name = serializers.CharField(source="tenant.name", read_only=True, allow_null=True, default=None)
    unread = serializers.BooleanField(read_only=True)
    link = serializers.CharField(read_only=True, help_text="A path on this site: the thing the notification is about.")

    class Meta:
        model = Notification
        fields = ["code", "kind", "subject", "body", "link", "tenant", "tenant_name", "created_at", "read_at", "unread"]
        read_only_fields = fields


class UnreadCountOutput(serializers.Serializer):
    unread = serializers.IntegerField()


class ReadAllOutput(serializers.Serializer):
    marked_read = serializers.IntegerField()


def _me(request: Request) -> AuthUser:
    # IsAuthenticated (the default permission) lets no anonymous caller this far.
    return cast(AuthUser, request.user)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter(
                "unread",
                OpenApiTypes.BOOL,
                description="true: only unread notifications; false: only read ones; absent: all.",
            )
        ]
    )
)
class NotificationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's own notifications, newest first. Another person's is a 404."""

    serializer_class = NotificationOutput
    lookup_field = "code"
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self) -> Any:
        raw = self.request.query_params.get("unread")
        if raw is None or raw == "":
            return notifications_for(self.request.user)
        lowered = raw.lower()
        if lowered not in {"true", "false", "1", "0"}:
            raise serializers.ValidationError({"unread": ["Give true or false."]})
        return notifications_for(self.request.user, unread=lowered in {"true", "1"})

    def get_object(self) -> Notification:
        return get_notification_for_user(self.request.user, self.kwargs["code"])

    @extend_schema(request=None, responses=NotificationOutput)
    @action(detail=True, methods=["post"])
    def read(self, request: Request, code: str) -> Response:
        """Mark this notification read (again is harmless)."""
        notification = self.get_object()
        services.mark_read(user=_me(request), notification=notification, request=request._request)
        return Response(NotificationOutput(notification).data)

    @extend_schema(request=None, responses=ReadAllOutput)
    @action(detail=False, methods=["post"], url_path="read-all")
    def read_all(self, request: Request) -> Response:
        """Mark every notification of the caller read."""
        return Response({"marked_read": services.mark_all_read(user=_me(request), request=request._request)})

    @extend_schema(responses=UnreadCountOutput)
    @action(detail=False, methods=["get"], url_path="unread-count")
    def unread_count(self, request: Request) -> Response:
        """How many of the caller's notifications are unread."""
        return Response({"unread": unread_count(request.user)})


class PreferenceOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=NotificationKind.choices)
    # Not "label": that name is a Field attribute every serializer already has.
    description = serializers.CharField()
    email = serializers.BooleanField()
    available = serializers.BooleanField(help_text="False for kinds the portal does not send yet.")


class PreferencesInput(serializers.Serializer):
    email = serializers.DictField(
        child=serializers.BooleanField(),
        help_text=f"Kind to email on (true) or off (false); kinds left out keep their setting. "
        f"Kinds: {', '.join(NotificationKind.values)}.",
    )

    def validate_email(self, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(NotificationKind.values))
        if unknown:
            raise serializers.ValidationError(
                f"Unknown kinds: {', '.join(unknown)}. Use any of: {', '.join(NotificationKind.values)}."
            )
        return value


def _preferences(user: AuthUser) -> list[dict[str, Any]]:
    email = services.email_preferences(user)
    return [
        {
            "kind": kind.value,
            "description": kind.label,
            "email": email[kind.value],
            "available": kind.value in AVAILABLE_KINDS,
        }
        for kind in NotificationKind
    ]


@extend_schema(methods=["GET"], responses=PreferenceOutput(many=True), operation_id="notification_preferences_read")
@extend_schema(
    methods=["PATCH"],
    request=PreferencesInput,
    responses=PreferenceOutput(many=True),
    operation_id="notification_preferences_update",
)
@api_view(["GET", "PATCH"])
def notification_preferences(request: Request) -> Response:
    """The caller's email setting per kind of notification (on unless turned off); PATCH changes some."""
    user = _me(request)
    if request.method == "PATCH":
        data = PreferencesInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.set_email_preferences(user=user, email=data.validated_data["email"], request=request._request)
    return Response(_preferences(user))
