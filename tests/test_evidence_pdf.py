"""The evidence pack as a PDF file (WeasyPrint): its six sections, readable times with their zone, no
secret, audited like the other exports, and another hospital's IT get 404.

Set BROWSER_SCREENSHOTS to a directory to keep the PDF there (render it with `pdftoppm -png`).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from pypdf import PdfReader

from portal.models import AuditEvent
from tests.conftest import client_for
from tests.evidence_helpers import MAPPING_HASH, SECRET, evidence_onboarding

pytestmark = pytest.mark.django_db

SECTIONS = (
    "1. Timeline of steps and attempts",
    "2. Gates",
    "3. Validation summary",
    "4. Load-test summary",
    "5. Connection security facts",
    "6. Audit extract",
)


@pytest.fixture
def onboarding(tenant_a: Any, cs_user: Any, it_a: Any, engineer: Any) -> Any:
    return evidence_onboarding(tenant=tenant_a, cs=cs_user, it=it_a, engineer=engineer)


def pdf_text(data: bytes) -> tuple[PdfReader, str]:
    reader = PdfReader(io.BytesIO(data))
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    # Words a table cell wrapped are joined again, so phrases can be looked for whole.
    return reader, re.sub(r"\s+", " ", text)


def test_the_evidence_pack_pdf_has_the_six_sections_and_readable_times(onboarding: Any, it_a: Any) -> None:
    response = client_for(it_a).get(reverse("evidence_pack_pdf", kwargs={"code": onboarding.code}))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert re.fullmatch(r'attachment; filename="evidence-[0-9a-f-]+-\d{8}\.pdf"', response["Content-Disposition"])
    data = response.content
    assert data.startswith(b"%PDF-")
    if shots := os.environ.get("BROWSER_SCREENSHOTS", ""):
        Path(shots, "evidence-pack.pdf").write_bytes(data)

    reader, text = pdf_text(data)
    for heading in SECTIONS:
        assert heading in text, heading
    positions = [text.index(heading) for heading in SECTIONS]
    assert positions == sorted(positions)  # in order
    assert "Alpha Medical Center" in text and "Alpha main FHIR" in text
    assert "MRN system confirmed with our registration team." in text
    assert MAPPING_HASH[:32] in text.replace(" ", "")
    assert "The hospital refused the credentials." in text
    assert "Not recorded for newborns." in text
    # Times in the hospital's zone (America/Chicago), labelled; never a raw ISO timestamp.
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d C[SD]T", text)
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text)
    assert SECRET not in text
    # Landscape pages with a running head and numbers.
    first = reader.pages[0].mediabox
    assert float(first.width) > float(first.height)
    assert f"Page 1 of {len(reader.pages)}" in text
    event = AuditEvent.objects.filter(action="evidence.export").latest("id")
    assert event.detail == {"format": "pdf"} and event.actor == it_a


def test_the_page_links_the_pdf_and_another_hospital_gets_404(onboarding: Any, it_a: Any, it_b: Any) -> None:
    page = client_for(it_a).get(reverse("evidence_pack", kwargs={"code": onboarding.code})).content.decode()
    assert f'href="{reverse("evidence_pack_pdf", kwargs={"code": onboarding.code})}"' in page
    assert client_for(it_b).get(reverse("evidence_pack_pdf", kwargs={"code": onboarding.code})).status_code == 404
    assert not AuditEvent.objects.filter(action="evidence.export", actor=it_b).exists()


def test_the_api_gives_the_same_pdf_to_a_token(onboarding: Any, it_a: Any, it_b: Any) -> None:
    from rest_framework.test import APIClient

    from portal.tokens import issue_token

    def with_token(user: Any) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=user)[1]}")
        return client

    url = reverse("api_evidence_pack_pdf", kwargs={"code": onboarding.code})
    response = with_token(it_a).get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    _, text = pdf_text(response.content)
    assert all(heading in text for heading in SECTIONS)
    assert with_token(it_b).get(url).status_code == 404
    # A token sent to the page's address is told where the API serves it.
    page = with_token(it_a).get(reverse("evidence_pack_pdf", kwargs={"code": onboarding.code}))
    assert page.status_code == 401 and page.json()["api"] == url
