"""Headless Chromium (Debian's package) driven by Playwright, for the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    """Log in through the login page; for staff, also through the two-factor page.

    The second factor is a fresh single-use backup code added to the user's static device in the
    database: unlike an authenticator code, it cannot be refused as a replay when the same user
    logs in twice within one 30-second step.
    """
    code = _one_time_code(username)
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=main-nav], #id_otp_token")
    if code is not None and page.locator("#id_otp_token").count():
        page.fill("#id_otp_token", code)
        page.click("[data-testid=verify]")
    page.wait_for_selector("[data-testid=main-nav]")


def reauthenticate(page: Page, username: str, password: str) -> None:
    """Answer the "confirm it is you" page that guards raw PHI."""
    page.wait_for_selector("#id_password")
    page.fill("#id_password", password)
    code = _one_time_code(username)
    if code is not None and page.locator("#id_otp_token").count():
        page.fill("#id_otp_token", code)
    page.click("button:has-text('Continue')")


def _one_time_code(username: str) -> str | None:
    from django.contrib.auth import get_user_model
    from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

    from portal import twofactor

    user = get_user_model().objects.filter(username=username).first()
    if user is None or not twofactor.requires_two_factor(user):
        return None
    device, _ = StaticDevice.objects.get_or_create(user=user, name="Browser test codes", defaults={"confirmed": True})
    token = StaticToken.random_token()
    StaticToken.objects.create(device=device, token=token)
    return token
