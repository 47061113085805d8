"""The Celery and Redis settings the fault scenarios depend on, so a later change cannot quietly undo them.

Each assertion names the scenario (tests/faults/test_scenarios.py) that relies on the setting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery.worker.request import Request
from django.conf import settings

from onboarding.engine import tasks
from portal.celery import app, broker_persistence_problems

ROOT = Path(__file__).resolve().parent.parent


def test_a_killed_pool_process_gives_its_task_back_at_once() -> None:
    # Scenarios 2 and 4: acknowledged only when done, re-queued when the pool process dies,
    # reported after 2 s rather than Celery's 10 s, one task per process at a time.
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.worker_lost_wait <= 2.0
    assert tasks.run_step.acks_late is True
    assert tasks.run_step.reject_on_worker_lost is True
    # The request class that tells the engine, from the worker's main process, which run lost its process.
    assert tasks.run_step.Request == "onboarding.engine.tasks:StepRequest"
    assert issubclass(tasks.StepRequest, Request)


def test_results_are_never_stored_in_the_broker() -> None:
    # Scenario 7: with no result backend, publishing never waits on a backend that never connected.
    assert app.conf.result_backend is None
    assert app.conf.task_ignore_result is True


def test_redis_hands_a_task_out_again_only_after_the_hard_time_limit() -> None:
    # Scenario 5: a second delivery of a running step is possible only past the visibility timeout,
    # which must exceed the longest hard time limit of any step queue (a load test's) by a margin,
    # or every long step would run twice.
    options = app.conf.broker_transport_options
    longest = max(settings.STEP_TIME_LIMIT, settings.LOAD_TEST_TIME_LIMIT)
    assert options["visibility_timeout"] == longest + 120
    assert settings.LOAD_TEST_TIME_LIMIT > settings.STEP_TIME_LIMIT  # the default load test runs longer
    assert settings.STEP_TIME_LIMIT > settings.STEP_SOFT_TIME_LIMIT
    assert (tasks.run_step.soft_time_limit, tasks.run_step.time_limit) == (
        settings.STEP_SOFT_TIME_LIMIT,
        settings.STEP_TIME_LIMIT,
    )
    # Each queue's task carries its own limits: the load test's are its own settings, not the steps'.
    assert (tasks.run_load_test_step.soft_time_limit, tasks.run_load_test_step.time_limit) == (
        settings.LOAD_TEST_SOFT_TIME_LIMIT,
        settings.LOAD_TEST_TIME_LIMIT,
    )
    assert tasks.run_load_test_step.Request == tasks.run_step.Request
    assert tasks.run_load_test_step.acks_late and tasks.run_load_test_step.reject_on_worker_lost
    # The longest plan the caps allow, with its set-up and last answers, fits inside the soft limit.
    assert settings.LOAD_TEST_SOFT_TIME_LIMIT >= settings.LOAD_TEST_MAX_DURATION + 120
    # Abandoned messages are scanned for every 10 s, not kombu's default of every 100 s.
    assert options["unacked_restore_interval"] == 10
    assert options["unacked_restore_throttle"] == 1


def test_publishing_to_a_down_or_hung_redis_gives_up_within_two_seconds() -> None:
    # Scenario 7: a request that starts a step answers within 2 s whatever state Redis is in.
    options = app.conf.broker_transport_options
    policy = app.conf.task_publish_retry_policy
    assert app.conf.task_publish_retry is True
    attempts = policy["max_retries"] + 1
    assert attempts >= 2  # one retry on a fresh connection, for a Redis that restarted
    per_attempt = max(options["socket_connect_timeout"], options["socket_timeout"])
    waits = sum(
        min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"]) for i in range(1, attempts)
    )
    assert attempts * per_attempt + waits < 1.5  # leaves the request half a second of its own work
    assert options["socket_keepalive"] is True


def test_workers_wait_out_a_redis_outage() -> None:
    # Scenarios 6 to 8: a worker never gives up reconnecting, and a step in progress keeps running.
    assert app.conf.broker_connection_retry is True
    assert app.conf.broker_connection_retry_on_startup is True
    assert app.conf.broker_connection_max_retries is None
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_a_dead_workers_run_is_running_again_well_within_a_minute() -> None:
    # Scenario 3: heartbeat goes stale, the next sweep re-queues the run, a worker takes it. The goal
    # is under 60 s; heartbeat timeout plus one sweep interval leaves half of it for the rest.
    assert settings.STEP_HEARTBEAT_INTERVAL == 5
    assert settings.STEP_HEARTBEAT_TIMEOUT == 20
    assert settings.STEP_SWEEP_INTERVAL == 10
    assert settings.STEP_HEARTBEAT_TIMEOUT + settings.STEP_SWEEP_INTERVAL <= 30
    # Several missed beats before a worker is thought dead, so a slow database is not a dead worker.
    assert settings.STEP_HEARTBEAT_TIMEOUT >= 4 * settings.STEP_HEARTBEAT_INTERVAL


def test_a_run_that_keeps_killing_its_worker_is_buried_after_five_deliveries() -> None:
    # Scenario 4.
    assert settings.STEP_MAX_DELIVERIES == 5
    assert settings.STEP_REQUEUE_AFTER == 60


def test_beat_runs_the_reaper_and_the_sweep_every_sweep_interval_on_their_own_queue() -> None:
    # Scenarios 3, 6 and 7: beat schedules both; a sweep not run in time is dropped, not piled up.
    schedule = app.conf.beat_schedule
    for entry, task in (
        ("reap-stale-runs", "onboarding.reap_stale_runs"),
        ("resend-queued-runs", "onboarding.resend_queued_runs"),
    ):
        assert schedule[entry]["task"] == task
        assert schedule[entry]["schedule"] == settings.STEP_SWEEP_INTERVAL
        assert schedule[entry]["options"]["expires"] == settings.STEP_SWEEP_INTERVAL
        assert app.conf.task_routes[task] == {"queue": "maintenance"}
    assert app.conf.task_routes["onboarding.run_step"] == {"queue": tasks.STEPS_QUEUE}
    assert app.conf.task_routes["onboarding.run_step.load_tests"] == {"queue": tasks.LOAD_TESTS_QUEUE}


def test_each_step_queue_has_its_own_task() -> None:
    from onboarding.engine.services import task_for_queue
    from onboarding.steps import get_step

    assert set(tasks.STEP_QUEUES) == {"steps", "load_tests"}
    assert get_step("load_test").queue == "load_tests"
    for queue in tasks.STEP_QUEUES:
        assert task_for_queue(queue) in app.tasks, queue
        assert app.conf.task_routes[task_for_queue(queue)] == {"queue": queue}


def test_embedded_broker_gets_no_redis_options() -> None:
    # kombu's SQLAlchemy transport passes its options to create_engine, which would refuse ours.
    code = "from django.conf import settings; print(settings.CELERY_BROKER_TRANSPORT_OPTIONS)"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "CELERY_BROKER_URL": "sqla+sqlite:////tmp/portal-config-test-broker.sqlite3",
            "PORTAL_VAR_DIR": "/tmp/portal-config-test-var",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{}"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STEP_HEARTBEAT_TIMEOUT", "10", "at least twice STEP_HEARTBEAT_INTERVAL"),
        ("STEP_TIME_LIMIT", "600", "longer than STEP_SOFT_TIME_LIMIT"),
        ("LOAD_TEST_TIME_LIMIT", "2100", "longer than LOAD_TEST_SOFT_TIME_LIMIT"),
        ("LOAD_TEST_SOFT_TIME_LIMIT", "1800", "at least LOAD_TEST_MAX_DURATION + 120"),
    ],
)
def test_inconsistent_pipeline_timing_is_refused_at_start(name: str, value: str, message: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PORTAL_VAR_DIR": "/tmp/portal-config-test-var",
        "STEP_HEARTBEAT_INTERVAL": "6",
        name: value,
    }
    result = subprocess.run(
        [sys.executable, "-c", "import portal.settings"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_a_worker_warns_when_redis_would_lose_queued_tasks() -> None:
    # Scenario 6 is what happens without these; production Redis needs AOF and noeviction.
    assert broker_persistence_problems({"aof_enabled": 1, "maxmemory_policy": "noeviction"}) == []
    problems = broker_persistence_problems({"aof_enabled": 0, "maxmemory_policy": "allkeys-lru"})
    assert len(problems) == 2
    assert "appendonly yes" in problems[0]
    assert "maxmemory-policy noeviction" in problems[1]
