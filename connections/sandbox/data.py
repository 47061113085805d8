"""Deterministic synthetic patients for the sandbox hospitals.

The sandbox needs data that looks like a real EHR's (US Core profiles,
LOINC vitals and labs in UCUM units, SNOMED problems and encounter types,
OMB race and ethnicity) without a single real or copied record in it. Everything
here is drawn from small hand-written tables with one `random.Random` per
patient, seeded from the sandbox seed and the patient's position, so:

- the same seed gives byte-identical patients on every run and machine;
- patient N is the same whether the sandbox holds 50 or 1,000 patients;
- the clinical content and the resource ids do not depend on the vendor
  flavour; only the identifier systems (MRN, enterprise id) do, so one
  synthetic patient can be pulled through every vendor's adapter and compared.

Generation is pure Python over dicts and takes a few hundred microseconds per
patient, so the server can build its whole population at start-up.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .flavours import Flavour

Resource = dict[str, Any]

# The "today" of the synthetic world. Fixed, so that data never drifts with
# the wall clock and two runs a year apart still agree.
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
OMB_RACE_ETHNICITY = "urn:oid:2.16.840.1.113883.6.238"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
PROFILE_PATIENT = US_CORE + "us-core-patient"
PROFILE_ENCOUNTER = US_CORE + "us-core-encounter"
PROFILE_CONDITION = US_CORE + "us-core-condition-encounter-diagnosis"
PROFILE_LAB = US_CORE + "us-core-observation-lab"
PROFILE_VITALS = US_CORE + "us-core-vital-signs"
PROFILE_BP = US_CORE + "us-core-blood-pressure"
PROFILE_BMI = US_CORE + "us-core-bmi"
PROFILE_HEIGHT = US_CORE + "us-core-body-height"
PROFILE_WEIGHT = US_CORE + "us-core-body-weight"
PROFILE_HEART_RATE = US_CORE + "us-core-heart-rate"

ORGANIZATION_NAME = "Sandbox General Hospital"

# --- name and place tables -------------------------------------------------

GIVEN_MALE = (
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Steven",
    "Andrew",
    "Joshua",
    "Kevin",
    "Brian",
    "George",
    "Luis",
    "Carlos",
    "Jose",
    "Miguel",
    "Wei",
    "Hiroshi",
    "Arjun",
    "Omar",
    "Kwame",
    "Dmitri",
    "Samuel",
    "Elijah",
    "Noah",
    "Liam",
    "Mateo",
    "Ethan",
    "Isaac",
    "Julian",
    "Owen",
    "Felix",
)
GIVEN_FEMALE = (
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Nancy",
    "Lisa",
    "Margaret",
    "Sandra",
    "Ashley",
    "Emily",
    "Michelle",
    "Amanda",
    "Melissa",
    "Deborah",
    "Maria",
    "Sofia",
    "Lucia",
    "Camila",
    "Mei",
    "Yuki",
    "Priya",
    "Fatima",
    "Amara",
    "Olga",
    "Grace",
    "Chloe",
    "Hannah",
    "Ava",
    "Isabella",
    "Nora",
    "Ruth",
    "Clara",
    "Alice",
    "Iris",
)
FAMILY = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "O'Brien",
    "Kowalski",
    "Okafor",
    "Chen",
    "Patel",
    "Kim",
    "Murphy",
    "Sullivan",
    "Novak",
    "Haddad",
)
STREETS = (
    "Main St",
    "Oak Ave",
    "Maple St",
    "Cedar Ln",
    "Elm St",
    "Pine Rd",
    "Washington St",
    "Lake View Dr",
    "Highland Ave",
    "Park St",
    "Summer St",
    "Chestnut St",
    "Prospect Hill Rd",
    "River Rd",
    "Mill St",
)
# (city, postal code) pairs in Massachusetts, where Synthea's own sample lives too.
CITIES = (
    ("Boston", "02108"),
    ("Worcester", "01608"),
    ("Springfield", "01103"),
    ("Cambridge", "02139"),
    ("Lowell", "01852"),
    ("Brockton", "02301"),
    ("Quincy", "02169"),
    ("Lynn", "01901"),
    ("New Bedford", "02740"),
    ("Fall River", "02720"),
    ("Newton", "02458"),
    ("Somerville", "02143"),
    ("Framingham", "01702"),
    ("Haverhill", "01830"),
    ("Waltham", "02451"),
    ("Malden", "02148"),
)
# (OMB code, display, weight) for the US Core race and ethnicity extensions.
RACES = (
    ("2106-3", "White", 62),
    ("2054-5", "Black or African American", 13),
    ("2028-9", "Asian", 7),
    ("1002-5", "American Indian or Alaska Native", 2),
    ("2076-8", "Native Hawaiian or Other Pacific Islander", 1),
    ("2131-1", "Other Race", 15),
)
ETHNICITIES = (("2135-2", "Hispanic or Latino", 18), ("2186-5", "Not Hispanic or Latino", 82))
MARITAL = (("M", "Married"), ("S", "Never Married"), ("D", "Divorced"), ("W", "Widowed"))

# --- clinical tables --------------------------------------------------------

# (SNOMED code, display, class code, weight).
ENCOUNTER_TYPES = (
    ("185349003", "Encounter for check up (procedure)", "AMB", 35),
    ("162673000", "General examination of patient (procedure)", "AMB", 15),
    ("185345009", "Encounter for symptom (procedure)", "AMB", 20),
    ("390906007", "Follow-up encounter (procedure)", "AMB", 12),
    ("50849002", "Emergency room admission (procedure)", "EMER", 10),
    ("183452005", "Emergency hospital admission (procedure)", "IMP", 5),
    ("32485007", "Hospital admission (procedure)", "IMP", 3),
)
ENCOUNTER_CLASS_DISPLAY = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient encounter"}
# How long each class of encounter lasts, in minutes (low, high).
ENCOUNTER_MINUTES = {"AMB": (15, 60), "EMER": (60, 360), "IMP": (24 * 60, 5 * 24 * 60)}


@dataclass(frozen=True)
class ConditionKind:
    code: str
    display: str
    chronic: bool  # chronic problems stay active; acute ones resolve
    weight: int


CONDITIONS = (
    ConditionKind("44054006", "Diabetes mellitus type 2 (disorder)", True, 8),
    ConditionKind("15777000", "Prediabetes (finding)", True, 8),
    ConditionKind("38341003", "Hypertensive disorder, systemic arterial (disorder)", True, 12),
    ConditionKind("55822004", "Hyperlipidemia (disorder)", True, 8),
    ConditionKind("162864005", "Body mass index 30+ - obesity (finding)", True, 10),
    ConditionKind("40055000", "Chronic sinusitis (disorder)", True, 5),
    ConditionKind("195967001", "Asthma (disorder)", True, 5),
    ConditionKind("195662009", "Acute viral pharyngitis (disorder)", False, 12),
    ConditionKind("10509002", "Acute bronchitis (disorder)", False, 10),
    ConditionKind("444814009", "Viral sinusitis (disorder)", False, 14),
)
# Problems that rule each other out on one problem list.
EXCLUSIVE_CONDITIONS = ({"44054006", "15777000"},)


@dataclass(frozen=True)
class Measure:
    code: str
    display: str
    category: str  # observation-category code
    unit: str  # UCUM code, also used as the human unit
    low: float
    high: float
    decimals: int
    profile: str


VITALS = (
    Measure("8302-2", "Body height", "vital-signs", "cm", 0, 0, 1, PROFILE_HEIGHT),
    Measure("29463-7", "Body weight", "vital-signs", "kg", 0, 0, 1, PROFILE_WEIGHT),
    Measure("39156-5", "Body mass index (BMI) [Ratio]", "vital-signs", "kg/m2", 0, 0, 1, PROFILE_BMI),
    Measure("8867-4", "Heart rate", "vital-signs", "/min", 56, 98, 0, PROFILE_HEART_RATE),
    Measure("9279-1", "Respiratory rate", "vital-signs", "/min", 12, 20, 0, US_CORE + "us-core-respiratory-rate"),
    Measure("8310-5", "Body temperature", "vital-signs", "Cel", 36.1, 37.6, 1, US_CORE + "us-core-body-temperature"),
    # The panel carries no value of its own: its two components do (below).
    Measure("85354-9", "Blood pressure panel with all children optional", "vital-signs", "mm[Hg]", 0, 0, 0, PROFILE_BP),
)
LABS = (
    Measure("2339-0", "Glucose [Mass/volume] in Blood", "laboratory", "mg/dL", 72, 99, 0, PROFILE_LAB),
    Measure("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory", "%", 4.6, 5.6, 1, PROFILE_LAB),
    Measure("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 150, 199, 0, PROFILE_LAB),
    Measure("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 70, 149, 0, PROFILE_LAB),
    Measure(
        "18262-6",
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
        "laboratory",
        "mg/dL",
        70,
        129,
        0,
        PROFILE_LAB,
    ),
    Measure(
        "2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 40, 75, 0, PROFILE_LAB
    ),
    Measure("38483-4", "Creatinine [Mass/volume] in Blood", "laboratory", "mg/dL", 0.6, 1.2, 2, PROFILE_LAB),
    Measure("2947-0", "Sodium [Moles/volume] in Blood", "laboratory", "mmol/L", 136, 145, 0, PROFILE_LAB),
    Measure("6298-4", "Potassium [Moles/volume] in Blood", "laboratory", "mmol/L", 3.5, 5.0, 1, PROFILE_LAB),
    Measure("718-7", "Hemoglobin [Mass/volume] in Blood", "laboratory", "g/dL", 12.0, 16.5, 1, PROFILE_LAB),
)
MEASURES = VITALS + LABS
BP_SYSTOLIC = ("8480-6", "Systolic blood pressure")
BP_DIASTOLIC = ("8462-4", "Diastolic blood pressure")

# How a problem on the list shifts a measurement, as (low, high) overrides, so
# that a diabetic patient's HbA1c looks diabetic to anyone validating the data.
CONDITION_EFFECTS: dict[str, dict[str, tuple[float, float]]] = {
    "44054006": {"2339-0": (130, 260), "4548-4": (6.6, 10.5)},
    "15777000": {"2339-0": (100, 125), "4548-4": (5.7, 6.4)},
    "55822004": {"2093-3": (240, 300), "18262-6": (160, 210), "2571-8": (150, 320)},
    "38341003": {BP_SYSTOLIC[0]: (140, 175), BP_DIASTOLIC[0]: (90, 105)},
}
NORMAL_BP = {BP_SYSTOLIC[0]: (104, 134), BP_DIASTOLIC[0]: (62, 84)}

# --- extended clinical tables (medications, allergies, procedures, immunizations) ----------------

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
MEDICATION_REQUEST_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
PROFILE_MEDICATION_REQUEST = US_CORE + "us-core-medicationrequest"
PROFILE_ALLERGY = US_CORE + "us-core-allergyintolerance"
PROFILE_PROCEDURE = US_CORE + "us-core-procedure"
PROFILE_IMMUNIZATION = US_CORE + "us-core-immunization"

# The resource types an extended population adds, after the core Encounter/Observation/Condition.
EXTENDED_CLINICAL_TYPES: tuple[str, ...] = ("MedicationRequest", "AllergyIntolerance", "Procedure", "Immunization")

# (RxNorm code, display, dosage text).
MEDICATIONS = (
    ("314076", "lisinopril 10 MG Oral Tablet", "Take 1 tablet by mouth once daily"),
    (
        "860975",
        "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
        "Take 1 tablet with the evening meal",
    ),
    ("197361", "amlodipine 5 MG Oral Tablet", "Take 1 tablet by mouth once daily"),
    ("316672", "simvastatin 10 MG Oral Tablet", "Take 1 tablet at bedtime"),
    ("313782", "acetaminophen 325 MG Oral Tablet", "Take 2 tablets every 6 hours as needed for pain"),
    ("562251", "amoxicillin 250 MG / clavulanate 125 MG Oral Tablet", "Take 1 tablet every 8 hours for 7 days"),
    ("310965", "ibuprofen 200 MG Oral Tablet", "Take 1 tablet every 6 hours as needed"),
)
# (SNOMED code, display) of allergies, and of the reactions they cause.
ALLERGIES = (
    ("91936005", "Allergy to penicillin (finding)"),
    ("300913006", "Shellfish allergy (finding)"),
    ("418689008", "Allergy to grass pollen (finding)"),
    ("232350006", "House dust mite allergy (finding)"),
)
REACTIONS = (
    ("247472004", "Wheal (finding)"),
    ("271807003", "Eruption of skin (disorder)"),
    ("267036007", "Dyspnea (finding)"),
)
PROCEDURES = (
    ("428191000124101", "Documentation of current medications (procedure)"),
    ("73761001", "Colonoscopy (procedure)"),
    ("171207006", "Depression screening (procedure)"),
    ("23426006", "Measurement of respiratory function (procedure)"),
)
# (CVX code, display).
VACCINES = (
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("113", "Td (adult) preservative free"),
    ("121", "zoster"),
    ("33", "pneumococcal polysaccharide vaccine, 23 valent"),
)


@dataclass
class Population:
    """Every resource of one sandbox hospital, in a stable order."""

    seed: int
    patients: list[Resource] = field(default_factory=list)
    encounters: list[Resource] = field(default_factory=list)
    observations: list[Resource] = field(default_factory=list)
    conditions: list[Resource] = field(default_factory=list)
    # Filled only for an extended population (see EXTENDED_CLINICAL_TYPES), by type name.
    extended: dict[str, list[Resource]] = field(default_factory=dict)

    def by_type(self) -> dict[str, list[Resource]]:
        return {
            "Patient": self.patients,
            "Encounter": self.encounters,
            "Observation": self.observations,
            "Condition": self.conditions,
            **self.extended,
        }


def generate_population(*, seed: int, patients: int, flavour: Flavour, extended: bool = False) -> Population:
    """Build `patients` synthetic patients with their encounters, observations and conditions.

    With ``extended``, each patient also gets medication requests, allergies, procedures and
    immunizations, drawn from a generator of their own so the core resources stay byte-identical.
    """
    if patients < 0:
        raise ValueError("patients must be zero or more")
    population = Population(seed=seed)
    if extended:
        population.extended = {rtype: [] for rtype in EXTENDED_CLINICAL_TYPES}
    for n in range(patients):
        patient, encounters, observations, conditions = _generate_patient(seed, n, flavour)
        population.patients.append(patient)
        population.encounters.extend(encounters)
        population.observations.extend(observations)
        population.conditions.extend(conditions)
        if extended:
            for rtype, resources in _extended_clinical(seed, n, patient, encounters).items():
                population.extended[rtype].extend(resources)
    return population


# --- generation ---------------------------------------------------------------


def _generate_patient(
    seed: int, n: int, flavour: Flavour
) -> tuple[Resource, list[Resource], list[Resource], list[Resource]]:
    # A string seed is hashed with SHA-512 by `random`, so it is stable across
    # processes (unlike hash()) and independent of how many patients precede.
    rng = random.Random(f"sandbox-patient:{seed}:{n}")
    patient_id = _uuid(rng)

    gender = "female" if rng.random() < 0.51 else "male"
    given = rng.sample(GIVEN_FEMALE if gender == "female" else GIVEN_MALE, 2)
    family = rng.choice(FAMILY)
    birth = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 64))
    race = _weighted(rng, RACES)
    ethnicity = _weighted(rng, ETHNICITIES)
    city, postal = rng.choice(CITIES)
    marital = rng.choice(MARITAL)
    phone = f"555-{rng.randint(200, 989)}-{rng.randint(1000, 9999)}"
    street = f"{rng.randint(1, 999)} {rng.choice(STREETS)}"
    spanish = ethnicity[0] == "2135-2" and rng.random() < 0.5
    display_name = f"{given[0]} {family}"

    patient: Resource = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"profile": [PROFILE_PATIENT]},
        "extension": [
            _omb_extension("us-core-race", race),
            _omb_extension("us-core-ethnicity", ethnicity),
            {"url": US_CORE + "us-core-birthsex", "valueCode": "F" if gender == "female" else "M"},
        ],
        "identifier": _identifiers(flavour, seed, n),
        "active": True,
        "name": [
            {
                "use": "official",
                "text": f"{' '.join(given)} {family}",
                "family": family,
                "given": given,
                "prefix": [_prefix(gender, marital[0])],
            }
        ],
        "telecom": [
            {"system": "phone", "value": phone, "use": "home"},
            {"system": "email", "value": f"{given[0]}.{family}{n}@example.com".lower().replace("'", "")},
        ],
        "gender": gender,
        "birthDate": birth.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [street],
                "city": city,
                "state": "MA",
                "postalCode": postal,
                "country": "US",
            }
        ],
        "maritalStatus": {
            "coding": [{"system": V3_MARITAL, "code": marital[0], "display": marital[1]}],
            "text": marital[1],
        },
        "communication": [
            {
                "language": {
                    "coding": [
                        {
                            "system": "urn:ietf:bcp:47",
                            "code": "es" if spanish else "en-US",
                            "display": "Spanish" if spanish else "English (United States)",
                        }
                    ]
                }
            }
        ],
    }
    subject = {"reference": f"Patient/{patient_id}", "display": display_name}

    encounters = _encounters(rng, subject, birth)
    conditions, condition_codes = _conditions(rng, subject, encounters)
    observations = _observations(rng, subject, encounters, condition_codes, gender)
    return patient, encounters, observations, conditions


def _identifiers(flavour: Flavour, seed: int, n: int) -> list[Resource]:
    # Affine maps with multipliers coprime to the modulus are bijections, so
    # MRNs and enterprise ids never collide within a seed. The values are the
    # same across flavours; only the systems (and the enterprise prefix) differ.
    mrn = 1_000_000 + ((n + 1) * 7_654_321 + seed * 1_000_003) % 9_000_000
    enterprise = 1_000_000_000 + ((n + 1) * 2_654_435_761 + seed * 97) % 9_000_000_000
    type_display = {"PT": "Patient external identifier", "PI": "Patient internal identifier"}
    return [
        {
            "use": "usual",
            "type": {
                "coding": [{"system": V2_0203, "code": "MR", "display": "Medical Record Number"}],
                "text": "MRN",
            },
            "system": flavour.mrn_system,
            "value": str(mrn),
        },
        {
            "use": "official",
            "type": {
                "coding": [
                    {
                        "system": V2_0203,
                        "code": flavour.enterprise_type_code,
                        "display": type_display.get(flavour.enterprise_type_code, flavour.enterprise_type_code),
                    }
                ],
                "text": flavour.enterprise_type_text,
            },
            "system": flavour.enterprise_system,
            "value": f"{flavour.enterprise_prefix}{enterprise}",
        },
    ]


def _encounters(rng: random.Random, subject: Resource, birth: date) -> list[Resource]:
    # Visits fall in adulthood and in the last ~13 years, as an EHR migrated
    # around 2012 would hold them.
    earliest = max(datetime(birth.year + 18, 1, 1, tzinfo=UTC), datetime(2012, 1, 1, tzinfo=UTC))
    span_minutes = int((AS_OF - earliest).total_seconds() // 60) - 7 * 24 * 60
    starts = sorted(
        _at_clinic_hours(rng, earliest + timedelta(minutes=rng.randrange(span_minutes)))
        for _ in range(rng.randint(2, 5))
    )
    encounters = []
    for start in starts:
        code, display, klass, _ = _weighted_row(rng, ENCOUNTER_TYPES)
        low, high = ENCOUNTER_MINUTES[klass]
        end = start + timedelta(minutes=rng.randint(low, high))
        encounters.append(
            {
                "resourceType": "Encounter",
                "id": _uuid(rng),
                "meta": {"profile": [PROFILE_ENCOUNTER]},
                "status": "finished",
                "class": {"system": V3_ACT_CODE, "code": klass, "display": ENCOUNTER_CLASS_DISPLAY[klass]},
                "type": [{"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display}],
                "subject": subject,
                "period": {"start": _ts(start), "end": _ts(end)},
                "serviceProvider": {"display": ORGANIZATION_NAME},
            }
        )
    return encounters


def _conditions(rng: random.Random, subject: Resource, encounters: list[Resource]) -> tuple[list[Resource], set[str]]:
    wanted = rng.randint(1, 4)
    chosen: list[ConditionKind] = []
    while len(chosen) < wanted:
        kind = _weighted_row(rng, [(c, c.weight) for c in CONDITIONS])[0]
        codes = {c.code for c in chosen} | {kind.code}
        if kind in chosen or any(len(codes & pair) > 1 for pair in EXCLUSIVE_CONDITIONS):
            continue
        chosen.append(kind)

    conditions = []
    for kind in chosen:
        encounter = rng.choice(encounters)
        onset = datetime.fromisoformat(encounter["period"]["start"])
        resource: Resource = {
            "resourceType": "Condition",
            "id": _uuid(rng),
            "meta": {"profile": [PROFILE_CONDITION]},
            "clinicalStatus": {
                "coding": [
                    {
                        "system": CONDITION_CLINICAL,
                        "code": "active" if kind.chronic else "resolved",
                        "display": "Active" if kind.chronic else "Resolved",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed", "display": "Confirmed"}]
            },
            "category": [
                {
                    "coding": [
                        {"system": CONDITION_CATEGORY, "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}
                    ]
                }
            ],
            "code": {"coding": [{"system": SNOMED, "code": kind.code, "display": kind.display}], "text": kind.display},
            "subject": subject,
            "encounter": {"reference": f"Encounter/{encounter['id']}"},
            "onsetDateTime": _ts(onset),
            "recordedDate": _ts(onset),
        }
        if not kind.chronic:
            resource["abatementDateTime"] = _ts(onset + timedelta(days=rng.randint(7, 21)))
        conditions.append(resource)
    conditions.sort(key=lambda c: c["onsetDateTime"])
    return conditions, {c.code for c in chosen}


def _observations(
    rng: random.Random, subject: Resource, encounters: list[Resource], condition_codes: set[str], gender: str
) -> list[Resource]:
    ranges: dict[str, tuple[float, float]] = dict(NORMAL_BP)
    for code in sorted(condition_codes):
        ranges.update(CONDITION_EFFECTS.get(code, {}))
    # Height, weight and BMI must agree with each other for one person.
    height_cm = rng.uniform(164, 192) if gender == "male" else rng.uniform(152, 178)
    bmi = rng.uniform(30.2, 41.5) if "162864005" in condition_codes else rng.uniform(19.5, 29.4)

    observations = []
    for _ in range(rng.randint(4, 12)):
        measure = rng.choice(MEASURES)
        encounter = rng.choice(encounters)
        start = datetime.fromisoformat(encounter["period"]["start"])
        end = datetime.fromisoformat(encounter["period"]["end"])
        effective = start + timedelta(minutes=rng.randint(5, max(5, int((end - start).total_seconds() // 60))))
        resource: Resource = {
            "resourceType": "Observation",
            "id": _uuid(rng),
            "meta": {"profile": [measure.profile]},
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": OBSERVATION_CATEGORY,
                            "code": measure.category,
                            "display": "Vital Signs" if measure.category == "vital-signs" else "Laboratory",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [{"system": LOINC, "code": measure.code, "display": measure.display}],
                "text": measure.display,
            },
            "subject": subject,
            "encounter": {"reference": f"Encounter/{encounter['id']}"},
            "effectiveDateTime": _ts(effective),
            "issued": _ts(effective + timedelta(minutes=rng.randint(1, 90))),
        }
        if measure.code == "85354-9":
            resource["component"] = [
                _component(code, display, _draw(rng, *ranges[code], 0)) for code, display in (BP_SYSTOLIC, BP_DIASTOLIC)
            ]
        else:
            if measure.code == "8302-2":
                value = round(height_cm + rng.uniform(-0.4, 0.4), 1)
            elif measure.code == "29463-7":
                value = round(bmi * (height_cm / 100) ** 2 * rng.uniform(0.98, 1.02), 1)
            elif measure.code == "39156-5":
                value = round(bmi * rng.uniform(0.98, 1.02), 1)
            else:
                low, high = ranges.get(measure.code, (measure.low, measure.high))
                value = _draw(rng, low, high, measure.decimals)
            resource["valueQuantity"] = _quantity(value, measure.unit)
        observations.append(resource)
    observations.sort(key=lambda o: o["effectiveDateTime"])
    return observations


def _extended_clinical(seed: int, n: int, patient: Resource, encounters: list[Resource]) -> dict[str, list[Resource]]:
    """Medication requests, allergies, procedures and immunizations for patient n.

    A generator of their own (not the patient's) keeps the core resources identical whether or
    not a sandbox serves these types.
    """
    rng = random.Random(f"sandbox-extended:{seed}:{n}")
    subject = {"reference": f"Patient/{patient['id']}"}

    def visit() -> tuple[Resource, str]:
        encounter = rng.choice(encounters)
        return {"reference": f"Encounter/{encounter['id']}"}, encounter["period"]["start"]

    found: dict[str, list[Resource]] = {rtype: [] for rtype in EXTENDED_CLINICAL_TYPES}
    for _ in range(rng.randint(0, 3)):
        code, display, dosage = rng.choice(MEDICATIONS)
        encounter, when = visit()
        found["MedicationRequest"].append(
            {
                "resourceType": "MedicationRequest",
                "id": _uuid(rng),
                "meta": {"profile": [PROFILE_MEDICATION_REQUEST]},
                "status": rng.choice(("active", "completed")),
                "intent": "order",
                "category": [
                    {"coding": [{"system": MEDICATION_REQUEST_CATEGORY, "code": "community", "display": "Community"}]}
                ],
                "medicationCodeableConcept": {
                    "coding": [{"system": RXNORM, "code": code, "display": display}],
                    "text": display,
                },
                "subject": subject,
                "encounter": encounter,
                "authoredOn": when,
                "dosageInstruction": [{"text": dosage}],
            }
        )
    for code, display in rng.sample(ALLERGIES, rng.randint(0, 2)):
        reaction_code, reaction_display = rng.choice(REACTIONS)
        _encounter, when = visit()
        found["AllergyIntolerance"].append(
            {
                "resourceType": "AllergyIntolerance",
                "id": _uuid(rng),
                "meta": {"profile": [PROFILE_ALLERGY]},
                "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active", "display": "Active"}]},
                "verificationStatus": {
                    "coding": [{"system": ALLERGY_VERIFICATION, "code": "confirmed", "display": "Confirmed"}]
                },
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
                "patient": subject,
                "recordedDate": when,
                "reaction": [
                    {
                        "manifestation": [
                            {"coding": [{"system": SNOMED, "code": reaction_code, "display": reaction_display}]}
                        ]
                    }
                ],
            }
        )
    for _ in range(rng.randint(0, 2)):
        code, display = rng.choice(PROCEDURES)
        encounter, when = visit()
        found["Procedure"].append(
            {
                "resourceType": "Procedure",
                "id": _uuid(rng),
                "meta": {"profile": [PROFILE_PROCEDURE]},
                "status": "completed",
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
                "subject": subject,
                "encounter": encounter,
                "performedDateTime": when,
            }
        )
    for _ in range(rng.randint(1, 3)):
        code, display = rng.choice(VACCINES)
        encounter, when = visit()
        found["Immunization"].append(
            {
                "resourceType": "Immunization",
                "id": _uuid(rng),
                "meta": {"profile": [PROFILE_IMMUNIZATION]},
                "status": "completed",
                "vaccineCode": {"coding": [{"system": CVX, "code": code, "display": display}], "text": display},
                "patient": subject,
                "encounter": encounter,
                "occurrenceDateTime": when,
                "primarySource": True,
            }
        )
    return found


# --- small helpers --------------------------------------------------------------


def _uuid(rng: random.Random) -> str:
    # Version-4-shaped UUIDs from the patient's own generator: URL-safe, stable
    # under the seed, and as opaque as a real server's ids.
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ts(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _at_clinic_hours(rng: random.Random, moment: datetime) -> datetime:
    return moment.replace(hour=rng.randint(7, 17), minute=rng.choice((0, 15, 30, 45)), second=0, microsecond=0)


def _weighted(rng: random.Random, rows: tuple[tuple[str, str, int], ...]) -> tuple[str, str]:
    code, display, _ = _weighted_row(rng, rows)
    return code, display


def _weighted_row(rng: random.Random, rows: Any) -> Any:
    total = sum(row[-1] for row in rows)
    pick = rng.uniform(0, total)
    for row in rows:
        pick -= row[-1]
        if pick <= 0:
            return row
    return rows[-1]


def _draw(rng: random.Random, low: float, high: float, decimals: int) -> float | int:
    value = round(rng.uniform(low, high), decimals)
    return int(value) if decimals == 0 else value


def _quantity(value: float | int, unit: str) -> Resource:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _component(code: str, display: str, value: float | int) -> Resource:
    return {
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "valueQuantity": _quantity(value, "mm[Hg]"),
    }


def _omb_extension(name: str, row: tuple[str, str]) -> Resource:
    code, display = row
    return {
        "url": US_CORE + name,
        "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB_RACE_ETHNICITY, "code": code, "display": display}},
            {"url": "text", "valueString": display},
        ],
    }


def _prefix(gender: str, marital: str) -> str:
    if gender == "male":
        return "Mr."
    return "Mrs." if marital in ("M", "W") else "Ms."
