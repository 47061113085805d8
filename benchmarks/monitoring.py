"""Health checks of 1,000 live connections, once a minute, on 2 workers: lag and queries per beat tick.

The load: 1,000 tenants, each with one connection made live (as cutover writes its live state) to
one of four sandbox hospitals (each a process of its own), every tenant's policy checking once a
minute. Two `celery worker` processes consume the `monitoring` and `maintenance` queues and a real
`celery beat` hands out the due checks every MONITORING_TICK_SECONDS, all on a scratch PostgreSQL
database and a redis-server of the benchmark's own.

Reported:
- the lag from each check's due time to its run (the health check's ran_at - due_at), p50, p95 and
  max, over the checks after the first minute (when the first checks of every connection, spread
  over one interval, have been handed out once);
- the checks run against those expected (connections x minutes measured);
- the database queries of one beat tick (making the missing monitors and claiming the due checks),
  with 100 live connections due and with 1,000, counted in this process with Django's query log.

Goals: lag p95 under 10 s; the same number of queries per tick at 100 and at 1,000 connections.

    .venv/bin/python -m benchmarks.monitoring [--connections 1000] [--minutes 3] [--workers 2] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks.scale import configure_environment, drop_database, fresh_database, redis_server, sandboxes
from tests.faults.harness import CeleryProcess, beat_args, worker_args

GOALS = {"lag_p95_s": 10.0}
SANDBOXES = 4


def main(argv: list[str] | None = None) -> int:
    """Bring up the scratch services, measure, print the report, and clean up whatever happens."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portal-monitoring-") as scratch:
        workdir = Path(scratch)
        with sandboxes(SANDBOXES, 0) as hospitals, redis_server(workdir) as redis:
            env = configure_environment(args.database, redis.url, [url for url, _ in hospitals], workdir)
            env["MONITORING_TICK_SECONDS"] = str(args.tick)
            database = fresh_database(args.database)
            try:
                return measure(args, env, [url for url, _ in hospitals], workdir)
            finally:
                drop_database(database)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the checks run, after a first minute")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes per worker (celery -c)")
    parser.add_argument("--tick", type=float, default=5.0, help="MONITORING_TICK_SECONDS of the beat")
    parser.add_argument(
        "--database",
        default="postgres://postgres@127.0.0.1:5432/portal_monitoring_bench",
        help="a scratch PostgreSQL database: it is dropped and created again",
    )
    return parser.parse_args(argv)


def seed(count: int, urls: list[str]) -> list[Any]:
    """`count` tenants with a live connection each (spread over the sandboxes), checked once a minute."""
    from django.utils import timezone

    from connections.models import EHRConnection
    from onboarding.live.models import LivePhase, LiveStage, LiveState
    from onboarding.models import Onboarding
    from onboarding.monitoring.models import MonitoringPolicy
    from portal.models import Tenant

    start = Tenant.objects.count()
    probe_ids = {url: _first_patient(url) for url in urls}
    tenants = Tenant.objects.bulk_create(Tenant(name=f"Hospital {start + i:04d}") for i in range(count))
    MonitoringPolicy.objects.bulk_create(MonitoringPolicy(tenant=t, check_interval_min=1) for t in tenants)
    conns = EHRConnection.objects.bulk_create(
        EHRConnection(tenant=t, name="Main EHR", vendor="generic", base_url=urls[(start + i) % len(urls)])
        for i, t in enumerate(tenants)
    )
    onboardings = Onboarding.objects.bulk_create(Onboarding(tenant=c.tenant, connection=c) for c in conns)
    now = timezone.now()
    LiveState.objects.bulk_create(
        LiveState(
            onboarding=o,
            tenant=o.tenant,
            stage=LiveStage.FULL,
            live_since=now,
            phase=LivePhase.HYPERCARE,
            hypercare_until=now + timedelta(days=30),
            probe_patient_id=probe_ids[o.connection.base_url],
        )
        for o in onboardings
    )
    return onboardings


def _first_patient(url: str) -> str:
    bundle = httpx.get(f"{url}/Patient", params={"_count": 1}, timeout=10).json()
    return str(bundle["entry"][0]["resource"]["id"])


def tick_queries() -> tuple[int, int]:
    """(queries, checks claimed) of one beat tick with every live connection's check due now."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from onboarding.monitoring import services
    from onboarding.monitoring.models import Monitor

    services.ensure_monitors()
    Monitor.objects.update(next_check_at=timezone.now() - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        services.ensure_monitors()
        claimed = services.claim_due()
    return len(queries), len(claimed)


def measure(args: argparse.Namespace, env: dict[str, str], urls: list[str], workdir: Path) -> int:
    """Queries per tick at 100 and at the full count, then the checks on real workers and beat."""
    from django.db.models import F
    from django.utils import timezone

    from onboarding.monitoring.models import HealthCheck, Monitor

    small = min(100, args.connections)
    seed(small, urls)
    queries_small, claimed_small = tick_queries()
    seed(args.connections - small, urls)
    queries_large, claimed_large = tick_queries()
    # Start the measured run from a clean schedule: each connection's first check spread over one minute.
    now = timezone.now()
    for index, monitor_id in enumerate(Monitor.objects.order_by("id").values_list("id", flat=True)):
        Monitor.objects.filter(id=monitor_id).update(
            next_check_at=now + timedelta(seconds=10 + 60 * index / args.connections)
        )
    processes = [
        CeleryProcess(
            worker_args(f"monitoring{n}", args.concurrency, "monitoring,maintenance"), env, workdir / f"worker{n}.log"
        ).start()
        for n in range(args.workers)
    ]
    beat = CeleryProcess(beat_args(workdir), env, workdir / "beat.log").start(ready_marker="Starting")
    began = timezone.now()
    warm = began + timedelta(seconds=70)
    try:
        time.sleep(70 + args.minutes * 60)
    finally:
        beat.stop()
        for process in processes:
            process.stop()
    until = warm + timedelta(minutes=args.minutes)
    rows = HealthCheck.objects.filter(due_at__gte=warm, due_at__lt=until - timedelta(seconds=15))
    lags = sorted(rows.annotate(lag=F("ran_at") - F("due_at")).values_list("lag", flat=True))
    seconds = [lag.total_seconds() for lag in lags]
    expected = args.connections * (args.minutes - 0.25)
    failed = rows.filter(ok=False).count()
    report(
        args,
        seconds,
        expected,
        failed,
        (small, queries_small, claimed_small),
        (args.connections, queries_large, claimed_large),
    )
    return 0


def _pct(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values), max(1, math.ceil(share * len(values)))) - 1]


def report(
    args: argparse.Namespace,
    lags: list[float],
    expected: float,
    failed: int,
    small: tuple[int, int, int],
    large: tuple[int, int, int],
) -> None:
    """The figures, then each goal with met or NOT MET."""
    print()
    print(
        f"Monitoring benchmark: {args.connections} live connections checked once a minute, {args.workers} workers "
        f"(-c {args.concurrency}), beat tick {args.tick:g} s, {SANDBOXES} sandboxes, {args.minutes:g} min measured"
    )
    print(f"  checks run: {len(lags)} of about {expected:.0f} expected; {failed} failed")
    if lags:
        print(
            f"  lag from due time to run: p50 {statistics.median(lags):.2f} s, p95 {_pct(lags, 0.95):.2f} s, "
            f"max {max(lags):.2f} s"
        )
    for connections, queries, claimed in (small, large):
        print(f"  one beat tick at {connections} connections: {queries} queries, {claimed} checks claimed")
    p95 = _pct(lags, 0.95)
    print()
    print(
        f"  goal lag p95 < {GOALS['lag_p95_s']:g} s: {'met' if p95 < GOALS['lag_p95_s'] else 'NOT MET'} ({p95:.2f} s)"
    )
    same = small[1] == large[1]
    verdict = "met" if same else "NOT MET"
    print(f"  goal same queries per tick at {small[0]} and {large[0]}: {verdict} ({small[1]} vs {large[1]})")
    ran = len(lags) >= 0.95 * expected
    print(f"  every due check ran (at least 95% of those expected): {'yes' if ran else 'NO'}")


if __name__ == "__main__":
    raise SystemExit(main())
