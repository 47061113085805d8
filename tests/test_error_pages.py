"""The 403, 404 and 500 pages are the portal's own, with the way back; with DEBUG on (the demo) a 404
is still the portal's page, never Django's technical one listing every URL pattern. The API docs
page links back to the portal."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db

TECHNICAL = ("Using the URLconf", "Django tried these URL patterns", "You're seeing this error because")


def assert_portal_page(response: Any, status: int, *, signed_in: bool = True) -> str:
    assert response.status_code == status
    page = response.content.decode()
    assert f'data-testid="error-page" data-status="{status}"' in page
    assert 'data-testid="error-links"' in page and reverse("my_work") in page and reverse("dashboard") in page
    assert ('data-testid="main-nav"' in page) is signed_in  # the portal's header, with its navigation
    for text in TECHNICAL:
        assert text not in page
    return page


@pytest.mark.parametrize("debug", [True, False])
def test_an_unknown_address_is_the_portals_404_with_debug_on_or_off(
    debug: bool, monkeypatch: pytest.MonkeyPatch, cs_user: Any
) -> None:
    monkeypatch.setattr(django_settings, "DEBUG", debug)
    assert_portal_page(client_for(cs_user).get("/no/such/page/"), 404)
    assert_portal_page(Client().get("/no/such/page/"), 404, signed_in=False)


@pytest.mark.parametrize("debug", [True, False])
def test_a_view_404_is_the_portals_page_and_says_nothing_of_what_exists(
    debug: bool, monkeypatch: pytest.MonkeyPatch, it_b: Any, tenant_a: Any
) -> None:
    monkeypatch.setattr(django_settings, "DEBUG", debug)
    connection = ConnectionFactory(tenant=tenant_a, name="Alpha secret EHR")
    page = assert_portal_page(client_for(it_b).get(reverse("connection_detail", kwargs={"code": connection.code})), 404)
    assert "Alpha" not in page and "No such connection" not in page


def test_a_missing_slash_is_still_added_before_any_404(monkeypatch: pytest.MonkeyPatch, cs_user: Any) -> None:
    monkeypatch.setattr(django_settings, "DEBUG", True)
    response = client_for(cs_user).get("/work")
    assert response.status_code == 301 and response["Location"] == "/work/"


def test_api_calls_keep_their_json_404_with_debug_on(monkeypatch: pytest.MonkeyPatch, cs_user: Any) -> None:
    monkeypatch.setattr(django_settings, "DEBUG", True)
    client = client_for(cs_user)
    response = client.get("/api/v1/connections/00000000-0000-4000-8000-000000000000/")
    assert response.status_code == 404 and response["Content-Type"].startswith("application/json")


def test_a_refusal_is_the_portals_403_with_its_reason(it_a: Any, tenant_a: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a)
    page = assert_portal_page(client_for(it_a).get(reverse("connection_edit", kwargs={"code": connection.code})), 403)
    assert "You do not have permission to do this." in page


def test_a_crash_is_the_portals_500_page(monkeypatch: pytest.MonkeyPatch, cs_user: Any) -> None:
    from onboarding.engine import selectors

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated crash in the dashboard")

    monkeypatch.setattr(selectors, "dashboard_tenants", crash)
    client = client_for(cs_user)
    client.raise_request_exception = False
    # Rendered without the request's context (the error may be the database): the links, no user menu.
    page = assert_portal_page(client.get(reverse("dashboard")), 500, signed_in=False)
    assert "simulated crash" not in page


def test_the_api_docs_page_links_back_to_the_portal(cs_user: Any) -> None:
    page = client_for(cs_user).get(reverse("api_docs")).content.decode()
    assert 'data-testid="docs-nav"' in page
    assert f'href="{reverse("dashboard")}"' in page and f'href="{reverse("my_work")}"' in page
