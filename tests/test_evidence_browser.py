"""In Chromium: hospital IT downloads their onboarding's evidence pack; another hospital's IT gets 404."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.browser import assert_accessible, log_in
from tests.evidence_helpers import MAPPING_HASH, evidence_onboarding
from tests.factories import DEFAULT_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def csp_watch(page: Page) -> list[str]:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # A missing favicon is "Failed to load resource"; anything else logged as an error counts.
        if "Content Security Policy" in message.text or (
            message.type == "error" and "Failed to load resource" not in message.text
        ):
            problems.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"{page.url}: {exc}"))
    return problems


@pytest.fixture
def onboarding(tenant_a: Any, cs_user: Any, it_a: Any, engineer: Any) -> Any:
    """An onboarding with history: attempts, a signed mapping, a failed validation with a waiver."""
    return evidence_onboarding(tenant=tenant_a, cs=cs_user, it=it_a, engineer=engineer)


def test_hospital_it_downloads_the_evidence_pack_of_their_onboarding(
    browser: Browser, live_server: Any, onboarding: Any, it_a: Any, it_b: Any, tmp_path: Path
) -> None:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    problems = csp_watch(page)
    log_in(page, live_server.url, it_a.username, DEFAULT_PASSWORD)
    expect(page.locator("h1")).to_have_text("My work")  # the first page after login
    assert_accessible(page)
    page.get_by_role("link", name="Hospitals").click()
    page.get_by_role("link", name="Alpha main FHIR").first.click()
    assert_accessible(page)
    page.get_by_test_id("evidence-link").click()
    expect(page.locator("h1")).to_have_text("Security evidence pack")
    assert_accessible(page)

    timeline = page.get_by_test_id("evidence-timeline")
    expect(timeline).to_contain_text("The hospital refused the credentials.")
    expect(timeline.locator("tbody tr")).to_have_count(6 + 4)  # six steps, four attempts

    gates = page.get_by_test_id("evidence-gates")
    expect(gates).to_contain_text(it_a.username)
    expect(gates).to_contain_text("MRN system confirmed with our registration team.")
    expect(gates).to_contain_text("Mapping version 3")
    expect(gates).to_contain_text(MAPPING_HASH)
    expect(gates.get_by_test_id("gate-note-load_test")).to_contain_text("There is no load-test plan yet")
    expect(gates.get_by_test_id("gate-note-go_live")).to_contain_text("There is no go-live plan yet")

    validation = page.get_by_test_id("evidence-validation")
    expect(validation).to_contain_text("2 errors, 1 warning")
    expect(validation).to_contain_text("Not recorded for newborns.")
    expect(validation.get_by_test_id("validation-figures")).to_contain_text("2 (20.0%; at most 0.0% allowed)")

    expect(page.get_by_test_id("evidence-load-test")).to_contain_text("There is no load-test plan yet")
    if shots := os.environ.get("BROWSER_SCREENSHOTS", ""):
        page.screenshot(path=f"{shots}/evidence-pack.png", full_page=True)

    security = page.get_by_test_id("evidence-security")
    expect(security).to_contain_text("HTTP Basic")
    expect(security).to_contain_text("HTTPS")
    expect(security).to_contain_text("TLS 1.2 or newer")
    expect(security).to_contain_text("Encrypted at rest")
    expect(security).to_contain_text("0 days old")
    expect(security).not_to_contain_text("evidence-test-secret")

    audit_section = page.get_by_test_id("evidence-audit")
    for action in ("connection.create", "step.start", "gate.approved", "evidence.export"):
        expect(audit_section).to_contain_text(action)

    with page.expect_download() as download_info:
        page.get_by_test_id("download-json").click()
    pack = json.loads(Path(download_info.value.path()).read_text())
    assert pack["format"] == "onboarding-evidence-pack/1"
    assert pack["hospital"]["name"] == "Alpha Medical Center"
    assert len(pack["timeline"]["attempts"]) == 4
    mapping_gate = pack["gates"][0]
    assert mapping_gate["approvals"][0]["artifact"] == {
        "kind": "mapping",
        "label": "Mapping version 3",
        "version": 3,
        "content_sha256": MAPPING_HASH,
    }
    assert mapping_gate["approvals"][0]["state"] == "approved"
    assert [gate["key"] for gate in pack["gates"][:2]] == ["mapping_sign_off", "load_test_permission"]
    assert pack["gates"][1]["status"] == "not_ready" and pack["gates"][1]["approvals"] == []
    assert pack["gates"][2]["key"] == "go_live_approval" and pack["gates"][2]["status"] == "not_ready"
    assert pack["validation"]["findings_by_severity"] == {"error": 2, "warning": 1}
    assert pack["validation"]["outcome"]["waived"] == 1
    assert pack["validation"]["waivers"][0]["reason"] == "Not recorded for newborns."
    assert pack["load_test"]["available"] is True and pack["load_test"]["run"] is None
    assert pack["load_test"]["plan"] is None
    assert pack["security"]["secret"]["age_days"] == 0
    assert "evidence-test-secret" not in json.dumps(pack)
    assert {"connection.create", "gate.approved"} <= {event["action"] for event in pack["audit"]["events"]}

    with page.expect_download() as download_info:
        page.get_by_test_id("download-html").click()
    html = Path(download_info.value.path()).read_text()
    for heading in (
        "Timeline of steps and attempts",
        "Gates",
        "Validation summary",
        "Load-test summary",
        "Connection security facts",
        "Audit extract",
    ):
        assert heading in html
    assert "<style>" in html and "evidence-test-secret" not in html
    with page.expect_download() as download_info:
        page.get_by_test_id("download-pdf").click()
    assert download_info.value.suggested_filename.endswith(".pdf")
    assert Path(download_info.value.path()).read_bytes().startswith(b"%PDF-")
    assert problems == []
    context.close()

    # Hospital IT of another hospital: the same addresses are a plain 404.
    other = browser.new_context()
    page = other.new_page()
    log_in(page, live_server.url, it_b.username, DEFAULT_PASSWORD)
    for name in ("evidence_pack", "evidence_pack_json"):
        response = page.goto(live_server.url + reverse(name, kwargs={"code": onboarding.code}))
        assert response is not None and response.status == 404, name
        expect(page.locator("body")).not_to_contain_text("Alpha")
        if name == "evidence_pack":
            assert_accessible(page)  # the HTML 404 page
    other.close()
