"""What the gates tell people: approval requests to the tenant's approvers, decisions to the requester.

Each event has an idempotency key, so a retried transaction or task never tells anyone twice. The
texts carry no PHI: the hospital, the connection, the gate and the artifact's label only.
"""

from __future__ import annotations

from django.urls import reverse

from onboarding.models import Approval
from portal.notifications.services import NotificationKind, notify
from portal.people.selectors import approvers_of


def approval_link(approval: Approval) -> str:
    """The page where an approver reads and decides this request."""
    return reverse("approval_detail", kwargs={"code": approval.code})


def approval_requested(approval: Approval, *, gate_label: str, reminder: int) -> None:
    """Tell the tenant's approvers that an artifact waits on them (again, for a reminder)."""
    onboarding = approval.onboarding
    tenant = onboarding.tenant
    connection = onboarding.connection
    kind = NotificationKind.APPROVAL_REMINDER if reminder else NotificationKind.APPROVAL_REQUESTED
    verb = "Reminder: your approval is still needed" if reminder else "Your approval is requested"
    notify(
        kind=kind,
        recipients=approvers_of(tenant),
        subject=f"{verb}: {gate_label} for {connection.name}",
        body=(
            f"{approval.requested_by_label or 'Customer success'} asks {tenant.name}'s approvers to review "
            f"{approval.artifact_label} of the connection {connection.name} ({gate_label})."
        ),
        link=approval_link(approval),
        key=f"approval:{approval.code}:requested:{reminder}",
        tenant=tenant,
        actor=approval.requested_by,
    )


def approval_decided(approval: Approval, *, gate_label: str) -> None:
    """Tell the person who asked how hospital IT decided, with the reason of a rejection."""
    if approval.requested_by is None:
        return
    onboarding = approval.onboarding
    verdict = approval.get_decision_display().lower()
    # The reason itself stays in the portal: a comment is free text, and emails carry no PHI.
    reason = " Open the request to read their reason." if approval.comment else ""
    notify(
        kind=NotificationKind.APPROVAL_DECIDED,
        recipients=[approval.requested_by],
        subject=f"{gate_label} {verdict} for {onboarding.connection.name}",
        body=f"{approval.decided_by_label} {verdict} {approval.artifact_label}.{reason}",
        link=approval_link(approval),
        key=f"approval:{approval.code}:decided",
        tenant=onboarding.tenant,
        actor=approval.decided_by,
    )
