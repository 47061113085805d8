"""Reads of people: a tenant's approvers and members, vendor staff and their hospitals, invitations.

Helpers named `get_*_for_user` are the one way in from views and the API: an object the user may
not see is a 404, exactly like one that does not exist.
"""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import Http404
from guardian.shortcuts import get_objects_for_user

from portal.access import AuthUser, User, tenants_for
from portal.models import HospitalRole, Invitation, InvitationStatus, Membership, Person, StaffAssignment, Tenant
from portal.roles import CUSTOMER_SUCCESS, ENGINEERS, VENDOR_ADMINS

VENDOR_GROUPS = (CUSTOMER_SUCCESS, ENGINEERS, VENDOR_ADMINS)
DECIDING_ROLES = (HospitalRole.APPROVER, HospitalRole.ADMIN)


# --- For the gates and notifications ------------------------------------------------------------


def approvers_of(tenant: Tenant) -> QuerySet[AuthUser]:
    """The active people who may decide this tenant's gates: its approvers and hospital admins."""
    return (
        get_user_model()
        .objects.filter(memberships__tenant=tenant, memberships__role__in=DECIDING_ROLES, is_active=True)
        .order_by("username")
    )


def staff_assigned_to(tenant: Tenant) -> QuerySet[AuthUser]:
    """The active vendor staff assigned to this tenant (customer success and engineers alike)."""
    return get_user_model().objects.filter(staff_assignments__tenant=tenant, is_active=True).order_by("username")


def hospital_role_of(user: User, tenant: Tenant) -> str | None:
    """The user's hospital role on this tenant ("viewer", "approver" or "admin"), or None if not a member."""
    if not user.is_authenticated or not user.is_active:
        return None
    return Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True).first()


def tenants_assigned_to(user: User) -> QuerySet[Tenant]:
    """The hospitals a vendor staff member is assigned to ("My hospitals")."""
    if not user.is_authenticated:
        return Tenant.objects.none()
    return Tenant.objects.filter(staff_assignments__user=user)


# --- Members ----------------------------------------------------------------------------------


def members_of(tenant: Tenant) -> QuerySet[Membership]:
    """The tenant's people with their roles, by user name."""
    return Membership.objects.filter(tenant=tenant).select_related("user", "user__person").order_by("user__username")


def memberships_for(user: User) -> QuerySet[Membership]:
    """Memberships of every tenant the user may see."""
    return Membership.objects.filter(tenant__in=tenants_for(user)).select_related("tenant", "user", "user__person")


def get_membership_for_user(user: User, code: uuid.UUID | str) -> Membership:
    """The membership with this code if the user may see its tenant, else 404."""
    try:
        return memberships_for(user).get(code=code)
    except (Membership.DoesNotExist, ValueError, TypeError):
        raise Http404("No such member.") from None


def can_manage_members(user: User, tenant: Tenant) -> bool:
    """Customer success everywhere, a hospital admin on their own tenant."""
    return user.is_authenticated and (
        user.has_perm("portal.manage_members") or user.has_perm("portal.manage_members", tenant)
    )


def managed_tenants(user: User) -> QuerySet[Tenant]:
    """Tenants whose people the user may manage."""
    if not user.is_authenticated or not user.is_active:
        return Tenant.objects.none()
    if user.has_perm("portal.manage_members"):
        return tenants_for(user)
    return get_objects_for_user(user, "portal.manage_members", klass=Tenant, accept_global_perms=False)


# --- Invitations --------------------------------------------------------------------------------


def invitations_for(user: User) -> QuerySet[Invitation]:
    """Invitations the user may see: of the tenants they may see, and staff ones for vendor administrators."""
    visible = Q(tenant__in=tenants_for(user))
    if user.is_authenticated and user.has_perm("portal.manage_staff"):
        visible |= Q(tenant__isnull=True)
    return Invitation.objects.filter(visible).select_related("tenant", "created_by")


def managed_invitations(user: User) -> QuerySet[Invitation]:
    """Invitations the user may resend or revoke (what the API lists)."""
    managed = Q(tenant__in=managed_tenants(user))
    if user.is_authenticated and user.has_perm("portal.manage_staff"):
        managed |= Q(tenant__isnull=True)
    return Invitation.objects.filter(managed).select_related("tenant", "created_by")


def get_invitation_for_user(user: User, code: uuid.UUID | str) -> Invitation:
    """The invitation with this code if the user may see it, else 404."""
    try:
        return invitations_for(user).get(code=code)
    except (Invitation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such invitation.") from None


def pending_invitations_of(tenant: Tenant | None) -> QuerySet[Invitation]:
    """Invitations not yet accepted or revoked (expired ones included, so they can be resent)."""
    invitations = Invitation.objects.filter(status=InvitationStatus.PENDING).select_related("created_by")
    if tenant is None:
        return invitations.filter(tenant__isnull=True)
    return invitations.filter(tenant=tenant)


# --- Vendor staff -------------------------------------------------------------------------------


def vendor_staff() -> QuerySet[AuthUser]:
    """Everyone of the vendor: customer success, engineers, vendor administrators (active or not)."""
    return (
        get_user_model()
        .objects.filter(Q(groups__name__in=VENDOR_GROUPS) | Q(is_superuser=True))
        .distinct()
        .select_related("person")
        .order_by("username")
    )


def is_vendor_person(user: AuthUser) -> bool:
    """Whether this account belongs to the vendor (by group or as a superuser)."""
    return bool(user.is_superuser) or user.groups.filter(name__in=VENDOR_GROUPS).exists()


def may_list_staff(user: User) -> bool:
    """Vendor administrators, and those who assign staff to hospitals (customer success)."""
    return user.is_authenticated and (user.has_perm("portal.manage_staff") or user.has_perm("portal.assign_staff"))


def staff_for(user: User) -> QuerySet[AuthUser]:
    """Vendor staff, for those who may list them; nobody else sees any."""
    if not may_list_staff(user):
        return get_user_model().objects.none()
    return vendor_staff()


def get_staff_for_user(user: User, code: uuid.UUID | str) -> AuthUser:
    """The vendor staff member with this person code, for those who may list staff; else 404."""
    try:
        return staff_for(user).get(person__code=code)
    except (get_user_model().DoesNotExist, ValueError, TypeError):
        raise Http404("No such staff member.") from None


def assignable_staff(tenant: Tenant) -> QuerySet[AuthUser]:
    """Active vendor staff not yet assigned to this tenant (the choices of the assign form)."""
    return vendor_staff().filter(is_active=True).exclude(staff_assignments__tenant=tenant)


def assignments_of(tenant: Tenant) -> QuerySet[StaffAssignment]:
    return (
        StaffAssignment.objects.filter(tenant=tenant).select_related("user", "user__person").order_by("user__username")
    )


def assignments_for(user: User) -> QuerySet[StaffAssignment]:
    """Staff assignments of every tenant the user may see."""
    return StaffAssignment.objects.filter(tenant__in=tenants_for(user)).select_related("tenant", "user", "user__person")


def get_assignment_for_user(user: User, code: uuid.UUID | str) -> StaffAssignment:
    try:
        return assignments_for(user).get(code=code)
    except (StaffAssignment.DoesNotExist, ValueError, TypeError):
        raise Http404("No such assignment.") from None


def person_code(user: AuthUser) -> uuid.UUID:
    """The user's opaque code, made on first need (users made before people existed have none)."""
    person, _ = Person.objects.get_or_create(user=user)
    return person.code
