"""The request mix: weighted request types, each building real requests from real records.

A load test is only worth its numbers if it asks what the product will ask: reads and searches
for patients that exist, by the identifier system the mapping chose. The caller (the step) hands
over the patient ids and identifiers that map and validate pulled; each request type picks one
at random (seeded, so a run can be repeated) and returns the method and the path under the FHIR
base, so a search that hits nothing or a read of a made-up id never flatters the server.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

# (method, path under the FHIR base with its query, no leading slash), from a seeded generator.
RequestBuilder = Callable[[random.Random], tuple[str, str]]

PATIENT_READ = "patient_read"
PATIENT_BY_IDENTIFIER = "patient_by_identifier"
OBSERVATION_BY_PATIENT = "observation_by_patient"
CONDITION_BY_PATIENT = "condition_by_patient"
ENCOUNTER_BY_PATIENT = "encounter_by_patient"
# The production mix's request types, in the order reports list them.
STANDARD_TYPES = (
    PATIENT_READ,
    PATIENT_BY_IDENTIFIER,
    OBSERVATION_BY_PATIENT,
    CONDITION_BY_PATIENT,
    ENCOUNTER_BY_PATIENT,
)
_SEARCHED_BY_PATIENT = {
    OBSERVATION_BY_PATIENT: "Observation",
    CONDITION_BY_PATIENT: "Condition",
    ENCOUNTER_BY_PATIENT: "Encounter",
}


@dataclass(frozen=True)
class RequestType:
    """One kind of request in the mix and its share of the traffic (weights need not sum to 1)."""

    name: str
    weight: float
    build: RequestBuilder


@dataclass(frozen=True)
class RecordPool:
    """The real records requests are built from, and how this server wants searches spelt."""

    patient_ids: tuple[str, ...]
    # (system, value) pairs of those patients in the mapped MRN system.
    identifiers: tuple[tuple[str, str], ...] = ()
    # The parameter naming the patient on clinical searches (some servers refuse ``subject``).
    patient_param: str = "patient"
    # Page size asked of searches; None leaves it to the server, as the product does.
    count: int | None = None
    # Parameters a vendor requires on a resource type's searches (Epic's Observation category,
    # a practice id), as (resource type, ((name, value), ...)) pairs.
    extra_params: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def params_for(self, resource_type: str) -> tuple[tuple[str, str], ...]:
        """The vendor's extra parameters for one resource type's searches."""
        for rtype, params in self.extra_params:
            if rtype == resource_type:
                return params
        return ()


def _query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)


def patient_read(pool: RecordPool) -> RequestBuilder:
    """``GET Patient/{id}`` for a random known patient."""
    if not pool.patient_ids:
        raise ValueError("a Patient read needs at least one patient id")
    paths = tuple(f"Patient/{quote(pid, safe='')}" for pid in pool.patient_ids)

    def build(rng: random.Random) -> tuple[str, str]:
        return "GET", paths[int(rng.random() * len(paths))]

    return build


def patient_by_identifier(pool: RecordPool) -> RequestBuilder:
    """``GET Patient?identifier=system|value`` for a random known MRN."""
    if not pool.identifiers:
        raise ValueError("a Patient search by identifier needs at least one (system, value) identifier")
    tail = [("_count", str(pool.count))] if pool.count else []
    extra = list(pool.params_for("Patient"))
    paths = tuple(
        "Patient?" + _query([("identifier", f"{system}|{value}"), *extra, *tail]) for system, value in pool.identifiers
    )

    def build(rng: random.Random) -> tuple[str, str]:
        return "GET", paths[int(rng.random() * len(paths))]

    return build


def search_by_patient(resource_type: str, pool: RecordPool) -> RequestBuilder:
    """``GET {resource_type}?patient={id}`` (plus the vendor's required parameters) for a random patient."""
    if not pool.patient_ids:
        raise ValueError(f"a {resource_type} search by patient needs at least one patient id")
    tail = [("_count", str(pool.count))] if pool.count else []
    extra = list(pool.params_for(resource_type))
    paths = tuple(f"{resource_type}?" + _query([(pool.patient_param, pid), *extra, *tail]) for pid in pool.patient_ids)

    def build(rng: random.Random) -> tuple[str, str]:
        return "GET", paths[int(rng.random() * len(paths))]

    return build


def standard_mix(weights: Mapping[str, float], pool: RecordPool) -> tuple[RequestType, ...]:
    """The production mix's request types with the given weights; zero weights are left out.

    ValueError names an unknown type, a negative weight, or a type the pool cannot feed.
    """
    unknown = sorted(set(weights) - set(STANDARD_TYPES))
    if unknown:
        raise ValueError(f"unknown request type(s) {', '.join(unknown)}; known: {', '.join(STANDARD_TYPES)}")
    mix: list[RequestType] = []
    for name in STANDARD_TYPES:
        weight = float(weights.get(name, 0))
        if weight < 0:
            raise ValueError(f"the weight of {name} must not be negative")
        if weight == 0:
            continue
        if name == PATIENT_READ:
            build = patient_read(pool)
        elif name == PATIENT_BY_IDENTIFIER:
            build = patient_by_identifier(pool)
        else:
            build = search_by_patient(_SEARCHED_BY_PATIENT[name], pool)
        mix.append(RequestType(name, weight, build))
    if not mix:
        raise ValueError("the request mix needs at least one request type with a weight above zero")
    return tuple(mix)
