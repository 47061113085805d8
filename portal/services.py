"""Writes to tenants and role assignments, each with its audit event."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpRequest

from portal import audit
from portal.access import AuthUser, User, require_perm
from portal.models import HospitalRole, Tenant
from portal.people import services as people

TENANT_FIELDS = ("name", "timezone", "contact_name", "contact_email", "require_two_factor")


@transaction.atomic
def create_tenant(
    *, user: User, fields: dict[str, Any], invite_contact: bool = False, request: HttpRequest | None = None
) -> Tenant:
    """Create a hospital tenant; with invite_contact, its IT contact is invited as an approver at once.

    The invitation is written in the same transaction: a refused one (the address belongs to vendor
    staff) leaves no hospital behind, and the email goes out only once both are saved.
    """
    require_perm(user, "portal.add_tenant")
    tenant = Tenant(created_by=user if user.is_authenticated else None)
    for name in TENANT_FIELDS:
        if name in fields:
            setattr(tenant, name, fields[name])
    tenant.full_clean()
    tenant.save()
    audit.record(action="tenant.create", actor=user, tenant=tenant, obj=tenant, request=request)
    if user.is_authenticated:
        # The hospital is one of "my hospitals" for whoever made it (and visible to them if they are
        # staff who see only the tenants assigned to them).
        people.assign_without_check(tenant=tenant, member=user, actor=user, request=request)
    if invite_contact and tenant.contact_email:
        people.invite_to_tenant(
            actor=user, tenant=tenant, email=tenant.contact_email, role=HospitalRole.APPROVER, request=request
        )
    return tenant


@transaction.atomic
def update_tenant(*, user: User, tenant: Tenant, fields: dict[str, Any], request: HttpRequest | None = None) -> Tenant:
    """Change a hospital's details (customer success), recording which fields changed."""
    require_perm(user, "portal.change_tenant", tenant)
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    changed = []
    for name in TENANT_FIELDS:
        if name in fields and getattr(tenant, name) != fields[name]:
            setattr(tenant, name, fields[name])
            changed.append(name)
    if not changed:
        return tenant
    tenant.full_clean()
    tenant.save()
    audit.record(
        action="tenant.update", actor=user, tenant=tenant, obj=tenant, request=request, detail={"fields": changed}
    )
    return tenant


@transaction.atomic
def grant_hospital_it(
    *,
    tenant: Tenant,
    member: AuthUser,
    actor: AuthUser | None = None,
    request: HttpRequest | None = None,
) -> None:
    """Make a user hospital IT of this tenant (and only this one), as an approver.

    Kept for set-up code and tests; people are otherwise added by accepting an invitation.
    """
    people.add_member(tenant=tenant, user=member, role=HospitalRole.APPROVER, actor=actor, request=request)


@transaction.atomic
def assign_staff_to_tenant(
    *,
    tenant: Tenant,
    member: AuthUser,
    actor: AuthUser | None = None,
    request: HttpRequest | None = None,
) -> None:
    """Assign vendor staff to this tenant, without a permission check (set-up code and tests).

    Staff without the global permission get to see the tenant. The checked way is
    portal.people.services.assign_staff.
    """
    people.assign_without_check(tenant=tenant, member=member, actor=actor, request=request)
