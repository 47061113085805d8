"""The vendor flavours of the sandbox hospital, as a table of facts.

Real EHRs all speak FHIR R4 and still differ in ways that break a naive
client: where the FHIR base lives, which identifier system carries the MRN,
how paging links look, which search parameters are mandatory or refused, how
large a page may be. The portal's adapters exist to absorb those differences,
so the sandbox must reproduce them. Every difference lives here, as data, so
the server code stays vendor-neutral and a reader can compare vendors at a
glance. The facts are synthetic but modelled on what each vendor's public
sandbox does; none of the URLs or OIDs point at a real hospital.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a flavour writes its `next` link:
# - "cursor":        absolute link to the FHIR base with one opaque `_getpages` token
#                    that carries the whole search (HAPI / Epic style).
# - "page_context":  absolute link repeating the search plus an opaque
#                    `-pageContext` token and `-pageDirection=NEXT` (Oracle Health).
# - "relative_page": RELATIVE link `Patient?_count=10&page=2`, to be resolved
#                    against the FHIR base (MEDITECH).
# - "offset":        absolute link repeating the search with `_offset=N`.
PagingStyle = Literal["cursor", "page_context", "relative_page", "offset"]

CLINICAL_TYPES: tuple[str, ...] = ("Observation", "Condition", "Encounter")
RESOURCE_TYPES: tuple[str, ...] = ("Patient", *CLINICAL_TYPES)


@dataclass(frozen=True)
class RequiredParam:
    """A search parameter a vendor insists on, with the reason it does."""

    param: str
    resource_types: tuple[str, ...]
    why: str
    # When non-empty, the only values accepted (e.g. the practice a client is
    # provisioned for); any other value is refused with 403, as for a foreign tenant.
    allowed_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flavour:
    """Everything that distinguishes one vendor's FHIR server from another."""

    name: str
    vendor: str
    software_name: str
    software_version: str
    base_path: str

    # Identifiers: every patient carries the MRN (type v2-0203 MR) and a
    # second, enterprise-wide identifier, as real EHRs do.
    mrn_system: str
    enterprise_system: str
    enterprise_type_code: str  # v2-0203 code of the second identifier
    enterprise_type_text: str
    enterprise_prefix: str  # how the vendor formats its enterprise id values

    paging: PagingStyle
    default_count: int
    max_count: int  # the server clamps larger `_count` values to this

    # Search rules.
    reject_unknown_params: bool
    unknown_params_why: str
    patient_params: tuple[str, ...]  # params that may name the patient on clinical searches
    refused_params: tuple[str, ...]  # clinical-search params answered with 400, not ignored
    refused_params_why: str
    clinical_requires_patient: bool
    clinical_requires_patient_why: str
    required_params: tuple[RequiredParam, ...] = ()

    def required_for(self, resource_type: str) -> tuple[RequiredParam, ...]:
        return tuple(r for r in self.required_params if resource_type in r.resource_types)

    @property
    def paging_params(self) -> tuple[str, ...]:
        """The query parameters this flavour uses to carry paging state."""
        return {
            "cursor": ("_getpages",),
            "page_context": ("-pageContext", "-pageDirection"),
            "relative_page": ("page",),
            "offset": ("_offset",),
        }[self.paging]


ATHENA_PRACTICE = "Organization/a-1.Practice-195900"

EPIC = Flavour(
    name="epic",
    vendor="Epic Systems Corporation",
    software_name="Epic",
    software_version="November 2024",
    base_path="/api/FHIR/R4",
    mrn_system="urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14",
    enterprise_system="urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0",
    enterprise_type_code="PT",
    enterprise_type_text="EPI",
    enterprise_prefix="E",
    paging="cursor",
    default_count=25,
    max_count=100,
    reject_unknown_params=True,
    unknown_params_why="Epic answers 400 to parameters it does not support instead of silently widening the search.",
    patient_params=("patient", "subject"),
    refused_params=(),
    refused_params_why="",
    clinical_requires_patient=True,
    clinical_requires_patient_why="Epic has no population-wide clinical search; every query is scoped to one patient.",
    required_params=(
        RequiredParam(
            param="category",
            resource_types=("Observation",),
            why=(
                "Epic serves vitals, labs and social history from different back ends, "
                "so Observation.Search needs a category."
            ),
        ),
    ),
)

ORACLE_HEALTH = Flavour(
    name="oracle_health",
    vendor="Oracle Health",
    software_name="Oracle Health Millennium",
    software_version="2024.01",
    base_path="/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d",
    mrn_system="urn:oid:2.16.840.1.113883.3.13.6",
    enterprise_system="urn:oid:2.16.840.1.113883.3.13.8",
    enterprise_type_code="PI",
    enterprise_type_text="Federated Person Principal",
    enterprise_prefix="",
    paging="page_context",
    default_count=20,
    max_count=100,
    reject_unknown_params=False,
    unknown_params_why="Millennium ignores parameters it does not know and drops them from the self link.",
    patient_params=("patient",),
    refused_params=("subject",),
    refused_params_why="Millennium's R4 clinical searches take `patient` only and refuse `subject` with 400.",
    clinical_requires_patient=True,
    clinical_requires_patient_why="Millennium scopes every clinical search to one patient.",
)

MEDITECH = Flavour(
    name="meditech",
    vendor="Medical Information Technology, Inc.",
    software_name="MEDITECH Expanse",
    software_version="2.2",
    base_path="/v2/fhir/r4",
    mrn_system="urn:oid:1.3.6.1.4.1.54392.5.1.1",
    enterprise_system="urn:oid:1.3.6.1.4.1.54392.5.1.2",
    enterprise_type_code="PI",
    enterprise_type_text="Enterprise Medical Record Number",
    enterprise_prefix="M",
    paging="relative_page",
    default_count=10,
    max_count=50,
    reject_unknown_params=False,
    unknown_params_why="Expanse ignores parameters it does not know.",
    patient_params=("patient", "subject"),
    refused_params=(),
    refused_params_why="",
    clinical_requires_patient=True,
    clinical_requires_patient_why="Expanse scopes every clinical search to one patient.",
)

ATHENAHEALTH = Flavour(
    name="athenahealth",
    vendor="athenahealth, Inc.",
    software_name="athenaOne",
    software_version="25.6",
    base_path="/fhir/r4",
    mrn_system="urn:oid:2.16.840.1.113883.3.564.1",
    enterprise_system="urn:oid:2.16.840.1.113883.3.564.2",
    enterprise_type_code="PI",
    enterprise_type_text="Enterprise ID",
    enterprise_prefix="A",
    paging="offset",
    default_count=10,
    max_count=100,
    reject_unknown_params=False,
    unknown_params_why="athenaOne ignores parameters it does not know.",
    patient_params=("patient", "subject"),
    refused_params=(),
    refused_params_why="",
    clinical_requires_patient=True,
    clinical_requires_patient_why="athenaOne scopes every clinical search to one patient.",
    required_params=(
        RequiredParam(
            param="ah-practice",
            resource_types=RESOURCE_TYPES,
            why="athenaOne is one multi-tenant system; every search names the practice the client is provisioned for.",
            allowed_values=(ATHENA_PRACTICE,),
        ),
    ),
)

GENERIC = Flavour(
    name="generic",
    vendor="Example Health",
    software_name="HAPI FHIR Server",
    software_version="7.4.0",
    base_path="/fhir",
    mrn_system="http://hospital.example.org/mrn",
    enterprise_system="http://hospital.example.org/enterprise-id",
    enterprise_type_code="PI",
    enterprise_type_text="Enterprise ID",
    enterprise_prefix="EID-",
    paging="offset",
    default_count=20,
    max_count=500,
    reject_unknown_params=False,
    unknown_params_why=(
        "A plain FHIR server ignores unknown parameters (FHIR's default handling) and drops them from the self link."
    ),
    patient_params=("patient", "subject"),
    refused_params=(),
    refused_params_why="",
    clinical_requires_patient=False,
    clinical_requires_patient_why="",
)

FLAVOURS: dict[str, Flavour] = {f.name: f for f in (EPIC, ORACLE_HEALTH, MEDITECH, ATHENAHEALTH, GENERIC)}
