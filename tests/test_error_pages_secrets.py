"""The debug 500 page shows no secret, DEBUG on or off: not in frame locals, POST fields or query strings.

With DEBUG on (the embedded default) Django's technical 500 page lists every frame's local
variables. A crash while a JSON body is being parsed has that body, password and all, in the
parser's and the JSON decoder's locals; the page must show their names, never their values.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from portal import safejson
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

# Made at run time: the debug page shows source lines around each frame, this module's included.
PASSWORD = "Sentinel-Pa55word-" + secrets.token_hex(8)
SECRET = "sentinel-client-secret-" + secrets.token_hex(8)


def _crash_while_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(data: Any, max_depth: int) -> bool:
        raise RuntimeError("simulated crash while the body is parsed")

    monkeypatch.setattr(safejson, "nesting_exceeds", crash)


@pytest.mark.parametrize("debug", [True, False])
def test_a_crash_while_parsing_a_token_request_shows_no_password(
    debug: bool, monkeypatch: pytest.MonkeyPatch, cs_user: Any
) -> None:
    monkeypatch.setattr(django_settings, "DEBUG", debug)
    _crash_while_parsing(monkeypatch)
    client = Client(raise_request_exception=False)
    # Enough brackets that the depth check runs (and crashes) with the body in its locals.
    body = json.dumps({"username": "cs", "password": PASSWORD, "padding": [[]] * 200})
    # With DEBUG on, Django answers HTML or plain text by the Accept header; off, its plain 500 page.
    for accept in ("text/html", "application/json") if debug else ("*/*",):
        response = client.post(
            "/api/v1/auth/token/?access_token=" + SECRET, body, content_type="application/json", HTTP_ACCEPT=accept
        )
        assert response.status_code == 500
        page = response.content.decode(errors="replace")
        assert ("simulated crash while the body is parsed" in page) is debug  # the debug page did render
        assert PASSWORD not in page and SECRET not in page
        if debug and accept == "text/html":
            # The frames are listed, with their variables' names and types but not their values.
            assert "value hidden" in page and "max_depth" in page


def test_a_crash_while_parsing_a_connection_with_its_secret_shows_no_secret(
    monkeypatch: pytest.MonkeyPatch, cs_user: Any, tenant_a: Any
) -> None:
    monkeypatch.setattr(django_settings, "DEBUG", True)
    _crash_while_parsing(monkeypatch)
    client = client_for(cs_user)
    client.raise_request_exception = False
    body = json.dumps(
        {
            "tenant": str(tenant_a.code),
            "name": "Main EHR",
            "base_url": "https://ehr.example.org/fhir",
            "auth_method": "client_credentials",
            "client_id": "portal",
            "secret": SECRET,
            "padding": [[]] * 200,
        }
    )
    response = client.post("/api/v1/connections/", body, content_type="application/json", HTTP_ACCEPT="text/html")
    assert response.status_code == 500
    page = response.content.decode(errors="replace")
    assert "simulated crash while the body is parsed" in page
    assert SECRET not in page
