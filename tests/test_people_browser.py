"""In Chromium: customer success invites an approver, the test reads the email, the approver accepts,
chooses a password and signs in; then customer success removes them. Every page passes axe-core."""

from __future__ import annotations

import os
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from portal.models import Membership
from tests.browser import assert_accessible, log_in
from tests.factories import DEFAULT_PASSWORD
from tests.people_helpers import emails_to, invitation_path

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("BROWSER_SCREENSHOTS", "")
PASSWORD = "a-long-and-unusual-passphrase-42"


@pytest.fixture(autouse=True)
def _locmem_email(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The live server runs in this process, so the email lands in django.core.mail.outbox. Its task
    # is not published: a worker started by another test of the session would send it elsewhere;
    # the tests deliver pending emails themselves, as that worker would.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from portal.notifications import services as notifications

    monkeypatch.setattr(notifications, "send_email_task", lambda delivery_id: False)


def test_invite_read_the_email_accept_set_a_password_and_sign_in(
    browser: Browser, live_server: Any, cs_user: Any, tenant_a: Any, it_a: Any
) -> None:
    errors: list[str] = []
    staff = browser.new_page()
    staff.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(staff, live_server.url, cs_user.username, DEFAULT_PASSWORD)

    # From the hospital's page to its People page, then the invitation form.
    staff.goto(f"{live_server.url}/t/{tenant_a.code}/")
    staff.get_by_test_id("people-link").click()
    expect(staff.locator("h1")).to_have_text("People of Alpha Medical Center")
    expect(staff.get_by_test_id("members")).to_contain_text("it-alpha")
    assert_accessible(staff)
    staff.get_by_test_id("invite-link").click()
    assert_accessible(staff)
    # An existing member is refused with what to do instead, and nothing is sent.
    staff.fill("#id_email", it_a.email)
    staff.get_by_test_id("send-invitation").click()
    expect(staff.locator("p.error[data-field=email]")).to_contain_text("already a member")
    assert_accessible(staff)
    staff.fill("#id_email", "ada@alpha.example.org")
    staff.select_option("#id_role", "approver")
    staff.get_by_test_id("send-invitation").click()
    expect(staff.locator(".messages")).to_contain_text("Invitation sent to ada@alpha.example.org as Approver")
    expect(staff.get_by_test_id("invitations")).to_contain_text("ada@alpha.example.org")
    assert_accessible(staff)

    # The email, as the email backend received it: the hospital, the role, the link, the expiry.
    [email] = emails_to("ada@alpha.example.org")
    assert "Alpha Medical Center" in email.subject and "as Approver" in email.body and "UTC" in email.body
    path = invitation_path("ada@alpha.example.org")

    # The invitee, in a browser of their own: accept, choose a password (a weak one is refused first).
    invitee = browser.new_context().new_page()
    invitee.on("pageerror", lambda exc: errors.append(str(exc)))
    invitee.goto(live_server.url + path)
    expect(invitee.locator("h1")).to_have_text("Join Alpha Medical Center")
    assert_accessible(invitee)
    invitee.fill("#id_full_name", "Ada Approver")
    invitee.fill("#id_password", "password123")
    invitee.fill("#id_password_again", "password123")
    invitee.get_by_test_id("accept").click()
    expect(invitee.locator("p.error[data-field=password]").first).to_be_visible()
    assert_accessible(invitee)
    invitee.fill("#id_password", PASSWORD)
    invitee.fill("#id_password_again", PASSWORD)
    invitee.get_by_test_id("accept").click()
    expect(invitee.locator(".messages")).to_contain_text("Your account is ready")
    assert_accessible(invitee)
    # Then sign in with the new password: their first page is My work; their hospital is listed.
    log_in(invitee, live_server.url, "ada@alpha.example.org", PASSWORD)
    expect(invitee.locator("h1")).to_have_text("My work")
    invitee.get_by_role("link", name="Hospitals").click()
    expect(invitee.locator("#tenant-table")).to_contain_text("Alpha Medical Center")
    if SHOTS:
        invitee.screenshot(path=f"{SHOTS}/invitee-dashboard.png", full_page=True)
    # The link is used up.
    used = invitee.context.new_page()
    used.goto(live_server.url + path)
    expect(used.get_by_test_id("invitation-problem")).to_contain_text("used already")
    assert_accessible(used)

    # Customer success removes them, after a confirmation; their open session ends at once.
    staff.goto(f"{live_server.url}/t/{tenant_a.code}/people/")
    expect(staff.get_by_test_id("members")).to_contain_text("ada@alpha.example.org")
    staff.locator("tr", has_text="ada@alpha.example.org").get_by_test_id("remove-member").click()
    expect(staff.locator("h1")).to_contain_text("Remove Ada Approver from Alpha Medical Center?")
    assert_accessible(staff)
    staff.get_by_test_id("confirm").click()
    expect(staff.locator(".messages")).to_contain_text("sessions and API tokens ended at once")
    if SHOTS:
        staff.screenshot(path=f"{SHOTS}/members.png", full_page=True)
    assert not Membership.objects.filter(user__username="ada@alpha.example.org").exists()
    invitee.goto(f"{live_server.url}/")
    expect(invitee.locator("#id_username")).to_be_visible()  # back at the login page
    assert errors == []


def test_staff_pages_and_the_last_approver_warning_are_accessible(
    browser: Browser, live_server: Any, cs_user: Any, engineer: Any, tenant_a: Any, it_a: Any
) -> None:
    from portal.people import register_pending_approvals, unregister_pending_approvals
    from portal.roles import VENDOR_ADMINS
    from tests.conftest import authenticator_for
    from tests.factories import UserFactory

    admin = UserFactory(username="vadmin", groups=[VENDOR_ADMINS])
    authenticator_for(admin)
    page = browser.new_page()
    log_in(page, live_server.url, admin.username, DEFAULT_PASSWORD)
    page.get_by_test_id("nav-staff").click()
    expect(page.get_by_test_id("staff")).to_contain_text("engineer")
    assert_accessible(page)
    page.get_by_test_id("invite-staff").click()
    page.fill("#id_email", "eve@vendor.example.com")
    page.select_option("#id_role", "engineer")
    assert_accessible(page)
    page.click("button:has-text('Send invitation')")
    expect(page.get_by_test_id("invitations")).to_contain_text("eve@vendor.example.com")
    page.locator("tr", has_text="engineer").get_by_role("link", name="Deactivate").click()
    expect(page.locator("h1")).to_contain_text("Deactivate")
    assert_accessible(page)
    page.get_by_test_id("confirm").click()
    expect(page.get_by_test_id("staff").locator("tr", has_text="engineer")).to_contain_text("Deactivated")

    def one_pending(tenant: Any) -> int:
        return 1

    register_pending_approvals(one_pending)
    try:
        staff = browser.new_page()
        log_in(staff, live_server.url, cs_user.username, DEFAULT_PASSWORD)
        staff.goto(f"{live_server.url}/t/{tenant_a.code}/people/")
        staff.locator("tr", has_text="it-alpha").get_by_test_id("remove-member").click()
        expect(staff.get_by_test_id("last-approver-warning")).to_contain_text("last approver of Alpha Medical Center")
        assert_accessible(staff)
        staff.get_by_role("link", name="Cancel").click()
        expect(staff.get_by_test_id("members")).to_contain_text("it-alpha")
    finally:
        unregister_pending_approvals(one_pending)
