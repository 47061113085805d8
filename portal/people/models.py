"""People of a hospital and of the vendor: memberships with a role, staff assignments, invitations.

These models belong to the `portal` app (imported from portal/models.py), so their tables and
permissions sit with the tenants they hang off.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class HospitalRole(models.TextChoices):
    """What a person of the hospital may do on their tenant (see portal.people.roles for the permissions)."""

    VIEWER = "viewer", "Viewer"
    APPROVER = "approver", "Approver"
    ADMIN = "admin", "Hospital admin"


class StaffRole(models.TextChoices):
    """The vendor roles a vendor administrator may invite."""

    CUSTOMER_SUCCESS = "customer_success", "Customer success"
    ENGINEER = "engineer", "Engineer"


class Person(models.Model):
    """An opaque code for a user, so URLs and API answers about a person never carry a row id."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="person")
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)

    def __str__(self) -> str:
        return str(self.code)


class Membership(models.Model):
    """A person of the hospital on one tenant, with their role; the tenant's object permissions follow it."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=HospitalRole.choices, default=HospitalRole.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["tenant", "user__username"]
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_one_per_tenant_and_user")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.role} of {self.tenant_id}"


class StaffAssignment(models.Model):
    """A vendor staff member assigned to a tenant: "my hospitals", and who hears about its failures.

    A model of its own, not a kind of Membership: a membership is the hospital's own person, with a
    hospital role that grants object permissions and can decide gates; an assignment is vendor staff
    taking care of a hospital, with no hospital role, so a query for "who may decide" can never pick
    vendor staff up by mistake.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="staff_assignments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_assignments")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["tenant", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="staff_assignment_one_per_tenant_and_user")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} assigned to {self.tenant_id}"


class InvitationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACCEPTED = "accepted", "Accepted"
    REVOKED = "revoked", "Revoked"


class Invitation(models.Model):
    """An invitation by email: to a tenant with a hospital role, or (no tenant) to the vendor's staff.

    The link carries a random secret, signed; only its SHA-256 is stored, so neither a database dump
    nor the admin can rebuild a working link. Resending replaces the secret, which kills the old link.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(
        "portal.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    # A HospitalRole value for a tenant invitation, a StaffRole value for a staff one.
    role = models.CharField(max_length=32)
    secret_hash = models.CharField(max_length=64, unique=True)
    sends = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=InvitationStatus.choices, default=InvitationStatus.PENDING)
    expires_at = models.DateTimeField()
    last_sent_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "status"]), models.Index(fields=["email", "status"])]

    def __str__(self) -> str:
        return f"invitation {self.code} ({self.status})"

    @property
    def is_staff_invitation(self) -> bool:
        return self.tenant_id is None

    @property
    def is_expired(self) -> bool:
        return self.status == InvitationStatus.PENDING and self.expires_at <= timezone.now()

    @property
    def state(self) -> str:
        """pending, expired, accepted or revoked: what the pages and the API show."""
        return "expired" if self.is_expired else self.status

    @property
    def role_label(self) -> str:
        choices = StaffRole if self.is_staff_invitation else HospitalRole
        return str(dict(choices.choices).get(self.role, self.role))


class UserSession(models.Model):
    """A session key of a signed-in user, kept at login, so their sessions can be ended at once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"session of {self.user_id}"
