"""The product read API's added latency over a direct adapter call, at p50 and p95 (goal: at most 1.2x).

Both read the same Patient of the same sandbox hospital (generic flavour, in this process, answering
after ``--latency-ms``, as a real EHR takes tens of milliseconds): the direct path is the adapter's
``read_patient`` on a warm adapter; the read API path is an HTTP GET with a service token to the
portal under gunicorn (one worker, a real server process) on a scratch PostgreSQL database, which
reads the token, the live state and the cached mapping, calls the same adapter, audits and counts.

    .venv/bin/python -m benchmarks.readapi [--requests 300] [--latency-ms 20]

BENCH_DATABASE_URL names the scratch database (it is dropped and migrated); default portal_readapi_bench.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--latency-ms", type=int, default=20)
    args = parser.parse_args()
    database = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/portal_readapi_bench")
    base, name = database.rsplit("/", 1)
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name}"], check=True)  # noqa: S607
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)  # noqa: S607
    os.environ.update(DATABASE_URL=database, DJANGO_SETTINGS_MODULE="tests.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from connections.sandbox import SandboxHospital

    call_command("migrate", verbosity=0)
    hospital = SandboxHospital(flavour="generic", seed=3, patients=50).start()
    hospital.set_faults(latency_ms=args.latency_ms)
    allow = f"127.0.0.1:{hospital.port}"
    os.environ["OUTBOUND_ALLOWLIST"] = allow
    from django.conf import settings

    settings.OUTBOUND_ALLOWLIST = [allow]
    key, code, patient_id, adapter = _world(hospital.base_url)
    port = _free_port()
    # Persistent database connections, as production runs (DATABASE_CONN_MAX_AGE defaults to 60 there).
    env = dict(
        os.environ,
        OUTBOUND_ALLOWLIST=allow,
        DATABASE_URL=database,
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_CONN_MAX_AGE="60",
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "portal.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1/live/{code}/patients/{patient_id}/"
        client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get(url).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("The portal did not answer under gunicorn.")
            time.sleep(0.2)
        for _ in range(20):  # warm both paths
            client.get(url)
            adapter.read_patient(patient_id)
        direct, through = [], []
        for _ in range(args.requests):
            started = time.perf_counter()
            adapter.read_patient(patient_id)
            direct.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            response = client.get(url)
            through.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    finally:
        server.terminate()
        server.wait(timeout=10)
        hospital.stop()
    d50, d95 = _percentiles(direct)
    t50, t95 = _percentiles(through)
    print(f"Patient read, {args.requests} requests each, sandbox answering after {args.latency_ms:g} ms")
    print(f"  direct adapter call:           p50 {d50:7.2f} ms   p95 {d95:7.2f} ms")
    print(f"  read API (gunicorn, 1 worker): p50 {t50:7.2f} ms   p95 {t95:7.2f} ms")
    print(f"  added: p50 +{t50 - d50:.2f} ms, p95 +{t95 - d95:.2f} ms")
    for label, ratio in (("p50", t50 / d50), ("p95", t95 / d95)):
        print(f"  ratio {label}: {ratio:.2f}x (goal <= {GOAL}x) {'met' if ratio <= GOAL else 'NOT met'}")


def _world(base_url: str) -> tuple[str, str, str, Any]:
    """A tenant with a live connection to the sandbox and a service token; (key, connection code, patient, adapter)."""
    from django.contrib.auth.models import User
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
    staff.groups.add(
        *__import__("django.contrib.auth.models", fromlist=["Group"]).Group.objects.filter(name=CUSTOMER_SUCCESS)
    )
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
