"""Map: profile a sample of the hospital's data and turn it into a mapping people finish and sign off.

The step pulls N patients (the tenant's policy, default 10, at most 1,000) and their clinical
resources through the adapter, several patients at once within the connection's agreed limits (or
from a FHIR Bulk Data export, when that is the connection's pull method), counting what it sees (identifier systems,
extensions, code systems and local codes). It stores the profile on the run and writes the next
mapping version: earlier decisions kept, this sample's local codes added with their counts. It
passes when the mapping covers the required elements; the version is then offered to hospital IT.
"""

from __future__ import annotations

import time
from typing import Any

from connections.errors import RemoteError
from connections.models import PullMethod
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import ProfileBuilder
from onboarding.steps.base import StepContext, StepModule, StepOutcome
from onboarding.steps.pull import BulkPull, ClinicalTypes, pull_patients, pull_report

PATIENT_PAGE_SIZE = 50
# Progress (also the heartbeat and the cancel check) is written at most this often: once per
# patient would cost a database write for every patient of a thousand.
PROGRESS_EVERY_S = 0.5


class Progress:
    """Reports progress through the context, throttled, and always for the last patient."""

    def __init__(self, ctx: StepContext, total: int, verb: str) -> None:
        self.ctx, self.total, self.verb = ctx, total, verb
        self._last = 0.0

    def __call__(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or done >= self.total or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self.ctx.progress(done, self.total, f"{self.verb} {done} of {self.total} patients")


def readable_types(ctx: StepContext) -> tuple[list[str], list[str]]:
    """The clinical types the server lets us search, and those it does not offer (skipped, and said so)."""
    types = ClinicalTypes(ctx, verb="read")
    return types.types, types.skipped


def stopped_outcome(
    ctx: StepContext, exc: RemoteError, *, done: int, size: int, verb: str, summary: dict[str, Any]
) -> StepOutcome:
    """A pull a remote error stopped part-way: failed with that error, saying how far it got."""
    ctx.progress(done, size, f"Stopped after {done} of {size} patients: {exc.kind.value}")
    ctx.log(f"Stopped after {done} of {size} patients: {exc.message}", level="error", error_kind=exc.kind.value)
    summary.update(partial=True, planned_patients=size, stopped={"kind": exc.kind.value, "message": exc.message})
    throttling = ctx.throttling()
    return StepOutcome(
        passed=False,
        summary=summary,
        error_kind=exc.kind.value,
        error_message=f"Stopped after {done} of {size} patients {verb}: {exc.message}",
        error_hint=exc.hint,
        error_detail={**exc.detail, "throttling": throttling} if throttling else exc.detail,
    )


class MapStep(StepModule):
    """Profile a sample, write the next mapping version, pass when it is complete."""

    key = "map"
    label = "Map"
    description = "Find identifier systems, extensions and local codes; map them; hospital IT signs off."
    requires = ("test",)

    def run(self, ctx: StepContext) -> StepOutcome:
        """Pull, profile, record the mapping version and judge its coverage."""
        run = ctx.run
        onboarding = run.onboarding
        size = mappings.policy_for(onboarding.tenant).map_sample_size
        ctx.progress(0, size, "Reading which resource types the server offers")
        builder = ProfileBuilder(vendor_mrn_systems=ctx.adapter.mrn_systems())
        progress = Progress(ctx, size, "Profiled")
        done = 0
        types: ClinicalTypes | None = None
        try:
            types = ClinicalTypes(ctx, verb="profiled")
            if ctx.connection.pull_method == PullMethod.BULK:
                with BulkPull(ctx, size=size, types=types, verb="Profiled") as bulk:
                    try:
                        for patient in bulk.patients():
                            builder.add(patient)
                            done += 1
                        for _type, resource, _owner in bulk.resources():
                            builder.add(resource)
                    finally:
                        ctx.bulk_export = bulk.report()
            else:
                for patient, found in pull_patients(ctx, size=size, types=types, page_size=PATIENT_PAGE_SIZE):
                    builder.add(patient)
                    for resources in found.values():
                        for resource in resources:
                            builder.add(resource)
                    done += 1
                    progress(done)
        except RemoteError as exc:
            # No mapping version from a part of the sample: it would drop the codes not seen yet.
            partial = {"patients": done, "types_skipped": types.skipped if types else [], **pull_report(ctx)}
            return stopped_outcome(ctx, exc, done=done, size=size, verb="profiled", summary=partial)
        if builder.patients < size:
            progress(builder.patients, final=True)  # the server had fewer patients than asked
        profile = builder.result()
        report = pull_report(ctx)
        for warning in report.get("warnings", []):
            ctx.log(warning, level="warning")
        summary: dict[str, Any] = {"profile": profile, "types_skipped": types.skipped, **report}
        if not builder.patients:
            return StepOutcome(
                passed=False,
                summary=summary,
                error_kind="no_data",
                error_message="The Patient search returned no patients, so there is nothing to profile.",
                error_hint="Ask the hospital to grant this client access to (test) patients, then re-run map.",
            )
        mapping = mappings.record_map_result(onboarding=onboarding, profile=profile, run=run)
        cover = mappings.coverage(mapping)
        summary["mapping"] = {
            "version": mapping.version,
            "mrn_system": mapping.mrn_system,
            "unmapped_codes": len(cover.unmapped),
            "undecided_extensions": len(cover.undecided_extensions),
        }
        ctx.log(f"Mapping version {mapping.version} written; {cover.summary()}")
        if cover.complete:
            return StepOutcome(passed=True, summary=summary)
        return StepOutcome(
            passed=False,
            summary=summary,
            error_kind="mapping_incomplete",
            error_message=cover.summary(),
            error_hint="Open the connection's mapping, map the local codes (inline or by CSV), then re-run map.",
        )
