"""The sandbox's capacity knobs do what they say: throttles, a concurrency limit, a seeded latency.

These are what the load engine's tests measure against, so each is checked here on its own,
from the outside (HTTP, the request log, the capacity counters) wherever it can be. No database.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator

import httpx
import pytest

from connections.management.commands.sandbox import Command
from connections.sandbox import SandboxHospital
from connections.sandbox.server import FaultState, Slots


@pytest.fixture
def hospital() -> Iterator[SandboxHospital]:
    running = SandboxHospital(flavour="generic", seed=3, patients=5, request_log=1000).start()
    yield running
    running.stop()


def _get(hospital: SandboxHospital, client: httpx.Client) -> httpx.Response:
    return client.get(f"{hospital.base_url}/Patient/{hospital.patient_ids[0]}")


def test_every_nth_request_is_throttled_with_retry_after(hospital: SandboxHospital) -> None:
    hospital.set_faults(throttle_every=3, retry_after=2)
    with httpx.Client() as client:
        answers = [_get(hospital, client) for _ in range(9)]
    assert [a.status_code for a in answers] == [200, 200, 429] * 3
    assert {a.headers["Retry-After"] for a in answers if a.status_code == 429} == {"2"}
    assert answers[2].json()["issue"][0]["code"] == "throttled"
    assert hospital.capacity()["throttled"] == 3
    log = hospital.requests()
    assert [r["status"] for r in log] == [200, 200, 429] * 3
    assert all(r["retry_after"] == ("2" if r["status"] == 429 else None) for r in log)
    assert all(r["arrived"] <= r["answered"] for r in log)


def test_the_token_bucket_lets_a_burst_through_then_throttles(hospital: SandboxHospital) -> None:
    hospital.set_faults(throttle_rps=0.001, throttle_burst=3, retry_after_date=True)
    with httpx.Client() as client:
        answers = [_get(hospital, client) for _ in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
    assert answers[-1].headers["Retry-After"].endswith("GMT")  # the date form, as the faults allow


def test_past_the_concurrency_limit_requests_queue(hospital: SandboxHospital) -> None:
    hospital.set_faults(max_concurrency=1, latency_ms=100)
    barrier = threading.Barrier(4)

    def one() -> None:
        with httpx.Client() as client:
            barrier.wait()
            assert _get(hospital, client).status_code == 200

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log = hospital.requests()
    assert len(log) == 4 and hospital.capacity()["peak_queued"] >= 1
    # One at a time, each holding its place for 100 ms: the four are served one after another.
    assert max(r["answered"] for r in log) - min(r["arrived"] for r in log) >= 0.4
    assert hospital.capacity()["in_service"] == 0 and hospital.capacity()["queued"] == 0


def test_slots_serve_in_arrival_order() -> None:
    slots = Slots(1)
    slots.acquire()
    order: list[int] = []
    threads = []
    for number in range(5):
        thread = threading.Thread(target=lambda n=number: (slots.acquire(), order.append(n), slots.release()))
        thread.start()
        while slots.queued < number + 1:  # wait until this one is in line before starting the next
            threading.Event().wait(0.001)
        threads.append(thread)
    slots.release()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3, 4] and slots.peak_queued == 5


def test_the_latency_distribution_is_lognormal_and_seeded() -> None:
    faults = {"latency_median_ms": 30, "latency_sigma": 0.5, "latency_ms": 10}
    first, second = FaultState(7, faults), FaultState(7, faults)
    draws = [first.added_latency_s(first.values) for _ in range(4001)]
    assert draws == [second.added_latency_s(second.values) for _ in range(4001)]
    assert min(draws) > 0.010  # the fixed part is a floor
    assert statistics.median(draws) == pytest.approx(0.040, rel=0.05)
    assert FaultState(8, faults).added_latency_s(first.values) != draws[0]
    flat = FaultState(7, {"latency_median_ms": 30, "latency_sigma": 0})
    assert flat.added_latency_s(flat.values) == pytest.approx(0.030)


def test_knobs_are_set_at_start_and_at_run_time_and_checked() -> None:
    hospital = SandboxHospital(flavour="generic", patients=2, faults={"max_concurrency": 3}).start()
    try:
        control = f"http://127.0.0.1:{hospital.port}/_sandbox"
        assert httpx.get(f"{control}/info").json()["capacity"]["max_concurrency"] == 3
        answer = httpx.put(f"{control}/faults", json={"throttle_every": 2, "latency_median_ms": 5})
        assert answer.status_code == 200 and answer.json()["max_concurrency"] == 0  # unnamed ones reset
        assert [httpx.get(f"{hospital.base_url}/metadata").status_code for _ in range(2)] == [200, 429]
        for bad, named in (({"latency_sigma": 5}, "latency_sigma"), ({"max_concurrency": -1}, "max_concurrency")):
            refused = httpx.put(f"{control}/faults", json=bad)
            assert refused.status_code == 400 and named in refused.json()["issue"][0]["diagnostics"]
        assert httpx.get(f"{control}/requests").json()["requests"] == []  # no log asked for
    finally:
        hospital.stop()
    with pytest.raises(ValueError, match="throttle_burst"):
        SandboxHospital(faults={"throttle_burst": 0})


def test_the_request_log_is_read_and_cleared_over_http(hospital: SandboxHospital) -> None:
    with httpx.Client() as client:
        _get(hospital, client)
        client.get(f"http://127.0.0.1:{hospital.port}/_sandbox/info")  # control calls are not logged
        entries = client.get(f"http://127.0.0.1:{hospital.port}/_sandbox/requests").json()["requests"]
        assert [(e["method"], e["status"]) for e in entries] == [("GET", 200)]
        assert entries[0]["target"] == f"/fhir/Patient/{hospital.patient_ids[0]}"
        client.delete(f"http://127.0.0.1:{hospital.port}/_sandbox/requests")
    assert hospital.requests() == []


def test_manage_py_sandbox_help_documents_the_knobs() -> None:
    text = Command().create_parser("manage.py", "sandbox").format_help()
    for option in (
        "--latency-ms",
        "--latency-median-ms",
        "--latency-sigma",
        "--max-concurrency",
        "--throttle-every",
        "--throttle-rps",
        "--throttle-burst",
        "--retry-after",
        "--request-log",
    ):
        assert option in text, option
    assert "PUT /_sandbox/faults" in text
