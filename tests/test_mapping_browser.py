"""In Chromium: customer success maps local codes inline, exports and re-imports the CSV, sees a bad
file refused row by row with nothing changed; then hospital IT sign the mapping off."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from connections.sandbox.defects import LOCAL_LAB_CODES
from onboarding.mapping import services as mappings
from onboarding.models import Mapping, RunStatus
from tests.browser import assert_accessible, log_in
from tests.factories import DEFAULT_PASSWORD
from tests.test_map_step import ready_connection, run_on_worker, set_sizes

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("BROWSER_SCREENSHOTS", "")

LOINC_OF = {local: (loinc, f"LOINC test {loinc}") for loinc, (local, _) in LOCAL_LAB_CODES.items()}


def watch(page: Page) -> list[str]:
    """Collect script errors and console errors (a CSP violation shows up as one).

    Answers with an error status are left out: the bad import's 400 is on purpose.
    """
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    return problems


def version_on_page(page: Page) -> int:
    return int(page.get_by_test_id("mapping-version").inner_text())


def import_file(page: Page, path: Path) -> None:
    page.get_by_test_id("csv-file").set_input_files(str(path))
    page.get_by_test_id("import-csv").click()


def test_customer_success_maps_inline_round_trips_csv_and_hospital_it_signs_off(
    browser: Browser,
    live_server: Any,
    celery_worker_process: Any,
    sandboxes: dict[str, Any],
    sandbox_allowlist: str,
    clean_faults: None,
    tenant_a: Any,
    cs_user: Any,
    it_a: Any,
    tmp_path: Path,
) -> None:
    set_sizes(tenant_a, map_size=20, validate_size=10)
    connection = ready_connection(tenant_a, cs_user, sandboxes["defects"], runner=run_on_worker, name="Alpha FHIR")
    first_map = run_on_worker(connection, "map", cs_user)
    assert first_map.status == RunStatus.FAILED and first_map.error_kind == "mapping_incomplete"

    page = browser.new_page(accept_downloads=True)
    problems = watch(page)
    log_in(page, live_server.url, cs_user.username, DEFAULT_PASSWORD)
    page.goto(f"{live_server.url}/c/{connection.code}/")
    assert_accessible(page)
    page.get_by_test_id("mapping-link").click()
    expect(page.locator("h1")).to_have_text("Mapping")
    expect(page.get_by_test_id("profile")).to_contain_text("Identifier systems on patients")
    assert_accessible(page)
    rows = page.get_by_test_id("code-row")
    codes = [rows.nth(i).get_attribute("data-code") for i in range(rows.count())]
    assert len(codes) >= 2 and all(code in LOINC_OF for code in codes)
    expect(page.get_by_test_id("coverage")).to_contain_text("map")

    # Map every local code inline (htmx: the row turns into a form and back, the version ticks up).
    for code in codes:
        row = page.locator(f"[data-testid=code-row][data-code='{code}']")
        row.get_by_test_id("edit-code").click()
        form = page.locator(f"[data-testid=code-edit][data-code='{code}']")
        loinc, display = LOINC_OF[str(code)]
        form.get_by_test_id("target-system").select_option(label="LOINC")
        form.get_by_test_id("target-code").fill(loinc)
        form.get_by_test_id("target-display").fill(display)
        if code == codes[0]:  # the inline form htmx swapped in, once
            assert_accessible(page, context=f"[data-testid=code-edit][data-code='{code}']")
        form.get_by_test_id("save-code").click()
        expect(page.locator(f"[data-testid=code-row][data-code='{code}'] [data-testid=target]")).to_contain_text(loinc)
    expect(page.get_by_test_id("coverage")).to_have_text("Every required element is covered.")
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/mapping-edited.png", full_page=True)
    expect(page.get_by_test_id("mapping-version")).to_have_text(str(1 + len(codes)))
    assert mappings.coverage(mappings.latest_mapping(connection.onboarding)).complete  # type: ignore[arg-type]

    # Export the CSV, and import it back unchanged: nothing changes.
    with page.expect_download() as download:
        page.get_by_test_id("export-csv").click()
    exported = tmp_path / "mapping.csv"
    download.value.save_as(exported)
    table = list(csv.reader(io.StringIO(exported.read_text())))
    assert table[0] == list(mappings.CSV_COLUMNS)
    assert {row[2]: row[6] for row in table[1:]} == {code: LOINC_OF[str(code)][0] for code in codes}
    page.reload()
    before = version_on_page(page)
    import_file(page, exported)
    expect(page.locator(".messages")).to_contain_text("nothing changed")
    assert version_on_page(page) == before

    # A changed display, re-imported: one new version.
    edited = [list(row) for row in table]
    edited[1][7] = "Edited display from the spreadsheet"
    good = tmp_path / "edited.csv"
    with good.open("w", newline="") as handle:
        csv.writer(handle).writerows(edited)
    import_file(page, good)
    expect(page.locator(".messages")).to_contain_text("Imported: 1 code changed")
    assert version_on_page(page) == before + 1
    expect(page.locator(f"[data-testid=code-row][data-code='{edited[1][2]}']")).to_contain_text("Edited display")

    # A bad file: each bad row is named with its line, and nothing changes.
    broken = [list(row) for row in edited]
    broken[1][6] = "not-a-code"
    broken[2][5] = "RxNorm"
    broken.append(list(broken[2]))
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="") as handle:
        csv.writer(handle).writerows(broken)
    versions = Mapping.objects.filter(onboarding=connection.onboarding).count()
    import_file(page, bad)
    errors = page.get_by_test_id("import-errors")
    expect(errors).to_contain_text("Nothing was imported")
    expect(errors.locator("li[data-line='2']")).to_contain_text("not a LOINC code")
    expect(errors.locator("li[data-line='3']")).to_contain_text("must be mapped to LOINC")
    expect(errors.locator(f"li[data-line='{len(broken)}']")).to_contain_text("already mapped on line 3")
    assert_accessible(page)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/mapping-bad-csv.png", full_page=True)
    assert Mapping.objects.filter(onboarding=connection.onboarding).count() == versions
    page.goto(f"{live_server.url}/c/{connection.code}/mapping/")
    assert version_on_page(page) == before + 1

    # Re-run map (a real worker): it passes, and the version may be put to hospital IT.
    page.goto(f"{live_server.url}/c/{connection.code}/")
    page.get_by_test_id("start-map").click()
    expect(page.get_by_test_id("run-status")).to_have_text("Passed", timeout=30_000)
    assert_accessible(page)
    expect(page.get_by_test_id("next-action")).to_contain_text("ready to be requested")
    page.get_by_test_id("request-next").click()
    expect(page.get_by_test_id("approval-state")).to_have_text("pending")
    assert_accessible(page)
    assert problems == []
    page.close()

    # Hospital IT sign it off on the request's page.
    it_page = browser.new_page()
    it_problems = watch(it_page)
    log_in(it_page, live_server.url, it_a.username, DEFAULT_PASSWORD)
    it_page.goto(f"{live_server.url}/c/{connection.code}/mapping/")
    expect(it_page.get_by_test_id("edit-code")).to_have_count(0)
    assert_accessible(it_page)
    signed_version = version_on_page(it_page)
    it_page.get_by_test_id("gate-request-link-mapping_sign_off").click()
    assert_accessible(it_page)
    it_page.fill("#decision-comment", "Checked against the lab's code list")
    it_page.get_by_test_id("approve").click()
    decision = it_page.get_by_test_id("approval-decision")
    expect(decision).to_contain_text("Approved by it-alpha")
    expect(it_page.get_by_test_id("approval-comment")).to_contain_text("Checked against the lab's code list")
    if SHOTS:
        it_page.screenshot(path=f"{SHOTS}/mapping-signed-off.png", full_page=True)
    approved = mappings.signed_mapping(connection.onboarding)
    assert approved is not None and approved.version == signed_version
    assert it_problems == []
