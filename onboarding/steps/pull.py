"""What a pull of patients met on its way, for the map and validate steps to report.

Map and validate read N patients and each one's clinical resources. Real servers bend the rules
underneath them: some ignore ``patient=`` (every patient's resources come back), ignore ``_count``,
stop paging, throttle, or publish no CapabilityStatement. The adapter refuses what it must (another
patient's resources) and notes the rest; this module decides which clinical types a pull reads and
turns what the adapter noted into the run's summary and warnings, so nothing is counted or judged
silently on data the server got wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings

from connections.adapters import FHIRAdapter, owner_id
from connections.adapters.bulk import BulkExport, Manifest
from connections.adapters.digests import DigestSet, digest
from connections.errors import ErrorKind, RemoteError
from connections.fanout import ordered_map
from onboarding.mapping.profile import CLINICAL_TYPES
from onboarding.steps.base import StepContext
from onboarding.steps.configure import capability_or_absent


class ClinicalTypes:
    """The clinical types a pull reads and those it skips.

    From the CapabilityStatement when there is one; for a server without one (and a connection
    that accepts that), every type is tried and a type the server answers 404 for is dropped.
    """

    def __init__(self, ctx: StepContext, *, verb: str) -> None:
        self._lock = threading.Lock()
        capability, _why = capability_or_absent(ctx)
        self.probing = capability is None
        if capability is None:
            self.types = list(CLINICAL_TYPES)
            self.skipped: list[str] = []
            ctx.log("No CapabilityStatement: every clinical type is tried; those the server refuses are skipped.")
        else:
            self.types = [t for t in CLINICAL_TYPES if capability.supports(t, "search-type")]
            self.skipped = [t for t in CLINICAL_TYPES if t not in self.types]
        if self.skipped:
            ctx.log(f"Not offered by the server, so not {verb}: " + ", ".join(self.skipped), level="warning")

    def search(
        self, ctx: StepContext, resource_type: str, patient_id: str, adapter: FHIRAdapter | None = None
    ) -> list[dict[str, Any]]:
        """One patient's resources of one type (another patient's are refused by the adapter).

        ``adapter`` is the calling thread's copy in a concurrent pull; the context's adapter otherwise.
        """
        if resource_type not in self.types:
            return []
        try:
            return (adapter or ctx.adapter).search_clinical_raw(resource_type, patient_id)
        except RemoteError as exc:
            if not (self.probing and exc.kind is ErrorKind.NOT_FOUND):
                raise
        with self._lock:
            # Two threads may both meet the 404: the type is dropped (and said so) once.
            if resource_type in self.types:
                self.types.remove(resource_type)
                self.skipped.append(resource_type)
                ctx.log(f"The server answers 404 for {resource_type} searches, so it does not offer them: skipped.")
        return []


Search = Callable[[StepContext, ClinicalTypes, str, str, FHIRAdapter], list[dict[str, Any]]]


def _search(
    ctx: StepContext, types: ClinicalTypes, resource_type: str, patient_id: str, adapter: FHIRAdapter
) -> list[dict[str, Any]]:
    return types.search(ctx, resource_type, patient_id, adapter)


def pull_patients(
    ctx: StepContext, *, size: int, types: ClinicalTypes, page_size: int, search: Search = _search
) -> Iterator[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]:
    """Up to ``size`` patients, each with its clinical resources by type, in the server's patient order.

    The patient pages are read here; each patient's searches run on one of as many threads as the
    connection's agreed concurrency, a fixed window of patients ahead, so the caller sees exactly what
    a sequential pull gives (``connections.fanout``) and the connection's limiter keeps every request
    within what the hospital agreed.
    """
    adapter = ctx.adapter
    limiter = adapter.client.limiter
    workers = limiter.concurrency if limiter is not None else 1
    local = threading.local()
    copies: list[FHIRAdapter] = []
    lock = threading.Lock()

    def fetch(patient: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        patient_id = str(patient.get("id") or "")
        if not patient_id:
            return {}
        mine: FHIRAdapter | None = adapter if workers <= 1 else getattr(local, "adapter", None)
        if mine is None:
            mine = local.adapter = adapter.worker_copy()
            with lock:
                copies.append(mine)
        return {rtype: search(ctx, types, rtype, patient_id, mine) for rtype in list(types.types)}

    window = workers * settings.PULL_WINDOW_PER_REQUEST
    try:
        yield from ordered_map(
            adapter.iter_raw_patients(limit=size, page_size=page_size),
            fetch,
            workers=workers,
            window=window,
            on_stop=limiter.stop if limiter is not None else None,
        )
    finally:
        for twin in copies:
            adapter.absorb(twin)


def pull_report(ctx: StepContext) -> dict[str, Any]:
    """The run-summary parts a pull adds: refused resources, the server's paging, throttling (only those seen)."""
    adapter = ctx.adapter
    report: dict[str, Any] = {}
    if adapter.foreign_resources:
        report["foreign_resources"] = dict(sorted(adapter.foreign_resources.items()))
    if adapter.paging_notes:
        report["server_notes"] = dict(adapter.paging_notes)
    throttling = ctx.throttling()
    if throttling:
        report["throttling"] = throttling
    if ctx.bulk_export is not None:
        report["bulk_export"] = ctx.bulk_export
    warnings = pull_warnings(report)
    if warnings:
        report["warnings"] = warnings
    return report


def pull_warnings(report: dict[str, Any]) -> list[str]:
    """The same facts as sentences for people, each with what to try."""
    warnings: list[str] = []
    foreign = report.get("foreign_resources") or {}
    if foreign:
        count = sum(foreign.values())
        kinds = ", ".join(f"{n} {rtype}" for rtype, n in foreign.items())
        warnings.append(
            f"{count} resources ({kinds}) named another patient than the one searched and were refused, not "
            "counted: the server ignores `patient=`. Ask the hospital's FHIR team to apply the patient search "
            "parameter (or whether a proxy drops it); the test step checks it."
        )
    for note in (report.get("server_notes") or {}).values():
        warnings.append(f"{note} Ask the hospital's FHIR team; the test step checks it.")
    warnings.extend(bulk_warnings(report.get("bulk_export") or {}))
    throttling = report.get("throttling") or {}
    if throttling.get("throttled") or throttling.get("unavailable"):
        count = throttling.get("throttled", 0) + throttling.get("unavailable", 0)
        times = "time" if count == 1 else "times"
        statuses = "/".join(c for c, k in (("429", "throttled"), ("503", "unavailable")) if throttling.get(k))
        waited = throttling.get("paused_s", throttling["throttle_waited_s"])
        warnings.append(
            f"The hospital throttled this run {count} {times} (HTTP {statuses}); it waited "
            f"{waited:.0f} s in all. Agree a higher rate limit with the hospital, or use a "
            "smaller sample."
        )
    return warnings


# --- FHIR Bulk Data export as the source ----------------------------------------------------------

# Progress is reported every this many resources of an export's files.
BULK_PROGRESS_EVERY = 200


class BulkPull:
    """A sample read from the hospital's ``$export``: the first N patients, then their resources type by type.

    Patients come first (the Patient file, in the server's order), then each clinical type's files in
    the order a REST pull reads them, so a check that needs a patient's birth date or Encounters has
    them when the resource comes. Only the sample's ids (and the patients' few facts the checks keep)
    are held; the files stream through line by line.
    """

    def __init__(self, ctx: StepContext, *, size: int, types: ClinicalTypes, verb: str) -> None:
        self.ctx, self.size, self.types, self.verb = ctx, size, types, verb
        levels = [level for level in ctx.connection.bulk_export_levels.split(",") if level]
        group_id = ctx.connection.bulk_group_id
        # The Group the hospital set up for the product, when there is one; else the whole server's patients.
        preferred = ("group", "patient", "system") if group_id else ("patient", "system")
        level = next((lvl for lvl in preferred if lvl in levels), None)
        if level is None:
            only_group = "group" in levels
            raise RemoteError(
                ErrorKind.UNSUPPORTED,
                "The server's CapabilityStatement (read at the last configure run) advertises "
                + (
                    "$export only for a Group, and the connection names no Group id"
                    if only_group
                    else "no system, Patient or Group-level $export"
                )
                + ", so the bulk pull method cannot be used.",
                hint=(
                    "Enter the Group id the hospital set up for this product on the connection page, or switch "
                    "the pull method to REST."
                    if only_group
                    else "Re-run configure, or switch the connection's pull method to REST."
                ),
            )
        self.export = BulkExport(
            ctx.adapter,
            types=["Patient", *types.types],
            level=level,
            group_id=group_id if level == "group" else "",
            deadline=ctx.deadline,
            min_poll_s=settings.BULK_MIN_POLL_S,
        )
        self.manifest: Manifest | None = None
        # The sample's patient ids as 64-bit digests in a compact set: 8 bytes a patient.
        self.sample = DigestSet()
        self.resources_read = 0
        self.issues: list[dict[str, str]] = []

    def __enter__(self) -> BulkPull:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            # Failed, cancelled or out of time: tell the server to stop and drop the files.
            self.export.cancel()
            self.ctx.log("The export was cancelled on the hospital's server (DELETE on its status URL).")

    def _ready(self) -> Manifest:
        if self.manifest is None:
            self.ctx.progress(0, self.size, "Asking the hospital's server for a bulk export ($export)")
            self.export.kick_off()
            self.ctx.log(f"Bulk export started ({self.export.level} level, types {', '.join(self.export.types)}).")

            def polled(said: str) -> None:
                self.ctx.progress(0, self.size, "Waiting for the hospital's export" + (f": {said}" if said else ""))

            self.manifest = self.export.wait(polled)
            self.ctx.log(
                f"Export complete after {self.export.polls} polls: {len(self.manifest.output)} files, "
                f"{len(self.manifest.error)} error files."
            )
        return self.manifest

    def patients(self) -> Iterator[dict[str, Any]]:
        """The first ``size`` patients of the export, in its order."""
        manifest = self._ready()
        for file in manifest.files_of("Patient"):
            for patient in self.export.resources(manifest, file):
                self.resources_read += 1
                patient_id = str(patient.get("id") or "")
                key = digest(patient_id)
                if patient_id and key in self.sample:
                    continue
                if patient_id:
                    self.sample.add(key)
                yield patient
                if len(self.sample) >= self.size:
                    return

    def resources(self) -> Iterator[tuple[str, dict[str, Any], str]]:
        """(type, resource, patient id) for the sample's resources, type by type; others' are passed over."""
        manifest = self._ready()
        for resource_type in self.types.types:
            for file in manifest.files_of(resource_type):
                for resource in self.export.resources(manifest, file):
                    self.resources_read += 1
                    if self.resources_read % BULK_PROGRESS_EVERY == 0:
                        self.ctx.progress(
                            len(self.sample),
                            self.size,
                            f"{self.verb} {self.resources_read} resources of the export ({resource_type})",
                        )
                    owner = owner_id(resource)
                    if owner is not None and digest(owner) in self.sample:
                        yield resource_type, resource, owner
        self.issues = self.export.error_issues(manifest)

    def report(self) -> dict[str, Any]:
        """The run-summary part: how the export went, and what its error files said."""
        report: dict[str, Any] = {
            "level": self.export.level,
            "polls": self.export.polls,
            "waited_s": round(self.export.waited_s, 1),
            "files": len(self.manifest.output) if self.manifest else 0,
            "resources_read": self.resources_read,
        }
        if self.export.progress:
            report["last_progress"] = self.export.progress
        if self.issues:
            report["export_errors"] = self.issues
        return report


def bulk_warnings(report: dict[str, Any]) -> list[str]:
    """The export's error files, as a sentence for people."""
    issues = report.get("export_errors") or []
    if not issues:
        return []
    said = "; ".join(f"{i['severity']} {i['code']}: {i['diagnostics']}".strip() for i in issues[:3])
    return [
        f"The hospital's export reported {len(issues)} problem(s) in its error file: {said}. Resources it could not "
        "export are missing from this run; ask the hospital's FHIR team."
    ]
