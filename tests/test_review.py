"""The engineers' review and the mapping pages, through the views, per persona.

Findings and runs are made directly here (the steps that produce them are tested in
test_map_step.py and test_validate_step.py), so each behaviour is checked in isolation.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from onboarding.engine import services
from onboarding.mapping import services as mappings
from onboarding.models import Finding, Mapping, RawResource, StepRun, Waiver
from onboarding.review import services as review
from portal.models import AuditEvent
from tests.conftest import client_for, reauthenticated
from tests.factories import ConnectionFactory, TenantFactory

pytestmark = pytest.mark.django_db

PATIENT = {
    "resourceType": "Patient",
    "id": "p-1",
    "name": [{"family": "Quarnstrom", "given": ["Eliza"]}],
    "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-777123"}],
    "extension": [{"url": "http://example.org/pharmacy", "valueString": "Main St"}],
    "gender": "female",
}


def validate_run(
    tenant: Any, *, vendor: str = "generic", attempt: int = 1, connection: Any = None, **fields: Any
) -> StepRun:
    connection = connection or ConnectionFactory(tenant=tenant, vendor=vendor)
    onboarding = services.ensure_onboarding(connection)
    defaults = {
        "status": "failed",
        "finished_at": timezone.now(),
        "result": {"patients": 4},
        "error_message": "Too many errors.",
    }
    return StepRun.objects.create(onboarding=onboarding, step="validate", attempt=attempt, **{**defaults, **fields})


def add_finding(
    run: StepRun, rule: str, path: str, *, patient: str, key: str, severity: str = "error", raw: bool = False
) -> Finding:
    stored = None
    if raw:
        stored = RawResource.objects.create(
            run=run,
            resource_type="Patient",
            resource_key=key,
            patient_key=patient,
            payload=json.dumps(PATIENT),
            expires_at=timezone.now() + timedelta(days=14),
        )
    return Finding.objects.create(
        run=run,
        severity=severity,
        rule=rule,
        resource_type=path.split(".")[0],
        path=path,
        location="extension[0]" if rule == "extensions.unknown" else "",
        message=f"{rule} problem",
        patient_key=patient,
        resource_key=key,
        fingerprint=review.fingerprint(rule, path, path.split(".")[0], key),
        raw=stored,
    )


# --- the queue ----------------------------------------------------------------------------------------


def test_the_queue_lists_failed_runs_across_tenants_and_filters_them(
    tenant_a: Any, tenant_b: Any, engineer: Any, it_a: Any, it_b: Any
) -> None:
    old = validate_run(tenant_a, vendor="epic", finished_at=timezone.now() - timedelta(days=10))
    add_finding(old, "structure.invalid", "Observation.valueQuantity.value", patient="p1", key="r1")
    recent = validate_run(tenant_b, vendor="meditech")
    add_finding(recent, "extensions.unknown", "Patient.extension", patient="p2", key="r2", severity="warning")
    validate_run(tenant_a, vendor="epic", status="passed")  # passed runs are not in the queue
    StepRun.objects.create(onboarding=old.onboarding, step="configure", attempt=1, status="failed")  # nor other steps

    client = client_for(engineer)
    url = reverse("review_queue")

    def listed(**params: str) -> set[str]:
        page = client.get(url, params).content.decode()
        return {str(run.code) for run in (old, recent) if str(run.code) in page}

    assert listed() == {str(old.code), str(recent.code)}
    assert listed(tenant=str(tenant_a.code)) == {str(old.code)}
    assert listed(vendor="meditech") == {str(recent.code)}
    assert listed(rule="structure.invalid") == {str(old.code)}
    assert listed(severity="warning") == {str(recent.code)}
    assert listed(since=(timezone.localdate() - timedelta(days=2)).isoformat()) == {str(recent.code)}
    assert listed(until=(timezone.localdate() - timedelta(days=5)).isoformat()) == {str(old.code)}
    assert listed(severity="nonsense", vendor="nobody") == {str(old.code), str(recent.code)}  # bad filters ignored
    htmx = client.get(url, {"vendor": "epic"}, headers={"HX-Request": "true"}).content.decode()
    assert str(old.code) in htmx and "<html" not in htmx

    # Hospital IT see their own hospital's failed runs only.
    assert str(old.code) in client_for(it_a).get(url).content.decode()
    assert str(old.code) not in client_for(it_b).get(url).content.decode()
    assert str(recent.code) in client_for(it_b).get(url).content.decode()


# --- the run page ------------------------------------------------------------------------------------


def test_the_run_page_groups_findings_with_counts_and_patient_share(tenant_a: Any, engineer: Any, it_a: Any) -> None:
    run = validate_run(tenant_a)
    for i in range(30):
        add_finding(run, "references.unresolved", "Observation.encounter", patient=f"p{i % 3}", key=f"o{i}")
    add_finding(run, "extensions.unknown", "Patient.extension", patient="p9", key="pat9", severity="warning")
    groups = review.grouped_findings(run)
    assert [(g.rule, g.count, g.patients, g.share) for g in groups] == [
        ("references.unresolved", 30, 3, 75.0),
        ("extensions.unknown", 1, 1, 25.0),
    ]
    for user in (engineer, it_a):
        page = client_for(user).get(reverse("review_run", kwargs={"code": run.code})).content.decode()
        assert page.count('data-testid="group"') == 2  # grouped: two rows, not 31
        assert "3 (75.0%)" in page
    examples = client_for(it_a).get(
        reverse("review_group", kwargs={"code": run.code}),
        {"rule": "references.unresolved", "path": "Observation.encounter"},
        headers={"HX-Request": "true"},
    )
    assert examples.content.decode().count('data-testid="example"') == review.EXAMPLES_PER_GROUP
    assert "raw-link" not in examples.content.decode()  # hospital IT never get a way to the raw JSON


def test_raw_json_is_for_engineers_only_and_every_view_is_audited(
    tenant_a: Any, engineer: Any, it_a: Any, it_b: Any, cs_user: Any
) -> None:
    run = validate_run(tenant_a)
    finding = add_finding(run, "extensions.unknown", "Patient.extension", patient="p1", key="k1", raw=True)
    url = reverse("review_raw", kwargs={"code": finding.code})
    client = client_for(engineer)
    # Without a fresh password the engineer is sent to confirm it first, and nothing is shown.
    before = client.get(url)
    assert before.status_code == 302 and before["Location"].startswith(reverse("reauthenticate"))
    assert not AuditEvent.objects.filter(action="phi.view").exists()
    reauthenticated(client)
    for expected_events in (1, 2):
        response = client.get(url)
        assert response.status_code == 200
        assert "no-store" in response["Cache-Control"]
        events = AuditEvent.objects.filter(action="phi.view")
        assert events.count() == expected_events
    event = events.first()
    assert event is not None and event.actor == engineer and event.tenant == tenant_a
    assert event.detail == {
        "run": str(run.code),
        "finding": str(finding.code),
        "resource_type": "Patient",
        "rule": "extensions.unknown",
    }
    assert "Quarnstrom" not in json.dumps(event.detail) and "MRN-777123" not in json.dumps(event.detail)
    page = response.content.decode()
    marked = [part.split("</mark>")[0] for part in page.split('<mark data-testid="highlight">')[1:]]
    assert [m.strip() for m in marked] == [
        "{",
        "&quot;url&quot;: &quot;http://example.org/pharmacy&quot;,",
        "&quot;valueString&quot;: &quot;Main St&quot;",
        "}",
    ]
    assert "Quarnstrom" in page  # the engineer does see the resource

    assert client_for(it_a).get(url).status_code == 403
    assert client_for(cs_user).get(url).status_code == 403
    assert client_for(it_b).get(url).status_code == 404
    assert AuditEvent.objects.filter(action="phi.view").count() == 2  # refusals saw nothing
    RawResource.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(url).status_code == 404  # past retention: gone, even before the purge runs


def test_highlighting_marks_exactly_the_element() -> None:
    lines = review.highlighted_json(
        {"resourceType": "Observation", "code": {"coding": [{"system": "a", "code": "b"}, {"system": "c"}]}},
        "code.coding[1].system",
    )
    assert [line.text.strip() for line in lines if line.highlighted] == ['"system": "c"']
    nothing = review.highlighted_json({"resourceType": "Patient"}, "birthDate")
    assert not any(line.highlighted for line in nothing)


def test_waivers_mark_findings_and_need_a_reason_and_an_expiry(tenant_a: Any, engineer: Any, cs_user: Any) -> None:
    run = validate_run(tenant_a)
    add_finding(run, "structure.invalid", "Observation.valueQuantity.value", patient="p1", key="o1")
    url = reverse("review_waive", kwargs={"code": run.code})
    base = {"rule": "structure.invalid", "path": "Observation.valueQuantity.value"}
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    client = client_for(engineer)
    for bad, says in (
        ({"reason": "ok", "expires_on": tomorrow}, "Say why"),
        ({"reason": "The lab sends text values", "expires_on": timezone.localdate().isoformat()}, "after today"),
        ({"reason": "The lab sends text values", "expires_on": "2099-01-01"}, "at most a year"),
        ({"reason": "The lab sends text values", "expires_on": "soon"}, "expires"),
    ):
        page = client.post(url, {**base, **bad}, follow=True).content.decode()
        assert says in page
    assert not Waiver.objects.exists()
    assert (
        client_for(cs_user)
        .post(url, {**base, "reason": "The lab sends text values", "expires_on": tomorrow})
        .status_code
        == 403
    )

    client.post(url, {**base, "reason": "The lab sends text values", "expires_on": tomorrow})
    waiver = Waiver.objects.get()
    assert (waiver.tenant, waiver.approver, waiver.reason) == (tenant_a, engineer, "The lab sends text values")
    assert AuditEvent.objects.filter(action="waiver.create", tenant=tenant_a, actor=engineer).count() == 1
    (group,) = review.grouped_findings(run)
    assert group.waived
    page = client.get(reverse("review_run", kwargs={"code": run.code})).content.decode()
    assert 'data-testid="waived"' in page and "waived until" in page
    # Expired waivers no longer apply.
    Waiver.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    assert not review.grouped_findings(run)[0].waived


def test_the_diff_shows_new_fixed_and_unchanged(tenant_a: Any, engineer: Any) -> None:
    first = validate_run(tenant_a)
    connection = first.onboarding.connection
    add_finding(first, "codes.unmapped-local", "Observation.code", patient="p1", key="o1")
    add_finding(first, "codes.unmapped-local", "Observation.code", patient="p2", key="o2")
    add_finding(first, "extensions.unknown", "Patient.extension", patient="p1", key="pa1", severity="warning")
    second = validate_run(tenant_a, connection=connection, attempt=2)
    add_finding(second, "extensions.unknown", "Patient.extension", patient="p1", key="pa1", severity="warning")
    add_finding(second, "dates.implausible", "Patient.birthDate", patient="p3", key="pa3", severity="warning")
    diff = review.diff_against_previous(second)
    assert diff.previous == first
    assert diff.fixed == [("codes.unmapped-local", "Observation.code", 2)]
    assert diff.new == [("dates.implausible", "Patient.birthDate", 1)]
    assert diff.unchanged == 1
    page = client_for(engineer).get(reverse("review_run", kwargs={"code": second.code})).content.decode()
    assert 'data-testid="diff-fixed">2<' in page and 'data-testid="diff-new">1<' in page
    assert review.diff_against_previous(first).previous is None


def test_exports_hold_findings_marked_waived_and_no_phi(tenant_a: Any, engineer: Any, it_a: Any) -> None:
    run = validate_run(tenant_a)
    add_finding(run, "extensions.unknown", "Patient.extension", patient="p1", key="k1", raw=True, severity="warning")
    add_finding(run, "structure.invalid", "Patient.gender", patient="p1", key="k1")
    review.create_waiver(
        user=engineer,
        tenant=tenant_a,
        rule="structure.invalid",
        path="Patient.gender",
        reason="Known interface quirk",
        expires_on=timezone.localdate() + timedelta(days=3),
    )
    for user in (engineer, it_a):
        client = client_for(user)
        response = client.get(reverse("review_export_csv", kwargs={"code": run.code}))
        body = b"".join(response.streaming_content).decode()
        rows = list(csv.DictReader(io.StringIO(body)))
        assert [(r["rule"], r["waived"]) for r in rows] == [
            ("extensions.unknown", "False"),
            ("structure.invalid", "True"),
        ]
        document = client.get(reverse("review_export_json", kwargs={"code": run.code})).json()
        assert document["run"] == str(run.code) and len(document["findings"]) == 2
        for text in (body, json.dumps(document)):
            assert "Quarnstrom" not in text and "MRN-777123" not in text and "Eliza" not in text
    assert AuditEvent.objects.filter(action="findings.export").count() == 4


# --- mapping pages ----------------------------------------------------------------------------------


@pytest.fixture
def mapped(tenant_a: Any) -> Mapping:
    """A connection whose map step passed, with one unmapped local code and one undecided extension."""
    connection = ConnectionFactory(tenant=tenant_a)
    onboarding = services.ensure_onboarding(connection)
    run = StepRun.objects.create(onboarding=onboarding, step="map", attempt=1, status="passed")
    profile = {
        "elements": [
            {
                "element": "Observation.code",
                "local_codes": [{"system": "urn:local", "code": "GLU", "display": "GLUCOSE", "count": 4}],
            }
        ],
        "extensions": [{"url": "http://example.org/pharmacy", "known": False}],
        "suggested_mrn_system": "http://hospital.example.org/mrn",
    }
    return mappings.record_map_result(onboarding=onboarding, profile=profile, run=run)


def test_inline_edit_over_htmx_returns_the_row_and_the_new_version(mapped: Mapping, cs_user: Any, it_a: Any) -> None:
    connection = mapped.onboarding.connection
    url = reverse("mapping_code", kwargs={"code": connection.code})
    key = "Observation.code|urn:local|GLU"
    client = client_for(cs_user)
    form = client.get(url, {"key": key, "edit": "1"}, headers={"HX-Request": "true"}).content.decode()
    assert 'data-testid="code-edit"' in form and "<html" not in form
    wrong = client.post(
        url,
        {"key": key, "version": mapped.version, "target_system": "LOINC", "target_code": "GLU", "target_display": "x"},
        headers={"HX-Request": "true"},
    ).content.decode()
    assert 'data-testid="row-error"' in wrong and "not a LOINC code" in wrong
    assert Mapping.objects.count() == 1
    saved = client.post(
        url,
        {
            "key": key,
            "version": mapped.version,
            "target_system": "LOINC",
            "target_code": "2339-0",
            "target_display": "Glucose",
        },
        headers={"HX-Request": "true"},
    ).content.decode()
    assert 'data-testid="code-row"' in saved and "2339-0" in saved
    assert 'hx-swap-oob="true"' in saved and 'data-testid="mapping-version">2<' in saved
    assert mappings.latest_mapping(mapped.onboarding).codes[0]["target_code"] == "2339-0"  # type: ignore[union-attr]
    # Hospital IT see the row but not an edit form, and may not post.
    assert 'data-testid="code-edit"' not in client_for(it_a).get(url, {"key": key, "edit": "1"}).content.decode()
    assert (
        client_for(it_a)
        .post(url, {"key": key, "version": 2, "target_system": "", "target_code": "", "target_display": ""})
        .status_code
        == 403
    )


def test_import_page_lists_row_errors_and_saves_nothing(mapped: Mapping, cs_user: Any) -> None:
    connection = mapped.onboarding.connection
    client = client_for(cs_user)
    exported = client.get(reverse("mapping_export_csv", kwargs={"code": connection.code})).content.decode()
    rows = list(csv.reader(io.StringIO(exported)))
    rows[1][5:8] = ["LOINC", "12", "Glucose"]
    bad = io.StringIO()
    csv.writer(bad).writerows(rows)
    upload = io.BytesIO(bad.getvalue().encode())
    upload.name = "mapping.csv"
    response = client.post(
        reverse("mapping_import_csv", kwargs={"code": connection.code}), {"version": 1, "file": upload}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-testid="import-errors"' in page and "Line 2:" in page and "not a LOINC code" in page
    assert Mapping.objects.count() == 1

    rows[1][5:8] = ["LOINC", "2339-0", "Glucose"]
    good = io.StringIO()
    csv.writer(good).writerows(rows)
    upload = io.BytesIO(good.getvalue().encode())
    upload.name = "mapping.csv"
    response = client.post(
        reverse("mapping_import_csv", kwargs={"code": connection.code}), {"version": 1, "file": upload}
    )
    assert response.status_code == 302
    assert mappings.latest_mapping(mapped.onboarding).version == 2  # type: ignore[union-attr]


def test_hospital_it_signs_off_on_the_page(mapped: Mapping, cs_user: Any, it_a: Any, it_b: Any) -> None:
    connection = mapped.onboarding.connection
    mapped = mappings.update_code(
        user=cs_user,
        mapping=mapped,
        key="Observation.code|urn:local|GLU",
        target_system="LOINC",
        target_code="2339-0",
        target_display="Glucose [Mass/volume] in Blood",
    )
    page_url = reverse("mapping", kwargs={"code": connection.code})
    assert 'data-testid="sign-off"' not in client_for(cs_user).get(page_url).content.decode()
    assert 'data-testid="sign-off"' in client_for(it_a).get(page_url).content.decode()
    sign = reverse("mapping_sign_off", kwargs={"code": connection.code})
    data = {"version": mapped.version, "content_hash": mapped.content_hash, "comment": "Lab lead agreed"}
    assert client_for(cs_user).post(sign, data).status_code == 403
    assert client_for(it_b).post(sign, data).status_code == 404
    page = client_for(it_a).post(sign, data, follow=True).content.decode()
    assert 'data-testid="signed-off"' in page and "Lab lead agreed" in page
    assert mappings.signed_mapping(mapped.onboarding) == mapped


def test_another_tenants_hospital_it_gets_404_everywhere(mapped: Mapping, tenant_a: Any, it_b: Any) -> None:
    run = validate_run(tenant_a, connection=mapped.onboarding.connection)
    finding = add_finding(run, "extensions.unknown", "Patient.extension", patient="p1", key="k1", raw=True)
    connection = mapped.onboarding.connection
    client = client_for(it_b)
    for name, code in (
        ("mapping", connection.code),
        ("mapping_export_csv", connection.code),
        ("mapping_concept_map", connection.code),
        ("validation_policy", tenant_a.code),
        ("review_run", run.code),
        ("review_export_csv", run.code),
        ("review_export_json", run.code),
        ("review_raw", finding.code),
    ):
        assert client.get(reverse(name, kwargs={"code": code})).status_code == 404, name
    assert client.post(reverse("review_waive", kwargs={"code": run.code}), {}).status_code == 404
    assert client.post(reverse("start_step", kwargs={"code": connection.code, "step": "validate"})).status_code == 404
    other = TenantFactory()
    assert str(other.code) not in client.get(reverse("review_queue")).content.decode()


def test_hospital_it_cannot_create_rows_by_pressing_start_and_reads_write_nothing(
    tenant_a: Any, tenant_b: Any, it_a: Any
) -> None:
    from onboarding.models import Onboarding, ValidationPolicy
    from tests.factories import ConnectionFactory

    conn = ConnectionFactory(tenant=tenant_a)
    client = client_for(it_a)
    assert client.post(reverse("start_step", kwargs={"code": conn.code, "step": "configure"})).status_code == 403
    assert not Onboarding.objects.exists()
    assert client.get(reverse("validation_policy", kwargs={"code": tenant_a.code})).status_code in (200, 403)
    assert not ValidationPolicy.objects.exists()


def test_the_queue_rule_filter_lists_only_rules_of_visible_runs(tenant_a: Any, tenant_b: Any, it_b: Any) -> None:
    run = validate_run(tenant_a)
    add_finding(run, "extensions.unknown", "Patient.extension", patient="p1", key="k1")
    page = client_for(it_b).get(reverse("review_queue")).content.decode()
    assert "extensions.unknown" not in page


@pytest.mark.parametrize(
    "data",
    [
        b"element,system\rcode,Observation.code\r",  # old-Mac line endings
        b"element," + b"x" * 200_000 + b"\n",  # a header cell beyond the csv module's field limit
    ],
)
def test_an_unreadable_csv_header_is_a_file_error_not_a_crash(data: bytes) -> None:
    from onboarding.mapping.services import ImportResult, _parse_csv

    result = ImportResult()
    assert _parse_csv(data, result) == []
    assert result.errors and result.errors[0][0] == 1
