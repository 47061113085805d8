"""The pipeline's records: one Onboarding per connection, one StepRun per attempt of a step."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from connections.models import EHRConnection
from portal.models import Tenant


class Step(models.TextChoices):
    CONFIGURE = "configure", "Configure"
    TEST = "test", "Test"
    MAP = "map", "Map"
    VALIDATE = "validate", "Validate"
    LOAD_TEST = "load_test", "Load test"
    GO_LIVE = "go_live", "Go live"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FINAL_STATUSES = (RunStatus.PASSED, RunStatus.FAILED, RunStatus.CANCELLED)


class Onboarding(models.Model):
    """The pipeline of one EHR connection."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Kept beside the connection so access filters need no join through connections.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="onboardings")
    connection = models.OneToOneField(EHRConnection, on_delete=models.PROTECT, related_name="onboarding")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("run_step", "Can start and re-run pipeline steps"),
            ("cancel_step", "Can cancel a queued or running step"),
            ("review_runs", "Can review failed runs finding by finding"),
        ]

    def __str__(self) -> str:
        return f"Onboarding of {self.connection}"


class StepRun(models.Model):
    """One attempt at one step. Every attempt is kept so people can see what changed between runs."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="runs")
    step = models.CharField(max_length=20, choices=Step.choices)
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # How many times a broker handed the task to a worker; the sweep and redeliveries raise it.
    deliveries = models.PositiveIntegerField(default=0)
    last_sent_at = models.DateTimeField(null=True, blank=True)

    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    progress_message = models.CharField(max_length=300, blank=True)
    log = models.JSONField(default=list, blank=True)
    result = models.JSONField(default=dict, blank=True)

    error_kind = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    error_hint = models.TextField(blank=True)
    error_detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-queued_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["onboarding", "step", "attempt"], name="one_row_per_attempt"),
            # At most one live attempt per step: a double click or a retried POST cannot start two.
            models.UniqueConstraint(
                fields=["onboarding", "step"],
                condition=Q(status__in=["queued", "running"]),
                name="one_active_run_per_step",
            ),
        ]
        indexes = [models.Index(fields=["onboarding", "step", "-attempt"])]

    def __str__(self) -> str:
        return f"{self.get_step_display()} #{self.attempt} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress_percent(self) -> int:
        if not self.progress_total:
            return 0
        return min(100, round(100 * self.progress_done / self.progress_total))
