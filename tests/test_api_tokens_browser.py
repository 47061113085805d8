"""In Chromium: hospital IT see their API tokens on the account page and revoke one."""

from __future__ import annotations

from typing import Any

import pytest
from knox.models import AuthToken
from playwright.sync_api import Browser, expect

from portal import tokens
from tests.browser import log_in
from tests.factories import DEFAULT_PASSWORD
from tests.test_mapping_browser import watch

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_hospital_it_revoke_an_api_token_on_the_account_page(browser: Browser, live_server: Any, it_a: Any) -> None:
    kept, _ = tokens.issue_token(user=it_a)
    leaked, leaked_key = tokens.issue_token(user=it_a)
    page = browser.new_page()
    problems = watch(page)
    log_in(page, live_server.url, it_a.username, DEFAULT_PASSWORD)
    page.get_by_test_id("whoami").click()
    rows = page.get_by_test_id("api-tokens").locator("tbody tr")
    expect(rows).to_have_count(2)
    assert leaked_key not in page.content()
    page.get_by_role("button", name=f"Revoke token {tokens.token_id(leaked)}").click()
    expect(page.get_by_role("status")).to_contain_text(f"API token {tokens.token_id(leaked)} was revoked")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-token", tokens.token_id(kept))
    assert list(AuthToken.objects.filter(user=it_a).values_list("digest", flat=True)) == [kept.digest]
    assert problems == []
