"""Sessions and accounts: automatic logoff, lockout, the staff second factor, re-authentication, passwords."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import clear_url_caches, path, reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import twofactor
from portal.middleware import LOGIN_AT, SEEN_AT
from portal.models import AuditEvent
from portal.reauth import require_recent_auth
from tests import route_matrix
from tests.conftest import authenticator_for, client_for
from tests.factories import DEFAULT_PASSWORD

pytestmark = pytest.mark.django_db


def totp_code(device: TOTPDevice) -> str:
    """The code an authenticator app would show now for this device."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return f"{totp.token():0{device.digits}d}"


def password_login(username: str) -> Client:
    client = Client()
    response = client.post(reverse("login"), {"username": username, "password": DEFAULT_PASSWORD})
    assert response.status_code == 302, response.content
    return client


def shift_session(client: Client, **seconds_ago: float) -> None:
    session = client.session
    for key, ago in seconds_ago.items():
        session[key] = time.time() - ago
    session.save()


# --- Automatic logoff --------------------------------------------------------------------------------


def test_an_idle_session_is_logged_out(it_a: Any, settings: Any) -> None:
    settings.SESSION_IDLE_TIMEOUT = 600
    client = client_for(it_a)
    assert client.get(reverse("dashboard")).status_code == 200
    shift_session(client, **{SEEN_AT: 601})
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    event = AuditEvent.objects.filter(action="auth.logout").latest("id")
    assert (event.actor, event.detail["reason"]) == (it_a, "idle")
    # Logged out for good: the next request is anonymous too.
    assert client.get(reverse("dashboard")).status_code == 302
    assert "without activity" in client.get(reverse("login")).content.decode()


def test_htmx_polling_does_not_keep_a_session_alive(it_a: Any, settings: Any) -> None:
    settings.SESSION_IDLE_TIMEOUT = 600
    client = client_for(it_a)
    shift_session(client, **{SEEN_AT: 500})
    assert client.get(reverse("dashboard"), headers={"HX-Request": "true"}).status_code == 200
    shift_session(client, **{SEEN_AT: 601})
    response = client.get(reverse("dashboard"), headers={"HX-Request": "true"})
    assert response.status_code == 200 and response["HX-Redirect"].startswith(reverse("login"))


def test_activity_keeps_a_session_alive_until_the_absolute_cap(it_a: Any, settings: Any) -> None:
    settings.SESSION_IDLE_TIMEOUT = 600
    settings.SESSION_COOKIE_AGE = 3600
    client = client_for(it_a)
    shift_session(client, **{LOGIN_AT: 3000, SEEN_AT: 500})
    assert client.get(reverse("dashboard")).status_code == 200  # a person's request: activity
    shift_session(client, **{LOGIN_AT: 3601})
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert AuditEvent.objects.filter(action="auth.logout").latest("id").detail["reason"] == "absolute"


def test_an_expired_session_gets_401_from_the_api(it_a: Any, settings: Any) -> None:
    settings.SESSION_IDLE_TIMEOUT = 600
    client = client_for(it_a)
    shift_session(client, **{SEEN_AT: 601})
    response = client.get("/api/v1/tenants/")
    assert response.status_code == 401
    assert "log in again" in response.json()["detail"].lower()


# --- Lockout --------------------------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account(it_a: Any) -> None:
    client = Client(REMOTE_ADDR="198.51.100.9")
    for _ in range(4):
        response = client.post(reverse("login"), {"username": it_a.username, "password": "not-the-password"})
        assert response.status_code == 200  # the form again, with the error
    fifth = client.post(reverse("login"), {"username": it_a.username, "password": "not-the-password"})
    assert fifth.status_code == 429
    # Now even the right password, from another address, is refused: the account is locked.
    other = Client(REMOTE_ADDR="192.0.2.44")
    locked = other.post(reverse("login"), {"username": it_a.username, "password": DEFAULT_PASSWORD})
    assert locked.status_code == 429
    assert "locked" in locked.content.decode()
    assert other.get(reverse("dashboard")).status_code == 302  # not logged in
    assert AuditEvent.objects.filter(action="auth.locked_out", actor_label=it_a.username).exists()
    # The API token endpoint honours the same lock, with JSON.
    api = other.post("/api/v1/auth/token/", {"username": it_a.username, "password": DEFAULT_PASSWORD})
    assert api.status_code == 429 and api.json()["code"] == "locked"


def test_four_wrong_passwords_then_the_right_one_still_logs_in(it_a: Any) -> None:
    client = Client()
    for _ in range(4):
        client.post(reverse("login"), {"username": it_a.username, "password": "not-the-password"})
    response = client.post(reverse("login"), {"username": it_a.username, "password": DEFAULT_PASSWORD})
    assert response.status_code == 302 and response["Location"] == reverse("my_work")  # the first page after login


# --- Two-factor ---------------------------------------------------------------------------------------


def test_staff_without_a_second_factor_reach_nothing_but_the_two_factor_pages(
    tenant_a: Any, tenant_b: Any, cs_user: Any
) -> None:
    world = route_matrix.build_world(tenant_a=tenant_a, tenant_b=tenant_b)
    client = password_login(cs_user.username)
    open_routes = {"login", "logout", "two_factor_verify", "two_factor_setup", "api_token"}
    tried = 0
    for name, calls in route_matrix.ROUTES.items():
        if name in open_routes:
            continue
        for call in calls:
            url = call.url(world)
            response = client.generic(call.method, url, content_type="application/json")
            tried += 1
            if call.kind == "api" or url.startswith("/api/"):
                assert response.status_code == 403, (name, response.status_code)
                assert "two-factor" in response.json()["detail"]
            else:
                assert response.status_code == 302, (name, response.status_code)
                assert response["Location"].startswith(reverse("two_factor_verify")), (name, response["Location"])
    assert tried > 30
    # Admin pages too.
    assert client.get("/admin/").status_code == 302
    # The verify page itself works, and a right code opens everything.
    assert client.get(reverse("two_factor_verify")).status_code == 200
    wrong = client.post(reverse("two_factor_verify"), {"otp_token": "000000x"})
    assert wrong.status_code == 200 and "not right" in wrong.content.decode()
    device = authenticator_for(cs_user)
    device.throttle_reset()  # django-otp makes the next try wait a second after a wrong code
    response = client.post(reverse("two_factor_verify"), {"otp_token": totp_code(device), "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get(reverse("dashboard")).status_code == 200
    assert AuditEvent.objects.filter(action="auth.2fa_failed", actor=cs_user).exists()
    assert AuditEvent.objects.filter(action="auth.2fa_verified", actor=cs_user).exists()


def test_staff_without_a_device_must_enrol_one_first(engineer: Any) -> None:
    TOTPDevice.objects.filter(user=engineer).delete()
    client = password_login(engineer.username)
    response = client.get(reverse("dashboard"))
    assert response["Location"].startswith(reverse("two_factor_setup"))
    page = client.get(reverse("two_factor_setup"))
    assert page.status_code == 200 and b"<svg" in page.content
    device = TOTPDevice.objects.get(user=engineer, confirmed=False)
    assert client.post(reverse("two_factor_setup"), {"otp_token": "123"}).status_code == 200
    device.refresh_from_db()
    device.throttle_reset()  # django-otp makes the next try wait a second after a wrong code
    done = client.post(reverse("two_factor_setup"), {"otp_token": totp_code(device), "next": "/"})
    assert done.status_code == 302
    device.refresh_from_db()
    assert device.confirmed
    assert client.get(reverse("dashboard")).status_code == 200


def test_a_password_alone_cannot_enrol_a_new_authenticator(cs_user: Any) -> None:
    client = password_login(cs_user.username)
    response = client.get(reverse("two_factor_setup"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("two_factor_verify"))


def test_backup_codes_work_once(cs_user: Any) -> None:
    codes = twofactor.issue_backup_codes(user=cs_user, count=2)
    first = password_login(cs_user.username)
    assert first.post(reverse("two_factor_verify"), {"otp_token": codes[0]}).status_code == 302
    assert first.get(reverse("dashboard")).status_code == 200
    second = password_login(cs_user.username)
    assert second.post(reverse("two_factor_verify"), {"otp_token": codes[0]}).status_code == 200  # used up


def test_hospital_it_need_no_second_factor_until_they_enrol_one(it_a: Any) -> None:
    client = password_login(it_a.username)
    assert client.get(reverse("dashboard")).status_code == 200
    authenticator_for(it_a)
    again = password_login(it_a.username)
    assert again.get(reverse("dashboard"))["Location"].startswith(reverse("two_factor_verify"))


def test_staff_need_the_second_factor_for_an_api_token(cs_user: Any, it_a: Any) -> None:
    client = Client()
    url = reverse("api_token")
    refused = client.post(url, {"username": cs_user.username, "password": DEFAULT_PASSWORD})
    assert refused.status_code == 400 and "otp_token" in refused.json()
    code = totp_code(authenticator_for(cs_user))
    granted = client.post(url, {"username": cs_user.username, "password": DEFAULT_PASSWORD, "otp_token": code})
    assert granted.status_code == 200 and granted.json()["token"]
    hospital = client.post(url, {"username": it_a.username, "password": DEFAULT_PASSWORD})
    assert hospital.status_code == 200


# --- Re-authentication before raw PHI ------------------------------------------------------------------


@login_required
@require_recent_auth
def raw_payload_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("RAW-PHI")


@pytest.fixture
def phi_route(settings: Any) -> str:
    import portal.urls

    urlconf = types.ModuleType("urlconf_with_phi")
    urlconf.urlpatterns = [*portal.urls.urlpatterns, path("raw/", raw_payload_view, name="raw_test")]  # type: ignore[attr-defined]
    settings.ROOT_URLCONF = urlconf
    clear_url_caches()
    yield "/raw/"
    clear_url_caches()


def test_raw_phi_needs_a_fresh_password_and_code(phi_route: str, engineer: Any, settings: Any) -> None:
    client = client_for(engineer)
    response = client.get(phi_route)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("reauthenticate"))
    assert "RAW-PHI" not in response.content.decode()
    wrong = client.post(reverse("reauthenticate"), {"password": "nope", "otp_token": "1", "next": phi_route})
    assert wrong.status_code == 200 and b"not right" in wrong.content
    code = totp_code(authenticator_for(engineer))
    ok = client.post(reverse("reauthenticate"), {"password": DEFAULT_PASSWORD, "otp_token": code, "next": phi_route})
    assert ok.status_code == 302 and ok["Location"] == phi_route
    assert client.get(phi_route).content == b"RAW-PHI"
    assert AuditEvent.objects.filter(action="auth.reauthenticated", actor=engineer).exists()
    # It lasts REAUTH_MAX_AGE only.
    session = client.session
    session["portal_reauth_at"] = time.time() - settings.REAUTH_MAX_AGE - 1
    session.save()
    assert client.get(phi_route).status_code == 302


def test_an_offsite_next_is_ignored_after_reauthentication(it_a: Any) -> None:
    client = client_for(it_a)
    response = client.post(reverse("reauthenticate"), {"password": DEFAULT_PASSWORD, "next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/"


# --- Passwords ---------------------------------------------------------------------------------------------


def test_password_validators_refuse_weak_passwords(it_a: Any) -> None:
    client = client_for(it_a)
    url = reverse("password_change")
    for weak, reason in (("short-1", "too short"), ("password1234", "too common"), ("48213957602341", "numeric")):
        response = client.post(url, {"old_password": DEFAULT_PASSWORD, "new_password1": weak, "new_password2": weak})
        assert response.status_code == 200, weak
        assert reason in response.content.decode(), (weak, reason)
    good = "plum-orbit-lantern-42"
    response = client.post(url, {"old_password": DEFAULT_PASSWORD, "new_password1": good, "new_password2": good})
    assert response.status_code == 302
    it_a.refresh_from_db()
    assert it_a.check_password(good)
    assert AuditEvent.objects.filter(action="auth.password_changed", actor=it_a).exists()


def test_the_demo_staff_get_backup_codes_that_pass_the_second_factor() -> None:
    from onboarding import demo

    demo.seed()
    codes = demo.backup_codes()
    assert sorted(codes) == ["cs", "engineer"]  # hospital IT need none
    client = Client()
    client.post(reverse("login"), {"username": "cs", "password": demo.DEMO_PASSWORD})
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("two_factor_verify"))
    assert client.post(reverse("two_factor_verify"), {"otp_token": codes["cs"][0]}).status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
    assert demo.backup_codes()["cs"] != codes["cs"]  # each start prints new ones


def test_the_test_helper_marks_a_session_reauthenticated(phi_route: str, engineer: Any) -> None:
    from tests.conftest import reauthenticated

    client = client_for(engineer)
    assert client.get(phi_route).status_code == 302
    assert reauthenticated(client).get(phi_route).content == b"RAW-PHI"


def test_the_demo_prints_ten_backup_codes_and_says_how_to_get_more() -> None:
    import io

    from django.core.management import call_command

    from onboarding import demo

    out = io.StringIO()
    call_command("demo", "--codes", stdout=out)
    printed = out.getvalue()
    assert "manage.py demo --codes" in printed and "New backup codes" in printed
    lines = printed.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  cs "))
    cs_codes = lines[at].split()[1:] + lines[at + 1].split()  # printed on two lines of five
    assert len(cs_codes) == demo.BACKUP_CODES == 10
    # They are the codes that work: ten sign-ins, not five.
    for code in cs_codes:
        client = Client()
        client.post(reverse("login"), {"username": "cs", "password": demo.DEMO_PASSWORD})
        assert client.post(reverse("two_factor_verify"), {"otp_token": code}).status_code == 302
        assert client.get(reverse("dashboard")).status_code == 200
