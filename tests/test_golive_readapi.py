"""The read API's per-request checks and per-process caches, against a sandbox hospital.

These run with committed transactions, as a web process does: the audit event is then written on the
read API's audit thread while the hospital answers, and must be in the database when the answer is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import psycopg
import pytest
from django.db import DEFAULT_DB_ALIAS, OperationalError, close_old_connections, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from connections.models import EHRConnection
from connections.services import build_adapter
from onboarding.golive import readapi
from onboarding.golive.models import ServiceAccount, ServiceToken
from onboarding.live import traffic
from onboarding.live.models import LiveState
from onboarding.models import Onboarding
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live(sandboxes: dict[str, Any], sandbox_allowlist: str, clean_faults: None, tenant_a: Any, cs_user: Any) -> Any:
    """Tenant A's connection to the generic sandbox, live in full, and a product token for A."""
    readapi.clear_caches()
    hospital = sandboxes["generic"]
    connection = EHRConnection.objects.create(
        tenant=tenant_a, name="Live", vendor="generic", base_url=hospital.base_url
    )
    onboarding = Onboarding.objects.create(tenant=tenant_a, connection=connection)
    LiveState.objects.create(onboarding=onboarding, tenant=tenant_a, stage="full", live_since=timezone.now())
    account = readapi.create_account(user=cs_user, name="Product")
    token, key = readapi.issue_token(user=cs_user, account=account, tenant=tenant_a)
    product = APIClient()
    product.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    patient = build_adapter(connection).search_patients(count=1)[0].id
    yield {
        "key": key,
        "connection": connection,
        "token": token,
        "account": account,
        "product": product,
        "patient": patient,
    }
    traffic.flush()  # the counts buffered in this process, while their onboarding still exists
    readapi.clear_caches()


@contextmanager
def connections_to_postgres() -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own to the test database, beside Django's."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other:
        yield other


def _url(world: dict[str, Any], suffix: str = "") -> str:
    return f"/api/v1/live/{world['connection'].code}/patients/{world['patient']}/{suffix}"


def test_each_answer_has_its_audit_event_written_before_it_leaves(live: dict[str, Any]) -> None:
    reads = AuditEvent.objects.filter(actor_label="service:Product")
    for count, suffix in enumerate(["", "observations/", ""], start=1):
        response = live["product"].get(_url(live, suffix))
        assert response.status_code == 200, response.content
        # No waiting: the event is committed by the time the answer is out.
        assert reads.count() == count
    event = reads.filter(action="read_api.observations").get()
    assert event.detail["connection"] == str(live["connection"].code) and event.detail["by"] == "id"
    assert live["patient"] not in str(event.detail)  # the patient only by its pseudonymous key
    # A patient the hospital does not have: still audited (it was asked for), and a 404.
    missing = live["product"].get(f"/api/v1/live/{live['connection'].code}/patients/no-such-patient/")
    assert missing.status_code == 404 and reads.count() == 4


def test_a_revoked_expired_or_disabled_token_is_refused_on_the_next_request(live: dict[str, Any], cs_user: Any) -> None:
    product, url = live["product"], _url(live)
    assert product.get(url).status_code == 200
    ServiceAccount.objects.filter(pk=live["account"].pk).update(disabled_at=timezone.now())
    assert product.get(url).status_code == 401
    ServiceAccount.objects.filter(pk=live["account"].pk).update(disabled_at=None)
    ServiceToken.objects.filter(pk=live["token"].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert product.get(url).status_code == 401
    ServiceToken.objects.filter(pk=live["token"].pk).update(expires_at=None)
    assert product.get(url).status_code == 200
    readapi.revoke_token(user=cs_user, token=live["token"])
    refused = product.get(url)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    garbled = APIClient()
    garbled.credentials(HTTP_AUTHORIZATION="Bearer svc_not-a-token")
    assert garbled.get(url).status_code == 401


def test_another_tenants_token_gets_404_even_with_the_route_cached(
    live: dict[str, Any], tenant_b: Any, cs_user: Any
) -> None:
    assert live["product"].get(_url(live)).status_code == 200  # connection code -> onboarding now cached
    _, key_b = readapi.issue_token(user=cs_user, account=live["account"], tenant=tenant_b)
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b}")
    assert other.get(_url(live)).status_code == 404
    assert other.get(_url(live, "conditions/")).status_code == 404
    assert not AuditEvent.objects.filter(tenant=tenant_b, action__startswith="read_api.").exists()


def test_the_adapter_is_kept_across_requests_and_rebuilt_when_the_connection_changes(live: dict[str, Any]) -> None:
    product, url, connection = live["product"], _url(live), live["connection"]
    assert product.get(url).status_code == 200
    first = readapi._adapters[connection.pk][1]
    assert product.get(url).status_code == 200
    assert readapi._adapters[connection.pk][1] is first  # same client, same keep-alive pool
    connection.refresh_from_db()
    connection.name = "Live (renamed)"
    connection.save()  # any edit, credentials included, moves updated_at
    assert product.get(url).status_code == 200
    second = readapi._adapters[connection.pk][1]
    assert second is not first
    # A cutover or rollback switches the environment with a queryset update: a new adapter too.
    EHRConnection.objects.filter(pk=connection.pk).update(environment="production")
    assert product.get(url).status_code == 200
    assert readapi._adapters[connection.pk][1] is not second


def test_after_a_rollback_it_is_409_and_the_cached_adapter_is_dropped(live: dict[str, Any]) -> None:
    product, url, connection = live["product"], _url(live), live["connection"]
    assert product.get(url).status_code == 200 and connection.pk in readapi._adapters
    LiveState.objects.filter(onboarding__connection=connection).update(stage="not_live")
    answer = product.get(url)
    assert answer.status_code == 409 and answer.json()["code"] == "not_live"
    assert connection.pk not in readapi._adapters
    LiveState.objects.filter(onboarding__connection=connection).update(stage="full", live_since=timezone.now())
    assert product.get(url).status_code == 200


def test_the_token_and_the_live_state_are_read_in_one_round_trip(live: dict[str, Any]) -> None:
    product, url = live["product"], _url(live)
    assert product.get(url).status_code == 200  # the connection's code -> onboarding, cached now
    with CaptureQueriesContext(connection) as queries:
        assert product.get(url).status_code == 200
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(reads) == 1, reads
    assert "onboarding_servicetoken" in reads[0] and "onboarding_livestate" in reads[0]
    # The same values as the two reads made one by one, the ORM's converters included (aware datetimes).
    token_row, state_row = readapi.first_of_both(
        readapi._TOKEN, live["token"].digest, readapi._STATE, live["connection"].onboarding.pk
    )
    assert token_row == readapi._TOKEN.first(live["token"].digest)
    assert state_row == readapi._STATE.first(live["connection"].onboarding.pk) and state_row is not None
    assert state_row[-1].tzinfo is not None  # live_since
    # No live state: the token still found, the state None; no token: nothing.
    assert readapi.first_of_both(readapi._TOKEN, live["token"].digest, readapi._STATE, -1) == (token_row, None)
    assert readapi.first_of_both(readapi._TOKEN, "no-such-digest", readapi._STATE, -1) == (None, None)


def test_a_kept_database_connection_that_died_is_replaced_without_a_health_check_round_trip(
    live: dict[str, Any],
) -> None:
    """As production keeps connections (CONN_MAX_AGE): the request's first read is its health check."""
    product, url = live["product"], _url(live)
    database = connections[DEFAULT_DB_ALIAS]
    settings_dict = database.settings_dict
    kept = (settings_dict["CONN_MAX_AGE"], settings_dict["CONN_HEALTH_CHECKS"])
    database.close()
    settings_dict["CONN_MAX_AGE"], settings_dict["CONN_HEALTH_CHECKS"] = 60, True
    wrapper = type(database)
    try:
        assert product.get(url).status_code == 200
        with patch.object(wrapper, "is_usable", autospec=True, side_effect=wrapper.is_usable) as check:
            # What a WSGI server's request_started does (the test client leaves it out): the kept
            # connection is due a health check before its next use.
            close_old_connections()
            assert product.get(url).status_code == 200
        # No `SELECT 1` on this connection before the read: the read is the check. (The audit
        # thread's own connection is checked as usual.)
        assert [call for call in check.call_args_list if call.args[0] is database] == []
        first_backend = database.connection.info.backend_pid
        with connections_to_postgres() as other, other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [first_backend])  # waits for it to go
        close_old_connections()
        answer = product.get(url)
        assert answer.status_code == 200, answer.content
        assert database.connection.info.backend_pid != first_backend
        # In a transaction a connection that dies is never silently replaced: the error is the caller's.
        with pytest.raises(OperationalError), transaction.atomic():
            with connections_to_postgres() as other, other.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [database.connection.info.backend_pid])
            readapi.caller_for(live["key"], str(live["connection"].code))
    finally:
        database.close()
        settings_dict["CONN_MAX_AGE"], settings_dict["CONN_HEALTH_CHECKS"] = kept
