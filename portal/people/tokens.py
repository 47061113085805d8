"""Invitation links: a random secret, signed with SECRET_KEY, of which only the SHA-256 is stored.

The signature lets a tampered or made-up link be refused before any lookup; the stored hash means
a copy of the database cannot be turned into working links.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.core import signing

SALT = "portal.people.invitation"


@dataclass(frozen=True)
class InvitationToken:
    """What a link carries: the invitation's code and its secret."""

    code: str
    secret: str


def new_secret() -> tuple[str, str]:
    """A fresh secret for a link, and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def make_token(code: object, secret: str) -> str:
    """The text that goes into the link (URL-safe, no slash)."""
    return signing.dumps({"c": str(code), "s": secret}, salt=SALT)


def read_token(token: str) -> InvitationToken | None:
    """The code and secret of a link, or None if it was not made here or was altered."""
    try:
        payload = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("c"), str) or not isinstance(payload.get("s"), str):
        return None
    return InvitationToken(code=payload["c"], secret=payload["s"])
