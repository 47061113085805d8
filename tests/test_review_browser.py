"""In Chromium: an engineer reviews a failed validation run — queue, rule group, highlighted raw JSON,
a waiver, a re-run whose diff shows what was fixed — and hospital IT of another tenant get 404."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from onboarding.mapping import services as mappings
from onboarding.models import RunStatus, StepRun, Waiver
from portal.models import AuditEvent
from tests.browser import assert_accessible, log_in, reauthenticate
from tests.factories import DEFAULT_PASSWORD, sign_mapping_off
from tests.test_map_step import ready_connection, run_on_worker, set_sizes, signed_off_mapping
from tests.test_mapping_browser import watch

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("BROWSER_SCREENSHOTS", "")


def test_engineer_drills_waives_reruns_and_sees_the_fix_and_other_tenants_get_404(
    browser: Browser,
    live_server: Any,
    celery_worker_process: Any,
    sandboxes: dict[str, Any],
    sandbox_allowlist: str,
    clean_faults: None,
    tenant_a: Any,
    cs_user: Any,
    it_a: Any,
    it_b: Any,
    engineer: Any,
) -> None:
    hospital = sandboxes["defects"]
    set_sizes(tenant_a, map_size=len(hospital.patient_ids), validate_size=len(hospital.patient_ids))
    connection = ready_connection(tenant_a, cs_user, hospital, runner=run_on_worker, name="Alpha FHIR")
    signed_off_mapping(cs_user, it_a, connection, runner=run_on_worker)
    failed = run_on_worker(connection, "validate", cs_user)
    assert failed.status == RunStatus.FAILED
    # Between the runs the hospital's team decides the unknown extension is harmless: the fix.
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None
    (url,) = mapping.extension_handling
    mapping = mappings.set_extension_handling(user=cs_user, mapping=mapping, url=url, handling="ignore")
    sign_mapping_off(cs=cs_user, it=it_a, mapping=mapping)

    page = browser.new_page()
    problems = watch(page)
    log_in(page, live_server.url, engineer.username, DEFAULT_PASSWORD)
    page.get_by_test_id("nav-review").click()
    expect(page.locator("h1")).to_have_text("Failed validation runs")
    queue_row = page.locator(f"tr[data-run='{failed.code}']")
    expect(queue_row).to_contain_text("Alpha FHIR")
    assert_accessible(page)
    page.select_option("select[name=rule]", "references.unresolved")
    expect(page.locator(f"tr[data-run='{failed.code}']")).to_be_visible()
    page.locator(f"tr[data-run='{failed.code}']").get_by_test_id("review-link").click()
    expect(page.get_by_test_id("review-status")).to_have_text("Failed")
    assert_accessible(page)

    # Drill from a rule group to examples, then to the resource with the element highlighted.
    group = page.locator("tbody[data-rule='references.unresolved'][data-path='Observation.encounter']")
    expect(group).to_contain_text("does not point at an Encounter")
    group.get_by_test_id("show-examples").click()
    examples = group.get_by_test_id("example")
    expect(examples.first).to_be_visible()
    assert_accessible(page, context="tbody[data-rule='references.unresolved'][data-path='Observation.encounter']")
    views_before = AuditEvent.objects.filter(action="phi.view").count()
    run_page = page.url
    examples.first.get_by_test_id("raw-link").click()
    expect(page.locator("h1")).to_have_text("Confirm it is you")
    assert_accessible(page)
    assert AuditEvent.objects.filter(action="phi.view", actor=engineer).count() == views_before
    reauthenticate(page, engineer.username, DEFAULT_PASSWORD)
    expect(page.locator("h1")).to_contain_text("Raw")
    expect(page.get_by_test_id("highlight").first).to_contain_text('"encounter"')
    expect(page.get_by_test_id("raw-json")).to_contain_text('"resourceType": "')
    assert_accessible(page)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/review-raw.png", full_page=True)
    assert AuditEvent.objects.filter(action="phi.view", actor=engineer).count() == views_before + 1
    page.goto(run_page)

    # Waive the structural finding (the lab sends text values), with a reason and an expiry.
    structure = page.locator("tbody[data-rule='structure.invalid']")
    structure.get_by_test_id("waive-toggle").click()
    structure.get_by_test_id("waive-reason").fill("The lab interface sends text values until its upgrade")
    assert_accessible(page, context="tbody[data-rule='structure.invalid']")
    structure.get_by_test_id("waive-submit").click()
    expect(page.locator("tbody[data-rule='structure.invalid'] [data-testid=waived]")).to_contain_text("waived until")
    assert Waiver.objects.filter(tenant=tenant_a, rule="structure.invalid", approver=engineer).count() == 1

    # Re-run, on a real worker; the new run's diff shows the extension findings fixed.
    page.get_by_test_id("rerun-validate").click()
    expect(page.get_by_test_id("run-status")).to_have_text(re.compile("Passed|Failed"), timeout=60_000)
    assert_accessible(page)
    page.get_by_test_id("open-review").click()
    expect(page.get_by_test_id("diff")).to_contain_text("attempt 1")
    fixed = page.get_by_test_id("diff-fixed-list")
    expect(fixed).to_contain_text("extensions.unknown")
    second = StepRun.objects.get(onboarding=connection.onboarding, step="validate", attempt=2)
    gone = failed.findings.filter(rule="extensions.unknown").count()
    assert gone > 0 and not second.findings.filter(rule="extensions.unknown").exists()
    expect(page.get_by_test_id("diff-fixed")).to_have_text(str(gone))
    assert_accessible(page)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/review-rerun-diff.png", full_page=True)
    expect(page.locator("tbody[data-rule='structure.invalid'] [data-testid=waived]")).to_be_visible()
    # The waiver can be revoked from the same page: the group counts again from the next run.
    page.locator("tbody[data-rule='structure.invalid']").get_by_test_id("unwaive-submit").click()
    expect(page.locator(".messages")).to_contain_text("Revoked the waiver of structure.invalid")
    expect(page.locator("tbody[data-rule='structure.invalid'] [data-testid=waived]")).to_have_count(0)
    assert_accessible(page)
    assert Waiver.objects.get(tenant=tenant_a, rule="structure.invalid").revoked_at is not None
    assert problems == []
    page.close()

    # Hospital IT of another tenant: 404 on every page of it, and nothing in their queue.
    finding = failed.findings.exclude(raw=None).first()
    assert finding is not None
    other = browser.new_page()
    log_in(other, live_server.url, it_b.username, DEFAULT_PASSWORD)
    for path in (
        f"/review/runs/{failed.code}/",
        f"/review/runs/{second.code}/",
        f"/review/runs/{failed.code}/group/?rule=references.unresolved&path=Observation.encounter",
        f"/review/runs/{failed.code}/export.csv",
        f"/review/runs/{failed.code}/export.json",
        f"/review/findings/{finding.code}/raw/",
        f"/c/{connection.code}/mapping/",
        f"/c/{connection.code}/mapping/export.csv",
        f"/c/{connection.code}/mapping/conceptmap.json",
        f"/runs/{failed.code}/",
    ):
        response = other.goto(f"{live_server.url}{path}")
        assert response is not None and response.status == 404, path
    other.goto(f"{live_server.url}/review/")
    expect(other.locator(f"tr[data-run='{failed.code}']")).to_have_count(0)
    expect(other.get_by_text("No failed validation runs match.")).to_be_visible()
    assert_accessible(other)
    other.close()
