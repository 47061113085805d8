"""Headless Chromium (Debian's package) driven by Playwright, for the browser tests, and the
axe-core accessibility check (WCAG 2.1 AA) that every page they visit must pass."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
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
    """Debian's Chromium, headless. Fails at once without axe-core: every browser test checks pages with it."""
    axe_source()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, base_url: str, username: str, password: str, *, check_accessible: bool = False) -> None:
    """Log in through the login page; for staff, also through the two-factor page.

    The second factor is a fresh single-use backup code added to the user's static device in the
    database: unlike an authenticator code, it cannot be refused as a replay when the same user
    logs in twice within one 30-second step. With check_accessible, the login and two-factor pages
    go through assert_accessible on the way.
    """
    code = _one_time_code(username)
    page.goto(f"{base_url}/login/")
    if check_accessible:
        assert_accessible(page)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=main-nav], #id_otp_token")
    if code is not None and page.locator("#id_otp_token").count():
        if check_accessible:
            assert_accessible(page)
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


# --- Accessibility: axe-core ---------------------------------------------------------------------

# axe-core from npm, installed by .ci/run (which pins its version) outside the tracked tree:
#   npm install --prefix .venv/axe axe-core@<version in .ci/run>
# AXE_CORE_JS points at another copy of axe.min.js.
AXE_CORE_JS = Path(os.environ.get("AXE_CORE_JS") or ROOT / ".venv/axe/node_modules/axe-core/axe.min.js")
WCAG_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")

# Every URL checked in this process, for the run's summary line (tests/conftest.py).
checked_pages: list[str] = []

# While axe reads the page, htmx requests and swaps (a running step's 1-second poll) are held back,
# so no swap replaces nodes under it; polling resumes after.
_RUN_AXE = """async ([context, tags]) => {
  const hold = (event) => event.preventDefault();
  document.addEventListener("htmx:beforeRequest", hold);
  document.addEventListener("htmx:beforeSwap", hold);
  let results;
  try {
    results = await window.axe.run(context || document, {runOnly: {type: "tag", values: tags}});
  } finally {
    document.removeEventListener("htmx:beforeRequest", hold);
    document.removeEventListener("htmx:beforeSwap", hold);
  }
  return {
    version: window.axe.version,
    violations: results.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      targets: v.nodes.map((n) => n.target.join(" ")),
      summary: v.nodes.length ? v.nodes[0].failureSummary : "",
    })),
  };
}"""


class AxeCoreMissing(AssertionError):
    """axe-core's script is not where the tests look: a failure, never a skip."""


@functools.cache
def axe_source() -> str:
    """axe.min.js's text, read once per process; AxeCoreMissing when it is not installed."""
    if not AXE_CORE_JS.is_file():
        raise AxeCoreMissing(
            f"axe-core is not installed at {AXE_CORE_JS}. Install it as .ci/run does "
            "(npm install --prefix .venv/axe axe-core@<version pinned there>) or set AXE_CORE_JS."
        )
    return AXE_CORE_JS.read_text()


def assert_accessible(page: Page, *, context: str | None = None) -> None:
    """Run axe-core's WCAG 2.1 A and AA rules on the page as it is now; fail listing each violation
    (rule id, impact, the elements' selectors, what to fix).

    `context` is a CSS selector to check only part of the page (a fragment htmx just swapped in),
    the whole document by default. Call it once per distinct page or state, not after every action.
    """
    __tracebackhide__ = True
    report = accessibility_report(page, context=context)
    assert not report, report


def accessibility_report(page: Page, *, context: str | None = None) -> str:
    """assert_accessible's check without the assertion: "" for a clean page, else the violations,
    for a test that checks many pages and fails once with all of them.

    axe is injected with page.evaluate, not page.add_script_tag: the portal's Content-Security-Policy
    (script-src 'self', no inline script) refuses the inline <script> add_script_tag writes, and
    logs a CSP error the tests' console watchers would count. Code evaluated over the DevTools
    protocol is not subject to the page's CSP, so the page is checked under its real policy, with
    no bypass_csp context.
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    outcome: dict[str, Any] = page.evaluate(_RUN_AXE, [context, list(WCAG_TAGS)])
    where = page.url + (f" ({context})" if context else "")
    checked_pages.append(where)
    violations = outcome["violations"]
    if not violations:
        return ""
    lines = [f"axe-core {outcome['version']} found {len(violations)} WCAG 2.1 AA violation(s) on {where}:"]
    for violation in violations:
        lines.append(f"- {violation['id']} [{violation['impact']}]: {violation['help']}")
        lines.extend(f"    {target}" for target in violation["targets"][:10])
        if len(violation["targets"]) > 10:
            lines.append(f"    ... and {len(violation['targets']) - 10} more")
        if violation["summary"]:
            lines.extend(f"    | {line}" for line in violation["summary"].splitlines())
    return "\n".join(lines)
