"""API for people: members, invitations (accepting one included), vendor staff and their assignments.

Same rules as the pages: objects come through the selectors (404 for another tenant's), the
services check permissions (403) and refuse bad changes with a message (400, 409 or 410).
Invitation links are never returned: they exist only in the invitee's email.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from portal.access import AuthUser, get_tenant_for_user, require_perm
from portal.models import HospitalRole, Invitation, Membership, StaffAssignment, StaffRole
from portal.people import selectors, services

TENANT_FILTER = OpenApiParameter("tenant", OpenApiTypes.UUID, description="Only this tenant's (its code).")


def refusal(exc: services.PeopleError) -> Response:
    """A refused change as an answer: what was wrong and what to do, with a status that tells which."""
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, services.LastApproverPending):
        body.update(code="last_approver", pending_approvals=exc.pending)
        return Response(body, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, services.InvitationUnusable):
        body["code"] = exc.reason
        return Response(body, status=status.HTTP_404_NOT_FOUND if exc.reason == "invalid" else status.HTTP_410_GONE)
    if isinstance(exc, services.WrongAccount):
        body["code"] = "wrong_account"
        return Response(body, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, services.AlreadyMember):
        body["code"] = "already_member"
        return Response(body, status=status.HTTP_409_CONFLICT)
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


def _user(request: Request) -> AuthUser:
    return request.user  # type: ignore[return-value]


# --- Members ------------------------------------------------------------------------------------


class MemberOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True)
    person = serializers.UUIDField(source="user.person.code", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    name = serializers.CharField(source="user.get_full_name", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    active = serializers.BooleanField(source="user.is_active", read_only=True)

    class Meta:
        model = Membership
        fields = ["code", "tenant", "person", "username", "name", "email", "role", "active", "created_at"]
        read_only_fields = fields


class RoleInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=HospitalRole.choices)
    confirm_last_approver = serializers.BooleanField(
        default=False,
        help_text="Must be true to take the right to decide from the last approver while approvals are pending.",
    )


class RemoveInput(serializers.Serializer):
    confirm_last_approver = serializers.BooleanField(
        default=False, help_text="Must be true to remove the last approver while approvals are pending."
    )


class RemoveOutput(serializers.Serializer):
    username = serializers.CharField()
    sessions_ended = serializers.IntegerField()
    tokens_revoked = serializers.IntegerField()
    deactivated = serializers.BooleanField(help_text="True when the person has no other hospital left.")


@extend_schema(parameters=[TENANT_FILTER])
class MemberViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """People of the hospitals the caller may see, with their roles. Managers change roles and remove."""

    serializer_class = MemberOutput
    lookup_field = "code"
    http_method_names = ["get", "patch", "post", "head", "options"]

    def get_queryset(self) -> Any:
        members = selectors.memberships_for(self.request.user).order_by("tenant__name", "user__username")
        if self.action == "list" and self.request.query_params.get("tenant"):
            tenant = get_tenant_for_user(self.request.user, self.request.query_params["tenant"])
            members = members.filter(tenant=tenant)
        return members

    def get_object(self) -> Membership:
        return selectors.get_membership_for_user(self.request.user, self.kwargs["code"])

    @extend_schema(request=RoleInput, responses={200: MemberOutput})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the member's role (viewer, approver or admin)."""
        membership = self.get_object()
        require_perm(request.user, "portal.manage_members", membership.tenant)
        data = RoleInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            membership = services.change_role(
                actor=request.user, membership=membership, request=request._request, **data.validated_data
            )
        except services.PeopleError as exc:
            return refusal(exc)
        return Response(MemberOutput(membership).data)

    @extend_schema(request=RemoveInput, responses={200: RemoveOutput})
    @action(detail=True, methods=["post"])
    def remove(self, request: Request, code: str | None = None) -> Response:
        """Remove the person from the hospital; their sessions and API tokens end at once."""
        membership = self.get_object()
        require_perm(request.user, "portal.manage_members", membership.tenant)
        data = RemoveInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            removal = services.remove_member(
                actor=request.user, membership=membership, request=request._request, **data.validated_data
            )
        except services.PeopleError as exc:
            return refusal(exc)
        body = {
            "username": removal.username,
            "sessions_ended": removal.ended.sessions,
            "tokens_revoked": removal.ended.tokens,
            "deactivated": removal.deactivated,
        }
        return Response(RemoveOutput(body).data)


# --- Invitations ----------------------------------------------------------------------------------


class InvitationOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True, allow_null=True, default=None)
    kind = serializers.SerializerMethodField()
    state = serializers.CharField(read_only=True, help_text="pending, expired, accepted or revoked")
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Invitation
        fields = [
            "code",
            "tenant",
            "kind",
            "email",
            "role",
            "state",
            "sends",
            "expires_at",
            "last_sent_at",
            "created_at",
            "created_by",
            "accepted_at",
            "revoked_at",
        ]
        read_only_fields = fields

    def get_kind(self, invitation: Invitation) -> str:
        return "staff" if invitation.tenant_id is None else "hospital"


class InvitationInput(serializers.Serializer):
    tenant = serializers.UUIDField(help_text="The tenant's code.")
    email = serializers.EmailField(max_length=150)
    role = serializers.ChoiceField(choices=HospitalRole.choices)


class AcceptInput(serializers.Serializer):
    token = serializers.CharField(
        help_text="The token of the link in the invitation email (the last part of its path)."
    )
    full_name = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)
    password = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        write_only=True,
        trim_whitespace=False,
        help_text="The new account's password (Django's password validators apply); not needed to join signed in.",
    )


class AcceptOutput(serializers.Serializer):
    username = serializers.CharField()
    tenant = serializers.UUIDField(allow_null=True)
    role = serializers.CharField()
    new_account = serializers.BooleanField()
    two_factor_required = serializers.BooleanField(
        help_text="The person must set up two-factor sign-in at first login."
    )


@extend_schema(parameters=[TENANT_FILTER])
class InvitationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Invitations the caller may manage: of their hospitals (managers) and, for vendor administrators, staff ones."""

    serializer_class = InvitationOutput
    lookup_field = "code"

    def get_queryset(self) -> Any:
        invitations = selectors.managed_invitations(self.request.user).order_by("-created_at")
        if self.action == "list" and self.request.query_params.get("tenant"):
            tenant = get_tenant_for_user(self.request.user, self.request.query_params["tenant"])
            invitations = invitations.filter(tenant=tenant)
        return invitations

    def get_object(self) -> Invitation:
        invitation = selectors.get_invitation_for_user(self.request.user, self.kwargs["code"])
        services.require_manage_invitation(self.request.user, invitation)
        return invitation

    def get_serializer_class(self) -> Any:
        return InvitationInput if self.action == "create" else InvitationOutput

    @extend_schema(request=InvitationInput, responses={201: InvitationOutput})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Invite a person to a hospital by email, with a role; the email carries the single-use link."""
        data = InvitationInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        tenant = get_tenant_for_user(request.user, values.pop("tenant"))
        try:
            invitation = services.invite_to_tenant(
                actor=request.user, tenant=tenant, request=request._request, **values
            )
        except services.PeopleError as exc:
            return refusal(exc)
        return Response(InvitationOutput(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: InvitationOutput})
    @action(detail=True, methods=["post"])
    def resend(self, request: Request, code: str | None = None) -> Response:
        """Send a new link with a new expiry; the earlier link stops working."""
        try:
            invitation = services.resend_invitation(
                actor=request.user, invitation=self.get_object(), request=request._request
            )
        except services.PeopleError as exc:
            return refusal(exc)
        return Response(InvitationOutput(invitation).data)

    @extend_schema(request=None, responses={200: InvitationOutput})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, code: str | None = None) -> Response:
        """Withdraw the invitation; its link stops working."""
        try:
            invitation = services.revoke_invitation(
                actor=request.user, invitation=self.get_object(), request=request._request
            )
        except services.PeopleError as exc:
            return refusal(exc)
        return Response(InvitationOutput(invitation).data)

    @extend_schema(request=AcceptInput, responses={201: AcceptOutput}, operation_id="invitations_accept")
    @action(detail=False, methods=["post"], permission_classes=[AllowAny])
    def accept(self, request: Request) -> Response:
        """Accept an invitation by its token: anonymously with a name and password, or as the signed-in invitee."""
        data = AcceptInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            accepted = services.accept_invitation(user=request.user, request=request._request, **data.validated_data)
        except DjangoValidationError as exc:
            return Response(exc.message_dict, status=status.HTTP_400_BAD_REQUEST)
        except services.PeopleError as exc:
            return refusal(exc)
        body = {
            "username": accepted.user.get_username(),
            "tenant": accepted.invitation.tenant.code if accepted.invitation.tenant else None,
            "role": accepted.invitation.role,
            "new_account": accepted.created,
            "two_factor_required": accepted.two_factor_required,
        }
        return Response(AcceptOutput(body).data, status=status.HTTP_201_CREATED)


# --- Vendor staff -------------------------------------------------------------------------------


class StaffOutput(serializers.Serializer):
    code = serializers.UUIDField(source="person.code", help_text="The person's code.")
    username = serializers.CharField()
    name = serializers.CharField(source="get_full_name")
    email = serializers.EmailField()
    roles = serializers.SerializerMethodField()
    active = serializers.BooleanField(source="is_active")
    last_login = serializers.DateTimeField(allow_null=True)
    date_joined = serializers.DateTimeField()

    def get_roles(self, user: AuthUser) -> list[str]:
        return [group.name for group in user.groups.all()]


class StaffInviteInput(serializers.Serializer):
    email = serializers.EmailField(max_length=150)
    role = serializers.ChoiceField(choices=StaffRole.choices)


class DeactivateOutput(serializers.Serializer):
    username = serializers.CharField()
    sessions_ended = serializers.IntegerField()
    tokens_revoked = serializers.IntegerField()


STAFF_CODE = OpenApiParameter("code", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The person's code.")


@extend_schema_view(retrieve=extend_schema(parameters=[STAFF_CODE]), deactivate=extend_schema(parameters=[STAFF_CODE]))
class StaffViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Vendor staff: listed for those who assign them to hospitals; invited and deactivated by vendor administrators."""

    serializer_class = StaffOutput
    lookup_field = "code"

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # Everyone else is refused the same way, whichever code they give.
        if not selectors.may_list_staff(request.user):
            require_perm(request.user, "portal.manage_staff")

    def get_queryset(self) -> Any:
        return selectors.staff_for(self.request.user).prefetch_related("groups")

    def get_object(self) -> AuthUser:
        return selectors.get_staff_for_user(self.request.user, self.kwargs["code"])

    @extend_schema(request=StaffInviteInput, responses={201: InvitationOutput})
    @action(detail=False, methods=["post"])
    def invite(self, request: Request) -> Response:
        """Invite customer success or an engineer by email."""
        data = StaffInviteInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            invitation = services.invite_staff(actor=request.user, request=request._request, **data.validated_data)
        except services.PeopleError as exc:
            return refusal(exc)
        return Response(InvitationOutput(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: DeactivateOutput})
    @action(detail=True, methods=["post"])
    def deactivate(self, request: Request, code: str | None = None) -> Response:
        """Deactivate the staff member; their sessions and API tokens end at once."""
        member = self.get_object()
        try:
            ended = services.deactivate_staff(actor=request.user, member=member, request=request._request)
        except services.PeopleError as exc:
            return refusal(exc)
        body = {"username": member.get_username(), "sessions_ended": ended.sessions, "tokens_revoked": ended.tokens}
        return Response(DeactivateOutput(body).data)


# --- Staff assignments ------------------------------------------------------------------------------


class AssignmentOutput(serializers.ModelSerializer):
    tenant = serializers.UUIDField(source="tenant.code", read_only=True)
    person = serializers.UUIDField(source="user.person.code", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    name = serializers.CharField(source="user.get_full_name", read_only=True)

    class Meta:
        model = StaffAssignment
        fields = ["code", "tenant", "person", "username", "name", "created_at"]
        read_only_fields = fields


class AssignmentInput(serializers.Serializer):
    tenant = serializers.UUIDField(help_text="The tenant's code.")
    person = serializers.UUIDField(help_text="The staff member's code (from /api/v1/staff/ or /api/v1/assignments/).")


@extend_schema(parameters=[TENANT_FILTER])
class AssignmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Which vendor staff take care of which hospitals ("my hospitals" on the dashboard)."""

    serializer_class = AssignmentOutput
    lookup_field = "code"

    def get_queryset(self) -> Any:
        assignments = selectors.assignments_for(self.request.user).order_by("tenant__name", "user__username")
        if self.action == "list" and self.request.query_params.get("tenant"):
            tenant = get_tenant_for_user(self.request.user, self.request.query_params["tenant"])
            assignments = assignments.filter(tenant=tenant)
        return assignments

    def get_object(self) -> StaffAssignment:
        return selectors.get_assignment_for_user(self.request.user, self.kwargs["code"])

    def get_serializer_class(self) -> Any:
        return AssignmentInput if self.action == "create" else AssignmentOutput

    @extend_schema(request=AssignmentInput, responses={201: AssignmentOutput})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = AssignmentInput(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = get_tenant_for_user(request.user, data.validated_data["tenant"])
        require_perm(request.user, "portal.assign_staff")
        member = selectors.vendor_staff().filter(person__code=data.validated_data["person"]).first()
        if member is None:
            return Response(
                {"person": ["No vendor staff member has this code. Take it from /api/v1/staff/."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            assignment = services.assign_staff(
                actor=request.user, tenant=tenant, member=member, request=request._request
            )
        except services.PeopleError as exc:
            return refusal(exc)
        return Response(AssignmentOutput(assignment).data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Unassign: the hospital leaves the staff member's "my hospitals"."""
        services.unassign_staff(actor=request.user, assignment=self.get_object(), request=request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)
