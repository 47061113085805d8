"""In Chromium: hospital IT sees the unread count in the header, opens the inbox and marks an item read."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from portal.notifications.models import Notification
from portal.notifications.services import notify
from tests.browser import log_in
from tests.factories import DEFAULT_PASSWORD
from tests.test_mapping_browser import watch

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_hospital_it_reads_the_inbox_and_marks_an_item_read(
    browser: Browser, live_server: Any, tenant_a: Any, it_a: Any
) -> None:
    (item,) = notify(
        kind="approval_requested",
        recipients=[it_a],
        subject="Mapping sign-off requested",
        body="Customer success asks you to sign off the mapping of Alpha Epic.",
        link="/account/",
        key="browser:approval",
        tenant=tenant_a,
    )
    page = browser.new_page()
    problems = watch(page)
    log_in(page, live_server.url, it_a.username, DEFAULT_PASSWORD)
    header_link = page.get_by_role("link", name="Inbox, 1 unread")
    expect(header_link).to_be_visible()
    header_link.click()
    expect(page.locator("h1")).to_have_text("Inbox")
    row = page.locator(f"#n-{item.code}")
    expect(row).to_contain_text("Unread")
    row.get_by_role("button", name="Mark read: Mapping sign-off requested").click()
    # htmx swaps the item in place and the header's count out of band: no page load.
    expect(page.locator(f"#n-{item.code}")).to_contain_text("Read")
    expect(page.locator(f"#n-{item.code} button")).to_have_count(0)
    expect(page.get_by_role("link", name="Inbox, 0 unread")).to_be_visible()
    page.locator(f"#n-{item.code} a.notification-link").click()
    expect(page.locator("h1")).to_have_text("Your account")
    item.refresh_from_db()
    assert item.read_at is not None
    assert Notification.objects.filter(recipient=it_a, read_at__isnull=True).count() == 0
    assert problems == []
