"""Archiving a connection (pages and API): a confirmation first, an audit event, hidden from the lists
but kept with its history, an "Archived" filter to find it, and a restore. And the dashboard's "Needs
attention" filter lists only the connections that need it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from connections.services import archive_connection
from onboarding.engine import services
from onboarding.engine.services import StepBlocked
from onboarding.models import Approval, Decision, StepRun
from portal.models import AuditEvent
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db


def shown_connections(page: str) -> list[str]:
    """The connection names the dashboard's table shows."""
    return re.findall(r'href="/c/[0-9a-f-]+/">([^<]+)</a>', page)


@pytest.fixture
def two(tenant_a: Any) -> tuple[Any, Any]:
    """Two connections of tenant A, one with a finished run (history to keep)."""
    kept = ConnectionFactory(tenant=tenant_a, name="Kept EHR")
    old = ConnectionFactory(tenant=tenant_a, name="Old EHR")
    StepRun.objects.create(
        onboarding=services.ensure_onboarding(old), step="configure", attempt=1, status="failed", error_kind="dns"
    )
    return kept, old


def test_archive_asks_first_then_hides_the_connection_and_keeps_its_history(
    two: tuple[Any, Any], cs_user: Any, tenant_a: Any
) -> None:
    _kept, old = two
    client = client_for(cs_user)
    detail = client.get(reverse("connection_detail", kwargs={"code": old.code})).content.decode()
    assert reverse("connection_archive", kwargs={"code": old.code}) in detail

    confirm = client.get(reverse("connection_archive", kwargs={"code": old.code}))
    assert confirm.status_code == 200 and 'data-testid="confirm-archive"' in confirm.content.decode()
    old.refresh_from_db()
    assert old.archived_at is None  # asking is not doing

    response = client.post(reverse("connection_archive", kwargs={"code": old.code}))
    assert response.status_code == 302
    old.refresh_from_db()
    assert old.archived_at is not None and old.archived_by == cs_user
    event = AuditEvent.objects.get(action="connection.archive")
    assert event.object_id == str(old.code) and event.tenant == tenant_a

    # Hidden from the lists...
    dashboard = client.get(reverse("dashboard")).content.decode()
    assert shown_connections(dashboard) == ["Kept EHR"]
    tenant_page = client.get(reverse("tenant_detail", kwargs={"code": tenant_a.code})).content.decode()
    assert 'data-testid="archived-connections"' in tenant_page and "1 archived connection" in tenant_page
    assert "Old EHR" not in tenant_page.split('data-testid="archived-connections"')[0]
    work = client.get(reverse("my_work")).content.decode()
    assert "Old EHR" not in work
    # ...kept with its history, and closed to new runs.
    page = client.get(reverse("connection_detail", kwargs={"code": old.code})).content.decode()
    assert 'data-testid="archived-notice"' in page and "Configure" in page and "dns" in page
    with pytest.raises(StepBlocked, match="archived"):
        services.start_step(user=cs_user, onboarding=old.onboarding, step="configure")
    assert StepRun.objects.filter(onboarding=old.onboarding).count() == 1

    # The "Archived" filter finds it; restore brings it back.
    archived = client.get(reverse("dashboard") + "?state=archived").content.decode()
    assert shown_connections(archived) == ["Old EHR"] and 'data-testid="archived-badge"' in archived
    assert client.post(reverse("connection_restore", kwargs={"code": old.code})).status_code == 302
    old.refresh_from_db()
    assert old.archived_at is None
    assert AuditEvent.objects.filter(action="connection.restore", object_id=str(old.code)).count() == 1
    assert sorted(shown_connections(client.get(reverse("dashboard")).content.decode())) == ["Kept EHR", "Old EHR"]


def test_only_customer_success_archive_and_hospital_it_of_another_tenant_get_404(
    two: tuple[Any, Any], it_a: Any, it_b: Any, engineer: Any
) -> None:
    _, old = two
    url = reverse("connection_archive", kwargs={"code": old.code})
    assert client_for(it_a).post(url).status_code == 403
    assert client_for(engineer).post(url).status_code == 403
    assert client_for(it_b).post(url).status_code == 404
    old.refresh_from_db()
    assert old.archived_at is None and not AuditEvent.objects.filter(action="connection.archive").exists()


def test_the_api_archives_lists_and_restores(two: tuple[Any, Any], cs_user: Any, it_a: Any) -> None:
    _kept, old = two
    client = client_for(cs_user)
    assert client_for(it_a).post(f"/api/v1/connections/{old.code}/archive/").status_code == 403
    response = client.post(f"/api/v1/connections/{old.code}/archive/")
    assert response.status_code == 200 and response.json()["archived_at"]
    again = client.post(f"/api/v1/connections/{old.code}/archive/")
    assert again.status_code == 409 and "already archived" in again.json()["detail"]
    assert [c["name"] for c in client.get("/api/v1/connections/").json()["results"]] == ["Kept EHR"]
    assert [c["name"] for c in client.get("/api/v1/connections/?archived=true").json()["results"]] == ["Old EHR"]
    assert client.get(f"/api/v1/connections/{old.code}/").status_code == 200  # kept, by its code
    restored = client.post(f"/api/v1/connections/{old.code}/restore/")
    assert restored.status_code == 200 and restored.json()["archived_at"] is None
    schema = client.get("/api/schema/").content.decode()
    assert "/api/v1/connections/{code}/archive/" in schema and "/api/v1/connections/{code}/restore/" in schema


def test_needs_attention_lists_only_the_connections_that_need_it(tenant_a: Any, tenant_b: Any, cs_user: Any) -> None:
    """A latest run failed, or a rejection to answer: listed. Healthy, fixed, answered or archived: not."""

    def pipeline(tenant: Any, name: str) -> Any:
        return services.ensure_onboarding(ConnectionFactory(tenant=tenant, name=name))

    failing = pipeline(tenant_a, "Failing EHR")
    StepRun.objects.create(onboarding=failing, step="configure", attempt=1, status="passed")
    StepRun.objects.create(onboarding=failing, step="test", attempt=1, status="failed", error_kind="auth")
    healthy = pipeline(tenant_a, "Healthy EHR")  # same hospital, nothing wrong
    StepRun.objects.create(onboarding=healthy, step="configure", attempt=1, status="passed")
    fixed = pipeline(tenant_a, "Fixed EHR")  # failed once, then passed
    StepRun.objects.create(onboarding=fixed, step="configure", attempt=1, status="failed", error_kind="dns")
    StepRun.objects.create(onboarding=fixed, step="configure", attempt=2, status="passed")
    rejected = pipeline(tenant_b, "Rejected EHR")  # hospital IT rejected the mapping: customer success owe an answer
    StepRun.objects.create(onboarding=rejected, step="map", attempt=1, status="passed")
    Approval.objects.create(
        onboarding=rejected,
        gate="mapping_sign_off",
        artifact_kind="mapping",
        artifact_id=1,
        artifact_version=1,
        artifact_hash="0" * 64,
        artifact_label="Mapping version 1",
        decision=Decision.REJECTED,
        decided_at=timezone.now(),
        comment="Wrong MRN system",
    )
    answered = pipeline(tenant_b, "Answered EHR")  # a failed map whose mapping was then finished and sent
    StepRun.objects.create(onboarding=answered, step="map", attempt=1, status="failed", error_kind="mapping_incomplete")
    Approval.objects.create(
        onboarding=answered,
        gate="mapping_sign_off",
        artifact_kind="mapping",
        artifact_id=2,
        artifact_version=2,
        artifact_hash="1" * 64,
        artifact_label="Mapping version 2",
    )
    archived = pipeline(tenant_b, "Archived EHR")
    StepRun.objects.create(onboarding=archived, step="configure", attempt=1, status="failed", error_kind="dns")
    archive_connection(user=cs_user, connection=archived.connection)

    page = client_for(cs_user).get(reverse("dashboard") + "?state=failed&scope=all").content.decode()
    assert sorted(shown_connections(page)) == ["Failing EHR", "Rejected EHR"]
