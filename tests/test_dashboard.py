"""The dashboard costs the same number of queries at 10 and at 1,000 tenants."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from connections.models import EHRConnection
from onboarding.models import Onboarding, StepRun
from portal.models import Tenant
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def make_tenants(count: int, start: int) -> None:
    """Tenants with a connection each and a few runs, made in bulk."""
    tenants = Tenant.objects.bulk_create(Tenant(name=f"Bulk Hospital {start + i:05d}") for i in range(count))
    conns = EHRConnection.objects.bulk_create(
        EHRConnection(tenant=t, name="Main EHR", vendor="epic", base_url="https://fhir.example.org/r4") for t in tenants
    )
    onboardings = Onboarding.objects.bulk_create(Onboarding(tenant=c.tenant, connection=c) for c in conns)
    runs = []
    for ob in onboardings:
        runs.append(StepRun(onboarding=ob, step="configure", attempt=1, status="passed"))
        runs.append(StepRun(onboarding=ob, step="test", attempt=1, status="failed"))
    StepRun.objects.bulk_create(runs)


def dashboard_queries(client: Any, query: str = "") -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(reverse("dashboard") + query)
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


def test_query_count_is_constant_from_10_to_1000_tenants(cs_user: Any) -> None:
    client = client_for(cs_user)
    make_tenants(10, 0)
    small, small_page = dashboard_queries(client)
    make_tenants(990, 10)
    large, large_page = dashboard_queries(client)
    print(f"dashboard queries: {small} at 10 tenants, {large} at 1,000 tenants")
    assert small == large
    assert "10 hospitals" in small_page
    assert "1000 hospitals" in large_page
    # Filters keep the same constant cost.
    filtered, page = dashboard_queries(client, "?state=failed&vendor=epic&q=Bulk")
    assert filtered == large
    assert "Bulk Hospital 00000" in page


def test_hospital_it_dashboard_is_constant_too(it_a: Any) -> None:
    client = client_for(it_a)
    make_tenants(10, 0)
    small, _ = dashboard_queries(client)
    make_tenants(300, 10)
    large, page = dashboard_queries(client)
    assert small == large
    assert "Bulk Hospital" not in page


def test_dashboard_shows_state_filter_results_and_empty_state(cs_user: Any) -> None:
    client = client_for(cs_user)
    make_tenants(3, 0)
    Tenant.objects.create(name="Quiet Hospital")
    _, page = dashboard_queries(client, "?state=not_started")
    assert "Quiet Hospital" in page
    assert "Bulk Hospital" not in page
    _, page = dashboard_queries(client, "?q=nothing-matches-this")
    assert "No hospital matches these filters" in page


def test_every_step_is_built_and_none_is_marked_not_available(cs_user: Any) -> None:
    make_tenants(1, 0)
    _, page = dashboard_queries(client_for(cs_user))
    assert 'data-step="go_live" data-state="not_started"' in page
    assert 'data-state="unavailable"' not in page and "not available yet" not in page
    assert 'data-step="load_test" data-state="not_started"' in page
    assert 'data-step="configure" data-state="passed"' in page


def test_rows_hold_each_connection_with_its_newest_attempts_and_empty_tenants(cs_user: Any) -> None:
    from onboarding.engine import selectors
    from onboarding.templatetags.pipeline import step_cells

    empty = Tenant.objects.create(name="Aaa No Connection Hospital")
    make_tenants(2, 0)
    busy = Tenant.objects.get(name="Bulk Hospital 00000")
    second = EHRConnection.objects.create(
        tenant=busy, name="Second EHR", vendor="epic", base_url="https://b.example/r4"
    )
    onboarding = Onboarding.objects.get(tenant=busy)
    StepRun.objects.create(onboarding=onboarding, step="test", attempt=2, status="passed")

    rows = selectors.dashboard_rows(selectors.dashboard_tenants(cs_user).filter(pk__in=[empty.pk, busy.pk]))

    assert [row.tenant for row in rows] == [empty, busy]
    assert rows[0].connections == []
    main, other = rows[1].connections
    assert (main.connection.name, other.connection) == ("Main EHR", second)
    states = {cell.key: cell.state for cell in main.cells}
    assert states["configure"] == "passed"
    assert states["test"] == "passed"  # attempt 2 passed, attempt 1 had failed
    assert states["map"] == "not_started"
    assert {cell.state for cell in other.cells} == {"not_started"}  # no pipeline yet; every step is built
    html = str(step_cells(main.cells))
    newest = StepRun.objects.get(onboarding=onboarding, step="test", attempt=2)
    assert f'href="{reverse("run_detail", kwargs={"code": newest.code})}"' in html
    assert html.count('class="step state-') == len(main.cells) == 6
    assert "not available yet" not in html


def test_step_cells_escape_what_they_show() -> None:
    from onboarding.engine.selectors import StepCell
    from onboarding.templatetags.pipeline import step_cells

    html = str(step_cells([StepCell("configure", "<b>Configure</b>", True, None)]))
    assert "<b>" not in html
    assert "&lt;b&gt;Configure&lt;/b&gt;" in html
