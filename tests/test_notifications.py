"""Notifications: idempotent on the event's key, email by preference, sent at most once."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail

from portal.notifications import services
from portal.notifications.models import EmailDelivery, Notification, NotificationKind
from portal.notifications.services import NotificationError, notify, notify_address

pytestmark = pytest.mark.django_db


def _approval_requested(recipients: list[Any], tenant: Any, key: str = "approval:1:requested") -> list[Notification]:
    return notify(
        kind=NotificationKind.APPROVAL_REQUESTED,
        recipients=recipients,
        subject="Mapping sign-off requested",
        body="Customer success asks you to sign off the mapping of Alpha Epic.",
        link="/inbox/",
        key=key,
        tenant=tenant,
    )


def test_the_same_key_twice_makes_one_notification_and_one_email(
    it_a: Any, tenant_a: Any, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with django_capture_on_commit_callbacks() as callbacks:
        first = _approval_requested([it_a], tenant_a)
        second = _approval_requested([it_a], tenant_a)
    assert len(first) == 1 and second == []
    assert Notification.objects.filter(recipient=it_a).count() == 1
    assert EmailDelivery.objects.count() == 1
    assert len(callbacks) == 1  # one task queued, for the one email
    delivery = EmailDelivery.objects.get()
    services.deliver_email(delivery_id=delivery.pk)
    services.deliver_email(delivery_id=delivery.pk)  # a second delivery of the task sends nothing
    assert len(mail.outbox) == 1
    sent = mail.outbox[0]
    assert sent.to == [it_a.email]
    assert sent.subject == "[Alpha Medical Center] Mapping sign-off requested"
    assert "http://127.0.0.1:8000/inbox/" in sent.body
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.body) == ("sent", 1, "")
    assert delivery.sent_at is not None


def test_an_invitee_without_an_account_is_emailed_once(tenant_a: Any) -> None:
    kwargs: dict[str, Any] = {
        "kind": NotificationKind.INVITATION,
        "email": "new.person@alpha.example.org",
        "subject": "You are invited to the onboarding portal",
        "body": "Alpha Medical Center invites you to approve its EHR onboarding.",
        "link": "http://127.0.0.1:8000/invitations/abc/",
        "key": "invitation:abc",
        "tenant": tenant_a,
    }
    assert notify_address(**kwargs) is not None
    assert notify_address(**kwargs) is None
    assert EmailDelivery.objects.filter(notification__isnull=True).count() == 1


def test_a_link_off_this_site_is_refused(it_a: Any) -> None:
    with pytest.raises(NotificationError, match="links to a page of this site"):
        notify(kind="run_failed", recipients=[it_a], subject="s", body="b", link="https://evil.example/", key="k")
    assert not Notification.objects.exists()
