"""Writes to tenants and role assignments, each with its audit event."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpRequest
from guardian.shortcuts import assign_perm

from portal import audit
from portal.access import AuthUser, User, require_perm
from portal.models import Tenant
from portal.roles import HOSPITAL_IT, HOSPITAL_IT_TENANT_PERMS

TENANT_FIELDS = ("name", "timezone", "contact_name", "contact_email")


@transaction.atomic
def create_tenant(*, user: User, fields: dict[str, Any], request: HttpRequest | None = None) -> Tenant:
    """Create a hospital tenant."""
    require_perm(user, "portal.add_tenant")
    tenant = Tenant(created_by=user if user.is_authenticated else None)
    for name in TENANT_FIELDS:
        if name in fields:
            setattr(tenant, name, fields[name])
    tenant.full_clean()
    tenant.save()
    if not user.has_perm("portal.view_all_tenants"):
        # Staff assigned per tenant must still see the tenant they just made.
        assign_perm("portal.access_tenant", user, tenant)
    audit.record(action="tenant.create", actor=user, tenant=tenant, obj=tenant, request=request)
    return tenant


@transaction.atomic
def grant_hospital_it(
    *,
    tenant: Tenant,
    member: AuthUser,
    actor: AuthUser | None = None,
    request: HttpRequest | None = None,
) -> None:
    """Make a user hospital IT of this tenant (and only this one)."""
    member.groups.add(Group.objects.get(name=HOSPITAL_IT))
    for perm in HOSPITAL_IT_TENANT_PERMS:
        assign_perm(perm, member, tenant)
    audit.record(
        action="role.grant",
        actor=actor,
        tenant=tenant,
        obj=tenant,
        request=request,
        detail={"user": member.get_username(), "role": HOSPITAL_IT},
    )


@transaction.atomic
def assign_staff_to_tenant(
    *,
    tenant: Tenant,
    member: AuthUser,
    actor: AuthUser | None = None,
    request: HttpRequest | None = None,
) -> None:
    """Let a vendor staff member without the global permission see this tenant."""
    assign_perm("portal.access_tenant", member, tenant)
    audit.record(
        action="role.assign",
        actor=actor,
        tenant=tenant,
        obj=tenant,
        request=request,
        detail={"user": member.get_username()},
    )
