"""The read API's per-request checks and per-process caches, against a sandbox hospital.

These run with committed transactions, as a web process does: the audit event is then written on the
read API's audit thread while the hospital answers, and must be in the database when the answer is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import psycopg
import pytest
import time_machine
from django.db import DEFAULT_DB_ALIAS, OperationalError, close_old_connections, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from connections.models import EHRConnection
from connections.services import build_adapter
from onboarding.golive import readapi
from onboarding.golive.models import ServiceAccount, ServiceToken
from onboarding.live import traffic
from onboarding.live.models import LiveState, TrafficMinute
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


def test_a_revoked_expired_or_disabled_token_is_refused_on_the_next_request(
    live: dict[str, Any], cs_user: Any, settings: Any
) -> None:
    # Nothing kept (READ_API_AUTH_CACHE_SECONDS 0): the queryset updates below stand for changes
    # made by another process, seen on the next request.
    settings.READ_API_AUTH_CACHE_SECONDS = 0
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
    assert [key for key in readapi._callers if key[0] == readapi.digest_of(key_b)] == []  # never kept


def test_the_adapter_is_kept_across_requests_and_rebuilt_when_the_connection_changes(
    live: dict[str, Any], settings: Any
) -> None:
    settings.READ_API_AUTH_CACHE_SECONDS = 0  # every request reads the connection's version
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


def test_after_a_rollback_it_is_409_and_the_cached_adapter_is_dropped(live: dict[str, Any], settings: Any) -> None:
    settings.READ_API_AUTH_CACHE_SECONDS = 0  # the update below is another process's rollback, seen at once
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


def test_a_kept_token_is_refused_at_once_for_a_change_here_and_within_its_seconds_for_one_elsewhere(
    live: dict[str, Any], cs_user: Any, settings: Any
) -> None:
    settings.READ_API_AUTH_CACHE_SECONDS = 1
    product, url = live["product"], _url(live)
    monotonic = [1000.0]

    def later(seconds: float) -> None:
        clock.shift(timedelta(seconds=seconds))
        monotonic[0] += seconds

    # The wall clock (token expiry) and the read API's monotonic clock (how long a caller is kept),
    # which time-machine leaves alone, as its authors advise, so it is moved where it is read.
    with (
        time_machine.travel(timezone.now(), tick=False) as clock,
        patch.object(readapi, "monotonic", lambda: monotonic[0]),
    ):
        assert product.get(url).status_code == 200  # learns the connection's onboarding
        assert product.get(url).status_code == 200  # token and live state read together, and kept
        with CaptureQueriesContext(connection) as queries:
            assert product.get(url).status_code == 200
        assert [q["sql"] for q in queries.captured_queries if "onboarding_servicetoken" in q["sql"]] == []

        # Another process disables the account: kept answers for at most the cache's second.
        ServiceAccount.objects.filter(pk=live["account"].pk).update(disabled_at=timezone.now())
        assert product.get(url).status_code == 200
        later(1.01)
        assert product.get(url).status_code == 401
        ServiceAccount.objects.filter(pk=live["account"].pk).update(disabled_at=None)

        # Another process rolls the go-live back: the same.
        assert product.get(url).status_code == 200
        LiveState.objects.filter(onboarding__connection=live["connection"]).update(stage="not_live")
        assert product.get(url).status_code == 200
        later(1.01)
        assert product.get(url).json()["code"] == "not_live"
        LiveState.objects.filter(onboarding__connection=live["connection"]).update(stage="full")

        # A token's expiry is checked on every request, kept or not.
        later(1.01)  # what was kept runs out
        ServiceToken.objects.filter(pk=live["token"].pk).update(expires_at=timezone.now() + timedelta(seconds=0.5))
        assert product.get(url).status_code == 200  # read again, and kept with its new expiry
        later(0.6)
        assert product.get(url).status_code == 401
        ServiceToken.objects.filter(pk=live["token"].pk).update(expires_at=None)
        later(1.01)

        # The connection edited in this process: read again at once (its adapter is built anew).
        assert product.get(url).status_code == 200 and readapi._callers
        live["connection"].refresh_from_db()
        live["connection"].name = "Live (renamed)"
        live["connection"].save()
        assert readapi._callers == {}

        # Revoked in this process: refused on the very next request.
        assert product.get(url).status_code == 200
        readapi.revoke_token(user=cs_user, token=live["token"])
        assert product.get(url).status_code == 401
    assert readapi._callers == {}  # a refused token is never kept
    assert readapi._refreshing == set()  # no request above fell in the second half of a kept second


def test_only_the_newest_read_is_kept_and_none_begun_before_a_clear(live: dict[str, Any], settings: Any) -> None:
    """The races of reads that overlap (request threads, the upkeep thread), played in a set order."""
    settings.READ_API_AUTH_CACHE_SECONDS = 1
    product, url = live["product"], _url(live)
    now = [1000.0]
    with patch.object(readapi, "monotonic", lambda: now[0]):
        assert product.get(url).status_code == 200
        assert product.get(url).status_code == 200  # read at 1000.0, kept until 1001.0
        [(key, kept)] = readapi._callers.items()
        caller, generation = kept.caller, readapi._generation
        # A slow read begun before the kept one, whatever it found, does not replace it.
        readapi._keep(key, None, None, generation, 999.9)
        assert readapi._callers[key] is kept
        # A read begun after it that finds the token refused: nothing older is served from then on.
        readapi._keep(key, None, None, generation, 1000.1)
        assert key not in readapi._callers
        # A read begun before a clear (a revocation here) is not kept, however good what it found.
        readapi.forget_callers()
        readapi._keep(key, caller, None, generation, 1000.2)
        assert key not in readapi._callers
        # A read so slow that what it found is older than the cache's seconds when it ends: not kept.
        now[0] = 1002.0
        readapi._keep(key, caller, None, readapi._generation, 1001.0)
        assert key not in readapi._callers
        # Kept for the cache's seconds from when its read began, not from when it ended.
        readapi._keep(key, caller, None, readapi._generation, 1001.5)
        assert (readapi._callers[key].until, readapi._callers[key].refresh_at) == (1002.5, 1002.0)
        # Full: the one kept longest ago goes first.
        with patch.object(readapi, "CALLERS_KEPT", 2):
            readapi._keep(("d2", "c2"), caller, None, readapi._generation, 1001.6)
            readapi._keep(("d3", "c3"), caller, None, readapi._generation, 1001.7)
            assert list(readapi._callers) == [("d2", "c2"), ("d3", "c3")]


def test_steady_traffic_has_its_kept_token_read_again_in_the_background(live: dict[str, Any], settings: Any) -> None:
    settings.READ_API_AUTH_CACHE_SECONDS = 1
    product, url = live["product"], _url(live)
    monotonic = [1000.0]

    def later(seconds: float) -> None:
        monotonic[0] += seconds

    def settled() -> None:  # what was handed to the upkeep thread is done (one thread: in order)
        readapi._pool("upkeep").submit(lambda: None).result(timeout=30)

    def selects(answer_status: int) -> list[str]:
        """The request's reads of tokens and live states (not the traffic counts it may flush)."""
        with CaptureQueriesContext(connection) as queries:
            assert product.get(url).status_code == answer_status
        return [q["sql"] for q in queries.captured_queries if "onboarding_servicetoken" in q["sql"]]

    with patch.object(readapi, "monotonic", lambda: monotonic[0]):
        assert product.get(url).status_code == 200
        assert len(selects(200)) == 1  # read, and kept at 1000.0 until 1001.0
        later(0.6)
        assert selects(200) == []  # served as kept; read again on the upkeep thread
        settled()
        later(0.6)  # 1001.2: past what the first read was kept for
        assert selects(200) == []  # the refresh's read (kept until 1001.6), and read again (until 1002.2)
        settled()
        # Another process disables the account; the next refresh finds it and drops what was kept.
        ServiceAccount.objects.filter(pk=live["account"].pk).update(disabled_at=timezone.now())
        later(0.6)  # 1001.8: past half of what was kept
        assert selects(200) == []  # served as kept, and read again
        settled()
        assert product.get(url).status_code == 401
    assert readapi._callers == {}


def test_the_traffic_counts_are_written_off_the_requests_path(
    live: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(traffic, "_last_flush", time.monotonic() - traffic.FLUSH_SECONDS)  # a flush is due
    with CaptureQueriesContext(connection) as queries:
        assert live["product"].get(_url(live)).status_code == 200
    assert [q["sql"] for q in queries.captured_queries if "onboarding_trafficminute" in q["sql"]] == []
    readapi._pool("upkeep").submit(lambda: None).result(timeout=30)  # the flush handed to it is done
    counted = TrafficMinute.objects.filter(onboarding__connection=live["connection"])
    assert sum(counted.values_list("requests", flat=True)) == 1


def test_a_kept_database_connection_that_died_is_replaced_without_a_health_check_round_trip(
    live: dict[str, Any], settings: Any
) -> None:
    """As production keeps connections (CONN_MAX_AGE): the request's first read is its health check."""
    settings.READ_API_AUTH_CACHE_SECONDS = 0  # every request reads the database
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
