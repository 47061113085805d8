"""People and gates end to end in Chromium, with no shell, admin page or management command between.

Customer success creates a hospital and invites an approver; the approver accepts the emailed link
and signs in; customer success runs configure, test and map and asks for the sign-off; the approver
sees it on their first page and in the inbox, rejects it with a reason; customer success changes
the mapping and asks again; the approver approves, and validate runs. Steps and emails go through a
real Celery worker; the invitation is read from the worker's email backend.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from onboarding.mapping import services as mappings
from onboarding.models import Approval, StepRun
from portal.models import Tenant
from tests.browser import assert_accessible, log_in
from tests.factories import DEFAULT_PASSWORD
from tests.test_mapping_browser import LOINC_OF

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("BROWSER_SCREENSHOTS", "")
APPROVER = "pat.approver@northwind.example.org"
NEW_PASSWORD = "Northwind-lab-2026-approver"


def wait_for_email(directory: Path, address: str, timeout: float = 30) -> str:
    """The text of the newest email the worker wrote to this address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in sorted(directory.glob("*")) if address in p.read_text(errors="replace")]
        if found:
            return found[-1].read_text(errors="replace")
        time.sleep(0.2)
    raise AssertionError(f"no email to {address} within {timeout} s")


def wait_for_run(page: Page, status: str = "Passed") -> None:
    expect(page.get_by_test_id("run-status")).to_have_text(status, timeout=60_000)


def test_a_hospital_from_scratch_to_validate_through_invitation_and_sign_off(
    browser: Browser,
    live_server: Any,
    celery_worker_process: Any,
    worker_email_dir: Path,
    sandboxes: dict[str, Any],
    clean_faults: None,
    cs_user: Any,
) -> None:
    sandbox = sandboxes["defects"]
    cs = browser.new_page()
    errors: list[str] = []
    cs.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(cs, live_server.url, cs_user.username, DEFAULT_PASSWORD)

    # Customer success: a new hospital, and an approver invited by email.
    cs.get_by_role("link", name="New hospital").first.click()
    cs.fill("#id_name", "Northwind Children's Hospital")
    cs.fill("#id_timezone", "America/Chicago")
    cs.click("button:has-text('Create hospital')")
    expect(cs.locator("h1")).to_have_text("Northwind Children's Hospital")
    tenant = Tenant.objects.get(name="Northwind Children's Hospital")
    policy = mappings.policy_for(tenant)
    policy.map_sample_size = policy.validate_sample_size = 20
    policy.max_error_patient_pct = 100.0
    policy.save()
    cs.get_by_test_id("people-link").click()
    cs.get_by_test_id("invite-link").click()
    cs.fill("#id_email", APPROVER)
    cs.select_option("#id_role", "approver")
    cs.get_by_test_id("send-invitation").click()
    expect(cs.locator(".messages")).to_contain_text(APPROVER)

    # The approver: the link from the email, a password, and a sign-in.
    email = wait_for_email(worker_email_dir, APPROVER)
    link = re.search(r"https?://\S+/invitations/accept/\S+/", email)
    assert link is not None, email
    it_context = browser.new_context()
    it = it_context.new_page()
    it.on("pageerror", lambda exc: errors.append(str(exc)))
    it.goto(live_server.url + urlsplit(link.group(0)).path)
    it.fill("#id_full_name", "Pat Approver")
    it.fill("#id_password", NEW_PASSWORD)
    it.fill("#id_password_again", NEW_PASSWORD)
    assert_accessible(it)
    it.get_by_test_id("accept").click()
    log_in(it, live_server.url, APPROVER, NEW_PASSWORD)
    expect(it.locator("h1")).to_have_text("My work")
    expect(it.get_by_test_id("work-count-decisions")).to_have_text("0")

    # Customer success: a connection to the sandbox hospital; configure, test and map on the worker.
    cs.get_by_role("link", name="Northwind Children's Hospital").first.click()
    cs.get_by_role("link", name="Add EHR connection").first.click()
    cs.fill("#id_name", "Main FHIR endpoint")
    cs.select_option("#id_vendor", "generic")
    cs.fill("#id_base_url", sandbox.base_url)
    cs.select_option("#id_auth_method", "none")
    cs.click("button:has-text('Save connection')")
    expect(cs.locator("h1")).to_have_text("Main FHIR endpoint")
    connection_url = cs.url
    cs.get_by_test_id("start-configure").click()
    wait_for_run(cs)
    cs.get_by_test_id("start-next").click()  # the run page offers the next step: test
    wait_for_run(cs)
    cs.get_by_test_id("start-next").click()  # then map: the sandbox's local lab codes need mapping
    wait_for_run(cs, "Failed")
    cs.get_by_test_id("open-mapping").click()
    rows = cs.get_by_test_id("code-row")
    codes = [str(rows.nth(i).get_attribute("data-code")) for i in range(rows.count())]
    assert codes, "the defects sandbox plants local lab codes"
    for code in codes:
        row = cs.locator(f"[data-testid=code-row][data-code='{code}']")
        row.get_by_test_id("edit-code").click()
        form = cs.locator(f"[data-testid=code-edit][data-code='{code}']")
        loinc, display = LOINC_OF[code]
        form.get_by_test_id("target-system").select_option(label="LOINC")
        form.get_by_test_id("target-code").fill(loinc)
        form.get_by_test_id("target-display").fill(display)
        form.get_by_test_id("save-code").click()
        expect(cs.locator(f"[data-testid=code-row][data-code='{code}'] [data-testid=target]")).to_contain_text(loinc)
    expect(cs.get_by_test_id("coverage")).to_have_text("Every required element is covered.")
    cs.reload()
    cs.fill("#gate-note-mapping_sign_off", "Lab codes mapped with your lab lead's list.")
    cs.get_by_test_id("gate-request-mapping_sign_off").click()
    expect(cs.get_by_test_id("approval-state")).to_have_text("pending")
    # Validate is refused while the sign-off waits: a refusal, not a failed run.
    cs.goto(connection_url)
    expect(cs.get_by_test_id("state-map")).to_have_text("waiting for hospital IT")
    assert_accessible(cs)
    cs.get_by_test_id("start-validate").click()
    expect(cs.locator(".messages")).to_contain_text("Mapping sign-off is needed first")
    assert not StepRun.objects.filter(step="validate").exists()

    # The approver: it waits on their first page and in the inbox; they reject it with a reason.
    it.goto(live_server.url + "/work/")
    expect(it.get_by_test_id("work-count-decisions")).to_have_text("1")
    expect(it.get_by_test_id("inbox-link")).to_have_attribute("aria-label", "Inbox, 1 unread")
    assert_accessible(it)
    it.get_by_test_id("inbox-link").click()
    it.get_by_role("link", name=re.compile("Your approval is requested")).first.click()
    expect(it.get_by_test_id("decide-form")).to_be_visible()
    assert_accessible(it)
    it.get_by_test_id("reject").click()  # without a reason: refused with a message
    expect(it.locator(".messages")).to_contain_text("Say why you reject it")
    it.fill("#decision-comment", "Glucose must map to the serum code, 2345-7.")
    it.get_by_test_id("reject").click()
    expect(it.get_by_test_id("approval-state")).to_have_text("rejected")
    assert_accessible(it)
    if SHOTS:
        it.screenshot(path=f"{SHOTS}/approval-rejected.png", full_page=True)

    # Customer success: the rejection on their first page; the mapping changed; asked again.
    cs.goto(live_server.url + "/work/")
    rejection = cs.get_by_test_id("work-rejections")
    expect(rejection).to_contain_text("Glucose must map to the serum code")
    assert_accessible(cs)
    rejection.get_by_test_id("work-item").first.click()
    cs.get_by_test_id("artifact-link").click()
    glucose = codes[0]
    row = cs.locator(f"[data-testid=code-row][data-code='{glucose}']")
    row.get_by_test_id("edit-code").click()
    form = cs.locator(f"[data-testid=code-edit][data-code='{glucose}']")
    form.get_by_test_id("target-code").fill("2345-7")
    form.get_by_test_id("target-display").fill("Glucose [Mass/volume] in Serum or Plasma")
    form.get_by_test_id("save-code").click()
    expect(row.get_by_test_id("target")).to_contain_text("2345-7")
    cs.reload()
    cs.get_by_test_id("gate-request-mapping_sign_off").click()
    expect(cs.get_by_test_id("approval-state")).to_have_text("pending")

    # The approver approves the new version.
    it.goto(live_server.url + "/work/")
    it.get_by_test_id("work-decisions").get_by_test_id("work-item").first.click()
    it.fill("#decision-comment", "Serum code confirmed.")
    it.get_by_test_id("approve").click()
    expect(it.get_by_test_id("approval-state")).to_have_text("approved")
    history = Approval.objects.filter(onboarding__tenant=tenant).order_by("requested_at")
    assert [a.state for a in history] == ["rejected", "approved"]

    # Customer success: validate runs now.
    cs.goto(connection_url)
    expect(cs.get_by_test_id("state-map")).to_contain_text("approved")
    cs.get_by_test_id("start-validate").click()
    wait_for_run(cs, re.compile("Passed|Failed"))  # type: ignore[arg-type]
    assert_accessible(cs)
    run = StepRun.objects.get(step="validate")
    assert run.error_kind != "not_signed_off", run.error_message
    if SHOTS:
        cs.screenshot(path=f"{SHOTS}/validate-after-sign-off.png", full_page=True)
    assert errors == []
    it_context.close()
