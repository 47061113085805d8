"""The map step against a sandbox with planted defects: the data profile, the mapping and its sign-off.

The sandbox reports exactly what it planted, so the profile is checked against that record with
exact counts, not against numbers copied from a previous run.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from django.core.exceptions import PermissionDenied

from connections.adapters.structure import strict_parse_problems, structure_problems
from connections.models import EHRConnection
from connections.sandbox.defects import LEGACY_MRN_SYSTEMS, LOCAL_LAB_SYSTEMS, UNKNOWN_EXTENSION, parse_defects
from onboarding.engine import services
from onboarding.gates import services as gates
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import LOINC
from onboarding.models import Mapping, RunStatus, StepRun
from portal.models import AuditEvent
from tests.factories import ConnectionFactory, sign_mapping_off

pytestmark = pytest.mark.django_db

GENERIC_MRN = "http://hospital.example.org/mrn"
GENERIC_ENTERPRISE = "http://hospital.example.org/enterprise-id"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"


# --- helpers shared by the map, validate and review tests -----------------------------------------


def run_now(connection: EHRConnection, step: str, user: Any) -> StepRun:
    """Start a step and execute it in this process, as a worker would."""
    onboarding = services.ensure_onboarding(connection)
    run = services.start_step(user=user, onboarding=onboarding, step=step)
    services.execute_run(run.pk)
    run.refresh_from_db()
    return run


def run_on_worker(connection: EHRConnection, step: str, user: Any) -> StepRun:
    """Start a step and wait for the real worker to finish it (tests with celery_worker_process)."""
    import time

    onboarding = services.ensure_onboarding(connection)
    run = services.start_step(user=user, onboarding=onboarding, step=step)
    deadline = time.monotonic() + 60
    while run.is_active and time.monotonic() < deadline:
        time.sleep(0.1)
        run.refresh_from_db()
    assert not run.is_active, f"{step} did not finish on the worker"
    return run


def sandbox_connection(tenant: Any, hospital: Any, **extra: Any) -> EHRConnection:
    fields = {"tenant": tenant, "vendor": hospital.flavour, "base_url": hospital.base_url, "auth_method": "none"}
    fields.update(extra)
    return ConnectionFactory(**fields)


def planted(hospital: Any) -> list[dict[str, Any]]:
    """What the sandbox says it planted, read over HTTP like any client would."""
    return list(httpx.get(f"http://127.0.0.1:{hospital.port}/_sandbox/planted", timeout=10).json()["planted"])


def set_sizes(tenant: Any, *, map_size: int, validate_size: int) -> None:
    policy = mappings.policy_for(tenant)
    policy.map_sample_size, policy.validate_sample_size = map_size, validate_size
    policy.save()


def map_every_code(user: Any, connection: EHRConnection) -> Mapping:
    """Map each local lab code to its LOINC code (the sandbox's table says which), as a person would."""
    from connections.sandbox.defects import LOCAL_LAB_CODES

    loinc_of = {local: loinc for loinc, (local, _) in LOCAL_LAB_CODES.items()}
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None
    for row in mapping.codes:
        mapping = mappings.update_code(
            user=user,
            mapping=mapping,
            key=mappings.row_key(row),
            target_system="LOINC",
            target_code=loinc_of[row["code"]],
            target_display=f"LOINC {loinc_of[row['code']]}",
        )
    return mapping


def signed_off_mapping(cs: Any, it: Any, connection: EHRConnection, runner: Any = run_now) -> Mapping:
    """Map step run, codes mapped, map re-run (passes), hospital IT signs the version off."""
    first = runner(connection, "map", cs)
    assert first.status in (RunStatus.PASSED, RunStatus.FAILED), first.error_message
    if first.status == RunStatus.FAILED:
        assert first.error_kind == "mapping_incomplete", (first.error_kind, first.error_message)
        map_every_code(cs, connection)
        again = runner(connection, "map", cs)
        assert again.status == RunStatus.PASSED, (again.error_kind, again.error_message)
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None
    sign_mapping_off(cs=cs, it=it, mapping=mapping)
    return mapping


def ready_connection(tenant: Any, cs: Any, hospital: Any, runner: Any = run_now, **extra: Any) -> EHRConnection:
    """A connection whose configure and test steps passed."""
    connection = sandbox_connection(tenant, hospital, **extra)
    for step in ("configure", "test"):
        run = runner(connection, step, cs)
        assert run.status == RunStatus.PASSED, (step, run.error_kind, run.error_message)
    connection.refresh_from_db()
    return connection


@pytest.fixture
def defects(sandbox_allowlist: str, clean_faults: None, sandboxes: dict[str, Any]) -> Any:
    return sandboxes["defects"]


# --- the sandbox's planted defects ----------------------------------------------------------------


def test_the_sandbox_plants_every_kind_and_reports_exactly_what(defects: Any) -> None:
    report = planted(defects)
    kinds = Counter(p["kind"] for p in report)
    assert set(kinds) == {
        "duplicate_patient",
        "missing_birth_date",
        "second_identifier",
        "unknown_extension",
        "bad_date",
        "local_lab_code",
        "dangling_reference",
        "bad_structure",
    }
    # At most one defect per patient, so findings can be matched one to one.
    owners = [p["patient_id"] if p["kind"] != "duplicate_patient" else p["resource_id"] for p in report]
    assert len(owners) == len(set(owners))
    # Each record points at a resource the sandbox really serves, carrying the defect.
    for record in report:
        resource = httpx.get(f"{defects.base_url}/{record['resource_type']}/{record['resource_id']}", timeout=10).json()
        if record["kind"] == "missing_birth_date":
            assert "birthDate" not in resource
        if record["kind"] == "local_lab_code":
            assert resource["code"]["coding"] == [
                {
                    "system": LOCAL_LAB_SYSTEMS["generic"],
                    "code": record["detail"]["code"],
                    "display": resource["code"]["coding"][0]["display"],
                }
            ]
        if record["kind"] == "unknown_extension":
            assert UNKNOWN_EXTENSION in [e["url"] for e in resource["extension"]]


def test_without_defects_nothing_is_planted_and_bad_rates_are_refused() -> None:
    assert parse_defects(None, "epic").active is False
    assert parse_defects("default", "epic").rates["local_lab_code"] > 0
    assert parse_defects("showcase", "epic").showcase and not parse_defects("default", "epic").showcase
    assert parse_defects({"showcase": True, "bad_date": 0.5}, "epic").showcase
    for bad in ({"no_such_defect": 0.1}, {"bad_date": 1.5}, {"bad_date": True}, {"showcase": "yes"}, "sometimes"):
        with pytest.raises(ValueError):
            parse_defects(bad, "generic")  # type: ignore[arg-type]


# --- the profile -----------------------------------------------------------------------------------


def test_profile_shows_the_planted_identifier_systems_extensions_and_local_codes_with_exact_counts(
    defects: Any, tenant_a: Any, cs_user: Any
) -> None:
    sample = 20
    set_sizes(tenant_a, map_size=sample, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    run = run_now(connection, "map", cs_user)
    # Local lab codes are in the sample and nobody mapped them yet: the map step says so.
    assert run.status == RunStatus.FAILED
    assert run.error_kind == "mapping_incomplete"
    assert "map" in run.error_message and "local code" in run.error_message
    assert run.progress_done == run.progress_total == sample

    in_sample = set(defects.patient_ids[:sample])
    report = [p for p in planted(defects) if p["patient_id"] in in_sample or p["resource_id"] in in_sample]
    kinds = Counter(p["kind"] for p in report)
    profile = run.result["profile"]
    assert profile["patients"] == sample

    systems = {s["system"]: s for s in profile["identifier_systems"]}
    assert systems[GENERIC_MRN]["patients"] == sample and systems[GENERIC_MRN]["share"] == 100.0
    assert systems[GENERIC_ENTERPRISE]["patients"] == sample
    legacy = LEGACY_MRN_SYSTEMS["generic"]
    assert kinds["second_identifier"] >= 1
    assert systems[legacy]["patients"] == kinds["second_identifier"]
    assert systems[legacy]["share"] == round(100 * kinds["second_identifier"] / sample, 1)
    assert systems[legacy]["mrn_typed"] is True
    assert set(systems) == {GENERIC_MRN, GENERIC_ENTERPRISE, legacy}

    extensions = {e["url"]: e for e in profile["extensions"]}
    assert kinds["unknown_extension"] >= 1
    assert extensions[UNKNOWN_EXTENSION]["resources"] == kinds["unknown_extension"]
    assert extensions[UNKNOWN_EXTENSION]["known"] is False
    for name in ("us-core-race", "us-core-ethnicity", "us-core-birthsex"):
        assert extensions[US_CORE + name] == {
            "url": US_CORE + name,
            "resources": sample,
            "types": ["Patient"],
            "known": True,
        }

    observation = next(e for e in profile["elements"] if e["element"] == "Observation.code")
    local_system = LOCAL_LAB_SYSTEMS["generic"]
    planted_codes = Counter(p["detail"]["code"] for p in report if p["kind"] == "local_lab_code")
    assert planted_codes, "the sample must hold local lab codes"
    assert {(c["code"], c["count"]) for c in observation["local_codes"]} == set(planted_codes.items())
    assert all(c["system"] == local_system for c in observation["local_codes"])
    by_system = {s["system"]: s for s in observation["systems"]}
    local_count = sum(planted_codes.values())
    assert by_system[local_system]["resources"] == local_count
    assert by_system[LOINC]["resources"] == observation["resources"] - local_count
    assert by_system[local_system]["share"] == round(100 * local_count / observation["resources"], 1)
    assert by_system[LOINC]["label"] == "LOINC" and by_system[local_system]["label"].startswith("local")
    # Every other coded element carries only standard codes in the sandbox.
    for element in profile["elements"]:
        if element["element"] != "Observation.code":
            assert element["resources"] > 0, element["element"]
            assert element["local_codes"] == [], element["element"]

    assert profile["suggested_mrn_system"] == GENERIC_MRN
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None and mapping.version == 1 and mapping.mrn_system == GENERIC_MRN
    assert {(r["code"], r["count"]) for r in mapping.codes} == set(planted_codes.items())
    assert mapping.extension_handling == {UNKNOWN_EXTENSION: ""}


def test_a_complete_mapping_goes_to_hospital_it_and_a_new_version_voids_the_approval(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any, it_b: Any
) -> None:
    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    onboarding = connection.onboarding
    assert run_now(connection, "map", cs_user).status == RunStatus.FAILED
    mapping = mappings.latest_mapping(onboarding)
    assert mapping is not None
    allowed, why = mappings.sign_off_state(mapping)
    assert not allowed and "local code" in why
    with pytest.raises(gates.GateError, match="local code"):
        gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    mapping = map_every_code(cs_user, connection)
    # A complete mapping may be put to hospital IT, even though the map run on record failed.
    assert mappings.sign_off_state(mapping)[0] is True

    # Hospital IT cannot request; customer success can, once.
    with pytest.raises(PermissionDenied):
        gates.request_approval(user=it_a, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    approval = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    with pytest.raises(gates.GateError, match="already waiting"):
        gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    assert (approval.artifact_id, approval.artifact_hash) == (mapping.pk, mapping.content_hash)

    # Customer success cannot decide, nor hospital IT of another hospital; a stale hash is refused.
    for outsider in (cs_user, it_b):
        with pytest.raises(PermissionDenied):
            gates.decide(user=outsider, approval=approval, decision="approved")
    with pytest.raises(gates.GateError, match="Reload"):
        gates.decide(user=it_a, approval=approval, decision="approved", artifact_hash="0" * 64)
    with pytest.raises(gates.GateError, match="Say why"):
        gates.decide(user=it_a, approval=approval, decision="rejected", comment="  ")
    signed = gates.decide(
        user=it_a,
        approval=approval,
        decision="approved",
        comment="Reviewed with lab",
        artifact_hash=mapping.content_hash,
    )
    assert (signed.artifact_version, signed.decided_by, signed.comment) == (mapping.version, it_a, "Reviewed with lab")
    assert signed.decided_at is not None and signed.state == "approved"
    with pytest.raises(gates.GateError, match="already approved"):
        gates.decide(user=it_a, approval=signed, decision="rejected", comment="changed my mind")
    assert mappings.signed_mapping(onboarding) == mapping
    assert AuditEvent.objects.filter(action="gate.approved", actor=it_a, tenant=tenant_a).count() == 1

    # An edit makes a new version and voids the approval, with the reason.
    row = mapping.codes[0]
    edited = mappings.update_code(
        user=cs_user,
        mapping=mapping,
        key=mappings.row_key(row),
        target_system=row["target_system"],
        target_code=row["target_code"],
        target_display="A better display",
    )
    assert edited.version == mapping.version + 1
    signed.refresh_from_db()
    assert signed.voided_at is not None and f"Mapping version {edited.version}" in signed.voided_reason
    assert mappings.signed_mapping(onboarding) is None
    assert gates.gate_state(onboarding, mappings.SIGN_OFF_GATE).status == "ready"
    with pytest.raises(gates.GateError, match="voided"):
        gates.decide(user=it_a, approval=signed, decision="approved")
    # Someone who opened the older version cannot overwrite that change, but may edit another row.
    with pytest.raises(mappings.MappingConflict, match="while you were editing"):
        mappings.update_code(
            user=cs_user,
            mapping=mapping,
            key=mappings.row_key(row),
            target_system="",
            target_code="",
            target_display="",
        )
    if len(mapping.codes) > 1:
        other = mapping.codes[1]
        edited = mappings.update_code(
            user=cs_user,
            mapping=mapping,
            key=mappings.row_key(other),
            target_system="LOINC",
            target_code="718-7",
            target_display="Hemoglobin [Mass/volume] in Blood",
        )
    assert edited.codes[0]["target_display"] == "A better display"
    # Hospital IT may look but not edit.
    with pytest.raises(PermissionDenied):
        mappings.set_mrn_system(user=it_a, mapping=edited, system=GENERIC_MRN)

    # A request pending when the mapping changes is voided too; then signing and re-running map voids it.
    pending = gates.request_approval(user=cs_user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    assert run_now(connection, "map", cs_user).status == RunStatus.PASSED
    pending.refresh_from_db()
    assert pending.state == "voided"
    newest = mappings.latest_mapping(onboarding)
    assert newest is not None and newest.version == edited.version + 1
    sign_mapping_off(cs=cs_user, it=it_a, mapping=newest)
    assert mappings.signed_mapping(onboarding) == newest
    assert run_now(connection, "map", cs_user).status == RunStatus.PASSED
    assert mappings.signed_mapping(onboarding) is None
    history = gates.history(onboarding, mappings.SIGN_OFF_GATE)
    assert [a.state for a in history] == ["voided", "voided", "voided"]


# --- CSV and ConceptMap -------------------------------------------------------------------------------


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def test_csv_round_trip_row_level_errors_and_nothing_saved_from_a_bad_file(
    defects: Any, tenant_a: Any, cs_user: Any
) -> None:
    set_sizes(tenant_a, map_size=20, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    run_now(connection, "map", cs_user)
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None and len(mapping.codes) >= 2

    exported = mappings.export_csv(mapping)
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == list(mappings.CSV_COLUMNS)
    # Re-importing the export unchanged changes nothing and makes no version.
    same = mappings.import_csv(user=cs_user, mapping=mapping, data=exported.encode())
    assert same.errors == [] and same.mapping == mapping

    good = [rows[0]] + [[*r[:5], "LOINC", "2339-0", "Glucose [Mass/volume] in Blood"] for r in rows[1:]]
    bad = [list(r) for r in good]
    bad[1][6] = "not-a-loinc"
    bad[2][5] = "SNOMED CT"
    bad.append(["Observation.code", bad[1][1], bad[1][2], "", "0", "LOINC", "718-7", "Hemoglobin"])
    bad.append(["Patient.name", "x", "y", "", "0", "LOINC", "718-7", "Hemoglobin"])
    versions = Mapping.objects.count()
    result = mappings.import_csv(user=cs_user, mapping=mapping, data=_csv(bad))
    lines = {line for line, _ in result.errors}
    assert lines == {2, 3, len(bad) - 1, len(bad)}, result.errors
    messages = dict(result.errors)
    assert "not a LOINC code" in messages[2]
    assert "must be mapped to LOINC" in messages[3]
    assert "already mapped on line 2" in messages[len(bad) - 1]
    assert "not one the product maps" in messages[len(bad)]
    assert result.mapping is None and Mapping.objects.count() == versions

    for broken in (b"\xff\xfe\x00", b"element,source_code\nObservation.code,GLU\n"):
        failed = mappings.import_csv(user=cs_user, mapping=mapping, data=broken)
        assert failed.errors and failed.mapping is None
    assert Mapping.objects.count() == versions

    result = mappings.import_csv(user=cs_user, mapping=mapping, data=_csv(good))
    assert result.errors == [] and result.mapping is not None
    assert result.mapping.version == mapping.version + 1 and result.changed == len(rows) - 1
    assert all(r["target_code"] == "2339-0" for r in result.mapping.codes)
    assert mappings.coverage(result.mapping).complete


def test_the_concept_map_export_is_valid_fhir(defects: Any, tenant_a: Any, cs_user: Any) -> None:
    set_sizes(tenant_a, map_size=20, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    run_now(connection, "map", cs_user)
    mapping = map_every_code(cs_user, connection)
    resource = mappings.concept_map(mapping)
    assert structure_problems(resource) == [] and strict_parse_problems(resource) == []
    assert resource["status"] == "draft" and resource["version"] == str(mapping.version)
    (group,) = resource["group"]
    assert group["source"] == LOCAL_LAB_SYSTEMS["generic"] and group["target"] == LOINC
    assert {e["code"]: e["target"][0]["code"] for e in group["element"]} == {
        r["code"]: r["target_code"] for r in mapping.codes
    }
    json.dumps(resource)  # plain JSON


# --- what real servers get wrong, as sandbox quirks -------------------------------------------------------


@pytest.fixture
def generic(sandbox_allowlist: str, clean_faults: None, sandboxes: dict[str, Any]) -> Any:
    return sandboxes["generic"]


def test_map_refuses_other_patients_resources_from_a_server_that_ignores_patient(
    defects: Any, tenant_a: Any, cs_user: Any
) -> None:
    size = 10
    set_sizes(tenant_a, map_size=size, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    clean = run_now(connection, "map", cs_user).result["profile"]["resources"]
    defects.set_faults(ignore_patient_param=True)
    run = run_now(connection, "map", cs_user)
    counted = run.result["profile"]["resources"]
    foreign = run.result["foreign_resources"]
    # Nothing of another patient is counted (a server ignoring patient= used to count 30x too many)...
    assert counted["Patient"] == size
    for resource_type, count in counted.items():
        assert count <= clean[resource_type], resource_type
    # ...they are refused and said so, and each patient's pull stops at the first page of others: bounded.
    assert foreign["Observation"] > 0
    for resource_type, count in foreign.items():
        assert count <= size * 100, resource_type  # one page of 100 per patient and type, not the population
    (warning,) = [w for w in run.result["warnings"] if "patient=" in w]
    assert f"{sum(foreign.values())} resources" in warning and "the server ignores `patient=`" in warning
    assert any("the server ignores `patient=`" in line["message"] for line in run.log)


def test_map_says_when_the_server_never_pages(defects: Any, tenant_a: Any, cs_user: Any) -> None:
    set_sizes(tenant_a, map_size=30, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    defects.set_faults(ignore_count=True, never_pages=True)
    run = run_now(connection, "map", cs_user)
    # The server's 20-patient page is all there is: the run says why it profiled 20 of the 30 asked for.
    assert run.result["profile"]["patients"] == 20
    note = run.result["server_notes"]["never_pages"]
    served = len(defects.patient_ids)
    assert note.startswith(f"The server does not page: its first Patient page held 20 of the {served} matches")
    assert any(note in warning for warning in run.result["warnings"])


def test_map_reports_throttling_in_its_progress_and_result(
    defects: Any, tenant_a: Any, cs_user: Any, settings: Any
) -> None:
    from tests.conftest import client_for

    settings.OUTBOUND_MAX_ATTEMPTS = 8
    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    defects.set_faults(rate_429=0.2, retry_after=0)
    run = run_now(connection, "map", cs_user)
    assert run.error_kind == "mapping_incomplete", (run.error_kind, run.error_message)
    throttled = run.result["throttling"]["throttled"]
    assert throttled > 0 and run.result["throttling"]["requests"] > throttled
    assert run.progress_message == f"Profiled 10 of 10 patients · throttled {throttled} times (HTTP 429), 0 s waiting"
    assert any(f"throttled this run {throttled} times" in w for w in run.result["warnings"])
    page = client_for(cs_user).get(f"/runs/{run.code}/").content.decode()
    assert f"throttled this run {throttled} times" in page


def test_a_failed_run_keeps_a_progress_line_that_matches_its_counts(
    defects: Any, tenant_a: Any, cs_user: Any, settings: Any
) -> None:
    set_sizes(tenant_a, map_size=12, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    # No progress report reaches the database while the step works: only its outcome does.
    settings.STEP_PROGRESS_INTERVAL = 3600
    run = run_now(connection, "map", cs_user)
    assert run.status == RunStatus.FAILED and run.error_kind == "mapping_incomplete"
    assert (run.progress_done, run.progress_total) == (12, 12)
    assert run.progress_message == "Profiled 12 of 12 patients"


def test_icd9_conditions_are_labelled_by_name_not_local(generic: Any, tenant_a: Any, cs_user: Any) -> None:
    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, generic)
    generic.set_faults(icd9_conditions=True)
    run = run_now(connection, "map", cs_user)
    condition = next(e for e in run.result["profile"]["elements"] if e["element"] == "Condition.code")
    labels = {s["system"]: s["label"] for s in condition["systems"]}
    assert labels == {"http://hl7.org/fhir/sid/icd-9-cm": "ICD-9-CM"}
    # Still codes to map: ICD-9-CM is known, but not what the product reads.
    assert condition["local_codes"] and run.error_kind == "mapping_incomplete"


def test_saving_an_unchanged_mrn_system_makes_no_version_and_says_so(defects: Any, tenant_a: Any, cs_user: Any) -> None:
    from django.contrib.messages import get_messages

    from tests.conftest import client_for

    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    run_now(connection, "map", cs_user)
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None
    client = client_for(cs_user)
    url = f"/c/{connection.code}/mapping/mrn/"
    response = client.post(url, {"system": mapping.mrn_system, "version": mapping.version})
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert said == [f"Nothing changed: the mapping stays version {mapping.version}."]
    assert connection.onboarding.mappings.count() == 1
    response = client.post(url, {"system": LEGACY_MRN_SYSTEMS["generic"], "version": mapping.version})
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert said[-1] == f"MRN system saved: the mapping is now version {mapping.version + 1}."


def test_the_test_step_checks_the_mrn_in_the_signed_mappings_system(
    generic: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    moved = "urn:oid:2.999.7.1"
    generic.set_faults(mrn_system=moved)
    set_sizes(tenant_a, map_size=10, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, generic)
    first = next(c for c in connection.onboarding.runs.get(step="test").result["checks"] if c["id"] == "patient_read")
    assert first["detail"] == "read; no MRN with the configured identifier system"
    mapping = signed_off_mapping(cs_user, it_a, connection)
    assert mapping.mrn_system == moved  # the profile found the MRN-typed system
    again = run_now(connection, "test", cs_user)
    check = next(c for c in again.result["checks"] if c["id"] == "patient_read")
    assert check["detail"] == f"MRN found (in {moved}, the MRN system of signed mapping version {mapping.version})"


def test_without_a_capability_statement_map_tries_each_type_and_skips_the_refused(
    generic: Any, tenant_a: Any, cs_user: Any
) -> None:
    from connections.services import set_without_capability_statement

    set_sizes(tenant_a, map_size=5, validate_size=5)
    generic.set_faults(no_capability_statement="not_found")
    connection = sandbox_connection(tenant_a, generic)
    set_without_capability_statement(user=cs_user, connection=connection, enabled=True)
    connection.refresh_from_db()
    for step in ("configure", "test"):
        assert run_now(connection, step, cs_user).status == RunStatus.PASSED
    run = run_now(connection, "map", cs_user)
    assert run.result["types_skipped"] == ["MedicationRequest", "AllergyIntolerance", "Procedure", "Immunization"]
    assert {"Encounter", "Observation", "Condition"} <= set(run.result["profile"]["resources"])
