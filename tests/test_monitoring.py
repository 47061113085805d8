"""Monitoring on the database, against sandbox hospitals in this process: the beat tick's claim, alerts
that open and resolve once, planned downtime, escalation, traffic rules, the policy, handoff and drift.

The probes are real (the sandbox's faults make them fail); only the worker is left out here: the
worker-and-beat test is tests/test_monitoring_worker.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.exceptions import PermissionDenied
from django.db import connection as db
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from connections.sandbox import SandboxHospital
from onboarding.engine import services as engine
from onboarding.engine import work
from onboarding.live import traffic
from onboarding.live.models import LivePhase, LiveState, MaintenanceKind, MaintenanceWindow
from onboarding.models import StepRun
from onboarding.monitoring import drift, policy, services, sla
from onboarding.monitoring.models import Alert, AlertKind, DriftRun, HealthCheck, Monitor, MonitorStatus
from onboarding.monitoring.tasks import dispatch_drift
from onboarding.steps import drift as drift_step
from portal.models import AuditEvent, StaffAssignment
from portal.notifications.models import EmailDelivery, Notification
from tests.factories import ConnectionFactory
from tests.live_helpers import make_live
from tests.test_map_step import ready_connection, run_now, set_sizes, signed_off_mapping

pytestmark = pytest.mark.django_db


@pytest.fixture
def generic(sandbox_allowlist: str, clean_faults: None, sandboxes: dict[str, Any]) -> SandboxHospital:
    return sandboxes["generic"]


def live_connection(tenant: Any, hospital: SandboxHospital, **live: Any) -> LiveState:
    connection = ConnectionFactory(tenant=tenant, vendor=hospital.flavour, base_url=hospital.base_url)
    onboarding = engine.ensure_onboarding(connection)
    return make_live(onboarding, probe_patient_id=hospital.patient_ids[0], **live)


def check_now(live: LiveState, at: Any = None) -> HealthCheck | None:
    """One check of the connection due now (or at `at`), run in this process as the worker would."""
    services.ensure_monitors()
    monitor = Monitor.objects.select_related("onboarding__connection", "onboarding__tenant").get(
        onboarding=live.onboarding
    )
    at = at or timezone.now()
    return services.record_check(monitor, live, due_at=at, result=services.run_probe(live), now=at)


def notes(kind: str) -> list[Notification]:
    return list(Notification.objects.filter(kind=kind, key__startswith="alert:"))


@pytest.fixture
def watched(tenant_a: Any, cs_user: Any) -> Any:
    """Tenant A with customer success assigned (who is told about its alerts) and a quick policy."""
    StaffAssignment.objects.create(tenant=tenant_a, user=cs_user)
    current = policy.policy_for(tenant_a)
    current.failures_to_alert = 2
    current.save()
    return tenant_a


# --- The beat tick ----------------------------------------------------------------------------------


def test_a_tick_claims_each_due_check_once_with_the_same_queries_for_more_connections(
    tenant_a: Any, generic: SandboxHospital
) -> None:
    def tick_queries(count: int) -> tuple[int, int]:
        for _ in range(count):
            live_connection(tenant_a, generic)
        services.ensure_monitors()
        Monitor.objects.update(next_check_at=timezone.now() - timedelta(seconds=1))
        with CaptureQueriesContext(db) as queries:
            services.ensure_monitors()
            claimed = services.claim_due()
        return len(queries), len(claimed)

    small, small_claimed = tick_queries(3)
    large, large_claimed = tick_queries(27)
    assert (small_claimed, large_claimed) == (3, 30)
    assert small == large
    # Claimed checks moved on: the next tick finds nothing due.
    assert services.claim_due() == []


@pytest.mark.django_db(transaction=True)
def test_a_second_beat_skips_the_checks_the_first_holds(tenant_a: Any, generic: SandboxHospital) -> None:
    live = live_connection(tenant_a, generic)
    services.ensure_monitors()
    Monitor.objects.update(next_check_at=timezone.now() - timedelta(seconds=1))
    held, release = threading.Event(), threading.Event()

    def first_beat() -> None:
        with transaction.atomic():
            list(Monitor.objects.select_for_update().filter(onboarding=live.onboarding))
            held.set()
            release.wait(10)
        db.close()

    thread = threading.Thread(target=first_beat)
    thread.start()
    assert held.wait(10)
    try:
        assert services.claim_due() == []  # locked by the other beat: skipped, not waited for
    finally:
        release.set()
        thread.join()
    assert len(services.claim_due()) == 1


# --- Alerts -------------------------------------------------------------------------------------------


def test_failing_checks_open_one_alert_and_passing_ones_resolve_it_once(
    watched: Any, cs_user: Any, generic: SandboxHospital
) -> None:
    live = live_connection(watched, generic)
    assert check_now(live).ok  # type: ignore[union-attr]
    generic.set_faults(rate_5xx=1.0)
    start = timezone.now()
    first = check_now(live, start)
    assert first is not None and not first.ok and first.error_kind == "server_error"
    assert Alert.objects.count() == 0  # one failure of the two the policy wants
    for n in range(1, 4):
        check_now(live, start + timedelta(seconds=n))
    # A redelivered task for a check already recorded records and announces nothing.
    assert check_now(live, start + timedelta(seconds=3)) is None
    (alert,) = Alert.objects.all()
    assert alert.kind == AlertKind.CHECKS_FAILING and alert.is_open
    assert "server_error" in alert.detail
    assert [n.recipient for n in notes("alert_opened")] == [cs_user]
    assert EmailDelivery.objects.filter(kind="alert_opened").count() == 1
    assert Monitor.objects.get(onboarding=live.onboarding).status == MonitorStatus.DOWN
    generic.set_faults()
    check_now(live, start + timedelta(seconds=4))
    check_now(live, start + timedelta(seconds=5))
    alert.refresh_from_db()
    assert not alert.is_open
    assert len(notes("alert_opened")) == 1 and len(notes("alert_resolved")) == 1
    assert AuditEvent.objects.filter(action="monitoring.alert_resolved", object_id=str(alert.code)).count() == 1


def test_failures_in_a_maintenance_window_are_planned_downtime_and_open_no_alert(
    watched: Any, generic: SandboxHospital
) -> None:
    live = live_connection(watched, generic)
    now = timezone.now()
    MaintenanceWindow.objects.create(
        tenant=watched, kind=MaintenanceKind.ONCE, starts_at=now - timedelta(hours=1), ends_at=now + timedelta(hours=1)
    )
    generic.set_faults(rate_5xx=1.0)
    for n in range(4):
        check = check_now(live, now + timedelta(seconds=n))
        assert check is not None and check.planned
    assert Alert.objects.count() == 0 and notes("alert_opened") == []
    assert Monitor.objects.get(onboarding=live.onboarding).status == MonitorStatus.MAINTENANCE
    figures = sla.sla_figures(live, interval_s=300, now=now + timedelta(seconds=5))
    today = figures.days[0]
    assert (today.planned, today.failed, today.uptime_pct) == (4, 0, None)
    assert today.planned_minutes == 20.0


def test_a_long_outage_escalates_once_to_the_hypercare_contacts(
    watched: Any, it_a: Any, generic: SandboxHospital
) -> None:
    live = live_connection(
        watched,
        generic,
        hypercare_contacts=[
            {"name": "Ida IT", "email": it_a.email, "user_id": it_a.pk},
            {"name": "On-call desk", "email": "oncall@alpha.example.org", "user_id": None},
        ],
    )
    current = policy.policy_for(watched)
    current.failures_to_alert, current.escalate_after_min = 1, 10
    current.save()
    generic.set_faults(rate_5xx=1.0)
    start = timezone.now()
    for minutes in (0, 5, 11, 15):
        check_now(live, start + timedelta(minutes=minutes))
    (alert,) = Alert.objects.all()
    assert alert.escalated_at == start + timedelta(minutes=11)
    escalations = Notification.objects.filter(key=f"alert:{alert.code}:escalated")
    assert [n.recipient for n in escalations] == [it_a]
    assert EmailDelivery.objects.filter(key=f"alert:{alert.code}:escalated", notification__isnull=True).count() == 1


def test_slow_checks_open_a_latency_alert(watched: Any, generic: SandboxHospital) -> None:
    live = live_connection(watched, generic)
    current = policy.policy_for(watched)
    current.latency_p95_ms = 50
    current.save()
    generic.set_faults(latency_ms=120)
    start = timezone.now()
    for n in range(services.LATENCY_MIN_CHECKS):
        check_now(live, start + timedelta(seconds=n))
    (alert,) = Alert.objects.all()
    assert alert.kind == AlertKind.LATENCY and alert.facts["p95_ms"] >= 120


def test_production_errors_and_silence_open_traffic_alerts(watched: Any, generic: SandboxHospital) -> None:
    live = live_connection(watched, generic, live_since=timezone.now() - timedelta(hours=5))
    now = timezone.now()
    for n in range(30):
        traffic.record_request(live.onboarding_id, latency_ms=40.0, error_kind="timeout" if n % 3 else "", at=now)
    traffic.flush()
    check_now(live, now)
    kinds = set(Alert.objects.filter(resolved_at__isnull=True).values_list("kind", flat=True))
    # Requests came in the last minutes, so it is not silent; but two in three failed.
    assert kinds == {AlertKind.ERROR_RATE}
    other = live_connection(watched, generic, live_since=timezone.now() - timedelta(hours=5))
    check_now(other)
    assert Alert.objects.get(onboarding=other.onboarding).kind == AlertKind.NO_TRAFFIC


def test_acknowledging_and_assigning_an_alert_is_audited(
    watched: Any, cs_user: Any, it_a: Any, it_b: Any, generic: SandboxHospital
) -> None:
    live = live_connection(watched, generic)
    generic.set_faults(rate_5xx=1.0)
    start = timezone.now()
    check_now(live, start)
    check_now(live, start + timedelta(seconds=1))
    alert = Alert.objects.get()
    services.acknowledge(user=cs_user, alert=alert)
    services.acknowledge(user=cs_user, alert=alert)
    services.assign(user=cs_user, alert=alert, assignee=it_a)
    with pytest.raises(services.AlertRefused):
        services.assign(user=cs_user, alert=alert, assignee=it_b)  # cannot see tenant A
    alert.refresh_from_db()
    assert alert.acknowledged_by == cs_user and alert.assigned_to == it_a
    actions = list(AuditEvent.objects.filter(object_id=str(alert.code)).values_list("action", flat=True))
    assert actions.count("monitoring.alert_acknowledged") == 1 and actions.count("monitoring.alert_assigned") == 1
    # My work: customer success of the hospital, and the person the alert was given to.
    for person in (cs_user, it_a):
        (section,) = [s for s in work.work_for(person) if s.key == "alerts"]
        assert [item.link for item in section.items] == [f"/alerts/{alert.code}/"]
    assert [s for s in work.work_for(it_b) if s.key == "alerts"] == []


def test_a_policy_out_of_bounds_is_refused_naming_the_setting(tenant_a: Any, cs_user: Any, engineer: Any) -> None:
    values = policy.values_of(policy.policy_for(tenant_a))
    with pytest.raises(policy.PolicyRefused, match="Check interval must be from 1 to 60 minutes"):
        policy.update_policy(user=cs_user, tenant=tenant_a, values={**values, "check_interval_min": 0})
    with pytest.raises(policy.PolicyRefused, match="whole number"):
        policy.update_policy(user=cs_user, tenant=tenant_a, values={**values, "failures_to_alert": 2.5})
    with pytest.raises(PermissionDenied):
        policy.update_policy(user=engineer, tenant=tenant_a, values={**values, "failures_to_alert": 4})
    assert policy.values_of(policy.policy_for(tenant_a)) == values
    _, changed = policy.update_policy(user=cs_user, tenant=tenant_a, values={**values, "check_interval_min": 1})
    assert changed == ["check_interval_min"]
    assert AuditEvent.objects.filter(action="monitoring.policy_changed").count() == 1


def test_handoff_waits_for_the_end_of_hypercare_and_for_open_alerts(
    watched: Any, cs_user: Any, generic: SandboxHospital
) -> None:
    live = live_connection(watched, generic)
    with pytest.raises(sla.HandoffRefused, match="Hypercare runs until"):
        sla.hand_off(user=cs_user, live=live)
    live = make_live(live.onboarding, probe_patient_id=live.probe_patient_id, hypercare_days=0)
    generic.set_faults(rate_5xx=1.0)
    start = timezone.now()
    check_now(live, start)
    check_now(live, start + timedelta(seconds=1))
    with pytest.raises(sla.HandoffRefused, match="alert is still open"):
        sla.hand_off(user=cs_user, live=live)
    generic.set_faults()
    check_now(live, start + timedelta(seconds=2))
    # The checks ran at made-up times up to 2 s ahead; the report's window must reach past them
    # rather than end at the real clock, which three quick checks may not have moved that far.
    report = sla.stabilisation_report(live, now=start + timedelta(seconds=3))
    assert (report["alerts_opened"], report["alerts_resolved"]) == (1, 1)
    assert report["traffic_steady"] is False
    sla.hand_off(user=cs_user, live=live)
    live.refresh_from_db()
    assert (live.phase, live.handed_off_by) == (LivePhase.OPERATIONAL, cs_user)
    assert AuditEvent.objects.filter(action="monitoring.handed_off").count() == 1


# --- Drift watch (done-when 5) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drifting() -> Iterator[SandboxHospital]:
    """A clean sandbox of this module's own, so switching its MRN system disturbs no other test."""
    hospital = SandboxHospital(flavour="generic", seed=11, patients=12).start()
    yield hospital
    hospital.stop()


def test_the_drift_watch_names_an_mrn_system_changed_after_go_live(
    settings: Any, sandbox_allowlist: str, drifting: SandboxHospital, watched: Any, cs_user: Any, it_a: Any
) -> None:
    settings.OUTBOUND_ALLOWLIST = [*settings.OUTBOUND_ALLOWLIST, f"127.0.0.1:{drifting.port}"]
    set_sizes(watched, map_size=10, validate_size=10)
    connection = ready_connection(watched, cs_user, drifting)
    mapping = signed_off_mapping(cs_user, it_a, connection)
    baseline = run_now(connection, "validate", cs_user)
    assert baseline.status == "passed", baseline.error_message
    live = make_live(connection.onboarding, probe_patient_id=drifting.patient_ids[0], baseline_run=baseline)

    def drift_check() -> Any:
        run = drift.request_drift(user=cs_user, onboarding=live.onboarding)
        drift_step.run_drift_check(run.pk)
        run.refresh_from_db()
        return run

    same = drift_check()
    assert (same.status, same.patients, same.changes) == ("done", 5, [])
    assert Alert.objects.count() == 0
    try:
        drifting.set_faults(mrn_system="urn:oid:2.16.840.1.999999.7")
        changed = drift_check()
    finally:
        drifting.set_faults()
    expected = f"Patient.identifier: MRN system changed from {mapping.mrn_system} to urn:oid:2.16.840.1.999999.7"
    assert changed.changes == [expected]
    assert changed.new_findings[0]["rule"] == "patient.mrn-missing" and changed.new_findings[0]["count"] == 5
    alert = Alert.objects.get(kind=AlertKind.DRIFT)
    assert alert.detail == expected and alert.is_open
    assert len(notes("alert_opened")) == 1
    back = drift_check()
    assert back.changes == []
    alert.refresh_from_db()
    assert not alert.is_open and len(notes("alert_resolved")) == 1


def test_a_drift_run_that_lost_its_worker_is_ended_and_does_not_hold_the_next(
    generic: SandboxHospital, watched: Any, cs_user: Any
) -> None:
    live = live_connection(watched, generic)
    baseline = StepRun.objects.create(onboarding=live.onboarding, step="validate", attempt=1, status="passed")
    LiveState.objects.filter(pk=live.pk).update(baseline_run=baseline)
    first = drift.request_drift(user=cs_user, onboarding=live.onboarding)
    assert drift.start_drift(first.pk) is not None  # a worker claims it, and is then killed
    # Within the task's limits it may still finish: asking again waits for it.
    assert drift.request_drift(user=cs_user, onboarding=live.onboarding) == first
    with time_machine.travel(timezone.now() + drift.LOST_AFTER + timedelta(seconds=5)):
        second = drift.request_drift(user=cs_user, onboarding=live.onboarding)
    first.refresh_from_db()
    assert first.status == "failed" and "stopped before it finished" in first.error_message
    assert second.pk != first.pk and second.status == "queued"
    # Beat's sweep ends a run no worker picked up within the hour, and leaves a fresh one alone.
    fresh = DriftRun.objects.create(onboarding=live.onboarding, tenant=watched, trigger="schedule")
    with time_machine.travel(timezone.now() + drift.NEVER_STARTED_AFTER + drift.LOST_AFTER + timedelta(minutes=1)):
        fresh.created_at = timezone.now()
        fresh.save(update_fields=["created_at"])
        dispatch_drift()
    second.refresh_from_db()
    fresh.refresh_from_db()
    assert second.status == "failed" and "monitoring queue" in second.error_message
    assert fresh.status == "queued"
