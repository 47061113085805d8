"""The kinds of people and what each may do.

Vendor staff (customer success, engineers, vendor administrators) get model permissions through
groups. Hospital IT get object permissions on their own Tenant only (django-guardian), following
their hospital role (a portal.people Membership), so "which hospital" is data, not code.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission

from portal.access import User

CUSTOMER_SUCCESS = "Customer success"
ENGINEERS = "Engineers"
HOSPITAL_IT = "Hospital IT"
# Invite and deactivate vendor staff; the first one is made by `manage.py create_vendor_admin`.
VENDOR_ADMINS = "Vendor administrators"

# Object permissions on their tenant per hospital role (the values of portal.people.models.HospitalRole).
# An approver decides gates; a hospital admin is an approver who also manages the tenant's people.
HOSPITAL_ROLE_PERMS: dict[str, tuple[str, ...]] = {
    "viewer": ("portal.access_tenant", "portal.view_audit"),
    "approver": ("portal.access_tenant", "portal.view_audit", "portal.approve_gates"),
    "admin": ("portal.access_tenant", "portal.view_audit", "portal.approve_gates", "portal.manage_members"),
}
# Every object permission a hospital role can give, so a role change or removal can take the rest back.
HOSPITAL_TENANT_PERMS = tuple(dict.fromkeys(perm for perms in HOSPITAL_ROLE_PERMS.values() for perm in perms))
# What grant_hospital_it gives (an approver), kept under its old name.
HOSPITAL_IT_TENANT_PERMS = HOSPITAL_ROLE_PERMS["approver"]

# Model permissions per vendor group, as "app_label.codename". Permissions of apps that are not
# installed yet are skipped, so each app can add its own without this module importing it.
GROUP_PERMS: dict[str, tuple[str, ...]] = {
    CUSTOMER_SUCCESS: (
        "portal.view_all_tenants",
        "portal.add_tenant",
        "portal.change_tenant",
        "portal.view_audit",
        "portal.manage_members",
        "portal.assign_staff",
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
    VENDOR_ADMINS: (
        "portal.view_all_tenants",
        "portal.view_audit",
        "portal.add_tenant",
        "portal.change_tenant",
        "portal.manage_members",
        "portal.assign_staff",
        "portal.manage_staff",
    ),
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
    for name in (VENDOR_ADMINS, CUSTOMER_SUCCESS, ENGINEERS, HOSPITAL_IT):
        if name in names:
            return "Vendor administrator" if name == VENDOR_ADMINS else name
    return "Administrator" if getattr(user, "is_superuser", False) else "No role"


def is_vendor_staff(user: User) -> bool:
    """Vendor staff see across tenants; hospital IT never do."""
    return user.is_authenticated and user.has_perm("portal.view_all_tenants")
