"""The MRN system is picked from the identifier systems the map step found, with their shares, and
one not in the sample can still be typed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from onboarding.engine import services
from onboarding.mapping import services as mappings
from onboarding.models import RunStatus, StepRun
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db

MRN = "http://hospital.example.org/mrn"
ENTERPRISE = "http://hospital.example.org/enterprise-id"
LEGACY = "urn:oid:2.16.840.1.113883.3.13.99"
PROFILE = {
    "patients": 10,
    "identifier_systems": [
        {"system": MRN, "patients": 10, "share": 100.0, "mrn_typed": True},
        {"system": ENTERPRISE, "patients": 10, "share": 100.0, "mrn_typed": False},
        {"system": LEGACY, "patients": 3, "share": 30.0, "mrn_typed": True},
    ],
    "suggested_mrn_system": MRN,
    "mrn_reason": "typed as MRN (v2-0203 MR) on 100.0% of patients",
    "elements": [],
    "extensions": [],
}


@pytest.fixture
def mapped(tenant_a: Any) -> Any:
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a, name="MRN EHR"))
    StepRun.objects.create(
        onboarding=onboarding,
        step="map",
        attempt=1,
        status=RunStatus.PASSED,
        finished_at=timezone.now(),
        result={"profile": PROFILE},
    )
    return mappings.record_map_result(onboarding=onboarding, profile=PROFILE, run=None)


def choices(page: str) -> dict[str, str]:
    """Each radio choice's system and its visible text."""
    found = re.findall(r'data-testid="mrn-choice" data-system="([^"]+)">(.*?)</label>', page, re.S)
    return {system: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip() for system, text in found}


def test_the_mapping_page_offers_the_profiles_systems_with_their_shares(mapped: Any, cs_user: Any) -> None:
    page = client_for(cs_user).get(reverse("mapping", kwargs={"code": mapped.onboarding.connection.code}))
    html = page.content.decode()
    found = choices(html)
    assert list(found) == [MRN, ENTERPRISE, LEGACY]
    assert "100.0% of patients (10 of 10)" in found[MRN] and "suggested" in found[MRN]
    assert "30.0% of patients (3 of 10)" in found[LEGACY] and "typed as MRN" in found[LEGACY]
    assert 'type="radio" name="system"' in html
    assert 'data-testid="mrn-choice-other"' in html and 'name="other_system"' in html
    assert 'list="identifier-systems"' not in html  # no free-text box with suggestions any more


def test_picking_a_system_or_typing_another_saves_it(mapped: Any, cs_user: Any) -> None:
    client = client_for(cs_user)
    url = reverse("mapping_mrn", kwargs={"code": mapped.onboarding.connection.code})
    client.post(url, {"version": mapped.version, "system": LEGACY, "other_system": ""})
    picked = mappings.latest_mapping(mapped.onboarding)
    assert picked is not None and picked.mrn_system == LEGACY

    client.post(url, {"version": picked.version, "system": "other", "other_system": "  urn:oid:1.2.3.4  "})
    typed = mappings.latest_mapping(mapped.onboarding)
    assert typed is not None and typed.mrn_system == "urn:oid:1.2.3.4"
    page = client.get(reverse("mapping", kwargs={"code": mapped.onboarding.connection.code})).content.decode()
    # A system not in the sample: "Another system" is chosen and holds it.
    assert re.search(r'value="other" checked>', page) and 'value="urn:oid:1.2.3.4"' in page

    response = client.post(url, {"version": typed.version, "system": "other", "other_system": ""}, follow=True)
    assert "Choose the identifier system that carries the MRN." in response.content.decode()
