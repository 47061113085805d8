"""The template filters that write times and durations (template builtins: see ``TEMPLATES`` in the settings).

``{{ run.queued_at|when:tenant }}`` is the moment in the tenant's zone (UTC without one), labelled,
in a ``<time>`` element whose tooltip gives the zone's name and UTC; ``{{ waiver.expires_at|day:tenant }}``
the calendar day; ``{{ run.run_time|duration }}`` a length of time. The wording is ``portal.timefmt``'s.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from portal.timefmt import as_datetime, format_duration, format_when, zone_of

register = template.Library()


@register.filter(name="when", is_safe=True)
def when(value: Any, where: Any = None) -> SafeString | str:
    """``{{ run.queued_at|when:tenant }}``: the moment in the tenant's zone (UTC without one), labelled."""
    moment = as_datetime(value)
    if moment is None:
        return ""
    zone = zone_of(where)
    tooltip = f"{getattr(zone, 'key', 'UTC')} · {moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.astimezone(UTC).isoformat(timespec="seconds"),
        tooltip,
        format_when(moment, zone),
    )


@register.filter(name="day")
def day(value: Any, where: Any = None) -> str:
    """``{{ waiver.expires_at|day:tenant }}``: the calendar day in the tenant's zone, "2026-03-04"."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    moment = as_datetime(value)
    return f"{moment.astimezone(zone_of(where)):%Y-%m-%d}" if moment is not None else ""


@register.filter(name="duration")
def duration(value: Any) -> str:
    """``{{ run.run_time|duration }}`` or ``{{ seconds|duration }}``: see portal.timefmt.format_duration."""
    return format_duration(value)
