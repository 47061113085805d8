"""Notifications: one in-app item per person and event, the email delivery behind it, and preferences.

The models live in a sub-package of `portal` but belong to the `portal` app (imported from
portal/models.py), so they share its migrations and its layer.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from portal.crypto import EncryptedTextField


class NotificationKind(models.TextChoices):
    """Every kind of event a person can be told about: the one place kinds and their labels live.

    The preferences page lists these; a kind the portal does not send yet says so (see AVAILABLE_KINDS).
    """

    APPROVAL_REQUESTED = "approval_requested", "An approval is requested from your hospital"
    APPROVAL_REMINDER = "approval_reminder", "A reminder about an approval still waiting"
    APPROVAL_DECIDED = "approval_decided", "An approval you requested was decided"
    RUN_FAILED = "run_failed", "A step run failed at a hospital you look after"
    INVITATION = "invitation", "An invitation to the portal"
    ALERT_OPENED = "alert_opened", "A go-live monitoring alert opened"
    ALERT_RESOLVED = "alert_resolved", "A go-live monitoring alert resolved"
    GO_LIVE_SCHEDULED = "go_live_scheduled", "A go-live is scheduled for a change window"
    GO_LIVE_OVERRIDE = "go_live_override", "A go-live outside a change window (emergency override)"
    GO_LIVE_DONE = "go_live_done", "A connection went live"
    GO_LIVE_ROLLED_BACK = "go_live_rolled_back", "A live connection was rolled back"


# Kinds something in the portal sends today; the preferences page marks any other "not available yet"
# instead of pretending it fires.
AVAILABLE_KINDS: frozenset[str] = frozenset(
    {
        NotificationKind.APPROVAL_REQUESTED,
        NotificationKind.APPROVAL_REMINDER,
        NotificationKind.APPROVAL_DECIDED,
        NotificationKind.RUN_FAILED,
        NotificationKind.INVITATION,
        NotificationKind.GO_LIVE_SCHEDULED,
        NotificationKind.GO_LIVE_OVERRIDE,
        NotificationKind.GO_LIVE_DONE,
        NotificationKind.GO_LIVE_ROLLED_BACK,
        NotificationKind.ALERT_OPENED,
        NotificationKind.ALERT_RESOLVED,
    }
)


class Notification(models.Model):
    """One in-app inbox item for one person. At most one per (key, recipient): the event's idempotency key."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    tenant = models.ForeignKey("portal.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    key = models.CharField(max_length=200)
    subject = models.CharField(max_length=200)
    body = models.TextField(max_length=2000)
    # A path on this site ("/runs/<code>/"): the thing the notification is about.
    link = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "portal"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["key", "recipient"], name="notification_once_per_key_and_recipient"),
        ]
        indexes = [
            models.Index(fields=["recipient", "-created_at"], name="notification_inbox"),
            models.Index(fields=["recipient"], condition=Q(read_at__isnull=True), name="notification_unread"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.recipient_id}: {self.subject}"

    @property
    def unread(self) -> bool:
        return self.read_at is None


class EmailDelivery(models.Model):
    """One email to send, and what happened to it: claimed once, sent once, or failed with the reason.

    Made with its notification (or, for an invitation, alone: the invitee has no account yet), in the
    same transaction. The task that sends it claims it pending -> sending with a conditional UPDATE,
    so a second delivery of the task, or a retry racing it, never sends it again.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Waiting to be sent"
        SENDING = "sending", "Being sent"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    notification = models.OneToOneField(
        Notification, null=True, blank=True, on_delete=models.CASCADE, related_name="email"
    )
    tenant = models.ForeignKey("portal.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    key = models.CharField(max_length=200)
    to_email = models.EmailField()
    subject = models.CharField(max_length=300)
    # Encrypted, and emptied once the email is sent or has failed for good: an invitation's body
    # holds its single-use link, which must not outlive the email in a readable column.
    body = EncryptedTextField(blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # Tries at sending it (claims), and times a task for it arrived at all, skipped ones included:
    # task_runs above attempts shows duplicate deliveries that were turned away.
    attempts = models.PositiveSmallIntegerField(default=0)
    task_runs = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # When a pending email is next due: now, or after a retry's back-off. The sweep re-sends a
    # pending email whose task was lost only once this is well past.
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "portal"
        ordering = ["-created_at", "-id"]
        constraints = [
            # An email without a notification (an invitation) is idempotent on its key and address.
            models.UniqueConstraint(
                fields=["key", "to_email"],
                condition=Q(notification__isnull=True),
                name="address_email_once_per_key",
            ),
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="email_delivery_due")]

    def __str__(self) -> str:
        return f"{self.kind} email {self.state}"


class NotificationPreference(models.Model):
    """One person's choice for one kind. No row means the default: email on."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_prefs")
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    email = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "portal"
        constraints = [models.UniqueConstraint(fields=["user", "kind"], name="notification_pref_once_per_kind")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.kind} email={'on' if self.email else 'off'}"
