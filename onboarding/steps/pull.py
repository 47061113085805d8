"""What a pull of patients met on its way, for the map and validate steps to report.

Map and validate read N patients and each one's clinical resources. Real servers bend the rules
underneath them: some ignore ``patient=`` (every patient's resources come back), ignore ``_count``,
stop paging, throttle, or publish no CapabilityStatement. The adapter refuses what it must (another
patient's resources) and notes the rest; this module decides which clinical types a pull reads and
turns what the adapter noted into the run's summary and warnings, so nothing is counted or judged
silently on data the server got wrong.
"""

from __future__ import annotations

from typing import Any

from connections.errors import ErrorKind, RemoteError
from onboarding.mapping.profile import CLINICAL_TYPES
from onboarding.steps.base import StepContext
from onboarding.steps.configure import capability_or_absent


class ClinicalTypes:
    """The clinical types a pull reads and those it skips.

    From the CapabilityStatement when there is one; for a server without one (and a connection
    that accepts that), every type is tried and a type the server answers 404 for is dropped.
    """

    def __init__(self, ctx: StepContext, *, verb: str) -> None:
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

    def search(self, ctx: StepContext, resource_type: str, patient_id: str) -> list[dict[str, Any]]:
        """One patient's resources of one type (another patient's are refused by the adapter)."""
        if resource_type not in self.types:
            return []
        try:
            return ctx.adapter.search_clinical_raw(resource_type, patient_id)
        except RemoteError as exc:
            if not (self.probing and exc.kind is ErrorKind.NOT_FOUND):
                raise
        self.types.remove(resource_type)
        self.skipped.append(resource_type)
        ctx.log(f"The server answers 404 for {resource_type} searches, so it does not offer them: skipped.")
        return []


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
    throttling = report.get("throttling") or {}
    if throttling.get("throttled"):
        times = "time" if throttling["throttled"] == 1 else "times"
        warnings.append(
            f"The hospital throttled this run {throttling['throttled']} {times} (HTTP 429); it waited "
            f"{throttling['throttle_waited_s']:.0f} s in all. Agree a higher rate limit with the hospital, or use a "
            "smaller sample."
        )
    return warnings
