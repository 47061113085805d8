"""Drift watch: a small sample of a live connection re-validated and diffed against its go-live baseline.

The baseline is the validation run the go-live approval bound (LiveState.baseline_run). New error
findings, by fingerprint, open a drift alert that names the change ("Patient.identifier: MRN system
changed from X to Y"); a later clean sample resolves it. The sample itself is pulled and checked by
the validate step's own code (onboarding.steps.drift, a layer above this one), which hands a
DriftSample to `finish_drift`; this module never reaches the hospital itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import current_app
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from onboarding.live.models import LiveState
from onboarding.models import Finding, Onboarding, Severity
from onboarding.monitoring import policy as policies
from onboarding.monitoring.models import AlertKind, DriftRun, DriftStatus, Monitor
from onboarding.monitoring.services import LIVE, open_alert, resolve_alert
from portal import audit
from portal.access import User, require_perm

RUN_TASK = "onboarding.monitoring.run_drift"
# The drift task's limits. A run still "running" past the hard limit lost its worker (killed, out of
# memory, the machine gone): nothing else will end it, and it would hold the connection's next check.
RUN_SOFT_LIMIT_S, RUN_HARD_LIMIT_S = 300, 360
LOST_AFTER = timedelta(seconds=RUN_HARD_LIMIT_S + 60)
# A run never picked up in this long had its message lost, or no worker reads the monitoring queue.
NEVER_STARTED_AFTER = timedelta(hours=1)
REQUEST_PERM = "onboarding.run_step"


class DriftRefused(ValueError):
    """A drift check that cannot start: the connection is not live or has no baseline."""


@dataclass(frozen=True)
class SampleFinding:
    """One finding of the drift sample, keyed like the validate step's findings."""

    severity: str
    rule: str
    path: str
    resource_type: str
    message: str
    fingerprint: str
    patient_key: str


@dataclass(frozen=True)
class DriftSample:
    """What re-validating the sample found, and the MRN-typed identifier systems its patients carry."""

    patients: int
    findings: list[SampleFinding]
    mapped_mrn_system: str
    mrn_systems: dict[str, int] = field(default_factory=dict)  # system -> patients carrying it
    patient_keys: list[str] = field(default_factory=list)


# --- Starting ------------------------------------------------------------------------------------------


def _send(run_id: int) -> None:
    transaction.on_commit(lambda: current_app.send_task(RUN_TASK, args=(run_id,)))


def request_drift(*, user: User, onboarding: Onboarding, request: HttpRequest | None = None) -> DriftRun:
    """Start a drift check now (the one already waiting or running, if any)."""
    require_perm(user, REQUEST_PERM, onboarding.tenant)
    reap_lost_drift(onboarding=onboarding)  # a lost run must not stand in for the one asked for
    live = LiveState.objects.filter(onboarding=onboarding, stage__in=LIVE).first()
    if live is None:
        raise DriftRefused("This connection is not live, so there is no go-live baseline to compare with.")
    if live.baseline_run_id is None:
        raise DriftRefused("The go-live left no validation run as a baseline, so drift cannot be measured.")
    with transaction.atomic():
        waiting = (
            DriftRun.objects.select_for_update()
            .filter(onboarding=onboarding, status__in=[DriftStatus.QUEUED, DriftStatus.RUNNING])
            .first()
        )
        if waiting is not None:
            return waiting
        run = DriftRun.objects.create(
            onboarding=onboarding,
            tenant=onboarding.tenant,
            trigger="on_demand",
            requested_by=user if user.is_authenticated else None,
            baseline_run_id=live.baseline_run_id,
        )
        audit.record(
            action="monitoring.drift_requested", actor=user, tenant=onboarding.tenant, obj=run, request=request
        )
        _send(run.pk)
    return run


def claim_due_drift(now: datetime | None = None) -> list[int]:
    """Make a drift run for every live connection whose scheduled drift check is due; returns their ids."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            Monitor.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                next_drift_at__lte=now, onboarding__live__stage__in=LIVE, onboarding__live__baseline_run__isnull=False
            )
            .values_list("id", "onboarding_id", "tenant_id", "onboarding__live__baseline_run_id")[:1000]
        )
        if not due:
            return []
        days = {tenant_id: policies.policy_for_id(tenant_id).drift_every_days for tenant_id in {row[2] for row in due}}
        runs = DriftRun.objects.bulk_create(
            [
                DriftRun(onboarding_id=onboarding_id, tenant_id=tenant_id, trigger="schedule", baseline_run_id=baseline)
                for _, onboarding_id, tenant_id, baseline in due
            ]
        )
        Monitor.objects.bulk_update(
            [Monitor(id=row[0], next_drift_at=now + timedelta(days=days[row[2]])) for row in due], ["next_drift_at"]
        )
        ids = [run.pk for run in runs]
        for run_id in ids:
            _send(run_id)
    return ids


def reap_lost_drift(*, now: datetime | None = None, onboarding: Onboarding | None = None) -> int:
    """End the drift runs that lost their worker or never started, each saying so; how many were ended."""
    now = now or timezone.now()
    runs = DriftRun.objects.all() if onboarding is None else DriftRun.objects.filter(onboarding=onboarding)
    lost = runs.filter(status=DriftStatus.RUNNING, started_at__lt=now - LOST_AFTER).update(
        status=DriftStatus.FAILED,
        finished_at=now,
        error_message=(
            f"The worker running this check stopped before it finished (it would have ended within "
            f"{RUN_HARD_LIMIT_S} s). The next check runs on schedule, or start one now."
        ),
    )
    never = runs.filter(status=DriftStatus.QUEUED, created_at__lt=now - NEVER_STARTED_AFTER).update(
        status=DriftStatus.FAILED,
        finished_at=now,
        error_message=(
            "No worker picked this check up within an hour: is a worker reading the monitoring queue? "
            "Start one now once it is."
        ),
    )
    return lost + never


def start_drift(run_id: int) -> DriftRun | None:
    """Claim a queued drift run for this delivery (None if another delivery has it, or it is done)."""
    if not DriftRun.objects.filter(pk=run_id, status=DriftStatus.QUEUED).update(
        status=DriftStatus.RUNNING, started_at=timezone.now()
    ):
        return None
    return DriftRun.objects.select_related("onboarding__connection", "onboarding__tenant", "baseline_run").get(
        pk=run_id
    )


def fail_drift(run_id: int, message: str) -> None:
    """The sample could not be pulled (the hospital did not answer...): said on the run, no alert."""
    DriftRun.objects.filter(pk=run_id, status=DriftStatus.RUNNING).update(
        status=DriftStatus.FAILED, finished_at=timezone.now(), error_message=message[:500]
    )


# --- The diff ------------------------------------------------------------------------------------------


def finish_drift(run_id: int, sample: DriftSample, now: datetime | None = None) -> DriftRun:
    """Diff the sample against the baseline; open (or resolve) the drift alert; store what changed."""
    now = now or timezone.now()
    with transaction.atomic():
        run = (
            DriftRun.objects.select_for_update()
            .select_related("onboarding__connection", "onboarding__tenant")
            .get(pk=run_id)
        )
        if run.status != DriftStatus.RUNNING:
            return run  # a redelivery finished it already
        new = new_errors(run, sample)
        groups = Counter((f.rule, f.path) for f in new)
        examples = {(f.rule, f.path): f.message for f in new}
        run.new_findings = [
            {"rule": rule, "path": path, "count": count, "message": examples[(rule, path)]}
            for (rule, path), count in groups.most_common()
        ]
        run.changes = name_changes(sample, new)
        run.patients = sample.patients
        run.status, run.finished_at = DriftStatus.DONE, now
        onboarding = run.onboarding
        if new:
            alert = open_alert(
                onboarding,
                AlertKind.DRIFT,
                now=now,
                title=f"{onboarding.connection.name}: the data changed since go-live",
                detail="; ".join(run.changes),
                facts={"drift_run": str(run.code), "new_errors": len(new), "changes": run.changes},
            )
            if alert.detail != "; ".join(run.changes)[:4000]:
                # Still open from an earlier drift run: it now says what the latest sample shows.
                alert.detail = "; ".join(run.changes)[:4000]
                alert.facts = {"drift_run": str(run.code), "new_errors": len(new), "changes": run.changes}
                alert.save(update_fields=["detail", "facts"])
            run.alert = alert
        else:
            resolve_alert(onboarding, AlertKind.DRIFT, now=now, resolution="A new sample matches the go-live baseline.")
        run.save()
    return run


def new_errors(run: DriftRun, sample: DriftSample) -> list[SampleFinding]:
    """The sample's error findings the baseline did not have.

    On a patient the baseline checked, by fingerprint (the same problem on the same resource). On a
    patient it did not check, by rule and path: only a kind of error the baseline never had counts.
    """
    baseline = run.baseline_run
    rows = Finding.objects.filter(run=baseline) if baseline is not None else Finding.objects.none()
    prints = set(rows.values_list("fingerprint", flat=True))
    kinds = set(rows.filter(severity=Severity.ERROR).values_list("rule", "path"))
    checked = set((baseline.result or {}).get("patient_keys") or []) if baseline is not None else set()
    new = []
    for finding in sample.findings:
        if finding.severity != Severity.ERROR:
            continue
        if finding.patient_key in checked:
            if finding.fingerprint not in prints:
                new.append(finding)
        elif (finding.rule, finding.path) not in kinds:
            new.append(finding)
    return new


def name_changes(sample: DriftSample, new: list[SampleFinding]) -> list[str]:
    """The changes in words: an MRN system that moved is named as such, other new errors by path and rule."""
    changes: list[str] = []
    rest = list(new)
    if any(f.rule == "patient.mrn-missing" for f in new):
        others = Counter({s: n for s, n in sample.mrn_systems.items() if s != sample.mapped_mrn_system})
        if others:
            system = others.most_common(1)[0][0]
            changes.append(f"Patient.identifier: MRN system changed from {sample.mapped_mrn_system} to {system}")
        else:
            changes.append(f"Patient.identifier: no patient carries an MRN in {sample.mapped_mrn_system} any more")
        rest = [f for f in new if f.rule != "patient.mrn-missing"]
    groups: Counter[tuple[str, str]] = Counter((f.rule, f.path) for f in rest)
    examples = {(f.rule, f.path): f.message for f in rest}
    for (rule, path), count in groups.most_common():
        noun = "finding" if count == 1 else "findings"
        changes.append(f"{path}: {count} new {rule} {noun} since go-live ({examples[(rule, path)]})")
    return changes
