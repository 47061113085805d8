"""Findings of validation runs: how they are stored, and the engineers' review of failed runs.

Writes: the validate step hands findings and the offending raw resources to a ``FindingSink``,
which stores them in batches (raw resources encrypted, with an expiry), so a run over a thousand
patients never holds them all in memory. Waivers are written here too.

Reads: the failed-runs queue, a run's findings grouped by rule and path with the share of
patients affected, examples of a group, the diff against the connection's previous run, and
exports. Every read goes through the tenants the user may see; the raw JSON only through
``view_raw_resource``, which requires the engineers' permission and writes an audit event.

Findings never hold names or MRNs: patients and resources are named by keyed hashes
(``patient_key``), computed with a key derived from FIELD_ENCRYPTION_KEYS, so the same patient
has the same key across runs of a tenant and no key can be reversed without the secret.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone

from onboarding.models import Finding, RawResource, RunStatus, Severity, Step, StepRun, Waiver
from portal import audit, csvsafe
from portal.access import AuthUser, User, require_perm, tenants_for
from portal.models import Tenant

REVIEW_PERM = "onboarding.review_runs"
# Findings and raw copies are written when either bound is reached, so memory stays flat however
# many patients a run pulls. Each write costs about 6 ms on PostgreSQL whatever its size, so batches
# of 200 (or 128 KiB of raw copies) rather than 50: a thousand patients' step spends 0.3 s less
# writing, for about 0.3 MiB more held at once.
BATCH_SIZE = 200
BATCH_BYTES = 128 * 1024
EXAMPLES_PER_GROUP = 25
MAX_WAIVER_DAYS = 366
SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


# --- pseudonymous keys ----------------------------------------------------------------------------------


@functools.cache
def _derived_key(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"onboarding finding keys v1").derive(
        secret.encode()
    )


def _keyed(*parts: str) -> str:
    key = _derived_key(settings.PSEUDONYM_KEY)
    return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()[:24]


def patient_key(tenant: Tenant, patient_id: str) -> str:
    """The pseudonymous key of a patient of a tenant: stable across runs, meaningless without the secret."""
    return _keyed("patient", str(tenant.code), patient_id)


def resource_key(tenant: Tenant, resource_type: str, resource_id: str) -> str:
    """The pseudonymous key of one resource, so findings can be matched across runs."""
    return _keyed("resource", str(tenant.code), resource_type, resource_id)


def fingerprint(rule: str, path: str, resource_type: str, key: str, discriminator: str = "") -> str:
    """What identifies "the same problem" from one run to the next."""
    return hashlib.sha256("\x1f".join((rule, path, resource_type, key, discriminator)).encode()).hexdigest()[:40]


# --- writing findings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewFinding:
    """A finding as the validate step reports it, before it is stored."""

    severity: str
    rule: str
    resource_type: str
    path: str
    message: str
    location: str = ""
    discriminator: str = ""  # tells apart two findings of one rule at one path on one resource
    profile: str = ""  # the US Core profile whose rule this is (``us-core-smokingstatus``), if any


class FindingSink:
    """Stores one run's findings and their raw resources in batches; nothing else is kept in memory."""

    def __init__(self, run: StepRun) -> None:
        # A redelivered run starts over: drop what an earlier, lost delivery of it wrote.
        Finding.objects.filter(run=run).delete()
        RawResource.objects.filter(run=run).delete()
        self.run = run
        self.tenant = run.onboarding.tenant
        self.expires_at = timezone.now() + timedelta(days=settings.RAW_PAYLOAD_RETENTION_DAYS)
        self._pending: list[tuple[Finding, tuple[str, str] | None]] = []
        self._raw_pending: dict[tuple[str, str], RawResource] = {}
        self._raw_bytes = 0
        self.counts = {Severity.ERROR: 0, Severity.WARNING: 0, Severity.INFO: 0}

    def add(self, finding: NewFinding, resource: dict[str, Any], patient_id: str) -> None:
        """Queue one finding on one resource of one patient."""
        p_key = patient_key(self.tenant, patient_id) if patient_id else ""
        r_key = resource_key(self.tenant, finding.resource_type, str(resource.get("id") or ""))
        raw_key = (finding.resource_type, r_key)
        if raw_key not in self._raw_pending:
            payload = json.dumps(resource, separators=(",", ":"))
            self._raw_bytes += len(payload)
            self._raw_pending[raw_key] = RawResource(
                run=self.run,
                resource_type=finding.resource_type,
                resource_key=r_key,
                patient_key=p_key,
                payload=payload,
                expires_at=self.expires_at,
            )
        row = Finding(
            run=self.run,
            severity=finding.severity,
            rule=finding.rule,
            resource_type=finding.resource_type,
            path=finding.path[:200],
            location=finding.location[:300],
            message=finding.message[:500],
            profile=finding.profile[:100],
            patient_key=p_key,
            resource_key=r_key,
            fingerprint=fingerprint(finding.rule, finding.path, finding.resource_type, r_key, finding.discriminator),
        )
        self._pending.append((row, raw_key))
        self.counts[Severity(finding.severity)] += 1
        if len(self._pending) >= BATCH_SIZE or self._raw_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is queued: raw resources first, then the findings that point at them."""
        if not self._pending and not self._raw_pending:
            return
        with transaction.atomic():
            raws = list(self._raw_pending.values())
            RawResource.objects.bulk_create(raws, ignore_conflicts=True)
            stored = {
                (r.resource_type, r.resource_key): r
                for r in RawResource.objects.filter(run=self.run, resource_key__in=[r.resource_key for r in raws]).only(
                    "pk", "resource_type", "resource_key"
                )
            }
            for row, raw_key in self._pending:
                row.raw = stored.get(raw_key) if raw_key else None
            Finding.objects.bulk_create([row for row, _ in self._pending])
        self._pending = []
        self._raw_pending = {}
        self._raw_bytes = 0


def discard_raw_resources(run: StepRun) -> int:
    """Delete a run's raw resources (a passed run keeps none)."""
    return _delete_raw(RawResource.objects.filter(run=run))


def purge_expired_raw_resources(now: datetime | None = None) -> int:
    """Delete raw resources past their retention; the findings stay, without their JSON."""
    return _delete_raw(RawResource.objects.filter(expires_at__lte=now or timezone.now()))


def _delete_raw(raws: QuerySet[RawResource], batch: int = 200) -> int:
    """Delete in batches by primary key, never loading (or decrypting) a payload into memory.

    Django's delete still builds an instance per row (to null the findings' links), so the batch is
    kept small: a passed run of a thousand patients deletes about as many copies, and memory must
    not grow with them.
    """
    deleted = 0
    while True:
        ids = list(raws.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        with transaction.atomic():
            Finding.objects.filter(raw_id__in=ids).update(raw=None)
            deleted += RawResource.objects.filter(pk__in=ids).only("pk").delete()[1].get(RawResource._meta.label, 0)


# --- waivers --------------------------------------------------------------------------------------------


class WaiverError(Exception):
    """A waiver the portal refuses; the message says what to fix."""


def active_waivers(tenant: Tenant, at: datetime | None = None) -> QuerySet[Waiver]:
    """A tenant's waivers in force: not revoked and not expired."""
    moment = at or timezone.now()
    return Waiver.objects.filter(tenant=tenant, revoked_at__isnull=True, expires_at__gt=moment)


def waived_pairs(tenant: Tenant, at: datetime | None = None) -> dict[tuple[str, str], Waiver]:
    """(rule, path) -> the waiver that covers it now."""
    return {(w.rule, w.path): w for w in active_waivers(tenant, at).order_by("expires_at")}


def create_waiver(
    *,
    user: User,
    tenant: Tenant,
    rule: str,
    path: str,
    reason: str,
    expires_on: date,
    run: StepRun | None = None,
    request: HttpRequest | None = None,
) -> Waiver:
    """An engineer accepts a rule at a path for a tenant until a date, with a reason.

    Given the run it is waived from, the rule and path must be one of that run's finding groups.
    """
    require_perm(user, REVIEW_PERM, tenant)
    reason = reason.strip()
    if len(reason) < 10:
        raise WaiverError("Say why this finding is acceptable (at least 10 characters), so others can judge it.")
    today = timezone.localdate()
    if expires_on <= today:
        raise WaiverError("The expiry must be a date after today.")
    if expires_on > today + timedelta(days=MAX_WAIVER_DAYS):
        raise WaiverError("A waiver may last at most a year; pick an earlier expiry.")
    if not rule or not path or len(rule) > 64 or len(path) > 200:
        raise WaiverError("Waive a rule and path shown on the run page.")
    if run is not None and not run.findings.filter(rule=rule, path=path).exists():
        raise WaiverError(f"Run {run.code} has no finding of {rule} at {path}: waive a group the run shows.")
    expires_at = timezone.make_aware(datetime.combine(expires_on, datetime.max.time()))
    with transaction.atomic():
        waiver = Waiver.objects.create(
            tenant=tenant,
            rule=rule,
            path=path,
            reason=reason,
            approver=user if isinstance(user, AuthUser) else None,
            approver_label=user.get_username(),
            expires_at=expires_at,
        )
        audit.record(
            action="waiver.create",
            actor=user,
            tenant=tenant,
            obj=waiver,
            request=request,
            detail={"rule": rule, "path": path, "expires_on": expires_on.isoformat()},
        )
    return waiver


def waivers_for(user: User) -> QuerySet[Waiver]:
    """Waivers of the tenants the user may see, newest first (in force, expired and revoked alike)."""
    return Waiver.objects.filter(tenant__in=tenants_for(user)).select_related("tenant")


def get_waiver(user: User, code: uuid.UUID | str) -> Waiver:
    """A waiver of a tenant the user may see, else 404."""
    try:
        return waivers_for(user).get(code=code)
    except (Waiver.DoesNotExist, ValueError):
        raise Http404("No such waiver.") from None


def waiver_in_force(waiver: Waiver, at: datetime | None = None) -> bool:
    """Whether the waiver still covers findings: not revoked and not expired."""
    return waiver.revoked_at is None and waiver.expires_at > (at or timezone.now())


def revoke_waiver(*, user: User, waiver: Waiver, reason: str = "", request: HttpRequest | None = None) -> Waiver:
    """An engineer ends a waiver before it expires; the next validation run counts its findings again.

    The row is kept (the evidence pack lists every waiver with when it was revoked).
    """
    require_perm(user, REVIEW_PERM, waiver.tenant)
    reason = reason.strip()
    if len(reason) > 1000:
        raise WaiverError("Keep the reason under 1,000 characters.")
    with transaction.atomic():
        locked = Waiver.objects.select_for_update().get(pk=waiver.pk)
        if locked.revoked_at is not None:
            raise WaiverError(f"This waiver was already revoked on {locked.revoked_at:%Y-%m-%d}.")
        if not waiver_in_force(locked):
            raise WaiverError(f"This waiver expired on {locked.expires_at:%Y-%m-%d}; it no longer applies.")
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        audit.record(
            action="waiver.revoke",
            actor=user,
            tenant=locked.tenant,
            obj=locked,
            request=request,
            detail={"rule": locked.rule, "path": locked.path, "reason": reason},
        )
    return locked


# --- reads: the queue and a run ---------------------------------------------------------------------------


def validation_runs_for(user: User) -> QuerySet[StepRun]:
    """Validation attempts of the tenants the user may see."""
    return StepRun.objects.filter(step=Step.VALIDATE, onboarding__tenant__in=tenants_for(user)).select_related(
        "onboarding__tenant", "onboarding__connection"
    )


def get_validation_run(user: User, code: uuid.UUID | str) -> StepRun:
    """A validation run the user may see, else 404."""
    try:
        return validation_runs_for(user).get(code=code)
    except (StepRun.DoesNotExist, ValueError):
        raise Http404("No such validation run.") from None


@dataclass(frozen=True)
class QueueFilters:
    """What the failed-runs queue is narrowed to; blanks mean no filter."""

    tenant: str = ""
    vendor: str = ""
    rule: str = ""
    severity: str = ""
    since: date | None = None
    until: date | None = None


# Failures of a precondition (no signed mapping) say nothing about the hospital's data: never queued.
PRECONDITION_KINDS = ("not_signed_off",)


def failed_runs(user: User, filters: QueueFilters) -> QuerySet[StepRun]:
    """Failed validation runs across the tenants the user may see, newest first, filtered.

    A failure leaves the queue once a later attempt of the same step passed, and a run that failed
    only on a precondition never enters it.
    """
    passed_later = StepRun.objects.filter(
        onboarding=OuterRef("onboarding"),
        step=OuterRef("step"),
        attempt__gt=OuterRef("attempt"),
        status=RunStatus.PASSED,
    )
    runs = (
        validation_runs_for(user)
        # An archived connection's runs stay readable by their links, out of the queue.
        .filter(status=RunStatus.FAILED, onboarding__connection__archived_at=None)
        .exclude(error_kind__in=PRECONDITION_KINDS)
        .exclude(Exists(passed_later))
    )
    if filters.tenant:
        runs = runs.filter(onboarding__tenant__code=filters.tenant)
    if filters.vendor:
        runs = runs.filter(onboarding__connection__vendor=filters.vendor)
    finding_filter = Q()
    if filters.rule:
        finding_filter &= Q(findings__rule=filters.rule)
    if filters.severity:
        finding_filter &= Q(findings__severity=filters.severity)
    if finding_filter:
        runs = runs.filter(finding_filter).distinct()
    if filters.since:
        runs = runs.filter(finished_at__date__gte=filters.since)
    if filters.until:
        runs = runs.filter(finished_at__date__lte=filters.until)
    return runs.annotate(
        errors=Count("findings", filter=Q(findings__severity=Severity.ERROR), distinct=True),
        warnings=Count("findings", filter=Q(findings__severity=Severity.WARNING), distinct=True),
    ).order_by("-finished_at", "-id")


def known_rules(user: User) -> list[str]:
    """Rule ids that occur in findings of runs the user may see, for the queue's rule filter."""
    findings = Finding.objects.filter(run__in=validation_runs_for(user))
    return list(findings.order_by().values_list("rule", flat=True).distinct().order_by("rule"))


@dataclass(frozen=True)
class Group:
    """Findings of one rule at one path: how many, how many patients, and whether waived."""

    rule: str
    path: str
    severity: str
    resource_type: str
    count: int
    patients: int
    share: float
    waiver: Waiver | None
    sample_message: str
    profiles: tuple[str, ...] = ()  # the US Core profiles whose rule this is, if any

    @property
    def waived(self) -> bool:
        return self.waiver is not None


def grouped_findings(run: StepRun) -> list[Group]:
    """The run's findings grouped by rule and path (never a flat list), worst and biggest first."""
    total = int((run.result or {}).get("patients") or 0)
    waivers = waived_pairs(run.onboarding.tenant)
    rows = (
        run.findings.values("rule", "path", "severity", "resource_type")
        .annotate(count=Count("id"), patients=Count("patient_key", distinct=True))
        .order_by()
    )
    messages = _sample_messages(run)
    profiles: dict[tuple[str, str], list[str]] = {}
    for rule, path, profile in (
        run.findings.exclude(profile="").values_list("rule", "path", "profile").distinct().order_by("profile")
    ):
        profiles.setdefault((rule, path), []).append(profile)
    groups = [
        Group(
            rule=row["rule"],
            path=row["path"],
            severity=row["severity"],
            resource_type=row["resource_type"],
            count=row["count"],
            patients=row["patients"],
            share=round(100 * row["patients"] / total, 1) if total else 0.0,
            waiver=waivers.get((row["rule"], row["path"])),
            sample_message=messages.get((row["rule"], row["path"]), ""),
            profiles=tuple(profiles.get((row["rule"], row["path"]), ())),
        )
        for row in rows
    ]
    groups.sort(key=lambda g: (SEVERITY_ORDER.get(Severity(g.severity), 9), -g.count, g.rule, g.path))
    return groups


def _sample_messages(run: StepRun) -> dict[tuple[str, str], str]:
    firsts = run.findings.order_by("rule", "path", "id").distinct("rule", "path") if _postgres() else None
    if firsts is not None:
        return {(f.rule, f.path): f.message for f in firsts.only("rule", "path", "message")}
    messages: dict[tuple[str, str], str] = {}
    for rule, path, message in run.findings.order_by("id").values_list("rule", "path", "message").iterator():
        messages.setdefault((rule, path), message)
    return messages


def _postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


def group_examples(run: StepRun, rule: str, path: str, limit: int = EXAMPLES_PER_GROUP) -> list[Finding]:
    """A few findings of one group, to drill into."""
    return list(run.findings.filter(rule=rule, path=path).select_related("raw").order_by("id")[:limit])


@dataclass(frozen=True)
class Diff:
    """This run's findings against the previous run of the same connection, on the patients both checked.

    A finding only counts as new or fixed when both runs checked its patient: a smaller sample, or
    a run stopped part-way, did not fix what it never looked at. Findings of patients only one run
    checked are listed as not compared.
    """

    previous: StepRun | None
    new: list[tuple[str, str, int]]
    fixed: list[tuple[str, str, int]]
    unchanged: int
    # How many patients both runs checked; None when a run did not record them (runs made before
    # runs kept their patients), and everything is compared as before.
    compared_patients: int | None = None
    not_compared: list[tuple[str, str, int]] = field(default_factory=list)
    only_this_run: int = 0  # patients this run checked and the previous did not
    only_previous: int = 0  # and the other way round

    @property
    def new_count(self) -> int:
        return sum(n for _, _, n in self.new)

    @property
    def fixed_count(self) -> int:
        return sum(n for _, _, n in self.fixed)

    @property
    def not_compared_count(self) -> int:
        return sum(n for _, _, n in self.not_compared)


def previous_run(run: StepRun) -> StepRun | None:
    """The latest finished validation attempt of the same connection before this one."""
    return (
        StepRun.objects.filter(
            onboarding=run.onboarding,
            step=Step.VALIDATE,
            attempt__lt=run.attempt,
            status__in=(RunStatus.PASSED, RunStatus.FAILED),
        )
        .order_by("-attempt")
        .first()
    )


def checked_patients(run: StepRun) -> set[str] | None:
    """The pseudonymous keys of the patients a run checked to the end; None if it did not record them."""
    keys = (run.result or {}).get("patient_keys")
    return {str(k) for k in keys} if isinstance(keys, list) else None


def diff_against_previous(run: StepRun) -> Diff:
    """New, fixed and unchanged findings, by fingerprint, counted per rule and path, on the patients both checked."""
    previous = previous_run(run)
    if previous is None:
        return Diff(None, [], [], 0)
    mine, theirs = checked_patients(run), checked_patients(previous)
    both = mine & theirs if mine is not None and theirs is not None else None
    now, now_outside = _split_findings(run, both)
    before, before_outside = _split_findings(previous, both)
    new = _count_pairs(now[f] for f in now.keys() - before.keys())
    fixed = _count_pairs(before[f] for f in before.keys() - now.keys())
    if both is None:
        return Diff(previous, new, fixed, len(now.keys() & before.keys()))
    assert mine is not None and theirs is not None  # both is their intersection
    return Diff(
        previous,
        new,
        fixed,
        len(now.keys() & before.keys()),
        compared_patients=len(both),
        not_compared=_count_pairs([*now_outside.values(), *before_outside.values()]),
        only_this_run=len(mine - theirs),
        only_previous=len(theirs - mine),
    )


def _split_findings(
    run: StepRun, patients: set[str] | None
) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """A run's findings (fingerprint -> rule and path): those on the given patients, and the rest."""
    inside: dict[str, tuple[str, str]] = {}
    outside: dict[str, tuple[str, str]] = {}
    for fingerprint, rule, path, patient in run.findings.values_list("fingerprint", "rule", "path", "patient_key"):
        target = inside if patients is None or patient in patients else outside
        target.setdefault(fingerprint, (rule, path))
    return inside, outside


def _count_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str, int]]:
    counts: dict[tuple[str, str], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    return sorted(((rule, path, n) for (rule, path), n in counts.items()), key=lambda t: (-t[2], t[0], t[1]))


# --- the audited raw view -------------------------------------------------------------------------------


def get_finding(user: User, code: uuid.UUID | str) -> Finding:
    """A finding of a run the user may see, else 404."""
    try:
        return Finding.objects.select_related("run__onboarding__tenant", "run__onboarding__connection", "raw").get(
            code=code, run__onboarding__tenant__in=tenants_for(user)
        )
    except (Finding.DoesNotExist, ValueError):
        raise Http404("No such finding.") from None


def ensure_raw_viewable(*, user: User, finding: Finding) -> RawResource:
    """The raw resource a finding points at, if this user may see it: 403 for non-engineers, 404 once purged."""
    if not user.has_perm(REVIEW_PERM):
        raise PermissionDenied("Only engineers may see raw resources.")
    raw = finding.raw
    if raw is None or raw.expires_at <= timezone.now():
        raise Http404("The raw resource is no longer kept (it is purged after the retention period).")
    return raw


def view_raw_resource(*, user: User, finding: Finding, request: HttpRequest | None = None) -> dict[str, Any]:
    """The resource behind a finding, for an engineer, with an audit event written first.

    Hospital IT and customer success get 403; a raw resource purged or never kept is a 404.
    """
    tenant = finding.run.onboarding.tenant
    raw = ensure_raw_viewable(user=user, finding=finding)
    audit.record(
        action="phi.view",
        actor=user,
        tenant=tenant,
        obj=raw,
        request=request,
        detail={
            "run": str(finding.run.code),
            "finding": str(finding.code),
            "resource_type": raw.resource_type,
            "rule": finding.rule,
        },
    )
    payload: dict[str, Any] = json.loads(raw.payload)
    return payload


@dataclass(frozen=True)
class JsonLine:
    """One line of pretty-printed JSON, and whether it belongs to the offending element."""

    text: str
    highlighted: bool


def highlighted_json(resource: dict[str, Any], location: str) -> list[JsonLine]:
    """The resource pretty-printed, with the lines of the element at ``location`` marked.

    ``location`` is a finding's JSON path with list positions (``code.coding[0].system``); the
    element's lines, including everything nested in it, are highlighted.
    """
    target = _location_parts(location)
    lines: list[JsonLine] = []
    _render(resource, [], target, 0, "", lines, trailing="")
    return lines


def _location_parts(location: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in location.replace("]", "").split("."):
        if not piece:
            continue
        name, *indexes = piece.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indexes if i.isdigit())
    return parts


def _render(
    value: Any,
    path: list[str | int],
    target: list[str | int],
    depth: int,
    label: str,
    lines: list[JsonLine],
    trailing: str,
) -> None:
    indent = "  " * depth
    on = bool(target) and path[: len(target)] == target
    if isinstance(value, dict) and value:
        lines.append(JsonLine(f"{indent}{label}{{", on))
        items = list(value.items())
        for i, (key, child) in enumerate(items):
            _render(
                child, [*path, key], target, depth + 1, f"{json.dumps(key)}: ", lines, "," if i < len(items) - 1 else ""
            )
        lines.append(JsonLine(f"{indent}}}{trailing}", on))
    elif isinstance(value, list) and value:
        lines.append(JsonLine(f"{indent}{label}[", on))
        for i, child in enumerate(value):
            _render(child, [*path, i], target, depth + 1, "", lines, "," if i < len(value) - 1 else "")
        lines.append(JsonLine(f"{indent}]{trailing}", on))
    else:
        lines.append(JsonLine(f"{indent}{label}{json.dumps(value, ensure_ascii=False)}{trailing}", on))


# --- exports --------------------------------------------------------------------------------------------

EXPORT_FIELDS = (
    "severity",
    "rule",
    "resource_type",
    "path",
    "location",
    "profile",
    "message",
    "patient_key",
    "resource_key",
)


def export_rows(run: StepRun) -> Iterable[dict[str, Any]]:
    """The run's findings for export, each marked waived or not; no PHI, only pseudonymous keys."""
    waivers = waived_pairs(run.onboarding.tenant)
    for row in run.findings.order_by("id").values(*EXPORT_FIELDS, "code", "fingerprint").iterator(chunk_size=2000):
        waiver = waivers.get((row["rule"], row["path"]))
        yield {
            "finding": str(row["code"]),
            **{k: row[k] for k in EXPORT_FIELDS},
            "fingerprint": row["fingerprint"],
            "waived": waiver is not None,
            "waiver_expires": waiver.expires_at.date().isoformat() if waiver else "",
        }


def export_csv(run: StepRun) -> Iterable[str]:
    """CSV lines of the run's findings, streamed."""
    columns = ["finding", *EXPORT_FIELDS, "fingerprint", "waived", "waiver_expires"]
    # Paths and messages quote the hospital's codes and element names: csvsafe defuses formulas.
    rows = ([row[column] for column in columns] for row in export_rows(run))
    yield from csvsafe.lines(itertools.chain([columns], rows), lineterminator="\n")


def export_json(run: StepRun) -> dict[str, Any]:
    """The run, its summary and every finding, as one JSON document."""
    return {
        "run": str(run.code),
        "tenant": str(run.onboarding.tenant.code),
        "connection": str(run.onboarding.connection.code),
        "attempt": run.attempt,
        "status": run.status,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "summary": run.result,
        "findings": list(export_rows(run)),
    }


def record_export(*, user: User, run: StepRun, fmt: str, request: HttpRequest | None = None) -> None:
    """Audit an export of a run's findings (no PHI leaves, but who took what is recorded)."""
    audit.record(
        action="findings.export",
        actor=user,
        tenant=run.onboarding.tenant,
        obj=run,
        request=request,
        detail={"format": fmt},
    )
