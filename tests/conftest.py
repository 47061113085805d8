"""Shared fixtures: personas, sandbox hospitals on loopback, and a real Celery worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from portal.roles import CUSTOMER_SUCCESS, ENGINEERS
from portal.services import grant_hospital_it
from tests.factories import DEFAULT_PASSWORD, TenantFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent


# --- Personas ------------------------------------------------------------------------------------


@pytest.fixture
def tenant_a(db: None) -> Any:
    return TenantFactory(name="Alpha Medical Center")


@pytest.fixture
def tenant_b(db: None) -> Any:
    return TenantFactory(name="Beta Health System")


@pytest.fixture
def cs_user(db: None) -> Any:
    user = UserFactory(username="cs", groups=[CUSTOMER_SUCCESS])
    authenticator_for(user)
    return user


@pytest.fixture
def engineer(db: None) -> Any:
    user = UserFactory(username="engineer", groups=[ENGINEERS])
    authenticator_for(user)
    return user


@pytest.fixture
def it_a(tenant_a: Any) -> Any:
    user = UserFactory(username="it-alpha")
    grant_hospital_it(tenant=tenant_a, member=user)
    return user


@pytest.fixture
def it_b(tenant_b: Any) -> Any:
    user = UserFactory(username="it-beta")
    grant_hospital_it(tenant=tenant_b, member=user)
    return user


def authenticator_for(user: Any) -> Any:
    """The user's confirmed TOTP device, made on first need (vendor staff cannot work without one)."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="Test authenticator", confirmed=True)


def client_for(user: Any) -> Client:
    """A test client logged in as the user with the password; staff also pass the second factor.

    The login goes through every authentication backend (django-axes included, which needs a
    request). Marking the session verified is what django-otp does after a good code.
    """
    from django.test import RequestFactory
    from django_otp import DEVICE_ID_SESSION_KEY

    from portal import twofactor

    client = Client()
    assert client.login(request=RequestFactory().get("/login/"), username=user.username, password=DEFAULT_PASSWORD)
    if twofactor.requires_two_factor(user):
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = authenticator_for(user).persistent_id
        session.save()
    return client


def reauthenticated(client: Client) -> Client:
    """Mark the client's session as having just typed its password again, as the re-authentication
    page does, for views behind portal.reauth.require_recent_auth (raw PHI)."""
    from portal.reauth import REAUTH_AT

    session = client.session
    session[REAUTH_AT] = time.time()
    session.save()
    return client


# --- Headless Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium for one test module. Module, not session, scope: Playwright's sync API keeps
    an event loop on the main thread, which must not outlive the browser tests."""
    from tests.browser import chromium

    with chromium() as running:
        yield running


# --- Sandbox hospitals ---------------------------------------------------------------------------

# Rates at which the "defects" sandbox plants each data-quality defect (seed 7 plants every kind).
DEFECTS: dict[str, Any] = {
    "duplicate_patient": 0.15,
    "missing_birth_date": 0.15,
    "second_identifier": 0.15,
    "unknown_extension": 0.15,
    "bad_date": 0.15,
    "local_lab_code": 0.3,
    "dangling_reference": 0.15,
    "bad_structure": 0.15,
}


@pytest.fixture(scope="session")
def sandboxes() -> Iterator[dict[str, Any]]:
    """One running sandbox per flavour, plus an authenticated one, on loopback ports."""
    from connections.sandbox import SandboxHospital

    running = {
        "generic": SandboxHospital(flavour="generic", seed=7, patients=30).start(),
        "epic": SandboxHospital(
            flavour="epic",
            seed=7,
            patients=30,
            auth="client_credentials",
            client_id="portal-test",
            client_secret="s3cret-sandbox-value",
        ).start(),
        "meditech": SandboxHospital(
            flavour="meditech",
            seed=7,
            patients=30,
            auth="basic",
            client_id="portal-basic",
            client_secret="basic-s3cret-value",
        ).start(),
        "oracle_health": SandboxHospital(flavour="oracle_health", seed=7, patients=30).start(),
        "athenahealth": SandboxHospital(flavour="athenahealth", seed=7, patients=30).start(),
        # Data-quality defects of every kind planted (see DEFECTS), with all the clinical types
        # the product reads: for the map and validate steps.
        "defects": SandboxHospital(
            flavour="generic", seed=7, patients=30, defects=DEFECTS, extended_clinical=True
        ).start(),
    }
    yield running
    for hospital in running.values():
        hospital.stop()


@pytest.fixture
def sandbox_allowlist(settings: Any, sandboxes: dict[str, Any]) -> str:
    """Let the guarded client reach the sandboxes (and only them) in this process."""
    entries = ",".join(f"127.0.0.1:{h.port}" for h in sandboxes.values())
    settings.OUTBOUND_ALLOWLIST = entries.split(",")
    return entries


@pytest.fixture
def clean_faults(sandboxes: dict[str, Any]) -> Iterator[None]:
    for hospital in sandboxes.values():
        hospital.set_faults()
    yield
    for hospital in sandboxes.values():
        hospital.set_faults()


# --- A real Celery worker -------------------------------------------------------------------------


def _flush_test_broker() -> None:
    import redis

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


@pytest.fixture(scope="session")
def worker_email_dir(tmp_path_factory: Any) -> Path:
    """Where the worker's filebased email backend writes each email it sends, one file per email."""
    return Path(tmp_path_factory.mktemp("worker-emails"))


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup: None,
    django_db_blocker: Any,
    sandboxes: dict[str, Any],
    tmp_path_factory: Any,
    worker_email_dir: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """A `celery worker` subprocess on the test database and the Redis broker, as production runs it.

    Its emails go to files in `worker_email_dir`, so tests can count what it really sent.
    """
    _flush_test_broker()
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        OUTBOUND_ALLOWLIST=",".join(f"127.0.0.1:{h.port}" for h in sandboxes.values()),
        STEP_HEARTBEAT_TIMEOUT="60",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(worker_email_dir),
        # Health checks of live connections every 2 s instead of the policy's minutes (monitoring tests).
        MONITORING_CHECK_INTERVAL_SECONDS="2",
    )
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed after the process ends
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "-Q",
            "steps,load_tests,maintenance,notifications,monitoring",
            "-c",
            "2",
            "-l",
            "info",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b"ready." not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("The Celery worker did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.2)
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many pages the browser tests put through axe-core (tests/browser.py), when any did."""
    from tests.browser import WCAG_TAGS, checked_pages

    if checked_pages:
        terminalreporter.write_line(
            f"axe-core ({', '.join(WCAG_TAGS)}): {len(checked_pages)} page checks, "
            f"{len(set(checked_pages))} distinct pages or parts"
        )
