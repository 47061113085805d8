"""The product read API's added latency over a direct adapter call, at p50 and p95 (goal: at most 1.2x).

Both read the same Patient of the same sandbox hospital (generic flavour, in this process, answering
after ``--latency-ms``, as a real EHR takes tens of milliseconds): the direct path is the adapter's
``read_patient`` on a warm adapter; the read API path is an HTTP GET with a service token to the
portal under gunicorn (one threaded worker, as the README runs it, DEBUG off, persistent database
connections, HTTP keep-alive) on a scratch PostgreSQL database, which checks the token and the live state, calls the
same kind of adapter, audits and counts.

The two paths are measured in alternation (which goes first flips every round), so a noisy machine
slows both alike; the load average is printed at the start and the end. The audit trail is checked
to hold one event per read-API request made.

The portal runs twice: as production runs it (a good token and its live state kept for
READ_API_AUTH_CACHE_SECONDS, 1 s by default, and read again in the background while requests keep
coming, so after the first few no request here reads them) and with that set to 0 (every request
reads them), whose figures are shown beside for what the cache is worth.

    .venv/bin/python -m benchmarks.readapi [--requests 400] [--latency-ms 20 50 100] [--auth-cache default 0]

BENCH_DATABASE_URL names the scratch database (it is dropped and migrated); default portal_readapi_bench.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(samples: list[float], share: float) -> float:
    """The nearest-rank percentile (share 0-1) of the samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="measured requests per path and latency")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per path first")
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[20, 50, 100], help="sandbox answer delays")
    parser.add_argument(
        "--auth-cache",
        nargs="+",
        default=["default", "0"],
        help="READ_API_AUTH_CACHE_SECONDS for each run of the portal ('default': the setting's default)",
    )
    args = parser.parse_args()
    print(f"load average at start: {_load()}")
    database = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/portal_readapi_bench")
    base, name = database.rsplit("/", 1)
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name}"], check=True)  # noqa: S607
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)  # noqa: S607
    # "default" runs of the portal leave the setting unset; so does this process, to name its value.
    os.environ.pop("READ_API_AUTH_CACHE_SECONDS", None)
    os.environ.update(DATABASE_URL=database, DJANGO_SETTINGS_MODULE="tests.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from connections.sandbox import SandboxHospital

    call_command("migrate", verbosity=0)
    hospital = SandboxHospital(flavour="generic", seed=3, patients=50).start()
    allow = f"127.0.0.1:{hospital.port}"
    from django.conf import settings

    settings.OUTBOUND_ALLOWLIST = [allow]
    key, code, patient_id, adapter = _world(hospital.base_url)
    runs: list[tuple[str, list[tuple[int, list[float], list[float]]]]] = []
    try:
        for cache in args.auth_cache:
            runs.append((cache, _measure(args, cache, database, allow, hospital, key, code, patient_id, adapter)))
    finally:
        hospital.stop()
    for cache, results in runs:
        label = f"{settings.READ_API_AUTH_CACHE_SECONDS:g} s, as production" if cache == "default" else f"{cache} s"
        print(f"== callers kept (READ_API_AUTH_CACHE_SECONDS): {label}")
        for latency, direct_ms, api_ms in results:
            _report(latency, direct_ms, api_ms, args.requests)
    print(f"load average at end: {_load()}")


def _measure(
    args: argparse.Namespace,
    cache: str,
    database: str,
    allow: str,
    hospital: Any,
    key: str,
    code: str,
    patient_id: str,
    adapter: Any,
) -> list[tuple[int, list[float], list[float]]]:
    """One run of the portal under gunicorn: (latency, direct ms, read-API ms) for each sandbox latency."""
    from portal.models import AuditEvent

    port = _free_port()
    # As production runs: DEBUG off, persistent database connections (DATABASE_CONN_MAX_AGE is 60 there).
    env = dict(
        os.environ,
        OUTBOUND_ALLOWLIST=allow,
        DATABASE_URL=database,
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_CONN_MAX_AGE="60",
        DJANGO_DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
    )
    env.pop("READ_API_AUTH_CACHE_SECONDS", None)
    if cache != "default":
        env["READ_API_AUTH_CACHE_SECONDS"] = cache
    # One threaded worker, as the README runs the web tier: it keeps the product's connections alive.
    command = [sys.executable, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["--worker-class", "gthread", "--threads", "4"]
    server = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/api/v1/live/{code}/patients/{patient_id}/"
    client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10)
    results: list[tuple[int, list[float], list[float]]] = []
    try:
        _wait_for(client, url)
        audited = AuditEvent.objects.filter(action="read_api.patient")
        for latency in args.latency_ms:
            hospital.set_faults(latency_ms=latency)
            before = audited.count()

            def direct() -> None:
                adapter.read_patient(patient_id)

            def through() -> None:
                response = client.get(url)
                assert response.status_code == 200, response.text

            for _ in range(args.warmup):
                direct()
                through()
            direct_ms, api_ms = _alternate(direct, through, args.requests)
            made = args.warmup + args.requests
            written = audited.count() - before
            if written != made:
                raise SystemExit(f"{made} read-API requests wrote {written} audit events: every read must be audited.")
            results.append((latency, direct_ms, api_ms))
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)
    return results


def _wait_for(client: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("The portal did not answer under gunicorn.")
        time.sleep(0.2)


def _alternate(first: Callable[[], None], second: Callable[[], None], rounds: int) -> tuple[list[float], list[float]]:
    """Time both calls once per round, the order flipping every round; (first's ms, second's ms)."""
    times: tuple[list[float], list[float]] = ([], [])
    calls = (first, second)
    for index in range(rounds):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            started = time.perf_counter()
            calls[which]()
            times[which].append((time.perf_counter() - started) * 1000)
    return times


def _report(latency: int, direct_ms: list[float], api_ms: list[float], requests: int) -> None:
    d50, d95 = _percentile(direct_ms, 0.50), _percentile(direct_ms, 0.95)
    t50, t95 = _percentile(api_ms, 0.50), _percentile(api_ms, 0.95)
    print(f"Patient read, {requests} requests each (alternating), sandbox answering after {latency} ms")
    print(f"  direct adapter call:           p50 {d50:7.2f} ms   p95 {d95:7.2f} ms")
    print(f"  read API (gunicorn gthread):    p50 {t50:7.2f} ms   p95 {t95:7.2f} ms")
    print(f"  added: p50 +{t50 - d50:.2f} ms, p95 +{t95 - d95:.2f} ms")
    d99, t99 = _percentile(direct_ms, 0.99), _percentile(api_ms, 0.99)
    print(f"  p99 (no goal): direct {d99:.2f} ms, read API {t99:.2f} ms ({t99 / d99:.2f}x)")
    for label, ratio in (("p50", t50 / d50), ("p95", t95 / d95)):
        print(f"  ratio {label}: {ratio:.2f}x (goal <= {GOAL}x) {'met' if ratio <= GOAL else 'NOT met'}")


def _world(base_url: str) -> tuple[str, str, str, Any]:
    """A tenant with a live connection to the sandbox and a service token; (key, connection code, patient, adapter)."""
    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from connections.models import EHRConnection
    from connections.services import build_adapter
    from onboarding.golive import readapi
    from onboarding.live.models import LiveState
    from onboarding.models import Onboarding
    from portal.models import Tenant
    from portal.roles import CUSTOMER_SUCCESS, sync_role_groups

    sync_role_groups()
    staff = User.objects.create(username="bench-cs")
    staff.groups.add(*Group.objects.filter(name=CUSTOMER_SUCCESS))
    staff = User.objects.get(pk=staff.pk)
    tenant = Tenant.objects.create(name="Bench Hospital", timezone="America/Chicago")
    connection = EHRConnection.objects.create(tenant=tenant, name="Bench", vendor="generic", base_url=base_url)
    onboarding = Onboarding.objects.create(tenant=tenant, connection=connection)
    LiveState.objects.create(onboarding=onboarding, tenant=tenant, stage="full", live_since=timezone.now())
    account = readapi.create_account(user=staff, name="Bench product")
    _, key = readapi.issue_token(user=staff, account=account, tenant=tenant)
    adapter = build_adapter(connection)
    patient_id = adapter.search_patients(count=1)[0].id
    return key, str(connection.code), patient_id, adapter


if __name__ == "__main__":
    main()
