"""The evidence pack pages: printable HTML, a standalone HTML download, a PDF file and JSON.

Whoever may read a hospital's audit trail may download its evidence packs (its hospital IT and
vendor staff); another hospital's pack is a 404 like any other object. Each download is itself
an audit event.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from onboarding.engine.selectors import get_onboarding_for_user
from onboarding.evidence import services as evidence
from onboarding.models import Onboarding
from portal.middleware import api_equivalent


@login_required
@require_GET
def evidence_pack(request: HttpRequest, code: str) -> HttpResponse:
    """The pack as a page to read and print; `?download=1` gives a standalone file to keep."""
    onboarding, pack = _pack_for(request, code, fmt="html")
    download = request.GET.get("download") == "1"
    response = render(request, "onboarding/evidence.html", evidence.page_context(onboarding, pack, standalone=download))
    if download:
        response["Content-Disposition"] = f'attachment; filename="{_filename(onboarding)}.html"'
    return response


@api_equivalent("api_evidence_pack_pdf")
@login_required
@require_GET
def evidence_pack_pdf(request: HttpRequest, code: str) -> HttpResponse:
    """The pack as a PDF file, for a hospital's security review: the standalone page, typeset by WeasyPrint."""
    onboarding, pack = _pack_for(request, code, fmt="pdf")
    return pdf_response(onboarding, evidence.pack_pdf(onboarding, pack, request=request))


def pdf_response(onboarding: Onboarding, pdf: bytes) -> HttpResponse:
    """The PDF as a download named after the onboarding and the day (the page and the API give the same)."""
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{_filename(onboarding)}.pdf"'
    return response


@api_equivalent("api_evidence_pack")
@login_required
@require_GET
def evidence_pack_json(request: HttpRequest, code: str) -> HttpResponse:
    """The pack as a JSON download (the API's ``/api/v1/onboardings/<code>/evidence/`` gives the same)."""
    onboarding, pack = _pack_for(request, code, fmt="json")
    response = HttpResponse(json.dumps(pack, indent=2, ensure_ascii=False), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(onboarding)}.json"'
    return response


def _pack_for(request: HttpRequest, code: str, *, fmt: str) -> tuple[Onboarding, dict[str, Any]]:
    onboarding = get_onboarding_for_user(request.user, code)
    return onboarding, evidence.export_pack(user=request.user, onboarding=onboarding, fmt=fmt, request=request)


def _filename(onboarding: Onboarding) -> str:
    return f"evidence-{onboarding.code}-{timezone.now():%Y%m%d}"
