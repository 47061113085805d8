"""The data profile of a hospital: what its identifiers, extensions and codes look like in a sample.

The map step feeds every pulled resource to a ``ProfileBuilder`` one at a time (nothing is kept
but counters), and stores the result on the run: every identifier system on Patients with the
share of patients carrying it, every extension URL with counts, and for each coded element the
product needs, the code systems found with their share and the local codes to be mapped. The
code-system facts below are shared with the mapping editor and the validate step.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from onboarding.validation.fhirjson import as_items, as_object
from onboarding.validation.uscore import KNOWN_EXTENSIONS

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
NDC = "http://hl7.org/fhir/sid/ndc"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# Standard code systems: label, and the shape of a valid code (checked when people map to them).
SYSTEM_LABELS: dict[str, str] = {
    LOINC: "LOINC",
    SNOMED: "SNOMED CT",
    RXNORM: "RxNorm",
    CVX: "CVX",
    ICD10CM: "ICD-10-CM",
    ICD10PCS: "ICD-10-PCS",
    CPT: "CPT",
    NDC: "NDC",
}
ICD9CM = "http://hl7.org/fhir/sid/icd-9-cm"
# Known code systems the product does not accept as a target (codes in them still need mapping), named
# so people see "ICD-9-CM", not "local": a legacy code system is not the hospital's own invention.
KNOWN_SYSTEM_LABELS: dict[str, str] = {
    ICD9CM: "ICD-9-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10 (WHO)",
    "http://www.whocc.no/atc": "ATC",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "HL7 ActCode",
    "http://terminology.hl7.org/CodeSystem/observation-category": "HL7 observation category",
}
CODE_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    LOINC: (re.compile(r"\d{1,7}-\d"), "digits, a dash and a check digit, e.g. 2339-0"),
    SNOMED: (re.compile(r"\d{6,18}"), "6 to 18 digits, e.g. 44054006"),
    RXNORM: (re.compile(r"\d{1,9}"), "up to 9 digits, e.g. 314076"),
    CVX: (re.compile(r"\d{1,3}"), "1 to 3 digits, e.g. 140"),
    ICD10CM: (
        re.compile(r"[A-TV-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?"),
        "a letter, two characters and an optional decimal part",
    ),
    ICD10PCS: (re.compile(r"[0-9A-HJ-NP-Z]{7}"), "7 letters or digits"),
    CPT: (re.compile(r"\d{4}[0-9A-Z]"), "5 characters, e.g. 99213"),
    NDC: (re.compile(r"\d{4,5}-\d{3,4}-\d{1,2}|\d{10,11}"), "10 or 11 digits, with or without dashes"),
}


@dataclass(frozen=True)
class CodedElement:
    """A coded element the product reads, and the code systems it accepts there."""

    key: str  # e.g. "Observation.code"
    resource_type: str
    json_name: str  # the element in the resource JSON
    accepted: tuple[str, ...]  # standard systems, first is the usual mapping target

    @property
    def accepted_labels(self) -> str:
        return " or ".join(SYSTEM_LABELS[s] for s in self.accepted)


CODED_ELEMENTS: tuple[CodedElement, ...] = (
    CodedElement("Observation.code", "Observation", "code", (LOINC,)),
    CodedElement("Condition.code", "Condition", "code", (SNOMED, ICD10CM)),
    CodedElement("Encounter.type", "Encounter", "type", (SNOMED, CPT)),
    CodedElement("MedicationRequest.medication", "MedicationRequest", "medicationCodeableConcept", (RXNORM,)),
    CodedElement("AllergyIntolerance.code", "AllergyIntolerance", "code", (RXNORM, SNOMED)),
    CodedElement("Procedure.code", "Procedure", "code", (SNOMED, CPT, ICD10PCS)),
    CodedElement("Immunization.vaccineCode", "Immunization", "vaccineCode", (CVX, NDC)),
)
ELEMENTS_BY_KEY = {element.key: element for element in CODED_ELEMENTS}
ELEMENTS_BY_TYPE: dict[str, tuple[CodedElement, ...]] = {}
for _element in CODED_ELEMENTS:
    ELEMENTS_BY_TYPE[_element.resource_type] = (*ELEMENTS_BY_TYPE.get(_element.resource_type, ()), _element)
# The resource types the product reads for each patient, in the order they are pulled
# (Encounters first, so references to them can be checked as the rest arrive).
CLINICAL_TYPES: tuple[str, ...] = (
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Procedure",
    "Immunization",
)
MAX_LOCAL_CODES = 1000


def system_label(system: str) -> str:
    """How people see a code system: its name if it is a known one, else "local (<uri>)"."""
    return SYSTEM_LABELS.get(system) or KNOWN_SYSTEM_LABELS.get(system) or f"local ({system or 'no system'})"


def codings(resource: Mapping[str, Any], element: CodedElement) -> list[dict[str, Any]]:
    """The codings of a coded element (an element that repeats, like Encounter.type, flattened)."""
    value = resource.get(element.json_name)
    concepts = value if isinstance(value, list) else [value]
    return [
        coding
        for concept in concepts
        if isinstance(concept, dict)
        for coding in as_items(concept.get("coding"))
        if isinstance(coding, dict)
    ]


def best_coding(found: list[dict[str, Any]], element: CodedElement) -> dict[str, Any] | None:
    """The coding that classifies a resource: a standard one the element accepts, else the first."""
    for coding in found:
        if coding.get("system") in element.accepted:
            return coding
    return found[0] if found else None


def extension_urls(resource: Mapping[str, Any]) -> Iterator[str]:
    """Every extension URL anywhere in a resource (not the sub-extensions inside an extension)."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("extension", "modifierExtension") and isinstance(value, list):
                    for extension in value:
                        if isinstance(extension, dict) and isinstance(extension.get("url"), str):
                            yield extension["url"]
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))


def is_mrn_typed(identifier: Mapping[str, Any]) -> bool:
    """Whether an identifier says it is a medical record number (v2-0203 MR)."""
    return any(
        c.get("system") == V2_0203 and c.get("code") == "MR"
        for c in as_items(as_object(identifier.get("type")).get("coding"))
        if isinstance(c, dict)
    )


class ProfileBuilder:
    """Counts what a sample holds, one resource at a time; ``result()`` is what the map step stores."""

    def __init__(self, *, vendor_mrn_systems: tuple[str, ...] = ()) -> None:
        self.vendor_mrn_systems = vendor_mrn_systems
        self.patients = 0
        self.resources: Counter[str] = Counter()
        self.identifier_systems: Counter[str] = Counter()
        self.mrn_typed_systems: Counter[str] = Counter()
        self.extensions: Counter[str] = Counter()
        self.extension_types: dict[str, set[str]] = {}
        self.element_resources: Counter[str] = Counter()
        self.element_systems: dict[str, Counter[str]] = {e.key: Counter() for e in CODED_ELEMENTS}
        self.local_codes: dict[str, Counter[tuple[str, str]]] = {e.key: Counter() for e in CODED_ELEMENTS}
        self.local_displays: dict[tuple[str, str, str], str] = {}

    def add(self, resource: Mapping[str, Any]) -> None:
        """Count one resource as the server sent it."""
        resource_type = str(resource.get("resourceType") or "")
        self.resources[resource_type] += 1
        if resource_type == "Patient":
            self._add_patient(resource)
        for url in set(extension_urls(resource)):
            self.extensions[url] += 1
            self.extension_types.setdefault(url, set()).add(resource_type)
        for element in ELEMENTS_BY_TYPE.get(resource_type, ()):
            self._add_coded(resource, element)

    def _add_patient(self, resource: Mapping[str, Any]) -> None:
        self.patients += 1
        identifiers = [i for i in as_items(resource.get("identifier")) if isinstance(i, dict) and i.get("system")]
        for system in {str(i["system"]) for i in identifiers}:
            self.identifier_systems[system] += 1
        for system in {str(i["system"]) for i in identifiers if is_mrn_typed(i)}:
            self.mrn_typed_systems[system] += 1

    def _add_coded(self, resource: Mapping[str, Any], element: CodedElement) -> None:
        coding = best_coding(codings(resource, element), element)
        if coding is None:
            return
        system = str(coding.get("system") or "")
        self.element_resources[element.key] += 1
        self.element_systems[element.key][system] += 1
        if system not in element.accepted:
            code = str(coding.get("code") or "")
            self.local_codes[element.key][(system, code)] += 1
            self.local_displays.setdefault((element.key, system, code), str(coding.get("display") or ""))

    def suggested_mrn_system(self) -> tuple[str, str]:
        """The identifier system to use as the MRN, and why, from the vendor default and the census."""
        for system in self.vendor_mrn_systems:
            if self.identifier_systems[system]:
                share = _share(self.identifier_systems[system], self.patients)
                return system, f"the vendor's MRN system, carried by {share}% of patients"
        if self.mrn_typed_systems:
            system, count = self.mrn_typed_systems.most_common(1)[0]
            return system, f"typed as MRN (v2-0203 MR) on {_share(count, self.patients)}% of patients"
        return "", "no identifier system looks like an MRN: choose it by hand"

    def result(self) -> dict[str, Any]:
        """The profile as plain data, for the run's result and the mapping page."""
        mrn_system, mrn_reason = self.suggested_mrn_system()
        return {
            "patients": self.patients,
            "resources": dict(sorted(self.resources.items())),
            "identifier_systems": [
                {
                    "system": system,
                    "patients": count,
                    "share": _share(count, self.patients),
                    "mrn_typed": system in self.mrn_typed_systems,
                }
                for system, count in sorted(self.identifier_systems.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "extensions": [
                {
                    "url": url,
                    "resources": count,
                    "types": sorted(self.extension_types[url]),
                    "known": url in KNOWN_EXTENSIONS,
                }
                for url, count in sorted(self.extensions.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "elements": [self._element_result(element) for element in CODED_ELEMENTS],
            "suggested_mrn_system": mrn_system,
            "mrn_reason": mrn_reason,
        }

    def _element_result(self, element: CodedElement) -> dict[str, Any]:
        total = self.element_resources[element.key]
        systems = self.element_systems[element.key]
        local = self.local_codes[element.key]
        return {
            "element": element.key,
            "resources": total,
            "accepted": element.accepted_labels,
            "systems": [
                {
                    "system": system,
                    "label": system_label(system),
                    "resources": count,
                    "share": _share(count, total),
                    "standard": system in element.accepted,
                }
                for system, count in sorted(systems.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "local_codes": [
                {
                    "system": system,
                    "code": code,
                    "display": self.local_displays[(element.key, system, code)],
                    "count": count,
                }
                for (system, code), count in sorted(local.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_LOCAL_CODES]
            ],
        }


def _share(count: int, total: int) -> float:
    return round(100 * count / total, 1) if total else 0.0
