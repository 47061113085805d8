"""People of a hospital: roles and their permissions, invitations from email to first login, members
pages, removal ending sessions and tokens at once, the last approver, vendor staff and assignments."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from portal.models import AuditEvent, Invitation, Membership, StaffAssignment, Tenant, UserSession
from portal.people import (
    pending_approvals_count,
    register_pending_approvals,
    selectors,
    services,
    unregister_pending_approvals,
)
from portal.roles import ENGINEERS, VENDOR_ADMINS
from portal.services import create_tenant, grant_hospital_it
from tests.conftest import client_for
from tests.factories import DEFAULT_PASSWORD, UserFactory
from tests.people_helpers import emails_to, invitation_path, member, send_pending_emails, token_of

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-long-and-unusual-passphrase-42"


@pytest.fixture(autouse=True)
def _locmem_email(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def _invite(client: Client, tenant: Any, email: str, role: str = "approver") -> Any:
    return client.post(reverse("invitation_create", kwargs={"code": tenant.code}), {"email": email, "role": role})


def _accept(
    path: str, *, client: Client | None = None, password: str = NEW_PASSWORD, name: str = "Ada Approver"
) -> Any:
    client = client or Client()
    return client.post(path, {"full_name": name, "password": password, "password_again": password})


def _log_in(username: str, password: str = NEW_PASSWORD) -> Client:
    client = Client()
    response = client.post(reverse("login"), {"username": username, "password": password})
    assert response.status_code == 302, response.content
    return client


def _totp(device: TOTPDevice) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return f"{totp.token():0{device.digits}d}"


# --- Roles ----------------------------------------------------------------------------------------


def test_each_hospital_role_holds_exactly_its_permissions(tenant_a: Any, tenant_b: Any) -> None:
    viewer = member(tenant_a, "viewer", "v")
    approver = member(tenant_a, "approver", "p")
    admin = member(tenant_a, "admin", "a")
    for user, perms in (
        (viewer, {"access_tenant", "view_audit"}),
        (approver, {"access_tenant", "view_audit", "approve_gates"}),
        (admin, {"access_tenant", "view_audit", "approve_gates", "manage_members"}),
    ):
        user = get_user_model().objects.get(pk=user.pk)  # a fresh permission cache
        held = {
            p
            for p in ("access_tenant", "view_audit", "approve_gates", "manage_members")
            if user.has_perm(f"portal.{p}", tenant_a)
        }
        assert held == perms, user.username
        assert not any(user.has_perm(f"portal.{p}", tenant_b) for p in perms)
    assert selectors.hospital_role_of(viewer, tenant_a) == "viewer"
    assert selectors.hospital_role_of(admin, tenant_a) == "admin"
    assert selectors.hospital_role_of(admin, tenant_b) is None
    assert list(selectors.approvers_of(tenant_a)) == [admin, approver]  # by user name; viewers never decide
    approver.is_active = False
    approver.save()
    assert list(selectors.approvers_of(tenant_a)) == [admin]


def test_grant_hospital_it_adds_an_approver(tenant_a: Any) -> None:
    user = UserFactory(username="granted")
    grant_hospital_it(tenant=tenant_a, member=user)
    assert Membership.objects.get(tenant=tenant_a, user=user).role == "approver"
    assert selectors.hospital_role_of(user, tenant_a) == "approver"
    assert AuditEvent.objects.filter(action="member.add", tenant=tenant_a, detail__user="granted").exists()


def test_vendor_staff_are_never_approvers(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    services.assign_without_check(tenant=tenant_a, member=cs_user)
    assert list(selectors.approvers_of(tenant_a)) == [it_a]
    assert list(selectors.staff_assigned_to(tenant_a)) == [cs_user]
    assert selectors.hospital_role_of(cs_user, tenant_a) is None
    # Nor can they be invited as one.
    response = _invite(client_for(cs_user), tenant_a, cs_user.email)
    assert response.status_code == 400 and "Vendor staff are assigned" in response.content.decode()


def test_pending_approvals_count_is_zero_until_gates_register(tenant_a: Any) -> None:
    assert pending_approvals_count(tenant_a) == 0

    def three(tenant: Tenant) -> int:
        return 3 if tenant == tenant_a else 0

    register_pending_approvals(three)
    register_pending_approvals(three)  # idempotent
    try:
        assert pending_approvals_count(tenant_a) == 3
    finally:
        unregister_pending_approvals(three)
    assert pending_approvals_count(tenant_a) == 0


# --- Invitations ----------------------------------------------------------------------------------


def test_an_invitation_emails_a_signed_link_and_stores_only_its_hash(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    response = _invite(client, tenant_a, "Ada@Alpha.example.org")
    assert response.status_code == 302
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.state, invitation.sends) == (
        "ada@alpha.example.org",
        "approver",
        "pending",
        1,
    )
    assert timedelta(hours=71, minutes=59) < invitation.expires_at - timezone.now() <= timedelta(hours=72)
    [message] = emails_to("ada@alpha.example.org")
    assert "Alpha Medical Center" in message.subject and "Approver" in message.subject
    assert "as Approver" in message.body and "UTC" in message.body
    path = invitation_path("ada@alpha.example.org")
    secret = services.tokens.read_token(token_of(path)).secret  # type: ignore[union-attr]
    assert invitation.secret_hash == services.tokens.hash_secret(secret) != secret
    # Neither the secret nor the link is kept anywhere once the email is out.
    rows = [str(row) for row in Invitation.objects.values_list()]
    assert not any(secret in row for row in rows)
    assert not any(secret in (event.detail.__repr__()) for event in AuditEvent.objects.all())
    from portal.notifications.models import EmailDelivery

    assert all(secret not in delivery.body for delivery in EmailDelivery.objects.all())
    assert AuditEvent.objects.filter(action="invitation.create", tenant=tenant_a, actor=cs_user).count() == 1
    # The page lists it as pending.
    page = client.get(reverse("tenant_members", kwargs={"code": tenant_a.code})).content.decode()
    assert "ada@alpha.example.org" in page and "Resend" in page


def test_a_new_hospitals_contact_is_invited_as_its_approver_unless_unticked(cs_user: Any, engineer: Any) -> None:
    client = client_for(cs_user)
    fields = {
        "name": "Gamma Clinic",
        "timezone": "UTC",
        "contact_name": "Ada",
        "contact_email": "ada@gamma.example.org",
    }
    assert client.post(reverse("tenant_create"), {**fields, "invite_contact": "on"}).status_code == 302
    invitation = Invitation.objects.get()
    assert (invitation.tenant.name, invitation.email, invitation.role) == (
        "Gamma Clinic",
        "ada@gamma.example.org",
        "approver",
    )
    assert emails_to("ada@gamma.example.org")
    # Unticked (or without an email), no invitation; through the API it is asked for by name.
    assert client.post(reverse("tenant_create"), {**fields, "name": "Delta Clinic"}).status_code == 302
    api = APIClient()
    api.force_authenticate(cs_user)
    assert api.post("/api/v1/tenants/", {**fields, "name": "Zeta Clinic"}, format="json").status_code == 201
    assert Invitation.objects.count() == 1
    answer = api.post("/api/v1/tenants/", {**fields, "name": "Eta Clinic", "invite_contact": True}, format="json")
    assert answer.status_code == 201 and Invitation.objects.filter(tenant__name="Eta Clinic").exists()
    # A refused invitation (the address is vendor staff's) is said beside the field, and no hospital is left.
    staff = {**fields, "name": "Theta Clinic", "contact_email": engineer.email, "invite_contact": "on"}
    page = client.post(reverse("tenant_create"), staff)
    assert page.status_code == 200 and "belongs to vendor staff" in page.content.decode()
    answer = api.post("/api/v1/tenants/", {**staff, "invite_contact": True}, format="json")
    assert answer.status_code == 400 and "belongs to vendor staff" in str(answer.json())
    assert not Tenant.objects.filter(name="Theta Clinic").exists()


def test_accepting_sets_a_validated_password_and_the_invitee_signs_in(cs_user: Any, tenant_a: Any) -> None:
    _invite(client_for(cs_user), tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    anonymous = Client()
    page = anonymous.get(path)
    assert page.status_code == 200
    assert "Join Alpha Medical Center" in page.content.decode()
    # Django's password validators refuse a weak one, and nothing is created.
    weak = _accept(path, password="password")
    assert weak.status_code == 400
    assert "too common" in weak.content.decode() or "too short" in weak.content.decode()
    differ = anonymous.post(path, {"full_name": "Ada", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD + "x"})
    assert differ.status_code == 400 and "differ" in differ.content.decode()
    assert not get_user_model().objects.filter(username="ada@alpha.example.org").exists()
    done = _accept(path)
    assert done.status_code == 302 and done["Location"] == reverse("login")
    user = get_user_model().objects.get(username="ada@alpha.example.org")
    assert (user.first_name, user.last_name, user.email) == ("Ada", "Approver", "ada@alpha.example.org")
    assert selectors.hospital_role_of(user, tenant_a) == "approver"
    invitation = Invitation.objects.get()
    assert (invitation.state, invitation.accepted_by) == ("accepted", user)
    assert AuditEvent.objects.filter(action="invitation.accept", actor=user, tenant=tenant_a).exists()
    # Signing in works with the new password, and shows their hospital.
    signed_in = _log_in("ada@alpha.example.org")
    assert "Alpha Medical Center" in signed_in.get(reverse("dashboard")).content.decode()


def test_a_link_works_once(cs_user: Any, tenant_a: Any) -> None:
    _invite(client_for(cs_user), tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    assert _accept(path).status_code == 302
    again = _accept(path, name="Somebody Else", password="another-long-passphrase-99")
    assert again.status_code == 410
    assert "used already" in again.content.decode()
    assert Client().get(path).status_code == 410
    assert get_user_model().objects.get(username="ada@alpha.example.org").first_name == "Ada"


def test_resending_kills_the_old_link_and_gives_a_new_expiry(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    _invite(client, tenant_a, "ada@alpha.example.org")
    old_path = invitation_path("ada@alpha.example.org")
    invitation = Invitation.objects.get()
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    response = client.post(reverse("invitation_resend", kwargs={"code": invitation.code}))
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.sends == 2 and invitation.state == "pending"
    assert invitation.expires_at > timezone.now() + timedelta(hours=71)
    assert len(emails_to("ada@alpha.example.org")) == 2
    new_path = invitation_path("ada@alpha.example.org")
    assert new_path != old_path
    stale = _accept(old_path)
    assert stale.status_code == 410 and "replaced by a newer invitation email" in stale.content.decode()
    assert _accept(new_path).status_code == 302
    assert AuditEvent.objects.filter(action="invitation.resend", detail__send=2).exists()


def test_revoking_asks_first_then_kills_the_link(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    _invite(client, tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    invitation = Invitation.objects.get()
    url = reverse("invitation_revoke", kwargs={"code": invitation.code})
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Revoke the invitation of ada@alpha.example.org?" in confirm.content.decode()
    invitation.refresh_from_db()
    assert invitation.state == "pending"  # asking changed nothing
    assert client.post(url).status_code == 302
    revoked = Client().get(path)
    assert revoked.status_code == 410 and "withdrawn" in revoked.content.decode()
    assert _accept(path).status_code == 410
    assert not get_user_model().objects.filter(username="ada@alpha.example.org").exists()
    assert AuditEvent.objects.filter(action="invitation.revoke", actor=cs_user).exists()
    # Resending a revoked invitation is refused with what to do.
    client.post(reverse("invitation_resend", kwargs={"code": invitation.code}))
    page = client.get(reverse("tenant_members", kwargs={"code": tenant_a.code})).content.decode()
    assert "Invite the person again instead" in page


def test_an_expired_link_is_refused_with_what_to_do(cs_user: Any, tenant_a: Any) -> None:
    _invite(client_for(cs_user), tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    response = _accept(path)
    assert response.status_code == 410
    assert "expired" in response.content.decode() and "send it again" in response.content.decode()
    assert not get_user_model().objects.filter(username="ada@alpha.example.org").exists()
    assert Invitation.objects.get().state == "expired"


def test_the_ttl_is_a_setting(cs_user: Any, tenant_a: Any, settings: Any) -> None:
    settings.INVITATION_TTL_HOURS = 2
    _invite(client_for(cs_user), tenant_a, "ada@alpha.example.org")
    assert Invitation.objects.get().expires_at - timezone.now() <= timedelta(hours=2)


def test_a_tampered_link_is_refused(cs_user: Any, tenant_a: Any) -> None:
    _invite(client_for(cs_user), tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    token = token_of(path)
    forged = path.replace(token, token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"))
    response = Client().get(forged)
    assert response.status_code == 404 and "not valid" in response.content.decode()
    assert Client().get(reverse("invitation_accept", kwargs={"token": "nonsense"})).status_code == 404


def test_inviting_an_existing_member_or_inviting_twice_is_refused(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    client = client_for(cs_user)
    response = _invite(client, tenant_a, it_a.email.upper())
    assert response.status_code == 400
    assert "already a member of Alpha Medical Center as Approver" in response.content.decode()
    assert "Change their role" in response.content.decode()
    assert _invite(client, tenant_a, "ada@alpha.example.org").status_code == 302
    twice = _invite(client, tenant_a, "ada@alpha.example.org", role="viewer")
    assert twice.status_code == 400 and "Resend that invitation" in twice.content.decode()
    bad = _invite(client, tenant_a, "not-an-email")
    assert bad.status_code == 400
    assert Invitation.objects.count() == 1
    assert AuditEvent.objects.filter(action="invitation.create").count() == 1


def test_accepting_while_signed_in_as_someone_else_is_refused(cs_user: Any, tenant_a: Any, it_b: Any) -> None:
    _invite(client_for(cs_user), tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    other = client_for(it_b)
    page = other.get(path)
    assert page.status_code == 403
    text = page.content.decode()
    assert "signed in as it-beta" in text and "Log out, then open the link again" in text
    assert _accept(path, client=other).status_code == 403
    assert Invitation.objects.get().state == "pending"
    assert not Membership.objects.filter(tenant=tenant_a, user=it_b).exists()
    # Logging out from that page comes back to the invitation, which then works.
    back = other.post(reverse("logout"), {"next": path})
    assert back.status_code == 302 and back["Location"] == path
    assert _accept(path, client=other).status_code == 302


def test_a_person_with_an_account_joins_another_hospital_signed_in(cs_user: Any, tenant_a: Any, it_b: Any) -> None:
    _invite(client_for(cs_user), tenant_a, it_b.email, role="viewer")
    path = invitation_path(it_b.email)
    anonymous = Client().get(path)
    assert anonymous.status_code == 200 and "has an account already" in anonymous.content.decode()
    refused = _accept(path)  # no second account for the same address
    assert refused.status_code == 409 and "has an account already" in refused.content.decode()
    signed_in = client_for(it_b)
    assert b"Join as Viewer" in signed_in.get(path).content
    joined = signed_in.post(path)
    assert joined.status_code == 302 and joined["Location"] == reverse("tenant_detail", kwargs={"code": tenant_a.code})
    assert selectors.hospital_role_of(it_b, tenant_a) == "viewer"
    assert get_user_model().objects.get(pk=it_b.pk).check_password(DEFAULT_PASSWORD)  # unchanged


def test_viewers_and_approvers_cannot_invite_or_manage(tenant_a: Any, it_a: Any) -> None:
    viewer = member(tenant_a, "viewer", "viewer-a")
    for user in (viewer, it_a):
        client = client_for(user)
        assert client.get(reverse("invitation_create", kwargs={"code": tenant_a.code})).status_code == 403
        assert _invite(client, tenant_a, "x@alpha.example.org").status_code == 403
        api = APIClient()
        api.force_authenticate(user)
        body = {"tenant": str(tenant_a.code), "email": "x@alpha.example.org", "role": "viewer"}
        assert api.post("/api/v1/invitations/", body, format="json").status_code == 403
        # They see the members, without any way to change them.
        page = client.get(reverse("tenant_members", kwargs={"code": tenant_a.code}))
        assert page.status_code == 200 and b"Invite a person" not in page.content and b"Change role" not in page.content
    assert not Invitation.objects.exists()


def test_a_hospital_admin_manages_their_own_tenant_only(tenant_a: Any, tenant_b: Any, it_a: Any) -> None:
    from tests import route_matrix
    from tests.test_route_matrix import send

    admin_a = member(tenant_a, "admin", "admin-alpha")
    admin_b = member(tenant_b, "admin", "admin-beta")
    # Their own tenant: invite, change a role.
    client = client_for(admin_a)
    assert _invite(client, tenant_a, "ada@alpha.example.org", role="viewer").status_code == 302
    membership = Membership.objects.get(tenant=tenant_a, user=it_a)
    response = client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "viewer"})
    assert response.status_code == 302
    assert selectors.hospital_role_of(it_a, tenant_a) == "viewer"
    # Every people route of tenant A, pages and API: 404 for the admin of tenant B, nothing changed.
    world = route_matrix.build_world(tenant_a=tenant_a, tenant_b=tenant_b)
    before = (Invitation.objects.count(), Membership.objects.count(), StaffAssignment.objects.count())
    foreign = client_for(admin_b)
    people_routes = [name for name in route_matrix.ROUTES if _is_people_route(name)]
    tried = 0
    for name in people_routes:
        for call in route_matrix.ROUTES[name]:
            if call.owner != "a":
                continue
            got = send(
                foreign,
                call.method,
                call.url(world),
                call.data(world) if call.data else None,
                kind=call.kind,
                htmx=False,
                keep=True,
            )
            tried += 1
            assert got.status_code == 404, (name, call.method, got.status_code)
    assert tried >= 20
    assert (Invitation.objects.count(), Membership.objects.count(), StaffAssignment.objects.count()) == before
    # Lists show none of tenant A's people or invitations.
    api = APIClient()
    api.force_authenticate(admin_b)
    for url in ("/api/v1/members/", "/api/v1/invitations/", "/api/v1/assignments/"):
        body = api.get(url).content.decode()
        assert str(tenant_a.code) not in body and "alpha" not in body.lower(), url
    assert api.get(f"/api/v1/members/?tenant={tenant_a.code}").status_code == 404


def _is_people_route(name: str) -> bool:
    return name.startswith(("tenant_members", "invitation", "member", "assignment", "tenant_staff_assign")) or name in {
        "member-list",
        "member-detail",
        "member-remove",
        "invitation-list",
        "invitation-detail",
        "invitation-resend",
        "invitation-revoke",
        "assignment-list",
        "assignment-detail",
    }


# --- Two-factor required by the hospital -----------------------------------------------------------


def test_a_hospital_that_requires_two_factor_sends_invitees_through_setup(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    edit = client.post(
        reverse("tenant_edit", kwargs={"code": tenant_a.code}),
        {"name": tenant_a.name, "timezone": tenant_a.timezone, "require_two_factor": "on"},
    )
    assert edit.status_code == 302
    assert Tenant.objects.get(pk=tenant_a.pk).require_two_factor
    assert AuditEvent.objects.filter(action="tenant.update", detail__fields=["require_two_factor"]).exists()
    _invite(client, tenant_a, "ada@alpha.example.org")
    path = invitation_path("ada@alpha.example.org")
    assert b"two-factor authentication" in Client().get(path).content
    _accept(path)
    user = get_user_model().objects.get(username="ada@alpha.example.org")
    signed_in = _log_in(user.username)
    response = signed_in.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("two_factor_setup"))
    assert signed_in.get(reverse("tenant_members", kwargs={"code": tenant_a.code})).status_code == 302
    signed_in.get(reverse("two_factor_setup"))
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    assert signed_in.post(reverse("two_factor_setup"), {"otp_token": _totp(device), "next": "/"}).status_code == 302
    assert signed_in.get(reverse("dashboard")).status_code == 200


# --- Members: role change, removal, the last approver ------------------------------------------------


def test_a_role_change_moves_the_permissions_at_once(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    membership = Membership.objects.get(tenant=tenant_a, user=it_a)
    client = client_for(cs_user)
    client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "admin"})
    assert get_user_model().objects.get(pk=it_a.pk).has_perm("portal.manage_members", tenant_a)
    client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "viewer"})
    fresh = get_user_model().objects.get(pk=it_a.pk)
    assert not fresh.has_perm("portal.approve_gates", tenant_a) and fresh.has_perm("portal.access_tenant", tenant_a)
    changes = AuditEvent.objects.filter(action="member.role_change").order_by("id")
    assert [(e.detail["from"], e.detail["role"]) for e in changes] == [("approver", "admin"), ("admin", "viewer")]
    bad = client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "owner"}, follow=True)
    assert "Choose one of the roles" in bad.content.decode()
    assert Membership.objects.get(pk=membership.pk).role == "viewer"


def test_nobody_changes_or_removes_themselves(tenant_a: Any) -> None:
    admin = member(tenant_a, "admin", "admin-alpha")
    membership = Membership.objects.get(user=admin)
    client = client_for(admin)
    page = client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "viewer"}, follow=True)
    assert "You cannot change the role of yourself" in page.content.decode()
    removed = client.post(reverse("member_remove", kwargs={"code": membership.code}), follow=True)
    assert "You cannot remove yourself" in removed.content.decode()
    assert Membership.objects.get(pk=membership.pk).role == "admin"


def test_removing_a_person_ends_their_sessions_and_api_tokens_at_once(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    """Done-when 6: a signed-in browser and a token client of the removed person are refused right after."""
    browser = _log_in(it_a.username, DEFAULT_PASSWORD)
    second_browser = _log_in(it_a.username, DEFAULT_PASSWORD)
    assert browser.get(reverse("tenant_detail", kwargs={"code": tenant_a.code})).status_code == 200
    token = (
        Client().post(reverse("api_token"), {"username": it_a.username, "password": DEFAULT_PASSWORD}).json()["token"]
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/v1/tenants/").status_code == 200
    keys = list(UserSession.objects.filter(user=it_a).values_list("session_key", flat=True))
    assert len(keys) == 2

    membership = Membership.objects.get(tenant=tenant_a, user=it_a)
    manager = client_for(cs_user)
    confirm = manager.get(reverse("member_remove", kwargs={"code": membership.code}))
    assert confirm.status_code == 200 and "sessions and API tokens end now" in confirm.content.decode()
    assert manager.post(reverse("member_remove", kwargs={"code": membership.code})).status_code == 302

    for client in (browser, second_browser):
        response = client.get(reverse("tenant_detail", kwargs={"code": tenant_a.code}))
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert api.get("/api/v1/tenants/").status_code == 401
    assert not Session.objects.filter(session_key__in=keys).exists()
    assert not UserSession.objects.filter(user=it_a).exists()
    it_a.refresh_from_db()
    assert not it_a.is_active  # no hospital left: they cannot sign in again
    assert Client().post(reverse("login"), {"username": it_a.username, "password": DEFAULT_PASSWORD}).status_code == 200
    event = AuditEvent.objects.get(action="member.remove")
    assert (event.actor, event.tenant, event.detail["sessions_ended"], event.detail["tokens_revoked"]) == (
        cs_user,
        tenant_a,
        2,
        1,
    )
    assert event.detail["deactivated"] is True


def test_removal_from_one_of_two_hospitals_keeps_the_other(cs_user: Any, tenant_a: Any, tenant_b: Any) -> None:
    both = member(tenant_a, "viewer", "both")
    services.add_member(tenant=tenant_b, user=both, role="approver")
    browser = _log_in("both", DEFAULT_PASSWORD)
    services.remove_member(actor=cs_user, membership=Membership.objects.get(tenant=tenant_a, user=both))
    assert browser.get(reverse("dashboard")).status_code == 302  # the session ended all the same
    again = _log_in("both", DEFAULT_PASSWORD)
    page = again.get(reverse("dashboard")).content.decode()
    assert "Beta Health System" in page and "Alpha Medical Center" not in page
    assert again.get(reverse("tenant_detail", kwargs={"code": tenant_a.code})).status_code == 404


def test_a_session_whose_key_changed_with_the_password_still_ends(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    browser = _log_in(it_a.username, DEFAULT_PASSWORD)
    changed = browser.post(
        reverse("password_change"),
        {"old_password": DEFAULT_PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert changed.status_code == 302
    assert browser.get(reverse("dashboard")).status_code == 200
    services.remove_member(actor=cs_user, membership=Membership.objects.get(tenant=tenant_a, user=it_a))
    assert browser.get(reverse("dashboard")).status_code == 302


def test_the_last_approver_is_removed_only_after_a_confirmation_that_says_so(
    cs_user: Any, tenant_a: Any, it_a: Any
) -> None:
    member(tenant_a, "viewer", "viewer-a")
    membership = Membership.objects.get(tenant=tenant_a, user=it_a)
    url = reverse("member_remove", kwargs={"code": membership.code})
    client = client_for(cs_user)
    # No approval pending: the plain confirmation.
    assert b"last-approver-warning" not in client.get(url).content

    def two_pending(tenant: Tenant) -> int:
        return 2 if tenant.pk == tenant_a.pk else 0

    register_pending_approvals(two_pending)
    try:
        page = client.get(url).content.decode()
        assert "last approver of Alpha Medical Center" in page and "2 approvals are waiting" in page
        # Posting without the confirmation changes nothing and says why.
        refused = client.post(url)
        assert refused.status_code == 409 and "Confirm to go ahead" in refused.content.decode()
        assert Membership.objects.filter(pk=membership.pk).exists()
        # So does taking their right to decide away.
        role = client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "viewer"})
        assert role.status_code == 409 and "2 approvals are waiting" in role.content.decode()
        assert Membership.objects.get(pk=membership.pk).role == "approver"
        with pytest.raises(services.LastApproverPending):
            services.remove_member(actor=cs_user, membership=membership)
        # With another approver there is nothing to confirm.
        other = member(tenant_a, "approver", "second-approver")
        assert b"last-approver-warning" not in client.get(url).content
        services.remove_member(actor=cs_user, membership=Membership.objects.get(user=other))
        # Confirmed: removed, and the trail says it was confirmed.
        assert client.post(url, {"confirm_last_approver": "on"}).status_code == 302
    finally:
        unregister_pending_approvals(two_pending)
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditEvent.objects.filter(action="member.remove", detail__confirmed_last_approver=True).count() == 1


def test_members_page_has_empty_states_and_pages(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    page = client.get(reverse("tenant_members", kwargs={"code": tenant_a.code})).content.decode()
    assert "Nobody of this hospital has an account yet" in page
    assert "No invitation is waiting for an answer" in page
    assert "No vendor staff member is assigned" in page
    for i in range(30):
        member(tenant_a, "viewer", f"person-{i:02d}")
    first = client.get(reverse("tenant_members", kwargs={"code": tenant_a.code})).content.decode()
    assert "30 members · page 1 of 2" in first and "person-24" in first and "person-25" not in first
    second = client.get(reverse("tenant_members", kwargs={"code": tenant_a.code}) + "?page=2").content.decode()
    assert "person-29" in second


# --- Vendor staff -------------------------------------------------------------------------------------


@pytest.fixture
def vendor_admin(db: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VENDOR_ADMIN_PASSWORD", NEW_PASSWORD)
    call_command("create_vendor_admin", "--username", "vadmin", "--email", "vadmin@vendor.example.com", "--no-input")
    user = get_user_model().objects.get(username="vadmin")
    from tests.conftest import authenticator_for

    authenticator_for(user)
    user.set_password(DEFAULT_PASSWORD)
    user.save()
    return user


def test_create_vendor_admin_makes_the_first_administrator_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENDOR_ADMIN_PASSWORD", "short")
    with pytest.raises(CommandError, match="not good enough"):
        call_command("create_vendor_admin", "--username", "vadmin", "--email", "v@vendor.example.com", "--no-input")
    monkeypatch.delenv("VENDOR_ADMIN_PASSWORD")
    with pytest.raises(CommandError, match="VENDOR_ADMIN_PASSWORD"):
        call_command("create_vendor_admin", "--username", "vadmin", "--email", "v@vendor.example.com", "--no-input")
    assert not get_user_model().objects.filter(username="vadmin").exists()
    monkeypatch.setenv("VENDOR_ADMIN_PASSWORD", NEW_PASSWORD)
    call_command("create_vendor_admin", "--username", "vadmin", "--email", "v@vendor.example.com", "--no-input")
    user = get_user_model().objects.get(username="vadmin")
    assert user.groups.filter(name=VENDOR_ADMINS).exists() and not user.is_superuser
    assert AuditEvent.objects.filter(action="staff.vendor_admin_created", detail__user="vadmin").exists()
    with pytest.raises(CommandError, match="exists already"):
        call_command("create_vendor_admin", "--username", "vadmin2", "--email", "v2@vendor.example.com", "--no-input")
    call_command(
        "create_vendor_admin", "--username", "vadmin2", "--email", "v2@vendor.example.com", "--no-input", "--another"
    )
    # At first login, the second factor is set up before anything else.
    client = _log_in("vadmin")
    response = client.get(reverse("staff_list"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("two_factor_setup"))


def test_a_vendor_admin_invites_an_engineer_who_must_set_up_two_factor(vendor_admin: Any) -> None:
    client = client_for(vendor_admin)
    assert client.get(reverse("staff_list")).status_code == 200
    response = client.post(reverse("staff_invite"), {"email": "eve@vendor.example.com", "role": "engineer"})
    assert response.status_code == 302
    invitation = Invitation.objects.get(tenant__isnull=True)
    assert AuditEvent.objects.filter(action="invitation.create", detail__kind="staff").exists()
    [message] = emails_to("eve@vendor.example.com")
    assert "as Engineer" in message.body
    page = client.get(reverse("staff_list")).content.decode()
    assert "eve@vendor.example.com" in page
    path = invitation_path("eve@vendor.example.com")
    assert _accept(path, name="Eve Engineer").status_code == 302
    eve = get_user_model().objects.get(username="eve@vendor.example.com")
    assert eve.groups.filter(name=ENGINEERS).exists()
    invitation.refresh_from_db()
    assert invitation.state == "accepted"
    signed_in = _log_in(eve.username)
    assert signed_in.get(reverse("dashboard"))["Location"].startswith(reverse("two_factor_setup"))
    # An address that has an account already is refused.
    again = client.post(reverse("staff_invite"), {"email": "eve@vendor.example.com", "role": "customer_success"})
    assert again.status_code == 400 and "has an account already" in again.content.decode()


def test_deactivating_staff_ends_their_sessions(vendor_admin: Any, engineer: Any) -> None:
    browser = _log_in(engineer.username, DEFAULT_PASSWORD)
    client = client_for(vendor_admin)
    url = reverse("staff_deactivate", kwargs={"code": engineer.person.code})
    assert "Deactivate" in client.get(url).content.decode()
    assert client.post(url).status_code == 302
    engineer.refresh_from_db()
    assert not engineer.is_active
    assert browser.get(reverse("dashboard")).status_code == 302
    assert AuditEvent.objects.filter(action="staff.deactivate", detail__user="engineer").exists()
    assert (
        client.post(reverse("staff_deactivate", kwargs={"code": vendor_admin.person.code}), follow=True).status_code
        == 200
    )
    assert get_user_model().objects.get(pk=vendor_admin.pk).is_active  # not themselves


def test_customer_success_cannot_manage_staff(cs_user: Any, engineer: Any) -> None:
    client = client_for(cs_user)
    assert client.get(reverse("staff_list")).status_code == 403
    assert (
        client.post(reverse("staff_invite"), {"email": "x@vendor.example.com", "role": "engineer"}).status_code == 403
    )
    assert client.post(reverse("staff_deactivate", kwargs={"code": engineer.person.code})).status_code == 403
    assert get_user_model().objects.get(pk=engineer.pk).is_active
    assert not Invitation.objects.exists()


# --- Assignments and "My hospitals" ------------------------------------------------------------------


def test_creating_a_hospital_makes_it_mine(cs_user: Any) -> None:
    tenant = create_tenant(user=cs_user, fields={"name": "Gamma General"})
    assert list(selectors.tenants_assigned_to(cs_user)) == [tenant]
    assert AuditEvent.objects.filter(action="staff.assign", tenant=tenant).exists()


def test_my_hospitals_is_the_default_for_customer_success(
    cs_user: Any, engineer: Any, tenant_a: Any, tenant_b: Any
) -> None:
    client = client_for(cs_user)
    # Nothing assigned yet: all hospitals, so the first page is never empty.
    page = client.get(reverse("dashboard")).content.decode()
    assert "Alpha Medical Center" in page and "Beta Health System" in page
    members = reverse("tenant_members", kwargs={"code": tenant_a.code})
    assert b"assign-staff" in client.get(members).content
    response = client.post(
        reverse("tenant_staff_assign", kwargs={"code": tenant_a.code}), {"member": str(cs_user.person.code)}
    )
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="staff.assign", actor=cs_user, tenant=tenant_a).exists()
    mine = client.get(reverse("dashboard")).content.decode()
    assert "Alpha Medical Center" in mine and "Beta Health System" not in mine
    assert "1 hospital assigned to you" in mine
    everything = client.get(reverse("dashboard") + "?scope=all").content.decode()
    assert "Beta Health System" in everything
    # Engineers see all by default.
    services.assign_without_check(tenant=tenant_a, member=engineer)
    assert b"Beta Health System" in client_for(engineer).get(reverse("dashboard")).content
    # Unassigning takes it off "mine".
    assignment = StaffAssignment.objects.get(tenant=tenant_a, user=cs_user)
    client.post(reverse("assignment_remove", kwargs={"code": assignment.code}))
    assert AuditEvent.objects.filter(action="staff.unassign", tenant=tenant_a).exists()
    assert b"Beta Health System" in client.get(reverse("dashboard")).content
    # Hospital IT cannot assign anyone.
    assert not selectors.staff_assigned_to(tenant_a).filter(pk=cs_user.pk).exists()


def test_hospital_people_cannot_be_assigned_as_staff(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    with pytest.raises(services.PeopleError, match="not active vendor staff"):
        services.assign_staff(actor=cs_user, tenant=tenant_a, member=it_a)
    assert not StaffAssignment.objects.filter(user=it_a).exists()


def test_every_change_is_in_the_audit_trail(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    _invite(client, tenant_a, "ada@alpha.example.org")
    invitation = Invitation.objects.get()
    client.post(reverse("invitation_resend", kwargs={"code": invitation.code}))
    accepted = _accept(invitation_path("ada@alpha.example.org"))
    assert accepted.status_code == 302, accepted.content.decode()
    membership = Membership.objects.get(user__username="ada@alpha.example.org")
    client.post(reverse("member_role", kwargs={"code": membership.code}), {"role": "viewer"})
    client.post(reverse("member_remove", kwargs={"code": membership.code}))
    actions = set(AuditEvent.objects.filter(tenant=tenant_a).values_list("action", flat=True))
    assert {
        "invitation.create",
        "invitation.resend",
        "invitation.accept",
        "member.add",
        "member.role_change",
        "member.remove",
    } <= actions
    trail = client.get(reverse("tenant_audit", kwargs={"code": tenant_a.code})).content.decode()
    assert "member.remove" in trail
    assert mail.outbox  # the emails went out
    assert send_pending_emails() == 0
