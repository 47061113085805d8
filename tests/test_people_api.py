"""The people API: invite, resend, revoke and accept; members' roles and removal; staff and assignments."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from portal.models import AuditEvent, Invitation, Membership, StaffAssignment, Tenant
from portal.people import register_pending_approvals, selectors, unregister_pending_approvals
from tests.factories import DEFAULT_PASSWORD
from tests.people_helpers import emails_to, invitation_path, member, token_of

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-and-unusual-passphrase-42"


@pytest.fixture(autouse=True)
def _locmem_email(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def as_user(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_invite_and_accept_through_the_api(cs_user: Any, tenant_a: Any) -> None:
    api = as_user(cs_user)
    created = api.post(
        "/api/v1/invitations/",
        {"tenant": str(tenant_a.code), "email": "ada@alpha.example.org", "role": "admin"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["kind"], body["state"], body["role"], body["tenant"], body["sends"]) == (
        "hospital",
        "pending",
        "admin",
        str(tenant_a.code),
        1,
    )
    assert not any(key in body for key in ("token", "link", "secret_hash"))
    token = token_of(invitation_path("ada@alpha.example.org"))
    assert token not in created.content.decode()
    listed = api.get(f"/api/v1/invitations/?tenant={tenant_a.code}").json()
    assert [row["email"] for row in listed["results"]] == ["ada@alpha.example.org"]

    anonymous = APIClient()
    weak = anonymous.post(
        "/api/v1/invitations/accept/", {"token": token, "full_name": "Ada", "password": "12345678"}, format="json"
    )
    assert weak.status_code == 400 and "password" in weak.json()
    nameless = anonymous.post("/api/v1/invitations/accept/", {"token": token, "password": PASSWORD}, format="json")
    assert nameless.status_code == 400 and "full_name" in nameless.json()
    accepted = anonymous.post(
        "/api/v1/invitations/accept/", {"token": token, "full_name": "Ada Admin", "password": PASSWORD}, format="json"
    )
    assert accepted.status_code == 201, accepted.content
    assert accepted.json() == {
        "username": "ada@alpha.example.org",
        "tenant": str(tenant_a.code),
        "role": "admin",
        "new_account": True,
        "two_factor_required": False,
    }
    used = anonymous.post(
        "/api/v1/invitations/accept/", {"token": token, "full_name": "X", "password": PASSWORD}, format="json"
    )
    assert used.status_code == 410 and used.json()["code"] == "used"
    # The new account gets an API token with its password, and manages its own hospital.
    got = Client().post(reverse("api_token"), {"username": "ada@alpha.example.org", "password": PASSWORD})
    admin_api = APIClient()
    admin_api.credentials(HTTP_AUTHORIZATION=f"Token {got.json()['token']}")
    members = admin_api.get(f"/api/v1/members/?tenant={tenant_a.code}").json()["results"]
    assert [m["username"] for m in members] == ["ada@alpha.example.org"]


def test_accept_refusals_say_why(cs_user: Any, tenant_a: Any, it_b: Any) -> None:
    api = as_user(cs_user)
    api.post(
        "/api/v1/invitations/",
        {"tenant": str(tenant_a.code), "email": "ada@alpha.example.org", "role": "viewer"},
        format="json",
    )
    token = token_of(invitation_path("ada@alpha.example.org"))
    wrong = as_user(it_b).post(
        "/api/v1/invitations/accept/", {"token": token, "full_name": "A", "password": PASSWORD}, format="json"
    )
    assert wrong.status_code == 403 and wrong.json()["code"] == "wrong_account"
    assert "Log out" in wrong.json()["detail"]
    forged = APIClient().post(
        "/api/v1/invitations/accept/", {"token": token + "x", "full_name": "A", "password": PASSWORD}, format="json"
    )
    assert forged.status_code == 404 and forged.json()["code"] == "invalid"
    invitation = Invitation.objects.get()
    revoked = api.post(f"/api/v1/invitations/{invitation.code}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    late = APIClient().post(
        "/api/v1/invitations/accept/", {"token": token, "full_name": "A", "password": PASSWORD}, format="json"
    )
    assert late.status_code == 410 and late.json()["code"] == "revoked"
    assert api.post(f"/api/v1/invitations/{invitation.code}/resend/").status_code == 400
    assert not get_user_model().objects.filter(username="ada@alpha.example.org").exists()


def test_resend_through_the_api_replaces_the_link(cs_user: Any, tenant_a: Any) -> None:
    api = as_user(cs_user)
    code = api.post(
        "/api/v1/invitations/",
        {"tenant": str(tenant_a.code), "email": "ada@alpha.example.org", "role": "viewer"},
        format="json",
    ).json()["code"]
    old = token_of(invitation_path("ada@alpha.example.org"))
    resent = api.post(f"/api/v1/invitations/{code}/resend/")
    assert resent.status_code == 200 and resent.json()["sends"] == 2
    assert len(emails_to("ada@alpha.example.org")) == 2
    stale = APIClient().post(
        "/api/v1/invitations/accept/", {"token": old, "full_name": "A", "password": PASSWORD}, format="json"
    )
    assert stale.status_code == 410 and stale.json()["code"] == "replaced"


def test_inviting_an_existing_member_through_the_api_is_a_conflict(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    response = as_user(cs_user).post(
        "/api/v1/invitations/", {"tenant": str(tenant_a.code), "email": it_a.email, "role": "viewer"}, format="json"
    )
    assert response.status_code == 409 and response.json()["code"] == "already_member"
    assert not Invitation.objects.exists()


def test_members_role_change_and_removal_through_the_api(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    viewer = member(tenant_a, "viewer", "viewer-a")
    membership = Membership.objects.get(user=viewer)
    api = as_user(cs_user)
    listed = api.get(f"/api/v1/members/?tenant={tenant_a.code}").json()["results"]
    assert {(m["username"], m["role"]) for m in listed} == {("it-alpha", "approver"), ("viewer-a", "viewer")}
    changed = api.patch(f"/api/v1/members/{membership.code}/", {"role": "approver"}, format="json")
    assert changed.status_code == 200 and changed.json()["role"] == "approver"
    bad = api.patch(f"/api/v1/members/{membership.code}/", {"role": "owner"}, format="json")
    assert bad.status_code == 400 and "role" in bad.json()
    token = Client().post(reverse("api_token"), {"username": "viewer-a", "password": DEFAULT_PASSWORD}).json()["token"]
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert token_client.get("/api/v1/tenants/").status_code == 200
    removed = api.post(f"/api/v1/members/{membership.code}/remove/", {}, format="json")
    assert removed.status_code == 200
    assert removed.json() == {"username": "viewer-a", "sessions_ended": 0, "tokens_revoked": 1, "deactivated": True}
    assert token_client.get("/api/v1/tenants/").status_code == 401
    assert api.get(f"/api/v1/members/{membership.code}/").status_code == 404


def test_the_api_asks_to_confirm_removing_the_last_approver(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    membership = Membership.objects.get(user=it_a)
    api = as_user(cs_user)

    def one_pending(tenant: Tenant) -> int:
        return 1

    register_pending_approvals(one_pending)
    try:
        refused = api.post(f"/api/v1/members/{membership.code}/remove/", {}, format="json")
        assert refused.status_code == 409
        assert refused.json()["code"] == "last_approver" and refused.json()["pending_approvals"] == 1
        assert "1 approval is waiting" in refused.json()["detail"]
        demoted = api.patch(f"/api/v1/members/{membership.code}/", {"role": "viewer"}, format="json")
        assert demoted.status_code == 409
        assert Membership.objects.get(pk=membership.pk).role == "approver"
        confirmed = api.post(
            f"/api/v1/members/{membership.code}/remove/", {"confirm_last_approver": True}, format="json"
        )
        assert confirmed.status_code == 200
    finally:
        unregister_pending_approvals(one_pending)
    assert not Membership.objects.filter(pk=membership.pk).exists()


def test_staff_and_assignments_through_the_api(cs_user: Any, engineer: Any, tenant_a: Any, it_a: Any) -> None:
    from django.contrib.auth.models import Group

    from portal.roles import VENDOR_ADMINS
    from tests.factories import UserFactory

    admin = UserFactory(username="vadmin", groups=[VENDOR_ADMINS])
    assert Group.objects.get(name=VENDOR_ADMINS).permissions.filter(codename="manage_staff").exists()
    admin_api = as_user(admin)
    staff = admin_api.get("/api/v1/staff/").json()["results"]
    assert {s["username"] for s in staff} >= {"cs", "engineer", "vadmin"}
    assert "it-alpha" not in {s["username"] for s in staff}
    invited = admin_api.post("/api/v1/staff/invite/", {"email": "cara@vendor.example.com", "role": "customer_success"})
    assert invited.status_code == 201 and invited.json()["kind"] == "staff" and invited.json()["tenant"] is None
    duplicate = admin_api.post("/api/v1/staff/invite/", {"email": "cara@vendor.example.com", "role": "engineer"})
    assert duplicate.status_code == 400 and "Resend" in duplicate.json()["detail"]
    assert admin_api.get(f"/api/v1/invitations/{invited.json()['code']}/").status_code == 200
    assert as_user(cs_user).get(f"/api/v1/invitations/{invited.json()['code']}/").status_code == 404

    # Customer success assign engineers (and look them up to do so), but cannot invite or deactivate.
    cs_api = as_user(cs_user)
    engineer_code = selectors.person_code(engineer)
    assert cs_api.get(f"/api/v1/staff/{engineer_code}/").json()["username"] == "engineer"
    assert (
        cs_api.post("/api/v1/staff/invite/", {"email": "z@vendor.example.com", "role": "engineer"}).status_code == 403
    )
    assigned = cs_api.post(
        "/api/v1/assignments/", {"tenant": str(tenant_a.code), "person": str(engineer_code)}, format="json"
    )
    assert assigned.status_code == 201 and assigned.json()["username"] == "engineer"
    assert list(selectors.staff_assigned_to(tenant_a)) == [engineer]
    again = cs_api.post(
        "/api/v1/assignments/", {"tenant": str(tenant_a.code), "person": str(engineer_code)}, format="json"
    )
    assert again.status_code == 400 and "already" in again.json()["detail"]
    hospital = cs_api.post(
        "/api/v1/assignments/",
        {"tenant": str(tenant_a.code), "person": str(selectors.person_code(it_a))},
        format="json",
    )
    assert hospital.status_code == 400 and "person" in hospital.json()
    # Hospital IT see who is assigned to their hospital, and cannot change it.
    it_api = as_user(it_a)
    assert [a["username"] for a in it_api.get("/api/v1/assignments/").json()["results"]] == ["engineer"]
    assignment = StaffAssignment.objects.get(user=engineer)
    assert it_api.delete(f"/api/v1/assignments/{assignment.code}/").status_code == 403
    assert cs_api.delete(f"/api/v1/assignments/{assignment.code}/").status_code == 204
    assert AuditEvent.objects.filter(action="staff.unassign", tenant=tenant_a).exists()

    deactivated = admin_api.post(f"/api/v1/staff/{engineer_code}/deactivate/")
    assert deactivated.status_code == 200 and deactivated.json()["username"] == "engineer"
    assert not get_user_model().objects.get(pk=engineer.pk).is_active
    twice = admin_api.post(f"/api/v1/staff/{engineer_code}/deactivate/")
    assert twice.status_code == 400 and "already" in twice.json()["detail"]


def test_tenant_patch_requires_two_factor(cs_user: Any, tenant_a: Any, it_a: Any) -> None:
    assert as_user(it_a).patch(f"/api/v1/tenants/{tenant_a.code}/", {"require_two_factor": True}).status_code == 403
    response = as_user(cs_user).patch(f"/api/v1/tenants/{tenant_a.code}/", {"require_two_factor": True}, format="json")
    assert response.status_code == 200 and response.json()["require_two_factor"] is True
    bad = as_user(cs_user).patch(f"/api/v1/tenants/{tenant_a.code}/", {"timezone": "Mars/Olympus"}, format="json")
    assert bad.status_code == 400
    assert Tenant.objects.get(pk=tenant_a.pk).timezone == tenant_a.timezone


def test_the_openapi_schema_lists_every_people_operation(cs_user: Any) -> None:
    schema = as_user(cs_user).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    expected = {
        "/api/v1/members/": {"get"},
        "/api/v1/members/{code}/": {"get", "patch"},
        "/api/v1/members/{code}/remove/": {"post"},
        "/api/v1/invitations/": {"get", "post"},
        "/api/v1/invitations/{code}/": {"get"},
        "/api/v1/invitations/{code}/resend/": {"post"},
        "/api/v1/invitations/{code}/revoke/": {"post"},
        "/api/v1/invitations/accept/": {"post"},
        "/api/v1/staff/": {"get"},
        "/api/v1/staff/{code}/": {"get"},
        "/api/v1/staff/invite/": {"post"},
        "/api/v1/staff/{code}/deactivate/": {"post"},
        "/api/v1/assignments/": {"get", "post"},
        "/api/v1/assignments/{code}/": {"get", "delete"},
        "/api/v1/tenants/{code}/": {"get", "patch"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    accept = paths["/api/v1/invitations/accept/"]["post"]
    assert {"token", "full_name", "password"} <= set(
        schema["components"]["schemas"]["AcceptInputRequest"]["properties"]
    )
    assert "201" in accept["responses"]
