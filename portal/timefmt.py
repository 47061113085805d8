"""How the portal writes a moment and a length of time: one place for every page, file and message.

A time is always shown with its zone: the hospital's when the page is about one (its ``timezone``),
else UTC, with the zone's abbreviation next to it ("2026-03-04 09:12 CST"). Durations read like
"850 ms", "42 s", "3 min 5 s", "2 h 10 min". The template filters over these are in
``portal.templatetags.times``.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

FORMAT = "%Y-%m-%d %H:%M"


def zone_of(where: Any) -> tzinfo:
    """The zone to show times in: a tenant's (anything with ``timezone``), a zone name, or UTC."""
    name = getattr(where, "timezone", where)
    if isinstance(name, tzinfo):
        return name
    if isinstance(name, str) and name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def as_datetime(value: Any) -> datetime | None:
    """An aware datetime from a datetime or an ISO 8601 string (the evidence pack's JSON), else None."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def format_when(value: Any, where: Any = None, *, seconds: bool = False) -> str:
    """Plain text: "2026-03-04 09:12 CST" in the zone of ``where`` (see zone_of); "" for no time."""
    moment = as_datetime(value)
    if moment is None:
        return ""
    local = moment.astimezone(zone_of(where))
    return f"{local:{FORMAT}{':%S' if seconds else ''}} {_label(local)}"


def _label(local: datetime) -> str:
    # Zones without an abbreviation of their own give "+03" or "-0230"; "UTC+03" says what it is.
    name = local.tzname() or "UTC"
    return f"UTC{name}" if name[:1] in "+-" else name


def format_duration(value: Any) -> str:
    """A length of time (timedelta or seconds) in words: "850 ms", "42 s", "3 min 5 s", "2 h 10 min", "3 days"."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s".replace(".0 s", " s")
    whole = int(seconds)
    minutes, rest = divmod(whole, 60)
    if minutes < 10:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"
