"""Who sees what: each persona against the pages and the API. Another tenant's object is a 404."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from onboarding.engine import services
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tenant_a: Any, tenant_b: Any, cs_user: Any) -> dict[str, Any]:
    conn_a = ConnectionFactory(tenant=tenant_a, name="Alpha Epic")
    conn_b = ConnectionFactory(tenant=tenant_b, name="Beta Cerner")
    run_a = services.start_step(user=cs_user, onboarding=services.ensure_onboarding(conn_a), step="configure")
    return {"tenant": tenant_a, "conn": conn_a, "run": run_a, "other_conn": conn_b}


def pages_of_tenant_a(world: dict[str, Any]) -> list[str]:
    return [
        reverse("tenant_detail", kwargs={"code": world["tenant"].code}),
        reverse("connection_detail", kwargs={"code": world["conn"].code}),
        reverse("run_detail", kwargs={"code": world["run"].code}),
        reverse("connection_create", kwargs={"code": world["tenant"].code}),
        reverse("connection_edit", kwargs={"code": world["conn"].code}),
    ]


def api_of_tenant_a(world: dict[str, Any]) -> list[str]:
    onboarding = world["conn"].onboarding
    return [
        f"/api/v1/tenants/{world['tenant'].code}/",
        f"/api/v1/connections/{world['conn'].code}/",
        f"/api/v1/onboardings/{onboarding.code}/",
        f"/api/v1/runs/{world['run'].code}/",
    ]


def test_hospital_it_of_another_tenant_gets_404_on_pages(world: dict[str, Any], it_b: Any) -> None:
    client = client_for(it_b)
    for url in pages_of_tenant_a(world):
        assert client.get(url).status_code == 404, url
    start = reverse("start_step", kwargs={"code": world["conn"].code, "step": "configure"})
    assert client.post(start).status_code == 404
    assert client.post(reverse("cancel_run", kwargs={"code": world["run"].code})).status_code == 404


def test_hospital_it_of_another_tenant_gets_404_on_the_api(world: dict[str, Any], it_b: Any) -> None:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=it_b)[1]}")
    for url in api_of_tenant_a(world):
        assert api.get(url).status_code == 404, url
    assert api.post(f"/api/v1/connections/{world['conn'].code}/steps/configure/start/").status_code == 404
    assert api.post(f"/api/v1/runs/{world['run'].code}/cancel/").status_code == 404
    assert api.patch(f"/api/v1/connections/{world['conn'].code}/", {"name": "x"}).status_code == 404


def test_lists_never_show_another_tenants_ids(world: dict[str, Any], it_b: Any) -> None:
    api = APIClient()
    api.force_authenticate(it_b)
    forbidden = {str(world["tenant"].code), str(world["conn"].code), str(world["run"].code)}
    for url in ("/api/v1/tenants/", "/api/v1/connections/", "/api/v1/onboardings/", "/api/v1/runs/"):
        body = api.get(url).content.decode()
        assert not any(code in body for code in forbidden), url
    page = client_for(it_b).get(reverse("dashboard")).content.decode()
    assert "Alpha Medical Center" not in page
    assert "Beta Health System" in page


def test_hospital_it_sees_their_own_tenant_but_cannot_run_steps(world: dict[str, Any], it_a: Any) -> None:
    client = client_for(it_a)
    assert client.get(reverse("tenant_detail", kwargs={"code": world["tenant"].code})).status_code == 200
    assert client.get(reverse("run_detail", kwargs={"code": world["run"].code})).status_code == 200
    start = reverse("start_step", kwargs={"code": world["conn"].code, "step": "test"})
    assert client.post(start).status_code == 403
    assert client.get(reverse("connection_edit", kwargs={"code": world["conn"].code})).status_code == 403
    assert client.get(reverse("tenant_create")).status_code == 403


def test_vendor_staff_see_every_tenant(world: dict[str, Any], cs_user: Any, engineer: Any) -> None:
    for user in (cs_user, engineer):
        page = client_for(user).get(reverse("dashboard")).content.decode()
        assert "Alpha Medical Center" in page
        assert "Beta Health System" in page


def test_anonymous_is_sent_to_login_or_gets_401(world: dict[str, Any]) -> None:
    from django.test import Client

    anonymous = Client()
    for url in [reverse("dashboard"), *pages_of_tenant_a(world)]:
        response = anonymous.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login"))
    api = APIClient()
    for url in ["/api/v1/tenants/", *api_of_tenant_a(world)]:
        assert api.get(url).status_code == 401, url


def test_missing_and_foreign_look_the_same(world: dict[str, Any], it_b: Any) -> None:
    client = client_for(it_b)
    foreign = client.get(reverse("tenant_detail", kwargs={"code": world["tenant"].code}))
    missing = client.get(reverse("tenant_detail", kwargs={"code": "00000000-0000-0000-0000-000000000000"}))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
