"""Go-live: change windows in local time across DST, the beat-started cutover, the gate, rollback, the read API.

Time is controlled with time-machine: a go-live asked for on a Monday, for a Tuesday/Thursday
18:00-22:00 America/Chicago window, is started by the beat task at Tuesday 18:00 local, not a
minute before, in winter and in summer time and across the change. The cutover and the read API
talk to the project's sandbox hospitals on loopback.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from rest_framework.test import APIClient

from connections.services import build_adapter
from onboarding.engine import services as engine
from onboarding.gates import services as gates
from onboarding.golive import readapi, windows
from onboarding.golive import services as golive
from onboarding.golive.models import ChangeWindow, GoLiveSchedule
from onboarding.live import traffic
from onboarding.live.models import LiveState, MaintenanceWindow, TrafficMinute
from onboarding.models import Approval, StepRun
from onboarding.monitoring.models import HealthCheck, Monitor
from onboarding.tasks import open_go_live_windows
from portal.models import AuditEvent
from portal.notifications.models import Notification
from tests.golive_helpers import approve_go_live, evening_windows, ready_to_go_live, write_go_live_plan

pytestmark = pytest.mark.django_db

CHICAGO = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHICAGO)  # type: ignore[misc]


def go_live_runs() -> list[StepRun]:
    return list(StepRun.objects.filter(step="go_live"))


# --- done when 1: the window, in local time, across DST ------------------------------------------


@pytest.mark.parametrize(
    ("monday", "tuesday_18_utc"),
    [
        # Winter (CST, UTC-6): Tuesday 18:00 local is Wednesday 00:00 UTC.
        (local(2026, 3, 2, 9, 30), datetime(2026, 3, 4, 0, 0, tzinfo=UTC)),
        # The Monday after the spring change (CDT, UTC-5): 23:00 UTC.
        (local(2026, 3, 9, 9, 30), datetime(2026, 3, 10, 23, 0, tzinfo=UTC)),
    ],
)
def test_a_go_live_asked_for_on_monday_runs_at_tuesday_18_00_local(
    tenant_a: Any, cs_user: Any, it_a: Any, monday: datetime, tuesday_18_utc: datetime
) -> None:
    with time_machine.travel(monday, tick=False):
        evening_windows(tenant_a, cs_user)
        onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
        approve_go_live(cs_user, it_a, onboarding)
        schedule = golive.schedule_go_live(user=cs_user, onboarding=onboarding)
        assert schedule.opens_at == tuesday_18_utc
        assert schedule.opens_at.astimezone(CHICAGO).strftime("%a %H:%M") == "Tue 18:00"
        # Asked on Monday: nothing is queued to sit for a day.
        assert open_go_live_windows() == 0 and go_live_runs() == []
    with time_machine.travel(tuesday_18_utc - timedelta(minutes=1), tick=False):
        assert open_go_live_windows() == 0 and go_live_runs() == []
    with time_machine.travel(tuesday_18_utc, tick=False):
        assert open_go_live_windows() == 1
        (run,) = go_live_runs()
        assert run.queued_at == tuesday_18_utc and run.status == "queued"
        assert run.queued_at.astimezone(CHICAGO).strftime("%A %H:%M") == "Tuesday 18:00"
        schedule.refresh_from_db()
        assert schedule.status == "started" and schedule.run == run
        assert open_go_live_windows() == 0  # beat running again starts nothing twice
    assert len(go_live_runs()) == 1


def test_a_chosen_window_across_the_autumn_change_opens_at_18_00_local(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    monday = local(2026, 10, 26, 10, 0)  # CDT
    chosen = local(2026, 11, 3, 18, 0)  # the Tuesday after the change: CST, 2026-11-04 00:00 UTC
    with time_machine.travel(monday, tick=False):
        evening_windows(tenant_a, cs_user)
        onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
        approve_go_live(cs_user, it_a, onboarding, window_choice="chosen", window_starts_at=chosen)
        schedule = golive.schedule_go_live(user=cs_user, onboarding=onboarding)
    assert schedule.opens_at == datetime(2026, 11, 4, 0, 0, tzinfo=UTC)
    # 23:00 UTC was 18:00 local the week before; after the change it is 17:00, still outside.
    with time_machine.travel(datetime(2026, 11, 3, 23, 0, tzinfo=UTC), tick=False):
        assert open_go_live_windows() == 0
        with pytest.raises(engine.StepBlocked, match="outside Alpha Medical Center's change windows"):
            engine.start_step(user=cs_user, onboarding=onboarding, step="go_live")
    with time_machine.travel(datetime(2026, 11, 4, 0, 0, tzinfo=UTC), tick=False):
        assert open_go_live_windows() == 1
    assert go_live_runs()[0].queued_at.astimezone(CHICAGO).strftime("%a %H:%M") == "Tue 18:00"


def test_outside_a_window_it_is_refused_without_an_override(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    with time_machine.travel(local(2026, 3, 2, 9, 30), tick=False):  # Monday morning
        evening_windows(tenant_a, cs_user)
        onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
        approve_go_live(cs_user, it_a, onboarding)
        with pytest.raises(
            engine.StepBlocked, match=r"outside .* change windows\. The next opens Tue 2026-03-03 18:00 CST"
        ):
            engine.start_step(user=cs_user, onboarding=onboarding, step="go_live")
        assert go_live_runs() == []
        # The emergency override: a reason, the approvers told, the audit trail written; beat starts it now.
        golive.schedule_go_live(user=cs_user, onboarding=onboarding, override_reason="EHR vendor hotfix needs us live.")
        told = Notification.objects.filter(kind="go_live_override")
        assert [n.recipient for n in told] == [it_a]
        event = AuditEvent.objects.get(action="go_live.override")
        assert event.detail["reason"] == "EHR vendor hotfix needs us live." and event.actor == cs_user
        assert open_go_live_windows() == 1
    assert go_live_runs()[0].status == "queued"


# --- done when 3: re-running validation voids the go-live approval ---------------------------------


def test_re_running_validation_voids_the_go_live_approval_and_the_step_refuses(
    tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    with time_machine.travel(local(2026, 3, 3, 18, 30), tick=False):  # inside Tuesday's window
        evening_windows(tenant_a, cs_user)
        onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
        approval = approve_go_live(cs_user, it_a, onboarding)
        assert gates.live_approval(onboarding, golive.GATE_KEY) == approval
        engine.start_step(user=cs_user, onboarding=onboarding, step="validate")
        approval.refresh_from_db()
        assert approval.voided_at is not None and "validate step was run again" in approval.voided_reason
        # The new validation passes (recorded): still, the approval bound the old one.
        StepRun.objects.filter(step="validate", status="queued").update(
            status="passed", finished_at=approval.decided_at
        )
        with pytest.raises(engine.StepBlocked, match="Go-live approval is needed first"):
            engine.start_step(user=cs_user, onboarding=onboarding, step="go_live")
        with pytest.raises(golive.GoLiveRefused, match="Go-live approval"):
            golive.schedule_go_live(user=cs_user, onboarding=onboarding)
        # Asked and approved again, on the new validation run, the go-live may start.
        request = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=golive.GATE_KEY)
        gates.decide(user=it_a, approval=request, decision="approved")
        assert engine.start_step(user=cs_user, onboarding=onboarding, step="go_live").status == "queued"


def test_approving_a_stale_plan_is_refused(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    evening_windows(tenant_a, cs_user)
    onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
    write_go_live_plan(cs_user, onboarding)
    pending = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=golive.GATE_KEY)
    # A newer load-test run than the one the request bound: the plan put to hospital IT is stale.
    StepRun.objects.create(onboarding=onboarding, step="load_test", attempt=2, status="passed")
    with pytest.raises(gates.GateError, match="changed before your decision"):
        gates.decide(user=it_a, approval=pending, decision="approved")
    assert gates.live_approval(onboarding, golive.GATE_KEY) is None
    assert Approval.objects.get(pk=pending.pk).voided_at is not None


# --- bad input ------------------------------------------------------------------------------------


def test_bad_windows_are_refused_with_a_message_and_nothing_is_written(tenant_a: Any, cs_user: Any) -> None:
    with pytest.raises(windows.WindowRefused, match="must end after it starts"):
        windows.add_change_window(user=cs_user, tenant=tenant_a, weekday=1, start_time=time(22), end_time=time(18))
    with pytest.raises(windows.WindowRefused, match="not a time zone"):
        windows.add_change_window(
            user=cs_user, tenant=tenant_a, weekday=1, start_time=time(18), end_time=time(22), zone="Mars/Olympus"
        )
    windows.add_change_window(user=cs_user, tenant=tenant_a, weekday=1, start_time=time(18), end_time=time(22))
    for start, end in ((time(18), time(22)), (time(21), time(23))):
        with pytest.raises(windows.WindowRefused, match="overlaps the change window Tuesday 18:00-22:00"):
            windows.add_change_window(user=cs_user, tenant=tenant_a, weekday=1, start_time=start, end_time=end)
    assert ChangeWindow.objects.count() == 1
    once = {"kind": "once", "starts_at": local(2026, 12, 6, 2), "ends_at": local(2026, 12, 6, 1)}
    with pytest.raises(windows.WindowRefused, match="must end after it starts"):
        windows.add_maintenance_window(user=cs_user, tenant=tenant_a, **once)
    weekly = {"kind": "weekly", "weekday": 6, "start_time": time(23), "end_time": time(3)}
    windows.add_maintenance_window(user=cs_user, tenant=tenant_a, **weekly)
    with pytest.raises(windows.WindowRefused, match="overlaps the maintenance window"):
        windows.add_maintenance_window(
            user=cs_user, tenant=tenant_a, kind="weekly", weekday=0, start_time=time(1), end_time=time(2)
        )
    assert MaintenanceWindow.objects.count() == 1


def test_the_api_refuses_bad_windows_with_400(tenant_a: Any, cs_user: Any) -> None:
    client = APIClient()
    client.force_authenticate(cs_user)
    url = f"/api/v1/tenants/{tenant_a.code}/change-windows/"
    response = client.post(url, {"weekday": 1, "start_time": "22:00", "end_time": "18:00"}, format="json")
    assert response.status_code == 400 and "must end after it starts" in response.json()["detail"]
    response = client.post(
        url, {"weekday": 1, "start_time": "18:00", "end_time": "22:00", "timezone": "Nowhere/X"}, format="json"
    )
    assert response.status_code == 400 and "not a time zone" in response.json()["detail"]
    assert (
        client.post(url, {"weekday": 1, "start_time": "18:00", "end_time": "22:00"}, format="json").status_code == 201
    )
    response = client.post(url, {"weekday": 1, "start_time": "19:00", "end_time": "20:00"}, format="json")
    assert response.status_code == 400 and "overlaps" in response.json()["detail"]
    assert [w["start_time"] for w in client.get(url).json()] == ["18:00:00"]


def test_a_go_live_with_a_gate_missing_is_refused(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    evening_windows(tenant_a, cs_user)
    onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
    with pytest.raises(golive.GoLiveRefused, match="There is no go-live plan yet"):
        golive.schedule_go_live(user=cs_user, onboarding=onboarding)
    assert not GoLiveSchedule.objects.exists()


def test_rolling_back_a_connection_that_is_not_live_is_refused(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    onboarding = ready_to_go_live(tenant_a, cs_user, it_a)
    with pytest.raises(golive.GoLiveRefused, match="is not live: there is nothing to roll back"):
        golive.rollback(user=cs_user, onboarding=onboarding, reason="Test")
    client = APIClient()
    client.force_authenticate(it_a)
    response = client.post(f"/api/v1/connections/{onboarding.connection.code}/go-live/rollback/", {"reason": "x"})
    assert response.status_code == 409 and "not live" in response.json()["detail"]


# --- the cutover, rollback and the product's read API, against a sandbox ------------------------------


def _in_window() -> Any:
    # A window open for the whole test, wherever the real clock is: this weekday, all day.
    return time_machine.travel(local(2026, 12, 1, 12, 0), tick=True)


def test_cutover_read_api_pilot_rollback_and_tenant_isolation(
    sandboxes: dict[str, Any],
    sandbox_allowlist: str,
    clean_faults: None,
    settings: Any,
    tenant_a: Any,
    tenant_b: Any,
    cs_user: Any,
    it_a: Any,
) -> None:
    settings.GO_LIVE_FIRST_CHECK_INTERVAL = 0
    hospital = sandboxes["generic"]
    readapi.clear_caches()
    with _in_window():
        windows.add_change_window(user=cs_user, tenant=tenant_a, weekday=1, start_time=time(0), end_time=time(23, 59))
        onboarding = ready_to_go_live(tenant_a, cs_user, it_a, hospital)
        approve_go_live(cs_user, it_a, onboarding, rollout="pilot", pilot_percent=50)
        account = readapi.create_account(user=cs_user, name="Product")
        _, key_a = readapi.issue_token(user=cs_user, account=account, tenant=tenant_a)
        _, key_b = readapi.issue_token(user=cs_user, account=account, tenant=tenant_b)
        product = APIClient()
        product.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a}")
        code = onboarding.connection.code
        # Before go-live: 409 "not live".
        response = product.get(f"/api/v1/live/{code}/patients/p-anything/")
        assert response.status_code == 409 and response.json()["code"] == "not_live"

        run = engine.start_step(user=cs_user, onboarding=onboarding, step="go_live")
        engine.execute_run(run.pk)
        run.refresh_from_db()
        assert run.status == "passed", (run.error_message, run.result)
        assert [c["outcome"] for c in run.result["checks"]] == ["passed"] * 6
        # The first checks are monitoring's first points: the hypercare dashboard shows it up at once.
        firsts = HealthCheck.objects.filter(onboarding=onboarding).values_list("ok", flat=True)
        assert list(firsts) == [True] * settings.GO_LIVE_FIRST_CHECKS
        assert Monitor.objects.get(onboarding=onboarding).status == "up"
        state = LiveState.objects.get(onboarding=onboarding)
        assert (state.stage, state.pilot_percent, state.phase) == ("pilot", 50, "hypercare")
        assert state.go_live_run == run and state.baseline_run.step == "validate" and state.probe_patient_id
        assert state.hypercare_until - state.live_since == timedelta(days=30)
        onboarding.connection.refresh_from_db()
        assert onboarding.connection.environment == "production" and state.before_cutover == {"environment": "sandbox"}
        # The sandbox on loopback http stays editable while live (outside production mode only).
        onboarding.connection.full_clean()

        # Live already: another go-live is refused until it is rolled back.
        with pytest.raises(golive.GoLiveRefused, match="is live already"):
            golive.schedule_go_live(user=cs_user, onboarding=onboarding)

        # The pilot: a stable share of patients, the same answer every time.
        adapter = build_adapter(onboarding.connection)
        ids = [p.id for p in adapter.search_patients(count=30)]
        served = {pid: product.get(f"/api/v1/live/{code}/patients/{pid}/").status_code for pid in ids}
        assert set(served.values()) == {200, 409} and 5 < list(served.values()).count(200) < 25
        assert served == {pid: product.get(f"/api/v1/live/{code}/patients/{pid}/").status_code for pid in ids}

        golive.promote(user=it_a, onboarding=onboarding)
        patient = product.get(f"/api/v1/live/{code}/patients/{ids[0]}/").json()
        assert set(patient) == {"id", "mrn", "name", "birth_date", "gender"} and patient["id"] == ids[0]
        by_mrn = product.get(f"/api/v1/live/{code}/patients/", {"mrn": patient["mrn"]})
        assert by_mrn.status_code == 200 and by_mrn.json() == patient
        for resource in ("observations", "conditions", "encounters"):
            answer = product.get(f"/api/v1/live/{code}/patients/{ids[0]}/{resource}/")
            assert answer.status_code == 200 and answer.json()["patient"] == ids[0]
        assert product.get(f"/api/v1/live/{code}/patients/", {"mrn": "no-such-mrn"}).status_code == 404
        assert AuditEvent.objects.filter(action="read_api.patient", actor_label="service:Product").exists()

        # Tenant B's token reading tenant A: 404, as for a connection that does not exist.
        other = APIClient()
        other.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b}")
        assert other.get(f"/api/v1/live/{code}/patients/{ids[0]}/").status_code == 404
        assert other.get(f"/api/v1/live/{code}/patients/", {"mrn": patient["mrn"]}).status_code == 404
        # A session user (hospital IT, customer success) is not a service: 401/403, never data.
        staff = APIClient()
        staff.force_authenticate(cs_user)
        assert staff.get(f"/api/v1/live/{code}/patients/{ids[0]}/").status_code in (401, 403)

        # Every request was counted for monitoring.
        traffic.flush()
        assert sum(TrafficMinute.objects.filter(onboarding=onboarding).values_list("requests", flat=True)) >= 30

        # Rollback: audited, back to the sandbox environment, 409 again.
        golive.rollback(user=it_a, onboarding=onboarding, reason="Lab feed looks wrong.")
        state.refresh_from_db()
        onboarding.connection.refresh_from_db()
        assert state.stage == "not_live" and onboarding.connection.environment == "sandbox"
        assert AuditEvent.objects.filter(action="go_live.rollback", actor=it_a).exists()
        assert product.get(f"/api/v1/live/{code}/patients/{ids[0]}/").json()["code"] == "not_live"
        with pytest.raises(golive.GoLiveRefused, match="not live"):
            golive.rollback(user=cs_user, onboarding=onboarding, reason="again")


def _validation_too_old(settings: Any) -> None:
    StepRun.objects.filter(step="validate").update(finished_at=local(2026, 10, 1))


def _production_mode(settings: Any) -> None:
    # The same http:// sandbox that goes live in the demo, with the portal in production mode.
    settings.PRODUCTION = True


@pytest.mark.parametrize(
    ("flavour", "spoil", "check", "said"),
    [
        ("oracle_health", _validation_too_old, "validation_age", "validation is"),
        ("generic", _production_mode, "endpoint", "the base URL uses http://"),
    ],
    ids=["validation-too-old", "plain-http-in-production-mode"],
)
def test_a_failed_pre_flight_switches_nothing(
    sandboxes: dict[str, Any],
    sandbox_allowlist: str,
    clean_faults: None,
    settings: Any,
    tenant_a: Any,
    cs_user: Any,
    it_a: Any,
    flavour: str,
    spoil: Any,
    check: str,
    said: str,
) -> None:
    settings.GO_LIVE_FIRST_CHECK_INTERVAL = 0
    hospital = sandboxes[flavour]
    with _in_window():
        windows.add_change_window(user=cs_user, tenant=tenant_a, weekday=1, start_time=time(0), end_time=time(23, 59))
        onboarding = ready_to_go_live(tenant_a, cs_user, it_a, hospital)
        approve_go_live(cs_user, it_a, onboarding)
        spoil(settings)
        run = engine.start_step(user=cs_user, onboarding=onboarding, step="go_live")
        engine.execute_run(run.pk)
        run.refresh_from_db()
        assert run.status == "failed" and run.error_kind == "preflight_failed"
        failed = next(c for c in run.result["checks"] if c["id"] == check)
        assert failed["outcome"] == "failed" and said in failed["detail"] and said in run.error_message
        onboarding.connection.refresh_from_db()
        assert onboarding.connection.environment == "sandbox" and not LiveState.objects.exists()
