"""An onboarding with history for the evidence pack's tests: attempts, a signed mapping, a failed
validation with findings and a waiver."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from connections.services import create_connection
from onboarding.engine import services
from onboarding.models import Finding, Mapping, StepRun, Waiver
from tests.factories import sign_mapping_off

MAPPING_HASH = "9f2c4e" * 10 + "abcd"
SECRET = "evidence-test-secret"


def evidence_onboarding(*, tenant: Any, cs: Any, it: Any, engineer: Any) -> Any:
    """An onboarding with history: attempts, a signed mapping, a failed validation with a waiver."""
    conn = create_connection(
        user=cs,
        tenant=tenant,
        fields={
            "name": "Alpha main FHIR",
            "vendor": "meditech",
            "base_url": "https://fhir.alpha.example.org/r4",
            "auth_method": "basic",
            "client_id": "alpha-portal",
        },
        secret=SECRET,
    )
    onboarding = services.ensure_onboarding(conn)
    configure = services.start_step(user=cs, onboarding=onboarding, step="configure")
    StepRun.objects.filter(pk=configure.pk).update(status="passed", finished_at=timezone.now())
    StepRun.objects.create(
        onboarding=onboarding,
        step="test",
        attempt=1,
        status="failed",
        finished_at=timezone.now(),
        error_kind="auth",
        error_message="The hospital refused the credentials.",
    )
    StepRun.objects.create(onboarding=onboarding, step="test", attempt=2, status="passed", finished_at=timezone.now())
    mapping = Mapping.objects.create(
        onboarding=onboarding,
        version=3,
        source="editor",
        mrn_system="urn:oid:2.16.840.1.113883.3.1",
        content_hash=MAPPING_HASH,
    )
    sign_mapping_off(cs=cs, it=it, mapping=mapping, comment="MRN system confirmed with our registration team.")
    validate = StepRun.objects.create(
        onboarding=onboarding,
        step="validate",
        attempt=1,
        status="failed",
        finished_at=timezone.now(),
        result={
            "patients": 10,
            "patients_with_error": 2,
            "error_share": 20.0,
            "waived": 1,
            "mapping_version": 3,
            "thresholds": {"max_error_patient_pct": 0.0, "max_warning_patient_pct": 100.0},
        },
    )

    for severity in ("error", "error", "warning"):
        Finding.objects.create(
            run=validate,
            severity=severity,
            rule="us-core-must-support",
            resource_type="Patient",
            path="Patient.gender",
            message="Must-support element missing",
            fingerprint=f"fp-{severity}-{Finding.objects.count()}",
        )
    Waiver.objects.create(
        tenant=tenant,
        rule="us-core-must-support",
        path="Patient.birthDate",
        reason="Not recorded for newborns.",
        approver=engineer,
        approver_label=engineer.username,
        expires_at=timezone.now() + timedelta(days=90),
    )
    return onboarding
