"""The one way in to tenant data.

Every view, API view and task reaches a Tenant through these helpers. A tenant the user may not
see raises Http404, exactly like one that does not exist, so codes cannot be probed.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.models import User as AuthUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from guardian.shortcuts import get_objects_for_user

from portal.models import Tenant

# Everyone a request can carry: a signed-in user or an anonymous visitor.
User = AuthUser | AnonymousUser


def tenants_for(user: User) -> QuerySet[Tenant]:
    """Every tenant the user may see: all for vendor staff, their own for hospital IT, none otherwise."""
    if not user.is_authenticated or not getattr(user, "is_active", False):
        return Tenant.objects.none()
    if user.has_perm("portal.view_all_tenants"):
        return Tenant.objects.all()
    return get_objects_for_user(user, "portal.access_tenant", klass=Tenant, accept_global_perms=False)


def get_tenant_for_user(user: User, code: uuid.UUID | str) -> Tenant:
    """The tenant with this code if the user may see it, else 404."""
    try:
        return tenants_for(user).get(code=code)
    except (Tenant.DoesNotExist, ValueError):
        raise Http404("No such hospital.") from None


def require_perm(user: User, perm: str, tenant: Tenant | None = None) -> None:
    """Refuse (403) a user who can see the object but may not do this to it.

    Global (group) permission or, with a tenant, the object permission on that tenant will do.
    """
    if user.has_perm(perm):
        return
    # Object permissions live on Tenant, so only the portal's own permissions can be held per tenant.
    if tenant is not None and perm.startswith("portal.") and user.has_perm(perm, tenant):
        return
    raise PermissionDenied("You do not have permission to do this.")
