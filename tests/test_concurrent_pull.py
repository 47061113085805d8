"""Concurrent pulls within a connection's agreed limits: the same findings, never past the cap, slow-downs honoured.

The sandbox counts requests in flight and keeps when each arrived (connections.sandbox.traffic), so
the limits are checked from the hospital's side, not from the client's own account.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection as db_connection

from connections.fanout import ordered_map
from connections.limits import PullLimiter, PullStopped
from connections.models import EHRConnection
from connections.sandbox import SandboxHospital
from onboarding.models import RunStatus, StepRun
from tests.conftest import DEFECTS
from tests.test_map_step import ready_connection, run_now, run_on_worker, set_sizes, signed_off_mapping

LATENCY_MS = 100
PATIENTS = 200


def findings(run: StepRun) -> set[tuple[str, str, str, str, str, str]]:
    """Every finding of a run, whole (rule, severity, type, path, location, pseudonymous resource and patient)."""
    rows = run.findings.values_list("rule", "severity", "resource_type", "path", "location", "resource_key")
    keys = run.findings.values_list("patient_key", flat=True)
    return {(*row, key) for row, key in zip(rows, keys, strict=True)}


def finding_list(run: StepRun) -> list[tuple[Any, ...]]:
    """The same as a sorted list, so a finding found twice shows."""
    return sorted(
        run.findings.values_list("rule", "severity", "resource_type", "path", "location", "resource_key", "patient_key")
    )


def set_limits(connection: EHRConnection, *, concurrency: int, rate: float | None = None) -> None:
    EHRConnection.objects.filter(pk=connection.pk).update(pull_concurrency=concurrency, pull_rate=rate)
    connection.refresh_from_db()


# --- the limiter and the ordered fan-out, on their own ----------------------------------------------


def test_the_limiter_never_grants_more_places_than_its_cap_and_a_pause_holds_every_thread() -> None:
    limiter = PullLimiter(concurrency=3)
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            with limiter.slot():
                with lock:
                    seen.append(limiter.in_flight)
                time.sleep(0.001)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(seen) == 3 and limiter.stats.peak_in_flight == 3 and limiter.stats.granted == 160

    # A pause: no place is granted before it ends, on any thread.
    limiter.pause(0.3)
    paused_at = limiter.stats.holds[-1]
    granted: list[float] = []

    def one() -> None:
        with limiter.slot():
            granted.append(time.monotonic())

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 3 and min(granted) >= paused_at[1]
    assert limiter.stats.slowdowns == 1 and limiter.stats.paused_s == pytest.approx(0.3)


def test_overlapping_pauses_count_their_wall_time_once_and_a_stopped_limiter_grants_nothing() -> None:
    clock = [100.0]
    limiter = PullLimiter(concurrency=2, clock=lambda: clock[0])
    limiter.pause(2.0)  # 100 -> 102
    clock[0] = 101.0
    limiter.pause(2.0)  # 101 -> 103: one more second, not two
    assert limiter.stats.paused_s == pytest.approx(3.0) and limiter.stats.slowdowns == 2
    limiter.stop()
    with pytest.raises(PullStopped), limiter.slot():
        pass


def test_a_rate_spaces_the_places_it_grants() -> None:
    limiter = PullLimiter(concurrency=4, rate=20.0)
    for _ in range(6):
        with limiter.slot():
            pass
    grants = limiter.stats.grants
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert len(gaps) == 5 and min(gaps) >= 0.05 - 1e-3


def test_the_fan_out_hands_results_back_in_order_and_never_runs_ahead_of_its_window() -> None:
    taken = 0
    consumed = 0
    ahead: list[int] = []

    def items() -> Iterator[int]:
        nonlocal taken
        for n in range(60):
            taken += 1
            ahead.append(taken - consumed)
            yield n

    def work(n: int) -> int:
        time.sleep(random.uniform(0, 0.01))  # answers come back in any order
        return n * n

    out = []
    for item, result in ordered_map(items(), work, workers=4, window=8):
        consumed += 1
        out.append((item, result))
    assert out == [(n, n * n) for n in range(60)]
    assert max(ahead) <= 8


def test_the_fan_out_raises_the_first_failure_and_stops_the_rest() -> None:
    stopped = threading.Event()
    started: list[int] = []

    def work(n: int) -> int:
        started.append(n)
        if n == 5:
            raise ValueError("patient 5")
        time.sleep(0.01)
        return n

    got = []
    with pytest.raises(ValueError, match="patient 5"):
        for item, _ in ordered_map(range(1000), work, workers=3, window=6, on_stop=stopped.set):
            got.append(item)
    assert got == [0, 1, 2, 3, 4] and stopped.is_set()
    assert len(started) < 20  # the queued work was dropped, not run to the end


# --- done when 1: 200 patients at 100 ms, concurrency 4 ---------------------------------------------


@pytest.fixture(scope="module")
def slow_hospital() -> Iterator[SandboxHospital]:
    """200 patients with every kind of planted defect; its latency is switched on by the test."""
    hospital = SandboxHospital(flavour="generic", seed=7, patients=PATIENTS, defects=DEFECTS).start()
    yield hospital
    hospital.stop()


@pytest.fixture
def slow(settings: Any, sandbox_allowlist: str, slow_hospital: SandboxHospital) -> Iterator[SandboxHospital]:
    settings.OUTBOUND_ALLOWLIST = [*settings.OUTBOUND_ALLOWLIST, f"127.0.0.1:{slow_hospital.port}"]
    slow_hospital.set_faults()
    yield slow_hospital
    slow_hospital.set_faults()


@pytest.mark.django_db
def test_done_when_1_map_and_validate_at_100_ms_with_concurrency_4_match_a_sequential_pull(
    slow: SandboxHospital, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=PATIENTS, validate_size=PATIENTS)
    connection = ready_connection(tenant_a, cs_user, slow)
    # The sequential reference, at no latency (what the data holds does not depend on how fast it comes).
    set_limits(connection, concurrency=1)
    signed_off_mapping(cs_user, it_a, connection)
    sequential_map = connection.onboarding.runs.filter(step="map").latest("attempt")
    sequential = run_now(connection, "validate", cs_user)
    assert sequential_map.status == RunStatus.PASSED and sequential.result["patients"] == PATIENTS
    assert slow.traffic.peak_in_flight == 1

    set_limits(connection, concurrency=4)
    slow.set_faults(latency_ms=LATENCY_MS)
    slow.clear_requests()
    started = time.monotonic()
    concurrent = run_now(connection, "validate", cs_user)  # before map: a new map run voids the sign-off
    validate_peak = slow.traffic.peak_in_flight
    slow.clear_requests()
    concurrent_map = run_now(connection, "map", cs_user)
    seconds = time.monotonic() - started
    print(f"\nvalidate + map of {PATIENTS} patients at {LATENCY_MS} ms, concurrency 4: {seconds:.1f} s")

    assert concurrent_map.status == RunStatus.PASSED, concurrent_map.error_message
    assert concurrent_map.result["profile"] == sequential_map.result["profile"]
    assert concurrent.status == sequential.status and concurrent.result["patients"] == PATIENTS
    assert finding_list(concurrent) == finding_list(sequential) and len(findings(sequential)) > PATIENTS
    for key in ("patient_keys", "resources", "findings", "patients_with_error", "must_support"):
        assert concurrent.result[key] == sequential.result[key], key
    # Counted by the sandbox: four at once, never five.
    assert validate_peak == 4 and slow.traffic.peak_in_flight == 4


# --- done when 2: throttling ------------------------------------------------------------------------


@pytest.mark.django_db
def test_done_when_2_no_request_goes_out_before_retry_after_and_the_run_reports_the_throttling(
    slow: SandboxHospital, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=40, validate_size=40)
    connection = ready_connection(tenant_a, cs_user, slow)
    set_limits(connection, concurrency=1)
    signed_off_mapping(cs_user, it_a, connection)
    reference = run_now(connection, "validate", cs_user)

    set_limits(connection, concurrency=4)
    slow.set_faults(throttle_every=15, retry_after=1, latency_ms=20)
    slow.clear_requests()
    run = run_now(connection, "validate", cs_user)
    answered_429 = [e for e in slow.traffic.log() if e["status"] == 429]

    assert run.status == reference.status and finding_list(run) == finding_list(reference)
    assert len(answered_429) >= 3
    # Up to three requests already on their way when a 429 was answered may land in its wait (the
    # client cannot know yet); no request sent after it did, by the sandbox's own clock.
    assert slow.traffic.early_arrivals(allowed_in_flight=3) == []
    throttling = run.result["throttling"]
    assert throttling["throttled"] == len(answered_429)
    # One connection-wide pause per 429 (overlapping ones counted once): at least a second each, all told
    # no more than their sum.
    assert len(answered_429) * 0.9 <= throttling["paused_s"] <= len(answered_429) * 1.0 + 0.5
    assert f"throttled {len(answered_429)} times (HTTP 429)" in run.progress_message
    assert any("throttled this run" in w for w in run.result["warnings"])


@pytest.mark.django_db
def test_the_ietf_ratelimit_fields_pause_the_connection_when_there_is_no_retry_after(
    slow: SandboxHospital, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=20, validate_size=20)
    connection = ready_connection(tenant_a, cs_user, slow)
    signed_off_mapping(cs_user, it_a, connection)
    slow.set_faults(throttle_every=20, retry_after=1, throttle_style="ratelimit")
    run = run_now(connection, "validate", cs_user)
    assert run.status in (RunStatus.PASSED, RunStatus.FAILED) and run.result["patients"] == 20
    throttled = run.result["throttling"]["throttled"]
    assert throttled >= 2 and run.result["throttling"]["paused_s"] >= throttled * 0.9


@pytest.mark.django_db
def test_a_server_that_stays_down_ends_the_run_with_a_typed_error(
    slow: SandboxHospital, tenant_a: Any, cs_user: Any, it_a: Any, settings: Any
) -> None:
    set_sizes(tenant_a, map_size=20, validate_size=20)
    connection = ready_connection(tenant_a, cs_user, slow)
    signed_off_mapping(cs_user, it_a, connection)
    slow.set_faults(rate_5xx=1.0, status_5xx=503)
    run = run_now(connection, "validate", cs_user)
    assert run.status == RunStatus.FAILED and not run.is_active
    assert run.error_kind == "server_error"
    assert "unavailable" in run.error_hint
    assert "throttled" in run.progress_message and "HTTP 503" in run.progress_message


# --- on a real worker -------------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_concurrent_throttled_pull_on_a_real_worker_keeps_the_limits_and_the_findings(
    celery_worker_process: Any, sandboxes: dict[str, Any], clean_faults: None, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    hospital = sandboxes["defects"]
    set_sizes(tenant_a, map_size=30, validate_size=30)
    connection = ready_connection(tenant_a, cs_user, hospital, runner=run_on_worker)
    set_limits(connection, concurrency=1)
    signed_off_mapping(cs_user, it_a, connection, runner=run_on_worker)
    reference = run_on_worker(connection, "validate", cs_user)

    set_limits(connection, concurrency=3)
    hospital.set_faults(throttle_every=40, retry_after=1, latency_ms=20)
    hospital.clear_requests()
    run = run_on_worker(connection, "validate", cs_user)
    db_connection.close()
    assert run.worker and run.status == reference.status
    assert finding_list(run) == finding_list(reference)
    assert hospital.traffic.peak_in_flight == 3
    assert hospital.traffic.early_arrivals(allowed_in_flight=2) == []
    assert run.result["throttling"]["throttled"] == len([e for e in hospital.traffic.log() if e["status"] == 429])


# --- the agreed limits, as customer success sets them ----------------------------------------------


@pytest.mark.django_db
def test_limits_above_the_caps_are_refused_in_the_form_and_the_api_naming_the_cap(
    settings: Any, tenant_a: Any, cs_user: Any
) -> None:
    from connections.forms import ConnectionForm
    from tests.conftest import client_for
    from tests.factories import ConnectionFactory

    settings.PULL_MAX_CONCURRENCY = 8
    settings.PULL_MAX_RATE = 20.0
    connection = ConnectionFactory(tenant=tenant_a, base_url="https://fhir.example.org/r4")
    data = {
        "name": connection.name,
        "vendor": "generic",
        "environment": "sandbox",
        "base_url": "https://fhir.example.org/r4",
        "auth_method": "none",
        "token_auth_method": "client_secret_basic",
        "scope": "system/*.read",
        "pull_concurrency": 9,
        "pull_rate": 25,
        "pull_method": "rest",
    }
    form = ConnectionForm(data=data, instance=connection, tenant=tenant_a)
    assert not form.is_valid()
    assert "PULL_MAX_CONCURRENCY is 8" in form.errors["pull_concurrency"][0]
    assert "PULL_MAX_RATE is 20" in form.errors["pull_rate"][0]
    assert ConnectionForm(
        data={**data, "pull_concurrency": 8, "pull_rate": 20}, instance=connection, tenant=tenant_a
    ).is_valid()

    api = client_for(cs_user)
    url = f"/api/v1/connections/{connection.code}/"
    refused = api.patch(url, {"pull_concurrency": 9}, content_type="application/json")
    assert refused.status_code == 400 and "PULL_MAX_CONCURRENCY is 8" in str(refused.json())
    bulk = api.patch(url, {"pull_method": "bulk"}, content_type="application/json")
    assert bulk.status_code == 400 and "$export" in str(bulk.json())
    ok = api.patch(url, {"pull_concurrency": 6, "pull_rate": 10}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["pull_concurrency"] == 6 and ok.json()["pull_rate"] == 10
    connection.refresh_from_db()
    assert (connection.pull_concurrency, connection.pull_rate, connection.pull_method) == (6, 10.0, "rest")
