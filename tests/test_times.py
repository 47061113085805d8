"""Every time a page shows carries its zone (the hospital's, else UTC), and runs show how long they
waited and ran: one pair of filters (``when``, ``duration``), used by every page and the evidence pack."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.template import Context, Template
from django.urls import reverse

from onboarding.engine import services
from onboarding.models import StepRun
from portal.timefmt import format_duration, format_when
from tests.conftest import client_for
from tests.factories import ConnectionFactory

ROOT = Path(__file__).resolve().parent.parent
# 2026-01-15 15:12:05 UTC is 09:12 in Chicago (CST, UTC-6) and 10:12 in New York (EST).
MOMENT = datetime(2026, 1, 15, 15, 12, 5, 123456, tzinfo=UTC)
RAW_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+")


def test_a_moment_is_written_in_the_tenants_zone_with_its_label() -> None:
    class Hospital:
        timezone = "America/Chicago"

    assert format_when(MOMENT, Hospital()) == "2026-01-15 09:12 CST"
    assert format_when(MOMENT, "America/New_York") == "2026-01-15 10:12 EST"
    assert format_when(MOMENT) == "2026-01-15 15:12 UTC"
    assert format_when(MOMENT.isoformat(), "America/Chicago") == "2026-01-15 09:12 CST"  # the pack's JSON
    assert format_when(MOMENT, "Asia/Dubai") == "2026-01-15 19:12 UTC+04"  # a zone with no abbreviation
    assert format_when(MOMENT, "Not/AZone") == "2026-01-15 15:12 UTC"
    assert format_when(None) == "" and format_when("not a time") == ""


def test_the_filter_gives_a_time_element_for_machines_and_a_label_for_people() -> None:
    html = Template("{{ moment|when:zone }}|{{ missing|when:zone|default:'—' }}|{{ moment|day:zone }}").render(
        Context({"moment": MOMENT, "zone": "America/Chicago", "missing": None})
    )
    assert html == (
        '<time datetime="2026-01-15T15:12:05+00:00" title="America/Chicago · 2026-01-15 15:12:05 UTC">'
        "2026-01-15 09:12 CST</time>|—|2026-01-15"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0.4, "400 ms"),
        (3, "3 s"),
        (2.5, "2.5 s"),
        (42, "42 s"),
        (125, "2 min 5 s"),
        (timedelta(minutes=12, seconds=9), "12 min"),
        (timedelta(hours=2, minutes=10), "2 h 10 min"),
        (timedelta(days=3), "3 days"),
        (None, ""),
    ],
)
def test_durations_read_like_words(value: Any, words: str) -> None:
    assert format_duration(value) == words


@pytest.mark.django_db
def test_run_pages_show_zoned_times_and_how_long_runs_waited_and_ran(cs_user: Any) -> None:
    connection = ConnectionFactory(name="Zoned EHR")  # the factory's tenants are in America/Chicago
    onboarding = services.ensure_onboarding(connection)
    run = StepRun.objects.create(onboarding=onboarding, step="configure", attempt=1, status="passed")
    StepRun.objects.filter(pk=run.pk).update(
        queued_at=MOMENT,
        started_at=MOMENT + timedelta(seconds=3),
        finished_at=MOMENT + timedelta(seconds=3 + 125),
    )
    client = client_for(cs_user)
    pages = {
        "run": client.get(reverse("run_detail", kwargs={"code": run.code})).content.decode(),
        "connection": client.get(reverse("connection_detail", kwargs={"code": connection.code})).content.decode(),
        "tenant": client.get(reverse("tenant_detail", kwargs={"code": connection.tenant.code})).content.decode(),
    }
    for name, page in pages.items():
        assert "2026-01-15 09:12 CST" in page, name
        assert "3 s" in page and "2 min 5 s" in page, name
        assert not RAW_ISO.search(page.replace('datetime="', "")), name
    assert "waited 3 s for a worker" in pages["run"] and "ran 2 min 5 s" in pages["run"]
    assert "09:14 CST" in pages["run"]  # finished


def test_no_template_formats_a_time_by_hand() -> None:
    """Times go through `when`/`day`: a `|date:` on a datetime would drop the zone again."""
    offenders = []
    for path in (ROOT / "templates").rglob("*.html"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # Form inputs of type date take a bare ISO day by definition.
            if "|date:" in line and 'type="date"' not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []
