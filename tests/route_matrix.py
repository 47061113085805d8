"""The authorization matrix: every URL name of the project, what to send, and what each persona gets.

tests/test_route_matrix.py walks the project's URL patterns and calls each entry below as each
persona: anonymous, hospital IT of tenant A, hospital IT of tenant B, customer success, engineer.
A URL name with no entry fails that test with the line to add here.

Adding a route? Add one entry to ROUTES, keyed by its URL name (with namespace, if any):

    "my_page": [page(lambda w: reverse("my_page", kwargs={"code": w.conn_a.code}), owner="a",
                     expect={"it_a": 200, "cs": 200, "engineer": 403})],

- `page(...)` for HTML pages (anonymous must be sent to login), `api(...)` for API endpoints
  (anonymous gets 401), `public(...)` for pages anyone may open (give "anon" in expect).
- `owner="a"` when the URL names an object of tenant A. Then hospital IT of tenant B must get 404,
  and the same URL with a code that does not exist must answer exactly like the foreign one.
- `expect` gives the status per persona: 200, 302, 403, 404... A 403 means "may see, may not do".
- `lists=True` when the answer lists objects: it must not contain the other tenant's codes or names.
- `htmx=True` when the view answers htmx with a partial: the partial is checked too.
- One URL name may have several calls (e.g. GET and PATCH of a DRF detail route).
- Objects your route needs go in `World` (and `build_world`), so every route shares one world.
  Objects in `world.extra` belong to tenant A: their codes are swapped for a missing one in the
  "foreign looks like missing" check.

Every call runs in a savepoint that is rolled back, so calls never see each other's writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse

from connections.models import EHRConnection
from onboarding.engine import services
from onboarding.models import Approval, Onboarding, StepRun
from tests.factories import ConnectionFactory

PERSONAS = ("anon", "it_a", "it_b", "cs", "engineer")
MISSING = "00000000-0000-4000-8000-000000000000"


@dataclass
class World:
    """The objects routes are called on: tenant A's (the owner) and tenant B's (the foreigner)."""

    tenant_a: Any
    tenant_b: Any
    conn_a: EHRConnection
    conn_b: EHRConnection
    onboarding_a: Onboarding
    onboarding_b: Onboarding
    run_a: StepRun  # a finished (failed) configure attempt
    active_run_a: StepRun  # a queued test attempt, so cancel has something to cancel
    run_b: StepRun
    extra: dict[str, Any] = field(default_factory=dict)
    approval_b: Any = None  # a pending request of tenant B, for the cross-tenant decide case
    validate_run_b: Any = None  # tenant B's validation run and waiver: for lists and foreign ids in bodies
    waiver_b: Any = None
    alert_b: Any = None  # tenant B's monitoring alert: never in tenant A's lists

    def foreign_markers(self, persona: str) -> list[str]:
        """Codes and names a persona must never see in a list: the other tenant's."""
        if persona == "it_a":
            return [*_markers(self.tenant_b, self.conn_b, self.onboarding_b, self.run_b), *self._b_extra()]
        if persona == "it_b":
            extra = [str(self.extra[key].code) for key in ("validate_run", "waiver_a", "finding") if key in self.extra]
            return [*_markers(self.tenant_a, self.conn_a, self.onboarding_a, self.run_a), *extra]
        return []

    def _b_extra(self) -> list[str]:
        objects = (self.validate_run_b, self.waiver_b, self.approval_b, self.alert_b)
        return [str(obj.code) for obj in objects if obj is not None]


def _markers(tenant: Any, conn: EHRConnection, onboarding: Onboarding, run: StepRun) -> list[str]:
    return [str(tenant.code), tenant.name, str(conn.code), conn.name, str(onboarding.code), str(run.code)]


def build_world(*, tenant_a: Any, tenant_b: Any) -> World:
    conn_a = ConnectionFactory(tenant=tenant_a, name="Alpha Epic", auth_method="smart_backend", client_id="alpha-app")
    conn_b = ConnectionFactory(tenant=tenant_b, name="Beta Cerner")
    onboarding_a = services.ensure_onboarding(conn_a)
    onboarding_b = services.ensure_onboarding(conn_b)
    run_a = StepRun.objects.create(onboarding=onboarding_a, step="configure", attempt=1, status="failed")
    active_run_a = StepRun.objects.create(onboarding=onboarding_a, step="test", attempt=1, status="queued")
    run_b = StepRun.objects.create(onboarding=onboarding_b, step="configure", attempt=1, status="passed")
    world = World(tenant_a, tenant_b, conn_a, conn_b, onboarding_a, onboarding_b, run_a, active_run_a, run_b)
    world.extra.update(_mapping_and_findings(onboarding_a))
    world.extra["approval"] = _pending_approval(onboarding_a, world.extra["mapping"])
    world.approval_b = _pending_approval(onboarding_b, world.extra["mapping"])
    world.extra["waiver_a"] = _waiver(tenant_a)
    world.validate_run_b = StepRun.objects.create(
        onboarding=onboarding_b, step="validate", attempt=1, status="passed", result={"patients": 0}
    )
    world.waiver_b = _waiver(tenant_b)
    world.extra.update(_notifications(tenant_a=tenant_a, tenant_b=tenant_b, run_a=run_a, run_b=run_b))
    world.extra.update(_people(tenant_a=tenant_a))
    world.extra["foreign_token_id"] = _someone_elses_api_token()
    world.extra["archived_conn"] = _archived_connection(tenant_a)
    world.extra.update(_load_test(onboarding_a))
    world.extra.update(_go_live(tenant_a))
    world.extra["alert_a"] = _monitoring(onboarding_a, baseline=world.extra["validate_run"])
    world.alert_b = _monitoring(onboarding_b, baseline=world.validate_run_b)
    return world


def _go_live(tenant: Any) -> dict[str, Any]:
    """Tenant A's change window and maintenance window, and a service account with a token for tenant A."""
    from datetime import time

    from onboarding.golive.models import ChangeWindow, ServiceAccount, ServiceToken
    from onboarding.live.models import MaintenanceWindow

    window = ChangeWindow.objects.create(
        tenant=tenant, weekday=1, start_time=time(18), end_time=time(22), timezone="America/Chicago"
    )
    maintenance = MaintenanceWindow.objects.create(
        tenant=tenant, kind="weekly", weekday=6, start_time=time(1), end_time=time(3)
    )
    account = ServiceAccount.objects.create(name="Product")
    token = ServiceToken.objects.create(account=account, tenant=tenant, digest="0" * 64, prefix="svc_000000")
    return {
        "change_window": window,
        "maintenance_window": maintenance,
        "service_account": account,
        "service_token": token,
    }


def go_live_plan_form() -> dict[str, Any]:
    return {
        "seen_version": 0,
        "window_choice": "next",
        "rollout": "full",
        "pilot_percent": "",
        "hypercare_contacts": "Pat Approver <pat@alpha.example.org>",
    }


def vendor_cs_only(cs: int) -> dict[str, int]:
    return {"it_a": 403, "it_b": 403, "cs": cs, "engineer": 403}


def _monitoring(onboarding: Onboarding, *, baseline: StepRun) -> Any:
    """The onboarding made live (as cutover would), with an open health-check alert naming its tenant."""
    from django.utils import timezone

    from onboarding.monitoring.models import Alert
    from tests.live_helpers import make_live

    make_live(onboarding, probe_patient_id="p1", baseline_run=baseline)
    return Alert.objects.create(
        onboarding=onboarding,
        tenant=onboarding.tenant,
        kind="checks_failing",
        title=f"{onboarding.connection.name} is not answering its health checks",
        detail=f"3 health checks in a row failed at {onboarding.tenant.name}.",
        opened_at=timezone.now(),
    )


def _archived_connection(tenant: Any) -> EHRConnection:
    """An archived connection of tenant A, for the restore routes."""
    from django.utils import timezone

    return ConnectionFactory(tenant=tenant, name="Alpha archived", archived_at=timezone.now())


def _waiver(tenant: Any) -> Any:
    """A waiver in force, of a rule and path tenant A's validation run has findings of."""
    from datetime import timedelta

    from django.utils import timezone

    from onboarding.models import Waiver

    return Waiver.objects.create(
        tenant=tenant,
        rule="codes.unmapped-local",
        path="Observation.code",
        reason="Accepted for the pilot by the lab lead",
        approver_label="engineer",
        expires_at=timezone.now() + timedelta(days=30),
    )


def _pending_approval(onboarding: Onboarding, mapping: Any) -> Approval:
    """A sign-off request of tenant A's mapping waiting on its hospital IT."""
    return Approval.objects.create(
        onboarding=onboarding,
        gate="mapping_sign_off",
        artifact_kind="mapping",
        artifact_id=mapping.pk,
        artifact_version=mapping.version,
        artifact_hash=mapping.content_hash,
        artifact_label=f"Mapping version {mapping.version}",
        requested_by_label="cs",
    )


def _people(*, tenant_a: Any) -> dict[str, Any]:
    """Tenant A's viewer, pending invitation (with its link's token) and staff assignment; a vendor
    staff member to assign and deactivate, and a pending staff invitation."""
    from datetime import timedelta

    from django.utils import timezone

    from portal.models import Invitation, StaffAssignment
    from portal.people import services as people
    from portal.people import tokens
    from portal.roles import CUSTOMER_SUCCESS
    from tests.factories import UserFactory

    viewer = UserFactory(username="viewer-alpha", first_name="Vera", last_name="Viewer")
    member = people.add_member(tenant=tenant_a, user=viewer, role="viewer")
    secret, secret_hash = tokens.new_secret()
    invitation = Invitation.objects.create(
        tenant=tenant_a,
        email="invitee@alpha.example.org",
        role="approver",
        secret_hash=secret_hash,
        expires_at=timezone.now() + timedelta(hours=72),
    )
    assigned = UserFactory(username="cs-assigned-alpha", groups=[CUSTOMER_SUCCESS])
    assignment = StaffAssignment.objects.create(tenant=tenant_a, user=assigned)
    staff_member = UserFactory(username="cs-spare", groups=[CUSTOMER_SUCCESS])
    _, staff_hash = tokens.new_secret()
    staff_invitation = Invitation.objects.create(
        email="new-engineer@vendor.example.com",
        role="engineer",
        secret_hash=staff_hash,
        expires_at=timezone.now() + timedelta(hours=72),
    )
    return {
        "member_a": member,
        "invitation_a": invitation,
        "invitation_token": tokens.make_token(invitation.code, secret),
        "assignment_a": assignment,
        "staff_person": staff_member.person,
        "staff_invitation": staff_invitation,
    }


def _notifications(*, tenant_a: Any, tenant_b: Any, run_a: StepRun, run_b: StepRun) -> dict[str, Any]:
    """An inbox item for hospital IT of each tenant, naming its tenant: nobody else may see or touch it.

    The users are the personas' own (factories get or create them by user name).
    """
    from portal.notifications.services import notify
    from tests.factories import UserFactory

    made = {}
    for label, username, tenant, run in (("a", "it-alpha", tenant_a, run_a), ("b", "it-beta", tenant_b, run_b)):
        (made[label],) = notify(
            kind="run_failed",
            recipients=[UserFactory(username=username)],
            subject=f"Configure failed at {tenant.name}",
            body=f"The configure step of {tenant.name} failed.",
            link=f"/runs/{run.code}/",
            key=f"matrix:{run.code}",
            tenant=tenant,
        )
    return {"notification_a": made["a"]}


def _someone_elses_api_token() -> str:
    """The id of an API token held by a person who is none of the personas: nobody may revoke it."""
    from knox.models import AuthToken

    from portal import tokens
    from tests.factories import UserFactory

    token, _ = AuthToken.objects.create(user=UserFactory(username="token-holder"))
    return tokens.token_id(token)


def load_test_plan_values(**changes: Any) -> dict[str, Any]:
    """A plan well inside the caps: 20 req/s for 10 s, the five request types, an SLA."""
    values = {
        "weight_patient_read": 4,
        "weight_patient_by_identifier": 2,
        "weight_observation_by_patient": 3,
        "weight_condition_by_patient": 1,
        "weight_encounter_by_patient": 1,
        "load_mode": "rate",
        "target_rate": 20.0,
        "normal_peak": None,
        "stress_factor": 2.0,
        "staircase_start": None,
        "staircase_step": None,
        "staircase_steps": None,
        "staircase_step_s": None,
        "ramp_s": 0,
        "duration_s": 10,
        "concurrency": 10,
        "sla_p95_ms": 300.0,
        "sla_p99_ms": 800.0,
        "sla_max_error_pct": 1.0,
        "abort_error_pct": 50.0,
    }
    values.update(changes)
    return values


def monitoring_policy_values() -> dict[str, Any]:
    """The monitoring policy's defaults, as the policy form posts them."""
    from onboarding.monitoring.models import MonitoringPolicy
    from onboarding.monitoring.policy import FIELD_NAMES

    defaults = MonitoringPolicy()
    return {name: getattr(defaults, name) for name in FIELD_NAMES}


def _load_test(onboarding: Onboarding) -> dict[str, Any]:
    """Tenant A's load-test plan (version 1) and a passed load-test run with its report and two seconds."""
    from onboarding.loadtest import services as loadtests
    from onboarding.models import LoadTestPlan, LoadTestReport, LoadTestSecond

    values = load_test_plan_values()
    plan = LoadTestPlan.objects.create(
        onboarding=onboarding, version=1, content_hash=loadtests.content_hash(values), **values
    )
    latency = {"count": 40, "p50_ms": 50.0, "p90_ms": 60.0, "p95_ms": 62.0, "p99_ms": 70.0, "max_ms": 75.0}
    summary = {
        "outcome": "completed",
        "reason": "",
        "verdict": "Passed: p95 62 ms is within the agreed 300 ms.",
        "sla": {"passed": True, "reasons": []},
        "target_rps": 20.0,
        "achieved_rps": 20.0,
        "achieved_pct": 100.0,
        "latency": latency,
        "statuses": {"200": 40},
        "per_type": [{"name": "patient_read", "count": 40, "answered": 40, "errors": 0, "latency": latency}],
        "histogram": [[50.0, 20], [70.0, 18], [75.0, 2]],
        "plan": {"version": 1, "content_hash": plan.content_hash, "load": "20 req/s for 10 s"},
    }
    run = StepRun.objects.create(onboarding=onboarding, step="load_test", attempt=1, status="passed", result=summary)
    LoadTestReport.objects.create(run=run, plan=plan, delivery=1, outcome="completed", summary=summary)
    for second in (0, 1):
        LoadTestSecond.objects.create(
            run=run, delivery=1, second=second, target_rps=20, sent=20, dropped=0, answered=20, failed=0,
            errors=0, throughput=20, p50_ms=50, p90_ms=60, p95_ms=62, p99_ms=70, max_ms=75,
        )  # fmt: skip
    return {"load_test_plan": plan, "load_test_run": run}


def _mapping_and_findings(onboarding: Onboarding) -> dict[str, Any]:
    """Tenant A's mapping (one local code, one unknown extension) and a failed validation run with a finding."""
    from datetime import timedelta

    from django.utils import timezone

    from onboarding.mapping import services as mappings
    from onboarding.models import Finding, RawResource

    profile = {
        "elements": [
            {
                "element": "Observation.code",
                "local_codes": [{"system": "urn:local", "code": "GLU", "display": "GLUCOSE", "count": 3}],
            }
        ],
        "extensions": [{"url": "http://example.org/ext", "known": False}],
        "suggested_mrn_system": "http://hospital.example.org/mrn",
    }
    mapping = mappings.record_map_result(onboarding=onboarding, profile=profile, run=None)
    validate_run = StepRun.objects.create(
        onboarding=onboarding,
        step="validate",
        attempt=1,
        status="failed",
        finished_at=timezone.now(),
        result={"patients": 1},
        error_kind="validation_failed",
        error_message="100% of patients have an error.",
    )
    raw = RawResource.objects.create(
        run=validate_run,
        resource_type="Observation",
        resource_key="k1",
        patient_key="p1",
        payload='{"resourceType":"Observation","id":"o1"}',
        expires_at=timezone.now() + timedelta(days=1),
    )
    finding = Finding.objects.create(
        run=validate_run,
        severity="error",
        rule="codes.unmapped-local",
        resource_type="Observation",
        path="Observation.code",
        location="code.coding[0]",
        message="Local code GLU is not mapped.",
        patient_key="p1",
        resource_key="k1",
        fingerprint="f1",
        raw=raw,
    )
    return {"mapping": mapping, "validate_run": validate_run, "finding": finding}


UrlFor = Callable[[World], str]
DataFor = Callable[[World], dict[str, Any]]


@dataclass(frozen=True)
class Call:
    """One request to make as each persona, and the statuses expected."""

    kind: str  # "page", "api" or "public"
    url: UrlFor
    expect: dict[str, int]
    method: str = "GET"
    data: DataFor | None = None
    owner: str | None = None
    lists: bool = False
    htmx: bool = False

    def expected(self, persona: str) -> int | None:
        """The status this persona must get; None where the anonymous rule (login or 401) applies."""
        if persona in self.expect:
            return self.expect[persona]
        if persona == "anon" and self.kind != "public":
            return None
        if persona == "it_b" and self.owner == "a":
            return 404
        raise KeyError(f"no expectation for {persona}")


def page(url: UrlFor, *, expect: dict[str, int], **options: Any) -> Call:
    return Call("page", url, expect, **options)


def api(url: UrlFor, *, expect: dict[str, int], **options: Any) -> Call:
    return Call("api", url, expect, **options)


def public(url: UrlFor, *, expect: dict[str, int], **options: Any) -> Call:
    return Call("public", url, expect, **options)


def everyone(status: int) -> dict[str, int]:
    return {"it_a": status, "it_b": status, "cs": status, "engineer": status}


def tenant_a_staff(it_a: int, cs: int, engineer: int) -> dict[str, int]:
    return {"it_a": it_a, "cs": cs, "engineer": engineer}


def _in_days(days: int) -> str:
    from datetime import timedelta

    from django.utils import timezone

    return (timezone.localdate() + timedelta(days=days)).isoformat()


def _r(name: str, **kwargs: Any) -> str:
    return reverse(name, kwargs=kwargs or None)


ROUTES: dict[str, list[Call]] = {
    # --- Go-live: windows, the go-live page, service accounts, the product's read API --------------
    "tenant_windows": [
        page(lambda w: _r("tenant_windows", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        page(
            lambda w: _r("tenant_windows", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {
                "form": "change",
                "weekday": 3,
                "start_time": "18:00",
                "end_time": "22:00",
                "timezone": "America/Chicago",
            },
            owner="a",
            expect=tenant_a_staff(302, 302, 302),
        ),
    ],
    "change_window_delete": [
        page(
            lambda w: _r("change_window_delete", code=w.extra["change_window"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(302, 302, 302),
        )
    ],
    "maintenance_window_delete": [
        page(
            lambda w: _r("maintenance_window_delete", code=w.tenant_a.code, pk=w.extra["maintenance_window"].pk),
            method="POST",
            owner="a",
            expect=tenant_a_staff(302, 302, 302),
        )
    ],
    "go_live": [
        page(lambda w: _r("go_live", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        page(
            lambda w: _r("go_live", code=w.conn_a.code),
            method="POST",
            data=lambda w: go_live_plan_form(),
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        ),
    ],
    "go_live_action": [
        # Not ready (no plan): refused with a message on the page; hospital IT may not schedule.
        page(
            lambda w: _r("go_live_action", code=w.conn_a.code, action="schedule"),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        ),
        # Tenant A's connection is live in the world (monitoring needs it): its approver and customer
        # success may roll it back, an engineer may not.
        page(
            lambda w: _r("go_live_action", code=w.conn_a.code, action="rollback"),
            method="POST",
            data=lambda w: {"reason": "test"},
            owner="a",
            expect=tenant_a_staff(302, 302, 403),
        ),
    ],
    "service_accounts": [page(lambda w: _r("service_accounts"), expect=vendor_cs_only(200))],
    "service_account": [
        page(lambda w: _r("service_account", code=w.extra["service_account"].code), expect=vendor_cs_only(200))
    ],
    "service_token_revoke": [
        page(
            lambda w: _r("service_token_revoke", code=w.extra["service_token"].code),
            method="POST",
            expect=vendor_cs_only(302),
        )
    ],
    "api_change_windows": [
        api(lambda w: _r("api_change_windows", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        api(
            lambda w: _r("api_change_windows", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {"weekday": 3, "start_time": "18:00", "end_time": "22:00"},
            owner="a",
            expect=tenant_a_staff(201, 201, 201),
        ),
    ],
    "api_change_window": [
        api(
            lambda w: _r("api_change_window", code=w.extra["change_window"].code),
            method="DELETE",
            owner="a",
            expect=tenant_a_staff(204, 204, 204),
        )
    ],
    "api_maintenance_windows": [
        api(
            lambda w: _r("api_maintenance_windows", code=w.tenant_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        ),
        api(
            lambda w: _r("api_maintenance_windows", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {"kind": "weekly", "weekday": 2, "start_time": "01:00", "end_time": "02:00"},
            owner="a",
            expect=tenant_a_staff(201, 201, 201),
        ),
    ],
    "api_maintenance_window": [
        api(
            lambda w: _r("api_maintenance_window", code=w.tenant_a.code, pk=w.extra["maintenance_window"].pk),
            method="DELETE",
            owner="a",
            expect=tenant_a_staff(204, 204, 204),
        )
    ],
    "api_go_live": [
        api(lambda w: _r("api_go_live", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "api_go_live_plan": [
        api(
            lambda w: _r("api_go_live_plan", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                "seen_version": 0,
                "window_choice": "next",
                "rollout": "full",
                "hypercare_contacts": [{"name": "Pat", "email": "pat@alpha.example.org"}],
            },
            owner="a",
            expect=tenant_a_staff(403, 201, 201),
        )
    ],
    "api_go_live_action": [
        api(
            lambda w: _r("api_go_live_action", code=w.conn_a.code, action="rollback"),
            method="POST",
            data=lambda w: {"reason": "test"},
            owner="a",
            expect=tenant_a_staff(200, 200, 403),
        )
    ],
    "api_service_accounts": [api(lambda w: _r("api_service_accounts"), expect=vendor_cs_only(200))],
    "api_service_tokens": [
        api(
            lambda w: _r("api_service_tokens", code=w.extra["service_account"].code),
            method="POST",
            data=lambda w: {"tenant": str(w.tenant_a.code)},
            expect=vendor_cs_only(201),
        )
    ],
    "api_service_token_revoke": [
        api(
            lambda w: _r("api_service_token_revoke", code=w.extra["service_token"].code),
            method="POST",
            expect=vendor_cs_only(200),
        )
    ],
    # The read API takes service tokens only: a person's session or token is refused (401).
    "api_live_patients": [api(lambda w: _r("api_live_patients", code=w.conn_a.code) + "?mrn=1", expect=everyone(401))],
    "api_live_patient": [
        api(lambda w: _r("api_live_patient", code=w.conn_a.code, patient_id="p1"), expect=everyone(401))
    ],
    "api_live_clinical": [
        api(
            lambda w: _r("api_live_clinical", code=w.conn_a.code, patient_id="p1", resource="observations"),
            expect=everyone(401),
        )
    ],
    # --- Sign-in and account ------------------------------------------------------------------
    "login": [public(lambda w: _r("login"), expect={"anon": 200, **everyone(200)})],
    "logout": [public(lambda w: _r("logout"), method="POST", expect={"anon": 302, **everyone(302)})],
    "account_security": [page(lambda w: _r("account_security"), expect=everyone(200))],
    # Someone else's API token is a 404 for everyone, exactly like a missing one.
    "api_token_revoke": [
        page(
            lambda w: _r("api_token_revoke", token_id=w.extra["foreign_token_id"]), method="POST", expect=everyone(404)
        )
    ],
    # Already verified (staff) or nothing to verify (hospital IT without a device): sent on.
    "two_factor_verify": [page(lambda w: _r("two_factor_verify"), expect=everyone(302))],
    "two_factor_setup": [page(lambda w: _r("two_factor_setup"), expect=everyone(200))],
    "backup_codes": [page(lambda w: _r("backup_codes"), method="POST", expect=everyone(200))],
    "reauthenticate": [page(lambda w: _r("reauthenticate"), expect=everyone(200))],
    "password_change": [page(lambda w: _r("password_change"), expect=everyone(200))],
    # --- Tenants and the audit trail ------------------------------------------------------------
    "dashboard": [page(lambda w: _r("dashboard"), expect=everyone(200), lists=True, htmx=True)],
    "tenant_create": [
        page(lambda w: _r("tenant_create"), expect={"it_a": 403, "it_b": 403, "cs": 200, "engineer": 403})
    ],
    "tenant_detail": [
        page(lambda w: _r("tenant_detail", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "tenant_audit": [
        page(
            lambda w: _r("tenant_audit", code=w.tenant_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
            lists=True,
            htmx=True,
        )
    ],
    "tenant_audit_csv": [
        page(lambda w: _r("tenant_audit_csv", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "audit_log": [page(lambda w: _r("audit_log"), expect={"it_a": 403, "it_b": 403, "cs": 200, "engineer": 200})],
    "audit_log_csv": [
        page(lambda w: _r("audit_log_csv"), expect={"it_a": 403, "it_b": 403, "cs": 200, "engineer": 200})
    ],
    # --- Connections ------------------------------------------------------------------------------
    "connection_create": [
        page(lambda w: _r("connection_create", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(403, 200, 403))
    ],
    "connection_edit": [
        page(lambda w: _r("connection_edit", code=w.conn_a.code), owner="a", expect=tenant_a_staff(403, 200, 403))
    ],
    "connection_smart_key": [
        page(lambda w: _r("connection_smart_key", code=w.conn_a.code), owner="a", expect=tenant_a_staff(403, 200, 403))
    ],
    "connection_jwks": [
        page(lambda w: _r("connection_jwks", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "connection_capability_statement": [
        page(
            lambda w: _r("connection_capability_statement", code=w.conn_a.code),
            method="POST",
            data=lambda w: {"continue_without": "1"},
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    "connection_detail": [
        page(lambda w: _r("connection_detail", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    # Archive: a confirmation page (GET), then the archive (POST); customer success only.
    "connection_archive": [
        page(lambda w: _r("connection_archive", code=w.conn_a.code), owner="a", expect=tenant_a_staff(403, 200, 403)),
        page(
            lambda w: _r("connection_archive", code=w.conn_a.code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        ),
    ],
    "connection_restore": [
        page(
            lambda w: _r("connection_restore", code=w.extra["archived_conn"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    # --- The pipeline -----------------------------------------------------------------------------
    "start_step": [
        page(
            lambda w: _r("start_step", code=w.conn_a.code, step="configure"),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "run_detail": [
        page(
            lambda w: _r("run_detail", code=w.active_run_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
            htmx=True,
        ),
        # A load-test run's page: its report, charts and comparison.
        page(
            lambda w: _r("run_detail", code=w.extra["load_test_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        ),
    ],
    "load_test_plan": [
        page(lambda w: _r("load_test_plan", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        page(
            lambda w: _r("load_test_plan", code=w.conn_a.code) + "?version=1",
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        ),
        # A new version (a higher rate): saved and sent back to the page; hospital IT may not write.
        page(
            lambda w: _r("load_test_plan", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                **{k: "" if v is None else v for k, v in load_test_plan_values(target_rate=30.0).items()},
                "seen_version": w.extra["load_test_plan"].version,
            },
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        ),
    ],
    "cancel_run": [
        page(
            lambda w: _r("cancel_run", code=w.active_run_a.code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    # --- Mapping and the review of validation runs (issue 4) ---------------------------------------
    "mapping": [page(lambda w: _r("mapping", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))],
    "mapping_code": [
        page(
            lambda w: _r("mapping_code", code=w.conn_a.code) + "?key=Observation.code%7Curn%3Alocal%7CGLU&edit=1",
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
            htmx=True,
        ),
        page(
            lambda w: _r("mapping_code", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                "key": "Observation.code|urn:local|GLU",
                "version": w.extra["mapping"].version,
                "target_system": "LOINC",
                "target_code": "2339-0",
                "target_display": "Glucose [Mass/volume] in Blood",
            },
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        ),
    ],
    "mapping_mrn": [
        page(
            lambda w: _r("mapping_mrn", code=w.conn_a.code),
            method="POST",
            data=lambda w: {"version": w.extra["mapping"].version, "system": "urn:oid:1.2.3"},
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "mapping_extension": [
        page(
            lambda w: _r("mapping_extension", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                "version": w.extra["mapping"].version,
                "url": "http://example.org/ext",
                "handling": "ignore",
            },
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "mapping_export_csv": [
        page(lambda w: _r("mapping_export_csv", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    # No file attached: customer success and engineers get the page back with the error (400).
    "mapping_import_csv": [
        page(
            lambda w: _r("mapping_import_csv", code=w.conn_a.code),
            method="POST",
            data=lambda w: {"version": w.extra["mapping"].version},
            owner="a",
            expect=tenant_a_staff(403, 400, 400),
        )
    ],
    "mapping_concept_map": [
        page(lambda w: _r("mapping_concept_map", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    # --- Gates: customer success (and engineers) request and remind; the tenant's approvers decide ---
    # A request of tenant A's mapping is refused with a message (one is already waiting): 302.
    "gate_request": [
        page(
            lambda w: _r("gate_request", code=w.conn_a.code, gate="mapping_sign_off"),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "approval_detail": [
        page(
            lambda w: _r("approval_detail", code=w.extra["approval"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    # Vendor staff can never decide for the hospital: 403 even with every model permission.
    "approval_decide": [
        page(
            lambda w: _r("approval_decide", code=w.extra["approval"].code),
            method="POST",
            data=lambda w: {"decision": "rejected", "comment": "Not yet"},
            owner="a",
            expect=tenant_a_staff(302, 403, 403),
        )
    ],
    # Reminding right after the request is refused with a message (at most one an hour): 302.
    "approval_remind": [
        page(
            lambda w: _r("approval_remind", code=w.extra["approval"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "my_work": [page(lambda w: _r("my_work"), expect=everyone(200), lists=True)],
    "approval-list": [api(lambda w: "/api/v1/approvals/", expect=everyone(200), lists=True)],
    "approval-detail": [
        api(lambda w: f"/api/v1/approvals/{w.extra['approval'].code}/", owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "approval-decide": [
        api(
            lambda w: f"/api/v1/approvals/{w.extra['approval'].code}/decide/",
            method="POST",
            data=lambda w: {"decision": "approved", "artifact_hash": w.extra["approval"].artifact_hash},
            owner="a",
            expect=tenant_a_staff(200, 403, 403),
        )
    ],
    "approval-remind": [
        api(
            lambda w: f"/api/v1/approvals/{w.extra['approval'].code}/remind/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 409, 409),
        )
    ],
    "api_connection_gates": [
        api(lambda w: _r("api_connection_gates", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "api_gate_request": [
        api(
            lambda w: _r("api_gate_request", code=w.conn_a.code, gate="mapping_sign_off"),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 409, 409),
        )
    ],
    "api_my_work": [api(lambda w: _r("api_my_work"), expect=everyone(200), lists=True)],
    "validation_policy": [
        page(lambda w: _r("validation_policy", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        page(
            lambda w: _r("validation_policy", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {
                "max_error_patient_pct": "5",
                "max_warning_patient_pct": "100",
                "map_sample_size": "10",
                "validate_sample_size": "20",
            },
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        ),
    ],
    "review_queue": [page(lambda w: _r("review_queue"), expect=everyone(200), lists=True, htmx=True)],
    "review_run": [
        page(
            lambda w: _r("review_run", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "review_group": [
        page(
            lambda w: (
                _r("review_group", code=w.extra["validate_run"].code)
                + "?rule=codes.unmapped-local&path=Observation.code"
            ),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
            htmx=True,
        )
    ],
    "review_waive": [
        page(
            lambda w: _r("review_waive", code=w.extra["validate_run"].code),
            method="POST",
            data=lambda w: {
                "rule": "codes.unmapped-local",
                "path": "Observation.code",
                "reason": "Accepted for the pilot by the lab lead",
                "expires_on": "2099-01-01",
            },
            owner="a",
            expect=tenant_a_staff(403, 403, 302),
        )
    ],
    "review_export_csv": [
        page(
            lambda w: _r("review_export_csv", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "review_export_json": [
        page(
            lambda w: _r("review_export_json", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    # Raw JSON (PHI): engineers only, every view audited.
    "review_raw": [
        page(
            lambda w: _r("review_raw", code=w.extra["finding"].code),
            owner="a",
            # The engineer is sent to re-enter their password before raw PHI (portal.reauth).
            expect=tenant_a_staff(403, 403, 302),
        )
    ],
    "evidence_pack": [
        page(lambda w: _r("evidence_pack", code=w.onboarding_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "evidence_pack_json": [
        page(
            lambda w: _r("evidence_pack_json", code=w.onboarding_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    # An engineer revokes a waiver from the run page; hospital IT and customer success may not.
    "review_unwaive": [
        page(
            lambda w: _r("review_unwaive", code=w.extra["validate_run"].code),
            method="POST",
            data=lambda w: {"waiver": str(w.extra["waiver_a"].code)},
            owner="a",
            expect=tenant_a_staff(403, 403, 302),
        )
    ],
    # --- The API of the mapping, the review and the evidence pack (issue 13) ----------------------
    # --- Monitoring after go-live (issue 12) --------------------------------------------------------
    "hypercare": [page(lambda w: _r("hypercare"), expect=everyone(200), lists=True)],
    "connection_monitoring": [
        page(lambda w: _r("connection_monitoring", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "monitoring_drift": [
        page(
            lambda w: _r("monitoring_drift", code=w.conn_a.code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    # Refused with a message while hypercare runs (a 302 back to the page); customer success only.
    "monitoring_handoff": [
        page(
            lambda w: _r("monitoring_handoff", code=w.conn_a.code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    "alert_detail": [
        page(
            lambda w: _r("alert_detail", code=w.extra["alert_a"].code), owner="a", expect=tenant_a_staff(200, 200, 200)
        )
    ],
    "alert_acknowledge": [
        page(
            lambda w: _r("alert_acknowledge", code=w.extra["alert_a"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "alert_assign": [
        page(
            lambda w: _r("alert_assign", code=w.extra["alert_a"].code),
            method="POST",
            data=lambda w: {"assignee": ""},
            owner="a",
            expect=tenant_a_staff(403, 302, 302),
        )
    ],
    "monitoring_policy": [
        page(lambda w: _r("monitoring_policy", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        page(
            lambda w: _r("monitoring_policy", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {**monitoring_policy_values(), "check_interval_min": 2},
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        ),
    ],
    "api_hypercare": [api(lambda w: _r("api_hypercare"), expect=everyone(200), lists=True)],
    "api_alerts": [api(lambda w: _r("api_alerts"), expect=everyone(200), lists=True)],
    "api_alert": [
        api(lambda w: _r("api_alert", code=w.extra["alert_a"].code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "api_alert_acknowledge": [
        api(
            lambda w: _r("api_alert_acknowledge", code=w.extra["alert_a"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        )
    ],
    "api_alert_assign": [
        api(
            lambda w: _r("api_alert_assign", code=w.extra["alert_a"].code),
            method="POST",
            data=lambda w: {"assignee": None},
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        )
    ],
    "api_monitoring": [
        api(lambda w: _r("api_monitoring", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "api_monitoring_drift": [
        api(
            lambda w: _r("api_monitoring_drift", code=w.conn_a.code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 202, 202),
        )
    ],
    # 409 while hypercare runs; customer success only.
    "api_monitoring_handoff": [
        api(
            lambda w: _r("api_monitoring_handoff", code=w.conn_a.code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 409, 403),
        )
    ],
    "api_monitoring_policy": [
        api(
            lambda w: _r("api_monitoring_policy", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)
        ),
        api(
            lambda w: _r("api_monitoring_policy", code=w.tenant_a.code),
            method="PATCH",
            data=lambda w: {"failures_to_alert": 4},
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        ),
    ],
    # --- Load tests (issue 11) ---------------------------------------------------------------------
    "api_load_test_plan": [
        api(lambda w: _r("api_load_test_plan", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        api(
            lambda w: _r("api_load_test_plan", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                **load_test_plan_values(target_rate=30.0),
                "seen_version": w.extra["load_test_plan"].version,
            },
            owner="a",
            expect=tenant_a_staff(403, 201, 201),
        ),
    ],
    "api_run_load_test": [
        api(
            lambda w: _r("api_run_load_test", code=w.extra["load_test_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_mapping": [
        api(lambda w: _r("api_mapping", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "api_mapping_mrn": [
        api(
            lambda w: _r("api_mapping_mrn", code=w.conn_a.code),
            method="POST",
            data=lambda w: {"version": w.extra["mapping"].version, "system": "urn:oid:1.2.3"},
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        )
    ],
    "api_mapping_code": [
        api(
            lambda w: _r("api_mapping_code", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                "version": w.extra["mapping"].version,
                "key": "Observation.code|urn:local|GLU",
                "target_system": "LOINC",
                "target_code": "2339-0",
                "target_display": "Glucose [Mass/volume] in Blood",
            },
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        )
    ],
    "api_mapping_extension": [
        api(
            lambda w: _r("api_mapping_extension", code=w.conn_a.code),
            method="POST",
            data=lambda w: {
                "version": w.extra["mapping"].version,
                "url": "http://example.org/ext",
                "handling": "ignore",
            },
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        )
    ],
    # GET exports the CSV; a POST without a file is refused with what to send (400).
    "api_mapping_csv": [
        api(lambda w: _r("api_mapping_csv", code=w.conn_a.code), owner="a", expect=tenant_a_staff(200, 200, 200)),
        api(
            lambda w: _r("api_mapping_csv", code=w.conn_a.code),
            method="POST",
            data=lambda w: {"version": w.extra["mapping"].version},
            owner="a",
            expect=tenant_a_staff(403, 400, 400),
        ),
    ],
    "api_mapping_concept_map": [
        api(
            lambda w: _r("api_mapping_concept_map", code=w.conn_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "evidence_pack_pdf": [
        page(
            lambda w: _r("evidence_pack_pdf", code=w.onboarding_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_validation_policy": [
        api(
            lambda w: _r("api_validation_policy", code=w.tenant_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        ),
        api(
            lambda w: _r("api_validation_policy", code=w.tenant_a.code),
            method="PATCH",
            data=lambda w: {"validate_sample_size": 20, "max_error_patient_pct": 5},
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        ),
    ],
    "api_review_queue": [api(lambda w: _r("api_review_queue"), expect=everyone(200), lists=True)],
    "api_run_findings": [
        api(
            lambda w: _r("api_run_findings", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
            lists=True,
        )
    ],
    "api_run_finding_examples": [
        api(
            lambda w: (
                _r("api_run_finding_examples", code=w.extra["validate_run"].code)
                + "?rule=codes.unmapped-local&path=Observation.code"
            ),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_run_diff": [
        api(
            lambda w: _r("api_run_diff", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_run_export": [
        api(
            lambda w: _r("api_run_export", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_run_export_csv": [
        api(
            lambda w: _r("api_run_export_csv", code=w.extra["validate_run"].code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_evidence_pack": [
        api(
            lambda w: _r("api_evidence_pack", code=w.onboarding_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "api_evidence_pack_pdf": [
        api(
            lambda w: _r("api_evidence_pack_pdf", code=w.onboarding_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    # Only engineers waive (a group permission, never a tenant's): everyone else is refused first (403).
    "waiver-list": [
        api(lambda w: "/api/v1/waivers/", expect=everyone(200), lists=True),
        api(
            lambda w: "/api/v1/waivers/",
            method="POST",
            data=lambda w: {
                "run": str(w.extra["validate_run"].code),
                "rule": "codes.unmapped-local",
                "path": "Observation.code",
                "reason": "Accepted for the pilot by the lab lead",
                "expires_on": _in_days(30),
            },
            owner="a",
            expect={"it_a": 403, "it_b": 403, "cs": 403, "engineer": 201},
        ),
    ],
    "waiver-detail": [
        api(
            lambda w: f"/api/v1/waivers/{w.extra['waiver_a'].code}/",
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        )
    ],
    "waiver-revoke": [
        api(
            lambda w: f"/api/v1/waivers/{w.extra['waiver_a'].code}/revoke/",
            method="POST",
            data=lambda w: {"reason": "The lab fixed its feed"},
            owner="a",
            expect=tenant_a_staff(403, 403, 200),
        )
    ],
    # --- People: members, invitations, vendor staff ----------------------------------------------
    # Hospital IT of tenant A is an approver, not a hospital admin: they see the members, and may
    # not invite, change or remove anyone (403). Customer success manage every tenant's people.
    "tenant_members": [
        page(
            lambda w: _r("tenant_members", code=w.tenant_a.code),
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
            lists=True,
        )
    ],
    "invitation_create": [
        page(lambda w: _r("invitation_create", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(403, 200, 403)),
        page(
            lambda w: _r("invitation_create", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {"email": "matrix@alpha.example.org", "role": "viewer"},
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        ),
    ],
    "tenant_staff_assign": [
        page(
            lambda w: _r("tenant_staff_assign", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {"member": str(w.extra["staff_person"].code)},
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    "member_role": [
        page(
            lambda w: _r("member_role", code=w.extra["member_a"].code),
            method="POST",
            data=lambda w: {"role": "approver"},
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    "member_remove": [
        page(
            lambda w: _r("member_remove", code=w.extra["member_a"].code),
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        ),
        page(
            lambda w: _r("member_remove", code=w.extra["member_a"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        ),
    ],
    "assignment_remove": [
        page(
            lambda w: _r("assignment_remove", code=w.extra["assignment_a"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    "invitation_resend": [
        page(
            lambda w: _r("invitation_resend", code=w.extra["invitation_a"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        )
    ],
    "invitation_revoke": [
        page(
            lambda w: _r("invitation_revoke", code=w.extra["invitation_a"].code),
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        ),
        page(
            lambda w: _r("invitation_revoke", code=w.extra["invitation_a"].code),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        ),
    ],
    # The link is the key: anyone may open it, and only its invitee may use it. Signed in as
    # somebody else, every persona is refused (403) with what to do.
    "invitation_accept": [
        public(
            lambda w: _r("invitation_accept", token=w.extra["invitation_token"]),
            expect={"anon": 200, **everyone(403)},
        ),
        public(
            lambda w: _r("invitation_accept", token=w.extra["invitation_token"]),
            method="POST",
            data=lambda w: {
                "full_name": "Ina Invitee",
                "password": "a-long-matrix-passphrase",
                "password_again": "a-long-matrix-passphrase",
            },
            expect={"anon": 302, **everyone(403)},
        ),
    ],
    # Vendor staff pages are for vendor administrators; none of the personas is one.
    "staff_list": [page(lambda w: _r("staff_list"), expect=everyone(403))],
    "staff_invite": [page(lambda w: _r("staff_invite"), expect=everyone(403))],
    # Customer success may look staff up (to assign them), so they get 403; others never find them.
    "staff_deactivate": [
        page(
            lambda w: _r("staff_deactivate", code=w.extra["staff_person"].code),
            expect={"it_a": 404, "it_b": 404, "cs": 403, "engineer": 404},
        )
    ],
    "tenant_edit": [
        page(lambda w: _r("tenant_edit", code=w.tenant_a.code), owner="a", expect=tenant_a_staff(403, 200, 403)),
        page(
            lambda w: _r("tenant_edit", code=w.tenant_a.code),
            method="POST",
            data=lambda w: {
                "name": w.tenant_a.name,
                "timezone": "America/Chicago",
                "contact_name": "",
                "contact_email": "",
                "require_two_factor": "on",
            },
            owner="a",
            expect=tenant_a_staff(403, 302, 403),
        ),
    ],
    "member-list": [api(lambda w: "/api/v1/members/", expect=everyone(200), lists=True)],
    "member-detail": [
        api(lambda w: f"/api/v1/members/{w.extra['member_a'].code}/", owner="a", expect=tenant_a_staff(200, 200, 200)),
        api(
            lambda w: f"/api/v1/members/{w.extra['member_a'].code}/",
            method="PATCH",
            data=lambda w: {"role": "approver"},
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        ),
    ],
    "member-remove": [
        api(
            lambda w: f"/api/v1/members/{w.extra['member_a'].code}/remove/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "invitation-list": [
        api(lambda w: "/api/v1/invitations/", expect=everyone(200), lists=True),
        api(
            lambda w: "/api/v1/invitations/",
            method="POST",
            data=lambda w: {"tenant": str(w.tenant_a.code), "email": "api@alpha.example.org", "role": "viewer"},
            owner="a",
            expect=tenant_a_staff(403, 201, 403),
        ),
    ],
    "invitation-detail": [
        api(
            lambda w: f"/api/v1/invitations/{w.extra['invitation_a'].code}/",
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "invitation-resend": [
        api(
            lambda w: f"/api/v1/invitations/{w.extra['invitation_a'].code}/resend/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "invitation-revoke": [
        api(
            lambda w: f"/api/v1/invitations/{w.extra['invitation_a'].code}/revoke/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "invitation-accept": [
        public(
            lambda w: "/api/v1/invitations/accept/",
            method="POST",
            data=lambda w: {
                "token": w.extra["invitation_token"],
                "full_name": "Ina Invitee",
                "password": "a-long-matrix-passphrase",
            },
            expect={"anon": 201, **everyone(403)},
        )
    ],
    "staff-list": [api(lambda w: "/api/v1/staff/", expect={"it_a": 403, "it_b": 403, "cs": 200, "engineer": 403})],
    "staff-detail": [
        api(
            lambda w: f"/api/v1/staff/{w.extra['staff_person'].code}/",
            expect={"it_a": 403, "it_b": 403, "cs": 200, "engineer": 403},
        )
    ],
    "staff-invite": [
        api(
            lambda w: "/api/v1/staff/invite/",
            method="POST",
            data=lambda w: {"email": "someone@vendor.example.com", "role": "engineer"},
            expect=everyone(403),
        )
    ],
    "staff-deactivate": [
        api(
            lambda w: f"/api/v1/staff/{w.extra['staff_person'].code}/deactivate/",
            method="POST",
            expect=everyone(403),
        )
    ],
    "assignment-list": [
        api(lambda w: "/api/v1/assignments/", expect=everyone(200), lists=True),
        api(
            lambda w: "/api/v1/assignments/",
            method="POST",
            data=lambda w: {"tenant": str(w.tenant_a.code), "person": str(w.extra["staff_person"].code)},
            owner="a",
            expect=tenant_a_staff(403, 201, 403),
        ),
    ],
    "assignment-detail": [
        api(
            lambda w: f"/api/v1/assignments/{w.extra['assignment_a'].code}/",
            owner="a",
            expect=tenant_a_staff(200, 200, 200),
        ),
        api(
            lambda w: f"/api/v1/assignments/{w.extra['assignment_a'].code}/",
            method="DELETE",
            owner="a",
            expect=tenant_a_staff(403, 204, 403),
        ),
    ],
    # --- API --------------------------------------------------------------------------------------
    # --- Notifications: each person's own; another person's is a 404 (owner "a": it_a's) --------
    "inbox": [page(lambda w: _r("inbox"), expect=everyone(200), lists=True, htmx=True)],
    "notification_read": [
        page(
            lambda w: _r("notification_read", code=w.extra["notification_a"].code),
            method="POST",
            owner="a",
            expect={"it_a": 302, "cs": 404, "engineer": 404},
        )
    ],
    "notifications_read_all": [page(lambda w: _r("notifications_read_all"), method="POST", expect=everyone(302))],
    "notification_preferences": [
        page(lambda w: _r("notification_preferences"), expect=everyone(200)),
        page(
            lambda w: _r("notification_preferences"),
            method="POST",
            data=lambda w: {"run_failed": "on"},
            expect=everyone(302),
        ),
    ],
    "notification-list": [api(lambda w: "/api/v1/notifications/", expect=everyone(200), lists=True)],
    "notification-detail": [
        api(
            lambda w: f"/api/v1/notifications/{w.extra['notification_a'].code}/",
            owner="a",
            expect={"it_a": 200, "cs": 404, "engineer": 404},
        )
    ],
    "notification-read": [
        api(
            lambda w: f"/api/v1/notifications/{w.extra['notification_a'].code}/read/",
            method="POST",
            owner="a",
            expect={"it_a": 200, "cs": 404, "engineer": 404},
        )
    ],
    "notification-read-all": [api(lambda w: "/api/v1/notifications/read-all/", method="POST", expect=everyone(200))],
    "notification-unread-count": [api(lambda w: "/api/v1/notifications/unread-count/", expect=everyone(200))],
    "api_notification_preferences": [
        api(lambda w: _r("api_notification_preferences"), expect=everyone(200)),
        api(
            lambda w: _r("api_notification_preferences"),
            method="PATCH",
            data=lambda w: {"email": {"run_failed": False}},
            expect=everyone(200),
        ),
    ],
    "api-root": [api(lambda w: "/api/v1/", expect=everyone(200))],
    "api_token": [
        public(lambda w: _r("api_token"), method="POST", data=lambda w: {}, expect={"anon": 400, **everyone(400)})
    ],
    "api_tokens": [api(lambda w: _r("api_tokens"), expect=everyone(200))],
    "api_token_detail": [
        api(
            lambda w: _r("api_token_detail", token_id=w.extra["foreign_token_id"]),
            method="DELETE",
            expect=everyone(404),
        )
    ],
    "api_schema": [api(lambda w: _r("api_schema"), expect=everyone(200))],
    "api_docs": [api(lambda w: _r("api_docs"), expect=everyone(200))],
    "tenant-list": [
        api(lambda w: "/api/v1/tenants/", expect=everyone(200), lists=True),
        api(
            lambda w: "/api/v1/tenants/",
            method="POST",
            data=lambda w: {"name": "Gamma General", "timezone": "America/Chicago"},
            expect={"it_a": 403, "it_b": 403, "cs": 201, "engineer": 403},
        ),
    ],
    "tenant-detail": [
        api(lambda w: f"/api/v1/tenants/{w.tenant_a.code}/", owner="a", expect=tenant_a_staff(200, 200, 200)),
        api(
            lambda w: f"/api/v1/tenants/{w.tenant_a.code}/",
            method="PATCH",
            data=lambda w: {"require_two_factor": True},
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        ),
    ],
    "connection-list": [
        api(lambda w: "/api/v1/connections/", expect=everyone(200), lists=True),
        # A foreign tenant's code in the body is refused like a foreign URL (404), not created.
        api(
            lambda w: "/api/v1/connections/",
            method="POST",
            owner="a",
            data=lambda w: {
                "tenant": str(w.tenant_a.code),
                "name": "Matrix connection",
                "vendor": "generic",
                "base_url": "https://fhir.example.org/r4",
                "auth_method": "none",
            },
            expect=tenant_a_staff(403, 201, 403),
        ),
    ],
    "connection-detail": [
        api(lambda w: f"/api/v1/connections/{w.conn_a.code}/", owner="a", expect=tenant_a_staff(200, 200, 200)),
        api(
            lambda w: f"/api/v1/connections/{w.conn_a.code}/",
            method="PATCH",
            data=lambda w: {"name": "Renamed by the matrix"},
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        ),
    ],
    "connection-jwks": [
        api(lambda w: f"/api/v1/connections/{w.conn_a.code}/jwks/", owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "connection-capability-statement": [
        api(
            lambda w: f"/api/v1/connections/{w.conn_a.code}/capability-statement/",
            method="POST",
            data=lambda w: {"continue_without": True},
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "connection-archive": [
        api(
            lambda w: f"/api/v1/connections/{w.conn_a.code}/archive/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "connection-restore": [
        api(
            lambda w: f"/api/v1/connections/{w.extra['archived_conn'].code}/restore/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 403),
        )
    ],
    "connection-generate-key": [
        api(
            lambda w: f"/api/v1/connections/{w.conn_a.code}/generate-key/",
            method="POST",
            data=lambda w: {"algorithm": "ES384"},
            owner="a",
            expect=tenant_a_staff(403, 201, 403),
        )
    ],
    "onboarding-list": [api(lambda w: "/api/v1/onboardings/", expect=everyone(200), lists=True)],
    "onboarding-detail": [
        api(lambda w: f"/api/v1/onboardings/{w.onboarding_a.code}/", owner="a", expect=tenant_a_staff(200, 200, 200))
    ],
    "steprun-list": [api(lambda w: "/api/v1/runs/", expect=everyone(200), lists=True)],
    "steprun-detail": [api(lambda w: f"/api/v1/runs/{w.run_a.code}/", owner="a", expect=tenant_a_staff(200, 200, 200))],
    "steprun-cancel": [
        api(
            lambda w: f"/api/v1/runs/{w.active_run_a.code}/cancel/",
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 200, 200),
        )
    ],
    "api_start_step": [
        api(
            lambda w: _r("api_start_step", code=w.conn_a.code, step="configure"),
            method="POST",
            owner="a",
            expect=tenant_a_staff(403, 202, 202),
        )
    ],
}

# The Django admin: none of the personas is admin staff, so every admin page sends them (and
# anonymous visitors) to the admin's own login, which asks for the second factor too. New admin
# pages (a model registered later) are covered by this rule without an entry of their own.
ADMIN_NAMESPACE = "admin"
# (status, where a redirect must go) per admin page; every other admin page: (302, the admin login).
ADMIN_EXPECT = {"admin:login": (200, ""), "admin:logout": (302, "/admin/")}
ADMIN_DEFAULT = (302, "/admin/login/")
ADMIN_DUMMY_KWARGS = {"object_id": "1", "id": "1", "pk": "1", "app_label": "auth", "content_type_id": "1", "url": "x"}


def _invitations_of(tenant: Any) -> Any:
    from portal.models import Invitation

    return Invitation.objects.filter(tenant=tenant)


# IDOR: foreign ids in request bodies and form choices. Each case names a route, what persona
# sends what, and the status that proves it was refused; test_route_matrix.py also checks the
# database did not change. Add a case for every route that takes another object's code in its body.
@dataclass(frozen=True)
class IdorCase:
    description: str
    persona: str
    method: str
    url: UrlFor
    data: DataFor
    refused_with: int
    unchanged: Callable[[World], bool]


def _waiver_revoked(waiver: Any) -> bool:
    from onboarding.models import Waiver

    return Waiver.objects.get(pk=waiver.pk).revoked_at is not None


IDOR_CASES: list[IdorCase] = [
    IdorCase(
        "an engineer cannot revoke tenant B's waiver from tenant A's run page",
        persona="engineer",
        method="POST",
        url=lambda w: reverse("review_unwaive", kwargs={"code": w.extra["validate_run"].code}),
        data=lambda w: {"waiver": str(w.waiver_b.code)},
        refused_with=404,
        unchanged=lambda w: not _waiver_revoked(w.waiver_b),
    ),
    IdorCase(
        "an engineer cannot waive a rule and path that tenant A's run has no finding of through the API body",
        persona="engineer",
        method="POST",
        url=lambda w: "/api/v1/waivers/",
        data=lambda w: {
            "run": str(w.extra["validate_run"].code),
            "rule": "patient.birth-date-missing",
            "path": "Patient.birthDate",
            "reason": "Smuggled past the run page",
            "expires_on": _in_days(30),
        },
        refused_with=400,
        unchanged=lambda w: not w.tenant_a.waivers.filter(rule="patient.birth-date-missing").exists(),
    ),
    IdorCase(
        "customer success assigned to tenant A only cannot read tenant B's run findings by its code",
        persona="cs_scoped_a",
        method="GET",
        url=lambda w: f"/api/v1/runs/{w.validate_run_b.code}/findings/",
        data=lambda w: {},
        refused_with=404,
        unchanged=lambda w: True,
    ),
    IdorCase(
        "hospital IT of tenant A cannot invite anyone to tenant B through the API body",
        persona="it_a",
        method="POST",
        url=lambda w: "/api/v1/invitations/",
        data=lambda w: {"tenant": str(w.tenant_b.code), "email": "smuggled@example.org", "role": "admin"},
        refused_with=404,
        unchanged=lambda w: not _invitations_of(w.tenant_b).exists(),
    ),
    IdorCase(
        "customer success assigned to tenant A only cannot assign staff to tenant B through the API body",
        persona="cs_scoped_a",
        method="POST",
        url=lambda w: "/api/v1/assignments/",
        data=lambda w: {"tenant": str(w.tenant_b.code), "person": str(w.extra["staff_person"].code)},
        refused_with=404,
        unchanged=lambda w: not w.tenant_b.staff_assignments.exists(),
    ),
    IdorCase(
        "customer success assigned to tenant A only cannot add a connection to tenant B through the API body",
        persona="cs_scoped_a",
        method="POST",
        url=lambda w: "/api/v1/connections/",
        data=lambda w: {
            "tenant": str(w.tenant_b.code),
            "name": "Smuggled",
            "vendor": "generic",
            "base_url": "https://fhir.example.org/r4",
            "auth_method": "none",
        },
        refused_with=404,
        unchanged=lambda w: not EHRConnection.objects.filter(name="Smuggled").exists(),
    ),
    IdorCase(
        "a PATCH cannot move tenant A's connection to tenant B",
        persona="cs",
        method="PATCH",
        url=lambda w: f"/api/v1/connections/{w.conn_a.code}/",
        data=lambda w: {"tenant": str(w.tenant_b.code)},
        refused_with=200,  # the field is not writable: accepted as a no-op, never applied
        unchanged=lambda w: EHRConnection.objects.get(pk=w.conn_a.pk).tenant_id == w.tenant_a.pk,
    ),
    IdorCase(
        "hospital IT of tenant A cannot approve tenant B's mapping (a gate of another hospital)",
        persona="it_a",
        method="POST",
        url=lambda w: reverse("approval_decide", kwargs={"code": w.approval_b.code}),
        data=lambda w: {"decision": "approved"},
        refused_with=404,
        unchanged=lambda w: Approval.objects.get(pk=w.approval_b.pk).decision == "",
    ),
    IdorCase(
        "hospital IT of tenant A cannot start a step of tenant B's connection",
        persona="it_a",
        method="POST",
        url=lambda w: f"/api/v1/connections/{w.conn_b.code}/steps/configure/start/",
        data=lambda w: {},
        refused_with=404,
        unchanged=lambda w: not StepRun.objects.filter(onboarding=w.onboarding_b, attempt=2).exists(),
    ),
]
