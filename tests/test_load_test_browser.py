"""A load test in headless Chromium, from the plan to the report, with the hospital's permission.

Customer success writes a plan (a plan above a cap is refused first, with the cap named) and asks
for permission; hospital IT of the tenant approve it from their inbox, for a window; customer
success starts the test and watches it live on the real worker; the report shows the charts and
the SLA verdict. Hospital IT of another tenant can see none of it. Every page visited goes through
axe-core, and the browser's console must show no Content-Security-Policy violation (the charts
are inline SVG).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from onboarding.models import Approval, LoadTestPlan, StepRun
from tests.browser import assert_accessible, log_in
from tests.factories import DEFAULT_PASSWORD
from tests.test_load_test_step import prepared

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("BROWSER_SCREENSHOTS", "")


def watch(page: Page, problems: list[str]) -> Page:
    """Collect page errors and CSP violations (console errors naming the policy)."""
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console at {page.url} ({msg.location.get('url')}): {msg.text[:120]}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    return page


def shot(page: Page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


def test_a_load_test_from_plan_to_report_with_the_hospitals_permission(
    browser: Browser,
    live_server: Any,
    celery_worker_process: Any,
    sandboxes: dict[str, Any],
    clean_faults: None,
    tenant_a: Any,
    cs_user: Any,
    it_a: Any,
    it_b: Any,
) -> None:
    sandbox = sandboxes["generic"]
    sandbox.set_faults(latency_ms=40)
    onboarding = prepared(tenant_a, cs_user, it_a, sandbox)
    connection = onboarding.connection
    problems: list[str] = []

    # Customer success: the connection page links the plan page, which has no plan yet.
    cs_context = browser.new_context()
    cs = watch(cs_context.new_page(), problems)
    log_in(cs, live_server.url, cs_user.username, DEFAULT_PASSWORD)
    cs.goto(f"{live_server.url}/c/{connection.code}/")
    expect(cs.get_by_test_id("state-load_test")).to_have_text("not started")
    expect(cs.get_by_test_id("gate-sentence-load_test_permission")).to_contain_text("There is no load-test plan yet")
    assert_accessible(cs)
    cs.get_by_test_id("load-test-plan-link").click()
    expect(cs.get_by_test_id("no-plan")).to_be_visible()
    expect(cs.get_by_test_id("caps")).to_contain_text("LOAD_TEST_MAX_RATE")
    assert_accessible(cs)

    # A plan above the rate cap is refused with the cap named, beside the field; nothing is saved.
    cs.get_by_label("a target rate", exact=True).check()
    cs.fill("#id_target_rate", "5000")
    cs.fill("#id_duration_s", "8")
    cs.fill("#id_ramp_s", "1")
    cs.fill("#id_concurrency", "10")
    cs.fill("#id_sla_p95_ms", "500")
    cs.fill("#id_sla_p99_ms", "1000")
    cs.fill("#id_sla_max_error_pct", "1")
    cs.get_by_test_id("save-plan").click()
    refusal = cs.locator("p.error[data-field=target_rate]")
    expect(refusal).to_contain_text("above the cap of 500 req/s")
    expect(refusal).to_contain_text("LOAD_TEST_MAX_RATE")
    assert_accessible(cs)
    assert not LoadTestPlan.objects.exists()

    # Within the caps: saved as version 1, then put to hospital IT.
    cs.fill("#id_target_rate", "30")
    cs.get_by_test_id("save-plan").click()
    expect(cs.locator(".messages")).to_contain_text("Load-test plan version 1 is saved")
    expect(cs.get_by_test_id("plan-load")).to_have_text("30 req/s for 8 s after a 1 s ramp-up")
    expect(cs.get_by_test_id("plan-mix")).to_contain_text("Patient search by identifier")
    assert_accessible(cs)
    shot(cs, "load-test-plan")
    cs.fill("#gate-note-load_test_permission", "Eight seconds at 30 req/s, tonight.")
    cs.get_by_test_id("gate-request-load_test_permission").click()
    expect(cs.get_by_test_id("approval-state")).to_have_text("pending")
    expect(cs.get_by_test_id("decide-form")).to_have_count(0)  # vendor staff never decide
    assert_accessible(cs)
    # Starting now is refused: a refusal, not a failed run.
    cs.goto(f"{live_server.url}/c/{connection.code}/")
    cs.get_by_test_id("start-load_test").click()
    expect(cs.locator(".messages")).to_contain_text("Permission to load-test is needed first")
    assert not StepRun.objects.filter(step="load_test").exists()

    # Hospital IT of another tenant: none of it is theirs to see or decide.
    other_context = browser.new_context()
    other = watch(other_context.new_page(), problems)
    log_in(other, live_server.url, it_b.username, DEFAULT_PASSWORD)
    approval = Approval.objects.get(gate="load_test_permission")
    for path in (f"/c/{connection.code}/load-test/", f"/approvals/{approval.code}/", f"/c/{connection.code}/"):
        response = other.goto(live_server.url + path)
        assert response is not None and response.status == 404, path
    other.goto(f"{live_server.url}/work/")
    expect(other.get_by_test_id("work-count-decisions")).to_have_text("0")
    assert_accessible(other)

    # Hospital IT of the tenant: the request is in their inbox; they approve it for a window.
    it_context = browser.new_context()
    it = watch(it_context.new_page(), problems)
    log_in(it, live_server.url, it_a.username, DEFAULT_PASSWORD)
    it.get_by_test_id("inbox-link").click()
    assert_accessible(it)
    it.get_by_role("link", name=re.compile("Your approval is requested: Permission to load-test")).first.click()
    expect(it.get_by_test_id("window-fields")).to_be_visible()
    assert_accessible(it)
    it.get_by_test_id("artifact-link").click()  # the exact plan they are asked about
    expect(it.get_by_test_id("plan-sla")).to_contain_text("p95 at most 500 ms")
    expect(it.get_by_test_id("plan-form")).to_have_count(0)  # hospital IT read the plan, never edit it
    assert_accessible(it)
    it.go_back()
    it.get_by_test_id("approve").click()  # without the window's end: refused, saying what to give
    expect(it.locator(".messages")).to_contain_text("Give the window")
    zone = ZoneInfo(tenant_a.timezone)
    until = (timezone.now() + timedelta(hours=2)).astimezone(zone)
    it.fill("#window-until", until.strftime("%Y-%m-%dT%H:%M"))
    it.fill("#decision-comment", "Tonight, in our quiet hours.")
    it.get_by_test_id("approve").click()
    expect(it.get_by_test_id("approval-state")).to_have_text("approved")
    expect(it.get_by_test_id("approval-window")).to_contain_text(until.strftime("%H:%M"))
    assert_accessible(it)
    shot(it, "load-test-approved")

    # Customer success: the test runs on the worker, watched live.
    cs.goto(f"{live_server.url}/c/{connection.code}/")
    expect(cs.get_by_test_id("gate-status-load_test_permission")).to_contain_text("approved")
    cs.get_by_test_id("start-load_test").click()
    live = cs.get_by_test_id("load-test-live")
    expect(live).to_be_visible(timeout=60_000)
    expect(cs.locator("#progress")).to_contain_text("req/s (target 30)")
    expect(live.locator("svg[role=img]")).to_have_count(2)
    assert_accessible(cs)
    shot(cs, "load-test-live")
    expect(cs.get_by_test_id("run-status")).to_have_text(re.compile("Passed|Failed"), timeout=90_000)
    report = cs.get_by_test_id("load-test-report")
    expect(report).to_be_visible()
    verdict = cs.get_by_test_id("sla-verdict")
    expect(verdict).to_contain_text(re.compile(r"^(Passed: p95 \d+ ms is within the agreed 500 ms|Failed: )"))
    run = StepRun.objects.get(step="load_test")
    expect(verdict).to_contain_text(run.result["verdict"])
    for chart in ("latency", "throughput", "histogram"):
        svg = cs.locator(f"svg[data-testid='{chart}-{run.code}']")
        expect(svg).to_be_visible()
        expect(svg.locator("desc")).not_to_be_empty()
    expect(cs.locator(f"svg[data-testid='latency-{run.code}'] polygon").first).to_be_attached()
    expect(cs.get_by_test_id("load-types")).to_contain_text("Encounter search by patient")
    expect(cs.get_by_test_id("no-previous")).to_be_visible()
    assert_accessible(cs)
    shot(cs, "load-test-report")

    # The evidence pack's load-test section: the plan, the approval and the result.
    cs.goto(f"{live_server.url}/o/{onboarding.code}/evidence/")
    section = cs.get_by_test_id("evidence-load-test")
    expect(section.get_by_test_id("evidence-load-permission")).to_contain_text(it_a.username)
    expect(section.get_by_test_id("evidence-load-result")).to_contain_text(run.result["verdict"])
    assert_accessible(cs)

    # And the other tenant's hospital IT cannot open the run, its report or its API.
    response = other.goto(f"{live_server.url}/runs/{run.code}/")
    assert response is not None and response.status == 404
    # (A request, not a navigation: Chromium shows JSON in a viewer of its own, with inline style.)
    assert other.request.get(f"{live_server.url}/api/v1/runs/{run.code}/load-test/").status == 404
    assert other.request.get(f"{live_server.url}/api/v1/connections/{connection.code}/load-test-plan/").status == 404
    assert problems == []
    for context in (cs_context, it_context, other_context):
        context.close()
