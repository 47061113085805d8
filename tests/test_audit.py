"""The audit trail: what writes an event, the append-only trigger, the per-tenant page and its CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse

from connections.services import update_connection
from onboarding.engine import services
from portal import audit
from portal.models import AuditEvent
from portal.roles import ENGINEERS
from tests.conftest import client_for
from tests.factories import DEFAULT_PASSWORD, ConnectionFactory, UserFactory

pytestmark = pytest.mark.django_db

BROWSER = {"REMOTE_ADDR": "203.0.113.7", "HTTP_USER_AGENT": "AuditTest/1.0"}


def last(action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(action=action).order_by("-id").first()
    assert event is not None, f"no {action} event was written"
    return event


# --- Append-only ------------------------------------------------------------------------------------


def test_postgres_refuses_update_and_delete_of_audit_events(tenant_a: Any) -> None:
    assert connection.vendor == "postgresql"
    event = audit.record(action="test.event", tenant=tenant_a, detail={"n": 1})
    for statement in (
        "UPDATE portal_auditevent SET action = 'forged' WHERE id = %s",
        "UPDATE portal_auditevent SET actor_label = 'someone else' WHERE id = %s",
        "DELETE FROM portal_auditevent WHERE id = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [event.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(detail={"n": 2})
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    event.refresh_from_db()
    assert (event.action, event.detail) == ("test.event", {"n": 1})


def test_deleting_a_user_keeps_their_events_with_their_name(tenant_a: Any) -> None:
    user = UserFactory(username="leaver")
    event = audit.record(action="test.event", actor=user, tenant=tenant_a)
    user.delete()  # ON DELETE SET NULL is the one change the trigger allows
    event.refresh_from_db()
    assert event.actor_id is None
    assert event.actor_label == "leaver"


# --- What writes an event ----------------------------------------------------------------------------


def test_login_logout_and_failed_login_are_recorded_with_ip_and_user_agent(it_a: Any, tenant_a: Any) -> None:
    client = Client(**BROWSER)
    client.post(reverse("login"), {"username": it_a.username, "password": "wrong password"})
    failed = last("auth.login_failed")
    assert (failed.actor_label, failed.ip, failed.user_agent) == (it_a.username, "203.0.113.7", "AuditTest/1.0")
    assert failed.tenant == tenant_a  # hospital IT's failed logins show on their hospital's audit page
    assert "password" not in str(failed.detail)

    client.post(reverse("login"), {"username": it_a.username, "password": DEFAULT_PASSWORD})
    login = last("auth.login")
    assert (login.actor, login.ip, login.user_agent, login.tenant) == (it_a, "203.0.113.7", "AuditTest/1.0", tenant_a)

    client.post(reverse("logout"))
    logout = last("auth.logout")
    assert (logout.actor, logout.detail["reason"]) == (it_a, "user")


def test_state_changes_secret_changes_and_role_changes_are_recorded(tenant_a: Any, cs_user: Any) -> None:
    conn = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="first")
    update_connection(user=cs_user, connection=conn, fields={}, secret="second")
    change = last("connection.update")
    assert change.detail["secret_changed"] is True
    assert "second" not in str(change.detail) and "first" not in str(change.detail)

    run = services.start_step(user=cs_user, onboarding=services.ensure_onboarding(conn), step="configure")
    assert last("step.start").object_id == str(run.code)
    services.cancel_run(user=cs_user, run=run)
    assert last("step.cancel").actor == cs_user

    newcomer = UserFactory(username="newcomer")
    newcomer.groups.add(Group.objects.get(name=ENGINEERS))
    role = last("role.group_add")
    assert role.detail == {"users": ["newcomer"], "groups": [ENGINEERS]}
    newcomer.groups.remove(Group.objects.get(name=ENGINEERS))
    assert last("role.group_remove").detail["users"] == ["newcomer"]


def test_exports_are_recorded(tenant_a: Any, it_a: Any) -> None:
    conn = ConnectionFactory(tenant=tenant_a)
    onboarding = services.ensure_onboarding(conn)
    client = client_for(it_a)
    assert client.get(reverse("tenant_audit_csv", kwargs={"code": tenant_a.code})).status_code == 200
    assert last("audit.export").actor == it_a
    assert client.get(reverse("evidence_pack_json", kwargs={"code": onboarding.code})).status_code == 200
    export = last("evidence.export")
    assert (export.actor, export.object_id, export.detail) == (it_a, str(onboarding.code), {"format": "json"})


# --- The audit page ---------------------------------------------------------------------------------


def test_hospital_it_reads_their_own_tenants_trail_only(tenant_a: Any, tenant_b: Any, it_a: Any, it_b: Any) -> None:
    audit.record(action="test.alpha", tenant=tenant_a, detail={"marker": "alpha-only"})
    audit.record(action="test.beta", tenant=tenant_b, detail={"marker": "beta-only"})
    page = client_for(it_a).get(reverse("tenant_audit", kwargs={"code": tenant_a.code}))
    assert page.status_code == 200
    body = page.content.decode()
    assert "alpha-only" in body and "beta-only" not in body
    assert client_for(it_b).get(reverse("tenant_audit", kwargs={"code": tenant_a.code})).status_code == 404
    assert client_for(it_a).get(reverse("audit_log")).status_code == 403


def test_audit_page_filters_by_action_prefix_who_and_date(tenant_a: Any, cs_user: Any) -> None:
    audit.record(action="auth.login", actor=cs_user, tenant=tenant_a)
    audit.record(action="step.start", actor=cs_user, tenant=tenant_a, detail={"marker": "started"})
    audit.record(action="step.cancel", tenant=tenant_a, detail={"marker": "by-system"})
    url = reverse("tenant_audit", kwargs={"code": tenant_a.code})
    client = client_for(cs_user)

    body = client.get(url, {"action": "step."}).content.decode()
    assert 'data-action="step.start"' in body and 'data-action="step.cancel"' in body
    assert 'data-action="auth.login"' not in body

    body = client.get(url, {"action": "step.", "actor": "system"}).content.decode()
    assert "by-system" in body and "started" not in body

    assert "No event matches" in client.get(url, {"until": "2000-01-01"}).content.decode()
    # A malformed date is ignored rather than failing the page.
    assert client.get(url, {"since": "not-a-date"}).status_code == 200
    partial = client.get(url, {"action": "step."}, headers={"HX-Request": "true"})
    assert partial.content.decode().lstrip().startswith('<div id="events">')


def test_csv_export_has_every_column_and_defuses_formulas(tenant_a: Any, cs_user: Any) -> None:
    audit.record(action="test.csv", tenant=tenant_a, actor_label='=HYPERLINK("http://evil")', detail={"k": "v"})
    response = client_for(cs_user).get(reverse("tenant_audit_csv", kwargs={"code": tenant_a.code}), {"action": "test."})
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == list(audit.CSV_COLUMNS)
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["action"] == "test.csv"
    assert row["who"].startswith("'=")  # a spreadsheet shows it as text instead of running it
    assert row["tenant"] == tenant_a.name
    assert row["detail"] == '{"k": "v"}'
