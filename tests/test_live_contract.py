"""The shared live records: maintenance windows in the tenant's zone, and production traffic counts."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from onboarding.live import traffic
from onboarding.live.maintenance import maintenance_at
from onboarding.live.models import MaintenanceKind, MaintenanceWindow
from onboarding.models import Onboarding
from tests.factories import ConnectionFactory

CHICAGO = ZoneInfo("America/Chicago")


@pytest.fixture
def onboarding(db: None) -> Onboarding:
    connection = ConnectionFactory()
    return Onboarding.objects.create(tenant=connection.tenant, connection=connection)


def _local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHICAGO)


def test_weekly_window_is_local_time_across_daylight_saving(onboarding: Onboarding) -> None:
    window = MaintenanceWindow.objects.create(
        tenant=onboarding.tenant, kind=MaintenanceKind.WEEKLY, weekday=6, start_time=time(1), end_time=time(3)
    )
    # US daylight saving starts on Sunday 8 March 2026: the window stays 01:00-03:00 local, so its
    # hours in UTC move by one between Sunday 1 March (CST, UTC-6) and Sunday 15 March (CDT, UTC-5).
    assert maintenance_at(onboarding, _local(2026, 3, 1, 1, 30)) == window
    assert maintenance_at(onboarding, _local(2026, 3, 15, 1, 30)) == window
    assert maintenance_at(onboarding, datetime(2026, 3, 1, 8, 30, tzinfo=UTC)) == window  # 02:30 CST
    assert maintenance_at(onboarding, datetime(2026, 3, 15, 8, 30, tzinfo=UTC)) is None  # 03:30 CDT
    assert maintenance_at(onboarding, datetime(2026, 3, 15, 6, 30, tzinfo=UTC)) == window  # 01:30 CDT
    assert maintenance_at(onboarding, datetime(2026, 3, 1, 6, 30, tzinfo=UTC)) is None  # 00:30 CST
    assert maintenance_at(onboarding, _local(2026, 3, 1, 3, 0)) is None
    assert maintenance_at(onboarding, _local(2026, 3, 2, 1, 30)) is None


def test_window_past_midnight_and_one_off(onboarding: Onboarding) -> None:
    weekly = MaintenanceWindow.objects.create(
        tenant=onboarding.tenant, kind=MaintenanceKind.WEEKLY, weekday=4, start_time=time(23), end_time=time(2)
    )
    assert maintenance_at(onboarding, _local(2026, 12, 4, 23, 30)) == weekly  # Friday evening
    assert maintenance_at(onboarding, _local(2026, 12, 5, 1, 59)) == weekly  # Saturday morning
    assert maintenance_at(onboarding, _local(2026, 12, 5, 2, 0)) is None
    other = ConnectionFactory(tenant=onboarding.tenant)
    once = MaintenanceWindow.objects.create(
        tenant=onboarding.tenant,
        connection=other,
        kind=MaintenanceKind.ONCE,
        starts_at=_local(2026, 12, 9, 10),
        ends_at=_local(2026, 12, 9, 12),
    )
    assert maintenance_at(onboarding, _local(2026, 12, 9, 11)) is None  # another connection's window
    other_onboarding = Onboarding.objects.create(tenant=other.tenant, connection=other)
    assert maintenance_at(other_onboarding, _local(2026, 12, 9, 11)) == once


def test_traffic_counts_add_up_per_minute(onboarding: Onboarding) -> None:
    at = datetime(2026, 12, 1, 12, 0, 10, tzinfo=UTC)
    for latency in range(1, 101):
        traffic.record_request(onboarding.pk, latency_ms=float(latency), at=at)
    traffic.record_request(onboarding.pk, latency_ms=30.0, error_kind="timeout", at=at)
    assert traffic.flush() == 1
    traffic.record_request(onboarding.pk, latency_ms=5.0, error_kind="server_error", at=at)
    traffic.flush()
    summary = traffic.traffic_summary(
        onboarding.pk, since=datetime(2026, 12, 1, 12, 0, tzinfo=UTC), until=datetime(2026, 12, 1, 12, 1, tzinfo=UTC)
    )
    assert (summary.requests, summary.errors) == (102, 2)
    assert summary.errors_by_kind == {"timeout": 1, "server_error": 1}
    # Buckets are 12% wide: the p95 of 1..100 ms (plus two) is read as its bucket's upper bound.
    assert summary.p95_ms is not None and 95 <= summary.p95_ms <= 95 * 1.12
    empty = traffic.traffic_summary(onboarding.pk, since=at.replace(hour=13), until=at.replace(hour=14))
    assert (empty.requests, empty.p95_ms, empty.error_rate) == (0, None, 0.0)
