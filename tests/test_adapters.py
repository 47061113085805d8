"""The vendor adapters against the project's sandbox hospitals, over real loopback HTTP.

Each vendor flavour runs as its own sandbox (same seed, so the same synthetic people), and the
adapters must page through everyone, absorb each vendor's quirks and normalise a patient the
same way everywhere. Payloads no sandbox serves (structurally broken, paging loops, links to
another host) come from a tiny ``http.server`` in this file. No database is used.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connections.adapters import ADAPTERS, ConnectionConfig, FHIRAdapter, NormalizedPatient, get_adapter
from connections.adapters.athenahealth import AthenahealthAdapter
from connections.adapters.epic import EpicAdapter
from connections.adapters.generic import GenericAdapter
from connections.adapters.meditech import MeditechAdapter
from connections.adapters.oracle_health import OracleHealthAdapter
from connections.auth import AuthConfig
from connections.errors import ErrorKind, RemoteError
from connections.http import GuardedClient, OutboundPolicy
from connections.sandbox import FLAVOURS, SandboxHospital

VENDORS = ("epic", "oracle_health", "meditech", "athenahealth", "generic")
PATIENTS = 23  # not a multiple of any page size used below, so last pages are partial
CLIENT_ID, CLIENT_SECRET = "portal-adapter-test", "adapter-s3cret-value"
ATHENA_PRACTICE = (("ah-practice", "Organization/a-1.Practice-195900"),)


# --- Sandboxes and clients ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospitals() -> Iterator[dict[str, SandboxHospital]]:
    """One OAuth-protected sandbox per vendor, plus an open one and a Basic-auth one."""
    running = {
        vendor: SandboxHospital(
            flavour=vendor,
            seed=3,
            patients=PATIENTS,
            auth="client_credentials",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        ).start()
        for vendor in VENDORS
    }
    running["open"] = SandboxHospital(flavour="generic", seed=3, patients=PATIENTS).start()
    running["basic"] = SandboxHospital(
        flavour="meditech",
        seed=3,
        patients=PATIENTS,
        auth="basic",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    ).start()
    yield running
    for hospital in running.values():
        hospital.stop()


@pytest.fixture(autouse=True)
def no_faults(hospitals: dict[str, SandboxHospital]) -> Iterator[None]:
    yield
    for hospital in hospitals.values():
        hospital.set_faults()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(hospitals: dict[str, SandboxHospital], sleeps: list[float]) -> Iterator[GuardedClient]:
    allow = frozenset(f"127.0.0.1:{h.port}" for h in hospitals.values())
    with GuardedClient(OutboundPolicy(allowlist=allow), sleep=sleeps.append) as guarded:
        yield guarded


def adapter_for(
    hospital: SandboxHospital,
    client: GuardedClient,
    *,
    vendor: str | None = None,
    secret: str = CLIENT_SECRET,
    method: str = "client_credentials",
    **config: Any,
) -> FHIRAdapter:
    vendor = vendor or hospital.flavour
    if vendor == "athenahealth":
        config.setdefault("extra_params", ATHENA_PRACTICE)
    auth = AuthConfig(
        method=method,  # type: ignore[arg-type]
        client_id=CLIENT_ID,
        secret=secret,
        token_url=hospital.token_url if method == "client_credentials" else "",
    )
    return get_adapter(ConnectionConfig(vendor=vendor, base_url=hospital.base_url, auth=auth, **config), client)


def raises(call: Callable[[], Any]) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call()
    return info.value


# --- Registry -------------------------------------------------------------------------------------


def test_every_vendor_key_has_its_adapter(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    expected = {
        "epic": EpicAdapter,
        "oracle_health": OracleHealthAdapter,
        "meditech": MeditechAdapter,
        "athenahealth": AthenahealthAdapter,
        "generic": GenericAdapter,
    }
    assert {k: type(adapter_for(hospitals[k], client)) for k in VENDORS} == expected
    assert set(ADAPTERS) == set(expected)


def test_unknown_vendor_is_unsupported(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    error = raises(lambda: adapter_for(hospitals["generic"], client, vendor="allscripts"))
    assert error.kind is ErrorKind.UNSUPPORTED


@pytest.mark.parametrize("vendor", VENDORS)
def test_adapter_facts_match_the_sandbox_flavours(vendor: str) -> None:
    """The adapters' MRN systems and page limits agree with what the sandbox plays."""
    adapter, flavour = ADAPTERS[vendor], FLAVOURS[vendor]
    assert adapter.default_mrn_systems[0] == flavour.mrn_system
    assert adapter.max_page_size <= flavour.max_count
    assert adapter.patient_param in flavour.patient_params


# --- Discovery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_capability_summary(vendor: str, client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals[vendor]
    summary = adapter_for(hospital, client).capability()
    assert summary.fhir_version == "4.0.1"
    assert summary.software.startswith(FLAVOURS[vendor].software_name)
    assert summary.formats == ["json"]
    assert summary.supports("Patient", "read") and summary.supports("Observation", "search-type")
    assert "patient" in summary.resources["Observation"]["search_params"]
    assert summary.security["token_url"] == hospital.token_url
    assert "SMART-on-FHIR" in summary.security["services"]


def test_html_instead_of_metadata_is_not_fhir(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    hospitals["epic"].set_faults(not_fhir=True)
    error = raises(lambda: adapter_for(hospitals["epic"], client).capability())
    assert error.kind is ErrorKind.NOT_FHIR


@pytest.mark.parametrize("version", ["3.0.2", "1.0.2", "4.3.0", "5.0.0"])
def test_wrong_fhir_version(client: GuardedClient, hospitals: dict[str, SandboxHospital], version: str) -> None:
    hospitals["oracle_health"].set_faults(fhir_version=version)
    error = raises(lambda: adapter_for(hospitals["oracle_health"], client).capability())
    assert error.kind is ErrorKind.WRONG_VERSION and version in error.message


def test_smart_configuration(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    smart = adapter_for(hospitals["epic"], client).smart_configuration()
    assert smart is not None and smart["token_endpoint"] == hospitals["epic"].token_url
    assert adapter_for(hospitals["open"], client, method="none").smart_configuration() is None


# --- Auth -----------------------------------------------------------------------------------------


def test_authenticate_reports_the_token_without_revealing_it(
    client: GuardedClient, hospitals: dict[str, SandboxHospital]
) -> None:
    info = adapter_for(hospitals["athenahealth"], client).authenticate()
    assert info is not None and info.token_type == "bearer" and info.expires_in == 300
    assert info.scopes == ("system/*.read",)


def test_rejected_credentials_name_the_fix_and_hide_the_secret(
    client: GuardedClient, hospitals: dict[str, SandboxHospital], sleeps: list[float]
) -> None:
    hospitals["epic"].set_faults(reject_credentials=True)
    error = raises(lambda: adapter_for(hospitals["epic"], client).authenticate())
    assert error.kind is ErrorKind.AUTH and "client id or secret" in error.message
    assert error.detail["attempts"] == 1 and sleeps == []
    assert CLIENT_SECRET not in json.dumps(error.as_dict(), default=str) + repr(error)


def test_basic_auth(client: GuardedClient, hospitals: dict[str, SandboxHospital], sleeps: list[float]) -> None:
    good = adapter_for(hospitals["basic"], client, method="basic")
    assert len(good.search_patients(count=3)) == 3 and good.authenticate() is None
    bad = adapter_for(hospitals["basic"], client, method="basic", secret="wrong")
    error = raises(lambda: bad.search_patients(count=3))
    assert error.kind is ErrorKind.AUTH and error.detail["attempts"] == 1 and sleeps == []


# --- Patients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("page_size", [5, 7])
def test_paging_reaches_every_patient_once(
    vendor: str, page_size: int, client: GuardedClient, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals[vendor]
    patients = list(adapter_for(hospital, client).iter_patients(limit=1000, page_size=page_size))
    ids = [p.id for p in patients]
    assert len(ids) == len(set(ids)) == PATIENTS
    assert set(ids) == set(hospital.patient_ids)
    assert all(p.mrn for p in patients)


@pytest.mark.parametrize("vendor", VENDORS)
def test_limit_stops_paging_early(vendor: str, client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    patients = list(adapter_for(hospitals[vendor], client).iter_patients(limit=12, page_size=5))
    assert len(patients) == 12 and len({p.id for p in patients}) == 12


def test_meditech_next_links_really_are_relative(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["basic"]  # a meditech flavour; Basic auth keeps this check to one request
    adapter = adapter_for(hospital, client, method="basic")
    bundle = client.get_json(
        hospital.base_url + "/Patient", params={"_count": "5"}, headers=adapter.auth.headers()
    ).json()
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert not next_url.startswith("http")
    assert len(list(adapter.iter_patients(limit=100, page_size=5))) == PATIENTS


def test_the_same_patient_normalises_identically_everywhere(
    client: GuardedClient, hospitals: dict[str, SandboxHospital]
) -> None:
    patient_id = hospitals["generic"].patient_ids[4]
    seen: dict[str, NormalizedPatient] = {
        vendor: adapter_for(hospitals[vendor], client).read_patient(patient_id) for vendor in VENDORS
    }
    first = seen["generic"]
    assert first.id == patient_id and first.mrn and first.family and first.given and first.birth_date
    assert all(p == first for p in seen.values()), seen
    searched = {vendor: adapter_for(hospitals[vendor], client).search_patients(count=4) for vendor in VENDORS}
    assert all(page == searched["generic"] for page in searched.values())


def test_mrn_system_can_be_overridden(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["epic"]
    patient_id = hospital.patient_ids[0]
    enterprise = FLAVOURS["epic"].enterprise_system
    assert adapter_for(hospital, client, mrn_system=enterprise).read_patient(patient_id).mrn.startswith("E")
    assert adapter_for(hospital, client, mrn_system="urn:oid:9.9.9").read_patient(patient_id).mrn is None


def test_search_patients_returns_the_first_page(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    patients = adapter_for(hospitals["meditech"], client).search_patients(count=80)  # Expanse caps at 50
    assert len(patients) == PATIENTS


def test_unknown_patient_is_not_found(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    error = raises(lambda: adapter_for(hospitals["generic"], client).read_patient("no-such-patient"))
    assert error.kind is ErrorKind.NOT_FOUND and error.detail["attempts"] == 1


@pytest.mark.parametrize("bad_id", ["../metadata", "a/b", "x?y=1", "", "a" * 65])
def test_patient_ids_cannot_steer_the_url(
    client: GuardedClient, hospitals: dict[str, SandboxHospital], bad_id: str
) -> None:
    assert raises(lambda: adapter_for(hospitals["generic"], client).read_patient(bad_id)).kind is ErrorKind.BAD_REQUEST


# --- Vendor quirks on clinical searches -----------------------------------------------------------


@pytest.mark.parametrize("resource_type", ["Observation", "Condition", "Encounter"])
def test_clinical_searches_agree_across_vendors(
    resource_type: str, client: GuardedClient, hospitals: dict[str, SandboxHospital]
) -> None:
    patient_id = hospitals["generic"].patient_ids[2]
    found = {
        vendor: sorted(
            r["id"] for r in adapter_for(hospitals[vendor], client).search_clinical(resource_type, patient_id)
        )
        for vendor in VENDORS
    }
    assert found["generic"], f"patient has no {resource_type}"
    assert all(ids == found["generic"] for ids in found.values()), found


def test_epic_needs_a_category_so_the_adapter_searches_each(
    client: GuardedClient, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals["epic"]
    adapter = adapter_for(hospital, client)
    patient_id = hospital.patient_ids[2]
    # The quirk is real: the bare search is refused...
    bare = raises(
        lambda: client.get_json(
            hospital.base_url + "/Observation", params={"patient": patient_id}, headers=adapter.auth.headers()
        )
    )
    assert bare.kind is ErrorKind.BAD_REQUEST and "category" in bare.message
    # ...and the adapter fans out over categories and merges.
    queries = adapter.clinical_queries("Observation", patient_id, 50)
    assert {q["category"] for q in queries} >= {"vital-signs", "laboratory"}
    categories = {
        c["code"]
        for r in adapter.search_clinical("Observation", patient_id)
        for cat in r["category"]
        for c in cat["coding"]
    }
    assert categories == {"vital-signs", "laboratory"}


def test_oracle_health_names_the_patient_with_patient(
    client: GuardedClient, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals["oracle_health"]
    adapter = adapter_for(hospital, client)
    patient_id = hospital.patient_ids[2]
    refused = raises(
        lambda: client.get_json(
            hospital.base_url + "/Condition", params={"subject": patient_id}, headers=adapter.auth.headers()
        )
    )
    assert refused.kind is ErrorKind.BAD_REQUEST and "subject" in refused.message
    assert all("patient" in q and "subject" not in q for q in adapter.clinical_queries("Condition", patient_id, 10))
    assert adapter.search_clinical("Condition", patient_id)


def test_athenahealth_needs_the_practice(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["athenahealth"]
    missing = raises(lambda: adapter_for(hospital, client, extra_params=()).search_patients(count=2))
    assert missing.kind is ErrorKind.BAD_REQUEST and "ah-practice" in missing.message
    other = (("ah-practice", "Organization/a-1.Practice-1"),)
    assert raises(lambda: adapter_for(hospital, client, extra_params=other).search_patients()).kind is (
        ErrorKind.FORBIDDEN
    )


def test_unknown_resource_type_is_refused(client: GuardedClient, hospitals: dict[str, SandboxHospital]) -> None:
    adapter = adapter_for(hospitals["generic"], client)
    patient_id = hospitals["generic"].patient_ids[0]
    assert raises(lambda: adapter.search_clinical("NotAThing", patient_id)).kind is ErrorKind.UNSUPPORTED
    assert raises(lambda: adapter.search_clinical("../Patient", patient_id)).kind is ErrorKind.BAD_REQUEST


# --- Faults ---------------------------------------------------------------------------------------


def test_throttling_is_retried_then_reported(
    client: GuardedClient, hospitals: dict[str, SandboxHospital], sleeps: list[float]
) -> None:
    hospitals["open"].set_faults(rate_429=1.0, retry_after=2)
    error = raises(lambda: adapter_for(hospitals["open"], client, method="none").search_patients())
    assert error.kind is ErrorKind.THROTTLED
    assert error.detail["attempts"] == 3 and sleeps == [2.0, 2.0] and error.detail["waits"] == sleeps


def test_intermittent_server_errors_are_absorbed_by_retries(
    hospitals: dict[str, SandboxHospital], sleeps: list[float]
) -> None:
    hospital = hospitals["generic"]
    hospital.set_faults(rate_5xx=0.3, status_5xx=503)
    policy = OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{hospital.port}"}), max_attempts=6)
    with GuardedClient(policy, sleep=sleeps.append) as patient_client:
        patients = list(adapter_for(hospital, patient_client).iter_patients(limit=100, page_size=5))
    assert len({p.id for p in patients}) == PATIENTS
    assert sleeps, "the fault should have hit at least once"


# --- Payloads no sandbox serves -------------------------------------------------------------------


class _FakeHandler(BaseHTTPRequestHandler):
    server: _FakeServer

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hits.append(self.path)
        body = self.server.routes.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        raw = body(self) if callable(body) else body
        self.send_response(raw[0] if isinstance(raw, tuple) else 200)
        payload = raw[1] if isinstance(raw, tuple) else raw
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Any]
    hits: list[str]
    clients: list[GuardedClient]


@pytest.fixture
def fake() -> Iterator[_FakeServer]:
    server = _FakeServer(("127.0.0.1", 0), _FakeHandler)
    server.routes, server.hits, server.clients = {}, [], []
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    for client in server.clients:
        client.close()
    server.shutdown()
    server.server_close()


def fake_adapter(fake: _FakeServer, **auth: Any) -> FHIRAdapter:
    port = fake.server_address[1]
    client = GuardedClient(OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{port}"})), sleep=lambda _s: None)
    fake.clients.append(client)
    config = ConnectionConfig(
        vendor="generic", base_url=f"http://127.0.0.1:{port}/fhir/", auth=AuthConfig(**{"method": "none", **auth})
    )
    return get_adapter(config, client)


def bundle(*patients: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": p, "search": {"mode": "match"}} for p in patients],
    }


def patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{n}", "name": [{"family": f"F{n}", "given": ["G"]}]}


def test_structurally_invalid_capability_reports_the_path(fake: _FakeServer) -> None:
    fake.routes["/fhir/metadata"] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": [{"type": "Patient", "searchParam": [{"name": 7, "type": "token"}]}]}],
    }
    error = raises(lambda: fake_adapter(fake).capability())
    assert error.kind is ErrorKind.BAD_PAYLOAD
    assert error.detail["paths"][0].startswith("rest.0.resource.0.searchParam.0.name:")


def test_truncated_or_foreign_metadata(fake: _FakeServer) -> None:
    fake.routes["/fhir/metadata"] = b'{"resourceType": "CapabilityStatement", "fhirVer'
    assert raises(lambda: fake_adapter(fake).capability()).kind is ErrorKind.BAD_PAYLOAD
    fake.routes["/fhir/metadata"] = b"OK"
    assert raises(lambda: fake_adapter(fake).capability()).kind is ErrorKind.NOT_FHIR
    fake.routes["/fhir/metadata"] = {"resourceType": "Patient", "id": "1"}
    assert raises(lambda: fake_adapter(fake).capability()).kind is ErrorKind.NOT_FHIR


def test_invalid_patient_reports_the_path_not_the_value(fake: _FakeServer) -> None:
    fake.routes["/fhir/Patient/p1"] = {"resourceType": "Patient", "id": "p1", "birthDate": "Jan 3rd 1961"}
    error = raises(lambda: fake_adapter(fake).read_patient("p1"))
    assert error.kind is ErrorKind.BAD_PAYLOAD and error.detail["paths"][0].startswith("birthDate:")
    assert "1961" not in json.dumps(error.as_dict())


def test_a_next_link_that_repeats_is_a_paging_loop(fake: _FakeServer) -> None:
    port = fake.server_address[1]
    fake.routes["/fhir/Patient"] = lambda h: bundle(
        patient(len(fake.hits)), next_url=f"http://127.0.0.1:{port}/fhir/Patient?page=2"
    )
    adapter = fake_adapter(fake)
    with pytest.raises(RemoteError) as info:
        list(adapter.iter_patients(limit=100, page_size=1))
    assert info.value.kind is ErrorKind.BAD_PAYLOAD and "paging loop" in info.value.message
    assert len(fake.hits) == 2  # page 2 links to itself: caught before asking for it again


def test_pages_that_bring_nothing_new_stop_paging(fake: _FakeServer) -> None:
    fake.routes["/fhir/Patient"] = lambda h: bundle(patient(1), next_url=f"Patient?page={len(fake.hits)}")
    with pytest.raises(RemoteError) as info:
        list(fake_adapter(fake).iter_patients(limit=100, page_size=1))
    assert info.value.kind is ErrorKind.BAD_PAYLOAD
    assert len(fake.hits) == 1 + FHIRAdapter.max_pages_without_progress


def test_a_next_link_to_another_host_is_not_followed(fake: _FakeServer) -> None:
    fake.routes["/fhir/Patient"] = bundle(patient(1), next_url="https://elsewhere.example.org/fhir/Patient?page=2")
    with pytest.raises(RemoteError) as info:
        list(fake_adapter(fake).iter_patients(limit=100, page_size=1))
    assert info.value.kind is ErrorKind.BAD_PAYLOAD and "different server" in info.value.message


def test_an_expired_token_is_replaced_once(fake: _FakeServer) -> None:
    issued: list[str] = []

    def token(handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        issued.append(f"tok-{len(issued) + 1}-abcdef")
        return 200, {"access_token": issued[-1], "token_type": "bearer", "expires_in": 3600}

    def read(handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        # The first token is "revoked" by the server; the second works.
        if handler.headers.get("Authorization") == f"Bearer {issued[-1]}" and len(issued) > 1:
            return 200, patient(1)
        return 401, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}

    fake.routes["/token"] = token
    fake.routes["/fhir/Patient/p1"] = read
    port = fake.server_address[1]
    adapter = fake_adapter(
        fake, method="client_credentials", client_id="c", secret="s3cret-x", token_url=f"http://127.0.0.1:{port}/token"
    )
    assert adapter.read_patient("p1").family == "F1"
    assert len(issued) == 2
