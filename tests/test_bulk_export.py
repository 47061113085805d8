"""FHIR Bulk Data export ($export) as the source of map and validate, against the sandbox's own export.

The same findings as the REST pull of the same patients; Retry-After and X-Progress honoured while
polling; the error file reported; the token sent with file downloads the manifest says need it; and
every bad answer in the issue ending as a typed, readable error that keeps what was checked.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection as db_connection

from connections.models import EHRConnection
from connections.sandbox import SandboxHospital
from onboarding.engine import services
from onboarding.models import RunStatus, StepRun
from tests.conftest import DEFECTS, client_for
from tests.test_concurrent_pull import finding_list
from tests.test_map_step import ready_connection, run_now, run_on_worker, set_sizes, signed_off_mapping

PATIENTS = 30


@pytest.fixture(scope="module")
def exporting() -> Iterator[dict[str, SandboxHospital]]:
    """Two hospitals with planted defects: an open one, and one behind OAuth2 client credentials."""
    running = {
        "open": SandboxHospital(
            flavour="generic", seed=7, patients=PATIENTS, defects=DEFECTS, extended_clinical=True, request_log=5000
        ).start(),
        "token": SandboxHospital(
            flavour="generic",
            seed=3,
            patients=15,
            defects=DEFECTS,
            auth="client_credentials",
            client_id="bulk-client",
            client_secret="bulk-s3cret-value",
        ).start(),
    }
    yield running
    for hospital in running.values():
        hospital.stop()


@pytest.fixture
def hospitals(settings: Any, sandbox_allowlist: str, exporting: dict[str, SandboxHospital]) -> Any:
    settings.OUTBOUND_ALLOWLIST = [*settings.OUTBOUND_ALLOWLIST, *(f"127.0.0.1:{h.port}" for h in exporting.values())]
    for hospital in exporting.values():
        hospital.set_faults(export_delay_s=1.5, export_retry_after=0.5)
    yield exporting
    for hospital in exporting.values():
        hospital.set_faults()


def use_bulk(user: Any, connection: EHRConnection) -> None:
    """Choose bulk through the API, as customer success would (configure has seen $export)."""
    response = client_for(user).patch(
        f"/api/v1/connections/{connection.code}/", {"pull_method": "bulk"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    connection.refresh_from_db()
    assert connection.pull_method == "bulk"


def status_polls(hospital: SandboxHospital) -> list[dict[str, Any]]:
    return [e for e in hospital.requests() if "$export-status" in e["target"] and e["method"] == "GET"]


@pytest.mark.django_db
def test_done_when_3_a_bulk_pull_gives_the_same_findings_as_the_rest_pull(
    hospitals: dict[str, SandboxHospital], tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    hospital = hospitals["open"]
    set_sizes(tenant_a, map_size=20, validate_size=20)  # a sample: the export holds 30 patients
    connection = ready_connection(tenant_a, cs_user, hospital)
    assert connection.bulk_export_levels == "system,patient"
    signed_off_mapping(cs_user, it_a, connection)
    rest_map = connection.onboarding.runs.filter(step="map").latest("attempt")
    rest = run_now(connection, "validate", cs_user)

    use_bulk(cs_user, connection)
    hospital.set_faults(export_delay_s=1.5, export_retry_after=0.5, export_error_file=True)
    bulk = run_now(connection, "validate", cs_user)
    assert bulk.status == rest.status, bulk.error_message
    assert finding_list(bulk) == finding_list(rest) and bulk.findings.count() > 20
    for key in ("patients", "patient_keys", "resources", "findings", "must_support"):
        assert bulk.result[key] == rest.result[key], key
    export = bulk.result["bulk_export"]
    assert export["level"] == "patient" and export["polls"] >= 2
    assert export["last_progress"].startswith("in progress")
    # The error file is read and reported.
    assert export["export_errors"][0]["diagnostics"].startswith("Some MedicationRequest resources")
    assert any("pharmacy feed was offline" in w for w in bulk.result["warnings"])

    bulk_map = run_now(connection, "map", cs_user)
    assert bulk_map.status == RunStatus.PASSED, bulk_map.error_message
    assert bulk_map.result["profile"] == rest_map.result["profile"]


@pytest.mark.django_db
def test_status_polling_honours_retry_after_and_kicks_off_as_the_ig_says(
    hospitals: dict[str, SandboxHospital], bulk_connection: EHRConnection, cs_user: Any
) -> None:
    hospital, connection = hospitals["open"], bulk_connection
    hospital.set_faults(export_delay_s=3, export_retry_after=1)
    hospital.clear_requests()
    run = run_now(connection, "validate", cs_user)
    assert run.status in (RunStatus.PASSED, RunStatus.FAILED) and run.result["patients"] == 10
    log = hospital.requests()
    kick_off = [e for e in log if e["target"].split("?")[0].endswith("/$export")]
    assert len(kick_off) == 1 and kick_off[0]["status"] == 202
    assert "_type=Patient%2CEncounter%2CObservation" in kick_off[0]["target"]
    polls = status_polls(hospital)
    assert [p["status"] for p in polls[:-1]] == [202] * (len(polls) - 1) and polls[-1]["status"] == 200
    assert len(polls) >= 3
    # By the sandbox's clock: each poll came at least the Retry-After (1 s) after the 202 before it.
    assert all(b["arrived"] - a["answered"] >= 1.0 for a, b in itertools.pairwise(polls))
    assert run.result["bulk_export"]["waited_s"] >= 2


@pytest.mark.django_db
def test_file_downloads_carry_the_token_when_the_manifest_requires_it(
    hospitals: dict[str, SandboxHospital], tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    hospital = hospitals["token"]
    set_sizes(tenant_a, map_size=15, validate_size=15)
    connection = ready_connection(
        tenant_a,
        cs_user,
        hospital,
        auth_method="client_credentials",
        client_id="bulk-client",
        secret="bulk-s3cret-value",
        token_url=hospital.token_url,
    )
    signed_off_mapping(cs_user, it_a, connection)
    rest = run_now(connection, "validate", cs_user)
    use_bulk(cs_user, connection)
    bulk = run_now(connection, "validate", cs_user)
    # The sandbox refuses a file without a valid bearer token (requiresAccessToken: true): it was sent.
    assert bulk.status == rest.status, bulk.error_message
    assert finding_list(bulk) == finding_list(rest)
    assert bulk.result["bulk_export"]["files"] >= 4


# --- bad input: each a typed, readable error that keeps what was checked ----------------------------


@pytest.fixture
def mapped_connection(hospitals: dict[str, SandboxHospital], tenant_a: Any, cs_user: Any, it_a: Any) -> EHRConnection:
    """The open hospital, configured and tested, its mapping signed off; samples of 10 patients."""
    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, hospitals["open"])
    signed_off_mapping(cs_user, it_a, connection)
    return connection


@pytest.fixture
def bulk_connection(mapped_connection: EHRConnection, cs_user: Any) -> EHRConnection:
    use_bulk(cs_user, mapped_connection)
    return mapped_connection


def assert_failed_readably(run: StepRun, kind: str, *words: str) -> None:
    assert run.status == RunStatus.FAILED and not run.is_active, (run.status, run.error_message)
    assert run.error_kind == kind, (run.error_kind, run.error_message)
    for word in words:
        assert word in run.error_message, run.error_message
    assert run.error_hint


BAD_INPUTS = [
    ({"export_no_content_location": True}, "bad_payload", ("no Content-Location",)),
    ({"export_bad_line": "Observation"}, "bad_payload", ("Line 2", "Observation file is not JSON")),
    ({"export_file_origin": "http://10.0.0.7:8080"}, "blocked_address", ()),
    ({"export_unknown_type": True}, "bad_payload", ("Basic", "did not ask for")),
    ({"export_status_404_after": 2, "export_delay_s": 5}, "not_found", ("status URL answered 404",)),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("faults", "kind", "words"), BAD_INPUTS, ids=[next(iter(f)) for f, _, _ in BAD_INPUTS])
def test_each_bad_export_answer_ends_as_a_typed_error(
    bulk_connection: EHRConnection,
    hospitals: dict[str, SandboxHospital],
    cs_user: Any,
    faults: dict[str, Any],
    kind: str,
    words: tuple[str, ...],
) -> None:
    hospital = hospitals["open"]
    hospital.set_faults(export_retry_after=0.5, **{"export_delay_s": 1, **faults})
    run = run_now(bulk_connection, "validate", cs_user)
    assert_failed_readably(run, kind, *words)
    assert run.result["partial"] is True and run.result["stopped"]["kind"] == kind
    if kind == "bad_payload" and "export_bad_line" in faults:
        # The patients were checked before the Observation file broke: their findings stay.
        assert run.result["patients"] == 10 and run.findings.filter(resource_type="Patient").exists()
        assert run.result["bulk_export"]["resources_read"] > 10
    # The server's export was cancelled (DELETE on the status URL), unless there never was one.
    if "export_no_content_location" not in faults and "export_status_404_after" not in faults:
        assert hospital.exports.deleted


@pytest.mark.django_db
def test_an_export_that_never_finishes_ends_at_the_steps_deadline_and_is_cancelled(
    bulk_connection: EHRConnection, hospitals: dict[str, SandboxHospital], cs_user: Any, settings: Any
) -> None:
    hospital = hospitals["open"]
    hospital.set_faults(export_never_ready=True, export_retry_after=1)
    settings.STEP_SOFT_TIME_LIMIT = 9
    deleted = len(hospital.exports.deleted)
    run = run_now(bulk_connection, "validate", cs_user)
    assert_failed_readably(run, "timeout", "not ready within this run's time limit", "in progress")
    assert len(hospital.exports.deleted) == deleted + 1


@pytest.mark.django_db
def test_the_map_step_reads_the_export_too_and_fails_typed_on_a_broken_file(
    bulk_connection: EHRConnection, hospitals: dict[str, SandboxHospital], cs_user: Any
) -> None:
    hospitals["open"].set_faults(export_delay_s=0.5, export_retry_after=0.5, export_bad_line="Condition")
    run = run_now(bulk_connection, "map", cs_user)
    assert_failed_readably(run, "bad_payload", "Condition file is not JSON")


@pytest.mark.django_db
def test_bulk_can_be_chosen_only_where_export_is_advertised(
    hospitals: dict[str, SandboxHospital], tenant_a: Any, cs_user: Any
) -> None:
    hospital = hospitals["open"]
    hospital.set_faults(no_bulk_export=True)
    connection = ready_connection(tenant_a, cs_user, hospital)
    assert connection.bulk_export_levels == ""
    refused = client_for(cs_user).patch(
        f"/api/v1/connections/{connection.code}/", {"pull_method": "bulk"}, content_type="application/json"
    )
    assert refused.status_code == 400 and "advertises $export" in str(refused.json())
    hospital.set_faults()
    assert run_now(connection, "configure", cs_user).result["bulk_export"] == ["system", "patient"]
    use_bulk(cs_user, connection)


@pytest.mark.django_db
def test_a_server_that_exports_only_by_group_needs_the_group_id_and_then_exports_it(
    hospitals: dict[str, SandboxHospital], mapped_connection: EHRConnection, cs_user: Any
) -> None:
    hospital, connection = hospitals["open"], mapped_connection
    rest = run_now(connection, "validate", cs_user)
    # As Epic's server: $export only on Group/[id].
    hospital.set_faults(export_levels="group", export_delay_s=0.5, export_retry_after=0.5)
    assert run_now(connection, "configure", cs_user).result["bulk_export"] == ["group"]
    api = client_for(cs_user)
    url = f"/api/v1/connections/{connection.code}/"
    refused = api.patch(url, {"pull_method": "bulk"}, content_type="application/json")
    assert refused.status_code == 400 and "exports only by Group" in str(refused.json()["bulk_group_id"])
    bad_id = api.patch(url, {"pull_method": "bulk", "bulk_group_id": "no spaces/here"}, content_type="application/json")
    assert bad_id.status_code == 400 and "FHIR id" in str(bad_id.json()["bulk_group_id"])
    connection.refresh_from_db()
    assert (connection.pull_method, connection.bulk_group_id) == ("rest", "")

    # A Group id the server does not know: a typed error naming it.
    wrong = api.patch(url, {"pull_method": "bulk", "bulk_group_id": "wrong-group"}, content_type="application/json")
    assert wrong.status_code == 200, wrong.content
    unknown = run_now(connection, "validate", cs_user)
    assert_failed_readably(unknown, "not_found", "wrong-group")

    # The Group the hospital set up: its export gives what the REST pull gave.
    ok = api.patch(url, {"bulk_group_id": "onboarding-cohort"}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["bulk_group_id"] == "onboarding-cohort"
    hospital.clear_requests()
    bulk = run_now(connection, "validate", cs_user)
    assert bulk.result["bulk_export"]["level"] == "group", bulk.error_message
    assert finding_list(bulk) == finding_list(rest) and bulk.result["patient_keys"] == rest.result["patient_keys"]
    kick_off = [e for e in hospital.requests() if e["target"].split("?")[0].endswith("/$export")]
    assert [e["target"].split("?")[0].rsplit("/", 3)[-3:] for e in kick_off] == [
        ["Group", "onboarding-cohort", "$export"]
    ]


# --- cancelling on a real worker ----------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_cancelling_a_bulk_run_sends_delete_to_the_status_url(
    celery_worker_process: Any, sandboxes: dict[str, Any], clean_faults: None, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    hospital = sandboxes["defects"]
    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, hospital, runner=run_on_worker)
    signed_off_mapping(cs_user, it_a, connection, runner=run_on_worker)
    use_bulk(cs_user, connection)
    hospital.set_faults(export_never_ready=True, export_retry_after=0.5)
    deleted = len(hospital.exports.deleted)
    run = services.start_step(user=cs_user, onboarding=connection.onboarding, step="validate")
    deadline = time.monotonic() + 30
    while "Waiting for the hospital's export" not in run.progress_message and time.monotonic() < deadline:
        time.sleep(0.2)
        run.refresh_from_db()
    assert "in progress" in run.progress_message, run.progress_message
    services.cancel_run(user=cs_user, run=run)
    while len(hospital.exports.deleted) == deleted and time.monotonic() < deadline:
        time.sleep(0.2)
    run.refresh_from_db()
    db_connection.close()
    assert run.status == RunStatus.CANCELLED
    assert len(hospital.exports.deleted) == deleted + 1
