"""The vendor-neutral FHIR R4 adapter that every vendor module specialises.

Pipeline steps never speak HTTP or FHIR JSON directly: they ask an adapter for a capability
summary, a patient, a page of patients or a patient's clinical resources, and get typed results
or a ``RemoteError``. What differs between EHRs (MRN identifier systems, page-size limits,
mandatory search parameters, how the patient is named in a search) is declared as class
attributes and small overrides in the vendor modules, so this file holds no vendor names.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.patient import Patient

from connections.adapters.digests import DigestSet, digest
from connections.auth import AuthConfig, Authenticator, TokenInfo
from connections.errors import ErrorKind, RemoteError
from connections.http import DEFAULT_ACCEPT, GuardedClient, pin_target, too_deep_message
from connections.loadgen.mix import RecordPool
from connections.loadgen.target import PinnedTarget
from portal import safejson

SUPPORTED_FHIR_VERSION = "4.0."
OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
# FHIR ids: letters, digits, '-' and '.', up to 64 characters. Checked before an id goes into a
# URL path, so an id taken from a remote payload cannot steer the request elsewhere.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_MAX_PATHS = 10
# What servers without a CapabilityStatement answer at /metadata: an empty search, or an outcome.
_NO_CAPABILITY_ANSWERS = frozenset({"Bundle", "OperationOutcome"})


@dataclass(frozen=True)
class ConnectionConfig:
    """Where and how to reach one hospital endpoint."""

    vendor: str
    base_url: str
    auth: AuthConfig
    mrn_system: str = ""  # "" means the vendor's default MRN systems
    # Parameters some vendors require on every search, such as athenahealth's
    # (("ah-practice", "Organization/a-1.Practice-195900"),). Pairs, so the config stays hashable.
    extra_params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NormalizedPatient:
    """The few patient facts the pipeline compares across vendors."""

    id: str
    mrn: str | None
    family: str
    given: tuple[str, ...]
    birth_date: str | None
    gender: str | None
    # The systems of the identifiers that carry a value (never the values): which MRN system is there.
    # Left out of comparisons: vendors name the same patient's identifiers differently.
    identifier_systems: frozenset[str] = field(default=frozenset(), compare=False)


@dataclass(frozen=True)
class PatientPage:
    """The first page of a Patient search, with what it says about the server's paging."""

    patients: list[NormalizedPatient]
    asked: int  # the _count sent
    returned: int  # matched Patients on the page
    total: int | None  # Bundle.total, when the server gives one
    next_url: str | None


@dataclass
class CapabilitySummary:
    """What a server's CapabilityStatement says it can do, reduced to what the steps check."""

    fhir_version: str
    software: str
    formats: list[str]
    resources: dict[str, dict[str, list[str]]]  # type -> {"interactions": [...], "search_params": [...]}
    security: dict[str, Any] = field(default_factory=dict)
    # Operations by where they are declared: "system" (rest.operation) or a resource type.
    operations: dict[str, list[str]] = field(default_factory=dict)

    def export_levels(self) -> list[str]:
        """The Bulk Data $export levels advertised: system, patient and/or group (IG 2.0)."""
        levels = []
        for level, where in (("system", "system"), ("patient", "Patient"), ("group", "Group")):
            if any(name.lstrip("$") in ("export", "bulk-export") for name in self.operations.get(where, [])):
                levels.append(level)
        return levels

    def supports(self, resource_type: str, interaction: str = "search-type") -> bool:
        """Whether the server advertises an interaction on a resource type."""
        return interaction in self.resources.get(resource_type, {}).get("interactions", [])


class FHIRAdapter:
    """A FHIR R4 server as the pipeline sees it. Subclasses declare their vendor's quirks."""

    vendor: ClassVar[str] = "generic"
    default_mrn_systems: ClassVar[tuple[str, ...]] = ()
    max_page_size: ClassVar[int] = 100
    # The search parameter that names the patient on clinical searches.
    patient_param: ClassVar[str] = "patient"
    # Parameters a vendor requires on a clinical search, with every value to search: each
    # value is searched separately and the results merged (e.g. Epic's Observation category).
    fan_out_params: ClassVar[Mapping[str, tuple[str, tuple[str, ...]]]] = {}
    # Parameters that must be present in ConnectionConfig.extra_params (e.g. a practice id).
    required_extra_params: ClassVar[tuple[str, ...]] = ()
    max_pages: ClassVar[int] = 1000
    # Consecutive pages that add no new patient before paging is declared stuck.
    max_pages_without_progress: ClassVar[int] = 3

    def __init__(self, config: ConnectionConfig, client: GuardedClient) -> None:
        self.config = config
        self.client = client
        self.base_url = config.base_url.rstrip("/")
        self.auth = Authenticator(config.auth, client)
        # What the raw pulls met, for the steps to report: resources refused because they name another
        # patient than the one searched (per type), and what the server's paging gave away (by code).
        self.foreign_resources: Counter[str] = Counter()
        self.paging_notes: dict[str, str] = {}

    def worker_copy(self) -> FHIRAdapter:
        """A copy for one thread of a concurrent pull: the same client, limiter and token, its own notes.

        What a pull notes (refused resources, paging) is counted per copy and folded back with
        ``absorb`` once the pull is over, so no two threads ever update the same counter.
        """
        twin = copy.copy(self)
        twin.foreign_resources = Counter()
        twin.paging_notes = {}
        return twin

    def absorb(self, twin: FHIRAdapter) -> None:
        """Fold what a worker copy noted into this adapter's notes."""
        self.foreign_resources.update(twin.foreign_resources)
        for code, note in twin.paging_notes.items():
            self.paging_notes.setdefault(code, note)

    # ---- discovery ---------------------------------------------------------------------

    def capability(self) -> CapabilitySummary:
        """Read and check ``/metadata``: a FHIR R4 CapabilityStatement, structurally valid."""
        # Metadata is public on every major EHR; reading it without credentials means a wrong
        # secret cannot make a good endpoint look like a non-FHIR one.
        response = self.client.request(
            "GET", self._url("metadata"), headers={"Accept": DEFAULT_ACCEPT}, expect_json=False
        )
        content_type = response.headers.get("content-type", "")
        body = _json_or_not_fhir(response.content, content_type)
        if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
            raise _not_a_capability_statement(body, content_type)
        _check_version(body.get("fhirVersion"))
        parse_resource(CapabilityStatement, body, "CapabilityStatement")
        return summarize_capability(body)

    def smart_configuration(self) -> dict[str, Any] | None:
        """The SMART ``.well-known/smart-configuration`` document; None if the server has none."""
        try:
            response = self.client.get_json(self._url(".well-known/smart-configuration"))
        except RemoteError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        body = response.json()
        if not isinstance(body, dict):
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                "The server's SMART configuration is not a JSON object.",
            )
        return body

    def authenticate(self) -> TokenInfo | None:
        """Obtain a fresh token (client credentials, SMART Backend Services) and report it; None for none/basic."""
        if not self.config.auth.needs_token:
            return None
        self.auth.invalidate()
        self.auth.headers()
        return self.auth.token_info()

    # ---- patients ------------------------------------------------------------------------

    def read_patient(self, patient_id: str) -> NormalizedPatient:
        """Read one Patient by id and normalise it."""
        body = self._get(f"Patient/{_path_id(patient_id)}")
        parse_resource(Patient, body, "Patient")
        return self.normalize_patient(body)

    def find_patients_by_identifier(self, system: str, value: str) -> list[NormalizedPatient]:
        """The Patients whose identifier in ``system`` is ``value`` (an MRN search), normalised."""
        bundle = self._get("Patient", self._search_params("Patient", {"identifier": f"{system}|{value}"}))
        return [self.normalize_patient(r) for r in self._bundle_resources(bundle, "Patient")]

    def search_patients(self, *, count: int = 10) -> list[NormalizedPatient]:
        """The first page of a Patient search, at most ``count`` patients."""
        return self.patient_page(count=count).patients[:count]

    def patient_page(self, *, count: int = 10) -> PatientPage:
        """The first page of a Patient search as sent (all of it, even past ``count``), and its paging facts."""
        size = self._page_size(count)
        bundle = self._get("Patient", self._search_params("Patient", {"_count": str(size)}))
        resources = self._bundle_resources(bundle, "Patient")
        total = bundle.get("total")
        return PatientPage(
            patients=[self.normalize_patient(r) for r in resources],
            asked=size,
            returned=len(resources),
            total=total if isinstance(total, int) and not isinstance(total, bool) else None,
            next_url=self._next_link(bundle),
        )

    def follow_patient_page(self, url: str) -> list[NormalizedPatient]:
        """The Patients of a next page a ``PatientPage`` pointed at (same server only)."""
        if _origin(url) != _origin(self.base_url):
            raise _paging_error("The server's next link points at a different server.")
        bundle = self._get_url(url)
        return [self.normalize_patient(r) for r in self._bundle_resources(bundle, "Patient")]

    def iter_patients(self, *, limit: int, page_size: int | None = None) -> Iterator[NormalizedPatient]:
        """Up to ``limit`` distinct patients, following the server's next links."""
        params = self._search_params("Patient", {"_count": str(self._page_size(page_size or limit))})
        for resource in self._iter_search("Patient", params, limit=limit):
            yield self.normalize_patient(resource)

    def normalize_patient(self, resource: Mapping[str, Any]) -> NormalizedPatient:
        """Reduce a Patient resource to the facts compared across vendors."""
        name = _preferred_name(resource.get("name") or [])
        return NormalizedPatient(
            id=str(resource.get("id", "")),
            mrn=self._mrn(resource.get("identifier") or []),
            family=str(name.get("family") or ""),
            given=tuple(str(g) for g in name.get("given") or []),
            birth_date=resource.get("birthDate"),
            gender=resource.get("gender"),
            identifier_systems=frozenset(
                str(i["system"])
                for i in resource.get("identifier") or []
                if isinstance(i, dict) and i.get("system") and i.get("value")
            ),
        )

    def mrn_systems(self) -> tuple[str, ...]:
        """The identifier systems that carry the MRN, most specific first."""
        if self.config.mrn_system:
            return (self.config.mrn_system,)
        return self.default_mrn_systems

    def _mrn(self, identifiers: list[Any]) -> str | None:
        by_system = {i.get("system"): i.get("value") for i in identifiers if isinstance(i, dict) and i.get("value")}
        return next((by_system[s] for s in self.mrn_systems() if s in by_system), None)

    # ---- clinical ------------------------------------------------------------------------

    def search_clinical(self, resource_type: str, patient_id: str, *, count: int = 50) -> list[dict[str, Any]]:
        """A patient's resources of one type (first page per query), validated, without duplicates.

        ``count`` is the page size asked of each query; vendors that need one query per value of
        a mandatory parameter get each query's first page, merged.
        """
        if not _RESOURCE_TYPE.fullmatch(resource_type):
            raise RemoteError(ErrorKind.BAD_REQUEST, f"{resource_type!r} is not a resource type.")
        model = _model_class(resource_type)
        merged: dict[str, dict[str, Any]] = {}
        for params in self.clinical_queries(resource_type, _path_id(patient_id), count):
            bundle = self._get(resource_type, params)
            for resource in self._bundle_resources(bundle, resource_type):
                parse_resource(model, resource, resource_type)
                merged.setdefault(str(resource.get("id")), resource)
        return list(merged.values())

    def clinical_queries(self, resource_type: str, patient_id: str, count: int) -> list[dict[str, str]]:
        """The searches that together return a patient's resources of one type."""
        base = {self.patient_param: patient_id, "_count": str(self._page_size(count))}
        base = self._search_params(resource_type, base)
        fan_out = self.fan_out_params.get(resource_type)
        if fan_out is None:
            return [base]
        param, values = fan_out
        return [{**base, param: value} for value in values]

    # ---- load tests ----------------------------------------------------------------------

    def load_target(self) -> tuple[PinnedTarget, TokenInfo | None]:
        """The pinned address and credential a load test sends to, and the token's facts if it has one.

        The load engine sends thousands of requests outside this client, so the base URL gets the
        guarded client's checks once (``connections.http.pin_target``) and one fixed credential: a
        token-based connection fetches a fresh token, whose lifetime the caller checks against the run.
        """
        if self.config.auth.needs_token:
            self.auth.invalidate()
        headers = self.auth.headers()
        return pin_target(self.base_url, self.client.policy, headers=headers), self.auth.token_info()

    def load_pool(self, patient_ids: tuple[str, ...], identifiers: tuple[tuple[str, str], ...]) -> RecordPool:
        """The records a load test's requests are built from, spelt as this vendor wants its searches.

        A vendor's mandatory parameters go on every search of their type (the connection's extra
        parameters, and the first value of a parameter the adapter otherwise fans out over, such as
        Epic's Observation category), so each request is one the server accepts.
        """
        extra = tuple(self.config.extra_params)
        per_type: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        for resource_type in ("Patient", "Observation", "Condition", "Encounter"):
            params = extra
            fan_out = self.fan_out_params.get(resource_type)
            if fan_out is not None and fan_out[1]:
                params = (*params, (fan_out[0], fan_out[1][0]))
            if params:
                per_type.append((resource_type, params))
        return RecordPool(
            patient_ids=patient_ids,
            identifiers=identifiers,
            patient_param=self.patient_param,
            extra_params=tuple(per_type),
        )

    # ---- plumbing ------------------------------------------------------------------------

    def _search_params(self, resource_type: str, params: dict[str, str]) -> dict[str, str]:
        """Add the connection's extra parameters, refusing to search without required ones."""
        extra = dict(self.config.extra_params)
        missing = [p for p in self.required_extra_params if not extra.get(p)]
        if missing:
            raise RemoteError(
                ErrorKind.BAD_REQUEST,
                f"This {self.vendor} connection needs {', '.join(missing)} before it can search.",
                hint="Add the value the hospital gave you to the connection's settings.",
                detail={"missing_params": missing},
            )
        return {**params, **extra}

    def _page_size(self, requested: int) -> int:
        return max(1, min(requested, self.max_page_size))

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._get_url(self._url(path), params)

    def _get_url(self, url: str, params: Mapping[str, str] | None = None) -> Any:
        """An authenticated GET; a 401 on a cached token gets one fresh token and one retry."""
        try:
            return self.client.get_json(url, headers=self.auth.headers(), params=params).json()
        except RemoteError as exc:
            if exc.kind is not ErrorKind.AUTH or not self.config.auth.needs_token:
                raise
        self.auth.invalidate()
        return self.client.get_json(url, headers=self.auth.headers(), params=params).json()

    def _bundle_resources(self, bundle: Any, resource_type: str) -> list[dict[str, Any]]:
        """The matched resources of one type in a searchset Bundle (includes and outcomes left out)."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                f"The server answered a {resource_type} search with something other than a Bundle.",
            )
        found = []
        for index, entry in enumerate(bundle.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                raise _structure_error(resource_type, [f"entry.{index}.resource: missing"])
            mode = (entry.get("search") or {}).get("mode", "match")
            if mode == "match" and resource.get("resourceType") == resource_type:
                found.append(resource)
        return found

    def _next_link(self, bundle: Mapping[str, Any]) -> str | None:
        """The absolute next-page URL, resolved against the base; it must stay on the same server."""
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
                url = urljoin(self.base_url + "/", str(link["url"]))
                if _origin(url) != _origin(self.base_url):
                    # Following it would send our token to another host.
                    raise _paging_error("The server's next link points at a different server.")
                return url
        return None

    # ---- raw resources, for the map and validate steps ------------------------------------
    # These read resources exactly as the server sent them and reject nothing structurally odd:
    # the map step profiles them and the validate step reports each problem as a finding, where
    # the methods above would stop at the first bad resource.

    def iter_raw_patients(self, *, limit: int, page_size: int = 50) -> Iterator[dict[str, Any]]:
        """Up to ``limit`` distinct Patient resources as sent, holding one page in memory at a time."""
        params = self._search_params("Patient", {"_count": str(self._page_size(page_size))})
        yield from self._iter_search("Patient", params, limit=limit)

    def search_clinical_raw(self, resource_type: str, patient_id: str, *, page_size: int = 100) -> list[dict[str, Any]]:
        """Every one of a patient's resources of one type, all pages, merged without duplicates.

        A resource whose subject or patient names another patient is refused (counted in
        ``foreign_resources``): a server that ignores the patient parameter answers everyone's, and
        paging on through them would pull the whole population once per patient, so the search stops
        at the first page that holds another patient's resources.
        """
        if not _RESOURCE_TYPE.fullmatch(resource_type):
            raise RemoteError(ErrorKind.BAD_REQUEST, f"{resource_type!r} is not a resource type.")
        merged: dict[str, dict[str, Any]] = {}
        unnamed: list[dict[str, Any]] = []
        for params in self.clinical_queries(resource_type, _path_id(patient_id), page_size):
            for resource in self._iter_search(resource_type, params, limit=None, patient_id=patient_id):
                if resource.get("id"):
                    merged.setdefault(str(resource["id"]), resource)
                else:
                    unnamed.append(resource)
        return [*merged.values(), *unnamed]

    def _iter_search(
        self, resource_type: str, params: dict[str, str], *, limit: int | None, patient_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Matched resources of one search across its pages: a page cap, loop and stall detection, no repeats.

        With ``patient_id``, resources naming another patient are refused and end the search (see
        ``search_clinical_raw``).
        """
        url = self._url(resource_type)
        current: dict[str, str] | None = params
        asked = int(params["_count"]) if str(params.get("_count", "")).isdigit() else None
        # Ids seen, as 64-bit digests in a compact set: 8 bytes a patient's id.
        seen_ids = DigestSet()
        seen_links: set[str] = set()
        yielded = pages = stalled = 0
        while limit is None or yielded < limit:
            pages += 1
            if pages > self.max_pages:
                raise _paging_error(f"The server kept paging past {self.max_pages} pages.")
            bundle = self._get_url(url, current)
            new = foreign = 0
            matched = self._bundle_resources(bundle, resource_type)
            self._note_page(resource_type, bundle, matched, asked, yielded, pages)
            for resource in matched:
                owner = owner_id(resource) if patient_id is not None else None
                if owner is not None and owner != patient_id:
                    self.foreign_resources[resource_type] += 1
                    foreign += 1
                    continue
                resource_id = str(resource.get("id") or "")
                key = digest(resource_id)
                if resource_id and key in seen_ids:
                    continue  # offset paging over a changing list can repeat a resource
                seen_ids.add(key)
                new += 1
                yield resource
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if foreign:
                return  # the server ignores the patient: the next pages are other patients' too
            stalled = 0 if new else stalled + 1
            if stalled >= self.max_pages_without_progress:
                raise _paging_error(f"The server's {resource_type} pages stopped returning new resources.")
            next_url = self._next_link(bundle)
            if next_url is None:
                return
            if next_url in seen_links:
                raise _paging_error("The server's next link repeats an earlier page (a paging loop).")
            seen_links.add(next_url)
            url, current = next_url, None

    def _note_page(
        self,
        resource_type: str,
        bundle: Mapping[str, Any],
        matched: list[dict[str, Any]],
        asked: int | None,
        yielded: int,
        pages: int,
    ) -> None:
        """Write down what a page says about the server's paging: more than _count asked, or no next link."""
        if asked and len(matched) > asked and "ignores_count" not in self.paging_notes:
            self.paging_notes["ignores_count"] = (
                f"The server ignores _count: a {resource_type} page held {len(matched)} resources where we asked "
                f"for at most {asked}."
            )
        total = bundle.get("total")
        if (
            pages == 1
            and isinstance(total, int)
            and total > len(matched)
            and self._next_link(bundle) is None
            and "never_pages" not in self.paging_notes
        ):
            self.paging_notes["never_pages"] = (
                f"The server does not page: its first {resource_type} page held {len(matched)} of the {total} "
                "matches it counts, with no link to the next page."
            )


# ---- helpers shared by the vendor modules ----------------------------------------------------


def owner_id(resource: Mapping[str, Any]) -> str | None:
    """The id of the patient a clinical resource's subject (or patient) names; None when it names none."""
    for name in ("subject", "patient"):
        reference = resource.get(name)
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            parts = reference["reference"].rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
                return parts[-1]
    return None


def _not_a_capability_statement(body: Any, content_type: str) -> RemoteError:
    """What /metadata sent instead of a CapabilityStatement, described without copying data from it."""
    received = _describe_json(body)
    detail = {"received": received, "content_type": content_type[:100]}
    sent = f"{received['summary']} ({content_type[:100] or 'no content type'})"
    resource_type = body.get("resourceType") if isinstance(body, dict) else None
    if not isinstance(resource_type, str):
        return RemoteError(
            ErrorKind.NOT_FHIR,
            f"The address answered JSON, but not FHIR: /metadata sent {sent}. Check the FHIR base URL.",
            detail=detail,
        )
    if resource_type not in _NO_CAPABILITY_ANSWERS:
        return RemoteError(
            ErrorKind.NOT_FHIR,
            f"The server answered /metadata with {sent}, where a CapabilityStatement belongs. Check the FHIR base "
            "URL: it may name a resource rather than the server's base.",
            detail=detail,
        )
    return RemoteError(
        ErrorKind.NO_CAPABILITY_STATEMENT,
        f"The server answered /metadata with {sent}, not a CapabilityStatement.",
        detail=detail,
    )


def _describe_json(body: Any) -> dict[str, Any]:
    """A short, safe account of a JSON answer: its type and shape, never its values (they could be PHI).

    An OperationOutcome's issue codes and the first diagnostics are kept: servers write them for us.
    """
    if isinstance(body, list):
        return {"summary": f"a JSON array of {len(body)} items"}
    if not isinstance(body, dict):
        return {"summary": f"a bare JSON {type(body).__name__}"}
    keys = sorted(str(k)[:40] for k in body)[:12]
    resource_type = body.get("resourceType")
    if not isinstance(resource_type, str):
        return {"summary": f"a JSON object with the fields {', '.join(keys) or '(none)'}", "fields": keys}
    described: dict[str, Any] = {"resource_type": resource_type[:64], "fields": keys}
    summary = f"a FHIR {resource_type[:64]}"
    if resource_type == "Bundle":
        entry = body.get("entry")
        entries: list[Any] = entry if isinstance(entry, list) else []
        bundle_type, total = body.get("type"), body.get("total")
        described.update(bundle_type=str(bundle_type)[:32], total=total if isinstance(total, int) else None)
        described["entries"] = len(entries)
        summary = f"a FHIR Bundle (type {str(bundle_type)[:32]}, {len(entries)} entries)"
        if entries:
            types = Counter(
                str((e.get("resource") or {}).get("resourceType"))[:64] for e in entries if isinstance(e, dict)
            )
            described["entry_types"] = dict(types.most_common(5))
    elif resource_type == "OperationOutcome":
        issues = [i for i in body.get("issue") or [] if isinstance(i, dict)]
        described["issues"] = [f"{str(i.get('severity'))[:16]} {str(i.get('code'))[:32]}" for i in issues[:5]]
        said = next((str(i["diagnostics"]) for i in issues if isinstance(i.get("diagnostics"), str)), "")
        if said:
            described["diagnostics"] = said[:200]
            summary = f"a FHIR OperationOutcome saying “{said[:200]}”"
    return {"summary": summary, **described}


def parse_resource(model: type, body: Mapping[str, Any], label: str) -> Any:
    """Instantiate a fhirclient model strictly; structural errors become BAD_PAYLOAD with paths."""
    expected = getattr(model, "resource_type", label)
    found = body.get("resourceType") if isinstance(body, Mapping) else type(body).__name__
    if found != expected:
        # fhirclient raises a bare Exception for this; name both types instead.
        raise RemoteError(
            ErrorKind.BAD_PAYLOAD,
            f"The server answered with a {str(found)[:64] or 'resource without a type'} where a {label} was expected.",
            detail={"resource_type": label, "found_resource_type": str(found)[:64]},
        )
    try:
        return model(dict(body), strict=True)
    except FHIRValidationError as exc:
        error = _structure_error(label, validation_paths(exc))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        error = _structure_error(label, [f"{{root}}: {type(exc).__name__}"])
    raise error


def validation_paths(exc: FHIRValidationError, prefix: str = "") -> list[str]:
    """Flatten fhirclient's nested validation errors into "path: problem" lines."""
    path = ".".join(p for p in (prefix, exc.path or "") if p)
    lines: list[str] = []
    for inner in exc.errors:
        if isinstance(inner, FHIRValidationError):
            lines.extend(validation_paths(inner, path))
        else:
            # Drop fhirclient's "in data for <object at 0x...>" tail: noise, and never PHI.
            problem = str(inner).split(" in data for ")[0][:160]
            lines.append(f"{path or '{root}'}: {problem}")
    return lines


def summarize_capability(body: Mapping[str, Any]) -> CapabilitySummary:
    """The parts of a CapabilityStatement the configure step checks."""
    servers = [r for r in body.get("rest") or [] if isinstance(r, dict) and r.get("mode") == "server"]
    rest: Mapping[str, Any] = servers[0] if servers else {}
    resources = {
        str(r.get("type")): {
            "interactions": [i.get("code") for i in r.get("interaction") or [] if i.get("code")],
            "search_params": [p.get("name") for p in r.get("searchParam") or [] if p.get("name")],
        }
        for r in rest.get("resource") or []
        if r.get("type")
    }
    operations: dict[str, list[str]] = {}
    system_ops = [str(o.get("name")) for o in rest.get("operation") or [] if isinstance(o, dict) and o.get("name")]
    if system_ops:
        operations["system"] = system_ops
    for r in rest.get("resource") or []:
        ops = [str(o.get("name")) for o in r.get("operation") or [] if isinstance(o, dict) and o.get("name")]
        if ops and r.get("type"):
            operations[str(r["type"])] = ops
    software = body.get("software") or {}
    return CapabilitySummary(
        operations=operations,
        fhir_version=str(body.get("fhirVersion")),
        software=" ".join(str(s) for s in (software.get("name"), software.get("version")) if s),
        formats=[str(f) for f in body.get("format") or []],
        resources=resources,
        security=_security_summary(rest.get("security") or {}),
    )


def _security_summary(security: Mapping[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "services": [
            c.get("code") for s in security.get("service") or [] for c in s.get("coding") or [] if c.get("code")
        ],
    }
    for ext in security.get("extension") or []:
        if ext.get("url") != OAUTH_URIS_EXTENSION:
            continue
        for sub in ext.get("extension") or []:
            if sub.get("url") in ("token", "authorize", "register") and sub.get("valueUri"):
                summary[f"{sub['url']}_url"] = sub["valueUri"]
    return summary


def _json_or_not_fhir(content: bytes, content_type: str) -> Any:
    """Parse a metadata answer: anything that is not JSON means this is not a FHIR endpoint."""
    try:
        return safejson.loads(content)
    except safejson.JSONTooDeep as exc:
        raise RemoteError(
            ErrorKind.BAD_PAYLOAD,
            too_deep_message("a CapabilityStatement", exc),
            detail={"length": len(content), "content_type": content_type, "json_error": str(exc)},
        ) from None
    except ValueError:
        pass
    if content.lstrip().startswith(b"{"):
        raise RemoteError(
            ErrorKind.BAD_PAYLOAD,
            "The server's CapabilityStatement is not valid JSON (it may be cut off).",
            detail={"length": len(content), "content_type": content_type},
        )
    raise RemoteError(
        ErrorKind.NOT_FHIR,
        "The address did not answer FHIR JSON at /metadata. Check the FHIR base URL.",
        detail={"content_type": content_type, "length": len(content)},
    )


def _check_version(version: Any) -> None:
    if not isinstance(version, str) or not version.startswith(SUPPORTED_FHIR_VERSION):
        raise RemoteError(
            ErrorKind.WRONG_VERSION,
            f"The server speaks FHIR {version or '(version not stated)'}; we need R4 (4.0.x).",
            detail={"fhir_version": str(version)[:32]},
        )


def _preferred_name(names: list[Any]) -> dict[str, Any]:
    names = [n for n in names if isinstance(n, dict)]
    for use in ("official", "usual"):
        for name in names:
            if name.get("use") == use:
                return name
    return names[0] if names else {}


def _path_id(value: str) -> str:
    if not _FHIR_ID.fullmatch(value or ""):
        raise RemoteError(
            ErrorKind.BAD_REQUEST,
            "That is not a valid FHIR resource id.",
            hint="Ids are up to 64 letters, digits, '-' and '.'.",
        )
    return quote(value, safe="")


def _model_class(resource_type: str) -> type:
    """The fhirclient model class for a resource type, e.g. Observation."""
    try:
        module = importlib.import_module(f"fhirclient.models.{resource_type.lower()}")
        return getattr(module, resource_type)
    except (ImportError, AttributeError):
        raise RemoteError(ErrorKind.UNSUPPORTED, f"{resource_type} is not a FHIR R4 resource type.") from None


def _structure_error(label: str, paths: list[str]) -> RemoteError:
    return RemoteError(
        ErrorKind.BAD_PAYLOAD,
        f"The server's {label} is not structurally valid FHIR R4 ({paths[0] if paths else ''}).",
        detail={"resource_type": label, "paths": paths[:_MAX_PATHS], "errors": len(paths)},
    )


def _paging_error(message: str) -> RemoteError:
    return RemoteError(
        ErrorKind.BAD_PAYLOAD,
        message,
        hint="An engineer should compare the server's next links; a smaller page size may help.",
    )


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), parts.port or (443 if scheme == "https" else 80)
