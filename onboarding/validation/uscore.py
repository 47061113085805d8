"""US Core 6.1.0, reduced to the facts the validate step checks, for the resource types the product reads.

Written by hand from the US Core 6.1.0 implementation guide (the Inferno test kit's metadata of its
profiles): per profile, the elements with a minimum cardinality of one ("mandatory"), the
must-support elements and extensions, the category a resource must carry, and the LOINC code a
vital-sign profile fixes. Nothing here is read from the guide at run time.

Path syntax: dotted JSON element names from the resource root. ``a.b`` is mandatory *within*
each ``a`` that is present (``Patient.telecom.system``: every telecom has a system), exactly as
the guide's cardinalities nest. ``x[x]`` is a choice: any ``x<Type>`` element satisfies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onboarding.validation.fhirjson import as_items, as_object

BASE = "http://hl7.org/fhir/us/core/StructureDefinition/"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
US_CORE_CONDITION_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/condition-category"


@dataclass(frozen=True)
class Profile:
    """One US Core profile's checkable facts."""

    name: str  # the last segment of the profile URL
    resource_type: str
    mandatory: tuple[str, ...]
    must_support: tuple[str, ...]
    extensions: tuple[str, ...] = ()  # must-support extension URLs
    # The resource must carry at least one of these (system, code) pairs in its category.
    category: tuple[tuple[str, str], ...] = ()
    # A (system, code) the resource's code must carry (vital-sign profiles fix their LOINC code).
    code: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return BASE + self.name


# Every vital-sign profile shares these cardinalities (US Core's vital signs base).
_VITAL_MANDATORY = (
    "status",
    "category",
    "category.coding",
    "category.coding.system",
    "category.coding.code",
    "code",
    "subject",
    "effective[x]",
    "value[x].value",
    "value[x].unit",
    "value[x].system",
    "value[x].code",
    "component.code",
)
_VITAL_MUST_SUPPORT = ("status", "category", "code", "subject", "effectiveDateTime", "valueQuantity")
_VITAL_SIGNS = ((OBSERVATION_CATEGORY, "vital-signs"),)


def _vital(name: str, loinc: str) -> Profile:
    return Profile(
        name=name,
        resource_type="Observation",
        mandatory=_VITAL_MANDATORY,
        must_support=_VITAL_MUST_SUPPORT,
        category=_VITAL_SIGNS,
        code=(LOINC, loinc),
    )


PATIENT = Profile(
    name="us-core-patient",
    resource_type="Patient",
    mandatory=(
        "identifier",
        "identifier.system",
        "identifier.value",
        "name",
        "telecom.system",
        "telecom.value",
        "gender",
        "communication.language",
        "link.other",
        "link.type",
    ),
    must_support=(
        "identifier",
        "name",
        "name.family",
        "name.given",
        "telecom",
        "telecom.use",
        "gender",
        "birthDate",
        "address",
        "address.line",
        "address.city",
        "address.state",
        "address.postalCode",
        "communication",
        "communication.language",
    ),
    extensions=(
        BASE + "us-core-race",
        BASE + "us-core-ethnicity",
        BASE + "us-core-tribal-affiliation",
        BASE + "us-core-sex",
    ),
)
ENCOUNTER = Profile(
    name="us-core-encounter",
    resource_type="Encounter",
    mandatory=(
        "identifier.system",
        "identifier.value",
        "status",
        "statusHistory.status",
        "statusHistory.period",
        "class",
        "classHistory.class",
        "classHistory.period",
        "type",
        "subject",
        "diagnosis.condition",
        "location.location",
    ),
    must_support=(
        "identifier",
        "status",
        "class",
        "type",
        "subject",
        "participant",
        "period",
        "reasonCode",
        "hospitalization",
        "location",
        "serviceProvider",
    ),
)
CONDITION_ENCOUNTER_DIAGNOSIS = Profile(
    name="us-core-condition-encounter-diagnosis",
    resource_type="Condition",
    mandatory=("category", "code", "subject"),
    must_support=("category", "code", "subject", "encounter", "abatementDateTime", "recordedDate"),
    category=((CONDITION_CATEGORY, "encounter-diagnosis"),),
)
CONDITION_PROBLEMS = Profile(
    name="us-core-condition-problems-health-concerns",
    resource_type="Condition",
    mandatory=("category", "code", "subject"),
    must_support=(
        "clinicalStatus",
        "verificationStatus",
        "category",
        "code",
        "subject",
        "onsetDateTime",
        "abatementDateTime",
        "recordedDate",
    ),
    extensions=("http://hl7.org/fhir/StructureDefinition/condition-assertedDate",),
    category=((CONDITION_CATEGORY, "problem-list-item"), (US_CORE_CONDITION_CATEGORY, "health-concern")),
)
OBSERVATION_LAB = Profile(
    name="us-core-observation-lab",
    resource_type="Observation",
    mandatory=("status", "category", "code", "subject", "component.code"),
    must_support=("status", "category", "code", "subject", "effectiveDateTime", "value[x]", "specimen"),
    category=((OBSERVATION_CATEGORY, "laboratory"),),
)
OBSERVATION_CLINICAL_RESULT = Profile(
    name="us-core-observation-clinical-result",
    resource_type="Observation",
    mandatory=("status", "category", "code", "subject", "component.code"),
    must_support=("status", "category", "code", "subject", "effectiveDateTime", "value[x]"),
    category=tuple(
        (OBSERVATION_CATEGORY, code)
        for code in ("laboratory", "exam", "therapy", "imaging", "procedure", "vital-signs", "activity")
    ),
)
BLOOD_PRESSURE = Profile(
    name="us-core-blood-pressure",
    resource_type="Observation",
    mandatory=(
        "status",
        "category",
        "category.coding",
        "category.coding.system",
        "category.coding.code",
        "code",
        "subject",
        "effective[x]",
        "component",
        "component.code",
        "component.value[x].value",
        "component.value[x].unit",
        "component.value[x].system",
        "component.value[x].code",
    ),
    must_support=("status", "category", "code", "subject", "effectiveDateTime", "component", "component.code"),
    category=_VITAL_SIGNS,
    code=(LOINC, "85354-9"),
)
MEDICATION_REQUEST = Profile(
    name="us-core-medicationrequest",
    resource_type="MedicationRequest",
    mandatory=("status", "intent", "medication[x]", "subject", "substitution.allowed[x]"),
    must_support=(
        "status",
        "intent",
        "category",
        "medication[x]",
        "subject",
        "encounter",
        "authoredOn",
        "requester",
        "dosageInstruction",
        "dosageInstruction.text",
    ),
)
ALLERGY_INTOLERANCE = Profile(
    name="us-core-allergyintolerance",
    resource_type="AllergyIntolerance",
    mandatory=("code", "patient", "reaction.manifestation"),
    must_support=("clinicalStatus", "verificationStatus", "code", "patient", "reaction", "reaction.manifestation"),
)
PROCEDURE = Profile(
    name="us-core-procedure",
    resource_type="Procedure",
    mandatory=("status", "code", "subject", "performer.actor", "focalDevice.manipulated"),
    must_support=("basedOn", "status", "code", "subject", "performedDateTime"),
)
IMMUNIZATION = Profile(
    name="us-core-immunization",
    resource_type="Immunization",
    mandatory=("status", "vaccineCode", "patient", "occurrence[x]", "performer.actor", "protocolApplied.doseNumber[x]"),
    must_support=("status", "statusReason", "vaccineCode", "patient", "occurrenceDateTime", "primarySource"),
)

VITAL_SIGN_PROFILES = (
    _vital("us-core-heart-rate", "8867-4"),
    _vital("us-core-respiratory-rate", "9279-1"),
    _vital("us-core-body-temperature", "8310-5"),
    _vital("us-core-body-height", "8302-2"),
    _vital("us-core-body-weight", "29463-7"),
    _vital("us-core-bmi", "39156-5"),
    BLOOD_PRESSURE,
)

PROFILES: dict[str, Profile] = {
    profile.url: profile
    for profile in (
        PATIENT,
        ENCOUNTER,
        CONDITION_ENCOUNTER_DIAGNOSIS,
        CONDITION_PROBLEMS,
        OBSERVATION_LAB,
        OBSERVATION_CLINICAL_RESULT,
        *VITAL_SIGN_PROFILES,
        MEDICATION_REQUEST,
        ALLERGY_INTOLERANCE,
        PROCEDURE,
        IMMUNIZATION,
    )
}
_VITALS_BY_LOINC = {profile.code[1]: profile for profile in VITAL_SIGN_PROFILES if profile.code}
_SINGLE_PROFILE = {
    "Patient": PATIENT,
    "Encounter": ENCOUNTER,
    "MedicationRequest": MEDICATION_REQUEST,
    "AllergyIntolerance": ALLERGY_INTOLERANCE,
    "Procedure": PROCEDURE,
    "Immunization": IMMUNIZATION,
}

# Extensions US Core defines (must-support or not) and core extensions its profiles use: anything
# else on a resource is an extension the mapping has to decide about.
KNOWN_EXTENSIONS = frozenset(
    {
        BASE + "us-core-race",
        BASE + "us-core-ethnicity",
        BASE + "us-core-tribal-affiliation",
        BASE + "us-core-sex",
        BASE + "us-core-birthsex",
        BASE + "us-core-genderIdentity",
        BASE + "us-core-direct",
        BASE + "us-core-jurisdiction",
        BASE + "us-core-medication-adherence",
        BASE + "us-core-extension-questionnaire-uri",
        "http://hl7.org/fhir/StructureDefinition/condition-assertedDate",
        "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
    }
)


def profiles_for(resource: Mapping[str, Any]) -> list[Profile]:
    """The profiles to check a resource against: the US Core ones it claims, else the one that fits it."""
    claimed = [
        PROFILES[url]
        for url in as_items(as_object(resource.get("meta")).get("profile"))
        if isinstance(url, str) and url in PROFILES
    ]
    if claimed:
        return claimed
    resource_type = resource.get("resourceType")
    if resource_type in _SINGLE_PROFILE:
        return [_SINGLE_PROFILE[str(resource_type)]]
    categories = _category_pairs(resource)
    if resource_type == "Condition":
        diagnosis = (CONDITION_CATEGORY, "encounter-diagnosis") in categories
        return [CONDITION_ENCOUNTER_DIAGNOSIS if diagnosis else CONDITION_PROBLEMS]
    if resource_type == "Observation":
        if (OBSERVATION_CATEGORY, "vital-signs") in categories:
            codes = [
                c.get("code")
                for c in as_items(as_object(resource.get("code")).get("coding"))
                if isinstance(c, dict) and c.get("system") == LOINC
            ]
            vital = next((_VITALS_BY_LOINC[c] for c in codes if isinstance(c, str) and c in _VITALS_BY_LOINC), None)
            if vital is not None:
                return [vital]
        if (OBSERVATION_CATEGORY, "laboratory") in categories:
            return [OBSERVATION_LAB]
        return [OBSERVATION_CLINICAL_RESULT]
    return []


def _category_pairs(resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {
        (str(coding.get("system")), str(coding.get("code")))
        for concept in as_items(resource.get("category"))
        if isinstance(concept, dict)
        for coding in as_items(concept.get("coding"))
        if isinstance(coding, dict)
    }


def missing_mandatory(resource: Mapping[str, Any], path: str) -> bool:
    """Whether a mandatory element is absent where the guide requires it (see the module doc)."""
    *parents, leaf = path.split(".")
    nodes: list[Any] = [resource]
    for segment in parents:
        # Nested: only parents that are present must carry the rest; absent ones ask nothing.
        nodes = [child for node in nodes for child in _children(node, segment) if isinstance(child, dict)]
    return any(not _children(node, leaf) for node in nodes)


def _children(node: Any, name: str) -> list[Any]:
    if not isinstance(node, dict):
        return []
    if name.endswith("[x]"):
        stem = name[:-3]
        found = [v for k, v in node.items() if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
    else:
        found = [node[name]] if name in node else []
    values: list[Any] = []
    for value in found:
        if isinstance(value, list):
            values.extend(v for v in value if v not in (None, "", [], {}))
        elif value not in (None, "", [], {}):
            values.append(value)
    return values


def present(resource: Mapping[str, Any], path: str) -> bool:
    """Whether an element is populated anywhere in the resource (for must-support coverage)."""
    nodes: list[Any] = [resource]
    for segment in path.split("."):
        nodes = [child for node in nodes for child in _children(node, segment)]
        if not nodes:
            return False
    return True


def category_ok(resource: Mapping[str, Any], profile: Profile) -> bool:
    """Whether the resource carries one of the categories its profile requires (true when none is)."""
    return not profile.category or bool(_category_pairs(resource) & set(profile.category))


def code_ok(resource: Mapping[str, Any], profile: Profile) -> bool:
    """Whether the resource carries the code its profile fixes (true when it fixes none)."""
    if profile.code is None:
        return True
    system, code = profile.code
    return any(
        c.get("system") == system and c.get("code") == code
        for c in as_items(as_object(resource.get("code")).get("coding"))
        if isinstance(c, dict)
    )
