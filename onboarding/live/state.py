"""Reads of live state: is a connection live, at which stage, and which connections are."""

from __future__ import annotations

from django.db.models import QuerySet

from onboarding.live.models import LiveStage, LiveState
from onboarding.models import Onboarding
from portal.models import Tenant


def live_state(onboarding: Onboarding) -> LiveState | None:
    """The onboarding's live state, or None if it never went live."""
    return LiveState.objects.filter(onboarding=onboarding).first()


def is_live(onboarding: Onboarding) -> bool:
    """Whether the product may be served through this connection now (pilot or full)."""
    return LiveState.objects.filter(onboarding=onboarding, stage__in=[LiveStage.PILOT, LiveStage.FULL]).exists()


def live_states(*, tenants: QuerySet[Tenant] | None = None) -> QuerySet[LiveState]:
    """Every live connection's state (pilot or full), of the given tenants or of all."""
    states = LiveState.objects.filter(stage__in=[LiveStage.PILOT, LiveStage.FULL])
    if tenants is not None:
        states = states.filter(tenant__in=tenants)
    return states.select_related("onboarding__connection", "tenant")
