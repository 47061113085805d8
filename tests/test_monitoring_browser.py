"""The hypercare dashboard and an alert page in headless Chromium, through axe-core.

A sandbox connection is live with a few real health checks (the last ones failing, so an alert is
open); customer success see it on the dashboard with its sparkline, open the alert, acknowledge it
and give it to hospital IT, who find it in My work; hospital IT of another tenant see nothing of it.
No Content-Security-Policy violation may show in the console (the sparklines are inline SVG).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from onboarding.monitoring.models import Alert
from portal.models import StaffAssignment
from tests.browser import assert_accessible, log_in
from tests.factories import DEFAULT_PASSWORD
from tests.test_load_test_browser import watch
from tests.test_monitoring import check_now, live_connection

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_hypercare_dashboard_and_an_alert_page(
    browser: Browser,
    live_server: Any,
    sandboxes: dict[str, Any],
    sandbox_allowlist: str,
    clean_faults: None,
    tenant_a: Any,
    cs_user: Any,
    it_a: Any,
    it_b: Any,
) -> None:
    hospital = sandboxes["generic"]
    StaffAssignment.objects.create(tenant=tenant_a, user=cs_user)
    live = live_connection(tenant_a, hospital)
    start = timezone.now() - timedelta(minutes=30)
    for minute in range(0, 20, 5):
        check_now(live, start + timedelta(minutes=minute))
    hospital.set_faults(rate_5xx=1.0)
    for minute in range(20, 35, 5):
        check_now(live, start + timedelta(minutes=minute))
    alert = Alert.objects.get()

    problems: list[str] = []
    cs: Page = watch(browser.new_page(), problems)
    log_in(cs, live_server.url, cs_user.username, DEFAULT_PASSWORD)
    cs.get_by_test_id("nav-hypercare").click()
    row = cs.get_by_test_id("live-row")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("live-status")).to_have_text("down")
    expect(row.get_by_test_id("live-open-alerts")).to_have_text("1")
    expect(row.locator("svg[role=img] polyline")).to_have_count(1)
    assert_accessible(cs)
    cs.get_by_test_id("open-alerts").get_by_role("link").click()
    expect(cs.get_by_test_id("alert-state")).to_have_text("open")
    assert_accessible(cs)
    cs.get_by_test_id("acknowledge").click()
    expect(cs.get_by_test_id("alert-ack")).to_contain_text(f"by {cs_user.username}")
    cs.get_by_label("Assign to").select_option(str(it_a.pk))
    cs.get_by_test_id("assign").click()
    expect(cs.get_by_test_id("alert-assignee")).to_have_text(it_a.username)
    assert_accessible(cs)
    cs.get_by_role("link", name=live.onboarding.connection.name).click()
    expect(cs.get_by_test_id("sla-days")).to_be_visible()
    assert_accessible(cs)
    cs.goto(f"{live_server.url}/t/{tenant_a.code}/monitoring-policy/")
    assert_accessible(cs)

    it: Page = watch(browser.new_page(), problems)
    log_in(it, live_server.url, it_a.username, DEFAULT_PASSWORD)
    it.goto(f"{live_server.url}/work/")
    expect(it.get_by_test_id("work-alerts").get_by_test_id("work-item")).to_have_text(alert.title)
    assert_accessible(it)

    other: Page = watch(browser.new_page(), problems)
    log_in(other, live_server.url, it_b.username, DEFAULT_PASSWORD)
    other.goto(f"{live_server.url}/hypercare/")
    expect(other.get_by_test_id("no-live")).to_be_visible()
    response = other.goto(f"{live_server.url}/alerts/{alert.code}/")
    assert response is not None and response.status == 404
    assert problems == []
