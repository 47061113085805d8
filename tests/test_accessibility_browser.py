"""Every page of the portal, as each persona sees it, through axe-core's WCAG 2.1 AA rules in Chromium.

The pages are seeded with real step runs (executed in this process against the sandbox hospital with
planted defects), so they show what they show in use: profile tables, code rows, findings, the
credential health card, a SMART key, a live run. Each persona's main navigation must lead only to
pages checked here, so a new link in it fails this test until its page is added. All the pages are
checked before the test fails, with every violation listed.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from connections.services import generate_key_pair
from onboarding.engine import services
from onboarding.models import Approval, Finding, RunStatus, StepRun
from tests.browser import accessibility_report, log_in, reauthenticate
from tests.factories import DEFAULT_PASSWORD
from tests.live_helpers import make_live
from tests.test_map_step import ready_connection, run_now, sandbox_connection, set_sizes, signed_off_mapping

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A phone-sized screen, for the pages a person checks on the move.
NARROW = {"width": 375, "height": 812}


@pytest.fixture
def seeded(
    sandboxes: dict[str, Any], sandbox_allowlist: str, clean_faults: None, tenant_a: Any, cs_user: Any, it_a: Any
) -> dict[str, str]:
    """Tenant A with every kind of page filled in; answers the pages' addresses by name."""
    set_sizes(tenant_a, map_size=20, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, sandboxes["defects"], name="Alpha FHIR")
    signed_off_mapping(cs_user, it_a, connection)
    validate = run_now(connection, "validate", cs_user)
    assert validate.status == RunStatus.FAILED, (validate.error_kind, validate.error_message)
    finding = Finding.objects.filter(run=validate).exclude(raw=None).first()
    assert finding is not None
    runs = {run.step + str(run.attempt): run for run in StepRun.objects.filter(onboarding=connection.onboarding)}

    # Client credentials: the test run shows the credential health card.
    epic = sandbox_connection(
        tenant_a,
        sandboxes["epic"],
        name="Alpha Epic",
        auth_method="client_credentials",
        client_id="portal-test",
        secret="s3cret-sandbox-value",
        token_url="",
    )
    assert run_now(epic, "configure", cs_user).status == RunStatus.PASSED
    epic_test = run_now(epic, "test", cs_user)
    assert epic_test.status == RunStatus.PASSED and epic_test.result.get("credential")
    # Live, for its monitoring page (what a cutover writes; the go-live flow has its own browser test).
    make_live(epic.onboarding, probe_patient_id=sandboxes["epic"].patient_ids[0])

    # SMART Backend Services with a key pair, and a run a worker is in the middle of (live progress).
    smart = sandbox_connection(
        tenant_a, sandboxes["generic"], name="Alpha SMART", auth_method="smart_backend", client_id="alpha-app"
    )
    smart = generate_key_pair(user=cs_user, connection=smart, algorithm="ES384")
    running = StepRun.objects.create(
        onboarding=services.ensure_onboarding(smart),
        step="configure",
        attempt=1,
        status="running",
        progress_done=2,
        progress_total=5,
        progress_message="Reading the capability statement",
    )

    tenant = {"code": tenant_a.code}
    conn = {"code": connection.code}
    approval = Approval.objects.filter(onboarding=connection.onboarding).order_by("-requested_at").first()
    assert approval is not None
    return {
        "my work": reverse("my_work"),
        "inbox": reverse("inbox"),
        "approval": reverse("approval_detail", kwargs={"code": approval.code}),
        "people": reverse("tenant_members", kwargs=tenant),
        "dashboard": reverse("dashboard"),
        "hypercare": reverse("hypercare"),
        "windows": reverse("tenant_windows", kwargs=tenant),
        "go-live": reverse("go_live", kwargs=conn),
        "connection monitoring": reverse("connection_monitoring", kwargs={"code": epic.code}),
        "monitoring policy": reverse("monitoring_policy", kwargs=tenant),
        "tenant": reverse("tenant_detail", kwargs=tenant),
        "tenant audit": reverse("tenant_audit", kwargs=tenant),
        "validation policy": reverse("validation_policy", kwargs=tenant),
        "connection": reverse("connection_detail", kwargs=conn),
        "smart connection": reverse("connection_detail", kwargs={"code": smart.code}),
        "configure run": reverse("run_detail", kwargs={"code": runs["configure1"].code}),
        "test run": reverse("run_detail", kwargs={"code": runs["test1"].code}),
        "credential health": reverse("run_detail", kwargs={"code": epic_test.code}),
        "failed map run": reverse("run_detail", kwargs={"code": runs["map1"].code}),
        "passed map run": reverse("run_detail", kwargs={"code": runs["map2"].code}),
        "validate run": reverse("run_detail", kwargs={"code": validate.code}),
        "running run": reverse("run_detail", kwargs={"code": running.code}),
        "mapping": reverse("mapping", kwargs=conn),
        "review queue": reverse("review_queue"),
        "review run": reverse("review_run", kwargs={"code": validate.code}),
        "raw finding": reverse("review_raw", kwargs={"code": finding.code}),
        "evidence": reverse("evidence_pack", kwargs={"code": connection.onboarding.code}),
        "account": reverse("account_security"),
        "two-factor setup": reverse("two_factor_setup"),
        "password change": reverse("password_change"),
        "api docs": reverse("api_docs"),
        # Customer success only.
        "new hospital": reverse("tenant_create"),
        "new connection": reverse("connection_create", kwargs=tenant),
        "edit connection": reverse("connection_edit", kwargs=conn),
        "smart key": reverse("connection_smart_key", kwargs={"code": smart.code}),
        "service accounts": reverse("service_accounts"),
        # Vendor staff only.
        "audit": reverse("audit_log"),
    }


EVERYONE = [
    "my work",
    "inbox",
    "approval",
    "people",
    "dashboard",
    "hypercare",
    "windows",
    "go-live",
    "connection monitoring",
    "monitoring policy",
    "tenant",
    "tenant audit",
    "validation policy",
    "connection",
    "smart connection",
    "configure run",
    "test run",
    "credential health",
    "failed map run",
    "passed map run",
    "validate run",
    "running run",
    "mapping",
    "review queue",
    "review run",
    "evidence",
    "account",
    "two-factor setup",
    "password change",
    "api docs",
]
PAGES = {
    "cs": [*EVERYONE, "new hospital", "new connection", "edit connection", "smart key", "service accounts", "audit"],
    "engineer": [*EVERYONE, "audit"],
    "it_a": EVERYONE,
}


class Checker:
    """Opens pages and keeps every violation axe finds, to fail once with all of them."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.reports: list[str] = []
        self.checked: list[str] = []

    def check(self, page: Page, label: str) -> None:
        self.checked.append(label)
        report = accessibility_report(page)
        if report:
            self.reports.append(f"[{label}] {report}")

    def visit(self, page: Page, path: str, label: str) -> None:
        response = page.goto(self.base_url + path)
        assert response is not None and response.status == 200, (label, path, response and response.status)
        self.check(page, label)


def nav_targets(page: Page) -> set[str]:
    """The paths the main navigation and the account links lead to, as drawn for this persona."""
    links = page.locator("[data-testid=main-nav] a, .who a")
    hrefs = {links.nth(i).get_attribute("href") or "" for i in range(links.count())}
    return {href.split("?")[0] for href in hrefs}


def test_every_page_passes_axe_for_each_persona(
    browser: Browser, live_server: Any, seeded: dict[str, str], cs_user: Any, engineer: Any, it_a: Any
) -> None:
    checker = Checker(live_server.url)

    # Signed out: the login page, and its answer to a wrong password (an unknown name locks no one).
    anonymous = browser.new_context()
    page = anonymous.new_page()
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "nobody-at-all")
    page.fill("#id_password", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator("p.error[role=alert]")).to_be_visible()
    checker.check(page, "anonymous: login refused")
    anonymous.close()

    for persona, user in (("cs", cs_user), ("engineer", engineer), ("it_a", it_a)):
        context = browser.new_context()
        page = context.new_page()
        # The login page and, for vendor staff, the two-factor page (failing there, not collected).
        log_in(page, live_server.url, user.username, DEFAULT_PASSWORD, check_accessible=True)
        checker.checked.append(f"{persona}: login")
        unchecked = nav_targets(page) - {seeded[name] for name in PAGES[persona]}
        assert not unchecked, f"{persona}'s navigation leads to pages this test does not check: {unchecked}"
        for name in PAGES[persona]:
            checker.visit(page, seeded[name], f"{persona}: {name}")

        if persona == "cs":
            # Forms answered with errors, and the backup codes page (a POST from the account page).
            page.goto(live_server.url + seeded["new connection"])
            page.click("button:has-text('Save connection')")
            expect(page.locator("p.error").first).to_be_visible()
            checker.check(page, "cs: new connection refused")
            page.goto(live_server.url + seeded["account"])
            page.click("button:has-text('Make new backup codes')")
            expect(page.locator("h1")).to_contain_text("backup codes")
            checker.check(page, "cs: backup codes")
            # A phone-sized screen for the pages used on the move.
            page.set_viewport_size(NARROW)
            for name in ("dashboard", "connection", "running run", "mapping", "review run"):
                checker.visit(page, seeded[name], f"cs, narrow: {name}")
        if persona == "engineer":
            # Raw PHI: the "confirm it is you" page first, then the highlighted JSON.
            page.goto(live_server.url + seeded["raw finding"])
            expect(page.locator("h1")).to_have_text("Confirm it is you")
            checker.check(page, "engineer: reauthenticate")
            reauthenticate(page, user.username, DEFAULT_PASSWORD)
            expect(page.get_by_test_id("raw-json")).to_be_visible()
            checker.check(page, "engineer: raw finding")
        context.close()

    print(f"\naxe-core checked {len(checker.checked)} pages, {len(checker.reports)} with violations")
    assert not checker.reports, "\n\n".join(checker.reports)
