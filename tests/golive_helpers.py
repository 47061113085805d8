"""Building blocks for go-live tests: a pipeline ready to go live, change windows, an approved go-live plan."""

from __future__ import annotations

from datetime import time
from typing import Any

from django.utils import timezone

from onboarding.gates import services as gates
from onboarding.golive import services as golive
from onboarding.golive import windows
from onboarding.models import Approval, Onboarding, StepRun
from tests.test_load_test_step import permit, prepared, write_plan

CONTACTS = [{"name": "Pat Approver", "email": "pat@alpha.example.org"}]


def evening_windows(tenant: Any, cs: Any) -> None:
    """Tuesday and Thursday 18:00-22:00 in the tenant's zone."""
    for weekday in (1, 3):
        windows.add_change_window(user=cs, tenant=tenant, weekday=weekday, start_time=time(18), end_time=time(22))


def ready_to_go_live(tenant: Any, cs: Any, it: Any, hospital: Any = None, **connection: Any) -> Onboarding:
    """Every earlier step passed (recorded), the mapping signed, the load test permitted and passed."""
    onboarding = prepared(tenant, cs, it, hospital, **connection)
    write_plan(cs, onboarding)
    permit(cs, it, onboarding)
    StepRun.objects.create(
        onboarding=onboarding, step="load_test", attempt=1, status="passed", finished_at=timezone.now()
    )
    return onboarding


def write_go_live_plan(cs: Any, onboarding: Onboarding, **plan: Any) -> None:
    """Customer success write the go-live plan: the next window, straight to full, unless told otherwise."""
    latest = golive.latest_plan(onboarding)
    values = {
        "window_choice": "next",
        "window_starts_at": None,
        "rollout": "full",
        "pilot_percent": 0,
        "hypercare_contacts": CONTACTS,
        **plan,
    }
    golive.save_plan(user=cs, onboarding=onboarding, values=values, seen_version=latest.version if latest else 0)


def approve_go_live(cs: Any, it: Any, onboarding: Onboarding, **plan: Any) -> Approval:
    """Customer success write the go-live plan and ask; hospital IT approve it."""
    write_go_live_plan(cs, onboarding, **plan)
    approval = gates.request_approval(user=cs, onboarding=onboarding, gate_key=golive.GATE_KEY)
    return gates.decide(user=it, approval=approval, decision="approved", comment="Go.")
