"""JSON nested tens of thousands of levels deep: a typed error from a hospital, a 400 from the API.

A CapabilityStatement, a search page or an error body nested 50,000 levels deep comes from a sandbox
with the ``deep_json`` fault switched on; the API gets the same nesting (30,000 and 100,000 levels)
in request bodies over HTTP.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from connections.errors import ErrorKind
from connections.sandbox.server import DEEP_JSON_LEVELS
from onboarding.models import RunStatus
from portal import safejson
from tests.conftest import client_for
from tests.test_steps import assert_failed_cleanly, run_now, sandbox_connection

pytestmark = pytest.mark.django_db


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_the_depth_cap_counts_containers_not_brackets_in_strings() -> None:
    assert safejson.loads('{"a":' * 100 + "1" + "}" * 100) is not None
    for levels in (101, 1200, 30_000, 100_000):
        with pytest.raises(safejson.JSONTooDeep):
            safejson.loads(nested(levels))
        with pytest.raises(safejson.JSONTooDeep):
            safejson.loads(nested(levels).encode("utf-16"))
    # Brackets and escaped quotes inside strings are text, not nesting.
    text = json.dumps({"display": "[" * 500 + '\\"{' * 300, "code": ["]]]"]})
    assert safejson.loads(text)["code"] == ["]]]"]
    assert safejson.loads(json.dumps([{"a": [{"b": "x"}]}] * 10_000))[0]["a"][0]["b"] == "x"
    with pytest.raises(ValueError, match="Expecting"):
        safejson.loads('{"cut": [')


@pytest.fixture
def ready(sandbox_allowlist: str, clean_faults: None, tenant_a: Any, cs_user: Any) -> dict[str, Any]:
    return {"tenant": tenant_a, "user": cs_user}


def test_a_deep_capability_statement_fails_configure_as_bad_payload(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    sandboxes["generic"].set_faults(deep_json="metadata")
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    run = assert_failed_cleanly(conn, "configure", ready["user"], ErrorKind.BAD_PAYLOAD.value)
    assert "nested more than 100 levels deep" in run.error_message and "CapabilityStatement" in run.error_message


def test_a_deep_search_page_fails_the_test_step_with_its_checks_kept(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    sandboxes["generic"].set_faults(deep_json="search")
    run = assert_failed_cleanly(conn, "test", ready["user"], ErrorKind.BAD_PAYLOAD.value)
    assert f"more than {safejson.MAX_DEPTH} levels" in run.error_message
    checks = {check["id"]: (check["outcome"], check.get("error_kind")) for check in run.result["checks"]}
    assert checks == {
        "auth": ("passed", ""),
        "patient_search": ("failed", "bad_payload"),
        # The paging check the diagnostics added is skipped too: there is no first page to follow.
        "patient_paging": ("skipped", None),
        "patient_read": ("skipped", None),
        "observation_search": ("skipped", None),
    }


def test_a_deep_error_body_keeps_the_status_kind_and_the_checks(
    ready: dict[str, Any], sandboxes: dict[str, Any]
) -> None:
    conn = sandbox_connection(ready["tenant"], sandboxes["generic"])
    assert run_now(conn, "configure", ready["user"]).status == RunStatus.PASSED
    sandboxes["generic"].set_faults(deep_json="error")
    # The server said 500: that is what failed, and its unreadable body is noted, not fatal.
    run = assert_failed_cleanly(conn, "test", ready["user"], ErrorKind.SERVER_ERROR.value)
    outcomes = [check["outcome"] for check in run.result["checks"]]
    assert outcomes == ["passed", "failed", "skipped", "skipped", "skipped"]  # with the paging check
    assert DEEP_JSON_LEVELS >= 30_000


def _deep_body(levels: int, **fields: Any) -> str:
    head = json.dumps(fields)[:-1]
    return f'{head}, "extra": {nested(levels)}}}'


@pytest.mark.parametrize("levels", [30_000, 100_000])
def test_a_deep_request_body_is_a_400_on_the_api(levels: int, cs_user: Any, tenant_a: Any) -> None:
    body = _deep_body(levels, tenant=str(tenant_a.code), name="Main EHR", base_url="https://ehr.example.org/fhir")
    response = client_for(cs_user).post("/api/v1/connections/", body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert "nested more than 100 levels deep" in response.json()["detail"]

    anonymous = Client().post(
        reverse("api_token"), _deep_body(levels, username="cs", password="x"), content_type="application/json"
    )
    assert anonymous.status_code == 400, anonymous.content[:300]
    assert "nested more than 100 levels deep" in anonymous.json()["detail"]


def test_a_shallow_body_is_still_read(cs_user: Any) -> None:
    response = client_for(cs_user).post(
        "/api/v1/connections/", _deep_body(50, name="Main EHR"), content_type="application/json"
    )
    assert response.status_code == 400
    assert "nested" not in response.content.decode() and "tenant" in response.json()
