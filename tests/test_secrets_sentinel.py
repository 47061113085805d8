"""Secrets at rest: the sentinel search, key rotation, wrong and missing keys, write-only edits, PHI retention.

The sentinel test plants a client secret and a SMART private key, really uses them against
sandbox hospitals, then looks for them (plain, URL-encoded, base64, and inside HTTP Basic) in a
pg_dump of the database, the captured logs, rendered pages, API answers, the Celery message
published to Redis and the error pages (DEBUG on and off).
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import redis
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from connections.forms import ConnectionForm
from connections.models import EHRConnection
from connections.sandbox import SandboxHospital
from connections.services import create_connection, generate_key_pair, update_connection
from onboarding.engine import services
from onboarding.models import RawResource, StepRun
from portal import crypto, retention
from portal.models import AuditEvent
from tests.conftest import client_for

SANDBOX_USER = "sentinel-basic-user"


@dataclass
class Planted:
    secret: str
    new_secret: str
    private_pem: str
    basic: EHRConnection
    smart: EHRConnection
    sandboxes: list[SandboxHospital] = field(default_factory=list)

    def needles(self) -> dict[str, str]:
        """Every form in which the secrets could leak, by name."""
        found = {}
        for label, value in (("secret", self.secret), ("new secret", self.new_secret)):
            found[label] = value
            found[f"{label}, URL-encoded"] = quote(value, safe="")
            found[f"{label}, base64"] = base64.b64encode(value.encode()).decode().rstrip("=")
            found[f"{label}, in HTTP Basic"] = base64.b64encode(f"{SANDBOX_USER}:{value}".encode()).decode()[:-4]
        body = [line for line in self.private_pem.splitlines() if line and not line.startswith("-----")]
        for number, line in enumerate(body):
            found[f"private key line {number + 1}"] = line
        found["private key PEM header"] = "PRIVATE KEY-----"
        return found


def leaks(text: str, needles: dict[str, str]) -> list[str]:
    return [name for name, needle in needles.items() if needle and needle in text]


@pytest.fixture
def planted(tenant_a: Any, cs_user: Any, settings: Any) -> Iterator[Planted]:
    secret = f"sentinel-secret-{secrets.token_hex(12)}"
    basic_sandbox = SandboxHospital(
        flavour="meditech", seed=3, patients=5, auth="basic", client_id=SANDBOX_USER, client_secret=secret
    ).start()
    smart_sandbox = SandboxHospital(
        flavour="generic", seed=3, patients=5, auth="smart_backend", client_id="sentinel-smart"
    )
    smart_sandbox.start()
    settings.OUTBOUND_ALLOWLIST = [f"127.0.0.1:{urlsplit(s.base_url).port}" for s in (basic_sandbox, smart_sandbox)]
    common = {"vendor": "generic", "environment": "sandbox", "scope": "system/*.read"}
    basic = create_connection(
        user=cs_user,
        tenant=tenant_a,
        fields={
            **common,
            "name": "Sentinel basic",
            "base_url": basic_sandbox.base_url,
            "auth_method": "basic",
            "client_id": SANDBOX_USER,
        },
        secret=secret,
    )
    smart = create_connection(
        user=cs_user,
        tenant=tenant_a,
        fields={
            **common,
            "name": "Sentinel SMART",
            "base_url": smart_sandbox.base_url,
            "auth_method": "smart_backend",
            "client_id": "sentinel-smart",
        },
        secret="",
    )
    smart = generate_key_pair(user=cs_user, connection=smart, algorithm="ES384")
    smart_sandbox.register_jwks(smart.jwks)
    found = Planted(secret, f"sentinel-new-{secrets.token_hex(12)}", smart.private_key, basic, smart)
    found.sandboxes = [basic_sandbox, smart_sandbox]
    yield found
    for sandbox in found.sandboxes:
        sandbox.stop()


def run_steps(conn: EHRConnection) -> list[StepRun]:
    """Run configure then test in this process (so their logs are captured), as a worker would."""
    onboarding = services.ensure_onboarding(conn)
    done = []
    for step in ("configure", "test"):
        attempt = onboarding.runs.filter(step=step).count() + 1
        run = StepRun.objects.create(onboarding=onboarding, step=step, attempt=attempt)
        services.execute_run(run.pk)
        run.refresh_from_db()
        done.append(run)
    return done


class RedisMonitor:
    """Everything clients send to the broker's Redis database, read with MONITOR in a thread."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RedisMonitor:
        self._thread.start()
        assert self._ready.wait(5), "MONITOR did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.client.ping()  # wakes the monitor so the thread sees the stop flag
        self._thread.join(5)

    def _watch(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                try:
                    command = monitor.next_command()
                except (redis.RedisError, ValueError):
                    return  # the connection closed under us at the end: nothing more to read
                if command.get("db") == self.db:
                    self.commands.append(command["command"])

    def wait_for(self, text: str, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [c for c in self.commands if text in c]
            if hits:
                return hits
            time.sleep(0.05)
        raise AssertionError(f"no command with {text!r} reached Redis")


def decoded_bodies(commands: list[str]) -> list[str]:
    """The base64 task bodies inside kombu's Redis envelopes, decoded."""
    bodies = []
    for command in commands:
        for encoded in re.findall(r'"body": "([A-Za-z0-9+/=]+)"', command):
            bodies.append(base64.b64decode(encoded).decode(errors="replace"))
    return bodies


@pytest.mark.django_db(transaction=True)
def test_planted_secret_and_private_key_are_found_nowhere(
    planted: Planted, cs_user: Any, it_a: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    for noisy in ("httpx", "httpcore", "connections", "onboarding", "django", "celery", "kombu"):
        caplog.set_level(logging.DEBUG, logger=noisy)
    needles = planted.needles()
    found: dict[str, list[str]] = {}

    # The secrets really are used: both connections pass configure and test.
    runs = run_steps(planted.basic) + run_steps(planted.smart)
    assert [run.status for run in runs] == ["passed"] * 4, [(r.step, r.error_kind, r.error_message) for r in runs]

    # Pages and API answers, as customer success and as the hospital's IT.
    pages = [
        reverse("dashboard"),
        reverse("tenant_detail", kwargs={"code": planted.basic.tenant.code}),
        reverse("tenant_audit", kwargs={"code": planted.basic.tenant.code}),
        reverse("tenant_audit_csv", kwargs={"code": planted.basic.tenant.code}),
        reverse("audit_log"),
    ]
    for conn in (planted.basic, planted.smart):
        onboarding = conn.onboarding
        pages += [
            reverse("connection_detail", kwargs={"code": conn.code}),
            reverse("connection_edit", kwargs={"code": conn.code}),
            reverse("connection_smart_key", kwargs={"code": conn.code}),
            reverse("connection_jwks", kwargs={"code": conn.code}),
            reverse("evidence_pack", kwargs={"code": onboarding.code}),
            reverse("evidence_pack", kwargs={"code": onboarding.code}) + "?download=1",
            reverse("evidence_pack_json", kwargs={"code": onboarding.code}),
            f"/api/v1/connections/{conn.code}/",
            f"/api/v1/connections/{conn.code}/jwks/",
            f"/api/v1/onboardings/{onboarding.code}/",
        ]
    pages += [reverse("run_detail", kwargs={"code": run.code}) for run in runs]
    pages += ["/api/v1/connections/", "/api/v1/runs/", "/api/v1/onboardings/", "/api/v1/tenants/", "/api/schema/"]
    for persona, client in (("cs", client_for(cs_user)), ("it_a", client_for(it_a))):
        for url in pages:
            response = client.get(url)
            assert response.status_code in (200, 403), (url, response.status_code)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            if hits := leaks(body.decode(errors="replace"), needles):
                found[f"page {url} as {persona}"] = hits

    # Writes: a new secret through the form (re-shown with an error) and the API (write-only).
    cs = client_for(cs_user)
    form_data = edit_form_data(planted.basic, secret=planted.new_secret)
    rejected = cs.post(
        reverse("connection_edit", kwargs={"code": planted.basic.code}), {**form_data, "base_url": "ftp://x"}
    )
    assert rejected.status_code == 200 and b'data-field="base_url"' in rejected.content
    if hits := leaks(rejected.content.decode(), needles):
        found["the edit form shown again with an error"] = hits
    for body in ({"secret": planted.new_secret}, {"secret": planted.new_secret, "base_url": "ftp://x"}):
        response = cs.patch(f"/api/v1/connections/{planted.basic.code}/", body, content_type="application/json")
        if hits := leaks(response.content.decode(), needles):
            found[f"API PATCH answer {response.status_code}"] = hits

    # Error pages: a crash while saving a typed secret, with DEBUG on (the demo) and off (production).
    def crash(**kwargs: Any) -> None:
        raise RuntimeError("simulated failure while saving")

    monkeypatch.setattr("connections.views.update_connection", crash)
    for debug in (True, False):
        monkeypatch.setattr(django_settings, "DEBUG", debug)
        client = client_for(cs_user)
        client.raise_request_exception = False
        response = client.post(reverse("connection_edit", kwargs={"code": planted.basic.code}), form_data)
        assert response.status_code == 500
        assert (b"simulated failure" in response.content) is debug  # the debug page did render
        if hits := leaks(response.content.decode(errors="replace"), needles):
            found[f"the 500 page (DEBUG={debug})"] = hits
    monkeypatch.setattr(django_settings, "DEBUG", False)

    # The Celery task message, as it reaches Redis.
    with RedisMonitor(django_settings.CELERY_BROKER_URL) as monitor:
        run = services.start_step(user=cs_user, onboarding=planted.basic.onboarding, step="configure")
        published = monitor.wait_for("onboarding.run_step")
    bodies = decoded_bodies(published)
    assert any(f"[[{run.pk}]" in body for body in bodies), (published, bodies)  # the message was read
    services.cancel_run(user=cs_user, run=run)  # no worker should run it after this test
    if hits := leaks("\n".join(published + bodies), needles):
        found["the Celery message in Redis"] = hits

    # Logs of everything above.
    log_text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in caplog.records)
    assert "Internal Server Error" in log_text  # the crash above was logged
    if hits := leaks(log_text, needles):
        found["logs"] = hits

    # The database itself, dumped as an operator or a thief would.
    dump = pg_dump()
    stored = raw_column(planted.basic.pk, "secret")
    assert "Sentinel basic" in dump
    assert stored in dump and crypto.decrypt(stored) == planted.new_secret  # the dump has the ciphertext
    if hits := leaks(dump, needles):
        found["pg_dump"] = hits

    assert not found, f"secrets found: {found}"


def edit_form_data(conn: EHRConnection, *, secret: str) -> dict[str, Any]:
    """What the edit form posts back unchanged, plus a newly typed secret."""
    form = ConnectionForm(instance=conn, tenant=conn.tenant)
    data = {name: form[name].value() or "" for name in form.fields if name != "secret"}
    return {**data, "secret": secret}


def pg_dump() -> str:
    db = connection.settings_dict
    result = subprocess.run(
        ["/usr/bin/pg_dump", "--data-only", "-h", db["HOST"], "-p", str(db["PORT"]), "-U", db["USER"], db["NAME"]],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def raw_column(pk: int, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM connections_ehrconnection WHERE id = %s", [pk])  # noqa: S608
        return str(cursor.fetchone()[0])


# --- Keys ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rotation_command_re_encrypts_every_secret_under_the_newest_key(
    settings: Any, tenant_a: Any, cs_user: Any
) -> None:
    old, new = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    basic = create_connection(
        user=cs_user,
        tenant=tenant_a,
        fields={
            "name": "Rotate me",
            "base_url": "https://fhir.example.org/r4",
            "auth_method": "basic",
            "client_id": "u",
        },
        secret="rotate-this-secret",
    )
    smart = create_connection(
        user=cs_user,
        tenant=tenant_a,
        fields={
            "name": "Rotate key",
            "base_url": "https://fhir.example.org/r4",
            "auth_method": "smart_backend",
            "client_id": "k",
        },
        secret="",
    )
    smart = generate_key_pair(user=cs_user, connection=smart, algorithm="ES384")
    pem = smart.private_key
    before = raw_column(basic.pk, "secret")

    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_encryption_keys", stdout=(out := _Out()))
    assert "connections.EHRConnection.secret: 1 value(s) re-encrypted" in out.text
    assert "connections.EHRConnection.private_key: 1 value(s) re-encrypted" in out.text
    after = raw_column(basic.pk, "secret")
    assert after != before
    settings.FIELD_ENCRYPTION_KEYS = [new]  # the old key is gone: everything still reads
    assert EHRConnection.objects.get(pk=basic.pk).secret == "rotate-this-secret"
    assert EHRConnection.objects.get(pk=smart.pk).private_key == pem
    event = AuditEvent.objects.filter(action="keys.rotated").latest("id")
    assert event.detail["connections.EHRConnection.secret"] == {"rotated": 1, "failed": 0}
    call_command("rotate_encryption_keys", "--check", stdout=_Out())


@pytest.mark.django_db
def test_rotation_refuses_values_no_key_opens_and_names_only_row_ids(settings: Any, tenant_a: Any) -> None:
    from tests.factories import ConnectionFactory

    conn = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="lost-key-secret")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError) as error:
        call_command("rotate_encryption_keys", "--check", stdout=_Out())
    assert f"rows {conn.pk}" in str(error.value)
    assert "lost-key-secret" not in str(error.value)


@pytest.mark.django_db
def test_a_wrong_or_missing_key_raises_instead_of_returning_ciphertext(settings: Any, tenant_a: Any) -> None:
    from tests.factories import ConnectionFactory

    conn = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="wrong-key-secret")
    stored = raw_column(conn.pk, "secret")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.DecryptionError):
        EHRConnection.objects.get(pk=conn.pk)
    settings.FIELD_ENCRYPTION_KEYS = []
    with pytest.raises(crypto.DecryptionError):
        EHRConnection.objects.get(pk=conn.pk)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(stored)


@pytest.mark.django_db
def test_a_blank_secret_in_an_edit_keeps_the_stored_one(tenant_a: Any, cs_user: Any) -> None:
    from tests.factories import ConnectionFactory

    conn = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="keep-me-secret")
    data = edit_form_data(conn, secret="")
    response = client_for(cs_user).post(
        reverse("connection_edit", kwargs={"code": conn.code}), {**data, "name": "Renamed"}
    )
    assert response.status_code == 302
    conn.refresh_from_db()
    assert (conn.name, conn.secret) == ("Renamed", "keep-me-secret")
    update_connection(user=cs_user, connection=conn, fields={}, secret="")
    conn.refresh_from_db()
    assert conn.secret == "keep-me-secret"
    api = client_for(cs_user).patch(
        f"/api/v1/connections/{conn.code}/", {"secret": ""}, content_type="application/json"
    )
    assert api.status_code == 200
    conn.refresh_from_db()
    assert conn.secret == "keep-me-secret"


# --- PHI retention ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_raw_payloads_older_than_the_limit_are_purged_by_the_command_and_the_task(
    settings: Any, tenant_a: Any, cs_user: Any
) -> None:
    from portal.tasks import purge_raw_payloads
    from tests.factories import ConnectionFactory

    settings.RAW_PAYLOAD_RETENTION_DAYS = 7
    onboarding = services.ensure_onboarding(ConnectionFactory(tenant=tenant_a))
    run = StepRun.objects.create(onboarding=onboarding, step="validate", attempt=1, status="failed")
    now = timezone.now()

    def raw(key: str, age_days: float, expires_in_days: float = 30) -> RawResource:
        row = RawResource.objects.create(
            run=run,
            resource_type="Patient",
            resource_key=key,
            payload='{"resourceType": "Patient"}',
            expires_at=now + timedelta(days=expires_in_days),
        )
        RawResource.objects.filter(pk=row.pk).update(created_at=now - timedelta(days=age_days))
        return row

    old, fresh, expired = raw("old", 8), raw("fresh", 1), raw("expired", 1, expires_in_days=-1)
    assert "onboarding.RawResource" in [store.label for store in retention.stores()]

    call_command("purge_raw_payloads", "--dry-run", stdout=(out := _Out()))
    assert "onboarding.RawResource: would purge 2 row(s) older than 7 days" in out.text
    assert RawResource.objects.count() == 3

    call_command("purge_raw_payloads", stdout=(out := _Out()))
    assert "onboarding.RawResource: purged 2 row(s)" in out.text
    assert list(RawResource.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert not RawResource.objects.filter(pk__in=[old.pk, expired.pk]).exists()
    event = AuditEvent.objects.filter(action="phi.purge").latest("id")
    assert event.detail["purged"] == {"onboarding.RawResource": 2}

    RawResource.objects.filter(pk=fresh.pk).update(created_at=now - timedelta(days=10))
    assert purge_raw_payloads.apply().get() == 1  # the beat task does the same
    assert not RawResource.objects.exists()
    assert django_settings.CELERY_BEAT_SCHEDULE["purge-raw-payloads"]["task"] == purge_raw_payloads.name


class _Out:
    """A stdout for call_command that keeps what was written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, value: str) -> None:
        self.text += value

    def flush(self) -> None:
        pass
