"""Done-when 4 of issue 10: a notification task delivered twice, on a real worker, sends one email.

The worker (tests/conftest.py celery_worker_process) consumes the `notifications` queue and writes
each email it sends as a file into `worker_email_dir` (Django's filebased backend).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from portal.notifications.models import EmailDelivery, NotificationKind
from portal.notifications.services import notify
from portal.tasks import deliver_notification_email

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def emails_for(directory: Path, delivery: EmailDelivery) -> list[str]:
    """Every email file the worker wrote for this delivery (its code is in a header of each)."""
    marker = f"X-Portal-Notification: {delivery.code}"
    texts = [path.read_text(errors="replace") for path in sorted(directory.glob("*"))]
    return [text for text in texts if marker in text]


def wait_for_task_runs(delivery: EmailDelivery, runs: int, timeout: float = 60) -> EmailDelivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery.refresh_from_db()
        if delivery.task_runs >= runs:
            return delivery
        time.sleep(0.2)
    raise AssertionError(f"only {delivery.task_runs} of {runs} task runs after {timeout}s ({delivery.state})")


def test_a_delivery_task_sent_three_times_sends_one_email(
    celery_worker_process: Any, worker_email_dir: Path, tenant_a: Any, it_a: Any
) -> None:
    with transaction.atomic():
        (notification,) = notify(
            kind=NotificationKind.APPROVAL_REQUESTED,
            recipients=[it_a],
            subject="Mapping sign-off requested",
            body="Customer success asks you to sign off the mapping of Alpha Epic.",
            link="/inbox/",
            key="worker-test:approval-requested",
            tenant=tenant_a,
        )
    # The commit queued the task once; a redelivery and a retry racing it send it twice more.
    delivery = EmailDelivery.objects.get(notification=notification)
    deliver_notification_email.apply_async(args=(delivery.pk,))
    deliver_notification_email.apply_async(args=(delivery.pk,))
    delivery = wait_for_task_runs(delivery, 3)
    assert (delivery.state, delivery.attempts, delivery.task_runs) == ("sent", 1, 3)
    (email,) = emails_for(worker_email_dir, delivery)
    assert f"To: {it_a.email}" in email
    assert "Subject: [Alpha Medical Center] Mapping sign-off requested" in email
    assert "http://127.0.0.1:8000/inbox/" in email
