"""The load-test step: its plan and caps, its permission (a gate with a window), and runs against sandboxes.

Plans, caps and the gate are checked on the database alone. Runs send real HTTP to the project's
sandbox hospitals on loopback: in this process for the ways a run goes wrong (a missed SLA, a
target that stops answering, a token that would expire, a lost delivery), and on a real Celery
worker, on the load_tests queue, for the step end to end with injected latency and a cancel from
the page. What is asserted is what the run measured against what the sandbox was told to do,
never how fast this machine is.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from datetime import UTC, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from connections.models import EHRConnection
from onboarding.engine import services
from onboarding.evidence.services import build_pack
from onboarding.gates import services as gates
from onboarding.loadtest import charts
from onboarding.loadtest import services as loadtests
from onboarding.mapping import services as mappings
from onboarding.models import (
    Approval,
    LoadTestPlan,
    LoadTestReport,
    LoadTestSecond,
    Onboarding,
    RunStatus,
    StepRun,
)
from tests.conftest import client_for
from tests.factories import ConnectionFactory, sign_mapping_off
from tests.route_matrix import load_test_plan_values
from tests.test_map_step import run_now, sandbox_connection

pytestmark = pytest.mark.django_db

EARLIER_STEPS = ("configure", "test", "map", "validate")


# --- helpers ----------------------------------------------------------------------------------------


def prepared(tenant: Any, cs: Any, it: Any, hospital: Any = None, **connection: Any) -> Onboarding:
    """A pipeline whose earlier steps passed and whose mapping (with the hospital's MRN system) is signed off.

    The earlier steps are recorded, not run: what is under test is the load-test step, which reads
    only their outcome, the signed mapping and the hospital itself.
    """
    conn = sandbox_connection(tenant, hospital, **connection) if hospital else ConnectionFactory(tenant=tenant)
    onboarding = services.ensure_onboarding(conn)
    for step in EARLIER_STEPS:
        StepRun.objects.create(onboarding=onboarding, step=step, attempt=1, status="passed", finished_at=timezone.now())
    profile = {
        "elements": [],
        "extensions": [],
        "suggested_mrn_system": hospital.mrn_system if hospital else "urn:oid:1.2.3",
    }
    mapping = mappings.record_map_result(onboarding=onboarding, profile=profile, run=None)
    sign_mapping_off(cs=cs, it=it, mapping=mapping)
    return onboarding


def write_plan(cs: Any, onboarding: Onboarding, **changes: Any) -> LoadTestPlan:
    latest = loadtests.latest_plan(onboarding)
    plan, _ = loadtests.save_plan(
        user=cs,
        onboarding=onboarding,
        values=load_test_plan_values(**changes),
        seen_version=latest.version if latest else 0,
    )
    return plan


def permit(
    cs: Any, it: Any, onboarding: Onboarding, *, starts: timedelta = timedelta(0), lasts: timedelta | None = None
) -> Approval:
    """Customer success ask for the permission; hospital IT grant it for a window (from now, an hour by default)."""
    approval = gates.request_approval(user=cs, onboarding=onboarding, gate_key=loadtests.GATE_KEY, note="Tonight?")
    start = timezone.now() + starts
    return gates.decide(
        user=it,
        approval=approval,
        decision="approved",
        comment="In our quiet hours.",
        valid_from=start,
        valid_until=start + (lasts or timedelta(hours=1)),
    )


def start(cs: Any, onboarding: Onboarding) -> StepRun:
    return services.start_step(user=cs, onboarding=onboarding, step="load_test")


def run_in_process(cs: Any, onboarding: Onboarding) -> StepRun:
    return run_now(onboarding.connection, "load_test", cs)


# --- the plan ---------------------------------------------------------------------------------------


def test_a_plan_is_versioned_and_a_save_that_changes_nothing_makes_no_version(tenant_a: Any, cs_user: Any) -> None:
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))
    first = write_plan(cs_user, onboarding)
    assert (first.version, first.created_by_label) == (1, cs_user.username)
    assert first.content_hash == loadtests.content_hash(load_test_plan_values())
    same, created = loadtests.save_plan(
        user=cs_user, onboarding=onboarding, values=load_test_plan_values(), seen_version=1
    )
    assert (same.pk, created) == (first.pk, False)
    # Fields the chosen mode does not use are cleared, and do not change what an approval binds.
    unused, created = loadtests.save_plan(
        user=cs_user, onboarding=onboarding, values=load_test_plan_values(normal_peak=999.0), seen_version=1
    )
    assert (unused.pk, created) == (first.pk, False)
    second = write_plan(cs_user, onboarding, target_rate=25.0)
    assert second.version == 2 and second.content_hash != first.content_hash
    with pytest.raises(loadtests.PlanConflict, match="version 2 now, you had version 1"):
        loadtests.save_plan(user=cs_user, onboarding=onboarding, values=load_test_plan_values(), seen_version=1)
    assert LoadTestPlan.objects.filter(onboarding=onboarding).count() == 2


def test_a_plan_stated_as_a_normal_peak_is_twice_it_by_default_and_a_staircase_lists_its_steps(
    tenant_a: Any, cs_user: Any
) -> None:
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))
    peak = write_plan(cs_user, onboarding, load_mode="peak", target_rate=None, normal_peak=30.0)
    assert loadtests.target_rate(peak) == 60.0 and peak.target_rate is None
    assert loadtests.load_sentence(peak) == "60 req/s (normal peak 30 req/s times 2) for 10 s"
    stairs = write_plan(
        cs_user,
        onboarding,
        load_mode="staircase",
        staircase_start=10.0,
        staircase_step=10.0,
        staircase_steps=4,
        staircase_step_s=5,
        ramp_s=2,
    )
    facts = loadtests.describe(stairs)
    assert facts["target_rps"] == 40.0 and facts["total_duration_s"] == 2 + 4 * 5
    assert facts["expected_requests"] == round(10 * 2 / 2 + (10 + 20 + 30 + 40) * 5)
    assert "4 steps of 5 s each (10, 20, 30, 40 req/s)" in facts["load"]
    assert [item["share_pct"] for item in facts["mix"]] == [36.4, 18.2, 27.3, 9.1, 9.1]


@pytest.mark.parametrize(
    ("changes", "cap", "setting"),
    [
        ({"target_rate": 600.0}, "max_rate", "LOAD_TEST_MAX_RATE"),
        ({"concurrency": 101}, "max_concurrency", "LOAD_TEST_MAX_CONCURRENCY"),
        ({"duration_s": 1801}, "max_duration_s", "LOAD_TEST_MAX_DURATION"),
        ({"target_rate": 400.0, "duration_s": 1500}, "max_total_requests", "LOAD_TEST_MAX_TOTAL_REQUESTS"),
    ],
)
def test_a_plan_above_a_cap_is_refused_with_the_cap_named(
    tenant_a: Any, cs_user: Any, changes: dict[str, Any], cap: str, setting: str
) -> None:
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))
    with pytest.raises(loadtests.PlanRefused) as refused:
        write_plan(cs_user, onboarding, **changes)
    assert refused.value.cap == cap
    assert "above the cap" in str(refused.value) and setting in str(refused.value)
    assert not LoadTestPlan.objects.exists()


def test_caps_come_from_settings_and_a_plan_over_a_lowered_cap_cannot_be_put_to_hospital_it(
    tenant_a: Any, cs_user: Any, it_a: Any, settings: Any
) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    write_plan(cs_user, onboarding, target_rate=50.0)
    settings.LOAD_TEST_MAX_RATE = 40.0
    assert loadtests.caps().max_rate == 40.0
    state = gates.gate_state(onboarding, loadtests.GATE_KEY)
    assert state.status == "not_ready" and "above the cap of 40 req/s" in str(state.not_ready)
    with pytest.raises(gates.GateError, match="LOAD_TEST_MAX_RATE"):
        gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=loadtests.GATE_KEY)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({f: 0 for f in loadtests.WEIGHT_FIELDS.values()}, "weight_patient_read", "at least one request type"),
        ({"target_rate": None}, "target_rate", "Give the target rate"),
        ({"load_mode": "peak", "normal_peak": -5.0}, "normal_peak", "Give the normal peak"),
        ({"sla_p95_ms": 500.0, "sla_p99_ms": 100.0}, "sla_p99_ms", "cannot be below the agreed p95"),
        ({"sla_max_error_pct": None}, "sla_max_error_pct", "The maximum error % is required"),
        ({"abort_error_pct": 0.0}, "abort_error_pct", "above 0%"),
        ({"load_mode": "staircase", "staircase_start": 5.0, "staircase_steps": 0}, "staircase_steps", "1 to 50 steps"),
    ],
)
def test_a_bad_plan_says_what_to_fix(
    tenant_a: Any, cs_user: Any, changes: dict[str, Any], field: str, words: str
) -> None:
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))
    with pytest.raises(loadtests.PlanRefused, match=words) as refused:
        write_plan(cs_user, onboarding, **changes)
    assert refused.value.field == field and refused.value.cap is None


def test_hospital_it_cannot_write_a_plan(tenant_a: Any, it_a: Any) -> None:
    from django.core.exceptions import PermissionDenied

    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))
    with pytest.raises(PermissionDenied):
        write_plan(it_a, onboarding)


# --- the permission -----------------------------------------------------------------------------------


def test_the_permission_binds_the_exact_plan_for_a_window_it_must_have(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    plan = write_plan(cs_user, onboarding)
    approval = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=loadtests.GATE_KEY)
    assert (approval.artifact_kind, approval.artifact_id, approval.artifact_hash) == (
        "load_test_plan",
        plan.pk,
        plan.content_hash,
    )
    with pytest.raises(gates.GateError, match="Give the window"):
        gates.decide(user=it_a, approval=approval, decision="approved")
    with pytest.raises(gates.GateError, match="must end in the future"):
        gates.decide(
            user=it_a, approval=approval, decision="approved", valid_until=timezone.now() - timedelta(minutes=1)
        )
    until = timezone.now() + timedelta(hours=2)
    decided = gates.decide(user=it_a, approval=approval, decision="approved", valid_until=until)
    assert decided.valid_until == until
    state = gates.gate_state(onboarding, loadtests.GATE_KEY)
    assert state.status == "approved" and "until" in state.sentence
    # The mapping sign-off, which wants no window, is still approved without one.
    assert not gates.get_gate(mappings.SIGN_OFF_GATE).wants_window and gates.get_gate(loadtests.GATE_KEY).wants_window


def test_changing_the_plan_voids_the_permission_and_the_start_is_refused(
    tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    write_plan(cs_user, onboarding)
    approval = permit(cs_user, it_a, onboarding)
    assert gates.live_approval(onboarding, loadtests.GATE_KEY) == approval
    write_plan(cs_user, onboarding, target_rate=30.0)
    approval.refresh_from_db()
    assert approval.state == "voided"
    assert approval.voided_reason == "Load-test plan version 2 replaced it."
    with pytest.raises(services.StepBlocked, match="Permission to load-test is needed first"):
        start(cs_user, onboarding)
    assert not StepRun.objects.filter(step="load_test").exists()
    state = gates.gate_state(onboarding, loadtests.GATE_KEY)
    assert state.requestable and state.artifact is not None and state.artifact.version == 2


def test_the_start_is_refused_without_a_permission(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    with pytest.raises(services.StepBlocked, match="There is no load-test plan yet"):
        start(cs_user, onboarding)
    write_plan(cs_user, onboarding)
    with pytest.raises(services.StepBlocked, match="Permission to load-test is needed first"):
        start(cs_user, onboarding)
    gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=loadtests.GATE_KEY)
    with pytest.raises(services.StepBlocked, match="waiting for hospital IT"):
        start(cs_user, onboarding)
    # A refused start, not a failed run: nothing is written.
    assert not StepRun.objects.filter(step="load_test").exists()


def test_the_start_is_refused_outside_the_window(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    write_plan(cs_user, onboarding)
    later = permit(cs_user, it_a, onboarding, starts=timedelta(hours=3))
    state = gates.gate_state(onboarding, loadtests.GATE_KEY)
    assert state.status == "scheduled" and not state.requestable and state.owed_by == ""
    assert "the window opens in 2 h 59 min" in state.sentence or "the window opens in 3 h" in state.sentence
    with pytest.raises(services.StepBlocked, match="window opens in"):
        start(cs_user, onboarding)
    # The same approval once its window has passed.
    Approval.objects.filter(pk=later.pk).update(
        valid_from=timezone.now() - timedelta(hours=2), valid_until=timezone.now() - timedelta(hours=1)
    )
    state = gates.gate_state(onboarding, loadtests.GATE_KEY)
    assert state.status == "expired" and state.requestable and state.owed_by == "customer success"
    with pytest.raises(services.StepBlocked, match="that window has ended"):
        start(cs_user, onboarding)
    assert not StepRun.objects.filter(step="load_test").exists()


def test_the_decision_form_reads_the_window_in_the_hospitals_time_zone(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    tenant_a.timezone = "America/Chicago"
    tenant_a.save()
    onboarding = prepared(tenant_a, cs_user, it_a)
    write_plan(cs_user, onboarding)
    approval = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=loadtests.GATE_KEY)
    client = client_for(it_a)
    page = client.get(f"/approvals/{approval.code}/")
    assert b'name="valid_until"' in page.content and b"America/Chicago" in page.content
    year = timezone.now().year + 1
    answer = client.post(
        f"/approvals/{approval.code}/decide/",
        {
            "decision": "approved",
            "artifact_hash": approval.artifact_hash,
            "valid_from": f"{year}-07-04T22:00",
            "valid_until": f"{year}-07-05T02:00",
        },
    )
    assert answer.status_code == 302
    approval.refresh_from_db()
    # 22:00 CDT is 03:00 UTC the next day.
    assert approval.valid_from is not None and approval.valid_until is not None
    assert approval.valid_from.astimezone(UTC).strftime("%m-%d %H:%M") == "07-05 03:00"
    assert approval.valid_until - approval.valid_from == timedelta(hours=4)
    shown = client.get(f"/approvals/{approval.code}/").content.decode()
    assert f"from {year}-07-04 22:00 to {year}-07-05 02:00 CDT" in shown


def test_a_window_typed_wrong_is_refused_with_what_to_type(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    write_plan(cs_user, onboarding)
    approval = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=loadtests.GATE_KEY)
    client = client_for(it_a)
    answer = client.post(
        f"/approvals/{approval.code}/decide/",
        {"decision": "approved", "valid_until": "tomorrow evening"},
        follow=True,
    )
    assert "Enter the window&#x27;s end as a date and a time" in answer.content.decode()
    approval.refresh_from_db()
    assert approval.state == "pending"


# --- the API ------------------------------------------------------------------------------------------


def test_the_plan_api_reads_writes_and_refuses_as_the_page_does(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a)
    url = f"/api/v1/connections/{onboarding.connection.code}/load-test-plan/"
    api = APIClient()
    api.force_authenticate(cs_user)
    empty = api.get(url).json()
    assert empty["plan"] is None and empty["latest_version"] == 0
    assert {cap["setting"] for cap in empty["caps"]} == set(loadtests.CAP_SETTINGS.values())
    made = api.post(url, {**load_test_plan_values(), "seen_version": 0}, format="json")
    assert made.status_code == 201, made.json()
    assert made.json()["plan"]["version"] == 1 and made.json()["plan"]["target_rps"] == 20.0
    again = api.post(url, {**load_test_plan_values(), "seen_version": 1}, format="json")
    assert (again.status_code, again.json()["changed"]) == (200, False)
    over = api.post(url, {**load_test_plan_values(target_rate=501.0), "seen_version": 1}, format="json")
    assert over.status_code == 400
    assert over.json()["cap"] == "max_rate" and "LOAD_TEST_MAX_RATE" in over.json()["detail"]
    stale = api.post(url, {**load_test_plan_values(target_rate=21.0), "seen_version": 0}, format="json")
    assert stale.status_code == 409 and stale.json()["latest_version"] == 1
    read = api.get(url).json()
    assert read["plan"]["version"] == 1 and read["permission"]["status"] == "ready"
    hospital = APIClient()
    hospital.force_authenticate(it_a)
    assert hospital.get(url).status_code == 200
    assert hospital.post(url, {**load_test_plan_values(), "seen_version": 1}, format="json").status_code == 403
    schema = api.get("/api/schema/?format=json").json()
    assert "/api/v1/connections/{code}/load-test-plan/" in schema["paths"]
    assert "/api/v1/runs/{code}/load-test/" in schema["paths"]


# --- the charts -----------------------------------------------------------------------------------------


def test_the_charts_are_plain_svg_the_csp_allows_and_say_in_words_what_they_show() -> None:
    points = [
        charts.SecondPoint(second=s, answered=20, p50_ms=50 + s, p95_ms=60 + s, p99_ms=70 + s, target_rps=20,
                           throughput=20, errors=1 if s == 3 else 0)
        for s in range(10)
    ]  # fmt: skip
    drawn = {
        "latency": charts.latency_over_time(points, sla_p95_ms=65.0, chart_id="c1"),
        "throughput": charts.throughput_over_time(points, chart_id="c2"),
        "histogram": charts.latency_histogram([(50.0, 100), (70.0, 80), (79.0, 20)], chart_id="c3"),
        "empty": charts.latency_over_time([], sla_p95_ms=None, chart_id="c4"),
    }
    for name, svg in drawn.items():
        root = ET.fromstring(str(svg))  # noqa: S314 - our own output, checked for being well-formed XML
        assert root.get("role") == "img", name
        assert root.get("aria-labelledby") == f"{root.get('id')}-title {root.get('id')}-desc"
        ns = "{http://www.w3.org/2000/svg}"
        assert root.find(f"{ns}title") is not None and root.find(f"{ns}desc").text  # type: ignore[union-attr]
        for element in root.iter():
            assert "style" not in element.attrib, (name, element.tag)
            assert element.tag not in (f"{ns}style", f"{ns}script", f"{ns}foreignObject"), name
            assert not any(key.startswith("on") for key in element.attrib), name
    latency_root = ET.fromstring(str(drawn["latency"]))  # noqa: S314 - our own output
    latency_desc = latency_root.find("{http://www.w3.org/2000/svg}desc")
    assert latency_desc is not None and "p95 was above the agreed 65 ms in 4 of those seconds" in str(latency_desc.text)
    assert "<polygon" in drawn["latency"] and "stroke-dasharray" in drawn["latency"]
    assert str(drawn["histogram"]).count("<rect") == 1 + 3  # the background and three bars
    assert "No request was answered" in drawn["empty"]


# --- runs in this process, against sandbox hospitals ----------------------------------------------------


@pytest.fixture
def generic(sandbox_allowlist: str, clean_faults: None, sandboxes: dict[str, Any]) -> Any:
    return sandboxes["generic"]


def test_a_missed_sla_fails_the_run_with_the_reason_in_words(
    generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    generic.set_faults(latency_ms=60)
    onboarding = prepared(tenant_a, cs_user, it_a, generic)
    write_plan(cs_user, onboarding, target_rate=10.0, duration_s=3, sla_p95_ms=20.0, sla_p99_ms=40.0)
    permit(cs_user, it_a, onboarding)
    run = run_in_process(cs_user, onboarding)
    assert run.status == RunStatus.FAILED and run.error_kind == "sla_missed", (run.error_kind, run.error_message)
    result = run.result
    assert result["outcome"] == "completed" and result["latency"]["p50_ms"] >= 60
    assert f"p95 {result['stages'][-1]['latency']['p95_ms']:.0f} ms is above the agreed 20 ms" in run.error_message
    assert run.error_message.startswith("Failed: ") and result["sla"]["passed"] is False
    report = LoadTestReport.objects.get(run=run)
    assert report.summary == result and report.delivery == 1 and report.hdr
    seconds = LoadTestSecond.objects.filter(run=run)
    assert seconds.count() == result["seconds"] >= 3
    assert sum(s.answered for s in seconds) == result["answered"] == result["sent"]
    # The requests were built from the sandbox's own patients: every answer was a 200.
    assert result["statuses"] == {"200": result["answered"]}
    assert result["records"]["patients"] == 10 and result["records"]["identifiers"] >= 10
    assert {row["name"] for row in result["per_type"]} == set(loadtests.WEIGHT_FIELDS)


def test_a_target_that_stops_answering_fails_the_run_keeping_what_was_measured(
    tenant_a: Any, cs_user: Any, it_a: Any, settings: Any
) -> None:
    from tests.test_loadgen import remote_sandbox

    with remote_sandbox(patients=20) as hospital:
        settings.OUTBOUND_ALLOWLIST = [f"127.0.0.1:{hospital.port}"]
        settings.OUTBOUND_READ_TIMEOUT = 2.0
        hospital.flavour = "generic"
        onboarding = prepared(tenant_a, cs_user, it_a, hospital)
        write_plan(cs_user, onboarding, target_rate=20.0, duration_s=30)
        permit(cs_user, it_a, onboarding)
        hang = threading.Timer(3.0, hospital.set_faults, kwargs={"latency_ms": 600_000})
        hang.start()
        try:
            run = run_in_process(cs_user, onboarding)
        finally:
            hang.cancel()
    assert run.status == RunStatus.FAILED and run.error_kind == "target_failed", (run.error_kind, run.error_message)
    assert "stopped answering" in run.error_message
    result = run.result
    assert result["outcome"] == "failed" and result["elapsed_s"] < 30 and result["answered"] > 0
    first = LoadTestSecond.objects.filter(run=run).order_by("second").first()
    assert first is not None and first.answered == first.sent > 0  # before the hang, kept
    assert LoadTestReport.objects.get(run=run).outcome == "failed"


def test_a_token_that_would_expire_mid_run_is_refused_before_anything_is_sent(
    sandbox_allowlist: str, clean_faults: None, sandboxes: dict[str, Any], tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    epic = sandboxes["epic"]  # its tokens last 300 s
    onboarding = prepared(
        tenant_a,
        cs_user,
        it_a,
        epic,
        auth_method="client_credentials",
        client_id="portal-test",
        secret="s3cret-sandbox-value",
        token_url="",
    )
    write_plan(cs_user, onboarding, target_rate=1.0, duration_s=250)
    permit(cs_user, it_a, onboarding)
    run = run_in_process(cs_user, onboarding)
    assert run.status == RunStatus.FAILED and run.error_kind == "token_too_short", (run.error_kind, run.error_message)
    assert "lasts 300 s" in run.error_message and "one token for 341 s" in run.error_message
    assert not LoadTestSecond.objects.filter(run=run).exists() and not LoadTestReport.objects.filter(run=run).exists()


def test_a_delivery_after_a_lost_worker_replaces_the_partial_rows_never_doubles_them(
    generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a, generic)
    write_plan(cs_user, onboarding, target_rate=10.0, duration_s=2)
    permit(cs_user, it_a, onboarding)
    run = start(cs_user, onboarding)
    # Delivery 1 claimed the run and measured 5 s before its worker died (rows as it wrote them).
    assert services.claim(run.pk, worker="gone:1") == 1
    for second in range(5):
        LoadTestSecond.objects.create(
            run=run, delivery=1, second=second, target_rps=10, sent=10, dropped=0, answered=10, failed=0,
            errors=0, throughput=10, p50_ms=5, p90_ms=6, p95_ms=7, p99_ms=8, max_ms=9,
        )  # fmt: skip
    assert services.retry_lost_run(run.pk, reason="its worker stopped", worker="gone:1") == "retried"
    services.execute_run(run.pk)  # delivery 2
    run.refresh_from_db()
    assert_held_the_sla(run)
    assert run.deliveries == 2
    rows = list(LoadTestSecond.objects.filter(run=run).order_by("second"))
    assert {row.delivery for row in rows} == {2}
    assert [row.second for row in rows] == list(range(len(rows))) and len(rows) == run.result["seconds"]
    assert sum(row.sent for row in rows) == run.result["sent"] == 20 - run.result["dropped"]
    assert any(
        "delivery 1 lost its worker after measuring 5 s (50 requests sent" in line["message"] for line in run.log
    )


# --- on a real worker ------------------------------------------------------------------------------------


def assert_held_the_sla(run: StepRun) -> None:
    """The run passed, or missed only on requests the engine itself could not send on time.

    On a shared 2-core machine the engine's thread is sometimes not scheduled for tens of
    milliseconds, and the arrivals due meanwhile are dropped as late (never sent late); past 1%
    of the plan the verdict says so. That is the engine reporting its own stall honestly, not the
    server missing the SLA, so it is the one miss allowed here.
    """
    if run.status == RunStatus.PASSED:
        return
    assert run.status == RunStatus.FAILED and run.error_kind == "sla_missed", (run.error_kind, run.error_message)
    reasons = run.result["sla"]["reasons"]
    assert reasons and all("could not be sent on time" in reason for reason in reasons), reasons
    assert set(k for k, v in run.result["dropped_by_reason"].items() if v) <= {"late"}, run.result["dropped_by_reason"]


def wait_for(run: StepRun, predicate: Any, timeout: float = 90) -> StepRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if predicate(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} stayed {run.status}: {run.progress_message}")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_step_on_a_real_worker_measures_the_injected_latency_and_compares_with_the_last_test(
    celery_worker_process: Any, generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    generic.set_faults(latency_ms=50)
    onboarding = prepared(tenant_a, cs_user, it_a, generic)
    write_plan(cs_user, onboarding, target_rate=40.0, duration_s=5, ramp_s=1, sla_p95_ms=1000.0, sla_p99_ms=2000.0)
    permit(cs_user, it_a, onboarding)

    first = wait_for(start(cs_user, onboarding), lambda r: not r.is_active)
    assert_held_the_sla(first)
    assert first.worker and first.deliveries == 1
    result = first.result
    # The sandbox slept 50 ms before every answer: no answer came sooner, and the median is near it.
    assert result["latency"]["p50_ms"] >= 50 and result["latency"]["count"] == result["answered"]
    assert result["statuses"] == {"200": result["answered"]} and result["errors"] == 0
    assert result["sent"] + result["dropped"] == result["scheduled"] == round(40 * 5 + 40 * 1 / 2)
    per_type = {row["name"]: row for row in result["per_type"]}
    assert set(per_type) == set(loadtests.WEIGHT_FIELDS)
    assert all(row["answered"] == row["count"] > 0 for row in per_type.values())
    if first.status == RunStatus.PASSED:
        assert result["verdict"].startswith("Passed: p95 ") and "within the agreed 1000 ms" in result["verdict"]
    assert result["approval"]["decided_by"] == it_a.username and result["approval"]["window"]
    rows = LoadTestSecond.objects.filter(run=first)
    assert rows.count() == result["seconds"] and sum(r.throughput for r in rows) == result["answered"]
    assert any("req/s (target" in line["message"] or "Running load-test plan" in line["message"] for line in first.log)

    # The evidence pack's load-test section: the plan, the approval and the result.
    pack = build_pack(onboarding, generated_by="test")["load_test"]
    assert pack["sla_verdict"] == "SLA met" and pack["outcome"]["verdict"] == result["verdict"]
    assert pack["ran_plan"]["version"] == 1 and pack["approval"]["decided_by"] == it_a.username
    assert pack["plan"]["content_hash"] == loadtests.latest_plan(onboarding).content_hash  # type: ignore[union-attr]
    gate = next(g for g in build_pack(onboarding, generated_by="test")["gates"] if g["key"] == loadtests.GATE_KEY)
    assert gate["approvals"][0]["state"] == "approved"

    # A second test of the same connection is compared with the first.
    generic.set_faults(latency_ms=100)
    second = wait_for(start(cs_user, onboarding), lambda r: not r.is_active)
    assert_held_the_sla(second)
    page = client_for(cs_user).get(f"/runs/{second.code}/").content.decode()
    assert f"/runs/{first.code}/" in page and 'data-testid="load-comparison"' in page
    report = APIClient()
    report.force_authenticate(cs_user)
    answer = report.get(f"/api/v1/runs/{second.code}/load-test/").json()
    assert answer["previous_run"] == str(first.code) and len(answer["per_second"]) == second.result["seconds"]
    p50 = next(row for row in answer["comparison"] if row["label"] == "p50")
    assert p50["now"] >= 100 and p50["previous"] < p50["now"] and p50["change"] == "worse"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_cancel_from_the_page_stops_the_run_on_the_worker_and_keeps_what_it_measured(
    celery_worker_process: Any, generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a, generic)
    write_plan(cs_user, onboarding, target_rate=20.0, duration_s=60)
    permit(cs_user, it_a, onboarding)
    run = start(cs_user, onboarding)
    wait_for(run, lambda r: LoadTestSecond.objects.filter(run=r).count() >= 2)
    live = client_for(cs_user).get(f"/runs/{run.code}/", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-testid="load-test-live"' in live and "req/s (target 20)" in live
    answer = client_for(cs_user).post(f"/runs/{run.code}/cancel/")
    assert answer.status_code == 302
    report = None
    deadline = time.monotonic() + 30
    while report is None and time.monotonic() < deadline:
        report = LoadTestReport.objects.filter(run=run).first()
        time.sleep(0.2)
    assert report is not None, "the cancelled run left no report"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and report.outcome == "cancelled"
    assert report.summary["elapsed_s"] < 60 and report.summary["answered"] > 0
    assert "cancelled by a person" in report.summary["reason"]
    page = client_for(cs_user).get(f"/runs/{run.code}/").content.decode()
    assert 'data-testid="load-test-report"' in page and "The run was <strong>cancelled</strong>" in page


def test_a_load_test_connection_needs_validate_to_have_passed(tenant_a: Any, cs_user: Any) -> None:
    connection = EHRConnection.objects.create(tenant=tenant_a, name="x", base_url="https://e.example/r4")
    onboarding = services.ensure_onboarding(connection)
    with pytest.raises(services.StepBlocked, match="Validate must pass before Load test can run"):
        start(cs_user, onboarding)


def test_after_validate_the_next_action_is_the_permission_then_the_load_test(
    tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    from onboarding.engine.selectors import next_action, step_cells

    onboarding = prepared(tenant_a, cs_user, it_a)
    validate = onboarding.runs.get(step="validate")
    first = next_action(validate)
    assert first is not None and (first.kind, first.gate) == ("request", loadtests.GATE_KEY)
    assert first.sentence.startswith("Next: Load test. Permission to load-test: There is no load-test plan yet")
    assert first.link == f"/c/{onboarding.connection.code}/load-test/"
    write_plan(cs_user, onboarding)
    ready = next_action(validate)
    assert ready is not None and ready.kind == "request" and ready.gate_state is not None
    assert ready.gate_state.requestable
    permit(cs_user, it_a, onboarding)
    go = next_action(validate)
    assert go is not None and (go.kind, go.step) == ("start", "load_test")
    # The permission approves a plan, not a result: a failed load test's chip says failed.
    failed = StepRun.objects.create(onboarding=onboarding, step="load_test", attempt=1, status="failed")
    cells = {cell.key: cell for cell in step_cells(list(onboarding.runs.all()), list(onboarding.approvals.all()))}
    assert cells["load_test"].run == failed and cells["load_test"].state == "failed"
    assert cells["load_test"].state_label == "failed"


def test_a_run_that_could_outlast_the_window_never_starts_sending(
    generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    onboarding = prepared(tenant_a, cs_user, it_a, generic)
    write_plan(cs_user, onboarding, target_rate=1.0, duration_s=120)
    permit(cs_user, it_a, onboarding, lasts=timedelta(seconds=90))
    run = run_in_process(cs_user, onboarding)
    assert run.status == RunStatus.FAILED and run.error_kind == "window_too_short", (run.error_kind, run.error_message)
    assert "The plan runs for 120 s" in run.error_message and "ends in" in run.error_message
    assert not LoadTestSecond.objects.filter(run=run).exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_pool_process_killed_mid_run_is_run_again_without_doubling_its_seconds(
    celery_worker_process: Any, generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    import os
    import signal

    onboarding = prepared(tenant_a, cs_user, it_a, generic)
    write_plan(cs_user, onboarding, target_rate=20.0, duration_s=6)
    permit(cs_user, it_a, onboarding)
    run = start(cs_user, onboarding)
    wait_for(run, lambda r: r.deliveries == 1 and LoadTestSecond.objects.filter(run=r, delivery=1).count() >= 2)
    # The pool process running the test dies (SIGKILL); the worker's main process puts the run back.
    os.kill(int(run.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    done = wait_for(run, lambda r: r.deliveries >= 2 and not r.is_active, timeout=120)
    assert done.deliveries == 2 and done.status in (RunStatus.PASSED, RunStatus.FAILED), done.status
    assert_held_the_sla(done)
    rows = list(LoadTestSecond.objects.filter(run=done).order_by("second"))
    assert {row.delivery for row in rows} == {2} and len(rows) == done.result["seconds"]
    assert [row.second for row in rows] == list(range(len(rows)))  # one row a second, none doubled
    assert sum(row.sent for row in rows) == done.result["sent"]
    assert any("delivery 1 lost its worker after measuring" in line["message"] for line in done.log), done.log[-5:]
    assert LoadTestReport.objects.get(run=done).delivery == 2
