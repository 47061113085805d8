"""Configure and test run in a real Celery worker process, over Redis, on PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection as db_connection

from onboarding.engine import services
from onboarding.models import RunStatus, StepRun
from tests.factories import ConnectionFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def wait_for_final(run: StepRun, timeout: float = 60) -> StepRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in (RunStatus.PASSED, RunStatus.FAILED, RunStatus.CANCELLED):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run still {run.status} after {timeout}s: {run.progress_message}")


def test_worker_runs_configure_then_test_against_a_sandbox(
    celery_worker_process: Any, sandboxes: dict[str, Any], clean_faults: None, tenant_a: Any, cs_user: Any
) -> None:
    assert db_connection.vendor == "postgresql"
    epic = sandboxes["epic"]
    conn = ConnectionFactory(
        tenant=tenant_a,
        vendor="epic",
        base_url=epic.base_url,
        auth_method="client_credentials",
        client_id="portal-test",
        secret="s3cret-sandbox-value",
        token_url=epic.token_url,
    )
    onboarding = services.ensure_onboarding(conn)
    configure = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    configure = wait_for_final(configure)
    assert configure.status == RunStatus.PASSED, (configure.error_kind, configure.error_message)
    assert configure.deliveries == 1
    test = wait_for_final(services.start_step(user=cs_user, onboarding=onboarding, step="test"))
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    # auth, Patient search, paging, Patient read, Observation search
    assert [c["outcome"] for c in test.result["checks"]] == ["passed"] * 5
    assert test.started_at is not None and test.finished_at >= test.started_at


def test_worker_records_a_typed_failure_and_keeps_going(
    celery_worker_process: Any, sandboxes: dict[str, Any], clean_faults: None, tenant_a: Any, cs_user: Any
) -> None:
    generic = sandboxes["generic"]
    generic.set_faults(not_fhir=True)
    broken = ConnectionFactory(tenant=tenant_a, vendor="generic", base_url=generic.base_url)
    run = wait_for_final(
        services.start_step(user=cs_user, onboarding=services.ensure_onboarding(broken), step="configure")
    )
    assert (run.status, run.error_kind) == (RunStatus.FAILED, "not_fhir")
    generic.set_faults()
    assert celery_worker_process.poll() is None, "the worker must survive a failing step"
    again = wait_for_final(services.start_step(user=cs_user, onboarding=broken.onboarding, step="configure"))
    assert again.status == RunStatus.PASSED
    assert again.attempt == 2
