"""Many hospitals onboarding at once: throughput, dispatch latency, dashboard cost, worker memory.

The load: 1,000 tenants, then 100 onboardings whose configure step is started at once (by a pool
of threads, as 100 people clicking "Start") against sandbox hospitals that answer every FHIR
request after 50 ms. It runs with 2 Celery workers, then with 4, each a `celery worker` process
as the README's production section starts one per machine (same queues, same -c), all on one
PostgreSQL and one Redis.

Reported, side by side for 2 and 4 workers:
- throughput in runs per minute, from the first click to the last run's end;
- dispatch latency, p50 and p95, from the click to the run's "running" (its claim by a worker);
- peak memory of a worker (its main process plus pool processes) and of all workers, by psutil;
- the sandboxes' own answer time during the load (p95 of a probe), to show they are not the bottleneck;
and, once, the dashboard's response time and query count at 1,000 tenants beside a trivial page
(the same layout and middleware, no data) measured in the same run.

Goals: dispatch p95 below 1 s; dashboard within 3x of the trivial page; 4 workers at least 1.7x the
throughput of 2 while the sandboxes are not the bottleneck.

It needs PostgreSQL (DATABASE_URL's server; the benchmark creates and drops its own database,
``portal_bench`` unless --database says otherwise) and starts its own redis-server on a free
loopback port. Run from the repository root:

    .venv/bin/python -m benchmarks.scale [--tenants 1000] [--runs 100] [--workers 2,4] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from tests.faults.harness import CeleryProcess, RedisServer, worker_args

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"dispatch_p95_s": 1.0, "dashboard_ratio": 3.0, "scaling": 1.7}
SANDBOXES = 4
LATENCY_MS = 50
_SERVE = (
    "import sys\n"
    "from connections.sandbox import SandboxHospital\n"
    "hospital = SandboxHospital(flavour='generic', seed=int(sys.argv[1]), patients=5,\n"
    "                           faults={'latency_ms': int(sys.argv[2])})\n"
    "print(hospital.base_url, flush=True)\n"
    "hospital.serve_forever()\n"
)


def main(argv: list[str] | None = None) -> int:
    """Bring up the scratch services, measure, print the report, and clean up whatever happens."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portal-scale-") as scratch:
        workdir = Path(scratch)
        with sandboxes(SANDBOXES, args.latency_ms) as urls, redis_server(workdir) as redis:
            env = configure_environment(args.database, redis.url, urls, workdir)
            database = fresh_database(args.database)
            try:
                return measure(args, env, urls, workdir)
            finally:
                drop_database(database)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The load's size and shape; the defaults are the issue's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100, help="onboardings started at once")
    parser.add_argument("--workers", default="2,4", help="worker counts to compare, comma-separated")
    parser.add_argument("--concurrency", type=int, default=8, help="pool processes per worker (celery -c)")
    parser.add_argument("--latency-ms", type=int, default=LATENCY_MS)
    parser.add_argument("--clickers", type=int, default=20, help="threads clicking Start at once")
    parser.add_argument(
        "--database",
        default="postgres://postgres@127.0.0.1:5432/portal_bench",
        help="a scratch PostgreSQL database: it is dropped and created again",
    )
    return parser.parse_args(argv)


# --- processes and settings ------------------------------------------------------------------------


@contextmanager
def sandboxes(count: int, latency_ms: int) -> Iterator[list[str]]:
    """Sandbox hospitals, each in a process of its own so they never share a GIL with the portal."""
    import subprocess

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(seed), str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for seed in range(1, count + 1)
    ]
    try:
        yield [process.stdout.readline().strip() for process in processes if process.stdout is not None]
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server of the benchmark's own, so it never touches a shared one."""
    server = RedisServer(workdir / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def configure_environment(database: str, broker: str, urls: list[str], workdir: Path) -> dict[str, str]:
    """The environment of this process and of the workers: production-like, on the scratch services."""
    allow = ",".join(sorted({urlsplit(url).netloc for url in urls}))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        PORTAL_VAR_DIR=str(workdir / "var"),
        DATABASE_URL=database,
        CELERY_BROKER_URL=broker,
        OUTBOUND_ALLOWLIST=allow,
        DJANGO_DEBUG="false",  # as in production: no SQL log growing with the run
        DATABASE_CONN_MAX_AGE="60",  # as in production
        LOG_LEVEL="WARNING",
    )
    return dict(os.environ)


def fresh_database(url: str) -> str:
    """Drop and create the scratch database, then migrate it."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return url


def drop_database(url: str) -> None:
    """Remove the scratch database, whatever connections still hold it."""
    import psycopg
    from django.db import connections

    connections.close_all()
    parts = urlsplit(url)
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


# --- the measurement ---------------------------------------------------------------------------------


def measure(args: argparse.Namespace, env: dict[str, str], urls: list[str], workdir: Path) -> int:
    """The dashboard once, then the load with each worker count, then the report."""
    user = seed(args.tenants, args.runs, urls)
    dashboard = measure_dashboard(user)
    loads = {}
    for count in [int(n) for n in args.workers.split(",")]:
        loads[count] = measure_load(count, args, env, urls, workdir, user)
    report(args, dashboard, loads)
    return 0


def seed(tenants: int, runs: int, urls: list[str]) -> Any:
    """Tenants with a connection, pipeline and past runs each; the first `runs` point at the sandboxes."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from connections.models import EHRConnection
    from onboarding.models import Onboarding, StepRun
    from portal.models import Tenant
    from portal.roles import CUSTOMER_SUCCESS

    rows = Tenant.objects.bulk_create(Tenant(name=f"Hospital {i:04d}") for i in range(tenants))
    conns = EHRConnection.objects.bulk_create(
        EHRConnection(
            tenant=tenant,
            name="Main EHR",
            vendor="generic",
            base_url=urls[i % len(urls)] if i < runs else "https://fhir.example.org/r4",
        )
        for i, tenant in enumerate(rows)
    )
    onboardings = Onboarding.objects.bulk_create(Onboarding(tenant=c.tenant, connection=c) for c in conns)
    history = []
    for onboarding in onboardings[runs:]:
        history.append(StepRun(onboarding=onboarding, step="configure", attempt=1, status="passed"))
        history.append(StepRun(onboarding=onboarding, step="test", attempt=1, status="failed"))
    StepRun.objects.bulk_create(history)
    user = get_user_model().objects.create_user("bench-cs", password="bench-password-not-secret")  # noqa: S106
    user.groups.add(Group.objects.get(name=CUSTOMER_SUCCESS))
    TOTPDevice.objects.create(user=user, name="bench", confirmed=True)
    return user


def measure_dashboard(user: Any, rounds: int = 40) -> dict[str, dict[str, float]]:
    """The dashboard at all tenants beside a trivial page, same client, interleaved, after a warm-up."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    with override_settings(ROOT_URLCONF="benchmarks.urls"):
        client = Client()
        client.force_login(user)
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user).persistent_id
        session.save()
        pages = {"dashboard": "/", "trivial page": "/bench/trivial/"}
        times: dict[str, list[float]] = {name: [] for name in pages}
        queries: dict[str, int] = {}
        for round_ in range(rounds + 3):
            for name, path in pages.items():
                with CaptureQueriesContext(connection) as captured:
                    began = time.perf_counter()
                    response = client.get(path)
                    took = time.perf_counter() - began
                assert response.status_code == 200, (name, response.status_code)
                if round_ >= 3:  # warm-up: templates compiled, connections open
                    times[name].append(took)
                    queries[name] = len(captured.captured_queries)
        assert f"{tenant_count()} hospitals".encode() in client.get("/").content
    return {
        name: {
            "median_ms": 1000 * statistics.median(values),
            "p95_ms": 1000 * percentile(values, 95),
            "queries": queries[name],
        }
        for name, values in times.items()
    }


def tenant_count() -> int:
    """How many tenants the dashboard should say it lists."""
    from portal.models import Tenant

    return Tenant.objects.count()


def measure_load(
    count: int, args: argparse.Namespace, env: dict[str, str], urls: list[str], workdir: Path, user: Any
) -> dict[str, float]:
    """Start `runs` configure steps at once with `count` workers running; time them to the end."""
    from django.db import connections

    from onboarding import services
    from onboarding.models import Onboarding, RunStatus, StepRun

    targets = list(Onboarding.objects.filter(connection__base_url__in=urls).order_by("pk")[: args.runs])
    StepRun.objects.filter(onboarding__in=targets).delete()
    workers = [
        CeleryProcess(
            worker_args(f"bench{count}-{i}", args.concurrency, queues="steps,maintenance"),
            env,
            workdir / f"worker-{count}-{i}.log",
        ).start()
        for i in range(count)
    ]
    memory = MemorySampler(workers)
    probe = SandboxProbe(urls)
    clicks: dict[int, datetime] = {}

    def click(onboarding: Onboarding) -> None:
        from django.utils import timezone

        try:
            clicked = timezone.now()
            run = services.start_step(user=user, onboarding=onboarding, step="configure")
            clicks[run.pk] = clicked
        finally:
            connections.close_all()

    try:
        psutil.cpu_percent()  # starts the machine-wide CPU measurement over the load
        with memory, probe:
            began = time.monotonic()
            with ThreadPoolExecutor(max_workers=args.clickers) as pool:
                list(pool.map(click, targets))
            finished = wait_for(lambda: StepRun.objects.filter(pk__in=clicks, status__in=FINAL).count() == len(clicks))
            wall = finished - began
            cpu_busy = psutil.cpu_percent()
    finally:
        for worker in workers:
            worker.stop()
    runs = list(StepRun.objects.filter(pk__in=clicks))
    failed = [run for run in runs if run.status != RunStatus.PASSED]
    if failed:
        raise SystemExit(f"{len(failed)} runs did not pass, e.g. {failed[0].error_kind}: {failed[0].error_message}")
    dispatch = [(run.started_at - clicks[run.pk]).total_seconds() for run in runs if run.started_at]
    first_click = min(clicks.values())
    last_end = max(run.finished_at for run in runs if run.finished_at)
    span = (last_end - first_click).total_seconds()
    return {
        "runs": len(runs),
        "runs_per_minute": 60 * len(runs) / span,
        "span_s": span,
        "wall_s": wall,
        "dispatch_p50_s": percentile(dispatch, 50),
        "dispatch_p95_s": percentile(dispatch, 95),
        "deliveries": sum(run.deliveries for run in runs),
        "worker_peak_mb": memory.peak_per_worker / 2**20,
        "workers_peak_mb": memory.peak_total / 2**20,
        "sandbox_p95_ms": 1000 * percentile(probe.samples, 95) if probe.samples else float("nan"),
        "sandbox_probes": len(probe.samples),
        "cpu_busy_pct": cpu_busy,
        "worker_cpu_ms_per_run": 1000 * memory.cpu_seconds / len(runs),
    }


FINAL = ("passed", "failed", "cancelled")


def wait_for(done: Callable[[], bool], timeout: float = 300) -> float:
    """Poll until done() and return when that was, or stop the benchmark after the timeout."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"the runs did not finish within {timeout} s")
        time.sleep(0.05)
    return time.monotonic()


class MemorySampler:
    """Peak resident memory of each worker (main process plus pool) and of all of them, every 50 ms;
    also the CPU time the workers' processes used over the load."""

    def __init__(self, workers: list[CeleryProcess]) -> None:
        self.workers = workers
        self.peak_per_worker = 0
        self.peak_total = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemorySampler:
        self.cpu_seconds = -self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_seconds += self._cpu()

    def _processes(self, worker: CeleryProcess) -> list[psutil.Process]:
        main = psutil.Process(worker.pid)
        return [main, *main.children(recursive=True)]

    def _cpu(self) -> float:
        total = 0.0
        for worker in self.workers:
            for process in self._processes(worker):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            total = 0
            for worker in self.workers:
                try:
                    rss = sum(p.memory_info().rss for p in self._processes(worker))
                except psutil.Error:
                    continue
                self.peak_per_worker = max(self.peak_per_worker, rss)
                total += rss
            self.peak_total = max(self.peak_total, total)


class SandboxProbe:
    """Asks every sandbox for /metadata in turn while the load runs: its answer time shows its headroom."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def __enter__(self) -> SandboxProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _probe(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                for url in self.urls:
                    began = time.perf_counter()
                    client.get(url + "/metadata")
                    self.samples.append(time.perf_counter() - began)
                self._stop.wait(0.05)


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# --- the report --------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, dashboard: dict[str, dict[str, float]], loads: dict[int, dict[str, float]]
) -> None:
    """The figures side by side, then each goal with met or NOT MET."""
    counts = sorted(loads)
    print()
    print(
        f"Scale benchmark: {args.tenants} tenants, {args.runs} configure runs started at once by {args.clickers} "
        f"threads, {SANDBOXES} sandboxes at {args.latency_ms} ms per request, workers with -c {args.concurrency}, "
        f"on {psutil.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end)"
    )
    rows = [
        ("runs passed", "runs", "{:.0f}"),
        ("throughput (runs/minute)", "runs_per_minute", "{:.0f}"),
        ("first click to last run's end (s)", "span_s", "{:.2f}"),
        ("dispatch latency p50 (s)", "dispatch_p50_s", "{:.3f}"),
        ("dispatch latency p95 (s)", "dispatch_p95_s", "{:.3f}"),
        ("deliveries (claims)", "deliveries", "{:.0f}"),
        ("peak memory of one worker (MiB)", "worker_peak_mb", "{:.0f}"),
        ("peak memory of all workers (MiB)", "workers_peak_mb", "{:.0f}"),
        (f"sandbox answer p95 under load (ms; fault {args.latency_ms})", "sandbox_p95_ms", "{:.0f}"),
        ("machine CPU busy during the load (%)", "cpu_busy_pct", "{:.0f}"),
        ("worker CPU time per run (ms)", "worker_cpu_ms_per_run", "{:.1f}"),
    ]
    header = f"{'':<48}" + "".join(f"{f'{n} workers':>14}" for n in counts)
    print(header)
    print("-" * len(header))
    for label, key, fmt in rows:
        print(f"{label:<48}" + "".join(f"{fmt.format(loads[n][key]):>14}" for n in counts))
    print()
    print(f"{'page at ' + str(args.tenants) + ' tenants':<48}{'median ms':>14}{'p95 ms':>14}{'queries':>14}")
    for name, figures in dashboard.items():
        print(f"{name:<48}{figures['median_ms']:>14.1f}{figures['p95_ms']:>14.1f}{figures['queries']:>14}")
    print()
    ratio = dashboard["dashboard"]["median_ms"] / dashboard["trivial page"]["median_ms"]
    goals = [
        (
            f"dispatch latency p95 below {GOALS['dispatch_p95_s']:.0f} s",
            all(loads[n]["dispatch_p95_s"] < GOALS["dispatch_p95_s"] for n in counts),
            ", ".join(f"{loads[n]['dispatch_p95_s']:.3f} s with {n}" for n in counts),
        ),
        (
            f"dashboard within {GOALS['dashboard_ratio']:.0f}x of the trivial page",
            ratio <= GOALS["dashboard_ratio"],
            f"{ratio:.2f}x",
        ),
    ]
    if len(counts) >= 2:
        low, high = counts[0], counts[-1]
        scaling = loads[high]["runs_per_minute"] / loads[low]["runs_per_minute"]
        goals.append(
            (
                f"{high} workers at least {GOALS['scaling']}x the throughput of {low}",
                scaling >= GOALS["scaling"],
                f"{scaling:.2f}x; sandbox p95 {loads[high]['sandbox_p95_ms']:.0f} ms for a {args.latency_ms} ms fault",
            )
        )
    for goal, met, figure in goals:
        print(f"[{'met' if met else 'NOT MET'}] {goal}: {figure}")


if __name__ == "__main__":
    sys.exit(main())
