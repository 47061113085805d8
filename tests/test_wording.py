"""Wording on the pages: counts agree with their nouns, a waiver's reason ends with one full stop, the
policy's labels read as sentences, and a step chip's state is written out, not only coloured."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.template import Context, Template
from django.urls import reverse
from django.utils import timezone

from onboarding.engine import services
from onboarding.models import Finding, StepRun, Waiver
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def validation_run(tenant_a: Any, engineer: Any) -> StepRun:
    """A finished validation with 1 error and 14 warnings, one group waived with a reason that ends in a stop."""
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a, name="Worded EHR"))
    run = StepRun.objects.create(
        onboarding=onboarding,
        step="validate",
        attempt=1,
        status="failed",
        finished_at=timezone.now(),
        result={
            "patients": 10,
            "findings": {"error": 1, "warning": 14},
            "error_share": 10.0,
            "warning_share": 100.0,
            "thresholds": {"max_error_patient_pct": 0.0, "max_warning_patient_pct": 100.0},
            "mapping_version": 1,
        },
    )
    rows = [("error", "structure.invalid", "Observation.valueQuantity.value")]
    rows += [("warning", "patient.birth-date-missing", "Patient.birthDate")] * 14
    Finding.objects.bulk_create(
        Finding(
            run=run,
            severity=severity,
            rule=rule,
            resource_type=path.split(".")[0],
            path=path,
            message="m",
            patient_key=f"p{n}",
            fingerprint=f"f{n}",
        )
        for n, (severity, rule, path) in enumerate(rows)
    )
    Waiver.objects.create(
        tenant=tenant_a,
        rule="patient.birth-date-missing",
        path="Patient.birthDate",
        reason="Not recorded for newborns.",
        approver=engineer,
        approver_label=engineer.username,
        expires_at=timezone.now() + timedelta(days=30),
    )
    return run


def test_counts_agree_with_their_nouns_on_the_review_run_and_evidence_pages(
    validation_run: StepRun, engineer: Any, cs_user: Any
) -> None:
    review = client_for(engineer).get(reverse("review_run", kwargs={"code": validation_run.code})).content.decode()
    assert "1 error, 14 warnings" in review
    assert "1 errors" not in review
    run_page = client_for(cs_user).get(reverse("run_detail", kwargs={"code": validation_run.code})).content.decode()
    assert "1 error, 14 warnings" in run_page
    pack = client_for(cs_user).get(reverse("evidence_pack", kwargs={"code": validation_run.onboarding.code}))
    assert "Findings: 1 error, 14 warnings." in pack.content.decode()


def test_a_waiver_reason_ending_in_a_full_stop_gets_no_second_one(validation_run: StepRun, engineer: Any) -> None:
    page = client_for(engineer).get(reverse("review_run", kwargs={"code": validation_run.code})).content.decode()
    assert "Not recorded for newborns. Waived findings still show" in page
    assert "newborns.." not in page


def test_the_sentence_filter_ends_text_with_one_full_stop() -> None:
    render = Template("{{ a|sentence }}|{{ b|sentence }}|{{ c|sentence }}|{{ d|sentence }}").render(
        Context({"a": "Not recorded", "b": "Done. ", "c": "Why?", "d": ""})
    )
    assert render == "Not recorded.|Done.|Why?|"


def test_the_validation_policy_labels_read_as_sentences(tenant_a: Any, cs_user: Any) -> None:
    page = client_for(cs_user).get(reverse("validation_policy", kwargs={"code": tenant_a.code})).content.decode()
    assert "Most patients with an error (%)" in page
    assert "Most patients with a warning (%)" in page
    assert "at most % of patients" not in page


def test_step_chips_write_their_state_out_not_only_in_colour_and_tooltip(validation_run: StepRun, cs_user: Any) -> None:
    page = client_for(cs_user).get(reverse("dashboard")).content.decode()
    chips = re.findall(r'<li class="step state-[^"]+" data-step="(\w+)"[^>]*>(.*?)</li>', page)
    assert len(chips) == 6
    visible = {step: re.sub(r"<[^>]+>", " ", inner).split() for step, inner in chips}
    assert visible["validate"] == ["Validate", "failed"]
    assert visible["configure"] == ["Configure", "not", "started"]
    assert " ".join(visible["go_live"]) == "Go live not started"
