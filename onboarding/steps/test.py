"""Test: authenticate, search and read a Patient, search Observations; time every check.

Beyond "does it answer", each search is checked for what real servers get wrong while answering
200: a Patient page larger than the ``_count`` asked for, a first page that counts more patients
than it holds and has no next link, and Observations of other patients than the one searched
(a server that ignores ``patient=``). Each is a failed check that names the behaviour and a fix.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from django.utils import timezone

from connections.adapters import PatientPage, owner_id
from connections.errors import RemoteError
from onboarding.mapping import services as mappings
from onboarding.steps.base import StepContext, StepModule, StepOutcome
from onboarding.steps.configure import CAPABILITY_CHECKS

PATIENT_PAGE = 5
OBSERVATION_PAGE = 20


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
            page = ctx.adapter.patient_page(count=PATIENT_PAGE)
            if not page.patients:
                raise _NoData("The Patient search returned no patients, so nothing can be read or validated.")
            if page.returned > page.asked:
                raise _Quirk(
                    "ignores_count",
                    f"The server ignores `_count`: we asked for {page.asked} patients and the first page held "
                    f"{page.returned}.",
                    "Ask the hospital's FHIR team whether the server or a proxy in front of it drops _count: pages as "
                    "large as the server likes can outgrow the size we accept on real data. Then re-run test.",
                )
            state["page"] = page
            state["patient_id"] = page.patients[0].id
            # The page's last patient for the Observation search: a server that ignores `patient=` answers in
            # its own order, which usually starts with the first patient's resources and would hide the fault.
            state["observed_id"] = page.patients[-1].id
            return f"{page.returned} patients on the first page, as asked (_count={page.asked})"

        def follow_next_page() -> str:
            return _check_paging(ctx, state["page"])

        def read_patient() -> str:
            patient = ctx.adapter.read_patient(state["patient_id"])
            return mrn_detail(ctx, patient)

        def search_observations() -> str:
            patient_id = state["observed_id"]
            observations = ctx.adapter.search_clinical("Observation", patient_id, count=OBSERVATION_PAGE)
            owners = [owner_id(r) for r in observations]
            foreign = [owner for owner in owners if owner is not None and owner != patient_id]
            if foreign:
                raise _Quirk(
                    "ignores_patient",
                    f"The server ignores `patient=`: {len(foreign)} of the {len(observations)} Observations it "
                    f"returned for one patient belong to {len(set(foreign))} other patients.",
                    "Ask the hospital's FHIR team to check that Observation?patient=<id> returns only that patient's "
                    "Observations (a proxy or an API gateway may drop the parameter). Until it does, map and validate "
                    "refuse the other patients' resources and may miss this patient's. Then re-run test.",
                )
            return f"{len(observations)} Observations for the patient, all of that patient"

        plan: list[tuple[str, str, Callable[[], str]]] = [
            ("auth", "Authenticate", authenticate),
            ("patient_search", "Search Patient with _count", search_patients),
            ("patient_paging", "Follow the Patient search's next page", follow_next_page),
            ("patient_read", "Read one Patient", read_patient),
            ("observation_search", "Search Observation by patient", search_observations),
        ]
        failure: RemoteError | _NoData | _Quirk | None = None
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
            except (RemoteError, _NoData, _Quirk) as exc:
                failure = exc
                checks.append(_check(check_id, label, "failed", started, str(exc), getattr(exc, "kind", "no_data")))
                ctx.log(f"{label}: failed", level="error", error_kind=str(getattr(exc, "kind", "no_data")))
                continue
            checks.append(_check(check_id, label, "passed", started, detail, ""))
            ctx.log(f"{label}: passed", latency_ms=checks[-1]["latency_ms"])
        ctx.progress(len(plan), len(plan), "Checks finished")

        credential = credential_health(ctx.connection, state.get("token"))
        token_url = ctx.adapter.config.auth.token_url if ctx.connection.auth_method in TOKEN_METHODS else ""
        if token_url:
            credential["token_url"] = token_url
            credential["token_url_source"] = "connection" if ctx.connection.token_url else "discovered"
        summary: dict[str, Any] = {"checks": checks, "credential": credential}
        if ctx.connection.without_capability_statement:
            summary["capability_statement"] = "absent: the connection goes on without one"
            summary["skipped_checks"] = list(CAPABILITY_CHECKS)
        throttling = ctx.throttling()
        if throttling:
            summary["throttling"] = throttling
        if failure is None:
            return StepOutcome(passed=True, summary=summary)
        if isinstance(failure, RemoteError):
            return StepOutcome(
                passed=False,
                summary=summary,
                error_kind=str(failure.kind.value),
                error_message=failure.message,
                error_hint=failure.hint,
                error_detail=failure.detail,
            )
        if isinstance(failure, _Quirk):
            return StepOutcome(
                passed=False,
                summary=summary,
                error_kind=failure.kind,
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


TOKEN_METHODS = ("client_credentials", "smart_backend")


def _check_paging(ctx: StepContext, page: PatientPage) -> str:
    """Follow the first page's next link, or tell a server that never pages from one whose page held everyone."""
    if page.next_url is None:
        if page.total is not None and page.total > page.returned:
            raise _Quirk(
                "never_pages",
                f"The server does not page: its first Patient page held {page.returned} of the {page.total} "
                "patients it counts, with no link to the next page.",
                "Without next links only the first page can be read, so map and validate would see a fraction of "
                "their sample. Ask the hospital's FHIR team to return Bundle.link with relation next, then re-run "
                "test.",
            )
        if page.total is None and page.returned >= page.asked:
            return "no next page, and the server gives no total: paging could not be checked"
        return f"one page holds every patient ({page.returned})"
    first = {patient.id for patient in page.patients}
    following = ctx.adapter.follow_patient_page(page.next_url)
    fresh = [patient for patient in following if patient.id not in first]
    if following and not fresh:
        raise _Quirk(
            "paging_repeats",
            "The server's next page repeats the patients of the first page.",
            "Ask the hospital's FHIR team to check the next links of a Patient search; then re-run test.",
        )
    return f"the next page held {len(fresh)} more patients"


def mrn_detail(ctx: StepContext, patient: Any) -> str:
    """Whether the patient carries an MRN: in the signed mapping's MRN system if there is one, else the connection's."""
    onboarding = getattr(ctx.connection, "onboarding", None)
    signed = mappings.signed_mapping(onboarding) if onboarding is not None else None
    if signed is not None and signed.mrn_system:
        where = f"{signed.mrn_system}, the MRN system of signed mapping version {signed.version}"
        if signed.mrn_system in patient.identifier_systems:
            return f"MRN found (in {where})"
        return f"read; no MRN in {where}"
    return "MRN found" if patient.mrn else "read; no MRN with the configured identifier system"


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


class _Quirk(Exception):
    """The server answered 200, but not what was asked: a behaviour that would mislead map and validate."""

    def __init__(self, kind: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint


def _check(check_id: str, label: str, outcome: str, started: float, detail: str, kind: str) -> dict[str, Any]:
    return {
        "id": check_id,
        "label": label,
        "outcome": outcome,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
        "detail": detail,
        "error_kind": kind,
    }
