"""Reads of notifications: a person only ever reaches their own; anyone else's is a 404."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import Http404

from portal.access import User
from portal.notifications.models import Notification


def notifications_for(user: User, *, unread: bool | None = None) -> QuerySet[Notification]:
    """The user's own notifications, newest first; only the unread (or read) ones when asked."""
    if not user.is_authenticated:
        return Notification.objects.none()
    rows = Notification.objects.filter(recipient_id=user.pk).select_related("tenant")
    if unread is not None:
        rows = rows.filter(read_at__isnull=unread)
    return rows.order_by("-created_at", "-id")


def get_notification_for_user(user: User, code: uuid.UUID | str) -> Notification:
    """The user's notification with this code, else 404 (another person's looks like a missing one)."""
    try:
        return notifications_for(user).get(code=code)
    except (Notification.DoesNotExist, ValueError):
        raise Http404("No such notification.") from None


def unread_count(user: User) -> int:
    """How many of the user's notifications are unread (the header's count)."""
    return notifications_for(user, unread=True).count()
