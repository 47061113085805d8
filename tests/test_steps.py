"""Configure and test against sandbox hospitals on loopback, and every bad-input case.

Each failure must end the run failed with a typed error a person can act on, and change nothing
but that run (and its audit events).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.forms.models import model_to_dict

from connections.models import EHRConnection
from onboarding.engine import services
from onboarding.models import RunStatus, StepRun
from portal.models import AuditEvent
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db


def run_now(connection: EHRConnection, step: str, user: Any) -> StepRun:
    """Start a step and execute it in this process, as a worker would."""
    onboarding = services.ensure_onboarding(connection)
    run = services.start_step(user=user, onboarding=onboarding, step=step)
    services.execute_run(run.pk)
    run.refresh_from_db()
    return run


def sandbox_connection(tenant: Any, hospital: Any, **extra: Any) -> EHRConnection:
    fields = {"tenant": tenant, "vendor": hospital.flavour, "base_url": hospital.base_url, "auth_method": "none"}
    fields.update(extra)
    return ConnectionFactory(**fields)


@pytest.fixture
def ready(sandbox_allowlist: str, clean_faults: None, tenant_a: Any, cs_user: Any) -> dict[str, Any]:
    return {"tenant": tenant_a, "user": cs_user}


# --- Happy paths -----------------------------------------------------------------------------------


def test_configure_and_test_pass_on_an_open_endpoint(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    configure = run_now(conn, "configure", ready["user"])
    assert configure.status == RunStatus.PASSED, (configure.error_kind, configure.error_message)
    assert configure.result["fhir_version"].startswith("4.0.")
    assert configure.result["missing"] == []
    assert {"Patient", "Observation", "Condition", "Encounter"} <= set(configure.result["resources"])
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    outcomes = {check["id"]: check["outcome"] for check in test.result["checks"]}
    assert outcomes == {
        "auth": "passed",
        "patient_search": "passed",
        "patient_paging": "passed",
        "patient_read": "passed",
        "observation_search": "passed",
    }
    assert all(check["latency_ms"] >= 0 for check in test.result["checks"])
    assert test.progress_done == test.progress_total == 5
    assert any("passed" in line["message"] for line in test.log)


def test_client_credentials_with_a_discovered_token_url(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    epic = sandboxes["epic"]
    conn = sandbox_connection(
        ready["tenant"],
        epic,
        auth_method="client_credentials",
        client_id="portal-test",
        secret="s3cret-sandbox-value",
        token_url="",
    )
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    assert test.result["credential"]["expires_in"] > 0
    assert "s3cret-sandbox-value" not in json.dumps(test.result) + json.dumps(test.log)


def test_http_basic_auth(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    conn = sandbox_connection(
        ready["tenant"],
        sandboxes["meditech"],
        auth_method="basic",
        client_id="portal-basic",
        secret="basic-s3cret-value",
    )
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)


AUTH_BY_FLAVOUR: dict[str, dict[str, str]] = {
    "epic": {"auth_method": "client_credentials", "client_id": "portal-test", "secret": "s3cret-sandbox-value"},
    "meditech": {"auth_method": "basic", "client_id": "portal-basic", "secret": "basic-s3cret-value"},
    "athenahealth": {"extra_search_params": "ah-practice=Organization/a-1.Practice-195900"},
}


@pytest.mark.parametrize("flavour", ["generic", "epic", "oracle_health", "meditech", "athenahealth"])
def test_every_vendor_flavour_passes_configure_and_test(
    ready: dict[str, Any], sandboxes: dict[str, Any], flavour: str
) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes[flavour], **AUTH_BY_FLAVOUR.get(flavour, {}))
    configure = run_now(conn, "configure", ready["user"])
    assert configure.status == RunStatus.PASSED, (configure.error_kind, configure.error_message)
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    checks = {check["id"]: check for check in test.result["checks"]}
    assert checks["patient_read"]["detail"] == "MRN found"


def test_athenahealth_without_its_practice_fails_with_a_clear_message(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["athenahealth"])
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    test = assert_failed_cleanly(conn, "test", ready["user"], "bad_request")
    assert "ah-practice" in test.error_message + test.error_hint


# --- Bad input: each ends failed with its kind, and nothing else changes --------------------------------


def snapshot(conn: EHRConnection) -> dict[str, Any]:
    conn.refresh_from_db()
    return {
        "connection": model_to_dict(conn),
        "updated_at": conn.updated_at,
        "other_runs": list(StepRun.objects.order_by("pk").values_list("pk", "status", "result")),
        "other_audit": list(AuditEvent.objects.exclude(action__startswith="step.").values_list("pk", flat=True)),
    }


def assert_failed_cleanly(conn: EHRConnection, step: str, user: Any, kind: str) -> StepRun:
    before = snapshot(conn)
    run = run_now(conn, step, user)
    assert run.status == RunStatus.FAILED
    assert run.error_kind == kind, (run.error_kind, run.error_message)
    assert run.error_message and run.finished_at is not None
    after = snapshot(conn)
    assert after["connection"] == before["connection"]
    assert after["updated_at"] == before["updated_at"]
    assert after["other_runs"] == before["other_runs"] + [(run.pk, RunStatus.FAILED, run.result)]
    assert after["other_audit"] == before["other_audit"]
    assert list(AuditEvent.objects.filter(object_id=str(run.code)).values_list("action", flat=True)) == [
        "step.failed",
        "step.start",
    ]
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def odd_server(settings: Any) -> Iterator[dict[str, Any]]:
    """A loopback HTTP server that answers whatever body the test sets, to play broken hospitals."""
    state: dict[str, Any] = {"status": 200, "type": "application/json", "body": b"{}"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(state["status"])
            for name, value in state.get("headers", {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", state["type"])
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    settings.OUTBOUND_ALLOWLIST = [*settings.OUTBOUND_ALLOWLIST, f"127.0.0.1:{port}"]
    state["url"] = f"http://127.0.0.1:{port}/fhir"
    yield state
    server.shutdown()
    server.server_close()


def test_unreachable_host(ready: dict[str, Any], settings: Any) -> None:
    port = free_port()
    settings.OUTBOUND_ALLOWLIST = [*settings.OUTBOUND_ALLOWLIST, f"127.0.0.1:{port}"]
    conn = ConnectionFactory(tenant=ready["tenant"], base_url=f"http://127.0.0.1:{port}/fhir")
    assert_failed_cleanly(conn, "configure", ready["user"], "connect")


def test_dns_failure(ready: dict[str, Any]) -> None:
    conn = ConnectionFactory(tenant=ready["tenant"], base_url="https://no-such-hospital.invalid/fhir")
    run = assert_failed_cleanly(conn, "configure", ready["user"], "dns")
    assert "host name" in run.error_message.lower() or "could not be found" in run.error_message.lower()


def test_tls_failure(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    plain = sandboxes["generic"]
    conn = ConnectionFactory(tenant=ready["tenant"], base_url=plain.base_url.replace("http://", "https://"))
    assert_failed_cleanly(conn, "configure", ready["user"], "tls")


def test_private_address_is_blocked(ready: dict[str, Any]) -> None:
    conn = ConnectionFactory(tenant=ready["tenant"], base_url="http://10.1.2.3/fhir")
    assert_failed_cleanly(conn, "configure", ready["user"], "blocked_address")


def test_html_login_page_instead_of_fhir(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    sandboxes["generic"].set_faults(not_fhir=True)
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert_failed_cleanly(conn, "configure", ready["user"], "not_fhir")


def test_json_that_is_not_fhir(ready: dict[str, Any], odd_server: dict[str, Any]) -> None:
    odd_server["body"] = b'{"status": "ok", "service": "billing"}'
    conn = ConnectionFactory(tenant=ready["tenant"], base_url=odd_server["url"])
    assert_failed_cleanly(conn, "configure", ready["user"], "not_fhir")


def test_non_json_answer(ready: dict[str, Any], odd_server: dict[str, Any]) -> None:
    odd_server.update(type="text/plain", body=b"Service Unavailable - Maintenance")
    conn = ConnectionFactory(tenant=ready["tenant"], base_url=odd_server["url"])
    assert_failed_cleanly(conn, "configure", ready["user"], "not_fhir")


def test_truncated_json(ready: dict[str, Any], odd_server: dict[str, Any]) -> None:
    odd_server.update(type="application/fhir+json", body=b'{"resourceType": "CapabilityStatement", "fhirVer')
    conn = ConnectionFactory(tenant=ready["tenant"], base_url=odd_server["url"])
    assert_failed_cleanly(conn, "configure", ready["user"], "bad_payload")


def test_wrong_fhir_version(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    sandboxes["generic"].set_faults(fhir_version="3.0.2")
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    run = assert_failed_cleanly(conn, "configure", ready["user"], "wrong_version")
    assert "3.0.2" in run.error_message


def test_wrong_credentials(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    epic = sandboxes["epic"]
    conn = sandbox_connection(
        ready["tenant"],
        epic,
        auth_method="client_credentials",
        client_id="portal-test",
        secret="not-the-right-secret",
        token_url=epic.token_url,
    )
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    run = assert_failed_cleanly(conn, "test", ready["user"], "auth")
    assert run.result["checks"][0]["outcome"] == "failed"
    assert {c["outcome"] for c in run.result["checks"][1:]} == {"skipped"}
    assert "not-the-right-secret" not in json.dumps([run.result, run.log, run.error_detail, run.error_message])


def test_timeout(ready: dict[str, Any], sandboxes: dict[str, Any], settings: Any) -> None:
    settings.OUTBOUND_READ_TIMEOUT = 0.3
    settings.OUTBOUND_MAX_ATTEMPTS = 1
    sandboxes["generic"].set_faults(latency_ms=1500)
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert_failed_cleanly(conn, "configure", ready["user"], "timeout")


def test_throttled(ready: dict[str, Any], sandboxes: dict[str, Any], settings: Any) -> None:
    settings.OUTBOUND_MAX_ATTEMPTS = 2
    sandboxes["generic"].set_faults(rate_429=1.0, retry_after=1)
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert_failed_cleanly(conn, "configure", ready["user"], "throttled")


def test_server_error(ready: dict[str, Any], sandboxes: dict[str, Any], settings: Any) -> None:
    settings.OUTBOUND_MAX_ATTEMPTS = 2
    sandboxes["generic"].set_faults(rate_5xx=1.0)
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert_failed_cleanly(conn, "configure", ready["user"], "server_error")


def test_a_bug_in_a_step_fails_the_run_instead_of_crashing(
    ready: dict[str, Any], sandboxes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onboarding.steps.configure import ConfigureStep

    def broken(self: Any, ctx: Any) -> Any:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(ConfigureStep, "run", broken)
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert_failed_cleanly(conn, "configure", ready["user"], "internal")


def test_an_infinite_retry_after_ends_the_run_failed_not_stuck(
    ready: dict[str, Any], odd_server: dict[str, Any]
) -> None:
    from connections.http import parse_retry_after

    assert parse_retry_after("1e999") is None
    assert parse_retry_after("nan") is None
    odd_server.update(status=503, type="application/fhir+json", body=b"{}", headers={"Retry-After": "1e999"})
    conn = ConnectionFactory(tenant=ready["tenant"], base_url=odd_server["url"])
    assert_failed_cleanly(conn, "configure", ready["user"], "server_error")


def test_a_summary_the_database_refuses_still_ends_the_run(
    ready: dict[str, Any], sandboxes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onboarding.steps.base import StepOutcome
    from onboarding.steps.configure import ConfigureStep

    monkeypatch.setattr(
        ConfigureStep, "run", lambda self, ctx: StepOutcome(passed=True, summary={"ratio": float("nan"), "n": [1e999]})
    )
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    run = run_now(conn, "configure", ready["user"])
    assert run.status == RunStatus.PASSED
    assert run.result == {"ratio": None, "n": [None]}


# --- Diagnostics against servers that answer 200 but not what was asked (sandbox quirks) ------------------


def check_of(run: StepRun, check_id: str) -> dict[str, Any]:
    return next(check for check in run.result["checks"] if check["id"] == check_id)


def test_the_test_step_fails_a_server_that_ignores_patient(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    sandboxes["generic"].set_faults(ignore_patient_param=True)
    run = assert_failed_cleanly(conn, "test", ready["user"], "ignores_patient")
    assert "The server ignores `patient=`" in run.error_message
    assert "Observation?patient=" in run.error_hint
    check = check_of(run, "observation_search")
    assert check["outcome"] == "failed" and check["error_kind"] == "ignores_patient"
    assert {c["outcome"] for c in run.result["checks"][:-1]} == {"passed"}


def test_the_test_step_fails_a_server_that_ignores_count(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    sandboxes["generic"].set_faults(ignore_count=True)
    run = assert_failed_cleanly(conn, "test", ready["user"], "ignores_count")
    assert run.error_message == ("The server ignores `_count`: we asked for 5 patients and the first page held 20.")
    assert check_of(run, "patient_search")["outcome"] == "failed"


def test_the_test_step_fails_a_server_that_never_pages(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["oracle_health"])
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    passing = run_now(conn, "test", ready["user"])
    assert check_of(passing, "patient_paging")["detail"] == "the next page held 5 more patients"
    sandboxes["oracle_health"].set_faults(never_pages=True)
    run = assert_failed_cleanly(conn, "test", ready["user"], "never_pages")
    assert "does not page: its first Patient page held 5 of the 30 patients it counts" in run.error_message
    assert check_of(run, "patient_paging")["outcome"] == "failed"


def test_configure_says_what_metadata_sent_and_may_go_on_without_a_capability_statement(
    ready: dict[str, Any], sandboxes: dict[str, Any], it_a: Any
) -> None:
    from tests.conftest import client_for

    hospital = sandboxes["generic"]
    hospital.set_faults(no_capability_statement="empty_bundle")
    conn = sandbox_connection(ready["tenant"], hospital)
    run = assert_failed_cleanly(conn, "configure", ready["user"], "no_capability_statement")
    # What came back, not "check the base URL".
    assert "a FHIR Bundle (type searchset, 0 entries)" in run.error_message
    assert "application/fhir+json" in run.error_message
    assert "Continue without a CapabilityStatement" in run.error_hint
    assert run.error_detail["received"]["resource_type"] == "Bundle"

    page_url = f"/c/{conn.code}/"
    page = client_for(ready["user"]).get(page_url).content.decode()
    assert 'data-testid="offer-without-capability-statement"' in page
    # Hospital IT may not choose it; customer success may, through the page, and it is audited.
    choice = f"/c/{conn.code}/capability-statement/"
    assert client_for(it_a).post(choice, {"continue_without": "1"}).status_code == 403
    assert client_for(ready["user"]).post(choice, {"continue_without": "1"}).status_code == 302
    conn.refresh_from_db()
    assert conn.without_capability_statement
    event = AuditEvent.objects.get(action="connection.capability_statement_skipped")
    assert (event.actor, event.tenant, event.object_id) == (ready["user"], ready["tenant"], str(conn.code))

    configure = run_now(conn, "configure", ready["user"])
    assert configure.status == RunStatus.PASSED, (configure.error_kind, configure.error_message)
    assert configure.result["capability_statement"]["present"] is False
    assert any("FHIR version" in check for check in configure.result["skipped_checks"])
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    assert test.result["skipped_checks"] == configure.result["skipped_checks"]
    detail = client_for(ready["user"]).get(f"/runs/{test.code}/").content.decode()
    assert 'data-testid="skipped-checks"' in detail

    # The API shows the choice and can undo it, audited too.
    api = client_for(ready["user"])
    assert api.get(f"/api/v1/connections/{conn.code}/").json()["without_capability_statement"] is True
    undone = api.post(
        f"/api/v1/connections/{conn.code}/capability-statement/", {"continue_without": False}, "application/json"
    )
    assert undone.status_code == 200 and undone.json()["without_capability_statement"] is False
    assert AuditEvent.objects.filter(action="connection.capability_statement_required").count() == 1
    assert run_now(conn, "configure", ready["user"]).error_kind == "no_capability_statement"


def test_an_operation_outcome_at_metadata_is_quoted(ready: dict[str, Any], sandboxes: dict[str, Any]) -> None:
    sandboxes["generic"].set_faults(no_capability_statement="operation_outcome")
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    run = assert_failed_cleanly(conn, "configure", ready["user"], "no_capability_statement")
    assert "“The capabilities interaction is not supported.”" in run.error_message


@pytest.mark.parametrize("flavour", ["generic", "meditech"])
def test_an_optional_smart_configuration_that_fails_is_a_warning(
    ready: dict[str, Any], sandboxes: dict[str, Any], flavour: str
) -> None:
    sandboxes[flavour].set_faults(smart_config_status=500)
    conn = sandbox_connection(ready["tenant"], sandboxes[flavour], **AUTH_BY_FLAVOUR.get(flavour, {}))
    run = run_now(conn, "configure", ready["user"])
    assert run.status == RunStatus.PASSED, (run.error_kind, run.error_message)
    (warning,) = run.result["warnings"]
    assert "optional .well-known/smart-configuration" in warning and "does not need it" in warning
    assert any(line["level"] == "warning" for line in run.log)


def test_a_smart_configuration_the_auth_needs_fails_without_saying_try_again_later(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    epic = sandboxes["epic"]
    epic.set_faults(smart_config_status=500)
    conn = sandbox_connection(ready["tenant"], epic, **AUTH_BY_FLAVOUR["epic"], token_url="")
    run = assert_failed_cleanly(conn, "configure", ready["user"], "server_error")
    assert "token URL is read from .well-known/smart-configuration" in run.error_message
    assert "Set the token URL on the connection" in run.error_hint
    assert "try again" not in (run.error_message + run.error_hint).lower()


def test_no_hint_says_try_again_unless_a_retry_can_help() -> None:
    from connections.errors import DEFAULT_TEXT, ErrorKind

    # A retry helps only where the failure may pass by itself: a slow or busy server.
    retry_helps = {ErrorKind.TIMEOUT, ErrorKind.DEADLINE}
    for kind, (_message, hint) in DEFAULT_TEXT.items():
        if "try again" in hint.lower():
            assert kind in retry_helps, (kind, hint)


def test_throttling_is_counted_in_the_result_and_shown(
    ready: dict[str, Any], sandboxes: dict[str, Any], settings: Any
) -> None:
    from tests.conftest import client_for

    settings.OUTBOUND_MAX_ATTEMPTS = 8
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    sandboxes["generic"].set_faults(rate_429=0.5, retry_after=0)
    configure = run_now(conn, "configure", ready["user"])
    assert configure.status == RunStatus.PASSED
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    throttling = test.result["throttling"]
    assert throttling["throttled"] >= 1 and throttling["retries"] >= throttling["throttled"]
    page = client_for(ready["user"]).get(f"/runs/{test.code}/").content.decode()
    assert f"throttled this run {throttling['throttled']} time" in page


def test_a_throttling_wait_beyond_the_runs_time_fails_with_the_time_it_needed(
    ready: dict[str, Any], sandboxes: dict[str, Any], settings: Any
) -> None:
    settings.STEP_SOFT_TIME_LIMIT = 20
    hospital = sandboxes["generic"]
    hospital.set_faults(rate_429=1.0, retry_after=53, throttle_style="ratelimit")
    conn = sandbox_connection(ready["tenant"], hospital)
    run = assert_failed_cleanly(conn, "configure", ready["user"], "throttled")
    assert "would have needed 53 s" in run.error_message and "(RateLimit)" in run.error_message
    assert run.error_detail["would_need_s"] == 53.0
    assert run.error_detail["throttling"]["throttled"] == 1
    assert "wait a few minutes" not in run.error_hint.lower()


def test_a_wildcard_granted_type_by_type_is_not_reported_missing(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    from connections.auth import missing_scopes

    epic = sandboxes["epic"]
    epic.set_faults(per_type_scopes=True)
    conn = sandbox_connection(ready["tenant"], epic, **AUTH_BY_FLAVOUR["epic"], token_url=epic.token_url)
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    test = run_now(conn, "test", ready["user"])
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    assert test.result["credential"]["scopes"] == [
        f"system/{t}.read" for t in ("Patient", "Observation", "Condition", "Encounter")
    ]
    assert test.result["credential"]["missing_scopes"] == []
    assert "not granted" not in check_of(test, "auth")["detail"]
    # A type the product reads that the server left out is named, not the wildcard.
    assert missing_scopes(["system/*.read"], ("system/Patient.read", "system/Observation.rs")) == (
        "system/Condition.read",
        "system/Encounter.read",
    )
    assert missing_scopes(["system/*.read"], ("user/Patient.read",)) == ("system/*.read",)
    assert missing_scopes(["system/*.read", "launch"], ("system/*.read",)) == ("launch",)


def test_the_token_url_found_by_discovery_is_shown_on_the_connection(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    from tests.conftest import client_for

    epic = sandboxes["epic"]
    conn = sandbox_connection(ready["tenant"], epic, **AUTH_BY_FLAVOUR["epic"], token_url="")
    client = client_for(ready["user"])
    before = client.get(f"/c/{conn.code}/").content.decode()
    assert "run configure to see it" in before
    configure = run_now(conn, "configure", ready["user"])
    assert configure.status == RunStatus.PASSED
    page = client.get(f"/c/{conn.code}/").content.decode()
    assert f"<code>{epic.token_url}</code> (discovered from .well-known/smart-configuration" in page
    test = run_now(conn, "test", ready["user"])
    assert test.result["credential"]["token_url"] == epic.token_url
    assert test.result["credential"]["token_url_source"] == "discovered"
    assert epic.token_url in client.get(f"/runs/{test.code}/").content.decode()
