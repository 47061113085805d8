"""Notifications: idempotent on the event's key, email by preference, sent at most once, each person's own."""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from portal.models import AuditEvent
from portal.notifications import retention, services
from portal.notifications.models import EmailDelivery, Notification, NotificationKind, NotificationPreference
from portal.notifications.services import NotificationError, notify, notify_address
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _locmem_email(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def _run_failed(recipients: list[Any], tenant: Any, key: str = "run:1:failed", **extra: Any) -> list[Notification]:
    return notify(
        kind=NotificationKind.RUN_FAILED,
        recipients=recipients,
        subject=extra.pop("subject", "Validate failed"),
        body=extra.pop("body", "The validate step of Alpha Epic failed."),
        link=extra.pop("link", "/runs/00000000-0000-4000-8000-000000000001/"),
        key=key,
        tenant=tenant,
        **extra,
    )


def _send_all() -> None:
    for delivery_id in EmailDelivery.objects.filter(state="pending").values_list("pk", flat=True):
        services.deliver_email(delivery_id=delivery_id)


# --- notify -------------------------------------------------------------------------------------------


def test_the_same_key_twice_makes_one_notification_and_one_email(
    it_a: Any, tenant_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        first = _run_failed([it_a], tenant_a)
        second = _run_failed([it_a], tenant_a)
    assert len(first) == 1 and second == []
    assert Notification.objects.filter(recipient=it_a).count() == 1
    assert EmailDelivery.objects.count() == 1
    assert len(callbacks) == 1  # one task queued, for the one email
    delivery = EmailDelivery.objects.get()
    assert services.deliver_email(delivery_id=delivery.pk).state == "sent"
    assert services.deliver_email(delivery_id=delivery.pk).state == "skipped"  # a second delivery sends nothing
    assert len(mail.outbox) == 1
    sent = mail.outbox[0]
    assert sent.to == [it_a.email]
    assert sent.subject == "[Alpha Medical Center] Validate failed"
    assert "http://127.0.0.1:8000/runs/00000000-0000-4000-8000-000000000001/" in sent.body
    assert "Hospital: Alpha Medical Center" in sent.body
    assert "http://127.0.0.1:8000/account/notifications/" in sent.body
    assert sent.extra_headers["Auto-Submitted"] == "auto-generated"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.task_runs, delivery.body) == ("sent", 1, 2, "")
    assert delivery.sent_at is not None


def test_the_same_key_later_in_another_transaction_still_makes_nothing(it_a: Any, tenant_a: Any) -> None:
    _run_failed([it_a], tenant_a)
    assert _run_failed([it_a], tenant_a) == []
    # A person added to the audience later still gets the event once.
    colleague = UserFactory(username="colleague")
    (made,) = _run_failed([it_a, colleague], tenant_a)
    assert made.recipient == colleague
    assert Notification.objects.count() == 2


def test_a_clash_leaves_the_callers_transaction_usable(it_a: Any, tenant_a: Any) -> None:
    from django.db import transaction

    with transaction.atomic():
        _run_failed([it_a], tenant_a)
        _run_failed([it_a], tenant_a)
        # Were the transaction broken by the duplicate insert, this query would raise.
        assert Notification.objects.count() == 1


def test_email_off_for_a_kind_still_puts_it_in_the_inbox(it_a: Any, tenant_a: Any) -> None:
    services.set_email_preferences(user=it_a, email={"run_failed": False})
    (item,) = _run_failed([it_a], tenant_a)
    assert item.unread
    assert not EmailDelivery.objects.exists()
    # Other kinds still email.
    notify(kind="approval_requested", recipients=[it_a], subject="Sign-off requested", body="b", link="/", key="a:1")
    _send_all()
    assert [m.subject for m in mail.outbox] == ["Sign-off requested"]


def test_people_without_an_address_and_inactive_people(tenant_a: Any) -> None:
    no_address = UserFactory(username="no-address", email="")
    gone = UserFactory(username="gone")
    gone.is_active = False
    gone.save()
    made = _run_failed([no_address, gone, no_address], tenant_a)
    assert [n.recipient for n in made] == [no_address]
    assert not EmailDelivery.objects.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "party"}, "is not a kind of notification"),
        ({"key": "  "}, "idempotency key"),
        ({"subject": ""}, "subject"),
        ({"link": "https://evil.example/"}, "links to a page of this site"),
        ({"link": "//evil.example/x"}, "links to a page of this site"),
        ({"link": "/runs/x\r\nBcc: a@b"}, "links to a page of this site"),
    ],
)
def test_a_badly_built_notification_is_refused_and_makes_nothing(
    it_a: Any, change: dict[str, str], message: str
) -> None:
    kwargs: dict[str, Any] = {
        "kind": "run_failed",
        "recipients": [it_a],
        "subject": "s",
        "body": "b",
        "link": "/",
        "key": "k",
        **change,
    }
    with pytest.raises(NotificationError, match=message):
        notify(**kwargs)
    assert not Notification.objects.exists()


def test_an_invitee_without_an_account_is_emailed_once(tenant_a: Any) -> None:
    kwargs: dict[str, Any] = {
        "kind": NotificationKind.INVITATION,
        "email": "new.person@alpha.example.org",
        "subject": "You are invited to the onboarding portal",
        "body": "Alpha Medical Center invites you to approve its EHR onboarding.",
        "link": "http://127.0.0.1:8000/invitations/single-use-token/",
        "key": "invitation:abc",
        "tenant": tenant_a,
    }
    delivery = notify_address(**kwargs)
    assert delivery is not None
    assert notify_address(**kwargs) is None
    assert not Notification.objects.exists()
    # Stored encrypted while it waits, since the link is a single-use secret.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT body FROM portal_emaildelivery WHERE id = %s", [delivery.pk])
        (stored,) = cursor.fetchone()
    assert "single-use-token" not in stored
    _send_all()
    (sent,) = mail.outbox
    assert sent.to == ["new.person@alpha.example.org"]
    assert "http://127.0.0.1:8000/invitations/single-use-token/" in sent.body
    assert "notification settings" not in sent.body  # no preferences for someone without an account
    delivery.refresh_from_db()
    assert delivery.body == ""  # the link does not outlive the email


def test_an_invitation_to_a_bad_address_is_refused() -> None:
    with pytest.raises(NotificationError, match="is not an email address"):
        notify_address(kind="invitation", email="not an address", subject="s", body="b", link="/", key="k")
    assert not EmailDelivery.objects.exists()


# --- Sending: failures, retries, the sweep --------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_mail_server_is_retried_with_backoff_then_failed(
    it_a: Any, tenant_a: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", _closed_port()
    settings.EMAIL_HOST_PASSWORD = "smtp-Pa55word-never-logged"
    settings.NOTIFICATION_EMAIL_MAX_ATTEMPTS = 2
    _run_failed([it_a], tenant_a)
    delivery = EmailDelivery.objects.get()
    with caplog.at_level(logging.INFO):
        first = services.deliver_email(delivery_id=delivery.pk)
        delivery.refresh_from_db()
        assert (first.state, first.retry_in) == ("retry", 30.0)
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert "ConnectionRefusedError" in delivery.last_error
        assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=20)
        second = services.deliver_email(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert second.state == "failed" and second.retry_in is None
    assert (delivery.state, delivery.attempts, delivery.body) == ("failed", 2, "")
    assert "smtp-Pa55word-never-logged" not in caplog.text + delivery.last_error


def test_mail_errors_are_told_apart_and_described_without_the_password(settings: Any) -> None:
    settings.EMAIL_HOST_PASSWORD = "hunter2-smtp"
    assert services.is_transient(smtplib.SMTPServerDisconnected("gone"))
    assert services.is_transient(smtplib.SMTPDataError(451, b"try again later"))
    assert services.is_transient(TimeoutError())
    assert not services.is_transient(smtplib.SMTPAuthenticationError(535, b"bad credentials hunter2-smtp"))
    assert not services.is_transient(smtplib.SMTPRecipientsRefused({"a@b": (550, b"no such user")}))
    assert services.is_transient(smtplib.SMTPRecipientsRefused({"a@b": (452, b"mailbox full")}))
    assert not services.is_transient(ValueError("bad header"))
    text = services.describe_mail_error(smtplib.SMTPAuthenticationError(535, b"bad credentials hunter2-smtp"))
    assert text == "SMTPAuthenticationError: the mail server answered 535 bad credentials [hidden]"
    assert [services.backoff_seconds(n) for n in (1, 2, 3, 10)] == [30.0, 60.0, 120.0, 1800.0]


def test_the_sweep_fails_emails_left_half_sent_and_resends_lost_ones(it_a: Any, tenant_a: Any) -> None:
    _run_failed([it_a], tenant_a, key="one")
    _run_failed([it_a], tenant_a, key="two")
    _run_failed([it_a], tenant_a, key="three")
    stuck, lost, fresh = EmailDelivery.objects.order_by("id")
    long_ago = timezone.now() - timedelta(hours=1)
    EmailDelivery.objects.filter(pk=stuck.pk).update(state="sending", claimed_at=long_ago)
    EmailDelivery.objects.filter(pk=lost.pk).update(next_attempt_at=long_ago)
    assert services.sweep_emails() == {"stuck_failed": 1, "resent": 1}
    stuck.refresh_from_db()
    assert stuck.state == "failed" and "may or may not have gone out" in stuck.last_error
    fresh.refresh_from_db()
    assert fresh.state == "pending"


# --- Retention ----------------------------------------------------------------------------------------


def test_old_notifications_and_their_emails_are_purged(it_a: Any, tenant_a: Any, settings: Any) -> None:
    settings.NOTIFICATION_RETENTION_DAYS = 60
    _run_failed([it_a], tenant_a, key="old")
    _run_failed([it_a], tenant_a, key="new")
    notify_address(kind="invitation", email="x@example.org", subject="s", body="b", link="/", key="inv-old")
    old_time = timezone.now() - timedelta(days=61)
    Notification.objects.filter(key="old").update(created_at=old_time)
    EmailDelivery.objects.filter(key="inv-old").update(created_at=old_time)
    assert retention.purge_notifications() == {"notifications": 1, "emails": 2}
    assert list(Notification.objects.values_list("key", flat=True)) == ["new"]
    assert list(EmailDelivery.objects.values_list("key", flat=True)) == ["new"]
    event = AuditEvent.objects.get(action="notification.purge")
    assert event.detail["purged"] == {"notifications": 1, "emails": 2}


def _import_settings(**env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "x" * 50, "PORTAL_VAR_DIR": "/tmp/portal-notif-settings"}
    return subprocess.run(
        [sys.executable, "-c", "import portal.settings"],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORTAL_BASE_URL": "onboarding.example.com"}, "PORTAL_BASE_URL must start with http:// or https://"),
        ({"EMAIL_USE_TLS": "yes", "EMAIL_USE_SSL": "yes"}, "Set only one of EMAIL_USE_TLS"),
        ({"EMAIL_PORT": "smtp"}, "EMAIL_PORT must be a whole number"),
        ({"NOTIFICATION_RETENTION_DAYS": "0"}, "NOTIFICATION_RETENTION_DAYS must be at least 1"),
    ],
)
def test_bad_email_settings_stop_the_process_with_the_variables_name(env: dict[str, str], message: str) -> None:
    result = _import_settings(**env)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_tasks_are_routed_and_scheduled(settings: Any) -> None:
    from portal.celery import app
    from portal.tasks import deliver_notification_email

    assert settings.CELERY_TASK_ROUTES["portal.deliver_notification_email"] == {"queue": "notifications"}
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"portal.purge_old_notifications", "portal.sweep_notification_emails"} <= schedule
    assert deliver_notification_email.name in app.tasks
    assert (deliver_notification_email.soft_time_limit, deliver_notification_email.time_limit) == (60, 90)
    assert deliver_notification_email.soft_time_limit > settings.EMAIL_TIMEOUT


# --- Pages --------------------------------------------------------------------------------------------


def test_the_inbox_shows_the_owner_their_items_and_nobody_else(it_a: Any, it_b: Any, tenant_a: Any) -> None:
    _run_failed([it_a], tenant_a, subject="Validate failed at Alpha")
    owner = client_for(it_a).get("/inbox/")
    assert owner.status_code == 200
    body = owner.content.decode()
    assert "Validate failed at Alpha" in body
    assert ">Unread<" in body  # said in words, not only by colour
    assert 'href="/runs/00000000-0000-4000-8000-000000000001/"' in body
    other = client_for(it_b).get("/inbox/")
    assert "Validate failed at Alpha" not in other.content.decode()
    assert 'data-testid="inbox-empty"' in other.content.decode()


def test_another_persons_notification_is_a_404_and_stays_unread(
    it_a: Any, it_b: Any, cs_user: Any, tenant_a: Any
) -> None:
    (item,) = _run_failed([it_a], tenant_a)
    for intruder in (it_b, cs_user):
        response = client_for(intruder).post(f"/inbox/{item.code}/read/")
        assert response.status_code == 404
        api = client_for(intruder).get(f"/api/v1/notifications/{item.code}/")
        assert api.status_code == 404
    item.refresh_from_db()
    assert item.unread


def test_marking_read_one_then_all(it_a: Any, tenant_a: Any) -> None:
    first, second, _third = (_run_failed([it_a], tenant_a, key=f"k{n}")[0] for n in range(3))
    client = client_for(it_a)
    response = client.post(f"/inbox/{first.code}/read/", {"page": "1"})
    assert response.status_code == 302 and response["Location"] == "/inbox/?page=1"
    first.refresh_from_db()
    assert not first.unread
    assert AuditEvent.objects.filter(action="notification.read", actor=it_a).count() == 1
    # htmx gets the item back, read now, and the header's count out of band.
    partial = client.post(f"/inbox/{second.code}/read/", headers={"HX-Request": "true"})
    text = partial.content.decode()
    assert partial.status_code == 200 and "<html" not in text
    assert f'id="n-{second.code}"' in text and ">Read<" in text
    assert 'hx-swap-oob="true"' in text and 'data-testid="inbox-unread">1<' in text
    response = client.post("/inbox/read-all/")
    assert response.status_code == 302
    assert not Notification.objects.filter(recipient=it_a, read_at__isnull=True).exists()
    event = AuditEvent.objects.get(action="notification.read_all")
    assert event.detail == {"count": 1}


def test_the_header_shows_the_unread_count_on_every_page(it_a: Any, tenant_a: Any) -> None:
    client = client_for(it_a)
    page = client.get("/").content.decode()
    assert 'aria-label="Inbox, 0 unread"' in page and 'data-testid="inbox-unread"' not in page
    _run_failed([it_a], tenant_a)
    for url in ("/", "/account/", "/inbox/"):
        page = client.get(url).content.decode()
        assert 'aria-label="Inbox, 1 unread"' in page
        assert '<span class="badge count" data-testid="inbox-unread">1</span>' in page
    assert "inbox-link" not in client_for_anonymous_login_page()


def client_for_anonymous_login_page() -> str:
    from django.test import Client

    return Client().get("/login/").content.decode()


def test_the_inbox_pages_newest_first(it_a: Any, tenant_a: Any) -> None:
    for n in range(30):
        _run_failed([it_a], tenant_a, key=f"k{n}", subject=f"Event number {n:02d}")
    client = client_for(it_a)
    first = client.get("/inbox/").content.decode()
    assert first.count('data-testid="notification"') == 25
    assert first.index("Event number 29") < first.index("Event number 28")
    assert "Event number 04" not in first
    second = client.get("/inbox/?page=2").content.decode()
    assert second.count('data-testid="notification"') == 5 and "Event number 00" in second
    Notification.objects.filter(key__in=[f"k{n}" for n in range(28)]).update(read_at=timezone.now())
    unread = client.get("/inbox/?unread=1").content.decode()
    assert unread.count('data-testid="notification"') == 2


def test_preferences_page_lists_every_kind_and_saves_with_an_audit_event(it_a: Any) -> None:
    client = client_for(it_a)
    page = client.get("/account/notifications/").content.decode()
    for kind in NotificationKind:
        assert f'name="{kind.value}"' in page and kind.label in page
    assert page.count("Not available yet") == 0  # go-live monitoring sends its alert kinds now
    assert 'href="/account/notifications/"' in client.get("/account/").content.decode()
    everything_but_run_failed = {kind: "on" for kind in NotificationKind.values if kind != "run_failed"}
    response = client.post("/account/notifications/", everything_but_run_failed)
    assert response.status_code == 302
    assert services.email_preferences(it_a)["run_failed"] is False
    assert NotificationPreference.objects.filter(user=it_a).count() == 1
    event = AuditEvent.objects.get(action="notification.preferences")
    assert event.detail == {"email": {"run_failed": False}} and event.actor == it_a
    # Saving the same choices again changes nothing and records nothing.
    client.post("/account/notifications/", everything_but_run_failed)
    assert AuditEvent.objects.filter(action="notification.preferences").count() == 1


# --- API ----------------------------------------------------------------------------------------------


def test_api_lists_filters_counts_and_marks_read(it_a: Any, it_b: Any, tenant_a: Any, tenant_b: Any) -> None:
    first, second = (_run_failed([it_a], tenant_a, key=f"k{n}")[0] for n in range(2))
    _run_failed([it_b], tenant_b, key="b's own")
    client = client_for(it_a)
    listed = client.get("/api/v1/notifications/").json()
    assert [row["code"] for row in listed["results"]] == [str(second.code), str(first.code)]
    assert listed["results"][0]["tenant_name"] == "Alpha Medical Center" and listed["results"][0]["unread"] is True
    assert client.get("/api/v1/notifications/unread-count/").json() == {"unread": 2}
    read = client.post(f"/api/v1/notifications/{first.code}/read/")
    assert read.status_code == 200 and read.json()["unread"] is False and read.json()["read_at"]
    unread = client.get("/api/v1/notifications/?unread=true").json()
    assert [row["code"] for row in unread["results"]] == [str(second.code)]
    assert [r["code"] for r in client.get("/api/v1/notifications/?unread=false").json()["results"]] == [str(first.code)]
    bad = client.get("/api/v1/notifications/?unread=maybe")
    assert bad.status_code == 400 and "true or false" in json.dumps(bad.json())
    assert client.post("/api/v1/notifications/read-all/").json() == {"marked_read": 1}
    assert client.get("/api/v1/notifications/unread-count/").json() == {"unread": 0}
    assert client_for(it_b).get("/api/v1/notifications/unread-count/").json() == {"unread": 1}


def test_api_reads_and_updates_preferences(it_a: Any) -> None:
    client = client_for(it_a)
    url = "/api/v1/account/notification-preferences/"
    rows = client.get(url).json()
    assert [row["kind"] for row in rows] == NotificationKind.values
    assert all(row["email"] for row in rows)
    assert {row["kind"] for row in rows if not row["available"]} == set()
    changed = client.patch(url, {"email": {"approval_reminder": False}}, content_type="application/json")
    assert changed.status_code == 200
    assert {row["kind"]: row["email"] for row in changed.json()}["approval_reminder"] is False
    assert AuditEvent.objects.filter(action="notification.preferences", actor=it_a).count() == 1
    refused = client.patch(url, {"email": {"birthday": True}}, content_type="application/json")
    assert refused.status_code == 400 and "Unknown kinds: birthday" in json.dumps(refused.json())
    assert services.email_preferences(it_a)["approval_reminder"] is False


def test_api_is_in_the_openapi_schema(it_a: Any) -> None:
    schema = client_for(it_a).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/notifications/",
        "/api/v1/notifications/{code}/",
        "/api/v1/notifications/{code}/read/",
        "/api/v1/notifications/read-all/",
        "/api/v1/notifications/unread-count/",
        "/api/v1/account/notification-preferences/",
    ):
        assert path in paths, path
    assert any(p["name"] == "unread" for p in paths["/api/v1/notifications/"]["get"]["parameters"])
    assert set(paths["/api/v1/account/notification-preferences/"]) >= {"get", "patch"}
