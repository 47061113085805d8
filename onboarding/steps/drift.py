"""The drift watch's sample: a few patients of a live connection checked by the validate step's own rules.

It lives among the steps because it reuses their code (the validator and the signed mapping's rules);
monitoring (onboarding.monitoring.drift) diffs what it finds against the go-live baseline and alerts.
Nothing is stored here but the sample's findings handed over: no raw resource, no PHI.
"""

from __future__ import annotations

import logging
from collections import Counter

from celery import shared_task
from django.utils import timezone

from connections.errors import RemoteError
from connections.services import build_adapter
from onboarding.mapping import services as mappings
from onboarding.mapping.profile import CLINICAL_TYPES, is_mrn_typed
from onboarding.models import Onboarding
from onboarding.monitoring import drift
from onboarding.monitoring import policy as policies
from onboarding.review import services as review
from onboarding.steps.map import PATIENT_PAGE_SIZE
from onboarding.steps.validate import MappingRules, Validator
from onboarding.validation.fhirjson import as_items

logger = logging.getLogger(__name__)


def sample(onboarding: Onboarding, size: int) -> drift.DriftSample:
    """Pull `size` patients and their clinical resources and check them as validate does."""
    mapping = mappings.signed_mapping(onboarding) or mappings.latest_mapping(onboarding)
    if mapping is None:
        raise drift.DriftRefused("The connection has no mapping to validate against.")
    rules = MappingRules.from_mapping(mapping)
    validator = Validator(rules=rules, today=timezone.localdate())
    tenant = onboarding.tenant
    found: list[drift.SampleFinding] = []
    systems: Counter[str] = Counter()
    keys: list[str] = []
    adapter = build_adapter(onboarding.connection)
    try:
        capability = adapter.capability()
        types = [t for t in CLINICAL_TYPES if capability.supports(t, "search-type")]
        for patient in adapter.iter_raw_patients(limit=size, page_size=min(size, PATIENT_PAGE_SIZE)):
            patient_id = str(patient.get("id") or "")
            p_key = review.patient_key(tenant, patient_id)
            keys.append(p_key)
            systems.update(
                {
                    str(i.get("system"))
                    for i in as_items(patient.get("identifier"))
                    if isinstance(i, dict) and is_mrn_typed(i) and i.get("system")
                }
            )
            checked = [(f, patient) for f in validator.check_patient(patient)]
            birth = patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None
            encounters: set[str] = set()
            for resource_type in types:
                for resource in adapter.search_clinical_raw(resource_type, patient_id):
                    if resource_type == "Encounter":
                        encounters.add(str(resource.get("id")))
                    checked += [
                        (f, resource)
                        for f in validator.check_resource(
                            resource, patient_id=patient_id, encounter_ids=encounters, birth_date=birth
                        )
                    ]
            for finding, resource in checked:
                r_key = review.resource_key(tenant, finding.resource_type, str(resource.get("id") or ""))
                found.append(
                    drift.SampleFinding(
                        severity=finding.severity,
                        rule=finding.rule,
                        path=finding.path[:200],
                        resource_type=finding.resource_type,
                        message=finding.message[:500],
                        fingerprint=review.fingerprint(
                            finding.rule, finding.path, finding.resource_type, r_key, finding.discriminator
                        ),
                        patient_key=p_key,
                    )
                )
    finally:
        adapter.client.close()
    return drift.DriftSample(
        patients=len(keys),
        findings=found,
        mapped_mrn_system=rules.mrn_system,
        mrn_systems=dict(systems),
        patient_keys=keys,
    )


def run_drift_check(run_id: int) -> None:
    """Claim the drift run, pull and check its sample, and hand the result to monitoring."""
    run = drift.start_drift(run_id)
    if run is None:
        return
    size = policies.policy_for(run.onboarding.tenant).drift_sample_size
    try:
        result = sample(run.onboarding, size)
    except RemoteError as exc:
        drift.fail_drift(run_id, f"The hospital could not be read: {exc.message}")
        return
    except drift.DriftRefused as exc:
        drift.fail_drift(run_id, str(exc))
        return
    except Exception:
        # Never left "running": the run says it could not finish, and the log has the traceback.
        logger.exception("Drift run %s crashed", run_id)
        drift.fail_drift(run_id, "The drift check stopped on an unexpected error; an engineer can see it in the log.")
        raise
    drift.finish_drift(run_id, result)


@shared_task(
    name=drift.RUN_TASK,
    acks_late=True,
    soft_time_limit=drift.RUN_SOFT_LIMIT_S,
    time_limit=drift.RUN_HARD_LIMIT_S,
    ignore_result=True,
)
def run_drift(run_id: int) -> None:
    """A drift check on the monitoring queue; a second delivery finds the run claimed and does nothing."""
    run_drift_check(run_id)
