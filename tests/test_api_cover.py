"""The API covers what the mapping, review and evidence pages do, with the pages' access rules.

Each test drives the REST API as a client would (tokens where the token matters, otherwise the
personas' API clients) and compares with what the services and the pages hold, so a behaviour
that differs between the API and its page fails here. The whole flow against a sandbox hospital
on a real worker is tests/test_api_flow.py.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from onboarding.engine import services
from onboarding.mapping import services as mappings
from onboarding.models import Mapping, ValidationPolicy, Waiver
from onboarding.review import services as review
from portal.models import AuditEvent
from tests.conftest import client_for
from tests.factories import ConnectionFactory, sign_mapping_off
from tests.test_api_tokens import api_with, obtain
from tests.test_review import add_finding, validate_run

pytestmark = pytest.mark.django_db

MRN = "http://hospital.example.org/mrn"
GLU = "Observation.code|urn:local|GLU"
NA = "Observation.code|urn:local|NA"
EXT = "http://example.org/ext"
PHI = ("Quarnstrom", "Eliza", "MRN-777123")


def as_user(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def mapped_connection(tenant: Any) -> Any:
    """A connection whose map step found two local codes and one unknown extension (version 1)."""
    connection = ConnectionFactory(tenant=tenant, name="Lab feed")
    onboarding = services.ensure_onboarding(connection)
    profile = {
        "elements": [
            {
                "element": "Observation.code",
                "local_codes": [
                    {"system": "urn:local", "code": "GLU", "display": "GLUCOSE", "count": 3},
                    {"system": "urn:local", "code": "NA", "display": "SODIUM", "count": 2},
                ],
            }
        ],
        "extensions": [{"url": EXT, "known": False}],
        "suggested_mrn_system": MRN,
    }
    mappings.record_map_result(onboarding=onboarding, profile=profile, run=None)
    return connection


def url(name: str, code: Any) -> str:
    return reverse(name, kwargs={"code": code})


def glucose(version: int, code: str = "2339-0") -> dict[str, Any]:
    return {
        "version": version,
        "key": GLU,
        "target_system": "LOINC",
        "target_code": code,
        "target_display": "Glucose [Mass/volume] in Blood",
    }


def versions(connection: Any) -> list[int]:
    return list(
        Mapping.objects.filter(onboarding__connection=connection).order_by("version").values_list("version", flat=True)
    )


# --- the mapping --------------------------------------------------------------------------------------


def test_the_mapping_is_read_by_everyone_of_the_tenant_and_edited_only_by_vendor_staff(
    tenant_a: Any, it_a: Any, it_b: Any, cs_user: Any
) -> None:
    connection = mapped_connection(tenant_a)
    read = as_user(it_a).get(url("api_mapping", connection.code))
    assert read.status_code == 200, read.content
    body = read.json()
    assert (body["version"], body["latest_version"], body["mrn_system"]) == (1, 1, MRN)
    assert [row["key"] for row in body["codes"]] == [GLU, NA]
    assert body["codes"][0]["targets"][0] == {"system": "http://loinc.org", "label": "LOINC"}
    assert body["extensions"] == [{"url": EXT, "handling": ""}]
    assert body["coverage"] == {
        "complete": False,
        "mrn_system_set": True,
        "unmapped": 2,
        "undecided_extensions": [EXT],
        "summary": "To finish the mapping: map 2 local codes.",
    }
    assert body["sign_off"]["signed"] is False and body["sign_off"]["requestable"] is False
    # Another hospital's connection is a 404, exactly like a missing one.
    foreign = as_user(it_b).get(url("api_mapping", connection.code))
    missing = as_user(it_b).get(url("api_mapping", "00000000-0000-4000-8000-000000000000"))
    assert foreign.status_code == missing.status_code == 404 and foreign.content == missing.content
    # Hospital IT read, but do not edit: the page's rule.
    refused = as_user(it_a).post(url("api_mapping_code", connection.code), glucose(1), format="json")
    assert refused.status_code == 403
    assert versions(connection) == [1]
    saved = as_user(cs_user).post(url("api_mapping_code", connection.code), glucose(1), format="json")
    assert saved.status_code == 200, saved.content
    assert saved.json()["changed"] is True and saved.json()["detail"] == "Saved: the mapping is now version 2."
    assert saved.json()["mapping"]["codes"][0]["target_code"] == "2339-0"
    event = AuditEvent.objects.filter(action="mapping.version").latest("id")
    assert event.actor == cs_user and event.detail["version"] == 2


def test_every_write_names_the_version_read_and_a_change_someone_made_since_is_a_409(
    tenant_a: Any, cs_user: Any, engineer: Any
) -> None:
    connection = mapped_connection(tenant_a)
    cs, eng = as_user(cs_user), as_user(engineer)
    assert cs.post(url("api_mapping_code", connection.code), glucose(1), format="json").status_code == 200
    # Saving what is already there makes no version (and voids no sign-off).
    same = cs.post(url("api_mapping_code", connection.code), glucose(2), format="json")
    assert same.status_code == 200 and same.json()["changed"] is False
    assert same.json()["detail"] == "Nothing changed: the mapping stays version 2."
    # The engineer still looks at version 1: their change of the same code would overwrite customer success's.
    stale = eng.post(url("api_mapping_code", connection.code), glucose(1, code="2345-7"), format="json")
    assert stale.status_code == 409, stale.content
    assert stale.json()["code"] == "conflict" and stale.json()["latest_version"] == 2
    assert "Someone changed the mapping of GLU" in stale.json()["detail"]
    # Another code from the same stale version is fine: nobody changed that one.
    sodium = {**glucose(1), "key": NA, "target_code": "2951-2", "target_display": "Sodium [Moles/volume]"}
    assert eng.post(url("api_mapping_code", connection.code), sodium, format="json").status_code == 200
    assert versions(connection) == [1, 2, 3]

    # The MRN system: a bad one is a 400 saying what to fix, a stale one a 409.
    bad = cs.post(url("api_mapping_mrn", connection.code), {"version": 3, "system": "an mrn"}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid" and "URI without spaces" in bad.json()["detail"]
    moved = cs.post(url("api_mapping_mrn", connection.code), {"version": 3, "system": "urn:oid:1.2.3"}, format="json")
    assert moved.status_code == 200 and moved.json()["mapping"]["mrn_system"] == "urn:oid:1.2.3"
    late = eng.post(url("api_mapping_mrn", connection.code), {"version": 3, "system": "urn:oid:9.9"}, format="json")
    assert late.status_code == 409 and late.json()["latest_version"] == 4

    # Extensions: decide one; a choice that does not exist is a 400 from the serializer.
    ext = cs.post(url("api_mapping_extension", connection.code), {"version": 4, "url": EXT, "handling": "ignore"})
    assert ext.status_code == 200 and ext.json()["mapping"]["extensions"] == [{"url": EXT, "handling": "ignore"}]
    wrong = cs.post(url("api_mapping_extension", connection.code), {"version": 5, "url": EXT, "handling": "maybe"})
    assert wrong.status_code == 400 and "handling" in wrong.json()
    unknown = cs.post(url("api_mapping_code", connection.code), glucose(99), format="json")
    assert unknown.status_code == 400 and "no mapping version" in unknown.json()["version"][0]
    assert versions(connection) == [1, 2, 3, 4, 5]

    # Complete now: the gates API may put it to hospital IT. An older version can still be read.
    latest = cs.get(url("api_mapping", connection.code)).json()
    assert latest["coverage"]["complete"] is True and latest["sign_off"]["requestable"] is True
    assert [v["version"] for v in latest["history"]] == [5, 4, 3, 2, 1]
    first = cs.get(url("api_mapping", connection.code) + "?version=1").json()
    assert (first["version"], first["latest_version"], first["codes"][0]["target_code"]) == (1, 5, "")


def test_csv_export_and_import_and_the_concept_map_through_the_api(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    connection = mapped_connection(tenant_a)
    cs = as_user(cs_user)
    exported = cs.get(url("api_mapping_csv", connection.code), HTTP_ACCEPT="text/csv")
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert [row["source_code"] for row in rows] == ["GLU", "NA"]
    page = client_for(cs_user).get(url("mapping_export_csv", connection.code))
    assert page.content == exported.content  # the same file as the page's download

    def upload(text: str, version: int, client: APIClient = cs) -> Any:
        file = SimpleUploadedFile("mapping.csv", text.encode(), content_type="text/csv")
        return client.post(url("api_mapping_csv", connection.code), {"version": version, "file": file})

    def as_csv(targets: dict[str, tuple[str, str, str]]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            system, code, display = targets.get(row["source_code"], ("", "", ""))
            writer.writerow({**row, "target_system": system, "target_code": code, "target_display": display})
        return out.getvalue()

    # A bad row: every error by line, nothing saved.
    bad = upload(as_csv({"GLU": ("LOINC", "not-a-code", "Glucose"), "NA": ("LOINC", "2951-2", "")}), 1)
    assert bad.status_code == 400, bad.content
    assert bad.json()["errors"] == [
        {
            "line": 2,
            "message": "“not-a-code” is not a LOINC code: expected digits, a dash and a check digit, e.g. 2339-0.",
        },
        {"line": 3, "message": "Give the display of the standard code, as the code system writes it."},
    ]
    assert versions(connection) == [1]
    assert upload("x", 1, as_user(it_a)).status_code == 403
    assert cs.post(url("api_mapping_csv", connection.code), {"version": 1}).json() == {
        "file": ["No file was submitted."]
    }

    good = as_csv({"GLU": ("LOINC", "2339-0", "Glucose"), "NA": ("LOINC", "2951-2", "Sodium")})
    imported = upload(good, 1)
    assert imported.status_code == 200, imported.content
    assert (imported.json()["changed"], imported.json()["changed_codes"]) == (True, 2)
    assert imported.json()["mapping"]["version"] == 2 and imported.json()["mapping"]["source"] == "csv_import"
    again = upload(good, 2)
    assert again.status_code == 200 and again.json()["changed"] is False
    # A file is a bulk change: made from version 1, it is refused once the mapping moved on.
    stale = upload(good, 1)
    assert stale.status_code == 409 and "Export it again" in stale.json()["detail"]
    assert versions(connection) == [1, 2]

    concept = cs.get(url("api_mapping_concept_map", connection.code), HTTP_ACCEPT="application/fhir+json")
    assert concept.status_code == 200 and concept["Content-Type"].startswith("application/fhir+json")
    document = json.loads(concept.content)
    assert (document["resourceType"], document["version"], document["status"]) == ("ConceptMap", "2", "draft")
    assert {e["code"] for g in document["group"] for e in g["element"]} == {"GLU", "NA"}
    assert concept.content == client_for(cs_user).get(url("mapping_concept_map", connection.code)).content


def test_the_validation_policy_is_read_by_everyone_and_changed_by_vendor_staff(
    tenant_a: Any, it_a: Any, it_b: Any, cs_user: Any
) -> None:
    path = url("api_validation_policy", tenant_a.code)
    defaults = as_user(it_a).get(path).json()
    assert defaults == {
        "tenant": str(tenant_a.code),
        "max_error_patient_pct": 0.0,
        "max_warning_patient_pct": 100.0,
        "map_sample_size": 10,
        "validate_sample_size": 10,
        "saved": False,
        "updated_at": None,
        "updated_by": None,
    }
    assert not ValidationPolicy.objects.exists()  # reading never writes
    assert as_user(it_a).patch(path, {"validate_sample_size": 20}, format="json").status_code == 403
    assert as_user(it_b).get(path).status_code == 404
    bad = as_user(cs_user).patch(path, {"max_error_patient_pct": 101, "map_sample_size": 0}, format="json")
    assert bad.status_code == 400 and set(bad.json()) == {"max_error_patient_pct", "map_sample_size"}
    assert not ValidationPolicy.objects.exists()
    saved = as_user(cs_user).patch(path, {"validate_sample_size": 20, "max_error_patient_pct": 5}, format="json")
    assert saved.status_code == 200, saved.content
    body = saved.json()
    assert (body["validate_sample_size"], body["max_error_patient_pct"], body["map_sample_size"]) == (20, 5.0, 10)
    assert body["saved"] is True and body["updated_by"] == cs_user.username
    event = AuditEvent.objects.get(action="validation_policy.update")
    assert event.actor == cs_user and event.detail == {"changed": ["max_error_patient_pct", "validate_sample_size"]}
    # The page shows what the API saved, and its own form lands in the same service.
    page = client_for(cs_user).post(
        url("validation_policy", tenant_a.code),
        {
            "max_error_patient_pct": "5",
            "max_warning_patient_pct": "50",
            "map_sample_size": "10",
            "validate_sample_size": "20",
        },
    )
    assert page.status_code == 302
    assert AuditEvent.objects.filter(action="validation_policy.update").latest("id").detail == {
        "changed": ["max_warning_patient_pct"]
    }
    assert mappings.policy_for(tenant_a).max_warning_patient_pct == 50.0


# --- the review --------------------------------------------------------------------------------------


def reviewed_runs(tenant: Any) -> tuple[Any, Any]:
    """Two validation attempts of one connection with findings in several groups, one with a raw copy."""
    first = validate_run(tenant, result={"patients": 4, "patient_keys": ["p1", "p2", "p3", "p4"]})
    add_finding(first, "codes.unmapped-local", "Observation.code", patient="p1", key="o1")
    add_finding(first, "codes.unmapped-local", "Observation.code", patient="p2", key="o2")
    add_finding(first, "structure.invalid", "Patient.gender", patient="p3", key="k3")
    second = validate_run(
        tenant,
        connection=first.onboarding.connection,
        attempt=2,
        result={"patients": 4, "patient_keys": ["p1", "p2", "p3", "p4"]},
    )
    add_finding(second, "codes.unmapped-local", "Observation.code", patient="p1", key="o1")
    add_finding(second, "extensions.unknown", "Patient.extension", patient="p1", key="k1", raw=True, severity="warning")
    add_finding(second, "dates.implausible", "Patient.birthDate", patient="p4", key="k4", severity="warning")
    add_finding(second, "dates.implausible", "Patient.birthDate", patient="p2", key="k2", severity="warning")
    return first, second


def test_findings_grouped_as_the_review_shows_them_paginated_with_examples_and_the_diff(
    tenant_a: Any, it_a: Any, it_b: Any, engineer: Any
) -> None:
    first, second = reviewed_runs(tenant_a)
    api = as_user(it_a)
    page_one = api.get(url("api_run_findings", second.code) + "?page_size=2")
    assert page_one.status_code == 200, page_one.content
    body = page_one.json()
    expected = [(g.rule, g.path, g.count, g.patients) for g in review.grouped_findings(second)]
    assert body["count"] == 3 and body["next"] and body["previous"] is None
    page_two = api.get(body["next"]).json()
    shown = [(g["rule"], g["path"], g["count"], g["patients"]) for g in body["results"] + page_two["results"]]
    assert shown == expected  # the page's order: errors first, then by size
    assert shown[0] == ("codes.unmapped-local", "Observation.code", 1, 1)
    assert body["results"][1] == {
        "rule": "dates.implausible",
        "path": "Patient.birthDate",
        "severity": "warning",
        "resource_type": "Patient",
        "count": 2,
        "patients": 2,
        "share": 50.0,
        "waived": False,
        "waiver": None,
        "sample_message": "dates.implausible problem",
    }
    warnings = api.get(url("api_run_findings", second.code) + "?severity=warning").json()
    assert {g["severity"] for g in warnings["results"]} == {"warning"} and warnings["count"] == 2

    examples = api.get(
        url("api_run_finding_examples", second.code) + "?rule=extensions.unknown&path=Patient.extension"
    ).json()
    assert [(e["patient_key"], e["location"], e["raw_kept"]) for e in examples] == [("p1", "extension[0]", True)]
    assert api.get(url("api_run_finding_examples", second.code)).status_code == 400
    # Raw resources never come through the API, not even to engineers.
    for client in (api, as_user(engineer)):
        for name in ("api_run_findings", "api_run_finding_examples", "api_run_export"):
            text = client.get(url(name, second.code) + "?rule=extensions.unknown&path=Patient.extension").content
            assert not any(word.encode() in text for word in PHI), name

    diff = api.get(url("api_run_diff", second.code)).json()
    assert diff["previous"]["code"] == str(first.code) and diff["run"]["attempt"] == 2
    assert diff["new"] == [
        {"rule": "dates.implausible", "path": "Patient.birthDate", "count": 2},
        {"rule": "extensions.unknown", "path": "Patient.extension", "count": 1},
    ]
    assert diff["fixed"] == [
        {"rule": "codes.unmapped-local", "path": "Observation.code", "count": 1},
        {"rule": "structure.invalid", "path": "Patient.gender", "count": 1},
    ]
    assert (diff["unchanged"], diff["compared_patients"], diff["not_compared_count"]) == (1, 4, 0)
    assert api.get(url("api_run_diff", first.code)).json()["previous"] is None

    # Not a validation run, or another hospital's: 404 alike.
    configure = services.ensure_onboarding(first.onboarding.connection).runs.create(step="configure", attempt=1)
    assert api.get(url("api_run_findings", configure.code)).status_code == 404
    assert as_user(it_b).get(url("api_run_findings", second.code)).status_code == 404


def test_the_review_queue_lists_failed_runs_of_the_callers_tenants_with_the_pages_filters(
    tenant_a: Any, tenant_b: Any, it_a: Any, it_b: Any, engineer: Any
) -> None:
    first, second = reviewed_runs(tenant_a)
    theirs = validate_run(tenant_b)
    add_finding(theirs, "structure.invalid", "Patient.gender", patient="q1", key="q1")
    queue = "/api/v1/review/queue/"
    everything = as_user(engineer).get(queue).json()
    assert {r["code"] for r in everything["results"]} == {str(first.code), str(second.code), str(theirs.code)}
    mine = as_user(it_a).get(queue).json()["results"]
    assert {r["code"] for r in mine} == {str(first.code), str(second.code)}
    counts = {r["code"]: (r["errors"], r["warnings"]) for r in mine}
    assert counts[str(second.code)] == (1, 3) and counts[str(first.code)] == (3, 0)
    assert as_user(it_a).get(queue, {"tenant": str(tenant_b.code)}).json()["results"] == []
    by_rule = as_user(engineer).get(queue, {"rule": "structure.invalid"}).json()["results"]
    assert {r["code"] for r in by_rule} == {str(first.code), str(theirs.code)}
    assert as_user(it_b).get(queue).json()["count"] == 1
    bad = as_user(engineer).get(queue, {"since": "last week"})
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.json()["since"][0]
    # A failure leaves the queue once a later attempt passed.
    validate_run(tenant_a, connection=first.onboarding.connection, attempt=3, status="passed")
    assert as_user(it_a).get(queue).json()["results"] == []


def test_exports_through_the_api_are_the_pages_files_and_audited(tenant_a: Any, it_a: Any) -> None:
    _, run = reviewed_runs(tenant_a)
    api, page = as_user(it_a), client_for(it_a)
    document = api.get(url("api_run_export", run.code)).json()
    assert document == page.get(url("review_export_json", run.code)).json()
    assert len(document["findings"]) == 4
    streamed = api.get(url("api_run_export_csv", run.code), HTTP_ACCEPT="text/csv")
    assert streamed.status_code == 200 and streamed["Content-Type"].startswith("text/csv")
    from_page = page.get(url("review_export_csv", run.code))
    assert b"".join(streamed.streaming_content) == b"".join(from_page.streaming_content)
    formats = list(AuditEvent.objects.filter(action="findings.export").values_list("detail__format", flat=True))
    assert sorted(formats) == ["csv", "csv", "json", "json"]


def test_waivers_are_created_and_revoked_by_engineers_through_the_api_and_the_run_page(
    tenant_a: Any, it_a: Any, it_b: Any, cs_user: Any, engineer: Any
) -> None:
    _, run = reviewed_runs(tenant_a)
    eng = as_user(engineer)
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    waive = {
        "run": str(run.code),
        "rule": "dates.implausible",
        "path": "Patient.birthDate",
        "reason": "Birth dates before 1900 are archive records",
        "expires_on": tomorrow,
    }
    assert as_user(cs_user).post("/api/v1/waivers/", waive, format="json").status_code == 403
    assert as_user(it_a).post("/api/v1/waivers/", waive, format="json").status_code == 403
    short = eng.post("/api/v1/waivers/", {**waive, "reason": "ok"}, format="json")
    assert short.status_code == 400 and "Say why" in short.json()["detail"]
    elsewhere = eng.post("/api/v1/waivers/", {**waive, "rule": "patient.birth-date-missing"}, format="json")
    assert elsewhere.status_code == 400 and "has no finding of patient.birth-date-missing" in elsewhere.json()["detail"]
    made = eng.post("/api/v1/waivers/", waive, format="json")
    assert made.status_code == 201, made.content
    waiver = made.json()
    assert (waiver["tenant"], waiver["approver"], waiver["in_force"]) == (str(tenant_a.code), "engineer", True)
    group = next(
        g for g in as_user(it_a).get(url("api_run_findings", run.code)).json()["results"] if g["rule"] == waive["rule"]
    )
    assert group["waived"] is True and group["waiver"]["code"] == waiver["code"]

    # Everyone of the tenant sees it; another hospital does not.
    listed = as_user(it_a).get("/api/v1/waivers/?state=in_force").json()
    assert [w["code"] for w in listed["results"]] == [waiver["code"]]
    assert as_user(it_b).get("/api/v1/waivers/").json()["results"] == []
    assert as_user(it_b).get(f"/api/v1/waivers/{waiver['code']}/").status_code == 404

    revoke = f"/api/v1/waivers/{waiver['code']}/revoke/"
    assert as_user(cs_user).post(revoke, {}, format="json").status_code == 403
    ended = eng.post(revoke, {"reason": "The archive records were fixed"}, format="json")
    assert ended.status_code == 200 and ended.json()["in_force"] is False and ended.json()["revoked_at"]
    twice = eng.post(revoke, {}, format="json")
    assert twice.status_code == 409 and "already revoked" in twice.json()["detail"]
    event = AuditEvent.objects.get(action="waiver.revoke")
    assert event.actor == engineer and event.detail["reason"] == "The archive records were fixed"
    assert [w["code"] for w in as_user(it_a).get("/api/v1/waivers/?state=revoked").json()["results"]] == [
        waiver["code"]
    ]
    assert not review.grouped_findings(run)[1].waived

    # The run page offers the same revocation to engineers, and only to them.
    again = review.create_waiver(
        user=engineer,
        tenant=tenant_a,
        rule="dates.implausible",
        path="Patient.birthDate",
        reason="Archive records, again.",
        expires_on=timezone.localdate() + timedelta(days=2),
        run=run,
    )
    run_page = url("review_run", run.code)
    assert 'data-testid="unwaive-submit"' in client_for(engineer).get(run_page).content.decode()
    shown = client_for(it_a).get(run_page).content.decode()
    assert 'data-testid="unwaive-submit"' not in shown and "Archive records, again. Waived" in shown  # one full stop
    assert client_for(it_a).post(url("review_unwaive", run.code), {"waiver": str(again.code)}).status_code == 403
    done = client_for(engineer).post(url("review_unwaive", run.code), {"waiver": str(again.code)}, follow=True)
    assert "Revoked the waiver of dates.implausible at Patient.birthDate" in done.content.decode()
    assert Waiver.objects.get(pk=again.pk).revoked_at is not None


# --- the evidence pack, tokens at page URLs, the schema ----------------------------------------------------


def test_the_evidence_pack_through_the_api_is_the_pages_json_and_audited(
    tenant_a: Any, it_a: Any, it_b: Any, cs_user: Any
) -> None:
    connection = mapped_connection(tenant_a)
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None
    mapping = mappings.set_mrn_system(user=cs_user, mapping=mapping, system=MRN + "/v2")
    for row in mapping.codes:
        mapping = mappings.update_code(
            user=cs_user,
            mapping=mapping,
            key=mappings.row_key(row),
            target_system="LOINC",
            target_code="2339-0",
            target_display="Glucose",
        )
    sign_mapping_off(cs=cs_user, it=it_a, mapping=mapping)
    code = connection.onboarding.code
    pack = as_user(it_a).get(url("api_evidence_pack", code))
    assert pack.status_code == 200, pack.content
    from_page = json.loads(client_for(it_a).get(url("evidence_pack_json", code)).content)
    body = pack.json()
    assert {**body, "generated_at": "", "audit": ""} == {**from_page, "generated_at": "", "audit": ""}
    # The page's download came second: its extract also lists the API's download, which is audited too.
    assert from_page["audit"]["events"][:-1] == body["audit"]["events"]
    assert from_page["audit"]["events"][-1]["action"] == "evidence.export"
    assert body["format"] == "onboarding-evidence-pack/1"
    (gate,) = [g for g in body["gates"] if g.get("key") == "mapping_sign_off"]
    assert (
        gate["approvals"][0]["state"] == "approved" and gate["approvals"][0]["artifact"]["version"] == mapping.version
    )
    assert as_user(it_b).get(url("api_evidence_pack", code)).status_code == 404
    assert AuditEvent.objects.filter(action="evidence.export", actor=it_a).count() == 2


def test_a_token_sent_to_a_page_url_gets_a_401_naming_the_api_route(tenant_a: Any, it_a: Any) -> None:
    _, run = reviewed_runs(tenant_a)
    connection = mapped_connection(tenant_a)
    token = api_with(obtain(it_a.username).json()["token"])
    cases = [
        (url("review_export_json", run.code), url("api_run_export", run.code)),
        (url("review_export_csv", run.code), url("api_run_export_csv", run.code)),
        (url("mapping_export_csv", connection.code), url("api_mapping_csv", connection.code)),
        (url("mapping_concept_map", connection.code), url("api_mapping_concept_map", connection.code)),
        (url("evidence_pack_json", connection.onboarding.code), url("api_evidence_pack", connection.onboarding.code)),
    ]
    for page, api_path in cases:
        answer = token.get(page)
        assert answer.status_code == 401, (page, answer.status_code)
        assert answer.json()["api"] == api_path and api_path in answer.json()["detail"]
        assert answer["WWW-Authenticate"] == "Token"
        assert token.get(api_path).status_code == 200, api_path
    # A page with no API twin says where the API is; without a token, pages still send people to log in.
    other = token.get(url("tenant_audit_csv", tenant_a.code))
    assert other.status_code == 401 and "api" not in other.json() and "/api/docs/" in other.json()["detail"]
    browser = APIClient().get(url("review_export_json", run.code))
    assert browser.status_code == 302 and browser["Location"].startswith(reverse("login"))


def test_the_openapi_schema_lists_every_new_operation(cs_user: Any) -> None:
    schema = as_user(cs_user).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    expected = {
        "/api/v1/connections/{code}/mapping/": {"get"},
        "/api/v1/connections/{code}/mapping/mrn-system/": {"post"},
        "/api/v1/connections/{code}/mapping/codes/": {"post"},
        "/api/v1/connections/{code}/mapping/extensions/": {"post"},
        "/api/v1/connections/{code}/mapping/csv/": {"get", "post"},
        "/api/v1/connections/{code}/mapping/conceptmap/": {"get"},
        "/api/v1/tenants/{code}/validation-policy/": {"get", "patch"},
        "/api/v1/review/queue/": {"get"},
        "/api/v1/runs/{code}/findings/": {"get"},
        "/api/v1/runs/{code}/findings/examples/": {"get"},
        "/api/v1/runs/{code}/diff/": {"get"},
        "/api/v1/runs/{code}/export/": {"get"},
        "/api/v1/runs/{code}/export/csv/": {"get"},
        "/api/v1/waivers/": {"get", "post"},
        "/api/v1/waivers/{code}/": {"get"},
        "/api/v1/waivers/{code}/revoke/": {"post"},
        "/api/v1/onboardings/{code}/evidence/": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    components = schema["components"]["schemas"]
    assert {"version", "key", "target_system", "target_code", "target_display"} <= set(
        components["CodeInputRequest"]["properties"]
    )
    assert "version" in components["CodeInputRequest"]["required"]
    assert "multipart/form-data" in paths["/api/v1/connections/{code}/mapping/csv/"]["post"]["requestBody"]["content"]
    assert "text/csv" in paths["/api/v1/runs/{code}/export/csv/"]["get"]["responses"]["200"]["content"]
    findings = paths["/api/v1/runs/{code}/findings/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert findings["schema"]["$ref"].endswith("PaginatedFindingGroupOutputList")
    assert {"timeline", "gates", "validation", "security", "audit"} <= set(
        components["EvidencePackOutput"]["properties"]
    )
