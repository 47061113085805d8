"""Data-quality defects planted in a sandbox population, and the exact record of what was planted.

Mapping and validation are only worth testing against data with something wrong in it, and a
test can only say "every defect was found and nothing else" if it knows exactly what is wrong.
So defects are planted here on purpose, at rates per vendor flavour, and every one is recorded
(kind, resource, element) in the order it was planted.

Rules that keep the record exact:
- each patient carries at most one defect, so one defect never hides or doubles another;
- the choice for patient N depends only on the seed, the kind, N and the patients before it (not
  on how many patients the sandbox holds), so a smaller population's defects are a prefix of a
  larger one's;
- nothing is planted unless a sandbox asks for it: without defects the data is unchanged.

A "showcase" sandbox (the demo's) first plants each kind once, on the first patients that can carry
it, then goes on at the flavour's rates: a sample of ten patients, the default policy's, then shows
every kind, where rates of 4 to 15 % would leave most kinds out of it.
"""

from __future__ import annotations

import copy as copy_module
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .data import Population, Resource
from .flavours import Flavour

LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# The defect kinds. Each patient tries them in an order of its own (seeded).
DEFECT_KINDS: tuple[str, ...] = (
    "duplicate_patient",
    "missing_birth_date",
    "second_identifier",
    "unknown_extension",
    "bad_date",
    "local_lab_code",
    "dangling_reference",
    "bad_structure",
)

# Share of patients that get each defect, per flavour. Every flavour plants every kind, in
# proportions that resemble what its customers' data tends to show.
_BASE_RATES = {
    "duplicate_patient": 0.05,
    "missing_birth_date": 0.06,
    "second_identifier": 0.08,
    "unknown_extension": 0.08,
    "bad_date": 0.05,
    "local_lab_code": 0.12,
    "dangling_reference": 0.06,
    "bad_structure": 0.04,
}
DEFAULT_RATES: dict[str, dict[str, float]] = {
    "generic": dict(_BASE_RATES),
    "epic": {**_BASE_RATES, "second_identifier": 0.10, "local_lab_code": 0.08},
    "oracle_health": {**_BASE_RATES, "local_lab_code": 0.15, "duplicate_patient": 0.04},
    "meditech": {**_BASE_RATES, "unknown_extension": 0.12, "missing_birth_date": 0.08},
    "athenahealth": {**_BASE_RATES, "dangling_reference": 0.08, "bad_date": 0.06},
}

# The order a showcase plants each kind once: the ones validate reports as errors first, and the
# duplicate (which adds a patient to the population) last, so a short sample holds them all.
SHOWCASE_ORDER: tuple[str, ...] = (
    "local_lab_code",
    "bad_structure",
    "dangling_reference",
    "second_identifier",
    "unknown_extension",
    "missing_birth_date",
    "bad_date",
    "duplicate_patient",
)

# Per flavour: the local lab code system, the legacy MRN system a merger left behind, and the
# home-grown extension. Synthetic, and pointing at no real hospital.
LOCAL_LAB_SYSTEMS = {
    "generic": "http://hospital.example.org/fhir/CodeSystem/local-lab",
    "epic": "urn:oid:1.2.840.114350.1.13.0.1.7.2.768282",
    "oracle_health": "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72",
    "meditech": "urn:oid:1.3.6.1.4.1.54392.5.1.9",
    "athenahealth": "urn:oid:2.16.840.1.113883.3.564.9",
}
LEGACY_MRN_SYSTEMS = {
    "generic": "http://hospital.example.org/legacy-mrn",
    "epic": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.99",
    "oracle_health": "urn:oid:2.16.840.1.113883.3.13.99",
    "meditech": "urn:oid:1.3.6.1.4.1.54392.5.1.99",
    "athenahealth": "urn:oid:2.16.840.1.113883.3.564.99",
}
UNKNOWN_EXTENSION = "http://hospital.example.org/fhir/StructureDefinition/preferred-pharmacy"

# LOINC lab code -> the local code and name a lab system uses for the same test.
LOCAL_LAB_CODES: dict[str, tuple[str, str]] = {
    "2339-0": ("GLU", "GLUCOSE, BLOOD"),
    "4548-4": ("A1C", "HEMOGLOBIN A1C"),
    "2093-3": ("CHOL", "CHOLESTEROL, TOTAL"),
    "2571-8": ("TRIG", "TRIGLYCERIDES"),
    "18262-6": ("LDLD", "LDL CHOLESTEROL, DIRECT"),
    "2085-9": ("HDL", "HDL CHOLESTEROL"),
    "38483-4": ("CREAT", "CREATININE, BLOOD"),
    "2947-0": ("NA", "SODIUM, BLOOD"),
    "6298-4": ("K", "POTASSIUM, BLOOD"),
    "718-7": ("HGB", "HEMOGLOBIN"),
}


@dataclass(frozen=True)
class Planted:
    """One planted defect: which resource carries it, at which element, and the facts a test needs."""

    kind: str
    resource_type: str
    resource_id: str
    patient_id: str
    element: str
    detail: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DefectConfig:
    """Rates per kind (0 to 1), an optional family name given to every patient (PHI tests), and
    whether each kind is first planted once on the first patients (a showcase)."""

    rates: dict[str, float]
    sentinel_family: str | None = None
    showcase: bool = False

    @property
    def active(self) -> bool:
        return any(rate > 0 for rate in self.rates.values()) or self.sentinel_family is not None


def parse_defects(raw: Mapping[str, Any] | str | None, flavour: str) -> DefectConfig:
    """ "default" (the flavour's rates), "showcase" (each kind once first, then those rates), None
    (nothing planted) or a mapping of overrides.

    A mapping starts from zero for every kind, names only known kinds with rates between 0 and 1,
    and may carry "default": true to start from the flavour's rates instead, "showcase": true, and
    "sentinel_family". ValueError says what is wrong.
    """
    if raw is None:
        return DefectConfig(rates=dict.fromkeys(DEFECT_KINDS, 0.0))
    if raw in ("default", "showcase"):
        return DefectConfig(rates=dict(DEFAULT_RATES[flavour]), showcase=raw == "showcase")
    if not isinstance(raw, Mapping):
        raise ValueError('defects must be "default", "showcase", null or a JSON object of rates')
    base = DEFAULT_RATES[flavour] if raw.get("default") is True else dict.fromkeys(DEFECT_KINDS, 0.0)
    rates = dict(base)
    sentinel: str | None = None
    showcase = False
    for name, value in raw.items():
        if name == "default":
            continue
        if name == "showcase":
            if not isinstance(value, bool):
                raise ValueError("showcase must be true or false")
            showcase = value
            continue
        if name == "sentinel_family":
            if not isinstance(value, str) or not value.strip():
                raise ValueError("sentinel_family must be a non-empty string")
            sentinel = value.strip()
            continue
        if name not in DEFECT_KINDS:
            raise ValueError(f"unknown defect {name!r}; known defects: {', '.join(DEFECT_KINDS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"defect {name!r}: expected a rate between 0 and 1, got {value!r}")
        rates[name] = float(value)
    return DefectConfig(rates=rates, sentinel_family=sentinel, showcase=showcase)


# --- planting --------------------------------------------------------------------------------

Planter = Callable[["_PatientRecords", random.Random], "Planted | None"]


@dataclass
class _PatientRecords:
    """One patient's resources, as lists shared with the population (edits land in place)."""

    n: int
    seed: int
    flavour: Flavour
    patient: Resource
    by_type: dict[str, list[Resource]]
    population: Population

    def labs(self) -> list[Resource]:
        return [
            o
            for o in self.by_type.get("Observation", [])
            if any(c.get("code") == "laboratory" for cat in o.get("category", []) for c in cat.get("coding", []))
            and any(c.get("system") == LOINC for c in o["code"].get("coding", []))
        ]

    def clinical(self) -> list[Resource]:
        return [r for rtype, found in sorted(self.by_type.items()) if rtype != "Patient" for r in found]


def plant_defects(population: Population, *, seed: int, flavour: Flavour, config: DefectConfig) -> list[Planted]:
    """Plant defects into the population, in place, and return exactly what was planted."""
    if not config.active:
        return []
    records = _records_by_patient(population, seed, flavour)
    if config.sentinel_family:
        for record in records:
            _rename(record, config.sentinel_family)
    planted: list[Planted] = []
    # A showcase's kinds still to plant once, in order; a kind switched off (rate 0) is never shown.
    to_show = [kind for kind in SHOWCASE_ORDER if config.rates.get(kind, 0.0) > 0] if config.showcase else []
    for record in records:
        shown = _show_one(record, to_show, seed)
        if shown is not None:
            planted.append(shown)
            continue
        # A per-patient order, so kinds tried late are not starved by the one-defect rule.
        order = list(DEFECT_KINDS)
        random.Random(f"sandbox-defect-order:{seed}:{record.n}").shuffle(order)
        for kind in order:
            rate = config.rates.get(kind, 0.0)
            if rate <= 0:
                continue
            rng = random.Random(f"sandbox-defect:{seed}:{kind}:{record.n}")
            if rng.random() >= rate:
                continue
            done = PLANTERS[kind](record, rng)
            if done is not None:
                planted.append(done)
                break  # at most one defect per patient
    return planted


def _show_one(record: _PatientRecords, to_show: list[str], seed: int) -> Planted | None:
    """The first kind still to show that this patient can carry, planted (and struck off), or None."""
    for kind in to_show:
        done = PLANTERS[kind](record, random.Random(f"sandbox-defect:{seed}:{kind}:{record.n}"))
        if done is not None:
            to_show.remove(kind)
            return done
    return None


def _records_by_patient(population: Population, seed: int, flavour: Flavour) -> list[_PatientRecords]:
    by_patient: dict[str, dict[str, list[Resource]]] = {}
    for rtype, resources in population.by_type().items():
        if rtype == "Patient":
            continue
        for resource in resources:
            owner = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
            by_patient.setdefault(owner.split("/", 1)[-1], {}).setdefault(rtype, []).append(resource)
    return [
        _PatientRecords(n, seed, flavour, patient, by_patient.get(patient["id"], {}), population)
        for n, patient in enumerate(list(population.patients))
    ]


def _rename(record: _PatientRecords, family: str) -> None:
    for name in record.patient.get("name", []):
        name["family"] = family
        name["text"] = " ".join([*name.get("given", []), family])
    for resource in record.clinical():
        subject = resource.get("subject") or resource.get("patient") or {}
        if "display" in subject:
            subject["display"] = f"{record.patient['name'][0]['given'][0]} {family}"


def _planted(kind: str, resource: Resource, record: _PatientRecords, element: str, **detail: str) -> Planted:
    return Planted(kind, resource["resourceType"], resource["id"], record.patient["id"], element, detail)


def _duplicate_patient(record: _PatientRecords, rng: random.Random) -> Planted | None:
    # The same person registered twice: new id and MRN, same name (in capitals), birth date and gender.
    original = record.patient
    if "birthDate" not in original:
        return None
    copy: Resource = copy_module.deepcopy(original)
    copy["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    for identifier in copy["identifier"]:
        identifier["value"] = f"{identifier['value']}-D{record.n}"
    for name in copy["name"]:
        name["family"] = name["family"].upper()
        name["text"] = name["text"].upper()
    patients = record.population.patients
    patients.insert(patients.index(original) + 1, copy)
    return _planted("duplicate_patient", copy, record, "Patient", duplicate_of=original["id"])


def _missing_birth_date(record: _PatientRecords, rng: random.Random) -> Planted | None:
    del record.patient["birthDate"]
    return _planted("missing_birth_date", record.patient, record, "Patient.birthDate")


def _second_identifier(record: _PatientRecords, rng: random.Random) -> Planted | None:
    system = LEGACY_MRN_SYSTEMS[record.flavour.name]
    record.patient["identifier"].append(
        {
            "use": "secondary",
            "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical Record Number"}]},
            "system": system,
            "value": f"L{rng.randint(100000, 999999)}",
        }
    )
    return _planted("second_identifier", record.patient, record, "Patient.identifier", system=system)


def _unknown_extension(record: _PatientRecords, rng: random.Random) -> Planted | None:
    pharmacy = rng.choice(("Main Street Pharmacy", "Lakeside Drug", "Harbor Apothecary"))
    record.patient.setdefault("extension", []).append({"url": UNKNOWN_EXTENSION, "valueString": pharmacy})
    return _planted("unknown_extension", record.patient, record, "Patient.extension", url=UNKNOWN_EXTENSION)


def _bad_date(record: _PatientRecords, rng: random.Random) -> Planted | None:
    # Either a birth date no living patient has, or a result dated decades in the future.
    observations = record.by_type.get("Observation", [])
    if rng.random() < 0.5 or not observations:
        record.patient["birthDate"] = f"18{rng.randint(10, 89)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        return _planted("bad_date", record.patient, record, "Patient.birthDate")
    observation = rng.choice(observations)
    when = observation["effectiveDateTime"]
    observation["effectiveDateTime"] = f"{rng.randint(2090, 2099)}{when[4:]}"
    return _planted("bad_date", observation, record, "Observation.effectiveDateTime")


def _local_lab_code(record: _PatientRecords, rng: random.Random) -> Planted | None:
    labs = [o for o in record.labs() if o["code"]["coding"][0]["code"] in LOCAL_LAB_CODES]
    if not labs:
        return None
    observation = rng.choice(labs)
    loinc = observation["code"]["coding"][0]["code"]
    local, display = LOCAL_LAB_CODES[loinc]
    system = LOCAL_LAB_SYSTEMS[record.flavour.name]
    observation["code"]["coding"] = [{"system": system, "code": local, "display": display}]
    return _planted("local_lab_code", observation, record, "Observation.code", system=system, code=local, loinc=loinc)


def _dangling_reference(record: _PatientRecords, rng: random.Random) -> Planted | None:
    candidates = [r for r in record.clinical() if "encounter" in r and r["resourceType"] != "Encounter"]
    if not candidates:
        return None
    resource = rng.choice(candidates)
    missing = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    resource["encounter"] = {"reference": f"Encounter/{missing}"}
    return _planted("dangling_reference", resource, record, f"{resource['resourceType']}.encounter")


def _bad_structure(record: _PatientRecords, rng: random.Random) -> Planted | None:
    # A value sent as text where FHIR wants a number: what a hand-written interface often does.
    labs = [o for o in record.labs() if "valueQuantity" in o]
    if not labs:
        return None
    observation = rng.choice(labs)
    quantity = observation["valueQuantity"]
    quantity["value"] = f"{quantity['value']} {quantity.get('unit', '')}".strip()
    return _planted("bad_structure", observation, record, "Observation.valueQuantity.value")


PLANTERS: dict[str, Planter] = {
    "duplicate_patient": _duplicate_patient,
    "missing_birth_date": _missing_birth_date,
    "second_identifier": _second_identifier,
    "unknown_extension": _unknown_extension,
    "bad_date": _bad_date,
    "local_lab_code": _local_lab_code,
    "dangling_reference": _dangling_reference,
    "bad_structure": _bad_structure,
}
