"""The pipeline's records: one Onboarding per connection, one StepRun per attempt of a step."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from connections.models import EHRConnection
from portal.crypto import EncryptedTextField
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
    # "host:pid" of the worker process holding a running attempt, so the worker's main process can
    # put the run back in the queue when that pool process dies, and engineers can find its logs.
    worker = models.CharField(max_length=200, blank=True)

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
    def queue_wait(self) -> timedelta | None:
        """How long the run waited for a worker (until now while it still waits)."""
        if self.queued_at is None or (self.started_at is None and not self.is_active):
            return None
        return (self.started_at or timezone.now()) - self.queued_at

    @property
    def run_time(self) -> timedelta | None:
        """How long the run ran: start to finish, or so far while it runs."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def progress_percent(self) -> int:
        if not self.progress_total:
            return 0
        return min(100, round(100 * self.progress_done / self.progress_total))


# --- Mapping, validation findings and their review -------------------------------------------------


class ValidationPolicy(models.Model):
    """A tenant's thresholds for the validate step, and how many patients map and validate pull."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="validation_policy")
    # The step fails when more than this share of patients has an (unwaived) error, or a warning.
    max_error_patient_pct = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)],
        verbose_name="most patients with an error (%)",
        help_text="Validate fails when a larger share of patients than this has an error no waiver covers; "
        "0 allows none.",
    )
    max_warning_patient_pct = models.FloatField(
        default=100.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)],
        verbose_name="most patients with a warning (%)",
        help_text="Validate fails when a larger share of patients than this has a warning no waiver covers; "
        "100 never fails on warnings.",
    )
    map_sample_size = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(1000)], verbose_name="patients sampled by map"
    )
    validate_sample_size = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        verbose_name="patients pulled by validate",
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"Validation policy of {self.tenant}"


class Mapping(models.Model):
    """One immutable version of a connection's mapping: MRN system, extension handling, local codes.

    Every change makes a new version, so a sign-off always names exactly what was approved.
    """

    class Source(models.TextChoices):
        MAP_STEP = "map_step", "map step"
        EDITOR = "editor", "editor"
        CSV_IMPORT = "csv_import", "CSV import"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="mappings")
    version = models.PositiveIntegerField()
    source = models.CharField(max_length=20, choices=Source.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    map_run = models.ForeignKey(StepRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    mrn_system = models.CharField(max_length=300, blank=True)
    # Extension URL -> "use" or "ignore" ("" while undecided); US Core's own extensions are not listed.
    extension_handling = models.JSONField(default=dict, blank=True)
    # Rows {element, system, code, display, count, target_system, target_code, target_display}.
    codes = models.JSONField(default=list, blank=True)
    content_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-version"]
        constraints = [models.UniqueConstraint(fields=["onboarding", "version"], name="one_row_per_mapping_version")]

    def __str__(self) -> str:
        return f"Mapping v{self.version} of {self.onboarding}"


class Decision(models.TextChoices):
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class Approval(models.Model):
    """One request for hospital IT's approval of one exact artifact at one gate, and its decision.

    Every gate (the mapping sign-off, the load-test permission, the go-live approval) uses this one
    model. A request binds the artifact by kind, id, version and content hash; a decision is final,
    and asking again is a new request on the new version, so the history is the rows of a gate.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="approvals")
    # The key a wing registered its gate under (onboarding.gates.services.register).
    gate = models.CharField(max_length=40)
    artifact_kind = models.CharField(max_length=40)
    artifact_id = models.PositiveBigIntegerField()
    artifact_version = models.PositiveIntegerField()
    artifact_hash = models.CharField(max_length=64)
    # What people read, kept as text: "Mapping version 3".
    artifact_label = models.CharField(max_length=200)

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=150, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    request_note = models.TextField(blank=True)
    reminders = models.PositiveIntegerField(default=0)
    reminded_at = models.DateTimeField(null=True, blank=True)

    decision = models.CharField(max_length=10, choices=Decision.choices, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too, so the record still says who after a user is deleted.
    decided_by_label = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    # An approval may hold for a time window only (the load-test permission): outside it, it is not live.
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)

    voided_at = models.DateTimeField(null=True, blank=True)
    voided_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            # One open request per gate: a double click or a retried POST cannot ask twice.
            models.UniqueConstraint(
                fields=["onboarding", "gate"],
                condition=Q(decision="", voided_at__isnull=True),
                name="one_open_request_per_gate",
            ),
            models.CheckConstraint(
                condition=~Q(decision="rejected") | ~Q(comment=""), name="a_rejection_carries_its_reason"
            ),
        ]
        indexes = [models.Index(fields=["onboarding", "gate", "-requested_at"])]

    def __str__(self) -> str:
        return f"{self.gate} of {self.artifact_label}: {self.state}"

    @property
    def state(self) -> str:
        """pending, approved, rejected or voided."""
        if self.voided_at is not None:
            return "voided"
        return self.decision or "pending"

    @property
    def is_pending(self) -> bool:
        return self.state == "pending"


class Severity(models.TextChoices):
    ERROR = "error", "Error"
    WARNING = "warning", "Warning"
    INFO = "info", "Info"


class RawResource(models.Model):
    """A resource that had findings in a failed validation run, encrypted, kept for a few days.

    Shown only in the engineers' audited drill-down; deleted when the run passes and purged after
    ``RAW_PAYLOAD_RETENTION_DAYS``.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    run = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="raw_resources")
    resource_type = models.CharField(max_length=64)
    resource_key = models.CharField(max_length=32)
    patient_key = models.CharField(max_length=32, blank=True)
    payload = EncryptedTextField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "resource_type", "resource_key"], name="one_raw_copy_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.resource_type} {self.resource_key}"


class Finding(models.Model):
    """One problem a validation run found. Holds paths, rule ids and pseudonymous keys, never PHI."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    run = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="findings")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    rule = models.CharField(max_length=64)
    resource_type = models.CharField(max_length=64)
    # The element, without list positions, so findings group; location keeps the positions.
    path = models.CharField(max_length=200)
    location = models.CharField(max_length=300, blank=True)
    message = models.CharField(max_length=500)
    # The US Core profile whose rule produced the finding (empty for the product's own rules).
    profile = models.CharField(max_length=100, blank=True)
    patient_key = models.CharField(max_length=32, blank=True)
    resource_key = models.CharField(max_length=32, blank=True)
    # Stable across runs for the same problem on the same resource: what the diff compares.
    fingerprint = models.CharField(max_length=40)
    raw = models.ForeignKey(RawResource, null=True, blank=True, on_delete=models.SET_NULL, related_name="findings")

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["run", "rule", "path"]),
            models.Index(fields=["run", "severity"]),
            models.Index(fields=["run", "fingerprint"]),
        ]

    def __str__(self) -> str:
        return f"{self.severity} {self.rule} at {self.path}"


class Waiver(models.Model):
    """An engineer's decision that a rule at a path is acceptable for a tenant, until it expires."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="waivers")
    rule = models.CharField(max_length=64)
    path = models.CharField(max_length=200)
    reason = models.TextField()
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    approver_label = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "rule", "path"])]

    def __str__(self) -> str:
        return f"Waiver of {self.rule} at {self.path} for {self.tenant}"


# --- Load tests (issue 11) -------------------------------------------------------------------------


class LoadMode(models.TextChoices):
    RATE = "rate", "a target rate"
    PEAK = "peak", "normal peak times a stress factor"
    STAIRCASE = "staircase", "a staircase (capacity search)"


class LoadTestPlan(models.Model):
    """One immutable version of a connection's load-test plan: the request mix, the load and the SLA.

    Hospital IT approve one exact version (its content hash) for a time window; every change is a
    new version, which voids the approval of the one before.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="load_test_plans")
    version = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_label = models.CharField(max_length=150, blank=True)

    # The request mix: relative weights over the product's five request types (0 leaves one out).
    weight_patient_read = models.PositiveIntegerField(default=4, validators=[MaxValueValidator(1000)])
    weight_patient_by_identifier = models.PositiveIntegerField(default=2, validators=[MaxValueValidator(1000)])
    weight_observation_by_patient = models.PositiveIntegerField(default=3, validators=[MaxValueValidator(1000)])
    weight_condition_by_patient = models.PositiveIntegerField(default=1, validators=[MaxValueValidator(1000)])
    weight_encounter_by_patient = models.PositiveIntegerField(default=1, validators=[MaxValueValidator(1000)])

    # The load: one of three ways of saying the rate, a ramp-up and a duration.
    load_mode = models.CharField(max_length=12, choices=LoadMode.choices, default=LoadMode.PEAK)
    target_rate = models.FloatField(null=True, blank=True)  # req/s, mode "rate"
    normal_peak = models.FloatField(null=True, blank=True)  # req/s, mode "peak"
    stress_factor = models.FloatField(default=2.0)  # mode "peak"
    staircase_start = models.FloatField(null=True, blank=True)  # req/s of the first step
    staircase_step = models.FloatField(null=True, blank=True)  # req/s added per step
    staircase_steps = models.PositiveIntegerField(null=True, blank=True)
    staircase_step_s = models.PositiveIntegerField(null=True, blank=True)  # seconds per step
    ramp_s = models.PositiveIntegerField(default=0)
    duration_s = models.PositiveIntegerField(default=60)  # at the target rate, after the ramp (not a staircase)
    concurrency = models.PositiveIntegerField(default=50)

    # The SLA, and when to give up early.
    sla_p95_ms = models.FloatField(null=True, blank=True)
    sla_p99_ms = models.FloatField(null=True, blank=True)
    sla_max_error_pct = models.FloatField(null=True, blank=True)
    abort_error_pct = models.FloatField(default=50.0)

    content_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["onboarding", "version"], name="one_row_per_load_test_plan_version")
        ]

    def __str__(self) -> str:
        return f"Load-test plan v{self.version} of {self.onboarding}"


class LoadTestReport(models.Model):
    """What one load-test run measured, kept apart from the run so a cancelled run keeps it too.

    The run's own result holds the same summary when the step finishes; this row also keeps the
    run's whole latency histogram (HdrHistogram-encoded) for comparing runs, and which plan ran.
    """

    run = models.OneToOneField(StepRun, on_delete=models.CASCADE, related_name="load_test_report")
    plan = models.ForeignKey(LoadTestPlan, null=True, on_delete=models.SET_NULL, related_name="reports")
    delivery = models.PositiveIntegerField()
    outcome = models.CharField(max_length=20)
    summary = models.JSONField(default=dict)
    hdr = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Load-test report of {self.run}"


class LoadTestSecond(models.Model):
    """One second of a load-test run, by intended send time; written as the run goes.

    One row per run and second: a delivery that takes the run over after a lost worker replaces
    the rows of the one before, never adds to them.
    """

    run = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="load_test_seconds")
    delivery = models.PositiveIntegerField()
    second = models.PositiveIntegerField()
    target_rps = models.FloatField()
    sent = models.PositiveIntegerField()
    dropped = models.PositiveIntegerField()
    answered = models.PositiveIntegerField()
    failed = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()
    throughput = models.PositiveIntegerField()
    p50_ms = models.FloatField()
    p90_ms = models.FloatField()
    p95_ms = models.FloatField()
    p99_ms = models.FloatField()
    max_ms = models.FloatField()
    statuses = models.JSONField(default=dict)
    error_kinds = models.JSONField(default=dict)

    class Meta:
        ordering = ["run", "second"]
        constraints = [models.UniqueConstraint(fields=["run", "second"], name="one_row_per_load_test_second")]

    def __str__(self) -> str:
        return f"Second {self.second} of {self.run}"


# The live state, maintenance windows and traffic shared by go-live and monitoring live in their own
# package; imported here so Django registers them with this app.
from onboarding.golive.models import ChangeWindow, GoLivePlan, GoLiveSchedule, ServiceAccount, ServiceToken  # noqa: E402, F401
from onboarding.live.models import LiveState, MaintenanceWindow, TrafficMinute  # noqa: E402, F401

# Monitoring's policy, monitors, health checks, alerts and drift runs, registered the same way.
from onboarding.monitoring.models import Alert, DriftRun, HealthCheck, Monitor, MonitoringPolicy  # noqa: E402, F401
