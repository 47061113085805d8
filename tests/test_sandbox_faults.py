"""Each sandbox fault, met through a vendor adapter over the guarded client, ends in its typed error.

The faults are the ways real hospital endpoints misbehave: a slow drip, a huge or
decompression-bomb body, a login page where FHIR should be, cut-off JSON, the wrong resource,
a paging loop, a redirect elsewhere, a Retry-After date. Every test switches one on in a real
sandbox on loopback and checks the adapter ends in the typed error a person can act on, without
holding a worker or its memory hostage. No database is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connections.adapters import ConnectionConfig, FHIRAdapter, get_adapter
from connections.auth import AuthConfig
from connections.errors import ErrorKind, RemoteError
from connections.http import GuardedClient, OutboundPolicy
from connections.sandbox import FAULT_SPECS, SandboxHospital

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


@pytest.fixture(scope="module")
def hospitals() -> Iterator[dict[str, SandboxHospital]]:
    """Open sandboxes of three paging styles (offset, relative links, opaque cursor)."""
    running = {
        name: SandboxHospital(flavour=name, seed=5, patients=12).start() for name in ("generic", "meditech", "epic")
    }
    yield running
    for hospital in running.values():
        hospital.stop()


@pytest.fixture
def hospital(hospitals: dict[str, SandboxHospital]) -> SandboxHospital:
    return hospitals["generic"]


@pytest.fixture(autouse=True)
def no_faults(hospitals: dict[str, SandboxHospital]) -> Iterator[None]:
    yield
    for running in hospitals.values():
        running.set_faults()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def connect(
    hospitals: dict[str, SandboxHospital], sleeps: list[float]
) -> Iterator[Callable[..., tuple[FHIRAdapter, GuardedClient]]]:
    """An adapter for one sandbox over a guarded client with the given policy overrides."""
    clients: list[GuardedClient] = []

    def factory(target: SandboxHospital, **policy: Any) -> tuple[FHIRAdapter, GuardedClient]:
        allow = frozenset(f"127.0.0.1:{h.port}" for h in hospitals.values())
        client = GuardedClient(OutboundPolicy(allowlist=allow, **policy), sleep=sleeps.append)
        clients.append(client)
        config = ConnectionConfig(vendor=target.flavour, base_url=target.base_url, auth=AuthConfig(method="none"))
        return get_adapter(config, client), client

    yield factory
    for client in clients:
        client.close()


def raises(call: Callable[[], Any]) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call()
    return info.value


# --- Time -----------------------------------------------------------------------------------------


def test_a_slow_drip_stops_at_the_deadline(
    hospital: SandboxHospital, connect: Callable[..., Any], sleeps: list[float]
) -> None:
    hospital.set_faults(slow_drip_bps=200)  # a page of 10 patients would take about a minute
    adapter, _ = connect(hospital, deadline=1.0, read_timeout=5.0)
    started = time.monotonic()
    error = raises(lambda: adapter.search_patients(count=10))
    elapsed = time.monotonic() - started
    assert error.kind is ErrorKind.DEADLINE, error
    assert elapsed <= 1.0 + 0.5, f"took {elapsed:.2f}s against a 1.0s deadline"
    assert error.detail["attempts"] == 1 and sleeps == []  # a deadline is not retried


def test_the_drip_really_sends_bytes_all_along(hospital: SandboxHospital) -> None:
    """The drip is a trickle, not silence: without a total deadline, a read timeout never fires."""
    hospital.set_faults(slow_drip_bps=400)
    with (
        httpx.Client(timeout=httpx.Timeout(2.0)) as raw,
        raw.stream("GET", f"{hospital.base_url}/Patient/{hospital.patient_ids[0]}") as response,
    ):
        started = time.monotonic()
        got = b""
        for chunk in response.iter_raw():
            got += chunk
            if time.monotonic() - started > 1.0:
                break
    assert 100 <= len(got) <= 800  # ~400 bytes a second, each piece well inside the 2 s read timeout


# --- Size -----------------------------------------------------------------------------------------


def test_an_oversized_body_is_too_large(hospital: SandboxHospital, connect: Callable[..., Any]) -> None:
    hospital.set_faults(oversized_bytes=3 * MIB)
    adapter, _ = connect(hospital, max_response_bytes=1 * MIB)
    assert adapter.capability().fhir_version.startswith("4.0.")  # metadata is left alone
    for call in (lambda: adapter.search_patients(count=5), lambda: adapter.read_patient(hospital.patient_ids[0])):
        error = raises(call)
        assert error.kind is ErrorKind.TOO_LARGE and error.detail["attempts"] == 1
    hospital.set_faults(oversized_bytes=64 * 1024)
    assert adapter.search_patients(count=5) == []  # large but valid: an empty Bundle, read fine


_BOMB_CHILD = textwrap.dedent(
    """
    import gc, json, re, sys
    import psutil
    from connections.adapters import ConnectionConfig, get_adapter
    from connections.auth import AuthConfig
    from connections.errors import RemoteError
    from connections.http import GuardedClient, OutboundPolicy

    def peak_rss():
        # The kernel's high-water mark of this process's resident memory (VmHWM), in bytes.
        status = open("/proc/self/status").read()
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024

    base_url, allow, cap, patient_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = GuardedClient(OutboundPolicy(allowlist=frozenset({allow}), max_response_bytes=cap))
    config = ConnectionConfig(vendor="generic", base_url=base_url, auth=AuthConfig(method="none"))
    adapter = get_adapter(config, client)
    adapter.capability()  # warm up imports, the connection pool and JSON parsing
    gc.collect()
    before = psutil.Process().memory_info().rss
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # restart the high-water mark from the current RSS
    try:
        adapter.read_patient(patient_id)
        kind = None
    except RemoteError as exc:
        kind = exc.kind.value
    print(json.dumps({"kind": kind, "rise": peak_rss() - before}))
    """
)


def test_a_gzip_bomb_stops_at_the_cap_without_memory_rising(hospital: SandboxHospital) -> None:
    hospital.set_faults(gzip_bomb_mib=256)
    cap = 4 * MIB
    url = f"{hospital.base_url}/Patient/{hospital.patient_ids[0]}"
    # A generous read timeout: building the bomb takes seconds on a busy machine; memory is what is measured.
    with httpx.Client(timeout=60) as raw, raw.stream("GET", url) as response:
        on_the_wire = sum(len(chunk) for chunk in response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
    assert on_the_wire < cap  # small on the wire, 256 MiB once inflated
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _BOMB_CHILD,
            hospital.base_url,
            f"127.0.0.1:{hospital.port}",
            str(cap),
            hospital.patient_ids[0],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["kind"] == "too_large"
    # 256 MiB inflated naively would show here; bounded inflation holds about the cap.
    assert result["rise"] <= cap + 24 * MIB, f"memory rose {result['rise'] / MIB:.1f} MiB"


# --- Payloads -------------------------------------------------------------------------------------


def test_an_html_login_page_with_status_200_is_not_fhir(hospital: SandboxHospital, connect: Callable[..., Any]) -> None:
    hospital.set_faults(not_fhir=True)
    adapter, _ = connect(hospital)
    for call in (adapter.capability, lambda: adapter.read_patient(hospital.patient_ids[0])):
        error = raises(call)
        assert error.kind is ErrorKind.NOT_FHIR, error


def test_truncated_json_is_a_bad_payload_without_the_body(
    hospital: SandboxHospital, connect: Callable[..., Any]
) -> None:
    hospital.set_faults(truncated_json=True)
    adapter, _ = connect(hospital)
    for call in (lambda: adapter.search_patients(count=5), lambda: adapter.read_patient(hospital.patient_ids[0])):
        error = raises(call)
        assert error.kind is ErrorKind.BAD_PAYLOAD and "cut off" in error.message
        assert "body" not in error.detail  # a cut-off Patient is still PHI


def test_a_wrong_resource_type_is_a_bad_payload(hospital: SandboxHospital, connect: Callable[..., Any]) -> None:
    hospital.set_faults(wrong_resource_type="Practitioner")
    adapter, _ = connect(hospital)
    read = raises(lambda: adapter.read_patient(hospital.patient_ids[0]))
    assert read.kind is ErrorKind.BAD_PAYLOAD and "Practitioner where a Patient" in read.message
    search = raises(lambda: adapter.search_patients(count=5))
    assert search.kind is ErrorKind.BAD_PAYLOAD and "other than a Bundle" in search.message


@pytest.mark.parametrize("flavour", ["generic", "meditech", "epic"])
def test_a_next_link_loop_is_caught(
    hospitals: dict[str, SandboxHospital], connect: Callable[..., Any], flavour: str
) -> None:
    hospitals[flavour].set_faults(next_link_loop=True)
    adapter, _ = connect(hospitals[flavour])
    error = raises(lambda: list(adapter.iter_patients(limit=100, page_size=5)))
    assert error.kind is ErrorKind.BAD_PAYLOAD and "paging loop" in error.message


# --- Redirects and throttling ---------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://169.254.169.254", "http://10.0.0.7:8080", "http://127.0.0.2:{port}"])
def test_a_redirect_to_another_host_is_refused(
    hospital: SandboxHospital, connect: Callable[..., Any], origin: str
) -> None:
    target = origin.format(port=hospital.port)  # 127.0.0.2: loopback, same port, but not allowlisted
    hospital.set_faults(redirect_to=target)
    adapter, _ = connect(hospital)
    error = raises(adapter.capability)
    assert error.kind is ErrorKind.BLOCKED_ADDRESS
    assert error.detail["location"].startswith(target)


def test_retry_after_as_a_date_is_honoured_then_throttled(
    hospital: SandboxHospital, connect: Callable[..., Any], sleeps: list[float]
) -> None:
    hospital.set_faults(rate_429=1.0, retry_after=2, retry_after_date=True)
    with httpx.Client() as raw:
        header = raw.get(f"{hospital.base_url}/Patient").headers["retry-after"]
    assert header.endswith(" GMT") and not header.isdigit()
    adapter, _ = connect(hospital)
    error = raises(lambda: adapter.search_patients(count=5))
    assert error.kind is ErrorKind.THROTTLED and error.detail["attempts"] == 3
    assert len(sleeps) == 2 and all(2.0 <= wait <= 3.0 for wait in sleeps), sleeps


# --- The switches themselves ----------------------------------------------------------------------


def test_new_faults_are_listed_and_refuse_bad_values(hospital: SandboxHospital) -> None:
    for name in (
        "slow_drip_bps",
        "oversized_bytes",
        "gzip_bomb_mib",
        "truncated_json",
        "wrong_resource_type",
        "next_link_loop",
        "redirect_to",
        "retry_after_date",
        "clock_offset_s",
    ):
        assert name in FAULT_SPECS and FAULT_SPECS[name].doc
    bad: dict[str, Any] = {
        "redirect_to": "ftp://elsewhere.example.org",
        "wrong_resource_type": "not a type",
        "gzip_bomb_mib": 5000,
        "clock_offset_s": True,
        "slow_drip_bps": -1,
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            hospital.set_faults(**{name: value})
    assert hospital.faults == {name: spec.default for name, spec in FAULT_SPECS.items()}


def test_response_faults_leave_metadata_and_control_alone(hospital: SandboxHospital) -> None:
    hospital.set_faults(truncated_json=True, wrong_resource_type="Practitioner")
    with httpx.Client() as raw:
        assert raw.get(f"{hospital.base_url}/metadata").json()["resourceType"] == "CapabilityStatement"
        faults = raw.get(f"http://127.0.0.1:{hospital.port}/_sandbox/faults").json()
    assert faults["truncated_json"] is True and json.dumps(faults)
