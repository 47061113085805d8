"""Bad input in forms and the API gets field-level messages, and nothing half-saved remains."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from connections.models import EHRConnection
from portal.models import AuditEvent, Tenant
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db

GOOD = {
    "name": "Main EHR",
    "vendor": "epic",
    "environment": "sandbox",
    "base_url": "https://fhir.example.org/api/FHIR/R4",
    "auth_method": "none",
    "token_auth_method": "client_secret_basic",
    "scope": "system/*.read",
}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"base_url": "ftp://fhir.example.org/r4"}, "base_url", "URL"),
        ({"base_url": "not a url"}, "base_url", "URL"),
        ({"base_url": "https://user:pw@fhir.example.org/r4"}, "base_url", "user name or password"),
        ({"base_url": "https://fhir.example.org/r4?x=1"}, "base_url", "query"),
        ({"base_url": "http://fhir.example.org/r4", "environment": "production"}, "base_url", "https"),
        ({"base_url": ""}, "base_url", "required"),
        ({"name": ""}, "name", "required"),
        ({"vendor": "allscripts"}, "vendor", "valid choice"),
        ({"auth_method": "basic"}, "client_id", "client id"),
        ({"auth_method": "client_credentials", "client_id": "abc"}, "secret", "secret"),
    ],
)
def test_connection_form_rejects_bad_fields(
    cs_user: Any, tenant_a: Any, change: dict[str, str], field: str, message: str
) -> None:
    client = client_for(cs_user)
    before = AuditEvent.objects.count()
    response = client.post(reverse("connection_create", kwargs={"code": tenant_a.code}), {**GOOD, **change})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message.lower() in " ".join(errors[field]).lower()
    assert not EHRConnection.objects.exists()
    assert AuditEvent.objects.count() == before


def test_connection_form_saves_a_good_connection_and_never_shows_the_secret(cs_user: Any, tenant_a: Any) -> None:
    client = client_for(cs_user)
    data = {**GOOD, "auth_method": "client_credentials", "client_id": "abc", "secret": "form-sentinel-secret"}
    response = client.post(reverse("connection_create", kwargs={"code": tenant_a.code}), data)
    assert response.status_code == 302
    conn = EHRConnection.objects.get()
    assert conn.secret == "form-sentinel-secret"
    for url in (response["Location"], reverse("connection_edit", kwargs={"code": conn.code})):
        assert "form-sentinel-secret" not in client.get(url).content.decode()


def test_duplicate_connection_name_is_a_field_error(cs_user: Any, tenant_a: Any) -> None:
    ConnectionFactory(tenant=tenant_a, name="Main EHR")
    response = client_for(cs_user).post(reverse("connection_create", kwargs={"code": tenant_a.code}), GOOD)
    assert "already has a connection" in " ".join(response.context["form"].errors["name"])
    assert EHRConnection.objects.count() == 1


def test_blank_secret_on_edit_keeps_the_stored_one(cs_user: Any, tenant_a: Any) -> None:
    conn = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="keep-me-secret")
    data = {**GOOD, "name": conn.name, "auth_method": "basic", "client_id": "u2", "secret": ""}
    response = client_for(cs_user).post(reverse("connection_edit", kwargs={"code": conn.code}), data)
    assert response.status_code == 302
    conn.refresh_from_db()
    assert (conn.client_id, conn.secret) == ("u2", "keep-me-secret")
    assert AuditEvent.objects.filter(action="connection.update").get().detail["changed"]
    assert not AuditEvent.objects.filter(action__startswith="connection.secret_").exists()


def test_a_new_secret_is_its_own_audit_event_without_the_value(cs_user: Any, tenant_a: Any) -> None:
    conn = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="old-secret-value")
    data = {**GOOD, "name": conn.name, "auth_method": "basic", "client_id": "u", "secret": "new-secret-value"}
    assert client_for(cs_user).post(reverse("connection_edit", kwargs={"code": conn.code}), data).status_code == 302
    event = AuditEvent.objects.get(action="connection.secret_change")
    assert event.actor == cs_user and event.object_id == str(conn.code)
    assert "secret-value" not in str(AuditEvent.objects.values_list("detail", flat=True))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "", "timezone": "America/Chicago"}, "name"),
        ({"name": "X Hospital", "timezone": "Mars/Olympus"}, "timezone"),
        ({"name": "X Hospital", "timezone": "UTC", "contact_email": "not-an-email"}, "contact_email"),
    ],
)
def test_tenant_form_rejects_bad_fields(cs_user: Any, data: dict[str, str], field: str) -> None:
    response = client_for(cs_user).post(reverse("tenant_create"), data)
    assert field in response.context["form"].errors
    assert not Tenant.objects.exists()


def test_api_rejects_bad_connection_fields_without_saving(cs_user: Any, tenant_a: Any) -> None:
    api = APIClient()
    api.force_authenticate(cs_user)
    response = api.post("/api/v1/connections/", {**GOOD, "tenant": str(tenant_a.code), "base_url": "gopher://x"})
    assert response.status_code == 400
    assert "base_url" in response.json()
    response = api.post("/api/v1/connections/", {"tenant": str(tenant_a.code)})
    assert response.status_code == 400
    assert {"name", "base_url"} <= set(response.json())
    assert not EHRConnection.objects.exists()


def test_api_secret_is_write_only(cs_user: Any, tenant_a: Any) -> None:
    api = APIClient()
    api.force_authenticate(cs_user)
    data = {**GOOD, "tenant": str(tenant_a.code), "auth_method": "basic", "client_id": "u", "secret": "api-sentinel"}
    created = api.post("/api/v1/connections/", data, format="json")
    assert created.status_code == 201, created.content
    assert "api-sentinel" not in created.content.decode()
    assert created.json()["has_secret"] is True
    listed = api.get("/api/v1/connections/")
    assert "api-sentinel" not in listed.content.decode()
    code = created.json()["code"]
    patched = api.patch(f"/api/v1/connections/{code}/", {"client_id": "u2"}, format="json")
    assert patched.status_code == 200
    assert EHRConnection.objects.get().secret == "api-sentinel"


def test_api_start_of_go_live_before_its_steps_is_refused_and_an_unknown_step_is_not_available(
    cs_user: Any, tenant_a: Any
) -> None:
    conn = ConnectionFactory(tenant=tenant_a)
    api = APIClient()
    api.force_authenticate(cs_user)
    response = api.post(f"/api/v1/connections/{conn.code}/steps/go_live/start/")
    assert response.status_code == 409
    assert "Configure must pass before Go live can run" in response.json()["detail"]
    response = api.post(f"/api/v1/connections/{conn.code}/steps/launch/start/")
    assert response.status_code == 400 and response.json()["code"] == "not_available"


def test_openapi_schema_and_docs_are_served_locally(cs_user: Any) -> None:
    client = client_for(cs_user)
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/connections/{code}/steps/{step}/start/" in paths
    docs = client.get("/api/docs/").content.decode()
    assert "cdn" not in docs.lower()
    assert "/static/drf_spectacular_sidecar/" in docs


def test_only_allowlisted_sandboxes_may_be_production_over_http_and_never_in_production_mode(
    tenant_a: Any, settings: Any
) -> None:
    settings.OUTBOUND_ALLOWLIST = ["127.0.0.1:8101"]
    sandbox = ConnectionFactory.build(tenant=tenant_a, base_url="http://127.0.0.1:8101/fhir", environment="production")
    assert sandbox.plain_http_problems() == {}
    for url in ("http://127.0.0.1:8102/fhir", "http://fhir.example.org/r4", "http://127.0.0.1/fhir"):
        other = ConnectionFactory.build(tenant=tenant_a, base_url=url, environment="production")
        assert other.plain_http_problems() == {"base_url": "A production connection must use https://."}, url
    settings.PRODUCTION = True
    assert sandbox.plain_http_problems() == {"base_url": "A production connection must use https://."}
    secure = ConnectionFactory.build(tenant=tenant_a, base_url="https://fhir.example.org/r4", environment="production")
    assert secure.plain_http_problems() == {}


def test_api_cannot_make_a_plain_http_connection_production(cs_user: Any, tenant_a: Any) -> None:
    conn = ConnectionFactory(
        tenant=tenant_a,
        base_url="http://fhir.example.org/r4",
        auth_method="basic",
        client_id="u",
        secret="basic-secret",
    )
    api = APIClient()
    api.force_authenticate(cs_user)
    flipped = api.patch(f"/api/v1/connections/{conn.code}/", {"environment": "production"}, format="json")
    assert flipped.status_code == 400
    assert "https" in str(flipped.json()["base_url"])
    conn.refresh_from_db()
    assert conn.environment == "sandbox"
    data = {
        **GOOD,
        "name": "Prod",
        "tenant": str(tenant_a.code),
        "environment": "production",
        "auth_method": "client_credentials",
        "client_id": "c",
        "secret": "s",
        "token_url": "http://auth.example.org/token",
    }
    created = api.post("/api/v1/connections/", data, format="json")
    assert created.status_code == 400
    assert "token_url" in created.json()
    assert not EHRConnection.objects.filter(name="Prod").exists()
