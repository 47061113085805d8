"""Customer success onboards a hospital in headless Chromium: tenant, connection, configure, test."""

from __future__ import annotations

import os
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from portal.models import Tenant
from tests.browser import assert_accessible, log_in
from tests.factories import DEFAULT_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("BROWSER_SCREENSHOTS", "")


def test_customer_success_onboards_a_hospital_and_watches_steps_pass(
    browser: Browser,
    live_server: Any,
    celery_worker_process: Any,
    sandboxes: dict[str, Any],
    clean_faults: None,
    cs_user: Any,
) -> None:
    sandbox = sandboxes["generic"]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, live_server.url, cs_user.username, DEFAULT_PASSWORD)
    expect(page.locator("h1")).to_have_text("My work")  # the first page after login
    page.get_by_role("link", name="Hospitals").click()
    expect(page.get_by_text("No hospitals yet.")).to_be_visible()
    assert_accessible(page)

    # Create a hospital; a bad time zone is refused with a field message first.
    page.get_by_role("link", name="New hospital").first.click()
    assert_accessible(page)
    page.fill("#id_name", "Northwind Children's Hospital")
    page.fill("#id_timezone", "Mars/Olympus")
    page.click("button:has-text('Create hospital')")
    expect(page.locator("p.error[data-field=timezone]")).to_contain_text("not a time zone")
    assert_accessible(page)
    page.fill("#id_timezone", "America/Chicago")
    page.click("button:has-text('Create hospital')")
    expect(page.locator("h1")).to_have_text("Northwind Children's Hospital")
    assert_accessible(page)

    # Add its EHR connection to the sandbox hospital.
    page.get_by_role("link", name="Add EHR connection").first.click()
    assert_accessible(page)
    page.fill("#id_name", "Main FHIR endpoint")
    page.select_option("#id_vendor", "generic")
    page.fill("#id_base_url", sandbox.base_url)
    page.select_option("#id_auth_method", "none")
    page.click("button:has-text('Save connection')")
    expect(page.locator("h1")).to_have_text("Main FHIR endpoint")
    expect(page.get_by_test_id("state-go_live")).to_have_text("not started")
    expect(page.get_by_test_id("go-live-link")).to_be_visible()
    expect(page.get_by_test_id("state-load_test")).to_have_text("not started")
    assert_accessible(page)

    # Configure, watched live until it passes.
    page.get_by_test_id("start-configure").click()
    expect(page.get_by_test_id("run-status")).to_have_text("Passed", timeout=30_000)
    expect(page.locator("#progress")).to_contain_text("FHIR version")
    assert_accessible(page)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/configure-passed.png", full_page=True)

    # Then test.
    page.get_by_role("link", name="Main FHIR endpoint").click()
    page.get_by_test_id("start-test").click()
    expect(page.get_by_test_id("run-status")).to_have_text("Passed", timeout=30_000)
    expect(page.locator("#progress table")).to_contain_text("Read one Patient")
    assert_accessible(page)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/test-passed.png", full_page=True)

    page.get_by_role("link", name="Hospitals").first.click()
    row = page.locator("tr", has_text="Northwind Children's Hospital")
    expect(row.locator("[data-step=configure]")).to_have_attribute("data-state", "passed")
    expect(row.locator("[data-step=test]")).to_have_attribute("data-state", "passed")
    expect(row.locator("[data-step=map]")).to_have_attribute("data-state", "not_started")
    expect(row.locator("[data-step=load_test]")).to_have_attribute("data-state", "not_started")
    expect(row.locator("[data-step=go_live]")).to_have_attribute("data-state", "not_started")
    assert_accessible(page)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/dashboard.png", full_page=True)
    assert Tenant.objects.filter(name="Northwind Children's Hospital").exists()
    assert errors == []
