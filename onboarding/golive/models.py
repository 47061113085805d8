"""Go-live records: a tenant's change windows, go-live plans, scheduled cutovers, and the product's service tokens."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class ChangeWindow(models.Model):
    """A weekly window in which the hospital allows changes: a weekday and local start and end times.

    The times are read in ``timezone`` (the tenant's when written), so 18:00 stays 18:00 local across
    daylight-saving changes. A change window ends on the day it starts.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="change_windows")
    weekday = models.PositiveSmallIntegerField()  # 0 Monday .. 6 Sunday
    start_time = models.TimeField()
    end_time = models.TimeField()
    timezone = models.CharField(max_length=64)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["weekday", "start_time"]
        constraints = [
            models.CheckConstraint(
                condition=Q(end_time__gt=models.F("start_time")), name="change_window_ends_after_start"
            ),
            models.CheckConstraint(condition=Q(weekday__lte=6), name="change_window_weekday"),
        ]

    def __str__(self) -> str:
        return f"Change window {self.weekday} {self.start_time:%H:%M}-{self.end_time:%H:%M}"


class Rollout(models.TextChoices):
    FULL = "full", "straight to full"
    PILOT = "pilot", "a pilot share first, then full"


class WindowChoice(models.TextChoices):
    NEXT = "next", "the next change window"
    CHOSEN = "chosen", "a chosen change window"


class GoLivePlan(models.Model):
    """One immutable version of a connection's go-live plan: the window, the rollout and the hypercare contacts.

    The go-live approval binds a version together with the validation and load-test runs it rests on.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey("onboarding.Onboarding", on_delete=models.CASCADE, related_name="go_live_plans")
    version = models.PositiveIntegerField()
    window_choice = models.CharField(max_length=10, choices=WindowChoice.choices, default=WindowChoice.NEXT)
    # With a chosen window: the start of that window's occurrence.
    window_starts_at = models.DateTimeField(null=True, blank=True)
    rollout = models.CharField(max_length=10, choices=Rollout.choices, default=Rollout.FULL)
    pilot_percent = models.PositiveSmallIntegerField(default=0)
    # [{"name": ..., "email": ..., "user_id": int | None}]
    hypercare_contacts = models.JSONField(default=list)
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_label = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["onboarding", "-version"]
        constraints = [models.UniqueConstraint(fields=["onboarding", "version"], name="one_go_live_plan_per_version")]

    def __str__(self) -> str:
        return f"Go-live plan version {self.version}"


class ScheduleStatus(models.TextChoices):
    SCHEDULED = "scheduled", "scheduled"
    STARTED = "started", "started"
    CANCELLED = "cancelled", "cancelled"
    REFUSED = "refused", "could not start"


class GoLiveSchedule(models.Model):
    """A go-live asked for: when its window opens, beat creates the go-live run (never earlier)."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey("onboarding.Onboarding", on_delete=models.CASCADE, related_name="go_live_schedules")
    plan = models.ForeignKey(GoLivePlan, on_delete=models.PROTECT, related_name="+")
    approval = models.ForeignKey("onboarding.Approval", on_delete=models.PROTECT, related_name="+")
    opens_at = models.DateTimeField(db_index=True)
    closes_at = models.DateTimeField(null=True, blank=True)
    # An emergency go-live outside a window: its reason (empty for one in a window).
    override_reason = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=ScheduleStatus.choices, default=ScheduleStatus.SCHEDULED)
    status_note = models.CharField(max_length=300, blank=True)
    run = models.ForeignKey("onboarding.StepRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["onboarding"], condition=Q(status="scheduled"), name="one_scheduled_go_live_per_onboarding"
            )
        ]

    def __str__(self) -> str:
        return f"Go-live of {self.onboarding_id} at {self.opens_at:%Y-%m-%d %H:%M}"


class ServiceAccount(models.Model):
    """The product (or one of its services) reading live hospitals through the portal's read API."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    disabled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ServiceToken(models.Model):
    """A service account's token for one tenant: only its SHA-256 digest is kept, the key is shown once."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(ServiceAccount, on_delete=models.CASCADE, related_name="tokens")
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="service_tokens")
    digest = models.CharField(max_length=64, unique=True)
    # The first characters of the key, so people can tell tokens apart (never enough to use one).
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.account_id} → {self.tenant_id})"
