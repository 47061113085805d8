"""The mapping CSV import's limits, through the import page: cell size, the line named, the row cap.

And a hospital IT person, who may not import, gets a 403 logged as one line, not a traceback.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from django.urls import reverse

from onboarding.engine import services
from onboarding.mapping import services as mappings
from onboarding.models import Mapping, StepRun
from tests.conftest import client_for
from tests.factories import ConnectionFactory

pytestmark = pytest.mark.django_db

HEADER = "element,source_system,source_code,source_display,count,target_system,target_code,target_display\n"
GOOD = "Observation.code,urn:local,GLU,GLUCOSE,4,LOINC,2339-0,Glucose\n"


@pytest.fixture
def mapped(tenant_a: Any) -> Mapping:
    connection = ConnectionFactory(tenant=tenant_a)
    onboarding = services.ensure_onboarding(connection)
    run = StepRun.objects.create(onboarding=onboarding, step="map", attempt=1, status="passed")
    profile = {
        "elements": [
            {
                "element": "Observation.code",
                "local_codes": [{"system": "urn:local", "code": "GLU", "display": "GLUCOSE", "count": 4}],
            }
        ],
        "extensions": [],
        "suggested_mrn_system": "http://hospital.example.org/mrn",
    }
    return mappings.record_map_result(onboarding=onboarding, profile=profile, run=run)


def post_import(client: Any, mapping: Mapping, text: str) -> Any:
    upload = io.BytesIO(text.encode())
    upload.name = "mapping.csv"
    url = reverse("mapping_import_csv", kwargs={"code": mapping.onboarding.connection.code})
    return client.post(url, {"version": mapping.version, "file": upload})


def errors_on(response: Any) -> str:
    assert response.status_code == 400, response.status_code
    page = response.content.decode()
    assert 'data-testid="import-errors"' in page
    return page


def test_a_huge_source_display_is_refused_on_its_line(mapped: Mapping, cs_user: Any) -> None:
    huge = "Observation.code,urn:local,NEW," + "x" * 130_000 + ",1,LOINC,2339-0,Glucose\n"
    page = errors_on(post_import(client_for(cs_user), mapped, HEADER + GOOD + huge))
    assert "Line 3: source_display is longer than 1,000 characters." in page
    assert Mapping.objects.count() == 1


def test_a_cell_beyond_the_parsers_limit_is_reported_on_the_line_it_starts(mapped: Mapping, cs_user: Any) -> None:
    # Line 3 holds a quoted display over two lines, so the row after it starts on line 5.
    two_lines = 'Observation.code,urn:local,TWO,"first line\nsecond line",1,LOINC,2339-0,Glucose\n'
    beyond = "Observation.code,urn:local,BIG," + "y" * 200_000 + ",1,LOINC,2339-0,Glucose\n"
    page = errors_on(post_import(client_for(cs_user), mapped, HEADER + GOOD + two_lines + beyond))
    assert "Line 5: A cell is longer than 1,000 characters." in page
    assert Mapping.objects.count() == 1


def test_blank_rows_count_towards_the_row_cap(mapped: Mapping, cs_user: Any) -> None:
    text = HEADER + GOOD + "\n" * mappings.MAX_CSV_ROWS
    page = errors_on(post_import(client_for(cs_user), mapped, text))
    assert f"Line {mappings.MAX_CSV_ROWS + 2}: The file has more than {mappings.MAX_CSV_ROWS} rows" in page
    assert Mapping.objects.count() == 1
    # Under the cap, blank rows are skipped as before.
    fine = post_import(client_for(cs_user), mapped, HEADER + "\n\n" + GOOD + ",,,,,,,\n")
    assert fine.status_code == 302 and Mapping.objects.count() == 2


def test_a_refused_import_logs_one_line_without_a_traceback(
    mapped: Mapping, it_a: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="django.request")
    response = post_import(client_for(it_a), mapped, HEADER + GOOD)
    assert response.status_code == 403
    refusals = [r for r in caplog.records if r.name == "django.request" and "Forbidden" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].exc_info is None and not refusals[0].exc_text
    assert "Traceback" not in caplog.text
    assert Mapping.objects.count() == 1
