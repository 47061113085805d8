"""Gates in the engine: a gated step is refused without a live approval, and a change voids it."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection as db_connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone

from onboarding.engine import services
from onboarding.gates import services as gates
from onboarding.mapping import services as mappings
from onboarding.models import Approval, RunStatus, StepRun
from portal.models import AuditEvent
from tests.conftest import client_for
from tests.factories import ConnectionFactory, sign_mapping_off

PROFILE = {
    "elements": [
        {
            "element": "Observation.code",
            "local_codes": [{"system": "urn:local", "code": "GLU", "display": "GLUCOSE", "count": 3}],
        }
    ],
    "extensions": [],
    "suggested_mrn_system": "http://hospital.example.org/mrn",
}


@pytest.fixture
def onboarding(tenant_a: Any) -> Any:
    """A pipeline whose configure, test and map passed, with a complete mapping (MRN set, code mapped)."""
    connection = ConnectionFactory(tenant=tenant_a, name="Alpha FHIR")
    onboarding = services.ensure_onboarding(connection)
    for step in ("configure", "test", "map"):
        StepRun.objects.create(
            onboarding=onboarding, step=step, attempt=1, status=RunStatus.PASSED, finished_at=timezone.now()
        )
    return onboarding


def complete_mapping(cs: Any, onboarding: Any) -> Any:
    mapping = mappings.record_map_result(onboarding=onboarding, profile=PROFILE, run=None)
    mapping = mappings.set_mrn_system(user=cs, mapping=mapping, system="http://hospital.example.org/mrn")
    return mappings.update_code(
        user=cs,
        mapping=mapping,
        key="Observation.code|urn:local|GLU",
        target_system="LOINC",
        target_code="2339-0",
        target_display="Glucose [Mass/volume] in Blood",
    )


def test_validate_is_a_refused_start_without_a_live_approval_and_a_new_version_voids_it(
    onboarding: Any, cs_user: Any, it_a: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "send_run", lambda run_id: True)
    mapping = complete_mapping(cs_user, onboarding)

    # No approval: a refusal with a message, and no run is written.
    with pytest.raises(services.StepBlocked, match="Mapping sign-off is needed first"):
        services.start_step(user=cs_user, onboarding=onboarding, step="validate")
    approval = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    with pytest.raises(services.StepBlocked, match="waiting for hospital IT"):
        services.start_step(user=cs_user, onboarding=onboarding, step="validate")
    assert not StepRun.objects.filter(onboarding=onboarding, step="validate").exists()

    gates.decide(user=it_a, approval=approval, decision="approved", artifact_hash=mapping.content_hash)
    run = services.start_step(user=cs_user, onboarding=onboarding, step="validate")
    assert run.status == RunStatus.QUEUED
    StepRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED, finished_at=timezone.now())

    # A new mapping version voids the approval, with the reason where people look.
    edited = mappings.update_code(
        user=cs_user,
        mapping=mapping,
        key="Observation.code|urn:local|GLU",
        target_system="LOINC",
        target_code="2345-7",
        target_display="Glucose [Mass/volume] in Serum or Plasma",
    )
    approval.refresh_from_db()
    assert approval.state == "voided"
    assert approval.voided_reason == f"Mapping version {edited.version} (editor) replaced it."
    assert AuditEvent.objects.filter(action="gate.void", object_id=str(approval.code)).count() == 1
    with pytest.raises(services.StepBlocked, match="voided"):
        services.start_step(user=cs_user, onboarding=onboarding, step="validate")
    page = client_for(cs_user).get(reverse("mapping", kwargs={"code": onboarding.connection.code})).content.decode()
    assert f"Mapping version {edited.version} (editor) replaced it." in page
    assert StepRun.objects.filter(onboarding=onboarding, step="validate").count() == 1


def test_a_failed_map_rerun_does_not_block_validate_while_the_signed_version_stands(
    onboarding: Any, cs_user: Any, it_a: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "send_run", lambda run_id: True)
    mapping = complete_mapping(cs_user, onboarding)
    sign_mapping_off(cs=cs_user, it=it_a, mapping=mapping)
    StepRun.objects.create(onboarding=onboarding, step="map", attempt=2, status=RunStatus.FAILED, error_kind="timeout")
    run = services.start_step(user=cs_user, onboarding=onboarding, step="validate")
    assert run.status == RunStatus.QUEUED


def test_rejection_needs_a_reason_and_asking_again_is_a_new_request_on_the_new_version(
    onboarding: Any, cs_user: Any, it_a: Any
) -> None:
    mapping = complete_mapping(cs_user, onboarding)
    first = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    with pytest.raises(gates.GateError, match="Say why"):
        gates.decide(user=it_a, approval=first, decision="rejected")
    rejected = gates.decide(user=it_a, approval=first, decision="rejected", comment="Glucose is serum here")
    state = gates.gate_state(onboarding, mappings.SIGN_OFF_GATE)
    assert (state.status, state.owed_by) == ("rejected", "customer success")
    assert "Glucose is serum here" in state.sentence
    # The same version cannot be put again unchanged... it can, but it is the rejected one: change it first.
    edited = mappings.update_code(
        user=cs_user,
        mapping=mapping,
        key="Observation.code|urn:local|GLU",
        target_system="LOINC",
        target_code="2345-7",
        target_display="Glucose [Mass/volume] in Serum or Plasma",
    )
    assert gates.gate_state(onboarding, mappings.SIGN_OFF_GATE).status == "ready"
    second = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    assert second.pk != rejected.pk and second.artifact_version == edited.version
    assert [a.state for a in gates.history(onboarding, mappings.SIGN_OFF_GATE)] == ["pending", "rejected"]
    # Vendor staff can never decide for the hospital, whatever permissions they hold.
    with pytest.raises(Exception, match="vendor staff"):
        gates.decide(user=cs_user, approval=second, decision="approved")


def test_reminders_are_rate_limited_and_decisions_of_voided_requests_refused(
    onboarding: Any, cs_user: Any, it_a: Any
) -> None:
    complete_mapping(cs_user, onboarding)
    approval = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    with pytest.raises(gates.GateError, match="remind them again in"):
        gates.remind(user=cs_user, approval=approval)
    Approval.objects.filter(pk=approval.pk).update(requested_at=timezone.now() - gates.REMIND_EVERY)
    reminded = gates.remind(user=cs_user, approval=approval)
    assert reminded.reminders == 1
    gates.void_stale(onboarding, mappings.SIGN_OFF_GATE, reason="test")  # nothing stale: nothing voided
    approval.refresh_from_db()
    assert approval.is_pending
    Approval.objects.filter(pk=approval.pk).update(voided_at=timezone.now(), voided_reason="Replaced.")
    with pytest.raises(gates.GateError, match="voided"):
        gates.decide(user=it_a, approval=approval, decision="approved")


def test_the_gates_api_requests_decides_and_isolates_tenants(
    onboarding: Any, cs_user: Any, it_a: Any, it_b: Any
) -> None:
    mapping = complete_mapping(cs_user, onboarding)
    code = onboarding.connection.code
    cs, it, other = client_for(cs_user), client_for(it_a), client_for(it_b)
    states = cs.get(f"/api/v1/connections/{code}/gates/").json()
    assert [(s["gate"], s["status"], s["requestable"]) for s in states] == [
        ("mapping_sign_off", "ready", True),
        ("load_test_permission", "not_ready", False),  # no load-test plan yet
        ("go_live_approval", "not_ready", False),  # no go-live plan yet
    ]
    assert it.post(f"/api/v1/connections/{code}/gates/mapping_sign_off/request/", {}).status_code == 403
    assert other.post(f"/api/v1/connections/{code}/gates/mapping_sign_off/request/", {}).status_code == 404
    made = cs.post(f"/api/v1/connections/{code}/gates/mapping_sign_off/request/", {"note": "Ready"}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["state"], body["artifact"]["version"], body["request_note"]) == ("pending", mapping.version, "Ready")
    again = cs.post(f"/api/v1/connections/{code}/gates/mapping_sign_off/request/", {})
    assert again.status_code == 409 and "already waiting" in again.json()["detail"]

    pending = it.get("/api/v1/approvals/?state=pending").json()
    assert [a["code"] for a in pending["results"]] == [body["code"]]
    assert other.get("/api/v1/approvals/").json()["results"] == []
    assert other.get(f"/api/v1/approvals/{body['code']}/").status_code == 404
    work = it.get("/api/v1/me/work/").json()
    assert work[0]["key"] == "decisions" and work[0]["total"] == 1

    decide = f"/api/v1/approvals/{body['code']}/decide/"
    assert other.post(decide, {"decision": "approved"}).status_code == 404
    assert cs.post(decide, {"decision": "approved"}).status_code == 403
    assert it.post(decide, {"decision": "rejected"}).status_code == 409  # no reason given
    assert it.post(decide, {"decision": "maybe"}).status_code == 400
    decided = it.post(decide, {"decision": "approved", "artifact_hash": mapping.content_hash, "comment": "Fine"})
    assert decided.status_code == 200 and decided.json()["state"] == "approved"
    assert it.post(decide, {"decision": "approved"}).status_code == 409  # deciding twice
    assert cs.get(f"/api/v1/connections/{code}/gates/").json()[0]["status"] == "approved"
    schema = cs.get("/api/schema/?format=json").json()["paths"]
    for path in (
        "/api/v1/approvals/",
        "/api/v1/approvals/{code}/decide/",
        "/api/v1/approvals/{code}/remind/",
        "/api/v1/connections/{code}/gates/",
        "/api/v1/connections/{code}/gates/{gate}/request/",
        "/api/v1/me/work/",
    ):
        assert path in schema, path


def test_a_passed_validate_takes_the_earlier_failure_out_of_the_queue(
    onboarding: Any, engineer: Any, cs_user: Any
) -> None:
    from onboarding.review import services as review

    failed = StepRun.objects.create(
        onboarding=onboarding, step="validate", attempt=1, status=RunStatus.FAILED, error_kind="validation_failed"
    )
    refused = StepRun.objects.create(
        onboarding=onboarding, step="validate", attempt=2, status=RunStatus.FAILED, error_kind="not_signed_off"
    )
    queue = list(review.failed_runs(engineer, review.QueueFilters()))
    assert queue == [failed]  # a precondition failure never counts as a validation failure
    assert refused not in queue
    StepRun.objects.create(onboarding=onboarding, step="validate", attempt=3, status=RunStatus.PASSED)
    assert list(review.failed_runs(engineer, review.QueueFilters())) == []
    page = client_for(engineer).get(reverse("review_queue")).content.decode()
    assert str(failed.code) not in page


@pytest.mark.django_db(transaction=True)
def test_the_data_migration_keeps_every_sign_off_and_its_history() -> None:
    executor = MigrationExecutor(db_connection)
    leaves = [node for node in executor.loader.graph.leaf_nodes() if node[0] != "onboarding"]
    before = [*leaves, ("onboarding", "0003_mapping_findings_waivers")]
    after = [*leaves, ("onboarding", "0006_delete_mappingsignoff")]
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        tenant = old.get_model("portal", "Tenant").objects.create(name="Migrated Hospital")
        connection = old.get_model("connections", "EHRConnection").objects.create(
            tenant=tenant, name="Old FHIR", vendor="generic", base_url="https://fhir.example.org/r4"
        )
        onboarding = old.get_model("onboarding", "Onboarding").objects.create(tenant=tenant, connection=connection)
        mapping_model = old.get_model("onboarding", "Mapping")
        v1 = mapping_model.objects.create(onboarding=onboarding, version=1, source="map_step", content_hash="a" * 64)
        v2 = mapping_model.objects.create(onboarding=onboarding, version=2, source="editor", content_hash="b" * 64)
        sign_off = old.get_model("onboarding", "MappingSignOff")
        voided = sign_off.objects.create(
            mapping=v1,
            version=1,
            content_hash="a" * 64,
            approver_label="it-old",
            comment="first",
            voided_at=timezone.now(),
            voided_reason="Version 2 (editor) replaced version 1.",
        )
        live = sign_off.objects.create(
            mapping=v2, version=2, content_hash="b" * 64, approver_label="it-old", comment="ok"
        )

        executor = MigrationExecutor(db_connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        approvals = {a.code: a for a in new.get_model("onboarding", "Approval").objects.all()}
        assert set(approvals) == {voided.code, live.code}
        kept = approvals[live.code]
        assert (kept.gate, kept.artifact_id, kept.artifact_version, kept.artifact_hash) == (
            "mapping_sign_off",
            v2.pk,
            2,
            "b" * 64,
        )
        assert (kept.decision, kept.decided_by_label, kept.comment, kept.voided_at) == (
            "approved",
            "it-old",
            "ok",
            None,
        )
        gone = approvals[voided.code]
        assert gone.voided_at is not None and gone.voided_reason == "Version 2 (editor) replaced version 1."
    finally:
        executor = MigrationExecutor(db_connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_deciding_a_request_whose_artifact_changed_voids_it_and_the_void_stays(
    onboarding: Any, cs_user: Any, it_a: Any
) -> None:
    mapping = complete_mapping(cs_user, onboarding)
    stale = Approval.objects.create(
        onboarding=onboarding,
        gate=mappings.SIGN_OFF_GATE,
        artifact_kind="mapping",
        artifact_id=mapping.pk,
        artifact_version=mapping.version,
        artifact_hash="f" * 64,  # not what the mapping holds now
        artifact_label=f"Mapping version {mapping.version}",
    )
    with pytest.raises(gates.GateError, match="changed before your decision"):
        gates.decide(user=it_a, approval=stale, decision="approved")
    stale.refresh_from_db()
    assert stale.state == "voided" and "before the decision" in stale.voided_reason
    assert mappings.signed_mapping(onboarding) is None


def test_a_failed_run_tells_the_assigned_customer_success_once(
    onboarding: Any, cs_user: Any, it_a: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from portal.notifications.models import Notification
    from portal.people import services as people

    monkeypatch.setattr(services, "send_run", lambda run_id: True)
    people.assign_staff(actor=cs_user, tenant=onboarding.tenant, member=cs_user)
    run = services.start_step(user=cs_user, onboarding=onboarding, step="configure")
    assert services.claim(run.pk) == 1
    assert services.fail_run(run.pk, kind="timeout", message="The hospital did not answer.", lease=1)
    # A second report of the same failure (a redelivery, the reaper) tells nobody again.
    services.notices.run_failed(StepRun.objects.get(pk=run.pk))
    told = Notification.objects.filter(kind="run_failed", recipient=cs_user)
    assert told.count() == 1
    assert told.get().link == reverse("run_detail", kwargs={"code": run.code})
    assert not Notification.objects.filter(kind="run_failed", recipient=it_a).exists()


def test_the_approvals_list_filters_by_state_gate_and_connection(onboarding: Any, cs_user: Any) -> None:
    complete_mapping(cs_user, onboarding)
    gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    client = client_for(cs_user)
    code = onboarding.connection.code
    assert len(client.get(f"/api/v1/approvals/?connection={code}&state=pending").json()["results"]) == 1
    assert client.get(f"/api/v1/approvals/?connection={code}&state=approved").json()["results"] == []
    assert client.get("/api/v1/approvals/?gate=no_such_gate").json()["results"] == []
    assert client.get("/api/v1/approvals/?connection=not-a-code").json()["results"] == []
