"""Whether a moment falls inside one of the EHR's planned maintenance windows.

Weekly windows are read in the tenant's own time zone, so "Sunday 01:00-03:00" stays 01:00 local
across daylight-saving changes; a window whose end is at or before its start runs past midnight.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Q

from onboarding.live.models import MaintenanceKind, MaintenanceWindow
from onboarding.models import Onboarding


def _weekly_covers(window: MaintenanceWindow, local: datetime) -> bool:
    assert window.weekday is not None and window.start_time is not None and window.end_time is not None
    start: time = window.start_time
    end: time = window.end_time
    now = local.time().replace(tzinfo=None)
    if end > start:
        return local.weekday() == window.weekday and start <= now < end
    # Past midnight: the evening part on its weekday, the morning part on the next day.
    if local.weekday() == window.weekday and now >= start:
        return True
    return (local - timedelta(days=1)).weekday() == window.weekday and now < end


def covering_window(windows: Iterable[MaintenanceWindow], at: datetime, zone: ZoneInfo) -> MaintenanceWindow | None:
    """The first of these windows that covers `at` (aware), or None."""
    local = at.astimezone(zone)
    for window in windows:
        if window.kind == MaintenanceKind.ONCE:
            assert window.starts_at is not None and window.ends_at is not None
            if window.starts_at <= at < window.ends_at:
                return window
        elif _weekly_covers(window, local):
            return window
    return None


def windows_for(onboarding: Onboarding) -> list[MaintenanceWindow]:
    """The maintenance windows that apply to an onboarding's connection: the tenant's and its own."""
    return list(
        MaintenanceWindow.objects.filter(tenant_id=onboarding.tenant_id).filter(
            Q(connection__isnull=True) | Q(connection_id=onboarding.connection_id)
        )
    )


def maintenance_at(onboarding: Onboarding, at: datetime) -> MaintenanceWindow | None:
    """The planned maintenance window covering `at` for this onboarding's connection, or None."""
    return covering_window(windows_for(onboarding), at, ZoneInfo(onboarding.tenant.timezone))
