"""The three kinds of people and what each may do.

Vendor staff (customer success, engineers) get model permissions through groups. Hospital IT get
object permissions on their own Tenant only (django-guardian), so "which hospital" is data, not code.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission

from portal.access import User

CUSTOMER_SUCCESS = "Customer success"
ENGINEERS = "Engineers"
HOSPITAL_IT = "Hospital IT"

# Object permissions a hospital IT user holds on their tenant.
HOSPITAL_IT_TENANT_PERMS = ("portal.access_tenant", "portal.approve_gates", "portal.view_audit")

# Model permissions per vendor group, as "app_label.codename". Permissions of apps that are not
# installed yet are skipped, so each app can add its own without this module importing it.
GROUP_PERMS: dict[str, tuple[str, ...]] = {
    CUSTOMER_SUCCESS: (
        "portal.view_all_tenants",
        "portal.add_tenant",
        "portal.change_tenant",
        "portal.view_audit",
        "connections.add_ehrconnection",
        "connections.change_ehrconnection",
        "onboarding.run_step",
        "onboarding.cancel_step",
    ),
    ENGINEERS: (
        "portal.view_all_tenants",
        "portal.view_audit",
        "onboarding.run_step",
        "onboarding.cancel_step",
        "onboarding.review_runs",
    ),
    HOSPITAL_IT: (),
}


def sync_role_groups(**_: Any) -> None:
    """Create the role groups and give them their permissions (idempotent; runs after migrate)."""
    for group_name, perms in GROUP_PERMS.items():
        group, _created = Group.objects.get_or_create(name=group_name)
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".", 1)
            found = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if found is not None:
                wanted.append(found)
        group.permissions.set(wanted)


def role_label(user: User) -> str:
    """A short name for the user's role, for the page header."""
    if not user.is_authenticated:
        return ""
    names = set(user.groups.values_list("name", flat=True))
    for name in (CUSTOMER_SUCCESS, ENGINEERS, HOSPITAL_IT):
        if name in names:
            return name
    return "Administrator" if getattr(user, "is_superuser", False) else "No role"


def is_vendor_staff(user: User) -> bool:
    """Vendor staff see across tenants; hospital IT never do."""
    return user.is_authenticated and user.has_perm("portal.view_all_tenants")
