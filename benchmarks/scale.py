"""Many hospitals onboarding at once: throughput, dispatch latency, dashboard cost, worker memory.

The load: 1,000 tenants, then 100 onboardings whose configure step is started at once (20 threads
posting the "Start" button's request to the portal under gunicorn, as 100 people clicking) against
sandbox hospitals that answer every FHIR request after 50 ms. It runs with 2 Celery workers, then
with 4, each a `celery worker` process as the README's production section starts one per machine
(same queues, same -c), all on one PostgreSQL and one Redis. Before each measured load, a warm-up
batch passes through every worker, so each pool process has its database connection and imports.

Reported, side by side for each worker count:
- throughput in runs per minute, from the first click to the last run's end;
- dispatch latency, p50 and p95, from the click to the run's "running" (its claim by a worker),
  split into the click's own answer time and the wait after it (the task is sent when the
  transaction commits, before the answer leaves, so a worker may take it first: a wait below zero);
- peak memory of a worker (its main process plus pool processes) and of all workers, by psutil, as
  RSS and as PSS (PSS shares the pages a forked pool has in common instead of counting them in
  every process, so it is the memory the workers really take);
- where the machine's CPU went during the load, per run: workers, web, PostgreSQL, Redis,
  sandboxes and this benchmark's own threads;
- the sandboxes' own answer time during the load (p95 of a probe), to show whether they are the bottleneck;
and, once, the dashboard's response time and query count at 1,000 tenants beside a trivial page
(the same layout and middleware, no data) measured in the same run.

Scaling out means adding workers on more machines. On one machine whose cores are all busy, more
worker processes only share the same cores, so the load runs twice: first as the machine is (every
process competes for every core), then with each worker confined to its own CPU budget by a cgroup
CPU quota (--worker-cpus, as a container's CPU limit gives a worker machine its own CPU). The
second pass is where throughput per worker count is compared. Its default budget, 0.1 CPU, is small
enough that the parts every worker shares (the web, PostgreSQL, Redis, the sandboxes and this
benchmark, which in production have machines of their own) keep spare CPU with 4 workers, so the
workers are what limits throughput, as they are when one adds worker machines.

Goals: dispatch p95 below 1 s; dashboard within 3x of the trivial page; 4 workers at least 1.7x the
throughput of 2 while the sandboxes are not the bottleneck.

It needs PostgreSQL (the benchmark creates and drops its own database, ``portal_bench`` unless
--database says otherwise) and starts its own redis-server and gunicorn on free loopback ports. The
CPU budgets need a writable cgroup v1 `cpu` controller or cgroup v2 (root in a container has one);
without it that pass is left out and the report says so. Run from the repository root:

    .venv/bin/python -m benchmarks.scale [--tenants 1000] [--runs 100] [--workers 2,4] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
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

import httpx
import psutil

from tests.faults.harness import CeleryProcess, RedisServer, free_port, wait_until, worker_args

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"dispatch_p95_s": 1.0, "dashboard_ratio": 3.0, "scaling": 1.7}
SANDBOXES = 4
LATENCY_MS = 50
USERNAME = "bench-cs"
PASSWORD = "bench-password-not-secret"  # noqa: S105 - a throwaway user in a throwaway database
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
        with sandboxes(SANDBOXES, args.latency_ms) as hospitals, redis_server(workdir) as redis:
            env = configure_environment(args.database, redis.url, [url for url, _ in hospitals], workdir)
            database = fresh_database(args.database)
            try:
                return measure(args, env, hospitals, redis, workdir)
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
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument(
        "--worker-cpus",
        type=float,
        default=0.1,
        help="CPU budget of each worker in the scaling pass (a cgroup quota; 0 leaves that pass out)",
    )
    parser.add_argument(
        "--database",
        default="postgres://postgres@127.0.0.1:5432/portal_bench",
        help="a scratch PostgreSQL database: it is dropped and created again",
    )
    return parser.parse_args(argv)


# --- processes and settings ------------------------------------------------------------------------


@contextmanager
def sandboxes(count: int, latency_ms: int) -> Iterator[list[tuple[str, int]]]:
    """Sandbox hospitals (URL and pid), each in a process of its own so they never share a GIL."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(seed), str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for seed in range(1, count + 1)
    ]
    try:
        yield [(p.stdout.readline().strip(), p.pid) for p in processes if p.stdout is not None]
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


@contextmanager
def web_server(env: dict[str, str], workers: int, workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The portal under gunicorn, as the README's production section runs it, on a free loopback port."""
    port = free_port()
    log = open(workdir / "gunicorn.log", "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited; see {workdir / 'gunicorn.log'}")
        try:
            return httpx.get(base + "/login/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 60, "gunicorn to answer", interval=0.2)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=15)


def configure_environment(database: str, broker: str, urls: list[str], workdir: Path) -> dict[str, str]:
    """The environment of this process, the web server and the workers: production-like, on the scratch services."""
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


def measure(
    args: argparse.Namespace, env: dict[str, str], hospitals: list[tuple[str, int]], redis: RedisServer, workdir: Path
) -> int:
    """The dashboard once, then the load with each worker count (as the machine is, then on CPU budgets)."""
    counts = [int(n) for n in args.workers.split(",")]
    warmup = 2 * max(counts) * args.concurrency
    urls = [url for url, _ in hospitals]
    user = seed(args.tenants, args.runs + warmup, urls)
    dashboard = measure_dashboard(user)
    budgets = CpuBudgets.create(args.worker_cpus, max(counts)) if args.worker_cpus > 0 else None
    passes: dict[str, dict[int, dict[str, float]]] = {}
    fixed_pids = {
        "sandboxes": [pid for _, pid in hospitals],
        "Redis": [redis.process.pid] if redis.process else [],
        "this benchmark": [os.getpid()],
    }
    try:
        with web_server(env, args.web_workers, workdir) as (base, web):
            session = Portal(base)
            for name, budget in [("shared", None), ("budgets", budgets)]:
                if name == "budgets" and budget is None:
                    continue
                passes[name] = {}
                for count in counts:
                    pids = {**fixed_pids, "web": [web.pid]}
                    passes[name][count] = measure_load(count, args, env, urls, workdir, session, pids, budget)
    finally:
        if budgets is not None:
            budgets.remove()
    report(args, dashboard, passes, budgets_unavailable=args.worker_cpus > 0 and budgets is None)
    return 0


def seed(tenants: int, sandboxed: int, urls: list[str]) -> Any:
    """Tenants with a connection, pipeline and past runs each; the first `sandboxed` point at the sandboxes."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django_otp.plugins.otp_static.models import StaticDevice

    from connections.models import EHRConnection
    from onboarding.models import Onboarding, StepRun
    from portal.models import Tenant
    from portal.roles import CUSTOMER_SUCCESS

    rows = Tenant.objects.bulk_create(Tenant(name=f"Hospital {i:04d}") for i in range(max(tenants, sandboxed)))
    conns = EHRConnection.objects.bulk_create(
        EHRConnection(
            tenant=tenant,
            name="Main EHR",
            vendor="generic",
            base_url=urls[i % len(urls)] if i < sandboxed else "https://fhir.example.org/r4",
        )
        for i, tenant in enumerate(rows)
    )
    onboardings = Onboarding.objects.bulk_create(Onboarding(tenant=c.tenant, connection=c) for c in conns)
    history = []
    for onboarding in onboardings[sandboxed:]:
        history.append(StepRun(onboarding=onboarding, step="configure", attempt=1, status="passed"))
        history.append(StepRun(onboarding=onboarding, step="test", attempt=1, status="failed"))
    StepRun.objects.bulk_create(history)
    user = get_user_model().objects.create_user(USERNAME, password=PASSWORD)
    user.groups.add(Group.objects.get(name=CUSTOMER_SUCCESS))
    # Staff need a second factor; a backup-code device lets the benchmark sign in through the real pages.
    StaticDevice.objects.create(user=user, name="bench", confirmed=True)
    return user


def one_time_code(user: Any) -> str:
    """A fresh backup code for the benchmark's user."""
    from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

    token = StaticToken.random_token()
    StaticToken.objects.create(device=StaticDevice.objects.get(user=user), token=token)
    return token


class Portal:
    """The portal as a browser reaches it: signed in once, then each clicker thread with its own client."""

    def __init__(self, base: str) -> None:
        from django.contrib.auth import get_user_model

        self.base = base
        with httpx.Client(base_url=base, timeout=30) as client:
            client.get("/login/")
            csrf = client.cookies["csrftoken"]
            signed_in = client.post(
                "/login/", data={"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": csrf}
            )
            assert signed_in.status_code == 302, signed_in.status_code
            code = one_time_code(get_user_model().objects.get(username=USERNAME))
            verified = client.post(
                "/account/two-factor/", data={"otp_token": code, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
            )
            assert verified.status_code == 302, verified.status_code
            self.cookies = dict(client.cookies.items())
        self._local = threading.local()

    def client(self) -> httpx.Client:
        """This thread's client: one keep-alive connection per clicker, like one browser per person."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(base_url=self.base, cookies=self.cookies, timeout=30)
        return client

    def start(self, connection_code: Any, step: str) -> str:
        """Click "Start"; the new run's code, from where the portal sends the browser next."""
        response = self.client().post(
            f"/c/{connection_code}/steps/{step}/start/", headers={"X-CSRFToken": self.cookies["csrftoken"]}
        )
        match = re.search(r"/runs/([0-9a-f-]{36})/", response.headers.get("location", ""))
        if response.status_code != 302 or match is None:
            raise SystemExit(f"Start was refused: {response.status_code} {response.headers.get('location')}")
        return match.group(1)


def measure_dashboard(user: Any, rounds: int = 40) -> dict[str, dict[str, float]]:
    """The dashboard at all tenants beside a trivial page, same client, interleaved, after a warm-up."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_static.models import StaticDevice

    with override_settings(ROOT_URLCONF="benchmarks.urls"):
        client = Client()
        client.force_login(user)
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = StaticDevice.objects.get(user=user).persistent_id
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
    count: int,
    args: argparse.Namespace,
    env: dict[str, str],
    urls: list[str],
    workdir: Path,
    portal: Portal,
    pids: dict[str, list[int]],
    budgets: CpuBudgets | None,
) -> dict[str, float]:
    """Warm the workers up, then start `runs` configure steps at once and time them to the end."""
    from django.utils import timezone

    from onboarding.models import Onboarding, RunStatus, StepRun

    onboardings = list(
        Onboarding.objects.filter(connection__base_url__in=urls).select_related("connection").order_by("pk")
    )
    StepRun.objects.filter(onboarding__in=onboardings).delete()
    targets, warmup = onboardings[: args.runs], onboardings[args.runs :][: 2 * count * args.concurrency]
    label = "budgets" if budgets else "shared"
    workers = [
        CeleryProcess(
            worker_args(f"bench{label}{count}-{i}", args.concurrency, queues="steps,maintenance"),
            env,
            workdir / f"worker-{label}-{count}-{i}.log",
        ).start()
        for i in range(count)
    ]
    try:
        if budgets is not None:
            for index, worker in enumerate(workers):
                budgets.confine(index, [worker.pid, *worker.pool_pids()])
        # Every pool process opens its database connection and finishes its imports on its first task.
        run_batch(portal, warmup, args.clickers)
        memory = MemorySampler(workers)
        probe = SandboxProbe(urls)
        family = CpuAccounting.family
        components = {name: family(ids) for name, ids in pids.items() if name != "this benchmark"}
        cpu = CpuAccounting(
            {**components, "workers": memory.processes, "this benchmark": [psutil.Process(os.getpid())]}
        )
        clicks: dict[str, tuple[datetime, datetime]] = {}

        def click(onboarding: Onboarding) -> None:
            clicked = timezone.now()
            code = portal.start(onboarding.connection.code, "configure")
            clicks[code] = (clicked, timezone.now())

        with memory, probe, cpu:
            with ThreadPoolExecutor(max_workers=args.clickers) as pool:
                list(pool.map(click, targets))
            wait_for(lambda: StepRun.objects.filter(code__in=clicks, status__in=FINAL).count() == len(clicks))
    finally:
        for worker in workers:
            worker.stop()
    runs = list(StepRun.objects.filter(code__in=clicks))
    failed = [run for run in runs if run.status != RunStatus.PASSED]
    if failed:
        raise SystemExit(f"{len(failed)} runs did not pass, e.g. {failed[0].error_kind}: {failed[0].error_message}")
    started = [run for run in runs if run.started_at]
    dispatch = [(run.started_at - clicks[str(run.code)][0]).total_seconds() for run in started]
    answered = [(clicks[str(run.code)][1] - clicks[str(run.code)][0]).total_seconds() for run in started]
    waited = [(run.started_at - clicks[str(run.code)][1]).total_seconds() for run in started]
    first_click = min(clicked for clicked, _ in clicks.values())
    last_end = max(run.finished_at for run in runs if run.finished_at)
    span = (last_end - first_click).total_seconds()
    figures = {
        "runs": len(runs),
        "runs_per_minute": 60 * len(runs) / span,
        "span_s": span,
        "dispatch_p50_s": percentile(dispatch, 50),
        "dispatch_p95_s": percentile(dispatch, 95),
        "click_p95_s": percentile(answered, 95),
        "queue_p95_s": percentile(waited, 95),
        "deliveries": sum(run.deliveries for run in runs),
        "worker_peak_rss_mb": memory.peak_rss_per_worker / 2**20,
        "workers_peak_rss_mb": memory.peak_rss_total / 2**20,
        "worker_peak_pss_mb": memory.peak_pss_per_worker / 2**20,
        "workers_peak_pss_mb": memory.peak_pss_total / 2**20,
        "sandbox_p50_ms": 1000 * percentile(probe.samples, 50),
        "sandbox_p95_ms": 1000 * percentile(probe.samples, 95),
        "cpu_busy_pct": cpu.busy_pct,
    }
    for component, seconds in cpu.seconds.items():
        figures[f"cpu:{component}"] = 1000 * seconds / len(runs)
    return figures


def run_batch(portal: Portal, onboardings: list[Any], clickers: int) -> None:
    """Start configure on each onboarding and wait until every run has ended."""
    from onboarding.models import StepRun

    with ThreadPoolExecutor(max_workers=clickers) as pool:
        codes = list(pool.map(lambda onboarding: portal.start(onboarding.connection.code, "configure"), onboardings))
    wait_for(lambda: StepRun.objects.filter(code__in=codes, status__in=FINAL).count() == len(codes))


FINAL = ("passed", "failed", "cancelled")


def wait_for(done: Callable[[], bool], timeout: float = 300) -> float:
    """Poll until done() and return when that was, or stop the benchmark after the timeout."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"the runs did not finish within {timeout} s")
        time.sleep(0.05)
    return time.monotonic()


class CpuBudgets:
    """A CPU quota per worker, by cgroup: each worker gets its own share of CPU, as on its own machine.

    cgroup v1 (`cpu.cfs_quota_us`) or v2 (`cpu.max`); `create` answers None where neither is writable.
    """

    PERIOD_US = 100_000

    def __init__(self, groups: list[Path], v2: bool) -> None:
        self.groups = groups
        self.v2 = v2
        self.cpus = 0.0

    @classmethod
    def create(cls, cpus: float, count: int) -> CpuBudgets | None:
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            root, is_v2 = v1, False
        elif "cpu" in _read(v2 / "cgroup.subtree_control").split():
            root, is_v2 = v2, True
        else:
            return None
        groups = [root / f"portal-bench-{os.getpid()}-{i}" for i in range(count)]
        try:
            for group in groups:
                group.mkdir()
                quota = int(cpus * cls.PERIOD_US)
                if is_v2:
                    (group / "cpu.max").write_text(f"{quota} {cls.PERIOD_US}")
                else:
                    (group / "cpu.cfs_period_us").write_text(str(cls.PERIOD_US))
                    (group / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError:
            for group in groups:
                if group.exists():
                    group.rmdir()
            return None
        budgets = cls(groups, is_v2)
        budgets.cpus = cpus
        return budgets

    def confine(self, index: int, pids: list[int]) -> None:
        for pid in pids:
            (self.groups[index] / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for group in self.groups:
            try:
                group.rmdir()  # refused while a process is still in it; the worker has stopped by now
            except OSError as exc:
                print(f"could not remove {group}: {exc}", file=sys.stderr)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class CpuAccounting:
    """CPU seconds each component used over the load, from its processes' own counters, and the machine's busy share.

    Each component is a list of processes fixed when the load starts (a main process with its
    children); this benchmark is its own process alone, not the services it started.
    """

    def __init__(self, components: dict[str, list[psutil.Process]]) -> None:
        self.components = components
        self.seconds: dict[str, float] = {}
        self.busy_pct = 0.0
        self._start: dict[str, float] = {}

    @staticmethod
    def family(pids: list[int]) -> list[psutil.Process]:
        """The processes and all their descendants, each once."""
        found: dict[int, psutil.Process] = {}
        for pid in pids:
            try:
                main = psutil.Process(pid)
                for process in [main, *main.children(recursive=True)]:
                    found.setdefault(process.pid, process)
            except psutil.Error:
                continue
        return list(found.values())

    def _sample(self) -> dict[str, float]:
        totals = {name: sum(_cpu_seconds(p) for p in processes) for name, processes in self.components.items()}
        # PostgreSQL's backends are listed at each sample; the web's and the workers' persistent
        # connections, which carry the load, live through it.
        totals["PostgreSQL"] = sum(_cpu_seconds(p) for p in psutil.process_iter() if _name(p) == "postgres")
        return totals

    def __enter__(self) -> CpuAccounting:
        self._start = self._sample()
        psutil.cpu_percent()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.busy_pct = psutil.cpu_percent()
        end = self._sample()
        self.seconds = {name: end[name] - self._start.get(name, 0.0) for name in end}


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.Error:
        return ""


class MemorySampler:
    """Peak memory of each worker (main process plus pool) and of all of them.

    The processes are listed once (the pool does not change during a load), then RSS is read every
    50 ms and PSS every 500 ms (reading PSS costs about half a millisecond per process); listing
    /proc on every sample would cost more CPU than it measures.
    """

    def __init__(self, workers: list[CeleryProcess]) -> None:
        self.workers = [[psutil.Process(w.pid), *psutil.Process(w.pid).children(recursive=True)] for w in workers]
        self.processes = [p for group in self.workers for p in group]
        self.peak_rss_per_worker = self.peak_rss_total = 0
        self.peak_pss_per_worker = self.peak_pss_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            with_pss = tick % 10 == 0
            tick += 1
            rss_total = pss_total = 0
            for group in self.workers:
                rss = pss = 0
                for process in group:
                    try:
                        if with_pss:
                            info = process.memory_full_info()
                            rss, pss = rss + info.rss, pss + info.pss
                        else:
                            rss += process.memory_info().rss
                    except psutil.Error:
                        continue
                self.peak_rss_per_worker = max(self.peak_rss_per_worker, rss)
                rss_total += rss
                if with_pss:
                    self.peak_pss_per_worker = max(self.peak_pss_per_worker, pss)
                    pss_total += pss
            self.peak_rss_total = max(self.peak_rss_total, rss_total)
            self.peak_pss_total = max(self.peak_pss_total, pss_total)


class SandboxProbe:
    """Asks every sandbox for /metadata in turn while the load runs: its answer time shows its headroom.

    It runs in a process of its own, so the clicking threads' share of this process's GIL never
    counts as the sandboxes' slowness.
    """

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SandboxProbe:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PROBE, *self.urls], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._process is not None
        out, _ = self._process.communicate("stop\n", timeout=30)  # closing its stdin stops it
        self.samples = [float(line) for line in out.split()]


_PROBE = (
    "import sys, threading, time, httpx\n"
    "stop = threading.Event()\n"
    "threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()\n"
    "samples = []\n"
    "with httpx.Client(timeout=5) as client:\n"
    "    while not stop.is_set():\n"
    "        for url in sys.argv[1:]:\n"
    "            began = time.perf_counter()\n"
    "            client.get(url + '/metadata')\n"
    "            samples.append(time.perf_counter() - began)\n"
    "        stop.wait(0.05)\n"
    "print('\\n'.join(map(str, samples)))\n"
)


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# --- the report --------------------------------------------------------------------------------------

ROWS = [
    ("runs passed", "runs", "{:.0f}"),
    ("throughput (runs/minute)", "runs_per_minute", "{:.0f}"),
    ("first click to last run's end (s)", "span_s", "{:.2f}"),
    ("dispatch latency p50 (s)", "dispatch_p50_s", "{:.3f}"),
    ("dispatch latency p95 (s)", "dispatch_p95_s", "{:.3f}"),
    ("  of which the click's answer, p95 (s)", "click_p95_s", "{:.3f}"),
    ("  then until a worker took it, p95 (s)", "queue_p95_s", "{:.3f}"),
    ("deliveries (claims)", "deliveries", "{:.0f}"),
    ("peak RSS of one worker (MiB)", "worker_peak_rss_mb", "{:.0f}"),
    ("peak RSS of all workers (MiB)", "workers_peak_rss_mb", "{:.0f}"),
    ("peak PSS of one worker (MiB)", "worker_peak_pss_mb", "{:.0f}"),
    ("peak PSS of all workers (MiB)", "workers_peak_pss_mb", "{:.0f}"),
    ("sandbox answer p50 under load (ms; fault {latency})", "sandbox_p50_ms", "{:.0f}"),
    ("sandbox answer p95 under load (ms; fault {latency})", "sandbox_p95_ms", "{:.0f}"),
    ("machine CPU busy during the load (%)", "cpu_busy_pct", "{:.0f}"),
]
COMPONENTS = ["workers", "web", "PostgreSQL", "Redis", "sandboxes", "this benchmark"]


def report(
    args: argparse.Namespace,
    dashboard: dict[str, dict[str, float]],
    passes: dict[str, dict[int, dict[str, float]]],
    *,
    budgets_unavailable: bool,
) -> None:
    """The figures side by side, then each goal with met or NOT MET."""
    print()
    print(
        f"Scale benchmark: {args.tenants} tenants, {args.runs} configure runs started at once by {args.clickers} "
        f"clicking threads through gunicorn -w {args.web_workers}, {SANDBOXES} sandboxes at {args.latency_ms} ms "
        f"per request, workers with -c {args.concurrency}, on {psutil.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f} at the end)"
    )
    titles = {
        "shared": "As the machine is: every worker shares every core",
        "budgets": f"Each worker on its own CPU budget of {args.worker_cpus:g} CPU (a cgroup quota), "
        "as on a machine of its own",
    }
    for name, loads in passes.items():
        counts = sorted(loads)
        print()
        print(titles[name])
        header = f"{'':<52}" + "".join(f"{f'{n} workers':>14}" for n in counts)
        print(header)
        print("-" * len(header))
        for label, key, fmt in ROWS:
            label = label.format(latency=args.latency_ms)
            print(f"{label:<52}" + "".join(f"{fmt.format(loads[n][key]):>14}" for n in counts))
        print("CPU time per run (ms), by component:")
        for component in COMPONENTS:
            key = f"cpu:{component}"
            print(f"{'  ' + component:<52}" + "".join(f"{loads[n].get(key, float('nan')):>14.1f}" for n in counts))
    if budgets_unavailable:
        print()
        print("The CPU-budget pass was left out: no writable cgroup cpu controller on this machine.")
    print()
    print(f"{'page at ' + str(args.tenants) + ' tenants':<52}{'median ms':>14}{'p95 ms':>14}{'queries':>14}")
    for page, figures in dashboard.items():
        print(f"{page:<52}{figures['median_ms']:>14.1f}{figures['p95_ms']:>14.1f}{figures['queries']:>14}")
    print()
    for goal, met, figure in goals(args, dashboard, passes):
        print(f"[{'met' if met else 'NOT MET'}] {goal}: {figure}")


def goals(
    args: argparse.Namespace, dashboard: dict[str, dict[str, float]], passes: dict[str, dict[int, dict[str, float]]]
) -> list[tuple[str, bool, str]]:
    """Each goal, whether it is met, and the figure that says so.

    Dispatch latency is judged as the machine is (the issue's load, with the fewest workers);
    scaling on the CPU-budget pass when there is one, since only there does a worker add CPU.
    """
    shared = passes["shared"]
    fewest = min(shared)
    ratio = dashboard["dashboard"]["median_ms"] / dashboard["trivial page"]["median_ms"]
    result = [
        (
            f"dispatch latency p95 below {GOALS['dispatch_p95_s']:.0f} s with {fewest} workers",
            shared[fewest]["dispatch_p95_s"] < GOALS["dispatch_p95_s"],
            ", ".join(f"{shared[n]['dispatch_p95_s']:.3f} s with {n}" for n in sorted(shared)),
        ),
        (
            f"dashboard within {GOALS['dashboard_ratio']:.0f}x of the trivial page",
            ratio <= GOALS["dashboard_ratio"],
            f"{ratio:.2f}x",
        ),
    ]
    for name, loads in passes.items():
        if len(loads) < 2:
            continue
        low, high = min(loads), max(loads)
        scaling = loads[high]["runs_per_minute"] / loads[low]["runs_per_minute"]
        where = "on CPU budgets" if name == "budgets" else "as the machine is"
        result.append(
            (
                f"{high} workers at least {GOALS['scaling']}x the throughput of {low} ({where})",
                scaling >= GOALS["scaling"],
                f"{scaling:.2f}x; sandbox p95 {loads[high]['sandbox_p95_ms']:.0f} ms for a {args.latency_ms} ms fault, "
                f"machine CPU {loads[high]['cpu_busy_pct']:.0f}% busy",
            )
        )
    return result


if __name__ == "__main__":
    sys.exit(main())
