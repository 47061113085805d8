"""Encryption at rest for secrets, with keys from FIELD_ENCRYPTION_KEYS (never SECRET_KEY).

MultiFernet encrypts with the first key and decrypts with any, so keys rotate without downtime.
A value that no key can decrypt raises: ciphertext is never handed back as if it were the secret.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


class DecryptionError(Exception):
    """No configured key opens this value: the keys changed without a rotation."""


def _fernet() -> MultiFernet:
    if not settings.FIELD_ENCRYPTION_KEYS:
        # Settings refuse this at start-up; a process that lost its keys since must not carry on.
        raise DecryptionError("FIELD_ENCRYPTION_KEYS is empty: no key to encrypt or decrypt secrets with.")
    return MultiFernet([Fernet(key) for key in settings.FIELD_ENCRYPTION_KEYS])


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage."""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a stored secret, or raise DecryptionError."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "A stored secret cannot be decrypted with the configured FIELD_ENCRYPTION_KEYS."
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt a stored value under the first (newest) key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError("A stored secret cannot be decrypted for rotation.") from None


class EncryptedTextField(models.TextField):
    """A text column holding Fernet ciphertext; Python code only ever sees plaintext.

    An empty string stays empty (no secret set), so forms can tell "none" from "keep".
    """

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(str(value))

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value in (None, ""):
            return value
        return decrypt(value)
