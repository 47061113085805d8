"""The whole onboarding through the REST API alone, with API tokens, as an integrator would drive it.

Customer success (token with its second factor) creates a hospital and invites its approver, who
accepts the emailed link and takes a token of their own; customer success adds a connection to the
defects sandbox, sets the validation policy, runs configure, test and map on a real Celery worker,
edits the mapping (single codes, a CSV import, extensions, the MRN system), downloads the ConceptMap
and requests the sign-off through the gates API; hospital IT approve it there; validate fails on the
planted defects; an engineer reads the findings grouped and waives the error groups; the re-run
passes; the diff and the evidence pack say what happened. No page, session or ORM write in between:
the database is only read to check what the API said.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from connections.sandbox.defects import LOCAL_LAB_CODES
from onboarding.models import Finding, Mapping, StepRun
from portal.models import AuditEvent
from tests.conftest import authenticator_for
from tests.test_api_tokens import api_with, obtain
from tests.test_people_and_gates_browser import wait_for_email
from tests.test_sessions import totp_code

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

APPROVER = "sam.approver@northwind.example.org"
APPROVER_PASSWORD = "Northwind-approver-2026-api"
LOINC_OF = {local: (loinc, display.title()) for loinc, (local, display) in LOCAL_LAB_CODES.items()}
FINAL = ("passed", "failed", "cancelled")


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.content[:2000])
    return response.json() if response["Content-Type"].startswith("application/json") else response


def run_step(cs: APIClient, connection: str, step: str) -> dict[str, Any]:
    """Start a step through the API and poll the run until the worker finished it."""
    run = ok(cs.post(f"/api/v1/connections/{connection}/steps/{step}/start/"), 202)
    deadline = time.monotonic() + 120
    while run["status"] not in FINAL:
        assert time.monotonic() < deadline, f"{step} still {run['status']}: {run['progress_message']}"
        time.sleep(0.3)
        run = ok(cs.get(f"/api/v1/runs/{run['code']}/"))
    return dict(run)


def all_pages(client: APIClient, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        page = ok(client.get(next_url))
        items += page["results"]
        next_url = page["next"]
    return items


def test_the_whole_onboarding_through_the_api_with_tokens(
    celery_worker_process: Any,
    worker_email_dir: Path,
    sandboxes: dict[str, Any],
    sandbox_allowlist: str,
    clean_faults: None,
    cs_user: Any,
    engineer: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = sandboxes["defects"]
    cs = api_with(obtain(cs_user.username, otp_token=totp_code(authenticator_for(cs_user))).json()["token"])
    eng = api_with(obtain(engineer.username, otp_token=totp_code(authenticator_for(engineer))).json()["token"])

    # A hospital, its details updated, and its approver invited by email.
    tenant = ok(cs.post("/api/v1/tenants/", {"name": "Northwind Children's", "timezone": "America/Chicago"}), 201)
    t = tenant["code"]
    updated = ok(
        cs.patch(f"/api/v1/tenants/{t}/", {"contact_name": "Dana Lab", "contact_email": "lab@northwind.example.org"})
    )
    assert updated["contact_name"] == "Dana Lab"
    ok(cs.post("/api/v1/invitations/", {"tenant": t, "email": APPROVER, "role": "approver"}), 201)
    email = wait_for_email(worker_email_dir, APPROVER)
    link = re.search(r"/invitations/accept/([^\s/]+)/", email)
    assert link is not None, email
    accepted = ok(
        APIClient().post(
            "/api/v1/invitations/accept/",
            {"token": link.group(1), "full_name": "Sam Approver", "password": APPROVER_PASSWORD},
            format="json",
        ),
        201,
    )
    it = api_with(ok(obtain(accepted["username"], password=APPROVER_PASSWORD))["token"])

    # The policy: a sample big enough to show the planted defects, and no error tolerated.
    policy = ok(
        cs.patch(
            f"/api/v1/tenants/{t}/validation-policy/",
            {"map_sample_size": 20, "validate_sample_size": 20, "max_error_patient_pct": 0},
        )
    )
    assert (policy["map_sample_size"], policy["validate_sample_size"], policy["saved"]) == (20, 20, True)
    assert it.patch(f"/api/v1/tenants/{t}/validation-policy/", {"map_sample_size": 5}).status_code == 403

    connection = ok(
        cs.post(
            "/api/v1/connections/",
            {"tenant": t, "name": "Main FHIR endpoint", "vendor": "generic", "base_url": sandbox.base_url},
        ),
        201,
    )
    c = connection["code"]
    for step in ("configure", "test"):
        run = run_step(cs, c, step)
        assert run["status"] == "passed", (step, run["error"])
    mapped = run_step(cs, c, "map")
    assert mapped["status"] == "failed" and mapped["error"]["kind"] == "mapping_incomplete", mapped["error"]

    # The mapping: hospital IT read it and may not change it.
    mapping = ok(it.get(f"/api/v1/connections/{c}/mapping/"))
    assert mapping["coverage"]["complete"] is False and mapping["codes"], "the sandbox plants local lab codes"
    assert it.post(f"/api/v1/connections/{c}/mapping/mrn-system/", {"version": 1, "system": "x"}).status_code == 403
    first_version = mapping["version"]
    rows = mapping["codes"]
    half = len(rows) // 2 or 1
    # Half the codes one by one, each write naming the version the previous answer gave.
    for row in rows[:half]:
        loinc, display = LOINC_OF[row["code"]]
        answer = ok(
            cs.post(
                f"/api/v1/connections/{c}/mapping/codes/",
                {
                    "version": mapping["version"],
                    "key": row["key"],
                    "target_system": "LOINC",
                    "target_code": loinc,
                    "target_display": display,
                },
            )
        )
        assert answer["changed"] is True
        mapping = answer["mapping"]
    # A client still holding the first version is refused for a code someone mapped since.
    stale = cs.post(
        f"/api/v1/connections/{c}/mapping/codes/",
        {
            "version": first_version,
            "key": rows[0]["key"],
            "target_system": "LOINC",
            "target_code": "718-7",
            "target_display": "Hemoglobin",
        },
    )
    assert stale.status_code == 409 and stale.json()["latest_version"] == mapping["version"]
    # The rest by CSV: export, fill in, import.
    exported = cs.get(f"/api/v1/connections/{c}/mapping/csv/", HTTP_ACCEPT="text/csv")
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.content.decode())))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]))
    writer.writeheader()
    for line in table:
        if not line["target_code"]:
            loinc, display = LOINC_OF[line["source_code"]]
            line.update(target_system="LOINC", target_code=loinc, target_display=display)
        writer.writerow(line)
    upload = SimpleUploadedFile("mapping.csv", out.getvalue().encode(), content_type="text/csv")
    imported = ok(
        cs.post(
            f"/api/v1/connections/{c}/mapping/csv/", {"version": mapping["version"], "file": upload}, format="multipart"
        )
    )
    assert imported["changed_codes"] == len(rows) - half
    mapping = imported["mapping"]
    assert mapping["source"] == "csv_import" and mapping["coverage"]["unmapped"] == 0
    # Extensions decided; the MRN system chosen from what the profile found.
    assert mapping["extensions"], "the sandbox plants an unknown extension"
    for extension in mapping["extensions"]:
        mapping = ok(
            cs.post(
                f"/api/v1/connections/{c}/mapping/extensions/",
                {"version": mapping["version"], "url": extension["url"], "handling": "ignore"},
            )
        )["mapping"]
    systems = [found["system"] for found in mapping["identifier_systems"]]
    assert mapping["mrn_system"] in systems, (mapping["mrn_system"], systems)
    kept = ok(
        cs.post(
            f"/api/v1/connections/{c}/mapping/mrn-system/",
            {"version": mapping["version"], "system": mapping["mrn_system"]},
        )
    )
    assert kept["changed"] is False and "stays version" in kept["detail"]
    assert mapping["coverage"] == {
        "complete": True,
        "mrn_system_set": True,
        "unmapped": 0,
        "undecided_extensions": [],
        "summary": "Every required element is covered.",
    }
    concept = cs.get(f"/api/v1/connections/{c}/mapping/conceptmap/")
    assert concept.status_code == 200 and b'"resourceType": "ConceptMap"' in concept.content
    assert b'"status": "draft"' in concept.content

    # Sign-off through the gates API: customer success ask, validate waits, hospital IT approve.
    (gate,) = [g for g in ok(cs.get(f"/api/v1/connections/{c}/gates/")) if g["gate"] == "mapping_sign_off"]
    assert gate["requestable"] is True and gate["artifact"]["version"] == mapping["version"]
    approval = ok(
        cs.post(
            f"/api/v1/connections/{c}/gates/mapping_sign_off/request/", {"note": "Lab codes from your lead's list."}
        ),
        201,
    )
    refused = cs.post(f"/api/v1/connections/{c}/steps/validate/start/")
    assert refused.status_code == 409 and "sign-off" in refused.json()["detail"].lower()
    waiting = ok(it.get("/api/v1/approvals/?state=pending"))["results"]
    assert [a["code"] for a in waiting] == [approval["code"]]
    decided = ok(
        it.post(
            f"/api/v1/approvals/{approval['code']}/decide/",
            {"decision": "approved", "comment": "Matches our lab list.", "artifact_hash": mapping["content_hash"]},
        )
    )
    assert decided["state"] == "approved"
    assert ok(cs.get(f"/api/v1/connections/{c}/mapping/"))["sign_off"]["signed"] is True

    # Validate: the planted defects fail it.
    first = run_step(cs, c, "validate")
    assert first["status"] == "failed" and first["error"]["kind"] == "validation_failed", first["error"]
    queue = ok(eng.get(f"/api/v1/review/queue/?tenant={t}"))["results"]
    assert [r["code"] for r in queue] == [first["code"]] and queue[0]["errors"] > 0
    groups = all_pages(eng, f"/api/v1/runs/{first['code']}/findings/?page_size=3")
    stored = Finding.objects.filter(run__code=first["code"])
    assert sum(g["count"] for g in groups) == stored.count()
    assert (
        len({(g["rule"], g["path"]) for g in groups}) == len(groups) == stored.values("rule", "path").distinct().count()
    )
    errors = [g for g in groups if g["severity"] == "error"]
    assert errors and groups[: len(errors)] == errors  # errors first, as the review page shows them
    examples = ok(
        eng.get(
            f"/api/v1/runs/{first['code']}/findings/examples/", {"rule": errors[0]["rule"], "path": errors[0]["path"]}
        )
    )
    assert examples and all(e["rule"] == errors[0]["rule"] for e in examples)
    assert it.get(f"/api/v1/runs/{first['code']}/findings/").status_code == 200  # hospital IT read the review
    assert it.post("/api/v1/waivers/", {"run": first["code"]}).status_code == 403

    # An engineer waives every error group; the re-run passes on the waivers.
    waivers = [
        ok(
            eng.post(
                "/api/v1/waivers/",
                {
                    "run": first["code"],
                    "rule": group["rule"],
                    "path": group["path"],
                    "reason": "Known defects of the sandbox hospital, accepted for the pilot.",
                    "expires_on": (timezone.localdate() + timedelta(days=90)).isoformat(),
                },
            ),
            201,
        )
        for group in errors
    ]
    rerun = run_step(cs, c, "validate")
    assert rerun["status"] == "passed", rerun["error"]
    assert rerun["result"]["waived"] > 0
    regrouped = all_pages(it, f"/api/v1/runs/{rerun['code']}/findings/?page_size=50")
    assert all(g["waived"] for g in regrouped if g["severity"] == "error")

    # The diff: the same patients, the same findings; nothing new, nothing fixed.
    diff = ok(it.get(f"/api/v1/runs/{rerun['code']}/diff/"))
    assert diff["previous"]["code"] == first["code"]
    assert (diff["new"], diff["fixed"], diff["not_compared"]) == ([], [], [])
    assert diff["unchanged"] == Finding.objects.filter(run__code=rerun["code"]).values("fingerprint").distinct().count()
    assert diff["compared_patients"] == rerun["result"]["patients"] == 20
    exported_findings = ok(it.get(f"/api/v1/runs/{rerun['code']}/export/"))
    assert len(exported_findings["findings"]) == Finding.objects.filter(run__code=rerun["code"]).count()

    # One waiver revoked: it stays on the record.
    revoked = ok(eng.post(f"/api/v1/waivers/{waivers[0]['code']}/revoke/", {"reason": "The feed was fixed."}))
    assert revoked["in_force"] is False

    # The evidence pack tells the story: each attempt, the approval of the exact version, the waivers.
    pack = ok(it.get(f"/api/v1/onboardings/{rerun['onboarding']}/evidence/"))
    attempts = [(a["step"], a["attempt"], a["status"]) for a in pack["timeline"]["attempts"]]
    assert attempts == [
        ("Configure", 1, "passed"),
        ("Test", 1, "passed"),
        ("Map", 1, "failed"),
        ("Validate", 1, "failed"),
        ("Validate", 2, "passed"),
    ]
    (sign_off,) = [g for g in pack["gates"] if g.get("key") == "mapping_sign_off"]
    (approved,) = sign_off["approvals"]
    assert (approved["state"], approved["decided_by"], approved["artifact"]["version"]) == (
        "approved",
        accepted["username"],
        mapping["version"],
    )
    assert approved["artifact"]["content_sha256"] == mapping["content_hash"]
    assert pack["validation"]["run"]["code"] == rerun["code"]
    assert len(pack["validation"]["waivers"]) == len(waivers)
    assert sum(1 for w in pack["validation"]["waivers"] if w["revoked_at"]) == 1
    assert Mapping.objects.filter(onboarding__connection__code=c).count() == mapping["version"]
    # Every step ran in the worker process, not in this one.
    workers = set(StepRun.objects.filter(onboarding__connection__code=c).values_list("worker", flat=True))
    assert workers and all(w and not w.endswith(f":{os.getpid()}") for w in workers), workers
    with capsys.disabled():
        print(
            f"\nAPI flow: {len(rows)} local codes mapped ({half} one by one, {len(rows) - half} by CSV), "
            f"mapping v{mapping['version']} signed; validate #1 {sum(g['count'] for g in groups)} findings in "
            f"{len(groups)} groups ({len(errors)} error groups waived); #2 passed with {rerun['result']['waived']} "
            f"waived, diff {diff['unchanged']} unchanged on {diff['compared_patients']} patients"
        )
    # Every change above is on the audit trail, by the token holders.
    actors = set(AuditEvent.objects.filter(tenant__code=t).values_list("actor_label", flat=True))
    assert {cs_user.username, engineer.username, accepted["username"]} <= actors
