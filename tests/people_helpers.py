"""Helpers of the people tests: read invitation emails from Django's locmem backend, make members."""

from __future__ import annotations

import re
from typing import Any

from django.core import mail

from portal.notifications import services as notifications
from portal.notifications.models import EmailDelivery
from portal.people import services as people
from tests.factories import UserFactory

LINK = re.compile(r"https?://[^/\s]+(/invitations/accept/[^\s/]+/)")


def send_pending_emails() -> int:
    """Deliver every pending email now, as the notifications worker would; returns how many were sent."""
    sent = 0
    for delivery_id in EmailDelivery.objects.filter(state="pending").order_by("pk").values_list("pk", flat=True):
        sent += notifications.deliver_email(delivery_id=delivery_id).state == "sent"
    return sent


def emails_to(address: str) -> list[Any]:
    send_pending_emails()
    return [message for message in mail.outbox if address in message.to]


def invitation_path(address: str) -> str:
    """The accept page's path from the newest invitation email to this address."""
    messages = emails_to(address)
    assert messages, f"no email to {address}"
    found = LINK.search(messages[-1].body)
    assert found, messages[-1].body
    return found.group(1)


def token_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def member(tenant: Any, role: str, username: str) -> Any:
    """A person of the tenant with this role."""
    user = UserFactory(username=username)
    people.add_member(tenant=tenant, user=user, role=role)
    return user
