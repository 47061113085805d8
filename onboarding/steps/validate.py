"""Validate: pull N patients with their clinical resources and check them against the signed mapping.

Patient by patient, in the server's order (several pulled at once within the connection's agreed
limits, or streamed from a FHIR Bulk Data export; never the whole pull in memory), every resource
is checked for:
- structure, against fhirclient's models (through the adapters package);
- US Core 6.1.0, against the profiles the resource claims or its code and category select: mandatory
  elements and slices at every depth, fixed and pattern values, allowed types, required bindings
  (errors) and extensible ones (warnings), from the table derived from the guide
  (``onboarding.validation.uscore``); must-support coverage is reported per profile, never an error;
- code systems after the mapping: each coded element carries a system the product accepts, or a
  local code the mapping maps; an unmapped local code is an error;
- references: ``subject``/``patient`` point at the patient pulled, ``encounter`` at one of its
  Encounters;
- patients: the mapped MRN is present and unique, a second MRN-typed system is flagged, likely
  duplicates (same normalised name, birth date and gender under another id) and implausible dates too.

Findings carry pseudonymous keys, element paths and rule ids only. The step fails when more
patients than the tenant's thresholds allow have unwaived errors (or warnings); a failed run keeps
the offending raw resources, encrypted and for a limited time, for the engineers' review.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Container
from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.db.models import Q
from django.utils import timezone

from connections.adapters import FHIRAdapter
from connections.adapters.digests import DigestMap, DigestSet, DigestTexts, HexKeys, digest
from connections.adapters.structure import element_path, structure_problems
from connections.errors import ErrorKind, RemoteError
from connections.models import PullMethod
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import (
    CODED_ELEMENTS,
    ELEMENTS_BY_TYPE,
    KNOWN_SYSTEM_LABELS,
    SYSTEM_LABELS,
    best_coding,
    codings,
    is_mrn_typed,
)
from onboarding.models import Mapping, Severity, StepRun
from onboarding.review import services as review
from onboarding.review.services import NewFinding
from onboarding.steps.base import StepContext, StepModule, StepOutcome
from onboarding.steps.map import PATIENT_PAGE_SIZE, Progress, stopped_outcome
from onboarding.steps.pull import BulkPull, ClinicalTypes, pull_patients, pull_report
from onboarding.validation import uscore
from onboarding.validation.fhirjson import as_items

ERROR, WARNING = Severity.ERROR.value, Severity.WARNING.value
PATIENT_KEY_WIDTH = 24  # hex characters of review.patient_key
EARLIEST_PLAUSIBLE = "1900-01-01"
# Clinical date elements checked for plausibility (top level, or inside the named element).
DATE_ELEMENTS = (
    "effectiveDateTime",
    "issued",
    "onsetDateTime",
    "abatementDateTime",
    "recordedDate",
    "authoredOn",
    "occurrenceDateTime",
    "performedDateTime",
)
PERIOD_ELEMENTS = ("period", "effectivePeriod", "performedPeriod")
REFERENCE_OWNERS = ("subject", "patient")
_NOT_LETTERS = re.compile(r"[^a-z]")
# Coded elements whose codes the mapping owns: a code outside US Core's extensible value set there is
# reported once, by codes.unmapped-local against the systems the product accepts, not twice.
_MAPPING_OWNED = frozenset(
    path for element in CODED_ELEMENTS for path in (element.key, f"{element.key}[x]", element.json_name)
)


@dataclass(frozen=True)
class MappingRules:
    """What the validator needs from a signed mapping."""

    version: int
    mrn_system: str
    mapped_codes: frozenset[tuple[str, str, str]]  # (element, local system, local code) with a target
    decided_extensions: frozenset[str]

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> MappingRules:
        """The decisions of one signed mapping version."""
        return cls(
            version=mapping.version,
            mrn_system=mapping.mrn_system,
            mapped_codes=frozenset(
                (row["element"], row["system"], row["code"]) for row in mapping.codes if row.get("target_code")
            ),
            decided_extensions=frozenset(url for url, how in mapping.extension_handling.items() if how),
        )


@dataclass
class Validator:
    """The checks, over plain dicts. Remembers across patients only what uniqueness checks need."""

    rules: MappingRules
    today: date
    patients: int = 0
    resources: Counter[str] = field(default_factory=Counter)
    # Hashed MRN, and hashed name + birth date + gender, -> hashed patient id: 64-bit digests in
    # compact arrays, so a thousand patients cost about 16 bytes each and no MRN or name is held.
    _mrns: DigestMap = field(default_factory=DigestMap)
    _people: DigestMap = field(default_factory=DigestMap)
    _must_support: dict[str, set[int]] = field(default_factory=dict)  # profile -> must-support items not seen yet
    _profile_counts: Counter[str] = field(default_factory=Counter)

    # -- patients ------------------------------------------------------------------------------

    def check_patient(self, patient: MappingType[str, Any]) -> list[NewFinding]:
        """Findings on one Patient resource, including those against patients seen before."""
        self.patients += 1
        found = self._common(patient)
        patient_id = str(patient.get("id") or "")
        me = digest(patient_id)
        identifiers = [i for i in as_items(patient.get("identifier")) if isinstance(i, dict)]
        mrns = [i for i in identifiers if i.get("system") == self.rules.mrn_system and i.get("value")]
        if not mrns:
            found.append(_f(ERROR, "patient.mrn-missing", "Patient", "Patient.identifier", _mrn_missing(self.rules)))
        for identifier in mrns:
            key = digest(self.rules.mrn_system, str(identifier["value"]))
            if self._mrns.setdefault(key, me) != me:
                found.append(
                    _f(ERROR, "patient.mrn-duplicate", "Patient", "Patient.identifier", _MRN_DUPLICATE, "identifier")
                )
        for system in sorted({str(i.get("system")) for i in identifiers if is_mrn_typed(i)} - {self.rules.mrn_system}):
            found.append(
                _f(
                    WARNING,
                    "patient.second-mrn-system",
                    "Patient",
                    "Patient.identifier",
                    f"An MRN-type identifier in {system} besides the mapped MRN system: matching on the wrong one "
                    "would link records to the wrong patient.",
                    "identifier",
                    discriminator=system,
                )
            )
        birth = patient.get("birthDate")
        if not birth:
            found.append(
                _f(
                    WARNING,
                    "patient.birth-date-missing",
                    "Patient",
                    "Patient.birthDate",
                    "No birth date: the product cannot match this patient safely.",
                )
            )
        elif isinstance(birth, str):
            found.extend(self._implausible("Patient", "birthDate", birth, None))
        person = _person_key(patient)
        if person is not None and self._people.setdefault(person, me) != me:
            found.append(
                _f(
                    WARNING,
                    "patient.likely-duplicate",
                    "Patient",
                    "Patient",
                    "Same normalised name, birth date and gender as another patient in the pull: "
                    "likely the same person registered twice.",
                )
            )
        return found

    # -- clinical resources -------------------------------------------------------------------------

    def check_resource(
        self,
        resource: MappingType[str, Any],
        *,
        patient_id: str,
        encounter_ids: Container[str],
        birth_date: str | None,
    ) -> list[NewFinding]:
        """Findings on one clinical resource of the patient being pulled."""
        found = self._common(resource)
        resource_type = str(resource.get("resourceType"))
        found.extend(self._codes(resource, resource_type))
        found.extend(self._references(resource, resource_type, patient_id, encounter_ids))
        for name in DATE_ELEMENTS:
            value = resource.get(name)
            if isinstance(value, str):
                found.extend(self._implausible(resource_type, name, value, birth_date))
        for name in PERIOD_ELEMENTS:
            period = resource.get(name)
            if isinstance(period, dict):
                for end in ("start", "end"):
                    if isinstance(period.get(end), str):
                        found.extend(self._implausible(resource_type, f"{name}.{end}", period[end], birth_date))
        return found

    # -- shared checks ----------------------------------------------------------------------------

    def _common(self, resource: MappingType[str, Any]) -> list[NewFinding]:
        resource_type = str(resource.get("resourceType"))
        self.resources[resource_type] += 1
        found = [
            _f(
                ERROR,
                "structure.invalid",
                resource_type,
                f"{resource_type}.{element_path(where)}",
                f"{where} {problem}.",
                where,
                where,
            )
            for where, problem in structure_problems(resource)
        ]
        found.extend(self._us_core(resource, resource_type))
        found.extend(self._extensions(resource, resource_type))
        return found

    def _us_core(self, resource: MappingType[str, Any], resource_type: str) -> list[NewFinding]:
        found: list[NewFinding] = []
        reported: set[tuple[str, str, str]] = set()
        for profile in uscore.profiles_for(resource):
            self._profile_counts[profile.name] += 1
            missing = self._must_support.get(profile.name)
            if missing is None:
                missing = self._must_support[profile.name] = set(range(len(profile.must_support)))
            seen: set[int] = set()
            for problem in profile.check(resource, seen if missing else None):
                if problem.path in _MAPPING_OWNED and problem.rule == "uscore.binding-extensible":
                    continue  # the mapping owns this element's codes (codes.unmapped-local reports them)
                key = (problem.rule, problem.path, problem.location)
                if key in reported:
                    continue  # two claimed profiles sharing one rule report it once, under the first
                reported.add(key)
                found.append(
                    _f(
                        problem.severity,
                        problem.rule,
                        resource_type,
                        problem.path,
                        problem.message,
                        problem.location,
                        discriminator=problem.location,
                        profile=profile.name,
                    )
                )
            missing -= seen
        return found

    def _extensions(self, resource: MappingType[str, Any], resource_type: str) -> list[NewFinding]:
        found: list[NewFinding] = []
        for index, extension in enumerate(as_items(resource.get("extension"))):
            url = extension.get("url") if isinstance(extension, dict) else None
            if not isinstance(url, str) or url in uscore.KNOWN_EXTENSIONS or url in self.rules.decided_extensions:
                continue
            found.append(
                _f(
                    WARNING,
                    "extensions.unknown",
                    resource_type,
                    f"{resource_type}.extension",
                    f"Extension {url} is not one the product knows: decide in the mapping whether to use or ignore it.",
                    f"extension[{index}]",
                    discriminator=url,
                )
            )
        return found

    def _codes(self, resource: MappingType[str, Any], resource_type: str) -> list[NewFinding]:
        found: list[NewFinding] = []
        for element in ELEMENTS_BY_TYPE.get(resource_type, ()):
            all_codings = codings(resource, element)
            coding = best_coding(all_codings, element)
            if coding is None or coding.get("system") in element.accepted:
                continue
            if any(
                (element.key, c.get("system", ""), c.get("code", "")) in self.rules.mapped_codes for c in all_codings
            ):
                continue
            system = str(coding.get("system") or "")
            known = SYSTEM_LABELS.get(system) or KNOWN_SYSTEM_LABELS.get(system)
            code = coding.get("code")
            what = f"{known} code {code}" if known else f"Local code {code} ({system or 'no system'})"
            found.append(
                _f(
                    ERROR,
                    "codes.unmapped-local",
                    resource_type,
                    element.key,
                    f"{what} is not mapped to {element.accepted_labels}: add it to the mapping.",
                    f"{element.json_name}.coding[{all_codings.index(coding)}]",
                )
            )
        return found

    def _references(
        self, resource: MappingType[str, Any], resource_type: str, patient_id: str, encounter_ids: Container[str]
    ) -> list[NewFinding]:
        found: list[NewFinding] = []
        for name in REFERENCE_OWNERS:
            reference = resource.get(name)
            if isinstance(reference, dict) and _target_id(reference, "Patient") != patient_id:
                found.append(_unresolved(resource_type, name, "the patient it was pulled for"))
        encounter = resource.get("encounter")
        if (
            resource_type != "Encounter"
            and isinstance(encounter, dict)
            and _target_id(encounter, "Encounter") not in encounter_ids
        ):
            found.append(_unresolved(resource_type, "encounter", "an Encounter of the same patient in the pull"))
        return found

    def _implausible(self, resource_type: str, name: str, value: str, birth_date: str | None) -> list[NewFinding]:
        day = value[:10]
        if day < EARLIEST_PLAUSIBLE:
            why = f"is before {EARLIEST_PLAUSIBLE[:4]}"
        elif day > self.today.isoformat():
            why = "is in the future"
        elif birth_date and day < birth_date[:10]:
            why = "is before the patient's birth date"
        else:
            return []
        return [
            _f(
                WARNING,
                "dates.implausible",
                resource_type,
                f"{resource_type}.{name}",
                f"{name} {why}: check the source system's date handling.",
                name,
            )
        ]

    def must_support_summary(self) -> list[dict[str, Any]]:
        """Per profile the pull touched: how many resources, and the must-support elements never populated."""
        names = {p.name: p for p in uscore.table().profiles.values()}
        return [
            {
                "profile": name,
                "resources": count,
                "never_seen": [names[name].must_support[i] for i in sorted(self._must_support.get(name, ()))],
            }
            for name, count in sorted(self._profile_counts.items())
        ]


_MRN_DUPLICATE = "The MRN is also carried by another patient in the pull: MRNs must be unique."


def _mrn_missing(rules: MappingRules) -> str:
    return f"No identifier in the mapped MRN system ({rules.mrn_system}): the product cannot match this patient."


def _unresolved(resource_type: str, name: str, what: str) -> NewFinding:
    return _f(
        ERROR,
        "references.unresolved",
        resource_type,
        f"{resource_type}.{name}",
        f"{name} does not point at {what}.",
        name,
    )


def _f(
    severity: str,
    rule: str,
    resource_type: str,
    path: str,
    message: str,
    location: str = "",
    discriminator: str = "",
    profile: str = "",
) -> NewFinding:
    return NewFinding(severity, rule, resource_type, path, message, location, discriminator, profile)


def _target_id(reference: MappingType[str, Any], resource_type: str) -> str | None:
    """The id a reference points at if it names that type ("Type/id" or an absolute URL ending so)."""
    value = reference.get("reference")
    if not isinstance(value, str):
        return None
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _person_key(patient: MappingType[str, Any]) -> int | None:
    """Normalised name + birth date + gender, hashed (no name is held); None when any of them is missing."""
    names = [n for n in as_items(patient.get("name")) if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    birth, gender = patient.get("birthDate"), patient.get("gender")
    if name is None or not birth or not gender:
        return None
    given = " ".join(str(g) for g in as_items(name.get("given")))
    normal = _normalise(f"{given} {name.get('family') or ''}")
    return digest(normal, str(birth), str(gender)) if normal else None


def _normalise(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _NOT_LETTERS.sub("", plain)


# --- the step --------------------------------------------------------------------------------------------


class ValidateStep(StepModule):
    """Check N patients' data against the signed mapping and the tenant's thresholds."""

    key = "validate"
    label = "Validate"
    description = "Pull patients' data and check structure, US Core, codes, references and duplicates."
    # A current, signed mapping is what validate needs (its gate), not a passing last map run: a map
    # re-run that failed leaves the signed version as it was.
    requires = ("test",)
    gates = (mappings.SIGN_OFF_GATE,)

    def run(self, ctx: StepContext) -> StepOutcome:
        """Refuse without a signed mapping; otherwise pull, check, store findings and judge."""
        run = ctx.run
        onboarding = run.onboarding
        mapping = mappings.signed_mapping(onboarding)
        if mapping is None:
            # The engine refused the start without a live sign-off; the mapping changed since.
            latest = mappings.latest_mapping(onboarding)
            return StepOutcome(
                passed=False,
                summary={"mapping_version": latest.version if latest else None},
                error_kind="not_signed_off",
                error_message=(
                    f"Mapping version {latest.version} is not signed off by hospital IT."
                    if latest
                    else "There is no mapping yet."
                ),
                error_hint="Finish the mapping, have hospital IT sign it off on the mapping page, then re-run.",
            )
        policy = mappings.policy_for(onboarding.tenant)
        validator = Validator(rules=MappingRules.from_mapping(mapping), today=timezone.localdate())
        sink = review.FindingSink(run)
        size = policy.validate_sample_size
        ctx.progress(0, size, "Reading which resource types the server offers")
        # Pseudonymous keys of the patients checked to the end, for the diff, 12 bytes each.
        checked = HexKeys(PATIENT_KEY_WIDTH)
        types: ClinicalTypes | None = None
        try:
            types = ClinicalTypes(ctx, verb="validated")
            self._pull(ctx, validator, sink, size, types, checked)
        except RemoteError as exc:
            sink.flush()
            # A partial run says how far it got; its findings stand, and its diff compares only those patients.
            partial = _summary(run, validator, sink, policy, types.skipped if types else [], checked, ctx)
            return stopped_outcome(ctx, exc, done=len(checked), size=size, verb="validated", summary=partial)
        sink.flush()
        return _outcome(run, policy, _summary(run, validator, sink, policy, types.skipped, checked, ctx))

    def _pull(
        self,
        ctx: StepContext,
        validator: Validator,
        sink: review.FindingSink,
        size: int,
        types: ClinicalTypes,
        checked: HexKeys,
    ) -> None:
        progress = Progress(ctx, size, "Validated")
        if ctx.connection.pull_method == PullMethod.BULK:
            self._bulk(ctx, validator, sink, size, types, checked)
            return
        for patient, found in pull_patients(ctx, size=size, types=types, page_size=PATIENT_PAGE_SIZE, search=_clinical):
            patient_id = str(patient.get("id") or "")
            for finding in validator.check_patient(patient):
                sink.add(finding, patient, patient_id)
            birth = patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None
            encounter_ids: set[str] = set()
            for resource_type, resources in found.items():
                for resource in resources:
                    if resource_type == "Encounter":
                        encounter_ids.add(str(resource.get("id")))
                    for finding in validator.check_resource(
                        resource, patient_id=patient_id, encounter_ids=encounter_ids, birth_date=birth
                    ):
                        sink.add(finding, resource, patient_id)
            checked.append(review.patient_key(sink.tenant, patient_id) if patient_id else "")
            progress(len(checked))
        if len(checked) < size:
            progress(len(checked), final=True)  # the server had fewer patients than asked

    def _bulk(
        self,
        ctx: StepContext,
        validator: Validator,
        sink: review.FindingSink,
        size: int,
        types: ClinicalTypes,
        checked: HexKeys,
    ) -> None:
        """The same checks over a bulk export: the sample's patients first, then their resources type by type."""
        # Per patient of the sample, as digests in compact arrays: the birth date, and which Encounters
        # are its own.
        births = DigestTexts()
        encounters = DigestSet()
        with BulkPull(ctx, size=size, types=types, verb="Validated") as bulk:
            try:
                for patient in bulk.patients():
                    patient_id = str(patient.get("id") or "")
                    for finding in validator.check_patient(patient):
                        sink.add(finding, patient, patient_id)
                    birth = patient.get("birthDate")
                    # What the date checks read of it; "" (no birth date) reads as None does.
                    births[digest(patient_id)] = birth[:10] if isinstance(birth, str) else ""
                    # Counted from here: a file that breaks later still leaves these patients' findings.
                    checked.append(review.patient_key(sink.tenant, patient_id) if patient_id else "")
                for resource_type, resource, owner in bulk.resources():
                    if resource_type == "Encounter":
                        encounters.add(digest(owner, str(resource.get("id"))))
                    for finding in validator.check_resource(
                        resource,
                        patient_id=owner,
                        encounter_ids=_OwnEncounters(owner, encounters),
                        birth_date=births.get(digest(owner)),
                    ):
                        sink.add(finding, resource, owner)
            finally:
                ctx.bulk_export = bulk.report()
        ctx.progress(len(checked), size, f"Validated {len(checked)} of {size} patients")


class _OwnEncounters:
    """One patient's Encounter ids, answered from the bulk pull's digests of (patient, encounter)."""

    def __init__(self, owner: str, digests: DigestSet) -> None:
        self.owner, self.digests = owner, digests

    def __contains__(self, encounter_id: object) -> bool:
        return isinstance(encounter_id, str) and digest(self.owner, encounter_id) in self.digests


def _clinical(
    ctx: StepContext, types: ClinicalTypes, resource_type: str, patient_id: str, adapter: FHIRAdapter
) -> list[dict[str, Any]]:
    try:
        return types.search(ctx, resource_type, patient_id, adapter)
    except RemoteError as exc:
        if exc.kind is ErrorKind.BAD_REQUEST:
            # An id that cannot name a patient in a search (structure findings say why); skip it.
            ctx.log(f"{resource_type} of one patient could not be searched: {exc.message}", level="warning")
            return []
        raise


def _summary(
    run: StepRun,
    validator: Validator,
    sink: review.FindingSink,
    policy: Any,
    skipped: list[str],
    checked: HexKeys,
    ctx: StepContext,
) -> dict[str, Any]:
    """The run's summary: counts, shares of patients affected (unwaived findings), what the pull met."""
    total = len(checked)
    waivers = review.waived_pairs(run.onboarding.tenant)
    waived = Q()
    for rule, path in waivers:
        waived |= Q(rule=rule, path=path)
    findings = run.findings.all()
    counting = findings.exclude(waived) if waivers else findings
    if total < validator.patients:
        # A pull stopped inside a patient: shares count only the patients checked to the end.
        counting = counting.filter(patient_key__in=checked.sorted_unique())
    with_error = counting.filter(severity=ERROR).values("patient_key").distinct().count()
    with_warning = counting.filter(severity=WARNING).values("patient_key").distinct().count()
    error_share = round(100 * with_error / total, 1) if total else 0.0
    warning_share = round(100 * with_warning / total, 1) if total else 0.0
    report = pull_report(ctx)
    for warning in report.get("warnings", []):
        ctx.log(warning, level="warning")
    return {
        "patients": total,
        "patient_keys": checked.sorted_unique(),
        "resources": dict(sorted(validator.resources.items())),
        "types_skipped": skipped,
        "mapping_version": validator.rules.version,
        "findings": {str(k): v for k, v in sink.counts.items()},
        "waived": findings.filter(waived).count() if waivers else 0,
        "patients_with_error": with_error,
        "patients_with_warning": with_warning,
        "error_share": error_share,
        "warning_share": warning_share,
        "thresholds": {
            "max_error_patient_pct": policy.max_error_patient_pct,
            "max_warning_patient_pct": policy.max_warning_patient_pct,
        },
        "must_support": validator.must_support_summary(),
        **report,
    }


def _outcome(run: StepRun, policy: Any, summary: dict[str, Any]) -> StepOutcome:
    """Apply the tenant's thresholds to the summary's shares of patients affected."""
    total = summary["patients"]
    error_share, warning_share = summary["error_share"], summary["warning_share"]
    if total == 0:
        return StepOutcome(
            passed=False,
            summary=summary,
            error_kind="no_data",
            error_message="The Patient search returned no patients, so nothing was validated.",
            error_hint="Ask the hospital to grant this client access to (test) patients, then re-run validate.",
        )
    over = []
    if error_share > policy.max_error_patient_pct:
        over.append(f"{error_share}% of patients have an error (at most {policy.max_error_patient_pct}% allowed)")
    if warning_share > policy.max_warning_patient_pct:
        over.append(f"{warning_share}% of patients have a warning (at most {policy.max_warning_patient_pct}% allowed)")
    if not over:
        review.discard_raw_resources(run)
        return StepOutcome(passed=True, summary=summary)
    return StepOutcome(
        passed=False,
        summary=summary,
        error_kind="validation_failed",
        error_message="; ".join(over).capitalize() + ".",
        error_hint="Open the review: fix the data or the mapping, or have an engineer waive accepted findings; re-run.",
    )
