"""Writes of notifications: telling people about an event, sending the emails, reading and preferences.

`notify` and `notify_address` are what the rest of the portal calls. Both run in the caller's
transaction and are idempotent on the event's key: a retried task that calls them again makes
nothing new, because a unique constraint (not a lookup first) refuses the second row. Emails are
queued only once that transaction commits, and each is sent at most once (see `deliver_email`).
"""

from __future__ import annotations

import logging
import smtplib
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from portal import audit
from portal.access import AuthUser
from portal.models import Tenant
from portal.notifications.models import EmailDelivery, Notification, NotificationKind, NotificationPreference

logger = logging.getLogger(__name__)

DELIVER_TASK = "portal.deliver_notification_email"
# A claimed email whose worker died while sending is given up after this long (the task's hard
# limit is far shorter): it may have gone out, and sending it again could make two.
SENDING_STALE_AFTER = timedelta(minutes=10)
# A pending email whose task was lost (broker down at commit) is sent again once it is this late.
PENDING_RESEND_AFTER = timedelta(minutes=2)

State = EmailDelivery.State

__all__ = ["NotificationError", "NotificationKind", "notify", "notify_address"]


class NotificationError(ValueError):
    """A notification the caller built wrongly (unknown kind, empty key, a link off this site...)."""


# --- Telling people ---------------------------------------------------------------------------------


def notify(
    *,
    kind: str,
    recipients: Iterable[AuthUser],
    subject: str,
    body: str,
    link: str,
    key: str,
    tenant: Tenant | None = None,
    actor: AuthUser | None = None,
) -> list[Notification]:
    """One inbox item per recipient, plus an email to those whose preference for `kind` allows it.

    `key` names the event ("approval:<code>:requested"); with the recipient it is unique, so calling
    again with the same key makes nothing new. Returns the notifications this call made (none if all
    existed). `subject` and `body` must hold no PHI: the hospital, the step or gate and one sentence.
    `link` is a path on this site ("/runs/<code>/"); emails carry it as an absolute URL.
    Inactive users and duplicates in `recipients` are skipped.
    """
    kind, subject, body, key = _checked(kind=kind, subject=subject, body=body, key=key)
    _check_link(link)
    people = {user.pk: user for user in recipients if user.pk is not None and user.is_active}
    if not people:
        return []
    email_off = set(
        NotificationPreference.objects.filter(user_id__in=people, kind=kind, email=False).values_list(
            "user_id", flat=True
        )
    )
    made: list[Notification] = []
    deliveries: list[int] = []
    with transaction.atomic():
        for user in people.values():
            notification = Notification(
                recipient=user, tenant=tenant, actor=actor, kind=kind, key=key, subject=subject, body=body, link=link
            )
            try:
                # A savepoint per row: a clash with an earlier call's row leaves the caller's
                # transaction usable.
                with transaction.atomic():
                    notification.save()
            except IntegrityError:
                continue
            made.append(notification)
            if user.email and user.pk not in email_off:
                delivery = EmailDelivery.objects.create(
                    notification=notification,
                    tenant=tenant,
                    kind=kind,
                    key=key,
                    to_email=user.email,
                    subject=_email_subject(subject, tenant),
                    body=_email_body(body, link=link, tenant=tenant, preferences=True),
                    next_attempt_at=timezone.now(),
                )
                deliveries.append(delivery.pk)
    for delivery_id in deliveries:
        transaction.on_commit(lambda delivery_id=delivery_id: send_email_task(delivery_id))  # type: ignore[misc]
    return made


def notify_address(
    *,
    kind: str,
    email: str,
    subject: str,
    body: str,
    link: str,
    key: str,
    tenant: Tenant | None = None,
) -> EmailDelivery | None:
    """Email someone who has no account yet (an invitation): no inbox item, only the email.

    Idempotent on (`key`, address) like `notify`; returns the delivery made, or None if this key
    already emailed this address. `link` may be a path on this site or an absolute URL under
    PORTAL_BASE_URL (an invitation's single-use link); its text is kept only until the email is sent.
    """
    kind, subject, body, key = _checked(kind=kind, subject=subject, body=body, key=key)
    _check_link(link, absolute_ok=True)
    address = email.strip()
    if "@" not in address or any(ch.isspace() for ch in address) or len(address) > 254:
        raise NotificationError(f"“{email}” is not an email address.")
    try:
        with transaction.atomic():
            delivery = EmailDelivery.objects.create(
                tenant=tenant,
                kind=kind,
                key=key,
                to_email=address,
                subject=_email_subject(subject, tenant),
                body=_email_body(body, link=link, tenant=tenant, preferences=False),
                next_attempt_at=timezone.now(),
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: send_email_task(delivery.pk))
    return delivery


def absolute_url(link: str) -> str:
    """A path on this site as a URL people can open from an email (PORTAL_BASE_URL + path)."""
    if link.startswith(settings.PORTAL_BASE_URL + "/"):
        return link
    return settings.PORTAL_BASE_URL + link


def _checked(*, kind: str, subject: str, body: str, key: str) -> tuple[str, str, str, str]:
    if kind not in NotificationKind.values:
        raise NotificationError(f"“{kind}” is not a kind of notification; use one of {NotificationKind.values}.")
    subject = " ".join(subject.split())  # one line: a newline in a header is refused by the mail layer
    if not subject or len(subject) > 200:
        raise NotificationError("A notification needs a subject of 1 to 200 characters.")
    body = body.strip()
    if not body or len(body) > 2000:
        raise NotificationError("A notification needs a body of 1 to 2000 characters.")
    key = key.strip()
    if not key or len(key) > 200:
        raise NotificationError("A notification needs an idempotency key of 1 to 200 characters naming the event.")
    return str(kind), subject, body, key


def _check_link(link: str, *, absolute_ok: bool = False) -> None:
    # Only this site's own pages: a notification must never send people somewhere else.
    on_site = link.startswith("/") and not link.startswith("//")
    under_base = absolute_ok and link.startswith(settings.PORTAL_BASE_URL + "/")
    if not (on_site or under_base) or len(link) > 500 or any(ch.isspace() or ord(ch) < 32 for ch in link):
        raise NotificationError(f"A notification links to a page of this site (a path such as /runs/…), not {link!r}.")


def _email_subject(subject: str, tenant: Tenant | None) -> str:
    return f"[{tenant.name}] {subject}" if tenant is not None else subject


def _email_body(body: str, *, link: str, tenant: Tenant | None, preferences: bool) -> str:
    lines = [body, "", "Open it in the portal:", absolute_url(link)]
    if tenant is not None:
        lines += ["", f"Hospital: {tenant.name}"]
    if preferences:
        lines += [
            "",
            "--",
            "You get this email because of your notification settings. Change them here:",
            absolute_url(reverse("notification_preferences")),
        ]
    return "\n".join(lines) + "\n"


# --- Sending emails --------------------------------------------------------------------------------


def send_email_task(delivery_id: int) -> bool:
    """Publish the delivery task. A broker outage is logged, not raised: the sweep sends it later."""
    from celery import current_app

    try:
        # By name, so this module never imports the tasks module (which imports this one).
        current_app.send_task(DELIVER_TASK, args=(delivery_id,))
    except Exception:  # any broker or transport failure; the delivery row stays pending
        logger.warning("Could not queue notification email %s; the sweep will send it", delivery_id, exc_info=True)
        return False
    return True


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery attempt did: sent, skipped (not ours to send), retry later, or failed for good."""

    state: str
    retry_in: float | None = None


def deliver_email(*, delivery_id: int) -> DeliveryOutcome:
    """Send one email at most once: claim it (pending -> sending), send, then mark it sent or failed.

    A second delivery of the task finds it no longer pending and does nothing. A temporary mail
    server error puts it back to pending with a back-off, up to NOTIFICATION_EMAIL_MAX_ATTEMPTS tries.
    """
    now = timezone.now()
    claimed = EmailDelivery.objects.filter(pk=delivery_id, state=State.PENDING).update(
        state=State.SENDING, attempts=F("attempts") + 1, task_runs=F("task_runs") + 1, claimed_at=now
    )
    if not claimed:
        EmailDelivery.objects.filter(pk=delivery_id).update(task_runs=F("task_runs") + 1)
        return DeliveryOutcome("skipped")
    delivery = EmailDelivery.objects.get(pk=delivery_id)
    message = EmailMessage(
        subject=delivery.subject,
        body=delivery.body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.to_email],
        headers={"Auto-Submitted": "auto-generated", "X-Portal-Notification": str(delivery.code)},
    )
    try:
        message.send()
    except Exception as exc:  # the mail layer raises many types; each is classified below
        error = describe_mail_error(exc)
        rows = EmailDelivery.objects.filter(pk=delivery_id, state=State.SENDING)
        if is_transient(exc) and delivery.attempts < settings.NOTIFICATION_EMAIL_MAX_ATTEMPTS:
            delay = backoff_seconds(delivery.attempts)
            rows.update(state=State.PENDING, last_error=error, next_attempt_at=now + timedelta(seconds=delay))
            logger.warning(
                "Notification email %s not sent (try %s), retrying: %s", delivery.code, delivery.attempts, error
            )
            return DeliveryOutcome("retry", retry_in=delay)
        rows.update(state=State.FAILED, last_error=error, body="")
        logger.error("Notification email %s failed after %s tries: %s", delivery.code, delivery.attempts, error)
        return DeliveryOutcome(State.FAILED)
    sent = EmailDelivery.objects.filter(pk=delivery_id)
    sent.update(state=State.SENT, sent_at=timezone.now(), last_error="", body="")
    return DeliveryOutcome(State.SENT)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the server was unreachable, hung up, timed out or answered 4xx (try later)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, smtplib.SMTPServerDisconnected | socket.timeout | ConnectionError | OSError)


def describe_mail_error(exc: BaseException) -> str:
    """A short, secret-free account of a mail failure for the delivery row and the log."""
    if isinstance(exc, smtplib.SMTPResponseException):
        detail = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        text = f"{type(exc).__name__}: the mail server answered {exc.smtp_code} {detail}"
    elif isinstance(exc, smtplib.SMTPRecipientsRefused):
        text = f"{type(exc).__name__}: the mail server refused the recipient"
    else:
        text = f"{type(exc).__name__}: {exc}"
    password = settings.EMAIL_HOST_PASSWORD
    if password:
        text = text.replace(password, "[hidden]")
    return " ".join(text.split())[:500]


def backoff_seconds(attempt: int) -> float:
    """Seconds to wait before try `attempt + 1`: 30 s, 60 s, 120 s..., at most 30 minutes."""
    return float(min(30 * 2 ** (attempt - 1), 1800))


def sweep_emails() -> dict[str, int]:
    """Re-send pending emails whose task was lost; give up on ones a dead worker left "sending".

    The stuck ones are failed, not re-sent: the worker may have handed them to the server before it
    died, and two emails are worse than a visible failure.
    """
    moment = timezone.now()
    stuck = EmailDelivery.objects.filter(state=State.SENDING, claimed_at__lt=moment - SENDING_STALE_AFTER).update(
        state=State.FAILED,
        body="",
        last_error=(
            "The worker stopped while sending this email; it may or may not have gone out, so it is not sent again."
        ),
    )
    late = list(
        EmailDelivery.objects.filter(
            state=State.PENDING, next_attempt_at__lt=moment - PENDING_RESEND_AFTER
        ).values_list("pk", flat=True)[:500]
    )
    for delivery_id in late:
        send_email_task(delivery_id)
    return {"stuck_failed": stuck, "resent": len(late)}


# --- Reading and preferences ----------------------------------------------------------------------


def mark_read(*, user: AuthUser, notification: Notification, request: HttpRequest | None = None) -> bool:
    """Mark one of the user's notifications read; False if it already was."""
    if notification.recipient_id != user.pk:
        raise NotificationError("Only the recipient can mark a notification read.")
    with transaction.atomic():
        changed = Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(read_at=timezone.now())
        if changed:
            audit.record(
                action="notification.read",
                actor=user,
                tenant=audit.home_tenant(user),
                obj=notification,
                request=request,
                detail={"kind": notification.kind},
            )
    notification.refresh_from_db(fields=["read_at"])
    return bool(changed)


def mark_all_read(*, user: AuthUser, request: HttpRequest | None = None) -> int:
    """Mark every unread notification of the user read; how many were."""
    with transaction.atomic():
        changed = Notification.objects.filter(recipient=user, read_at__isnull=True).update(read_at=timezone.now())
        if changed:
            audit.record(
                action="notification.read_all",
                actor=user,
                tenant=audit.home_tenant(user),
                request=request,
                detail={"count": changed},
            )
    return changed


def email_preferences(user: AuthUser) -> dict[str, bool]:
    """Email on or off for every kind, for this user (on unless they turned it off)."""
    stored = dict(NotificationPreference.objects.filter(user=user).values_list("kind", "email"))
    return {kind: stored.get(kind, True) for kind in NotificationKind.values}


def set_email_preferences(
    *, user: AuthUser, email: dict[str, bool], request: HttpRequest | None = None
) -> dict[str, bool]:
    """Turn email on or off per kind; kinds not given keep their setting. Audited with what changed."""
    unknown = sorted(set(email) - set(NotificationKind.values))
    if unknown:
        raise NotificationError(f"Unknown kinds of notification: {', '.join(unknown)}.")
    with transaction.atomic():
        before = email_preferences(user)
        changed = {kind: bool(on) for kind, on in email.items() if before[kind] != bool(on)}
        for kind, on in changed.items():
            NotificationPreference.objects.update_or_create(user=user, kind=kind, defaults={"email": on})
        if changed:
            audit.record(
                action="notification.preferences",
                actor=user,
                tenant=audit.home_tenant(user),
                obj=user,
                request=request,
                detail={"email": changed},
            )
    return {**before, **changed}
