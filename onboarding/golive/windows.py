"""Change windows (when the hospital allows a go-live) and the EHR's planned maintenance windows.

Weekly times are local to the window's time zone (the tenant's by default) and stay local across
daylight-saving changes: the occurrence "Tuesday 18:00 America/Chicago" is 23:00 UTC in summer and
00:00 UTC in winter. Each write refuses bad input with a message saying what to fix, and writes
nothing: an end before the start, an unknown time zone, a window overlapping one already kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from connections.models import EHRConnection
from onboarding.golive.models import ChangeWindow
from onboarding.live.models import MaintenanceKind, MaintenanceWindow
from portal import audit
from portal.access import AuthUser, User
from portal.models import Tenant
from portal.roles import is_vendor_staff

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEK_MINUTES = 7 * 24 * 60
MAX_NOTE = 200


class WindowRefused(Exception):
    """A window that cannot be written as given; ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Occurrence:
    """One occurrence of a change window: its aware start and end."""

    window: ChangeWindow
    starts_at: datetime
    ends_at: datetime


def may_edit_windows(user: User, tenant: Tenant) -> bool:
    """Customer success (who drive the pipeline) and the tenant's own approvers keep its windows."""
    if user.has_perm("onboarding.run_step"):
        return True
    return not is_vendor_staff(user) and user.has_perm("portal.approve_gates", tenant)


def zone_named(name: str, *, field: str = "timezone") -> ZoneInfo:
    """The IANA time zone of that name; WindowRefused for an unknown one."""
    try:
        if not name or name != name.strip():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowRefused(
            f"“{name}” is not a time zone the portal knows. Use an IANA name such as America/Chicago.", field=field
        ) from None


def describe(window: ChangeWindow) -> str:
    """ "Tuesday 18:00-22:00 America/Chicago"."""
    return f"{WEEKDAYS[window.weekday]} {window.start_time:%H:%M}-{window.end_time:%H:%M} {window.timezone}"


def describe_maintenance(window: MaintenanceWindow, zone: str) -> str:
    if window.kind == MaintenanceKind.ONCE:
        assert window.starts_at is not None and window.ends_at is not None
        local = ZoneInfo(zone)
        start, end = window.starts_at.astimezone(local), window.ends_at.astimezone(local)
        return f"once, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} {zone}"
    assert window.weekday is not None and window.start_time is not None and window.end_time is not None
    night = " (to the next day)" if window.end_time <= window.start_time else ""
    return f"every {WEEKDAYS[window.weekday]} {window.start_time:%H:%M}-{window.end_time:%H:%M}{night} {zone}"


# --- change windows -----------------------------------------------------------------------------


def change_windows(tenant: Tenant) -> list[ChangeWindow]:
    return list(ChangeWindow.objects.filter(tenant=tenant))


def add_change_window(
    *,
    user: User,
    tenant: Tenant,
    weekday: int,
    start_time: time,
    end_time: time,
    zone: str = "",
    note: str = "",
    request: HttpRequest | None = None,
) -> ChangeWindow:
    """Keep a weekly change window of the tenant; refused if it ends before it starts or overlaps another."""
    _require_editor(user, tenant)
    zone = zone or tenant.timezone
    zone_named(zone)
    if not isinstance(weekday, int) or not 0 <= weekday <= 6:
        raise WindowRefused("Choose a weekday.", field="weekday")
    if end_time <= start_time:
        raise WindowRefused(
            f"The window must end after it starts ({start_time:%H:%M} to {end_time:%H:%M}). A change window "
            "ends on the day it starts: write one past midnight as two windows.",
            field="end_time",
        )
    if len(note) > MAX_NOTE:
        raise WindowRefused(f"Keep the note under {MAX_NOTE} characters.", field="note")
    with transaction.atomic():
        # Serialise writes of one tenant's windows, so two overlapping ones cannot both pass the check.
        Tenant.objects.select_for_update().get(pk=tenant.pk)
        for other in ChangeWindow.objects.filter(tenant=tenant, weekday=weekday):
            if start_time < other.end_time and other.start_time < end_time:
                raise WindowRefused(
                    f"It overlaps the change window {describe(other)} already kept. Change or remove that one instead.",
                    field="start_time",
                )
        window = ChangeWindow.objects.create(
            tenant=tenant,
            weekday=weekday,
            start_time=start_time,
            end_time=end_time,
            timezone=zone,
            note=note.strip(),
            created_by=user if isinstance(user, AuthUser) else None,
        )
        audit.record(
            action="change_window.add",
            actor=user,
            tenant=tenant,
            obj=window,
            request=request,
            detail={"window": describe(window)},
        )
    return window


def remove_change_window(*, user: User, window: ChangeWindow, request: HttpRequest | None = None) -> None:
    _require_editor(user, window.tenant)
    with transaction.atomic():
        audit.record(
            action="change_window.remove",
            actor=user,
            tenant=window.tenant,
            obj=window,
            request=request,
            detail={"window": describe(window)},
        )
        window.delete()


def occurrences(windows: list[ChangeWindow], *, after: datetime, days: int = 8) -> list[Occurrence]:
    """The windows' occurrences that end after ``after``, in order of start, over the next ``days``."""
    found: list[Occurrence] = []
    for window in windows:
        zone = ZoneInfo(window.timezone)
        first: date = after.astimezone(zone).date() - timedelta(days=1)
        for offset in range(days + 1):
            day = first + timedelta(days=offset)
            if day.weekday() != window.weekday:
                continue
            # Built from the local wall time, so the UTC instant moves with daylight saving.
            start = datetime.combine(day, window.start_time, tzinfo=zone)
            end = datetime.combine(day, window.end_time, tzinfo=zone)
            if end > after:
                found.append(Occurrence(window, start, end))
    return sorted(found, key=lambda o: o.starts_at)


def window_at(tenant: Tenant, at: datetime) -> Occurrence | None:
    """The change window open at ``at``, or None."""
    for occurrence in occurrences(change_windows(tenant), after=at, days=2):
        if occurrence.starts_at <= at < occurrence.ends_at:
            return occurrence
    return None


def next_window(tenant: Tenant, after: datetime) -> Occurrence | None:
    """The window open at ``after``, else the next one to open; None when the tenant keeps none."""
    upcoming = occurrences(change_windows(tenant), after=after)
    return upcoming[0] if upcoming else None


def occurrence_starting(tenant: Tenant, starts_at: datetime) -> Occurrence | None:
    """The occurrence of one of the tenant's windows that starts exactly then, or None."""
    for occurrence in occurrences(change_windows(tenant), after=starts_at - timedelta(minutes=1), days=2):
        if occurrence.starts_at == starts_at:
            return occurrence
    return None


# --- maintenance windows ------------------------------------------------------------------------


def maintenance_windows(tenant: Tenant) -> list[MaintenanceWindow]:
    return list(MaintenanceWindow.objects.filter(tenant=tenant).select_related("connection"))


def add_maintenance_window(
    *,
    user: User,
    tenant: Tenant,
    kind: str,
    weekday: int | None = None,
    start_time: time | None = None,
    end_time: time | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    zone: str = "",
    connection: EHRConnection | None = None,
    note: str = "",
    request: HttpRequest | None = None,
) -> MaintenanceWindow:
    """Keep a planned EHR maintenance window: weekly (may run past midnight) or once (two datetimes).

    One-off times given without a zone are read in ``zone`` (the tenant's by default).
    """
    _require_editor(user, tenant)
    local = zone_named(zone or tenant.timezone)
    if connection is not None and connection.tenant_id != tenant.pk:
        raise WindowRefused("That connection is not one of this hospital's.", field="connection")
    if len(note) > MAX_NOTE:
        raise WindowRefused(f"Keep the note under {MAX_NOTE} characters.", field="note")
    fields: dict[str, object]
    if kind == MaintenanceKind.WEEKLY:
        if weekday is None or not 0 <= weekday <= 6:
            raise WindowRefused("Choose a weekday.", field="weekday")
        if start_time is None or end_time is None:
            raise WindowRefused("Give the local start and end times.", field="start_time")
        if start_time == end_time:
            raise WindowRefused("The window must not end when it starts.", field="end_time")
        fields = {"weekday": weekday, "start_time": start_time, "end_time": end_time}
        span = _weekly_span(weekday, start_time, end_time)
    elif kind == MaintenanceKind.ONCE:
        if starts_at is None or ends_at is None:
            raise WindowRefused("Give the start and end date and time.", field="starts_at")
        starts_at, ends_at = _aware(starts_at, local), _aware(ends_at, local)
        if ends_at <= starts_at:
            raise WindowRefused(
                f"The window must end after it starts ({starts_at.astimezone(local):%Y-%m-%d %H:%M} to "
                f"{ends_at.astimezone(local):%Y-%m-%d %H:%M}).",
                field="ends_at",
            )
        fields = {"starts_at": starts_at, "ends_at": ends_at}
    else:
        raise WindowRefused("Choose weekly or once.", field="kind")
    with transaction.atomic():
        Tenant.objects.select_for_update().get(pk=tenant.pk)
        same_scope = MaintenanceWindow.objects.filter(tenant=tenant, kind=kind, connection=connection)
        for other in same_scope:
            if kind == MaintenanceKind.WEEKLY:
                assert other.weekday is not None and other.start_time is not None and other.end_time is not None
                clash = _spans_overlap(span, _weekly_span(other.weekday, other.start_time, other.end_time))
            else:
                assert other.starts_at is not None and other.ends_at is not None
                clash = fields["starts_at"] < other.ends_at and other.starts_at < fields["ends_at"]  # type: ignore[operator]
            if clash:
                raise WindowRefused(
                    f"It overlaps the maintenance window {describe_maintenance(other, tenant.timezone)} already kept.",
                    field="starts_at" if kind == MaintenanceKind.ONCE else "start_time",
                )
        window = MaintenanceWindow.objects.create(
            tenant=tenant,
            connection=connection,
            kind=kind,
            note=note.strip(),
            created_by=user if isinstance(user, AuthUser) else None,
            **fields,
        )
        audit.record(
            action="maintenance_window.add",
            actor=user,
            tenant=tenant,
            obj=window,
            request=request,
            detail={"window": describe_maintenance(window, tenant.timezone)},
        )
    return window


def remove_maintenance_window(*, user: User, window: MaintenanceWindow, request: HttpRequest | None = None) -> None:
    tenant = window.tenant
    _require_editor(user, tenant)
    with transaction.atomic():
        audit.record(
            action="maintenance_window.remove",
            actor=user,
            tenant=tenant,
            obj=window,
            request=request,
            detail={"window": describe_maintenance(window, tenant.timezone)},
        )
        window.delete()


# --- helpers --------------------------------------------------------------------------------------


def _require_editor(user: User, tenant: Tenant) -> None:
    from django.core.exceptions import PermissionDenied

    if not may_edit_windows(user, tenant):
        raise PermissionDenied("Only customer success and the hospital's approvers keep its windows.")


def _aware(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=zone)


def _weekly_span(weekday: int, start: time, end: time) -> tuple[int, int]:
    """Minutes from Monday 00:00: (start, end), end past the week's end when it wraps."""
    begin = weekday * 1440 + start.hour * 60 + start.minute
    length = (end.hour * 60 + end.minute) - (start.hour * 60 + start.minute)
    if length <= 0:
        length += 1440
    return begin, begin + length


def _spans_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    # On the week's circle: compare b shifted by a week either way too.
    return any(a[0] < b[1] + shift and b[0] + shift < a[1] for shift in (-WEEK_MINUTES, 0, WEEK_MINUTES))
