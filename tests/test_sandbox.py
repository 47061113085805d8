"""The sandbox hospitals, exercised over real HTTP on loopback.

The sandbox is what every other test and the demo lean on, so these tests pin the behaviour the
adapters are written against: each vendor's paging style, mandatory and refused parameters, auth,
the fault switches, and deterministic data. No database is involved.
"""

from __future__ import annotations

import base64
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from connections.sandbox import FLAVOURS, SandboxHospital
from connections.sandbox.data import generate_population

ROOT = Path(__file__).resolve().parent.parent
PRACTICE = "Organization/a-1.Practice-195900"
FHIR_JSON = "application/fhir+json; charset=utf-8"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# Parameters a flavour needs on every search, so generic tests can run against all of them.
EXTRA = {flavour: {} for flavour in FLAVOURS} | {"athenahealth": {"ah-practice": PRACTICE}}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospitals() -> Iterator[dict[str, SandboxHospital]]:
    """One open (auth none) sandbox per flavour, same seed, 60 patients; faults never touched."""
    running = {name: SandboxHospital(flavour=name, seed=3, patients=60).start() for name in FLAVOURS}
    yield running
    for hospital in running.values():
        hospital.stop()


@pytest.fixture
def make() -> Iterator[Callable[..., SandboxHospital]]:
    """Start a throw-away sandbox (for faults and auth); stopped after the test."""
    started: list[SandboxHospital] = []

    def factory(**kwargs: Any) -> SandboxHospital:
        kwargs.setdefault("patients", 12)
        hospital = SandboxHospital(**kwargs).start()
        started.append(hospital)
        return hospital

    yield factory
    for hospital in started:
        hospital.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def control_url(hospital: SandboxHospital, path: str) -> str:
    return f"http://127.0.0.1:{hospital.port}/_sandbox/{path}"


def assert_outcome(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == FHIR_JSON
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error"
    assert issue["diagnostics"]
    if code is not None:
        assert issue["code"] == code
    return body


def page_through(
    http: httpx.Client, hospital: SandboxHospital, path: str, params: dict[str, str], **kwargs: Any
) -> tuple[list[dict[str, Any]], list[httpx.Response]]:
    """Every entry of a search, following next links exactly as the server wrote them."""
    responses = [http.get(f"{hospital.base_url}/{path}", params=params, **kwargs)]
    entries: list[dict[str, Any]] = []
    while True:
        response = responses[-1]
        assert response.status_code == 200, response.text
        bundle = response.json()
        entries.extend(bundle.get("entry", []))
        nexts = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nexts:
            return entries, responses
        assert len(responses) < 100, "paging does not end"
        # Resolved against the base *with* a slash, so a relative link keeps the base path.
        responses.append(http.get(urljoin(hospital.base_url + "/", nexts[0]), **kwargs))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def token(http: httpx.Client, hospital: SandboxHospital) -> str:
    response = http.post(
        hospital.token_url,
        data={"grant_type": "client_credentials"},
        auth=(hospital.client_id, hospital.client_secret),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


# --- metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_metadata_is_an_r4_capability_statement_with_the_flavours_software(
    http: httpx.Client, hospitals: dict[str, SandboxHospital], flavour: str
) -> None:
    hospital = hospitals[flavour]
    response = http.get(f"{hospital.base_url}/metadata")

    assert response.status_code == 200
    assert response.headers["content-type"] == FHIR_JSON
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["format"] == ["json"]
    assert statement["software"]["name"] == FLAVOURS[flavour].software_name
    assert statement["implementation"]["url"] == hospital.base_url
    rest = statement["rest"][0]
    assert rest["mode"] == "server"
    assert "security" not in rest  # auth none
    resources = {r["type"]: r for r in rest["resource"]}
    assert set(resources) == {"Patient", "Observation", "Condition", "Encounter"}
    for resource in resources.values():
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
    patient_params = {p["name"] for p in resources["Patient"]["searchParam"]}
    assert {"_id", "identifier", "name", "birthdate", "gender"} <= patient_params
    observation_params = {p["name"] for p in resources["Observation"]["searchParam"]}
    assert {"patient", "category"} <= observation_params


def test_base_urls_follow_each_flavours_base_path(hospitals: dict[str, SandboxHospital]) -> None:
    expected = {
        "epic": "/api/FHIR/R4",
        "oracle_health": "/r4/ec2458f2-1e24-41c8-b71b-0e701af7583d",
        "meditech": "/v2/fhir/r4",
        "athenahealth": "/fhir/r4",
        "generic": "/fhir",
    }
    for flavour, path in expected.items():
        hospital = hospitals[flavour]
        assert hospital.base_url == f"http://127.0.0.1:{hospital.port}{path}"
        assert hospital.token_url == hospital.base_url + "/oauth2/token"


def test_the_flavours_differ_in_what_they_advertise(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    def observation_params(flavour: str) -> dict[str, dict[str, Any]]:
        statement = http.get(f"{hospitals[flavour].base_url}/metadata").json()
        observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
        return {p["name"]: p for p in observation["searchParam"]}

    assert "Required" in observation_params("epic")["category"]["documentation"]
    assert "subject" not in observation_params("oracle_health")
    assert "subject" in observation_params("generic")
    assert "ah-practice" in observation_params("athenahealth")


# --- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_paging_through_all_patients_by_next_links(
    http: httpx.Client, hospitals: dict[str, SandboxHospital], flavour: str
) -> None:
    hospital = hospitals[flavour]
    entries, responses = page_through(http, hospital, "Patient", {"_count": "7", **EXTRA[flavour]})

    ids = [e["resource"]["id"] for e in entries]
    assert len(ids) == len(set(ids)), "a patient came back twice"
    assert ids == hospital.patient_ids
    assert len(responses) == 9  # 60 patients, 7 per page
    assert {r.json()["total"] for r in responses} == {60}
    for entry in entries:
        assert entry["fullUrl"] == f"{hospital.base_url}/Patient/{entry['resource']['id']}"
        assert entry["search"] == {"mode": "match"}


@pytest.mark.parametrize(
    ("flavour", "absolute", "marker"),
    [
        ("epic", True, "_getpages="),
        ("oracle_health", True, "-pageContext="),
        ("meditech", False, "page=2"),
        ("athenahealth", True, "_offset=7"),
        ("generic", True, "_offset=7"),
    ],
)
def test_each_flavour_writes_its_own_kind_of_next_link(
    http: httpx.Client, hospitals: dict[str, SandboxHospital], flavour: str, absolute: bool, marker: str
) -> None:
    hospital = hospitals[flavour]
    bundle = http.get(f"{hospital.base_url}/Patient", params={"_count": "7", **EXTRA[flavour]}).json()
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")

    assert marker in next_url
    if absolute:
        assert next_url.startswith(hospital.base_url)
    else:
        assert next_url.startswith("Patient?")  # relative to the FHIR base, like MEDITECH


def test_epic_cursor_tokens_are_deterministic_and_tamper_evident(make: Callable[..., SandboxHospital]) -> None:
    first, second = make(flavour="epic", seed=5), make(flavour="epic", seed=5)
    with httpx.Client(timeout=10) as http:
        links = [
            next(
                link["url"]
                for link in http.get(f"{h.base_url}/Patient?_count=5").json()["link"]
                if link["relation"] == "next"
            )
            for h in (first, second)
        ]
        tokens = [parse_qs(urlsplit(link).query)["_getpages"][0] for link in links]
        assert tokens[0] == tokens[1]

        tampered = tokens[0][:-1] + ("0" if tokens[0][-1] != "0" else "1")
        assert_outcome(http.get(f"{first.base_url}?_getpages={tampered}"), 400)


def test_oracle_page_context_must_match_the_search(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["oracle_health"]
    bundle = http.get(f"{hospital.base_url}/Patient?_count=5&gender=female").json()
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    context = parse_qs(urlsplit(next_url).query)["-pageContext"][0]

    assert http.get(next_url).status_code == 200
    changed = f"{hospital.base_url}/Patient?_count=5&gender=male&-pageContext={context}&-pageDirection=NEXT"
    assert_outcome(http.get(changed), 400)


def test_clinical_searches_page_too(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["meditech"]
    patient_id = hospital.patient_ids[4]
    entries, responses = page_through(http, hospital, "Observation", {"patient": patient_id, "_count": "2"})

    total = responses[0].json()["total"]
    assert 4 <= total <= 12
    ids = [e["resource"]["id"] for e in entries]
    assert len(ids) == len(set(ids)) == total
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{patient_id}" for e in entries)


def test_count_is_clamped_to_the_flavours_maximum(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["meditech"]  # max 50, 60 patients
    bundle = http.get(f"{hospital.base_url}/Patient?_count=500").json()

    assert len(bundle["entry"]) == FLAVOURS["meditech"].max_count == 50
    assert bundle["total"] == 60
    assert "_count=50" in bundle["link"][0]["url"]


def test_count_zero_gives_the_total_without_entries(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    bundle = http.get(f"{hospitals['generic'].base_url}/Patient?_count=0").json()

    assert bundle["total"] == 60
    assert "entry" not in bundle
    assert [link["relation"] for link in bundle["link"]] == ["self"]


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5"])
def test_a_bad_count_is_a_400_outcome(http: httpx.Client, hospitals: dict[str, SandboxHospital], bad: str) -> None:
    assert_outcome(http.get(f"{hospitals['generic'].base_url}/Patient", params={"_count": bad}), 400, "invalid")


# --- data --------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_patients_and_ids_across_flavours(make: Callable[..., SandboxHospital]) -> None:
    epic, also_epic, oracle = (
        make(flavour="epic", seed=11),
        make(flavour="epic", seed=11),
        make(flavour="oracle_health", seed=11),
    )
    other_seed = make(flavour="epic", seed=12)

    assert epic.patient_ids == also_epic.patient_ids == oracle.patient_ids
    assert set(epic.patient_ids).isdisjoint(other_seed.patient_ids)
    with httpx.Client(timeout=10) as http:
        read = [http.get(f"{h.base_url}/Patient/{epic.patient_ids[3]}").json() for h in (epic, also_epic, oracle)]
    assert read[0] == read[1]
    # Everything but the identifier systems is vendor-independent.
    assert {k: v for k, v in read[0].items() if k != "identifier"} == {
        k: v for k, v in read[2].items() if k != "identifier"
    }
    # The MRN value is shared too; only the system says which vendor issued it.
    assert read[0]["identifier"][0]["value"] == read[2]["identifier"][0]["value"]
    assert read[0]["identifier"][0]["system"] != read[2]["identifier"][0]["system"]


def test_a_smaller_population_is_a_prefix_of_a_larger_one() -> None:
    small = generate_population(seed=9, patients=5, flavour=FLAVOURS["generic"])
    large = generate_population(seed=9, patients=40, flavour=FLAVOURS["generic"])

    assert small.patients == large.patients[:5]


def test_a_thousand_patients_build_with_distinct_ids() -> None:
    # Build speed is a benchmark figure, not an assertion: test machines are too noisy for timings.
    hospital = SandboxHospital(flavour="generic", seed=1, patients=1000)
    hospital.stop()

    assert len(hospital.patient_ids) == len(set(hospital.patient_ids)) == 1000


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_patients_carry_the_flavours_mrn_and_a_second_identifier(
    http: httpx.Client, hospitals: dict[str, SandboxHospital], flavour: str
) -> None:
    hospital = hospitals[flavour]
    patient = http.get(f"{hospital.base_url}/Patient/{hospital.patient_ids[0]}").json()

    assert patient["meta"]["profile"] == ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]
    mrn = next(i for i in patient["identifier"] if i["system"] == hospital.mrn_system)
    assert mrn["type"]["coding"][0] == {"system": V2_0203, "code": "MR", "display": "Medical Record Number"}
    others = [i for i in patient["identifier"] if i["system"] != hospital.mrn_system]
    assert len(others) == 1 and others[0]["value"]
    assert hospital.mrn_system == FLAVOURS[flavour].mrn_system

    # The MRN finds the patient, with or without its system.
    for value in (f"{hospital.mrn_system}|{mrn['value']}", mrn["value"]):
        bundle = http.get(f"{hospital.base_url}/Patient", params={"identifier": value, **EXTRA[flavour]}).json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == [patient["id"]]
    wrong_system = http.get(
        f"{hospital.base_url}/Patient", params={"identifier": f"urn:oid:9.9|{mrn['value']}", **EXTRA[flavour]}
    ).json()
    assert wrong_system["total"] == 0


def test_patients_look_like_us_core(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    patient = http.get(f"{hospitals['generic'].base_url}/Patient/{hospitals['generic'].patient_ids[1]}").json()

    name = patient["name"][0]
    assert name["use"] == "official" and name["family"] and name["given"]
    assert patient["gender"] in ("male", "female")
    assert len(patient["birthDate"]) == 10
    assert patient["address"][0]["state"] == "MA"
    assert patient["telecom"][0]["system"] == "phone"
    urls = {e["url"].rsplit("/", 1)[1] for e in patient["extension"]}
    assert urls == {"us-core-race", "us-core-ethnicity", "us-core-birthsex"}


def test_clinical_resources_hang_together(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["generic"]
    for patient_id in hospital.patient_ids[:10]:
        found = {
            rtype: [
                e["resource"]
                for e in http.get(f"{hospital.base_url}/{rtype}", params={"patient": patient_id, "_count": "100"})
                .json()
                .get("entry", [])
            ]
            for rtype in ("Encounter", "Observation", "Condition")
        }
        assert 2 <= len(found["Encounter"]) <= 5
        assert 4 <= len(found["Observation"]) <= 12
        assert 1 <= len(found["Condition"]) <= 4
        encounter_refs = {f"Encounter/{e['id']}" for e in found["Encounter"]}
        for encounter in found["Encounter"]:
            assert encounter["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
            assert encounter["class"]["code"] in ("AMB", "EMER", "IMP")
            assert encounter["period"]["start"] <= encounter["period"]["end"]
        for observation in found["Observation"]:
            assert observation["status"] == "final"
            assert observation["encounter"]["reference"] in encounter_refs
            assert observation["code"]["coding"][0]["system"] == "http://loinc.org"
            category = observation["category"][0]["coding"][0]
            assert category["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
            assert category["code"] in ("vital-signs", "laboratory")
            quantities = [observation.get("valueQuantity")] + [
                c["valueQuantity"] for c in observation.get("component", [])
            ]
            for quantity in filter(None, quantities):
                assert quantity["system"] == "http://unitsofmeasure.org" and quantity["code"]
        for condition in found["Condition"]:
            assert condition["encounter"]["reference"] in encounter_refs
            assert condition["code"]["coding"][0]["system"] == "http://snomed.info/sct"
            assert condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
            assert condition["clinicalStatus"]["coding"][0]["code"] in ("active", "resolved")


# --- search ------------------------------------------------------------------------------------


def test_patient_search_parameters(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["generic"]
    patient = http.get(f"{hospital.base_url}/Patient/{hospital.patient_ids[7]}").json()
    family = patient["name"][0]["family"]

    def ids(**params: str) -> list[str]:
        bundle = http.get(f"{hospital.base_url}/Patient", params={"_count": "100", **params}).json()
        return [e["resource"]["id"] for e in bundle.get("entry", [])]

    assert patient["id"] in ids(family=family[:3].lower())
    assert patient["id"] in ids(name=family.upper())
    assert patient["id"] in ids(birthdate=patient["birthDate"])
    assert ids(_id=patient["id"]) == [patient["id"]]
    same_day = ids(birthdate=patient["birthDate"], gender=patient["gender"], family=family)
    assert same_day == [patient["id"]]
    females = ids(gender="female")
    assert females and all(
        http.get(f"{hospital.base_url}/Patient/{pid}").json()["gender"] == "female" for pid in females[:5]
    )
    assert len(ids(gender="female")) + len(ids(gender="male")) == 60
    assert_outcome(http.get(f"{hospital.base_url}/Patient?birthdate=1990-13-45"), 400)


def test_observation_category_splits_vitals_from_labs(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals["epic"]
    patient_id = hospital.patient_ids[2]

    def total(category: str) -> int:
        response = http.get(f"{hospital.base_url}/Observation", params={"patient": patient_id, "category": category})
        assert response.status_code == 200, response.text
        return int(response.json()["total"])

    assert total("vital-signs") + total("laboratory") == total("vital-signs,laboratory") >= 4


def test_epic_requires_a_category_on_observation_searches(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    base = hospitals["epic"].base_url
    patient_id = hospitals["epic"].patient_ids[0]

    body = assert_outcome(http.get(f"{base}/Observation", params={"patient": patient_id}), 400, "required")
    assert "category" in body["issue"][0]["diagnostics"]
    ok = http.get(f"{base}/Observation", params={"patient": patient_id, "category": "laboratory"})
    assert ok.status_code == 200
    # Conditions need no category.
    assert http.get(f"{base}/Condition", params={"patient": patient_id}).status_code == 200


def test_epic_refuses_unknown_parameters_where_generic_ignores_them(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    assert_outcome(http.get(f"{hospitals['epic'].base_url}/Patient", params={"favourite-colour": "blue"}), 400)

    response = http.get(f"{hospitals['generic'].base_url}/Patient", params={"favourite-colour": "blue"})
    assert response.status_code == 200
    assert response.json()["total"] == 60
    assert "favourite-colour" not in response.json()["link"][0]["url"]  # dropped from the self link


def test_oracle_takes_patient_but_refuses_subject(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["oracle_health"]
    patient_id = hospital.patient_ids[0]

    assert http.get(f"{hospital.base_url}/Condition", params={"patient": patient_id}).status_code == 200
    assert_outcome(
        http.get(f"{hospital.base_url}/Condition", params={"subject": f"Patient/{patient_id}"}), 400, "not-supported"
    )


def test_subject_and_patient_are_the_same_search_where_allowed(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals["generic"]
    patient_id = hospital.patient_ids[5]
    by_patient = http.get(f"{hospital.base_url}/Encounter", params={"patient": patient_id}).json()
    by_subject = http.get(f"{hospital.base_url}/Encounter", params={"subject": f"Patient/{patient_id}"}).json()

    assert by_patient["total"] == by_subject["total"] >= 2
    assert by_patient["entry"] == by_subject["entry"]


def test_athenahealth_requires_the_practice_on_every_search(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    base = hospitals["athenahealth"].base_url

    assert_outcome(http.get(f"{base}/Patient"), 400, "required")
    assert_outcome(http.get(f"{base}/Patient", params={"ah-practice": "Organization/a-1.Practice-1"}), 403)
    assert http.get(f"{base}/Patient", params={"ah-practice": PRACTICE}).status_code == 200
    # Reads name the resource directly and need no practice.
    assert http.get(f"{base}/Patient/{hospitals['athenahealth'].patient_ids[0]}").status_code == 200


@pytest.mark.parametrize("flavour", ["epic", "oracle_health", "meditech", "athenahealth"])
def test_vendors_scope_clinical_searches_to_a_patient(
    http: httpx.Client, hospitals: dict[str, SandboxHospital], flavour: str
) -> None:
    response = http.get(f"{hospitals[flavour].base_url}/Condition", params=EXTRA[flavour])
    assert_outcome(response, 400, "required")


def test_a_generic_server_searches_all_patients_clinical_data(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    response = http.get(f"{hospitals['generic'].base_url}/Condition?_count=1")
    assert response.status_code == 200
    assert response.json()["total"] >= 60  # every patient has at least one condition


# --- reads and errors ------------------------------------------------------------------------


def test_reads_return_the_resource_and_unknown_ids_a_404_outcome(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals["generic"]
    bundle = http.get(f"{hospital.base_url}/Observation", params={"patient": hospital.patient_ids[0]}).json()
    observation = bundle["entry"][0]["resource"]

    read = http.get(f"{hospital.base_url}/Observation/{observation['id']}")
    assert read.status_code == 200
    assert read.headers["content-type"] == FHIR_JSON
    assert read.json() == observation
    assert_outcome(http.get(f"{hospital.base_url}/Patient/no-such-patient"), 404, "not-found")
    assert_outcome(http.get(f"{hospital.base_url}/MedicationRequest"), 404, "not-found")
    assert_outcome(http.get(f"{hospital.base_url}/Patient/a/b/c"), 404, "not-found")
    assert_outcome(http.get(f"http://127.0.0.1:{hospital.port}/somewhere/else"), 404, "not-found")


def test_the_sandbox_is_read_only_and_json_only(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    base = hospitals["generic"].base_url
    assert_outcome(http.post(f"{base}/Patient", json={"resourceType": "Patient"}), 405)
    assert_outcome(http.get(f"{base}/Patient?_format=xml"), 406)
    assert http.get(f"{base}/Patient?_format=json").status_code == 200


def test_a_malformed_request_gets_an_outcome_and_the_server_lives_on(
    http: httpx.Client, hospitals: dict[str, SandboxHospital]
) -> None:
    hospital = hospitals["generic"]
    with socket.create_connection(("127.0.0.1", hospital.port), timeout=5) as raw:
        raw.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):  # the server closes the connection after an error
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"resourceType":"OperationOutcome"' in answer
    assert http.get(f"{hospital.base_url}/metadata").status_code == 200


# --- auth --------------------------------------------------------------------------------------


def test_token_endpoint_accepts_client_secret_basic_and_post(make: Callable[..., SandboxHospital]) -> None:
    # A secret with characters that client_secret_basic must form-encode (RFC 6749 2.3.1).
    hospital = make(flavour="epic", auth="client_credentials", client_id="portal", client_secret="s3c+r/t:=x")
    with httpx.Client(timeout=10) as http:
        basic = http.post(
            hospital.token_url,
            data={"grant_type": "client_credentials", "scope": "system/Patient.read"},
            headers={"Authorization": "Basic " + _b64("portal:s3c%2Br%2Ft%3A%3Dx")},
        )
        post = http.post(
            hospital.token_url,
            data={"grant_type": "client_credentials", "client_id": "portal", "client_secret": "s3c+r/t:=x"},
        )
    for response in (basic, post):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 300
        assert len(body["access_token"]) >= 32
        assert response.headers["cache-control"] == "no-store"
    assert basic.json()["scope"] == "system/Patient.read"
    assert basic.json()["access_token"] != post.json()["access_token"]


def test_token_endpoint_errors_follow_rfc_6749(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", auth="client_credentials")
    url = hospital.token_url
    good = {"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret"}
    with httpx.Client(timeout=10) as http:
        cases = [
            (http.post(url, data={**good, "client_secret": "wrong"}), 401, "invalid_client"),
            (
                http.post(url, data={"grant_type": "client_credentials"}, auth=("demo-client", "nope")),
                401,
                "invalid_client",
            ),
            (http.post(url, data={"grant_type": "client_credentials"}), 401, "invalid_client"),
            (http.post(url, data={**good, "grant_type": "password"}), 400, "unsupported_grant_type"),
            (http.post(url, data={k: v for k, v in good.items() if k != "grant_type"}), 400, "invalid_request"),
            (http.post(url, json=good), 400, "invalid_request"),
            (http.post(url, data={**good, "scope": "user/*.write"}), 400, "invalid_scope"),
            (http.get(url), 405, "invalid_request"),
        ]
    for response, status, error in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"] == error
        assert response.json()["error_description"]
    assert "basic" in cases[1][0].headers["www-authenticate"].lower()


def test_bearer_tokens_are_enforced_on_fhir_endpoints(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="epic", auth="client_credentials")
    patient_url = f"{hospital.base_url}/Patient/{hospital.patient_ids[0]}"
    with httpx.Client(timeout=10) as http:
        missing = http.get(patient_url)
        bogus = http.get(patient_url, headers={"Authorization": "Bearer not-a-token"})
        granted = http.get(patient_url, headers={"Authorization": f"Bearer {token(http, hospital)}"})
        metadata = http.get(f"{hospital.base_url}/metadata")
        smart = http.get(f"{hospital.base_url}/.well-known/smart-configuration")

    assert_outcome(missing, 401, "login")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_outcome(bogus, 401, "login")
    assert 'error="invalid_token"' in bogus.headers["www-authenticate"]
    assert granted.status_code == 200
    assert granted.json()["id"] == hospital.patient_ids[0]
    # Discovery stays public, and points at the token endpoint.
    assert metadata.status_code == 200
    extension = metadata.json()["rest"][0]["security"]["extension"][0]
    assert extension["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert extension["extension"] == [{"url": "token", "valueUri": hospital.token_url}]
    assert smart.status_code == 200
    config = smart.json()
    assert config["token_endpoint"] == hospital.token_url
    assert config["grant_types_supported"] == ["client_credentials"]
    assert config["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
    assert config["scopes_supported"] and config["capabilities"]


def test_tokens_expire() -> None:
    hospital = SandboxHospital(flavour="generic", patients=3, auth="client_credentials", token_ttl_s=1).start()
    try:
        with httpx.Client(timeout=10) as http:
            headers = {"Authorization": f"Bearer {token(http, hospital)}"}
            assert http.get(f"{hospital.base_url}/Patient", headers=headers).status_code == 200
            time.sleep(1.2)
            assert_outcome(http.get(f"{hospital.base_url}/Patient", headers=headers), 401)
    finally:
        hospital.stop()


@pytest.mark.parametrize("auth", ["none", "basic"])
def test_no_smart_configuration_or_token_endpoint_without_client_credentials(
    make: Callable[..., SandboxHospital], auth: str
) -> None:
    hospital = make(flavour="generic", auth=auth)
    with httpx.Client(timeout=10) as http:
        assert_outcome(http.get(f"{hospital.base_url}/.well-known/smart-configuration"), 404, "not-found")
        assert_outcome(http.post(hospital.token_url, data={"grant_type": "client_credentials"}), 404)


def test_basic_auth_is_enforced(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="meditech", auth="basic", client_id="user", client_secret="pass")
    url = f"{hospital.base_url}/Patient"
    with httpx.Client(timeout=10) as http:
        missing = http.get(url)
        wrong = http.get(url, auth=("user", "wrong"))
        right = http.get(url, auth=("user", "pass"))
        metadata = http.get(f"{hospital.base_url}/metadata")

    assert_outcome(missing, 401, "login")
    assert missing.headers["www-authenticate"].startswith("Basic")
    assert_outcome(wrong, 401, "login")
    assert right.status_code == 200
    assert metadata.status_code == 200
    assert metadata.json()["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "Basic"


# --- faults ------------------------------------------------------------------------------------


def test_latency_fault_delays_every_answer(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", faults={"latency_ms": 200})
    with httpx.Client(timeout=10) as http:
        started = time.perf_counter()
        assert http.get(f"{hospital.base_url}/metadata").status_code == 200
        slow = time.perf_counter() - started
        hospital.set_faults()
        assert http.get(f"{hospital.base_url}/metadata").status_code == 200

    # Only the lower bound is asserted: the sleep guarantees it, while an upper bound on a busy
    # machine would be noise.
    assert slow >= 0.2
    assert hospital.faults.get("latency_ms", 0) == 0


def test_rate_limit_fault_answers_429_with_retry_after(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="epic", faults={"rate_429": 1.0, "retry_after": 7})
    with httpx.Client(timeout=10) as http:
        response = http.get(f"{hospital.base_url}/Patient")
    assert_outcome(response, 429, "throttled")
    assert response.headers["retry-after"] == "7"


def test_server_error_fault_answers_503_or_the_chosen_status(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", faults={"rate_5xx": 1.0})
    with httpx.Client(timeout=10) as http:
        assert_outcome(http.get(f"{hospital.base_url}/metadata"), 503, "transient")
        hospital.set_faults(rate_5xx=1.0, status_5xx=500)
        assert_outcome(http.get(f"{hospital.base_url}/Patient"), 500)


def test_random_faults_are_deterministic_under_the_seed(make: Callable[..., SandboxHospital]) -> None:
    def statuses(hospital: SandboxHospital) -> list[int]:
        with httpx.Client(timeout=10) as http:
            return [http.get(f"{hospital.base_url}/Patient").status_code for _ in range(30)]

    first = statuses(make(flavour="generic", seed=4, faults={"rate_5xx": 0.5}))
    second = statuses(make(flavour="generic", seed=4, faults={"rate_5xx": 0.5}))
    assert first == second
    assert set(first) == {200, 503}


def test_reject_credentials_fault_refuses_good_credentials(make: Callable[..., SandboxHospital]) -> None:
    oauth = make(flavour="epic", auth="client_credentials", faults={"reject_credentials": True})
    basic = make(flavour="meditech", auth="basic", faults={"reject_credentials": True})
    with httpx.Client(timeout=10) as http:
        refused = http.post(
            oauth.token_url, data={"grant_type": "client_credentials"}, auth=("demo-client", "demo-secret")
        )
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
        assert_outcome(http.get(f"{basic.base_url}/Patient", auth=("demo-client", "demo-secret")), 401)
        basic.set_faults()
        assert http.get(f"{basic.base_url}/Patient", auth=("demo-client", "demo-secret")).status_code == 200


def test_not_fhir_fault_serves_an_html_login_page(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="oracle_health", faults={"not_fhir": True})
    with httpx.Client(timeout=10) as http:
        for path in ("metadata", "Patient", f"Patient/{hospital.patient_ids[0]}"):
            response = http.get(f"{hospital.base_url}/{path}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            assert b"<form" in response.content
        # The control endpoints are not behind the "proxy".
        assert http.get(control_url(hospital, "info")).json()["faults"]["not_fhir"] is True


def test_fhir_version_fault_changes_the_claimed_version(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", faults={"fhir_version": "3.0.2"})
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{hospital.base_url}/metadata").json()["fhirVersion"] == "3.0.2"


def test_faults_are_switched_over_the_control_endpoint(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic")
    faults_url = control_url(hospital, "faults")
    with httpx.Client(timeout=10) as http:
        put = http.put(faults_url, json={"rate_429": 1.0})
        assert put.status_code == 200
        assert put.json()["rate_429"] == 1.0
        assert http.get(f"{hospital.base_url}/Patient").status_code == 429
        assert hospital.faults["rate_429"] == 1.0

        # PUT replaces everything: the 429s stop when another fault is set.
        http.put(faults_url, json={"fhir_version": "5.0.0"})
        assert http.get(f"{hospital.base_url}/Patient").status_code == 200

        cleared = http.delete(faults_url)
        assert cleared.status_code == 200
        assert cleared.json()["fhir_version"] is None
        assert http.get(faults_url).json() == cleared.json()

        assert_outcome(http.put(faults_url, content=b"{not json"), 400)
        assert_outcome(http.put(faults_url, json=[1, 2]), 400)
        assert_outcome(http.put(faults_url, json={"no_such_fault": True}), 400)
        assert_outcome(http.put(faults_url, json={"rate_5xx": 7}), 400)
        assert_outcome(http.post(faults_url, json={}), 405)
        assert_outcome(http.get(control_url(hospital, "nothing")), 404)
        # A refused PUT leaves the faults as they were.
        assert hospital.faults == cleared.json()


def test_bad_faults_are_refused_in_python_too() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        SandboxHospital(flavour="generic", patients=1, faults={"latency": 5})
    hospital = SandboxHospital(flavour="generic", patients=1)
    try:
        with pytest.raises(ValueError, match="rate_429"):
            hospital.set_faults(rate_429=2)
        with pytest.raises(ValueError, match="unknown fault"):
            hospital.set_faults(bogus=True)
    finally:
        hospital.stop()


def test_info_describes_the_sandbox(http: httpx.Client, hospitals: dict[str, SandboxHospital]) -> None:
    hospital = hospitals["athenahealth"]
    info = http.get(control_url(hospital, "info")).json()

    assert info["flavour"] == "athenahealth"
    assert info["base_url"] == hospital.base_url
    assert info["token_url"] == hospital.token_url
    assert info["auth"] == "none"
    assert info["mrn_system"] == "urn:oid:2.16.840.1.113883.3.564.1"
    assert info["patient_count"] == 60
    assert info["patient_ids"] == hospital.patient_ids
    assert info["faults"] == hospital.faults
    assert info["faults"]["rate_5xx"] == 0.0


def test_unknown_flavour_or_auth_is_refused() -> None:
    with pytest.raises(ValueError, match="flavour"):
        SandboxHospital(flavour="cerner-classic")
    with pytest.raises(ValueError, match="auth"):
        SandboxHospital(auth="saml")


# --- the management command -------------------------------------------------------------------


def test_management_command_serves_and_announces_its_base_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sandbox", "--flavour", "meditech", "--port", "0", "--patients", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)  # never hang the suite
        line = process.stdout.readline().strip() if ready else ""
        if not line:
            process.terminate()
            pytest.fail(f"the command printed nothing: {process.stderr.read()[-2000:]}")
        assert line.startswith("sandbox meditech listening at http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[1]
        assert base_url.endswith("/v2/fhir/r4")
        with httpx.Client(timeout=10) as http:
            assert http.get(f"{base_url}/Patient").json()["total"] == 5
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- quirks: what real servers do that misleads a client ----------------------------------------------


def test_a_server_that_ignores_patient_answers_every_patients_resources(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="oracle_health", patients=8)
    patient = hospital.patient_ids[0]
    with httpx.Client(timeout=10) as http:
        url = f"{hospital.base_url}/Observation"
        own = http.get(url, params={"patient": patient, "_count": 100}).json()
        hospital.set_faults(ignore_patient_param=True)
        every = http.get(url, params={"patient": patient, "_count": 100}).json()
        # The patient must still be named (the flavour insists), it is just not applied.
        assert_outcome(http.get(url), 400, "required")
    owners = {e["resource"]["subject"]["reference"] for e in every["entry"]}
    assert {e["resource"]["subject"]["reference"] for e in own["entry"]} == {f"Patient/{patient}"}
    assert len(owners) == 8 and every["total"] > own["total"]


def test_a_server_that_ignores_count_or_never_pages(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", patients=30, faults={"ignore_count": True})
    with httpx.Client(timeout=10) as http:
        page = http.get(f"{hospital.base_url}/Patient", params={"_count": 3}).json()
        assert len(page["entry"]) == FLAVOURS["generic"].default_count
        assert "next" in {link["relation"] for link in page["link"]}
        hospital.set_faults(never_pages=True)
        page = http.get(f"{hospital.base_url}/Patient", params={"_count": 3}).json()
    assert len(page["entry"]) == 3 and page["total"] == 30
    assert [link["relation"] for link in page["link"]] == ["self"]


@pytest.mark.parametrize(
    ("quirk", "status", "resource_type"),
    [("empty_bundle", 200, "Bundle"), ("operation_outcome", 200, "OperationOutcome"), ("not_found", 404, None)],
)
def test_a_server_without_a_capability_statement(
    make: Callable[..., SandboxHospital], quirk: str, status: int, resource_type: str | None
) -> None:
    hospital = make(flavour="generic", faults={"no_capability_statement": quirk})
    with httpx.Client(timeout=10) as http:
        response = http.get(f"{hospital.base_url}/metadata")
        assert http.get(f"{hospital.base_url}/Patient").status_code == 200
    assert response.status_code == status
    if resource_type:
        assert response.json()["resourceType"] == resource_type
    else:
        assert_outcome(response, 404, "not-found")


def test_a_smart_configuration_that_fails_whatever_the_auth(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", faults={"smart_config_status": 500})
    with httpx.Client(timeout=10) as http:
        assert_outcome(http.get(f"{hospital.base_url}/.well-known/smart-configuration"), 500, "exception")
        assert http.get(f"{hospital.base_url}/metadata").status_code == 200


@pytest.mark.parametrize(
    ("style", "header", "expected"),
    [
        ("ratelimit", "ratelimit", '"fhirInteractions";r=0;t=53'),
        ("ratelimit_reset", "ratelimit-reset", "53"),
        ("x_ratelimit_reset", "x-ratelimit-reset", None),
    ],
)
def test_429s_can_say_when_to_come_back_with_ratelimit_fields(
    make: Callable[..., SandboxHospital], style: str, header: str, expected: str | None
) -> None:
    hospital = make(flavour="generic", faults={"rate_429": 1.0, "retry_after": 53, "throttle_style": style})
    with httpx.Client(timeout=10) as http:
        response = http.get(f"{hospital.base_url}/Patient")
    outcome = assert_outcome(response, 429, "throttled")
    assert "retry-after" not in response.headers
    assert "53 s until the reset" in outcome["issue"][0]["diagnostics"]
    if expected is None:  # X-RateLimit-Reset is the moment of the reset, in epoch seconds
        assert 50 <= int(response.headers[header]) - time.time() <= 54
    else:
        assert response.headers[header] == expected


def test_a_token_endpoint_that_spells_out_the_wildcard(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="epic", auth="client_credentials", faults={"per_type_scopes": True})
    with httpx.Client(timeout=10) as http:
        token = http.post(
            hospital.token_url,
            data={"grant_type": "client_credentials", "scope": "system/*.read"},
            auth=("demo-client", "demo-secret"),
        ).json()
    assert token["scope"].split() == [f"system/{t}.read" for t in ("Patient", "Observation", "Condition", "Encounter")]


def test_mrn_system_and_icd9_quirks_rewrite_what_is_served(make: Callable[..., SandboxHospital]) -> None:
    hospital = make(flavour="generic", faults={"mrn_system": "urn:oid:2.999.1", "icd9_conditions": True})
    patient = hospital.patient_ids[0]
    with httpx.Client(timeout=10) as http:
        read = http.get(f"{hospital.base_url}/Patient/{patient}").json()
        conditions = http.get(f"{hospital.base_url}/Condition", params={"patient": patient}).json()
    systems = {i["system"] for i in read["identifier"]}
    assert "urn:oid:2.999.1" in systems and FLAVOURS["generic"].mrn_system not in systems
    codings = [c for e in conditions["entry"] for c in e["resource"]["code"]["coding"]]
    assert codings and {c["system"] for c in codings} == {"http://hl7.org/fhir/sid/icd-9-cm"}


def test_the_management_command_switches_quirks_and_lists_them() -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from connections.management.commands.sandbox import Command, parse_switch

    assert parse_switch("never_pages=true") == ("never_pages", True)
    assert parse_switch("throttle_style=ratelimit") == ("throttle_style", "ratelimit")
    with pytest.raises(CommandError):
        parse_switch("never_pages")
    help_text = Command().create_parser("manage.py", "sandbox").format_help()
    for name in ("ignore_patient_param", "ignore_count", "never_pages", "no_capability_statement", "throttle_style"):
        assert name in help_text
    with pytest.raises(CommandError, match="unknown fault"):
        call_command("sandbox", "--port", "0", "--fault", "no_such_quirk=1")
