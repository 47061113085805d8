"""API tokens (django-rest-knox): issued with an expiry, listed and revoked by their owner, ended on removal.

Everything goes through HTTP as an API client would: the anonymous token endpoint (with vendor
staff's second factor and django-axes' lockout), the token list and revocation in the API and on the
account page.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from knox.models import AuthToken
from rest_framework.test import APIClient

from portal import tokens
from portal.models import AuditEvent
from tests.conftest import authenticator_for, client_for
from tests.factories import DEFAULT_PASSWORD
from tests.test_sessions import totp_code

pytestmark = pytest.mark.django_db


def obtain(username: str, password: str = DEFAULT_PASSWORD, **extra: str) -> Any:
    return Client().post(
        reverse("api_token"), {"username": username, "password": password, **extra}, content_type="application/json"
    )


def api_with(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api


def test_a_token_expires_after_the_configured_time_and_is_stored_hashed(it_a: Any) -> None:
    before = timezone.now()
    response = obtain(it_a.username)
    assert response.status_code == 200, response.content
    body = response.json()
    expires = parse_datetime(body["expires_at"])
    assert expires is not None
    ttl = timedelta(seconds=settings.API_TOKEN_TTL)
    assert before + ttl <= expires <= timezone.now() + ttl
    assert settings.REST_KNOX["TOKEN_TTL"] == ttl
    api = api_with(body["token"])
    assert api.get("/api/v1/tenants/").status_code == 200
    # Only a hash is kept: the key is in no column.
    stored = AuthToken.objects.get(user=it_a)
    assert body["token"] not in (stored.digest, stored.token_key) and tokens.token_id(stored) == body["id"]
    issued = AuditEvent.objects.get(action="auth.api_token_issued")
    assert issued.actor == it_a and issued.detail["token"] == body["id"] and body["token"] not in str(issued.detail)

    # Past its expiry the same key is refused (the expiry is moved, not waited for).
    AuthToken.objects.filter(user=it_a).update(expiry=timezone.now() - timedelta(seconds=1))
    assert api.get("/api/v1/tenants/").status_code == 401
    assert not AuthToken.objects.filter(user=it_a).exists()  # knox deletes an expired token it meets


def test_vendor_staff_need_their_second_factor_and_wrong_passwords_lock_the_account(cs_user: Any) -> None:
    refused = obtain(cs_user.username)
    assert refused.status_code == 400 and "otp_token" in refused.json()
    code = totp_code(authenticator_for(cs_user))
    granted = obtain(cs_user.username, otp_token=code)
    assert granted.status_code == 200 and api_with(granted.json()["token"]).get("/api/v1/tenants/").status_code == 200

    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert obtain(cs_user.username, password="wrong-password").status_code in (400, 429)
    locked = obtain(cs_user.username, otp_token=code)
    assert locked.status_code == 429 and locked.json()["code"] == "locked"


def test_a_person_lists_and_revokes_their_own_tokens_through_the_api(it_a: Any, it_b: Any) -> None:
    first = obtain(it_a.username).json()
    second = obtain(it_a.username).json()
    others = obtain(it_b.username).json()
    api = api_with(first["token"])
    listed = api.get(reverse("api_tokens")).json()
    assert [(t["id"], t["current"]) for t in listed] == [(second["id"], False), (first["id"], True)]
    assert all(t["expires_at"] for t in listed)
    assert "token" not in listed[0] and first["token"] not in str(listed)

    # Another person's token is a 404, exactly like a missing one.
    foreign = api.delete(reverse("api_token_detail", kwargs={"token_id": others["id"]}))
    missing = api.delete(reverse("api_token_detail", kwargs={"token_id": "0" * tokens.TOKEN_ID_LENGTH}))
    assert (foreign.status_code, foreign.content) == (
        missing.status_code,
        missing.content,
    ) and foreign.status_code == 404
    assert api_with(others["token"]).get("/api/v1/tenants/").status_code == 200

    assert api.delete(reverse("api_token_detail", kwargs={"token_id": second["id"]})).status_code == 204
    assert api_with(second["token"]).get("/api/v1/tenants/").status_code == 401
    revoked = AuditEvent.objects.get(action="auth.api_token_revoked")
    assert revoked.actor == it_a and revoked.detail["token"] == second["id"]
    # A client may end the very token it uses.
    assert api.delete(reverse("api_token_detail", kwargs={"token_id": first["id"]})).status_code == 204
    assert api.get(reverse("api_tokens")).status_code == 401


def test_the_account_page_lists_tokens_and_revokes_one(it_a: Any, it_b: Any) -> None:
    mine = obtain(it_a.username).json()
    client = client_for(it_a)
    page = client.get(reverse("account_security")).content.decode()
    assert f'data-token="{mine["id"]}"' in page and mine["token"] not in page
    assert "24 hours" in page

    revoke = reverse("api_token_revoke", kwargs={"token_id": mine["id"]})
    assert client_for(it_b).post(revoke).status_code == 404
    done = client.post(revoke, follow=True)
    assert done.status_code == 200 and "was revoked" in done.content.decode()
    assert 'data-testid="no-api-tokens"' in done.content.decode()
    assert api_with(mine["token"]).get("/api/v1/tenants/").status_code == 401


def test_a_removed_person_keeps_no_token(it_a: Any, it_b: Any) -> None:
    keys = [obtain(it_a.username).json()["token"] for _ in range(2)]
    kept = obtain(it_b.username).json()["token"]
    it_a.is_active = False
    it_a.save()
    assert not AuthToken.objects.filter(user=it_a).exists()
    assert all(api_with(key).get("/api/v1/tenants/").status_code == 401 for key in keys)
    assert api_with(kept).get("/api/v1/tenants/").status_code == 200
    ended = AuditEvent.objects.get(action="auth.api_tokens_revoked_all")
    assert ended.detail == {"tokens": 2, "user": it_a.username}
    # The function the removal of a person calls: what it ended, and nothing for someone without tokens.
    assert tokens.revoke_all_tokens(it_b) == 1 and tokens.revoke_all_tokens(it_b) == 0


def test_the_management_command_issues_a_working_token(it_a: Any) -> None:
    out = io.StringIO()
    call_command("api_token", it_a.username, stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    assert api_with(key).get("/api/v1/tenants/").status_code == 200
    call_command("api_token", it_a.username, "--revoke-all", stdout=out)
    assert "Revoked 1 API token" in out.getvalue()
    assert api_with(key).get("/api/v1/tenants/").status_code == 401
