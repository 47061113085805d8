"""Test: authenticate, search and read a Patient, search Observations; time every check."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from django.utils import timezone

from connections.errors import RemoteError
from onboarding.steps.base import StepContext, StepModule, StepOutcome


class TestStep(StepModule):
    __test__ = False  # not a pytest test class, whatever its name says

    key = "test"
    label = "Test"
    description = "Authenticate, search and read a Patient, and search Observations by patient."
    requires = ("configure",)

    def run(self, ctx: StepContext) -> StepOutcome:
        checks: list[dict[str, Any]] = []
        state: dict[str, Any] = {}

        def authenticate() -> str:
            token = ctx.adapter.authenticate()
            if token is None:
                return "no token needed: " + (
                    "open endpoint" if ctx.connection.auth_method == "none" else "HTTP Basic credentials sent"
                )
            state["token"] = token
            detail = f"token granted for {token.expires_in}s, scopes: {' '.join(token.scopes) or 'none listed'}"
            if token.missing_scopes:
                detail += f"; not granted: {' '.join(token.missing_scopes)}"
            return detail

        def search_patients() -> str:
            patients = ctx.adapter.search_patients(count=5)
            if not patients:
                raise _NoData("The Patient search returned no patients, so nothing can be read or validated.")
            state["patient_id"] = patients[0].id
            return f"{len(patients)} patients on the first page"

        def read_patient() -> str:
            patient = ctx.adapter.read_patient(state["patient_id"])
            return "MRN found" if patient.mrn else "read; no MRN with the configured identifier system"

        def search_observations() -> str:
            observations = ctx.adapter.search_clinical("Observation", state["patient_id"], count=20)
            return f"{len(observations)} Observations for the patient"

        plan: list[tuple[str, str, Callable[[], str]]] = [
            ("auth", "Authenticate", authenticate),
            ("patient_search", "Search Patient with _count", search_patients),
            ("patient_read", "Read one Patient", read_patient),
            ("observation_search", "Search Observation by patient", search_observations),
        ]
        failure: RemoteError | _NoData | None = None
        for index, (check_id, label, action) in enumerate(plan):
            ctx.progress(index, len(plan), label)
            if failure is not None:
                checks.append(
                    {"id": check_id, "label": label, "outcome": "skipped", "detail": "an earlier check failed"}
                )
                continue
            started = time.monotonic()
            try:
                detail = action()
            except (RemoteError, _NoData) as exc:
                failure = exc
                checks.append(_check(check_id, label, "failed", started, str(exc), getattr(exc, "kind", "no_data")))
                ctx.log(f"{label}: failed", level="error", error_kind=str(getattr(exc, "kind", "no_data")))
                continue
            checks.append(_check(check_id, label, "passed", started, detail, ""))
            ctx.log(f"{label}: passed", latency_ms=checks[-1]["latency_ms"])
        ctx.progress(len(plan), len(plan), "Checks finished")

        credential = credential_health(ctx.connection, state.get("token"))
        summary: dict[str, Any] = {"checks": checks, "credential": credential}
        if failure is None:
            return StepOutcome(passed=True, summary=summary)
        if isinstance(failure, RemoteError):
            return StepOutcome(
                passed=False,
                summary=summary,
                error_kind=str(failure.kind.value),
                error_message=failure.message,
                error_hint=failure.hint,
            )
        return StepOutcome(
            passed=False,
            summary=summary,
            error_kind="no_data",
            error_message=str(failure),
            error_hint="Ask the hospital to grant access to test patients for this client.",
        )


def credential_health(connection: Any, token: Any) -> dict[str, Any]:
    """Token lifetime, granted scopes and the key's or secret's age: what says a credential needs care."""
    health: dict[str, Any] = {"auth_method": connection.auth_method}
    if token is not None:
        health.update(expires_in=token.expires_in, scopes=list(token.scopes), missing_scopes=list(token.missing_scopes))
    if connection.auth_method == "smart_backend" and connection.key_created_at:
        health.update(
            key_algorithm=connection.key_algorithm,
            key_id=connection.key_id,
            key_age_days=_age_days(connection.key_created_at),
        )
    elif connection.has_secret and connection.secret_updated_at:
        health["secret_age_days"] = _age_days(connection.secret_updated_at)
    return health


def _age_days(since: dt.datetime) -> int:
    return max(0, (timezone.now() - since).days)


class _NoData(Exception):
    """The server answered correctly but had nothing to test with."""

    kind = "no_data"


def _check(check_id: str, label: str, outcome: str, started: float, detail: str, kind: str) -> dict[str, Any]:
    return {
        "id": check_id,
        "label": label,
        "outcome": outcome,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
        "detail": detail,
        "error_kind": kind,
    }
