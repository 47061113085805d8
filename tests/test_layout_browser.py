"""In Chromium, at 1,366 px and at 390 px wide: the review page, the evidence pack and the dashboard
(and the mapping page) never scroll sideways; a table wider than the screen scrolls inside its card.
At 1,366 px the evidence pack's tables fit their cards without scrolling at all.

Set BROWSER_SCREENSHOTS to a directory to keep a full-page screenshot of each page at each width.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from onboarding.engine import services
from onboarding.models import Finding, StepRun
from tests.browser import assert_accessible, log_in
from tests.evidence_helpers import evidence_onboarding
from tests.factories import DEFAULT_PASSWORD, ConnectionFactory, TenantFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = (1366, 390)
LONG_PATH = "Observation.component.valueCodeableConcept.coding"
LONG_MESSAGE = (
    "Local code GLU-FASTING-VENOUS (https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72) is not "
    "mapped to LOINC: add it to the mapping."
)
PROFILE = {
    "patients": 10,
    "identifier_systems": [
        {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "patients": 10, "share": 100.0, "mrn_typed": True},
        {"system": "urn:oid:2.16.840.1.113883.3.13.99", "patients": 3, "share": 30.0, "mrn_typed": True},
    ],
    "suggested_mrn_system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14",
    "mrn_reason": "the vendor's MRN system, carried by 100.0% of patients",
    "elements": [],
    "extensions": [],
}


@pytest.fixture
def world(tenant_a: Any, cs_user: Any, it_a: Any, engineer: Any) -> dict[str, Any]:
    """The evidence pack's onboarding, two validation runs over different patients, and busy dashboard rows."""
    onboarding = evidence_onboarding(tenant=tenant_a, cs=cs_user, it=it_a, engineer=engineer)
    first = onboarding.runs.get(step="validate", attempt=1)
    first.result = {**first.result, "patient_keys": [f"p{n}" for n in range(6)], "findings": {"error": 2}}
    first.save(update_fields=["result"])
    first.findings.update(patient_key="p5")
    second = StepRun.objects.create(
        onboarding=onboarding,
        step="validate",
        attempt=2,
        status="failed",
        finished_at=timezone.now(),
        error_message="3 of 3 patients have an error; at most 0.0% may.",
        result={
            "patients": 3,
            "patient_keys": ["p0", "p1", "p2"],
            "findings": {"error": 4, "warning": 1},
            "error_share": 100.0,
            "warning_share": 33.3,
            "thresholds": {"max_error_patient_pct": 0.0, "max_warning_patient_pct": 100.0},
            "mapping_version": 3,
        },
    )
    rows = [("error", "codes.unmapped-local", LONG_PATH, f"p{n % 3}") for n in range(4)]
    rows.append(("warning", "extensions.unknown", "Patient.extension", "p1"))
    Finding.objects.bulk_create(
        Finding(
            run=second,
            severity=severity,
            rule=rule,
            resource_type=path.split(".")[0],
            path=path,
            location="component[0].valueCodeableConcept.coding[0]",
            message=LONG_MESSAGE,
            patient_key=patient,
            resource_key=f"r{n}",
            fingerprint=f"second-{n}",
        )
        for n, (severity, rule, path, patient) in enumerate(rows)
    )
    StepRun.objects.create(
        onboarding=onboarding,
        step="map",
        attempt=1,
        status="passed",
        finished_at=timezone.now(),
        result={"profile": PROFILE},
    )
    # More hospitals on the dashboard, with long names and a pipeline each.
    for n in range(3):
        tenant = TenantFactory(name=f"Saint Bartholomew's Regional Medical Center and Children's Hospital {n}")
        other = services.ensure_onboarding(
            ConnectionFactory(tenant=tenant, name=f"Oracle Health Millennium production FHIR R4 endpoint {n}")
        )
        StepRun.objects.create(onboarding=other, step="configure", attempt=1, status="passed")
        StepRun.objects.create(onboarding=other, step="test", attempt=1, status="failed", error_kind="auth")
    return {"onboarding": onboarding, "review_run": second}


def horizontal_overflow(page: Page) -> dict[str, Any]:
    return page.evaluate(
        """() => ({
            scrollWidth: document.documentElement.scrollWidth,
            innerWidth: window.innerWidth,
            tables: [...document.querySelectorAll('.table-scroll')].map((box) => ({
                overflow: box.scrollWidth - box.clientWidth,
                inCard: !!box.closest('.card'),
            })),
        })"""
    )


def test_pages_never_scroll_sideways_at_desktop_and_phone_widths(
    browser: Browser, live_server: Any, world: dict[str, Any], engineer: Any
) -> None:
    onboarding = world["onboarding"]
    pages = {
        "review": reverse("review_run", kwargs={"code": world["review_run"].code}),
        "evidence": reverse("evidence_pack", kwargs={"code": onboarding.code}),
        "dashboard": reverse("dashboard") + "?scope=all",
        "mapping": reverse("mapping", kwargs={"code": onboarding.connection.code}),
    }
    shots = os.environ.get("BROWSER_SCREENSHOTS", "")
    measured = []
    for width in WIDTHS:
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        log_in(page, live_server.url, engineer.username, DEFAULT_PASSWORD)
        for name, url in pages.items():
            page.goto(live_server.url + url)
            expect(page.locator("h1").first).to_be_visible()
            if name == "review":
                # The diff compares only the patients both runs checked, and lists the rest as not compared.
                expect(page.get_by_test_id("diff-compared")).to_have_text("3")
                expect(page.get_by_test_id("diff-not-compared")).to_contain_text("Not compared")
            if name == "mapping":
                expect(page.get_by_test_id("mrn-choice")).to_have_count(2)
            assert_accessible(page)
            if shots:
                page.screenshot(path=f"{shots}/{name}-{width}.png", full_page=True)
            sizes = horizontal_overflow(page)
            measured.append(f"{name}@{width}: scrollWidth {sizes['scrollWidth']} / innerWidth {sizes['innerWidth']}")
            assert sizes["scrollWidth"] <= sizes["innerWidth"], measured[-1]
            assert all(box["inCard"] or name == "dashboard" for box in sizes["tables"]), name
            if name == "evidence" and width == 1366:
                # The pack's tables fit their cards outright at a laptop's width.
                assert [box["overflow"] for box in sizes["tables"]] == [0] * len(sizes["tables"]), sizes
        context.close()
    print("\n".join(measured))
