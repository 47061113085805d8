"""Settings fail loudly on bad values; secrets are encrypted at rest and never decrypted wrongly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from portal import crypto
from portal.env import env_bool, env_float, env_int, env_list
from tests.factories import ConnectionFactory


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("no", False), ("", False), ("OFF", False)])
def test_env_bool_reads_usual_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("X_FLAG", raw)
    assert env_bool("X_FLAG", default=not expected) is expected


def test_env_bool_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG must be true or false"):
        env_bool("X_FLAG", default=False)


def test_env_int_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_NUM", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_NUM must be a whole number"):
        env_int("X_NUM", 3)
    monkeypatch.setenv("X_NUM", "2")
    with pytest.raises(ImproperlyConfigured, match="at least 5"):
        env_int("X_NUM", 3, minimum=5)


def test_env_float_keeps_within_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_SECONDS", "60")
    with pytest.raises(ImproperlyConfigured, match=r"X_SECONDS must be at most 10\.0, not 60\.0"):
        env_float("X_SECONDS", 1.0, maximum=10.0)
    monkeypatch.setenv("X_SECONDS", "2.5")
    assert env_float("X_SECONDS", 1.0, maximum=10.0) == 2.5


def test_env_list_drops_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_LIST", " a, ,b ,")
    assert env_list("X_LIST") == ["a", "b"]


def test_production_mode_refuses_missing_secrets() -> None:
    env = {"PORTAL_MODE": "production", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import portal.settings"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "must be set" in result.stderr


def test_bad_encryption_key_is_refused_at_start() -> None:
    env = {"FIELD_ENCRYPTION_KEYS": "not-a-key", "SECRET_KEY": "x" * 50, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import portal.settings"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "not a Fernet key" in result.stderr


@pytest.mark.django_db
def test_secret_is_ciphertext_in_the_database() -> None:
    conn = ConnectionFactory(auth_method="basic", client_id="u", secret="plain-sentinel-secret")
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM connections_ehrconnection WHERE id = %s", [conn.pk])
        stored = cursor.fetchone()[0]
    assert "plain-sentinel-secret" not in stored
    assert crypto.decrypt(stored) == "plain-sentinel-secret"
    conn.refresh_from_db()
    assert conn.secret == "plain-sentinel-secret"


@pytest.mark.django_db
def test_wrong_key_raises_instead_of_returning_ciphertext(settings: pytest.FixtureRequest) -> None:
    conn = ConnectionFactory(auth_method="basic", client_id="u", secret="another-secret")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]  # type: ignore[attr-defined]
    from connections.models import EHRConnection

    with pytest.raises(crypto.DecryptionError):
        EHRConnection.objects.get(pk=conn.pk)


def test_rotation_keeps_old_values_readable(settings: pytest.FixtureRequest) -> None:
    old = settings.FIELD_ENCRYPTION_KEYS[0]  # type: ignore[attr-defined]
    token = crypto.encrypt("rotate-me")
    new = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new, old]  # type: ignore[attr-defined]
    assert crypto.decrypt(token) == "rotate-me"
    rotated = crypto.rotate(token)
    settings.FIELD_ENCRYPTION_KEYS = [new]  # type: ignore[attr-defined]
    assert crypto.decrypt(rotated) == "rotate-me"
