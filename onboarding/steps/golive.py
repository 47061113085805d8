"""Go live: the pre-flight checklist, the cutover to production, and the first health checks.

The run is created in the hospital's change window (beat starts it when the window opens, or a
person inside one, or an emergency override): the engine asks ``start_refusal`` first. Then:

1. pre-flight, each check reported as it finishes so the run page shows the list growing: every
   earlier step passed and every gate approved; the credentials work and no secret or signing key
   expires within GO_LIVE_CREDENTIAL_MARGIN_DAYS; the last validation is at most
   GO_LIVE_MAX_VALIDATION_AGE_DAYS old; the endpoint answers ``/metadata`` and a Patient read;
2. the cutover (``onboarding.golive.services.cutover``): production, live at the plan's stage;
3. GO_LIVE_FIRST_CHECKS health probes (``onboarding.live.probe``), each kept in monitoring's
   health-check series; the step passes when all are green, and otherwise rolls the connection back
   at once and fails, saying which check failed.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from connections.errors import RemoteError
from onboarding.golive import services as golive
from onboarding.live.probe import probe
from onboarding.models import Onboarding, Step
from onboarding.monitoring import services as monitoring
from onboarding.steps.base import StepContext, StepModule, StepOutcome

CHECK_LABELS = {
    "steps_and_gates": "Every earlier step passed and every gate is approved",
    "credentials": "The credentials work",
    "credential_expiry": "No secret or signing key expires soon",
    "validation_age": "The last validation is recent",
    "endpoint": "The endpoint answers /metadata and a Patient read",
}


class GoLiveStep(StepModule):
    """Check everything once more, switch the connection to production, and watch the first checks."""

    key = "go_live"
    label = "Go live"
    description = "In the hospital's change window, switch to production and start monitoring."
    requires = tuple(str(step) for step in golive.EARLIER_STEPS)
    gates = (golive.GATE_KEY,)

    def refuse_start(self, onboarding: Onboarding) -> str | None:
        """Outside a change window (and without an override) a go-live does not start."""
        return golive.start_refusal(onboarding)

    def run(self, ctx: StepContext) -> StepOutcome:
        onboarding = ctx.run.onboarding
        checks: list[dict[str, Any]] = []
        total = len(CHECK_LABELS) + 1 + settings.GO_LIVE_FIRST_CHECKS

        def report(key: str, ok: bool, detail: str, latency_ms: float | None = None) -> None:
            label = CHECK_LABELS.get(key, key)
            checks.append(
                {
                    "id": key,
                    "label": label,
                    "outcome": "passed" if ok else "failed",
                    "detail": detail,
                    "latency_ms": round(latency_ms) if latency_ms is not None else None,
                }
            )
            ctx.log(f"{label}: {detail}", level="info" if ok else "error")
            ctx.progress(
                len(checks),
                total,
                f"Pre-flight {len(checks)} of {len(CHECK_LABELS)}: {label} — {'ok' if ok else 'failed'}",
            )

        problems = golive.readiness(onboarding)
        report(
            "steps_and_gates",
            not problems,
            " ".join(problems) or "Configure, test, map, validate and load test passed; every gate is approved.",
        )
        patient_id = ""
        try:
            token = ctx.adapter.authenticate()
            patients = ctx.adapter.search_patients(count=1)
            patient_id = patients[0].id if patients else ""
            detail = (
                f"A token for {token.expires_in} s was issued"
                if token
                else "The endpoint answered with these credentials"
            )
            report(
                "credentials",
                bool(patient_id),
                detail + ("." if patient_id else ", but no Patient was returned to probe."),
            )
        except RemoteError as exc:
            report("credentials", False, exc.message)
        report(*_expiry(ctx))
        report(*_validation_age(onboarding))
        plain = ctx.connection.plain_http_problems()
        if plain:
            fields = " and ".join("the base URL" if f == "base_url" else "the token URL" for f in plain)
            verb, them = ("uses", "it") if len(plain) == 1 else ("use", "them")
            report(
                "endpoint",
                False,
                f"Production traffic must not go over plain http, and {fields} {verb} http://: change {them} "
                "to https:// on the connection page.",
            )
        elif patient_id:
            result = probe(ctx.adapter, patient_id)
            report(
                "endpoint",
                result.ok,
                "Both answered." if result.ok else f"{result.error_kind}: {result.error_message}",
                result.latency_ms,
            )
        else:
            report("endpoint", False, "Not probed: there is no Patient to read.")
        failed = [check for check in checks if check["outcome"] == "failed"]
        if failed:
            return StepOutcome(
                passed=False,
                summary={"checks": checks},
                error_kind="preflight_failed",
                error_message=(
                    f"Pre-flight failed, so nothing was switched: {failed[0]['label'].lower()}: {failed[0]['detail']}"
                ),
                error_hint="Fix what the failed check names, then start the go-live again in a change window.",
            )

        facts = golive.cutover(onboarding=onboarding, run=ctx.run, probe_patient_id=patient_id)
        stage = "a pilot for " + f"{facts.pilot_percent}% of patients" if facts.stage == "pilot" else "full"
        ctx.log(f"Cutover done: the connection is in production and live ({stage}).")
        ctx.progress(len(checks) + 1, total, f"Cutover done: live ({stage}). Running the first health checks")
        first: list[dict[str, Any]] = []
        for number in range(1, settings.GO_LIVE_FIRST_CHECKS + 1):
            result = probe(ctx.adapter, patient_id)
            monitoring.record_go_live_check(onboarding.pk, result)
            first.append({"ok": result.ok, "latency_ms": result.latency_ms, "error_kind": result.error_kind})
            ctx.progress(
                len(checks) + 1 + number,
                total,
                f"First health check {number} of {settings.GO_LIVE_FIRST_CHECKS}: {'green' if result.ok else 'red'}",
            )
            if not result.ok:
                golive.rollback(
                    user=None,
                    onboarding=onboarding,
                    reason=f"The first health check {number} failed: {result.error_message}",
                )
                checks.append(
                    {
                        "id": "first_checks",
                        "label": "First health checks",
                        "outcome": "failed",
                        "detail": result.error_message,
                        "latency_ms": None,
                    }
                )
                return StepOutcome(
                    passed=False,
                    summary={"checks": checks, "first_checks": first, "rolled_back": True},
                    error_kind=result.error_kind or "first_check_failed",
                    error_message=f"The first health check {number} failed after cutover ({result.error_message}), "
                    "so the connection was rolled back to its state before go-live.",
                    error_hint="Look at the endpoint with the hospital's IT team, then go live again in a window.",
                )
            if number < settings.GO_LIVE_FIRST_CHECKS:
                time.sleep(settings.GO_LIVE_FIRST_CHECK_INTERVAL)
        worst = max((c["latency_ms"] or 0.0) for c in first)
        checks.append(
            {
                "id": "first_checks",
                "label": "First health checks",
                "outcome": "passed",
                "detail": f"{len(first)} of {len(first)} green.",
                "latency_ms": round(worst),
            }
        )
        return StepOutcome(
            passed=True,
            summary={
                "checks": checks,
                "first_checks": first,
                "stage": facts.stage,
                "pilot_percent": facts.pilot_percent,
                "live_since": facts.live_since.isoformat(),
                "hypercare_until": facts.hypercare_until.isoformat(),
            },
        )


def _expiry(ctx: StepContext) -> tuple[str, bool, str]:
    """A secret or key older than its allowed age (less the margin) is about to expire."""
    connection = ctx.connection
    max_age = timedelta(days=settings.GO_LIVE_CREDENTIAL_MAX_AGE_DAYS)
    margin = timedelta(days=settings.GO_LIVE_CREDENTIAL_MARGIN_DAYS)
    now = timezone.now()
    for label, since in (("signing key", connection.key_created_at), ("secret", connection.secret_updated_at)):
        if since is None:
            continue
        expires = since + max_age
        if expires - now < margin:
            days = max(0, (expires - now).days)
            return (
                "credential_expiry",
                False,
                f"The {label} expires in {days} days (under the {margin.days}-day margin): rotate it first.",
            )
    return "credential_expiry", True, f"None expires within {margin.days} days."


def _validation_age(onboarding: Onboarding) -> tuple[str, bool, str]:
    run = onboarding.runs.filter(step=Step.VALIDATE, status="passed").order_by("-attempt").first()
    limit = settings.GO_LIVE_MAX_VALIDATION_AGE_DAYS
    if run is None or run.finished_at is None:
        return "validation_age", False, "Validate never passed."
    age = timezone.now() - run.finished_at
    if age > timedelta(days=limit):
        return (
            "validation_age",
            False,
            f"The last validation is {age.days} days old (at most {limit}): run validate again.",
        )
    return "validation_age", True, f"Validated {age.days} day{'s' if age.days != 1 else ''} ago (at most {limit})."
