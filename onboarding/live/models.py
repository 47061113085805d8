"""The shared records of live connections (imported by onboarding.models, so Django sees them)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class LiveStage(models.TextChoices):
    NOT_LIVE = "not_live", "not live"
    PILOT = "pilot", "pilot"
    FULL = "full", "live"


class LivePhase(models.TextChoices):
    # After cutover: watched closely, with named responders, until the handoff to operations.
    HYPERCARE = "hypercare", "hypercare"
    OPERATIONAL = "operational", "operational"


class LiveState(models.Model):
    """Whether a connection is live, at which rollout stage, since when, and on what it rests.

    One row per onboarding, made at its first cutover and kept after a rollback (stage "not live"),
    so the history of going live and back stays readable.
    """

    onboarding = models.OneToOneField("onboarding.Onboarding", on_delete=models.CASCADE, related_name="live")
    # Beside the onboarding so tenant filters and the monitors' scans need no join.
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="+")
    stage = models.CharField(max_length=10, choices=LiveStage.choices, default=LiveStage.NOT_LIVE, db_index=True)
    # During a pilot, the share of patients (by a stable hash) the product is served for, 1-99.
    pilot_percent = models.PositiveSmallIntegerField(default=0)
    live_since = models.DateTimeField(null=True, blank=True)
    phase = models.CharField(max_length=12, choices=LivePhase.choices, blank=True)
    hypercare_until = models.DateTimeField(null=True, blank=True)
    handed_off_at = models.DateTimeField(null=True, blank=True)
    handed_off_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The runs the go-live approval bound: the validation run is the drift watch's baseline.
    go_live_run = models.ForeignKey(
        "onboarding.StepRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    baseline_run = models.ForeignKey(
        "onboarding.StepRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The Patient id the health probes read (onboarding.live.probe), chosen at go-live.
    probe_patient_id = models.CharField(max_length=64, blank=True)
    # Who answers in hypercare: [{"name": ..., "email": ..., "user_id": int | None}], from the plan.
    hypercare_contacts = models.JSONField(default=list, blank=True)
    # The connection's settings before cutover, so one rollback puts them back exactly.
    before_cutover = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "stage"], name="live_state_tenant_stage")]

    def __str__(self) -> str:
        return f"{self.get_stage_display()}: {self.onboarding_id}"

    @property
    def is_live(self) -> bool:
        return self.stage in (LiveStage.PILOT, LiveStage.FULL)


class MaintenanceKind(models.TextChoices):
    WEEKLY = "weekly", "every week"
    ONCE = "once", "once"


class MaintenanceWindow(models.Model):
    """A planned EHR maintenance window of a tenant: checks failing inside it are planned downtime.

    Weekly windows are a weekday with local start and end times in the tenant's time zone (an end
    at or before the start runs past midnight); one-off windows are two aware datetimes.
    """

    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="maintenance_windows")
    # None: every connection of the tenant (the EHR is one system); else just this one.
    connection = models.ForeignKey(
        "connections.EHRConnection", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=10, choices=MaintenanceKind.choices)
    weekday = models.PositiveSmallIntegerField(null=True, blank=True)  # 0 Monday .. 6 Sunday
    start_time = models.TimeField(null=True, blank=True)
    end_time = models.TimeField(null=True, blank=True)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["kind", "weekday", "start_time", "starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(kind="weekly", weekday__isnull=False, start_time__isnull=False, end_time__isnull=False)
                    | Q(kind="once", starts_at__isnull=False, ends_at__isnull=False, ends_at__gt=models.F("starts_at"))
                ),
                name="maintenance_window_complete",
            )
        ]

    def __str__(self) -> str:
        return self.note or f"Maintenance window {self.pk}"


class TrafficMinute(models.Model):
    """One minute of the product's production requests to one connection, through the read API.

    Written by buffered upserts (onboarding.live.traffic), read by the monitors and the SLA figures.
    Latency is kept as counts per fixed bucket (TRAFFIC_BUCKETS_MS), so minutes add up to any window's p95.
    """

    onboarding = models.ForeignKey("onboarding.Onboarding", on_delete=models.CASCADE, related_name="traffic")
    minute = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    # {"timeout": 2, "server_error": 1, ...}: the typed error kinds of connections.errors.
    errors_by_kind = models.JSONField(default=dict, blank=True)
    latency_buckets = models.JSONField(default=list, blank=True)
    latency_ms_total = models.FloatField(default=0.0)

    class Meta:
        ordering = ["onboarding", "minute"]
        constraints = [models.UniqueConstraint(fields=["onboarding", "minute"], name="one_traffic_row_per_minute")]

    def __str__(self) -> str:
        return f"Traffic of {self.onboarding_id} at {self.minute:%Y-%m-%d %H:%M}"
