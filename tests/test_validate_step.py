"""The validate step: every planted defect found, nothing on clean resources, no PHI in findings.

The expected findings are derived from the sandbox's own record of what it planted, and compared
as exact sets of (rule, resource type, pseudonymous resource key).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.db import connection as db
from django.db.models import Q
from django.utils import timezone

from connections.adapters.structure import element_path, strict_parse_problems, structure_problems
from connections.sandbox import SandboxHospital
from onboarding.engine import services
from onboarding.mapping import services as mappings
from onboarding.models import Finding, RawResource, RunStatus, StepRun
from onboarding.review import services as review
from portal.models import AuditEvent
from tests.test_map_step import (
    planted,
    ready_connection,
    run_now,
    set_sizes,
    signed_off_mapping,
)

pytestmark = pytest.mark.django_db

# The rule each planted defect must raise, on the resource that carries it.
RULE_OF = {
    "duplicate_patient": "patient.likely-duplicate",
    "missing_birth_date": "patient.birth-date-missing",
    "second_identifier": "patient.second-mrn-system",
    "unknown_extension": "extensions.unknown",
    "bad_date": "dates.implausible",
    "local_lab_code": "codes.unmapped-local",
    "dangling_reference": "references.unresolved",
    "bad_structure": "structure.invalid",
}
SENTINEL = "Zyxwquorthsentinel"


@pytest.fixture
def defects(sandbox_allowlist: str, clean_faults: None, sandboxes: dict[str, Any]) -> Any:
    return sandboxes["defects"]


@pytest.fixture(scope="module")
def extra_sandboxes() -> Iterator[dict[str, SandboxHospital]]:
    """A clean sandbox with every clinical type, and one whose patients all carry a sentinel name."""
    running = {
        "clean": SandboxHospital(flavour="generic", seed=11, patients=25, extended_clinical=True).start(),
        "sentinel": SandboxHospital(
            flavour="oracle_health",
            seed=5,
            patients=25,
            extended_clinical=True,
            defects={"default": True, "sentinel_family": SENTINEL},
        ).start(),
    }
    yield running
    for hospital in running.values():
        hospital.stop()


@pytest.fixture
def allow_extra(settings: Any, sandbox_allowlist: str, extra_sandboxes: dict[str, SandboxHospital]) -> dict[str, Any]:
    settings.OUTBOUND_ALLOWLIST = [
        *settings.OUTBOUND_ALLOWLIST,
        *(f"127.0.0.1:{h.port}" for h in extra_sandboxes.values()),
    ]
    return extra_sandboxes


def finding_set(run: StepRun) -> set[tuple[str, str, str]]:
    return set(run.findings.exclude(IDENTIFIER_TYPE_WARNING).values_list("rule", "resource_type", "resource_key"))


# Every sandbox flavour types its second patient identifier v2-0203 PI or PT, as vendors do. FHIR
# R4's identifier-type value set, which US Core binds extensibly, lists neither: so each patient
# gets this one US Core warning (as from the HL7 validator), and nothing else on clean data.
IDENTIFIER_TYPE_WARNING = Q(rule="uscore.binding-extensible", path="Patient.identifier.type")


def assert_only_identifier_type_warnings(run: StepRun) -> None:
    """The run's findings are exactly one identifier-type warning per patient pulled, naming the profile."""
    findings = list(run.findings.values_list("severity", "rule", "path", "profile", "message"))
    assert {f[:4] for f in findings} == {
        ("warning", "uscore.binding-extensible", "Patient.identifier.type", "us-core-patient")
    }, findings[:5]
    assert len(findings) == run.result["patients"]
    assert all("|PI " in f[4] or "|PT " in f[4] for f in findings), findings[:3]


def test_validate_finds_every_planted_defect_and_nothing_on_clean_resources(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    # Map a sample of 10 (its local codes get mapped), then validate all 30: the local codes first
    # seen beyond the sample are unmapped and must be found; the mapped ones must not.
    set_sizes(tenant_a, map_size=10, validate_size=len(defects.patient_ids))
    connection = ready_connection(tenant_a, cs_user, defects)
    mapping = signed_off_mapping(cs_user, it_a, connection)
    mapped = {row["code"] for row in mapping.codes}
    run = run_now(connection, "validate", cs_user)
    assert run.status == RunStatus.FAILED, (run.error_kind, run.error_message)
    assert run.error_kind == "validation_failed"
    assert run.result["patients"] == len(defects.patient_ids)

    report = planted(defects)
    expected = {
        (RULE_OF[p["kind"]], p["resource_type"], review.resource_key(tenant_a, p["resource_type"], p["resource_id"]))
        for p in report
        if not (p["kind"] == "local_lab_code" and p["detail"]["code"] in mapped)
    }
    assert any(p["kind"] == "local_lab_code" and p["detail"]["code"] in mapped for p in report)
    assert any(p["kind"] == "local_lab_code" and p["detail"]["code"] not in mapped for p in report)
    assert finding_set(run) == expected
    # One finding per planted defect, at the element the sandbox says it planted it, and the one
    # identifier-type warning per patient.
    assert run.findings.exclude(IDENTIFIER_TYPE_WARNING).count() == len(expected)
    assert (
        run.findings.filter(IDENTIFIER_TYPE_WARNING).values("patient_key").distinct().count() == run.result["patients"]
    )
    paths = {(f.rule, f.resource_key): f.path for f in run.findings.all()}
    for p in report:
        key = (RULE_OF[p["kind"]], review.resource_key(tenant_a, p["resource_type"], p["resource_id"]))
        if key in paths:
            assert paths[key] == p["element"], (p, paths[key])
    # The patients affected are counted, and raw resources are kept for this failed run only.
    assert (
        run.result["patients_with_error"]
        == run.findings.filter(severity="error").values("patient_key").distinct().count()
    )
    warned = set(run.findings.filter(IDENTIFIER_TYPE_WARNING).values_list("resource_key", flat=True))
    assert RawResource.objects.filter(run=run).count() == len({k for _, _, k in expected} | warned)


def test_a_clean_hospital_gives_no_findings_and_keeps_no_raw_data(
    allow_extra: dict[str, Any], tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=10, validate_size=25)
    connection = ready_connection(tenant_a, cs_user, allow_extra["clean"])
    signed_off_mapping(cs_user, it_a, connection)
    run = run_now(connection, "validate", cs_user)
    assert run.status == RunStatus.PASSED, (
        run.error_kind,
        run.error_message,
        list(run.findings.values("rule", "path", "message")[:5]),
    )
    assert_only_identifier_type_warnings(run)
    assert run.result["types_skipped"] == []
    assert set(run.result["resources"]) == {
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "AllergyIntolerance",
        "Procedure",
        "Immunization",
    }
    assert run.progress_done == run.progress_total == 25
    assert RawResource.objects.filter(run=run).count() == 0


AUTH_BY_FLAVOUR: dict[str, dict[str, str]] = {
    "epic": {"auth_method": "client_credentials", "client_id": "portal-test", "secret": "s3cret-sandbox-value"},
    "meditech": {"auth_method": "basic", "client_id": "portal-basic", "secret": "basic-s3cret-value"},
    "athenahealth": {"extra_search_params": "ah-practice=Organization/a-1.Practice-195900"},
}


@pytest.mark.parametrize("flavour", ["epic", "oracle_health", "meditech", "athenahealth"])
def test_every_vendor_flavour_maps_and_validates_clean(
    sandbox_allowlist: str,
    clean_faults: None,
    sandboxes: dict[str, Any],
    tenant_a: Any,
    cs_user: Any,
    it_a: Any,
    flavour: str,
) -> None:
    set_sizes(tenant_a, map_size=5, validate_size=12)
    connection = ready_connection(tenant_a, cs_user, sandboxes[flavour], **AUTH_BY_FLAVOUR.get(flavour, {}))
    mapping = signed_off_mapping(cs_user, it_a, connection)
    assert mapping.mrn_system == sandboxes[flavour].mrn_system  # the vendor default, found in the census
    run = run_now(connection, "validate", cs_user)
    assert run.status == RunStatus.PASSED, (run.error_kind, run.error_message)
    assert_only_identifier_type_warnings(run)
    # These sandboxes serve only the core types; the others are skipped and the log says so.
    assert "MedicationRequest" in run.result["types_skipped"]
    assert any("Not offered" in line["message"] for line in run.log)


def test_findings_hold_no_names_or_mrns(allow_extra: dict[str, Any], tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    hospital = allow_extra["sentinel"]
    set_sizes(tenant_a, map_size=25, validate_size=25)
    connection = ready_connection(tenant_a, cs_user, hospital)
    signed_off_mapping(cs_user, it_a, connection)
    run = run_now(connection, "validate", cs_user)
    assert run.findings.exists()
    bundle = httpx.get(f"{hospital.base_url}/Patient", params={"_count": "100"}, timeout=10).json()
    patients = [e["resource"] for e in bundle["entry"]]
    assert all(p["name"][0]["family"] == SENTINEL for p in patients)  # the sentinel reached the data
    secrets = {SENTINEL, SENTINEL.lower(), SENTINEL.upper()}
    secrets |= {i["value"] for p in patients for i in p["identifier"]}
    secrets |= {g for p in patients for g in p["name"][0]["given"]}

    stored = json.dumps(list(Finding.objects.values()), default=str)
    stored += json.dumps(list(StepRun.objects.values("result", "log", "error_message")), default=str)
    stored += json.dumps(list(AuditEvent.objects.values("detail")), default=str)
    leaked = sorted(s for s in secrets if s in stored)
    assert leaked == []
    # Raw resources hold the PHI, encrypted at rest: the column holds no sentinel, the decrypted payload does.
    with db.cursor() as cursor:
        cursor.execute("SELECT payload FROM onboarding_rawresource WHERE run_id = %s", [run.pk])
        columns = [row[0] for row in cursor.fetchall()]
    assert columns and not any(SENTINEL in c for c in columns)
    assert any(SENTINEL in raw.payload for raw in RawResource.objects.filter(run=run, resource_type="Patient"))


def test_validate_refuses_an_unsigned_mapping(defects: Any, tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    set_sizes(tenant_a, map_size=10, validate_size=5)
    connection = ready_connection(tenant_a, cs_user, defects)
    mapping = signed_off_mapping(cs_user, it_a, connection)
    mappings.set_mrn_system(user=cs_user, mapping=mapping, system="urn:oid:1.2.3")
    # The engine refuses the start: no failed run, nothing in the failed-runs queue.
    with pytest.raises(services.StepBlocked, match="Mapping sign-off is needed first"):
        run_now(connection, "validate", cs_user)
    assert not connection.onboarding.runs.filter(step="validate").exists()

    # Signed when the run was queued, changed before it ran: the step itself still refuses.
    signed = signed_off_mapping(cs_user, it_a, connection)
    run = services.start_step(user=cs_user, onboarding=connection.onboarding, step="validate")
    mappings.set_mrn_system(user=cs_user, mapping=signed, system="urn:oid:1.2.4")
    services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.error_kind == "not_signed_off"
    assert run.findings.count() == 0


def test_thresholds_and_waivers_decide_pass_or_fail(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any, engineer: Any
) -> None:
    set_sizes(tenant_a, map_size=30, validate_size=30)
    connection = ready_connection(tenant_a, cs_user, defects)
    signed_off_mapping(cs_user, it_a, connection)
    failed = run_now(connection, "validate", cs_user)
    assert failed.status == RunStatus.FAILED
    kept = RawResource.objects.filter(run=failed)
    assert kept.exists()
    retention = timezone.now() + timedelta(days=14)
    assert all(abs((raw.expires_at - retention).total_seconds()) < 120 for raw in kept)

    # Waive every error group: waived findings still show, but no longer count, so the re-run passes.
    for group in review.grouped_findings(failed):
        if group.severity == "error":
            review.create_waiver(
                user=engineer,
                tenant=tenant_a,
                rule=group.rule,
                path=group.path,
                reason="Accepted by the lab lead for the pilot",
                expires_on=timezone.localdate() + timedelta(days=30),
            )
    passed = run_now(connection, "validate", cs_user)
    assert passed.status == RunStatus.PASSED, passed.error_message
    assert passed.findings.filter(severity="error").count() == failed.findings.filter(severity="error").count()
    assert passed.result["waived"] == passed.findings.filter(severity="error").count()
    assert passed.result["patients_with_error"] == 0
    assert not RawResource.objects.filter(run=passed).exists()

    # A strict warning threshold fails it again.
    policy = mappings.policy_for(tenant_a)
    policy.max_warning_patient_pct = 1.0
    policy.save()
    strict = run_now(connection, "validate", cs_user)
    assert strict.status == RunStatus.FAILED and "warning" in strict.error_message


def test_expired_raw_resources_are_purged(defects: Any, tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    set_sizes(tenant_a, map_size=30, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    signed_off_mapping(cs_user, it_a, connection)
    run = run_now(connection, "validate", cs_user)
    count = RawResource.objects.filter(run=run).count()
    assert count and review.purge_expired_raw_resources() == 0
    assert review.purge_expired_raw_resources(timezone.now() + timedelta(days=15)) == count
    assert run.findings.exists() and not run.findings.filter(raw__isnull=False).exists()


# --- the structural check against fhirclient's strict parse ------------------------------------------


def _mutations(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Broken copies of a resource, one kind of damage each."""
    unknown = copy.deepcopy(resource)
    unknown["colour"] = "blue"
    yield unknown
    wrong_type = copy.deepcopy(resource)
    wrong_type["id"] = 42
    yield wrong_type
    scalar_list = copy.deepcopy(resource)
    scalar_list["meta"] = [scalar_list["meta"]]
    yield scalar_list
    if resource["resourceType"] == "Observation":
        missing = copy.deepcopy(resource)
        del missing["code"]
        yield missing
        bad_date = copy.deepcopy(resource)
        bad_date["effectiveDateTime"] = "2021-13-45"
        yield bad_date
        # The pattern allows day 30 in February; only the date parser refuses it.
        bad_day = copy.deepcopy(resource)
        bad_day["effectiveDateTime"] = "2021-02-30"
        yield bad_day
        nested = copy.deepcopy(resource)
        nested["code"]["coding"][0]["system"] = ["http://loinc.org"]
        yield nested
    if resource["resourceType"] == "Patient":
        not_a_list = copy.deepcopy(resource)
        not_a_list["name"] = not_a_list["name"][0]
        yield not_a_list


def test_the_fast_structural_check_agrees_with_fhirclient(allow_extra: dict[str, Any]) -> None:
    hospital = allow_extra["clean"]
    corpus: list[dict[str, Any]] = []
    for resource_type in ("Patient", "Observation", "Condition", "Encounter", "MedicationRequest", "Immunization"):
        params = (
            {"_count": "40"} if resource_type == "Patient" else {"patient": hospital.patient_ids[0], "_count": "40"}
        )
        bundle = httpx.get(f"{hospital.base_url}/{resource_type}", params=params, timeout=10).json()
        corpus.extend(e["resource"] for e in bundle.get("entry", []))
    assert len(corpus) > 40
    checked = 0
    for resource in corpus:
        for candidate in (resource, *_mutations(resource)):
            fast, strict = structure_problems(candidate), strict_parse_problems(candidate)
            assert bool(fast) == bool(strict), (candidate, fast, strict)
            checked += 1
    assert checked > 150
    # Paths are JSON paths with positions; grouping drops the positions.
    broken = copy.deepcopy(next(r for r in corpus if r["resourceType"] == "Observation"))
    broken["code"]["coding"][0]["system"] = 7
    assert structure_problems(broken) == [("code.coding[0].system", "must be a string")]
    assert element_path("code.coding[0].system") == "code.coding.system"


def _rerun_as_redelivery(run: StepRun) -> None:
    """Run the same attempt's step again, as a second delivery does after its first worker was lost."""
    from connections.services import build_adapter
    from onboarding.steps import get_step
    from onboarding.steps.base import StepContext

    StepRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, finished_at=None)
    run.refresh_from_db()
    connection = run.onboarding.connection
    ctx = StepContext(
        run=run,
        lease=run.deliveries,
        connection=connection,
        adapter_factory=lambda: build_adapter(connection),
        report=lambda *args: None,
    )
    get_step(run.step).run(ctx)


def test_a_redelivered_validate_or_map_run_writes_its_rows_once(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=10, validate_size=len(defects.patient_ids))
    connection = ready_connection(tenant_a, cs_user, defects)
    signed_off_mapping(cs_user, it_a, connection)
    run = run_now(connection, "validate", cs_user)
    first = (Finding.objects.filter(run=run).count(), RawResource.objects.filter(run=run).count())
    assert first[0] > 0 and first[1] > 0
    _rerun_as_redelivery(run)
    assert (Finding.objects.filter(run=run).count(), RawResource.objects.filter(run=run).count()) == first

    map_run = run_now(connection, "map", cs_user)
    versions = connection.onboarding.mappings.count()
    _rerun_as_redelivery(map_run)
    assert connection.onboarding.mappings.count() == versions


def _misshapen(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Copies where one element, top level or one level down, has another JSON shape."""
    for key, value in resource.items():
        if key == "resourceType":
            continue
        for wrong in ([value], {"x": value}, 7, "text", None):
            broken = copy.deepcopy(resource)
            broken[key] = wrong
            yield broken
        if isinstance(value, dict):
            for inner in value:
                broken = copy.deepcopy(resource)
                broken[key][inner] = [broken[key][inner]]
                yield broken
    contained = copy.deepcopy(resource)
    contained["contained"] = [{"resourceType": ["Patient"]}]
    yield contained


def test_misshapen_resources_become_findings_not_crashes(allow_extra: dict[str, Any]) -> None:
    from onboarding.mapping.profile import ProfileBuilder
    from onboarding.steps.validate import MappingRules, Validator

    hospital = allow_extra["clean"]
    patient_id = hospital.patient_ids[0]
    corpus = [httpx.get(f"{hospital.base_url}/Patient/{patient_id}", timeout=10).json()]
    for resource_type in ("Observation", "Condition", "Encounter", "MedicationRequest", "Immunization"):
        bundle = httpx.get(f"{hospital.base_url}/{resource_type}", params={"patient": patient_id}, timeout=10).json()
        corpus.extend(e["resource"] for e in bundle.get("entry", [])[:2])
    rules = MappingRules(version=1, mrn_system="urn:x", mapped_codes=frozenset(), decided_extensions=frozenset())
    validator = Validator(rules=rules, today=timezone.now().date())
    profile = ProfileBuilder()
    checked = reported = 0
    for resource in corpus:
        for broken in _misshapen(resource):
            profile.add(broken)
            if broken["resourceType"] == "Patient":
                findings = validator.check_patient(broken)
            else:
                findings = validator.check_resource(broken, patient_id=patient_id, encounter_ids=set(), birth_date=None)
            reported += bool(findings)
            checked += 1
    # None crashed the run (an exception would have ended the test); almost all are reported
    # (a JSON null, for one, is read as an absent element, which may be allowed).
    assert checked > 200
    assert reported / checked > 0.8, (reported, checked)


def test_pseudonymous_keys_survive_an_encryption_key_rotation(tenant_a: Any, settings: Any) -> None:
    from cryptography.fernet import Fernet

    before = review.patient_key(tenant_a, "patient-1")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.FIELD_ENCRYPTION_KEYS]
    assert review.patient_key(tenant_a, "patient-1") == before
    settings.PSEUDONYM_KEY = "another-pseudonym-key-0123456789-abcdefghij"
    assert review.patient_key(tenant_a, "patient-1") != before


# --- what real servers get wrong, as sandbox quirks -------------------------------------------------------


def test_validate_refuses_other_patients_resources_from_a_server_that_ignores_patient(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=30, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, defects)
    signed_off_mapping(cs_user, it_a, connection)
    defects.set_faults(ignore_patient_param=True)
    run = run_now(connection, "validate", cs_user)
    # Another patient's Observation is not this patient's "unresolved reference": it is refused, not reported.
    owner_findings = run.findings.filter(rule="references.unresolved", location__in=("subject", "patient"))
    assert owner_findings.count() == 0
    assert run.result["foreign_resources"]["Observation"] > 0
    assert any("the server ignores `patient=`" in w for w in run.result["warnings"])
    # Counted resources belong to the 10 patients pulled: no more than a clean pull of them finds.
    defects.set_faults()
    clean = run_now(connection, "validate", cs_user)
    for resource_type, count in run.result["resources"].items():
        assert count <= clean.result["resources"][resource_type], resource_type
    assert "foreign_resources" not in clean.result


def test_a_validate_run_stopped_part_way_says_so_and_diffs_only_what_both_runs_checked(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any, engineer: Any, settings: Any
) -> None:
    from tests.conftest import client_for

    planned = len(defects.patient_ids)
    set_sizes(tenant_a, map_size=planned, validate_size=planned)
    # One request at a time, so exactly one 429 stops it (concurrent requests in flight could meet a second).
    connection = ready_connection(tenant_a, cs_user, defects, pull_concurrency=1)
    signed_off_mapping(cs_user, it_a, connection)
    full = run_now(connection, "validate", cs_user)
    assert full.result["patients"] == planned and full.findings.exists()

    # A production-like throttle: 429 with RateLimit t=53 and no Retry-After, more than the run has left.
    settings.STEP_SOFT_TIME_LIMIT = 20
    defects.set_faults(rate_429=0.02, retry_after=53, throttle_style="ratelimit")
    run = run_now(connection, "validate", cs_user)
    done = run.result["patients"]
    assert run.status == RunStatus.FAILED and run.error_kind == "throttled"
    assert 0 < done < planned, done
    assert run.result["partial"] is True and run.result["planned_patients"] == planned
    assert len(run.result["patient_keys"]) == done
    assert run.error_message.startswith(f"Stopped after {done} of {planned} patients validated: ")
    assert "would have needed 53 s" in run.error_message
    assert run.progress_message.startswith(f"Stopped after {done} of {planned} patients")
    assert run.result["throttling"]["throttled"] == 1
    # The findings of the patients it did check are kept, and counted on those patients only.
    assert run.findings.exists()
    assert run.result["patients_with_error"] <= done

    page = client_for(engineer).get(f"/review/runs/{run.code}/").content.decode()
    assert f"Stopped after {done} of {planned} patients" in page
    assert f"{done} of {planned} planned" in page
    # The diff compares the patients both runs checked: the rest were not fixed, only not looked at.
    diff = review.diff_against_previous(run)
    assert diff.previous == full
    assert diff.compared_patients == done and diff.only_previous == planned - done and diff.only_this_run == 0
    assert diff.fixed_count == 0 and diff.new_count == 0
    assert diff.not_compared_count > 0
    assert 'data-testid="diff-fixed">0<' in page and 'data-testid="diff-not-compared"' in page


def test_a_smaller_sample_diffs_only_the_patients_both_runs_pulled(
    defects: Any, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    set_sizes(tenant_a, map_size=30, validate_size=30)
    connection = ready_connection(tenant_a, cs_user, defects)
    signed_off_mapping(cs_user, it_a, connection)
    first = run_now(connection, "validate", cs_user)
    set_sizes(tenant_a, map_size=30, validate_size=10)
    second = run_now(connection, "validate", cs_user)
    diff = review.diff_against_previous(second)
    # Nothing was fixed: the 20 patients no longer pulled were not checked.
    assert (diff.fixed_count, diff.new_count) == (0, 0)
    assert diff.compared_patients == 10 and diff.only_previous == 20
    kept = set(second.result["patient_keys"])
    outside = first.findings.exclude(patient_key__in=kept).values("fingerprint").distinct().count()
    assert diff.not_compared_count == outside > 0
    assert diff.unchanged == second.findings.values("fingerprint").distinct().count()
