"""Monitoring's records: each tenant's policy, one monitor per live connection, the health-check time
series, alerts and drift-watch runs (imported by onboarding.models, so Django sees them)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class MonitoringPolicy(models.Model):
    """How closely a tenant's live connections are watched, and when a problem becomes an alert.

    One row per tenant, made with the defaults on first need; customer success edit it.
    """

    tenant = models.OneToOneField("portal.Tenant", on_delete=models.CASCADE, related_name="monitoring_policy")
    check_interval_min = models.PositiveSmallIntegerField(default=5)
    failures_to_alert = models.PositiveSmallIntegerField(default=3)
    latency_p95_ms = models.PositiveIntegerField(default=2000)
    latency_window_min = models.PositiveIntegerField(default=30)
    error_rate_pct = models.FloatField(default=5.0)
    error_window_min = models.PositiveIntegerField(default=15)
    # Below this many requests in the window an error rate says nothing (two of three failing is noise).
    error_min_requests = models.PositiveIntegerField(default=20)
    # 0 turns the no-traffic alert off (a hospital the product reads only at night, say).
    no_traffic_min = models.PositiveIntegerField(default=120)
    escalate_after_min = models.PositiveIntegerField(default=30)
    drift_every_days = models.PositiveSmallIntegerField(default=7)
    drift_sample_size = models.PositiveSmallIntegerField(default=5)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"Monitoring policy of {self.tenant_id}"


class MonitorStatus(models.TextChoices):
    UNKNOWN = "unknown", "not checked yet"
    UP = "up", "up"
    DOWN = "down", "down"
    DEGRADED = "degraded", "failing"
    MAINTENANCE = "maintenance", "planned downtime"


class Monitor(models.Model):
    """The check schedule and running state of one live connection.

    The beat task claims the monitors whose `next_check_at` has passed and moves it on in the same
    transaction (rows locked with SKIP LOCKED), so two beats or two workers never run one check twice.
    """

    onboarding = models.OneToOneField("onboarding.Onboarding", on_delete=models.CASCADE, related_name="monitor")
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="+")
    # The tenant policy's interval, copied here so one indexed scan finds every due check.
    interval_s = models.PositiveIntegerField()
    next_check_at = models.DateTimeField()
    status = models.CharField(max_length=12, choices=MonitorStatus.choices, default=MonitorStatus.UNKNOWN)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # The newest check recorded (its due time): a late, older check never rewinds the state.
    last_due_at = models.DateTimeField(null=True, blank=True)
    last_ran_at = models.DateTimeField(null=True, blank=True)
    last_latency_ms = models.FloatField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    next_drift_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["next_check_at"], name="monitor_due")]

    def __str__(self) -> str:
        return f"Monitor of {self.onboarding_id}: {self.status}"


class HealthCheck(models.Model):
    """One health check of one live connection: the time series behind status, alerts and SLA figures.

    Unique per monitor and due time, so a redelivered check task records nothing twice. Kept for
    MONITORING_CHECK_RETENTION_DAYS, then purged by beat.
    """

    monitor = models.ForeignKey(Monitor, on_delete=models.CASCADE, related_name="checks")
    onboarding = models.ForeignKey("onboarding.Onboarding", on_delete=models.CASCADE, related_name="+")
    due_at = models.DateTimeField()
    ran_at = models.DateTimeField()
    ok = models.BooleanField()
    # A failure inside the EHR's planned maintenance window: planned downtime, never an alert.
    planned = models.BooleanField(default=False)
    latency_ms = models.FloatField(null=True, blank=True)
    metadata_ms = models.FloatField(null=True, blank=True)
    patient_ms = models.FloatField(null=True, blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    error_message = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["onboarding", "due_at"]
        constraints = [models.UniqueConstraint(fields=["monitor", "due_at"], name="one_check_per_due_time")]
        indexes = [
            models.Index(fields=["onboarding", "ran_at"], name="health_check_series"),
            models.Index(fields=["ran_at"], name="health_check_age"),
        ]

    def __str__(self) -> str:
        return f"Check of {self.onboarding_id} due {self.due_at:%Y-%m-%d %H:%M:%S}: {'ok' if self.ok else 'failed'}"

    @property
    def lag_s(self) -> float:
        """Seconds from when the check was due to when it ran."""
        return (self.ran_at - self.due_at).total_seconds()


class AlertKind(models.TextChoices):
    CHECKS_FAILING = "checks_failing", "health checks failing"
    LATENCY = "latency", "slow answers"
    ERROR_RATE = "error_rate", "production errors"
    NO_TRAFFIC = "no_traffic", "no production traffic"
    DRIFT = "drift", "data drift since go-live"


class Alert(models.Model):
    """One problem of one live connection, from the moment it opened until it resolved.

    At most one open alert per connection and kind (a partial unique constraint), so repeated
    failures add to the open alert instead of opening new ones: one notification when it opens,
    one when it resolves.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey("onboarding.Onboarding", on_delete=models.CASCADE, related_name="alerts")
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    title = models.CharField(max_length=200)
    # What is wrong, in words a person can act on (a drift alert names the change).
    detail = models.TextField(max_length=4000)
    facts = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=300, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    assigned_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["onboarding", "kind"], condition=Q(resolved_at__isnull=True), name="one_open_alert_per_kind"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "opened_at"], name="alert_tenant_opened"),
            models.Index(
                fields=["opened_at"],
                condition=Q(resolved_at__isnull=True, escalated_at__isnull=True),
                name="alert_open",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.onboarding_id}: {'open' if self.is_open else 'resolved'}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class DriftStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "could not run"


class DriftRun(models.Model):
    """One re-validation of a small sample of a live connection, compared with its go-live baseline."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey("onboarding.Onboarding", on_delete=models.CASCADE, related_name="drift_runs")
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="+")
    trigger = models.CharField(max_length=12, choices=[("schedule", "on schedule"), ("on_demand", "on demand")])
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=DriftStatus.choices, default=DriftStatus.QUEUED)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    baseline_run = models.ForeignKey(
        "onboarding.StepRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    patients = models.PositiveIntegerField(default=0)
    # [{"rule", "path", "severity", "count", "message"}]: the error findings the baseline did not have.
    new_findings = models.JSONField(default=list, blank=True)
    # The changes named for people ("Patient.identifier: MRN system changed from X to Y").
    changes = models.JSONField(default=list, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    alert = models.ForeignKey(Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Drift run of {self.onboarding_id}: {self.status}"
