"""Fixtures of the fault suite: its own Redis, Celery workers and beat as killable processes, a sandbox.

The suite runs with the Celery and pipeline settings the project ships; a scenario that changes
one says which and why, next to its figure. Figures are printed by each scenario and gathered in a
table at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.faults import steps as fault_steps
from tests.faults.harness import CeleryProcess, RedisServer, beat_args, worker_args

FIGURES: list[tuple[str, str, str]] = []


def record_figure(number: str, scenario: str, figure: str) -> None:
    """Print a scenario's figure now and list it in the table at the end of the run."""
    FIGURES.append((number, scenario, figure))
    print(f"\nFAULT SCENARIO {number}: {scenario}: {figure}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault scenarios: figures")
    for number, scenario, figure in sorted(FIGURES, key=lambda row: int(row[0])):
        terminalreporter.write_line(f"{number:>2} | {scenario} | {figure}")


@pytest.fixture(scope="session")
def faults_dir(tmp_path_factory: Any) -> Path:
    return Path(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session")
def fault_redis_server(faults_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(faults_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def fault_redis(fault_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """The suite's Redis, running and empty, with this process's Celery app publishing to it."""
    from portal.celery import app

    if fault_redis_server.process is None:
        fault_redis_server.start()
    fault_redis_server.client().flushall()
    # Celery reads CELERY_BROKER_URL from the environment before its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", fault_redis_server.url)
    _drop_broker_connections(app)
    yield fault_redis_server
    monkeypatch.undo()
    _drop_broker_connections(app)
    if fault_redis_server.process is None:
        fault_redis_server.start()  # a scenario stopped it; the next one needs it running
    else:
        fault_redis_server.resume()


def _drop_broker_connections(app: Any) -> None:
    # Celery keeps its connection and producer pools for the broker it first used.
    app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None


@pytest.fixture(scope="session")
def fault_sandbox() -> Iterator[Any]:
    """A sandbox hospital of the suite's own, so its faults never leak into other tests."""
    from connections.sandbox import SandboxHospital

    hospital = SandboxHospital(flavour="generic", seed=11, patients=5).start()
    yield hospital
    hospital.stop()


@pytest.fixture
def sandbox(fault_sandbox: Any, settings: Any) -> Iterator[Any]:
    fault_sandbox.set_faults()
    settings.OUTBOUND_ALLOWLIST = [f"127.0.0.1:{fault_sandbox.port}"]
    yield fault_sandbox
    fault_sandbox.set_faults()


class Cluster:
    """The scenario's workers and beat; everything started is stopped when the scenario ends."""

    def __init__(self, workdir: Path, redis_server: RedisServer, sandbox: Any) -> None:
        self.workdir = workdir
        self.redis = redis_server
        self.sandbox = sandbox
        self.processes: list[CeleryProcess] = []
        self._count = 0

    def env(self, **overrides: str) -> dict[str, str]:
        db = settings.DATABASES["default"]
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.faults.worker_settings",
            DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            CELERY_BROKER_URL=self.redis.url,
            OUTBOUND_ALLOWLIST=f"127.0.0.1:{self.sandbox.port}",
            FAULTS_DIR=str(self.workdir),
        )
        env.update(overrides)
        return env

    def worker(self, concurrency: int = 2, **env: str) -> CeleryProcess:
        self._count += 1
        name = f"faults{self._count}"
        process = CeleryProcess(worker_args(name, concurrency), self.env(**env), self.workdir / f"{name}.log").start()
        self.processes.append(process)
        return process

    def beat(self) -> CeleryProcess:
        process = CeleryProcess(beat_args(self.workdir), self.env(), self.workdir / "beat.log")
        process.start(ready_marker="beat: Starting")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        # No graceful shutdown: held steps would keep a warm shutdown waiting, and nothing is owed
        # to a scenario that is over.
        for process in self.processes:
            process.kill_all()


@pytest.fixture
def cluster(fault_redis: RedisServer, sandbox: Any, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path, fault_redis, sandbox)
    yield running
    running.stop()


@pytest.fixture
def release(cluster: Cluster) -> Any:
    """Let a held step (tests.faults.steps.HoldStep) of a connection finish."""

    def let_go(connection: Any) -> None:
        fault_steps.release_path(connection.code, base=cluster.workdir).touch()

    return let_go
