"""The load engine measures what a sandbox hospital was told to do: latency, queueing, throttling, failing.

Every run here sends real HTTP to a sandbox hospital on loopback, started in a process of its
own so that its threads never share the engine's GIL (a shared GIL would add the sandbox's work
to the engine's latencies). What is asserted is the engine's own measurement set against what
the sandbox injected, and, where the issue asks "no request went out before Retry-After", the
sandbox's own request log. Nothing asserts how fast this machine is. No database is used.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connections.errors import ErrorKind, RemoteError
from connections.http import OutboundPolicy, pin_target
from connections.loadgen import (
    CONDITION_BY_PATIENT,
    ENCOUNTER_BY_PATIENT,
    OBSERVATION_BY_PATIENT,
    PATIENT_BY_IDENTIFIER,
    PATIENT_READ,
    AbortRule,
    Caps,
    LoadPlan,
    LoadResult,
    Outcome,
    PinnedTarget,
    PlanError,
    RecordPool,
    RequestType,
    Sla,
    Staircase,
    run,
    run_closed,
    standard_mix,
    validate,
)
from connections.loadgen.plan import Schedule, Stage

ROOT = Path(__file__).resolve().parent.parent
CAPS = Caps(max_rate=5_000, max_concurrency=200, max_duration_s=120, max_total_requests=100_000)
_SERVE = """
import json, sys
from connections.sandbox import SandboxHospital
hospital = SandboxHospital(**json.loads(sys.argv[1]))
print(json.dumps({"base_url": hospital.base_url, "port": hospital.port, "mrn_system": hospital.mrn_system,
                  "patient_ids": hospital.patient_ids}), flush=True)
hospital.serve_forever()
"""


@dataclass
class RemoteSandbox:
    """A sandbox hospital in a child process, driven over its control endpoints."""

    base_url: str
    port: int
    mrn_system: str
    patient_ids: list[str]

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.port}/_sandbox"

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        answer = httpx.put(f"{self.control}/faults", json=faults, timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    def requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.control}/requests", timeout=10).json()["requests"])

    def capacity(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.control}/info", timeout=10).json()["capacity"])

    def mrns(self, count: int = 5) -> list[tuple[str, str]]:
        """Real (system, value) MRNs of the first patients, read as the map step would."""
        found = []
        for pid in self.patient_ids[:count]:
            patient = httpx.get(f"{self.base_url}/Patient/{pid}", timeout=10).json()
            found += [(i["system"], i["value"]) for i in patient["identifier"] if i.get("system") == self.mrn_system]
        return found

    def target(self, **policy: Any) -> PinnedTarget:
        """The pinned target the guarded client's rules allow for this sandbox."""
        return pin_target(self.base_url, OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{self.port}"}), **policy))


@contextmanager
def remote_sandbox(**kwargs: Any) -> Iterator[RemoteSandbox]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, json.dumps({"flavour": "generic", "patients": 20, **kwargs})],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield RemoteSandbox(**json.loads(process.stdout.readline()))
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RemoteSandbox]:
    """One sandbox for the whole module, its request log on; each test sets its own knobs."""
    with remote_sandbox(request_log=100_000) as running:
        yield running


@pytest.fixture(autouse=True)
def reset(sandbox: RemoteSandbox) -> Iterator[None]:
    sandbox.set_faults()
    httpx.delete(f"{sandbox.control}/requests", timeout=10)
    yield
    sandbox.set_faults()


def reads(sandbox: RemoteSandbox) -> tuple[Any, ...]:
    return standard_mix({PATIENT_READ: 1}, RecordPool(patient_ids=tuple(sandbox.patient_ids)))


def show(label: str, result: LoadResult) -> None:
    lat = result.latency
    print(
        f"\n{label}: {result.mode} {result.outcome.value} target {result.target_rps:g} req/s, achieved "
        f"{result.achieved_rps:.1f}; p50 {lat.p50_ms:.1f} p90 {lat.p90_ms:.1f} p95 {lat.p95_ms:.1f} "
        f"p99 {lat.p99_ms:.1f} max {lat.max_ms:.1f} ms; sent {result.sent}, dropped {result.dropped_by_reason}, "
        f"errors {result.error_pct:.1f}%, throttled {result.throttled}, paused {result.paused_s:.2f} s, "
        f"send lag p50 {result.send_lag.p50_ms} ms p99 {result.send_lag.p99_ms} ms; {result.reason}"
    )


# --- the pinned target --------------------------------------------------------------------


def test_pin_target_pins_the_address_the_guard_allowed(sandbox: RemoteSandbox) -> None:
    target = sandbox.target(connect_timeout=2, read_timeout=3)
    assert (target.address, target.port, target.scheme) == ("127.0.0.1", sandbox.port, "http")
    assert target.host_header == f"127.0.0.1:{sandbox.port}"
    assert target.base_path == "/fhir" and target.server_name is None
    assert (target.connect_timeout, target.read_timeout) == (2, 3)
    assert dict(target.headers)["Accept"].startswith("application/fhir+json")


def test_pin_target_refuses_what_the_guard_refuses(sandbox: RemoteSandbox) -> None:
    with pytest.raises(RemoteError) as refused:
        pin_target(sandbox.base_url, OutboundPolicy())  # loopback, not allowlisted
    assert refused.value.kind is ErrorKind.BLOCKED_ADDRESS
    with pytest.raises(RemoteError) as rebound:
        # A name resolving to a private address is refused unless that name is allowlisted.
        pin_target(f"http://ehr.example.org:{sandbox.port}/fhir", OutboundPolicy(), resolver=lambda h, p: ["10.0.0.7"])
    assert rebound.value.kind is ErrorKind.BLOCKED_ADDRESS
    with pytest.raises(RemoteError) as smuggled:
        pin_target("http://127.0.0.1:1@ehr.example.org/fhir", OutboundPolicy())
    assert smuggled.value.kind is ErrorKind.BLOCKED_ADDRESS
    allowed = OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{sandbox.port}"}))
    with pytest.raises(RemoteError, match="header"):
        pin_target(sandbox.base_url, allowed, headers={"Authorization": "Bearer x\r\nX-Evil: 1"})


def test_pin_target_resolves_once_and_keeps_the_host_header(sandbox: RemoteSandbox) -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.1"]

    policy = OutboundPolicy(allowlist=frozenset({f"ehr.example.test:{sandbox.port}"}))
    target = pin_target(f"http://ehr.example.test:{sandbox.port}/fhir/", policy, resolver=resolver)
    assert asked == [("ehr.example.test", sandbox.port)]
    assert (target.address, target.host_header, target.base_path) == (
        "127.0.0.1",
        f"ehr.example.test:{sandbox.port}",
        "/fhir",
    )
    # Only the pinned address is dialled: the engine reaches the sandbox although no DNS knows the name.
    result = run(target, LoadPlan(mix=reads(sandbox), rate=20, duration_s=1), CAPS)
    assert result.statuses == {200: result.answered} and result.answered == 20


def test_pin_target_says_when_nothing_listens() -> None:
    with pytest.raises(RemoteError) as refused:
        pin_target("http://127.0.0.1:9/fhir", OutboundPolicy(allowlist=frozenset({"127.0.0.1:9"})))
    assert refused.value.kind is ErrorKind.CONNECT


class _Fixed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"resourceType":"Patient","id":"p1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tls_hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An https server on loopback with a self-signed certificate for hospital.test; (port, CA file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hospital.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fixed)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1], cert_path
    server.shutdown()
    server.server_close()


def test_https_targets_verify_the_certificate_against_the_host_name(tls_hospital: tuple[int, Path]) -> None:
    port, ca = tls_hospital
    mix = standard_mix({PATIENT_READ: 1}, RecordPool(patient_ids=("p1",)))
    trusted = OutboundPolicy(allowlist=frozenset({f"hospital.test:{port}"}), ca_bundle=str(ca))
    target = pin_target(f"https://hospital.test:{port}/fhir", trusted, resolver=lambda h, p: ["127.0.0.1"])
    assert (target.scheme, target.server_name, target.address) == ("https", "hospital.test", "127.0.0.1")
    result = run(target, LoadPlan(mix=mix, rate=20, duration_s=1), CAPS)
    assert result.statuses == {200: 20}
    # The public roots alone do not trust this certificate: every request fails its handshake.
    untrusted = pin_target(
        f"https://hospital.test:{port}/fhir",
        OutboundPolicy(allowlist=frozenset({f"hospital.test:{port}"})),
        resolver=lambda h, p: ["127.0.0.1"],
    )
    result = run(untrusted, LoadPlan(mix=mix, rate=20, duration_s=5, abort=AbortRule(window_s=1)), CAPS)
    assert result.outcome is Outcome.FAILED and result.answered == 0
    assert set(result.errors_by_kind) == {"tls"}


# --- plans and caps -------------------------------------------------------------------------


def test_a_plan_above_a_cap_is_refused_with_the_cap_named(sandbox: RemoteSandbox) -> None:
    mix = reads(sandbox)
    caps = Caps(max_rate=100, max_concurrency=10, max_duration_s=60, max_total_requests=1_000)
    cases = {
        "max_rate": LoadPlan(mix=mix, rate=101, duration_s=5, concurrency=10),
        "max_concurrency": LoadPlan(mix=mix, rate=10, duration_s=5, concurrency=11),
        "max_duration_s": LoadPlan(mix=mix, rate=10, duration_s=50, ramp_s=11, concurrency=10),
        "max_total_requests": LoadPlan(mix=mix, rate=100, duration_s=11, concurrency=10),
    }
    for cap, plan in cases.items():
        with pytest.raises(PlanError) as refused:
            run(sandbox.target(), plan, caps)
        assert refused.value.cap == cap, cap
        assert "above the cap of" in str(refused.value)
    staircase = LoadPlan(mix=mix, rate=0, duration_s=0, staircase=Staircase((50, 150), 2), concurrency=10)
    with pytest.raises(PlanError, match="150 req/s is above the cap of 100"):
        validate(staircase, caps)
    assert sandbox.requests() == []  # nothing was sent for a refused plan


def test_malformed_plans_say_what_to_fix(sandbox: RemoteSandbox) -> None:
    mix = reads(sandbox)
    bad = {
        "rate": LoadPlan(mix=mix, rate=0, duration_s=5),
        "duration_s": LoadPlan(mix=mix, rate=10, duration_s=0),
        "concurrency": LoadPlan(mix=mix, rate=10, duration_s=5, concurrency=0),
        "mix": LoadPlan(mix=(), rate=10, duration_s=5),
        "staircase": LoadPlan(mix=mix, rate=0, duration_s=0, staircase=Staircase((50, 20), 2)),
        "abort": LoadPlan(mix=mix, rate=10, duration_s=5, abort=AbortRule(error_pct=0)),
    }
    for name, plan in bad.items():
        with pytest.raises(PlanError) as refused:
            validate(plan, CAPS)
        assert refused.value.field == name and refused.value.cap is None
    odd = RequestType("odd", 1, lambda rng: ("GET", "Patient/with space"))
    with pytest.raises(PlanError, match="percent-encoded path"):
        validate(LoadPlan(mix=(odd,), rate=10, duration_s=5), CAPS)
    with pytest.raises(ValueError, match="line breaks"):
        PinnedTarget("127.0.0.1", 80, "h", "http", "/fhir", headers=(("Authorization", "x\r\ny"),))
    with pytest.raises(ValueError, match="unknown request type"):
        standard_mix({"patient_delete": 1}, RecordPool(patient_ids=("1",)))
    with pytest.raises(ValueError, match="identifier"):
        standard_mix({PATIENT_BY_IDENTIFIER: 1}, RecordPool(patient_ids=("1",)))


def test_the_schedule_spaces_arrivals_evenly_and_ramps_linearly() -> None:
    steady = Schedule((Stage("steady", 10, 200, 200),))
    assert steady.total == 2_000
    assert [round(steady.time_of(n), 6) for n in (0, 1, 1999)] == [0.0025, 0.0075, 9.9975]
    ramp = Schedule((Stage("ramp-up", 4, 0, 100), Stage("steady", 2, 100, 100)))
    assert ramp.total == 400  # 200 while ramping (the triangle), 200 at the rate
    assert ramp.count_at(2) == 50 and ramp.count_at(4) == 200
    assert Staircase.linear(40, 40, 3, 2).rates == (40, 80, 120)
    times = [ramp.time_of(n) for n in range(ramp.total)]
    assert times == sorted(times) and all(ramp.count_at(t + 1e-9) == n + 1 for n, t in enumerate(times))


# --- the request mix ------------------------------------------------------------------------


def test_the_production_mix_hits_real_records(sandbox: RemoteSandbox) -> None:
    pool = RecordPool(patient_ids=tuple(sandbox.patient_ids), identifiers=tuple(sandbox.mrns()))
    weights = {
        PATIENT_READ: 4,
        PATIENT_BY_IDENTIFIER: 2,
        OBSERVATION_BY_PATIENT: 2,
        CONDITION_BY_PATIENT: 1,
        ENCOUNTER_BY_PATIENT: 1,
    }
    mix = standard_mix(weights, pool)
    result = run(sandbox.target(), LoadPlan(mix=mix, rate=100, duration_s=3, seed=7), CAPS)
    assert result.outcome is Outcome.COMPLETED and result.answered + result.dropped == 300
    assert result.statuses == {200: result.answered}  # a made-up id would be a 404
    counts = {t.name: t.count for t in result.per_type}
    assert set(counts) == set(weights) and sum(counts.values()) == result.sent
    assert counts[PATIENT_READ] > counts[CONDITION_BY_PATIENT]  # weights 4:1 over 300 requests
    targets = [r["target"] for r in sandbox.requests()]
    assert any(t.startswith("/fhir/Patient?identifier=") and "%7C" in t for t in targets)
    assert {t.split("?")[0].split("/")[2] for t in targets} == {"Patient", "Observation", "Condition", "Encounter"}
    assert all(t.split("/")[3] in sandbox.patient_ids for t in targets if t.startswith("/fhir/Patient/"))
    # The same seed builds the same requests.
    first, second = random.Random(7), random.Random(7)
    assert [t.build(first) for t in mix * 20] == [t.build(second) for t in mix * 20]


# --- done when 1: the engine measures injected latency at the target rate --------------------


def test_done_when_1_fifty_ms_at_two_hundred_per_second_for_thirty_seconds(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(latency_ms=50)
    progress: list[Any] = []
    plan = LoadPlan(mix=reads(sandbox), rate=200, duration_s=30, concurrency=50)
    result = run(sandbox.target(), plan, CAPS, progress=progress.append)
    show("done-when 1", result)
    assert result.outcome is Outcome.COMPLETED
    assert abs(result.achieved_rps - 200) <= 0.05 * 200
    assert abs(result.latency.p50_ms - 50) <= 0.10 * 50
    assert result.latency.p50_ms >= 50  # the injected latency is a floor: nothing is measured short
    assert len(result.per_second) >= 30 and all(s.target_rps == 200 for s in result.per_second[:30])
    assert sum(s.sent for s in result.per_second) == result.sent
    assert result.statuses == {200: result.answered}
    # The sandbox's own log agrees with what the engine says it sent.
    assert len(sandbox.requests()) == result.sent
    assert len(progress) >= 28 and progress[-1].sent >= progress[0].sent
    stored = json.loads(json.dumps(result.to_dict()))  # JSON-ready for the step's result
    assert stored["latency"]["p50_ms"] == result.latency.p50_ms and stored["statuses"] == {"200": result.answered}


def test_a_latency_distribution_is_measured_as_injected(sandbox: RemoteSandbox) -> None:
    # Lognormal, median 60 ms, sigma 0.5: p90 = 60 e^(1.2816 * 0.5) = 113.9 ms, p99 = 60 e^(2.3263 * 0.5) = 192 ms.
    sandbox.set_faults(latency_median_ms=60, latency_sigma=0.5)
    result = run(sandbox.target(), LoadPlan(mix=reads(sandbox), rate=100, duration_s=6), CAPS)
    show("lognormal 60 ms, sigma 0.5", result)
    # What the sandbox itself took per request, by its own clock: the injected draw plus whatever
    # a busy machine added to its threads. The engine, measuring from outside, must agree with it.
    served = sorted((r["answered"] - r["arrived"]) * 1000 for r in sandbox.requests())
    server_p50, server_p90 = served[len(served) // 2], served[int(len(served) * 0.9)]
    print(f"server's own p50 {server_p50:.1f} p90 {server_p90:.1f} ms")
    assert abs(server_p50 - 60) <= 0.25 * 60 and abs(server_p90 - 113.9) <= 0.25 * 113.9
    assert abs(result.latency.p50_ms - server_p50) <= 0.10 * server_p50
    assert abs(result.latency.p90_ms - server_p90) <= 0.10 * server_p90
    assert result.latency.p99_ms > result.latency.p90_ms > result.latency.p50_ms


# --- done when 2: the open model shows the queueing a closed loop hides ------------------------


def test_done_when_2_open_model_shows_queueing_that_a_closed_loop_hides(sandbox: RemoteSandbox) -> None:
    # Two places, each held 20 ms: the server carries at most 100 req/s; 110 are offered.
    sandbox.set_faults(max_concurrency=2, latency_ms=20)
    target, mix = sandbox.target(), reads(sandbox)
    closed = run_closed(target, mix, CAPS, users=2, duration_s=6, rate=110)
    closed_queue = sandbox.capacity()["peak_queued"]
    sandbox.set_faults(max_concurrency=2, latency_ms=20)  # resets the counters
    opened = run(target, LoadPlan(mix=mix, rate=110, duration_s=6, concurrency=50), CAPS)
    open_queue = sandbox.capacity()["peak_queued"]
    print(f"\n{'at 110 req/s':16}{'achieved':>10}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'dropped':>9}  server queue")
    for label, result, queue in (("closed loop (2)", closed, closed_queue), ("open model", opened, open_queue)):
        lat = result.latency
        print(
            f"{label:16}{result.achieved_rps:>10.1f}{lat.p50_ms:>8.1f}{lat.p90_ms:>8.1f}{lat.p99_ms:>8.1f}"
            f"{lat.max_ms:>8.1f}{result.dropped:>9}  {queue}"
        )
    # The closed loop slows itself to what the server carries, never makes it queue, and reports
    # the bare service time: a server at its limit looks healthy.
    assert closed_queue == 0 and closed.dropped == 0
    assert closed.achieved_rps < 105
    # Requests arriving on schedule queue at the server, and the open model's latency shows it.
    assert open_queue > 0
    assert opened.latency.p99_ms > 3 * closed.latency.p99_ms
    assert opened.latency.p50_ms > 2 * closed.latency.p50_ms
    # And it says the rate was not held, instead of quietly sending less.
    assert opened.dropped_by_reason["no_connection"] > 0
    assert opened.sla is not None and not opened.sla.passed


# --- done when 3: throttling and the abort threshold --------------------------------------


def _early_arrivals(log: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """Requests that arrived after a 429 was answered and before its Retry-After had passed."""
    early = []
    for throttled in (r for r in log if r["status"] == 429):
        until = throttled["answered"] + float(throttled["retry_after"])
        early += [
            (r["arrived"] - throttled["answered"], r) for r in log if throttled["answered"] < r["arrived"] < until
        ]
    return early


def test_done_when_3_no_request_goes_out_before_retry_after(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(throttle_every=25, retry_after=1)
    plan = LoadPlan(mix=reads(sandbox), rate=50, duration_s=6, concurrency=1)
    result = run(sandbox.target(), plan, CAPS)
    show("throttled every 25th, Retry-After 1 s", result)
    log = sandbox.requests()
    throttles = [r for r in log if r["status"] == 429]
    assert len(throttles) >= 2 and result.throttled == len(throttles)
    assert _early_arrivals(log) == []  # by the sandbox's own clock
    assert result.paused_s >= len(throttles) * 1.0 - 1.0  # the last pause may run past the end
    assert result.dropped_by_reason["paused"] > 0  # due while paused: counted, never sent late
    assert result.statuses[429] == len(throttles) and result.error_pct_by_status[429] > 0


def test_the_backoff_is_global_across_connections(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(throttle_every=40, retry_after=1, latency_ms=5)
    plan = LoadPlan(mix=reads(sandbox), rate=200, duration_s=5, concurrency=10)
    result = run(sandbox.target(), plan, CAPS)
    show("throttled every 40th over 10 connections", result)
    log = sandbox.requests()
    throttles = [r for r in log if r["status"] == 429]
    assert len(throttles) >= 2 and result.throttled == len(throttles)
    # After a 429 only requests already on the wire may still arrive: at most the other nine
    # connections' one each, per 429, however many connections are open.
    early = _early_arrivals(log)
    assert len(early) <= 9 * len(throttles)
    assert len(log) < 0.6 * plan.rate * plan.duration_s  # a second paused per 40 requests


def test_a_retry_after_longer_than_the_policy_allows_ends_the_run(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(throttle_every=10, retry_after=120)
    result = run(sandbox.target(), LoadPlan(mix=reads(sandbox), rate=50, duration_s=10, concurrency=1), CAPS)
    assert result.outcome is Outcome.ABORTED
    assert "wait 120 s" in result.reason and result.answered == 10
    assert result.sla is not None and not result.sla.passed


def test_done_when_3_the_abort_threshold_stops_a_run_early(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(rate_5xx=0.5)
    plan = LoadPlan(
        mix=reads(sandbox), rate=100, duration_s=20, abort=AbortRule(error_pct=30, window_s=2, min_requests=20)
    )
    result = run(sandbox.target(), plan, CAPS)
    show("abort at 30% errors", result)
    assert result.outcome is Outcome.ABORTED
    assert "abort threshold of 30%" in result.reason
    assert result.elapsed_s < plan.duration_s / 2 and result.sent < plan.rate * plan.duration_s / 2
    assert result.statuses[503] > 0 and result.errors_by_kind == {}
    # Stopped sending, not just counting (a request cut off on the wire may not reach the log).
    assert result.sent - result.interrupted <= len(sandbox.requests()) <= result.sent
    assert result.sla is not None and not result.sla.passed and "aborted" in result.sla.reasons[0]


# --- other ways a run ends -----------------------------------------------------------------


def test_a_target_that_stops_answering_fails_the_run_keeping_what_was_measured(sandbox: RemoteSandbox) -> None:
    hang = threading.Timer(2.0, sandbox.set_faults, kwargs={"latency_ms": 600_000})
    hang.start()
    try:
        target = sandbox.target(read_timeout=2)
        result = run(target, LoadPlan(mix=reads(sandbox), rate=50, duration_s=20), CAPS)
    finally:
        hang.cancel()
    show("server hangs after 2 s", result)
    assert result.outcome is Outcome.FAILED and "stopped answering" in result.reason
    assert 50 <= result.answered <= 150 and result.latency.count == result.answered
    first = result.per_second[0]  # before the hang: everything sent was answered, and kept
    assert result.elapsed_s < 10 and first.answered == first.sent >= 40 and first.statuses == {200: first.sent}


def test_a_target_that_refuses_connections_fails_the_run() -> None:
    target = PinnedTarget(address="127.0.0.1", port=9, host_header="127.0.0.1:9", scheme="http", base_path="/fhir")
    mix = standard_mix({PATIENT_READ: 1}, RecordPool(patient_ids=("1",)))
    plan = LoadPlan(mix=mix, rate=50, duration_s=20, abort=AbortRule(window_s=2))
    result = run(target, plan, CAPS)
    assert result.outcome is Outcome.FAILED and result.answered == 0
    assert set(result.errors_by_kind) == {"connect"} and result.error_pct == 100
    assert "could not be reached" in result.reason and result.elapsed_s < 10


def test_cancel_and_progress_are_polled_every_second(sandbox: RemoteSandbox) -> None:
    seen: list[Any] = []
    result = run(
        sandbox.target(),
        LoadPlan(mix=reads(sandbox), rate=50, duration_s=30),
        CAPS,
        progress=seen.append,
        cancelled=lambda: len(seen) >= 2,
    )
    assert result.outcome is Outcome.CANCELLED and result.reason == "cancelled by a person"
    assert len(seen) == 2 and result.elapsed_s < 5
    assert [p.sent for p in seen] == sorted(p.sent for p in seen) and seen[-1].target_rps == 50
    assert result.answered > 0 and result.answered + result.interrupted + result.failed == result.sent


def test_progress_hands_over_each_measured_second_once_as_the_report_has_it(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(latency_ms=20)
    seen: list[Any] = []
    result = run(sandbox.target(), LoadPlan(mix=reads(sandbox), rate=20, duration_s=5), CAPS, progress=seen.append)
    handed = [second for report in seen for second in report.seconds]
    numbers = [second.second for second in handed]
    assert numbers == sorted(set(numbers)) and len(numbers) >= 3  # once each, in order, while it ran
    final = {second.second: second for second in result.per_second}
    for second in handed:
        kept = final[second.second]
        assert (second.sent, second.answered, second.statuses, second.latency) == (
            kept.sent,
            kept.answered,
            kept.statuses,
            kept.latency,
        )
        assert second.latency.p50_ms >= 20 and second.throughput == kept.throughput


def test_the_concurrency_cap_is_never_exceeded(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(latency_ms=200)  # 5 connections carry 25 req/s; 100 are asked for
    result = run(sandbox.target(), LoadPlan(mix=reads(sandbox), rate=100, duration_s=3, concurrency=5), CAPS)
    show("concurrency cap 5", result)
    log = sandbox.requests()
    events = sorted([(r["arrived"], 1) for r in log] + [(r["answered"], -1) for r in log])
    in_service = peak = 0
    for _, step in events:
        in_service += step
        peak = max(peak, in_service)
    assert peak <= 5 and result.connections_opened <= 5
    assert result.dropped_by_reason["no_connection"] > 0  # counted, not queued in the engine
    assert result.sla is not None and not result.sla.passed and "could not be sent on time" in result.sla.reasons[0]


def test_a_staircase_reports_the_highest_rate_that_held_the_sla(sandbox: RemoteSandbox) -> None:
    # Two places of 20 ms each: the server carries 100 req/s at most, so the third step (twice that) cannot hold.
    sandbox.set_faults(max_concurrency=2, latency_ms=20)
    plan = LoadPlan(
        mix=reads(sandbox),
        rate=0,
        duration_s=0,
        staircase=Staircase((20, 40, 200, 400), 2),
        sla=Sla(p95_ms=150, max_error_pct=1),
        late_after_s=0.5,  # a busy test machine may stall the engine; that is not the server's capacity
    )
    result = run(sandbox.target(), plan, CAPS)
    for stage in result.stages:
        print(f"\n{stage.label}: {stage.target_rps:g} req/s, p95 {stage.latency.p95_ms:.0f} ms, {stage.sla}")
    assert result.highest_passing_rate == 40
    steps = {s.step: s for s in result.stages if s.step}
    assert steps[1].sla and steps[1].sla.passed and steps[2].sla and steps[2].sla.passed
    assert steps[3].sla and not steps[3].sla.passed
    assert 4 not in steps or steps[4].ran_s < 2  # the search stopped after the step that missed
    assert "step 3 at 200 req/s missed the SLA" in result.reason
    assert result.sla is not None and result.sla.passed


def test_the_sla_verdict_says_what_was_missed_in_words(sandbox: RemoteSandbox) -> None:
    sandbox.set_faults(latency_ms=40)
    plan = LoadPlan(mix=reads(sandbox), rate=50, duration_s=2, sla=Sla(p95_ms=30, p99_ms=60_000, max_error_pct=0))
    result = run(sandbox.target(), plan, CAPS)
    assert result.sla is not None and not result.sla.passed
    # 40 ms is a floor under every answer, so p95 misses the agreed 30 ms whatever else happens.
    assert re.fullmatch(r"p95 (\d+) ms is above the agreed 30 ms", result.sla.reasons[0])
    assert int(result.sla.reasons[0].split()[1]) >= 40
    assert not any(reason.startswith(("p99", "errors")) for reason in result.sla.reasons)
    assert sum(count for _, count in result.histogram) == result.answered
    assert result.histogram[-1][0] == result.latency.max_ms
