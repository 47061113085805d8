"""Response headers: check --deploy under production settings, the CSP on every HTML page (and in
Chromium, no violation while the pages are used), no-store on pages with PHI, Vary for htmx partials."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from onboarding.models import StepRun
from tests import route_matrix
from tests.browser import log_in
from tests.conftest import client_for
from tests.factories import DEFAULT_PASSWORD

ROOT = Path(__file__).resolve().parent.parent

# No page may widen the policy with inline styles.
INLINE_STYLE_ALLOWED: set[str] = set()


def production_env(**overrides: str) -> dict[str, str]:
    db = django_settings.DATABASES["default"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_MODE": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "PSEUDONYM_KEY": secrets.token_urlsafe(32),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "ALLOWED_HOSTS": "onboarding.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://onboarding.example.com",
        "PORTAL_BASE_URL": "https://onboarding.example.com",
        "DEFAULT_FROM_EMAIL": "Onboarding portal <onboarding@example.com>",
        "PORTAL_VAR_DIR": "/tmp/portal-check-deploy",
    }
    env.update(overrides)
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_under_production_settings() -> None:
    result = check_deploy(production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # The check is live: switching HSTS off in production makes it fail.
    weakened = check_deploy(production_env(SECURE_HSTS_SECONDS="0"))
    assert weakened.returncode != 0
    assert "security.W004" in weakened.stdout + weakened.stderr


# --- Every response of every route ---------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


@pytest.fixture
def responses(tenant_a: Any, tenant_b: Any, cs_user: Any, it_a: Any) -> list[tuple[str, str, Any]]:
    """Every matrix route as customer success, hospital IT of tenant A and anonymous, plus error pages."""
    world = route_matrix.build_world(tenant_a=tenant_a, tenant_b=tenant_b)
    clients = {"cs": client_for(cs_user), "it_a": client_for(it_a), "anon": Client()}
    found = []
    for name, calls in route_matrix.ROUTES.items():
        if name == "logout":
            continue
        for call in calls:
            for persona, client in clients.items():
                if call.method != "GET":
                    continue
                found.append((name, persona, client.get(call.url(world))))
    found.append(("404", "cs", clients["cs"].get("/no-such-page/")))
    found.append(("admin:login", "anon", clients["anon"].get(reverse("admin:login"))))
    return found


@pytest.mark.django_db
def test_every_html_response_has_a_strict_csp(responses: list[tuple[str, str, Any]]) -> None:
    html = [(name, persona, r) for name, persona, r in responses if r["Content-Type"].startswith("text/html")]
    assert len(html) > 40
    for name, persona, response in html:
        header = response.get("Content-Security-Policy")
        assert header, f"{name} as {persona} has no Content-Security-Policy"
        directives = csp_directives(header)
        assert "'unsafe-eval'" not in header, name
        assert directives["script-src"] == ["'self'"], (name, header)
        assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
        if name not in INLINE_STYLE_ALLOWED:
            assert "'unsafe-inline'" not in header, (name, header)
        body = response.content.decode()
        assert " style=" not in body and "<script>" not in body, f"{name} has inline style or script"


@pytest.mark.django_db
def test_pages_and_api_answers_are_never_cached(responses: list[tuple[str, str, Any]]) -> None:
    for name, persona, response in responses:
        assert "no-store" in response.get("Cache-Control", ""), f"{name} as {persona}: {response.get('Cache-Control')}"


@pytest.mark.django_db
def test_vary_hx_request_exactly_where_partials_differ(tenant_a: Any, tenant_b: Any, cs_user: Any) -> None:
    world = route_matrix.build_world(tenant_a=tenant_a, tenant_b=tenant_b)
    client = client_for(cs_user)
    for url in (
        reverse("dashboard"),
        reverse("run_detail", kwargs={"code": world.active_run_a.code}),
        reverse("tenant_audit", kwargs={"code": tenant_a.code}),
    ):
        full, partial = client.get(url), client.get(url, headers={"HX-Request": "true"})
        assert "HX-Request" in full.get("Vary", ""), url
        assert full.content != partial.content, url
    plain = client.get(reverse("connection_detail", kwargs={"code": world.conn_a.code}))
    assert "HX-Request" not in plain.get("Vary", "")


@pytest.mark.django_db
def test_security_headers(cs_user: Any) -> None:
    response = client_for(cs_user).get(reverse("dashboard"))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


# --- In Chromium: the pages work under the policy, and nothing is refused --------------------------------


def watch(page: Page) -> list[str]:
    """Collect CSP violations and script errors the page reports."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text or "Refused to" in text:
            problems.append(f"{page.url}: {text}")
        elif message.type == "error" and "Failed to load resource" not in text:
            problems.append(f"{page.url}: console error: {text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"{page.url}: {exc}"))
    return problems


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_pages_work_under_the_csp_in_chromium(
    browser: Browser, live_server: Any, tenant_a: Any, tenant_b: Any, cs_user: Any
) -> None:
    world = route_matrix.build_world(tenant_a=tenant_a, tenant_b=tenant_b)
    StepRun.objects.filter(pk=world.active_run_a.pk).update(status="running", progress_total=10, progress_done=3)
    page = browser.new_page()
    problems = watch(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    base = live_server.url
    log_in(page, base, cs_user.username, DEFAULT_PASSWORD)

    # htmx is live under the policy: typing in the dashboard filter swaps the table in place.
    page.goto(f"{base}/")
    page.fill("#q", "Beta")
    expect(page.locator("tr[data-tenant]")).to_have_count(1)
    expect(page.locator("tr[data-tenant]")).to_contain_text("Beta Health System")

    # A running step's page polls with htmx; finishing the run shows up without a reload.
    page.goto(f"{base}{reverse('run_detail', kwargs={'code': world.active_run_a.code})}")
    expect(page.get_by_test_id("run-status")).to_have_text("Running")
    StepRun.objects.filter(pk=world.active_run_a.pk).update(status="passed")
    expect(page.get_by_test_id("run-status")).to_have_text("Passed", timeout=10_000)

    # The audit page filters with htmx too.
    page.goto(f"{base}{reverse('audit_log')}")
    expect(page.locator("#events tr[data-action^='role.']").first).to_be_visible()
    page.fill("input[name=action]", "auth.")
    expect(page.locator("#events tr[data-action^='role.']")).to_have_count(0)
    expect(page.locator("#events tr[data-action='auth.login']").first).to_be_visible()

    for url in (
        reverse("tenant_detail", kwargs={"code": tenant_a.code}),
        reverse("connection_detail", kwargs={"code": world.conn_a.code}),
        reverse("connection_edit", kwargs={"code": world.conn_a.code}),
        reverse("evidence_pack", kwargs={"code": world.onboarding_a.code}),
        reverse("account_security"),
        reverse("two_factor_setup"),
        reverse("tenant_create"),
        reverse("tenant_audit", kwargs={"code": tenant_a.code}),
    ):
        page.goto(base + url)
        expect(page.locator("h1").first).to_be_visible()

    # The API docs load their bundle and render the schema under the same strict policy.
    page.goto(base + reverse("api_docs"))
    expect(page.locator(".swagger-ui .info .title").first).to_contain_text("Hospital onboarding portal API")

    assert problems == []
    assert [url for url in requested if not url.startswith((base, "data:", "blob:"))] == []
