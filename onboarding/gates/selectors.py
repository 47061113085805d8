"""Reads of approvals, always through the tenants the user may see; another tenant's is a 404."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import Http404

from onboarding.models import Approval
from portal.access import User, tenants_for


def approvals_for(user: User) -> QuerySet[Approval]:
    """Approvals of every tenant the user may see, newest first."""
    return Approval.objects.filter(onboarding__tenant__in=tenants_for(user)).select_related(
        "onboarding__tenant", "onboarding__connection"
    )


def get_approval_for_user(user: User, code: uuid.UUID | str) -> Approval:
    """The approval with this code if the user may see its tenant, else 404."""
    try:
        return approvals_for(user).get(code=code)
    except (Approval.DoesNotExist, ValueError):
        raise Http404("No such approval request.") from None


def pending_for_approver(user: User) -> QuerySet[Approval]:
    """Open requests of the tenants where this person may decide (hospital IT approvers)."""
    return approvals_for(user).filter(decision="", voided_at__isnull=True).order_by("requested_at")
