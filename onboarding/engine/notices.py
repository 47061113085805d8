"""What the engine tells people: a failed run, to the customer success people assigned to its tenant.

Keyed by the run, so a failure recorded twice (a redelivered task, a reaper racing a worker) tells
each person once. No PHI: the hospital, the connection, the step and a link to the run.
"""

from __future__ import annotations

from django.urls import reverse

from onboarding.models import StepRun
from portal.notifications.services import NotificationKind, notify
from portal.people.selectors import staff_assigned_to
from portal.roles import CUSTOMER_SUCCESS


def run_failed(run: StepRun) -> None:
    """Tell the tenant's customer success people that a step run failed, with its error kind."""
    onboarding = run.onboarding
    tenant = onboarding.tenant
    connection = onboarding.connection
    notify(
        kind=NotificationKind.RUN_FAILED,
        recipients=staff_assigned_to(tenant).filter(groups__name=CUSTOMER_SUCCESS),
        subject=f"{run.get_step_display()} failed for {connection.name}",
        body=(
            f"{run.get_step_display()} attempt {run.attempt} of {connection.name} at {tenant.name} failed "
            f"({run.error_kind or 'failed'})."
        ),
        link=reverse("run_detail", kwargs={"code": run.code}),
        key=f"run:{run.code}:failed",
        tenant=tenant,
    )
