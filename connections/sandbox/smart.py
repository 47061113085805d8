"""SMART Backend Services for the sandbox: a registered JWKS and a real check of signed assertions.

A hospital's token endpoint accepts a client only if its ``private_key_jwt`` assertion is signed
by a key the hospital registered, names this endpoint as its audience, is fresh and is not a
replay. The sandbox does the same checks, so the portal's key handling is tested against a
verifier rather than against itself. The JWS is verified here with ``cryptography`` alone (no JWT
library) because the compact form is short to check by hand, and an independent implementation
catches mistakes a shared library would hide. Nothing here imports the portal.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
# Clock tolerance for exp, nbf and iat, as real token endpoints allow a little drift.
LEEWAY_S = 30
# SMART: an assertion's exp is "no more than five minutes in the future".
MAX_LIFETIME_S = 300
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_P384_COORDINATE = 48


class AssertionRejected(Exception):
    """The assertion fails a check; the message becomes the OAuth error_description."""


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyRegistry:
    """The public keys registered for the sandbox's one client, replaceable at run time."""

    def __init__(self, jwks: Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._keys: tuple[_Key, ...] = ()
        self._jwks: dict[str, Any] = {"keys": []}
        if jwks is not None:
            self.replace(jwks)

    @property
    def jwks(self) -> dict[str, Any]:
        """A copy of the registered key set, as it was registered."""
        return json.loads(json.dumps(self._jwks))

    def replace(self, jwks: Mapping[str, Any] | None) -> dict[str, Any]:
        """Register a JWKS (None clears it); ValueError says what is wrong with it."""
        parsed = _parse_jwks(jwks) if jwks is not None else ()
        with self._lock:
            self._keys = parsed
            self._jwks = {"keys": [dict(k) for k in (jwks or {}).get("keys", [])]} if jwks else {"keys": []}
        return self.jwks

    def candidates(self, kid: str | None, alg: str) -> list[_Key]:
        """The registered keys that may have signed an assertion with this kid and alg."""
        keys = [k for k in self._keys if k.alg == alg]
        return [k for k in keys if k.kid == kid] if kid is not None else keys


class ReplayCache:
    """Assertion ids seen until their expiry, so each can be used once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def first_use(self, jti: str, expires: float, now: float) -> bool:
        """Record an assertion id; False if it was seen before (a replay)."""
        with self._lock:
            for old in [j for j, exp in self._seen.items() if exp + LEEWAY_S < now]:
                del self._seen[old]
            if jti in self._seen:
                return False
            self._seen[jti] = expires
            return True


def verify_assertion(
    token: str,
    *,
    registry: KeyRegistry,
    client_id: str,
    audience: str,
    now: float,
    replays: ReplayCache,
) -> dict[str, Any]:
    """The claims of a valid client assertion; AssertionRejected says which check failed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AssertionRejected("client_assertion is not a compact JWS (header.payload.signature).")
    header = _json_part(parts[0], "header")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise AssertionRejected(f"The assertion's alg {alg!r} is not accepted; use RS384 or ES384.")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AssertionRejected("The assertion's kid header must be a string.")
    keys = registry.candidates(kid, alg)
    if not keys:
        raise AssertionRejected(f"No registered public key matches kid {kid!r} and alg {alg}; register the JWKS.")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    signature = _b64decode(parts[2], "signature")
    if not any(_signature_ok(key, signing_input, signature) for key in keys):
        raise AssertionRejected(f"The assertion's signature does not verify with the registered key {kid!r}.")
    claims = _json_part(parts[1], "payload")
    _check_claims(claims, client_id=client_id, audience=audience, now=now)
    if not replays.first_use(str(claims["jti"]), float(claims["exp"]), now):
        raise AssertionRejected("This assertion's jti was already used; sign a new assertion for every request.")
    return claims


def _check_claims(claims: dict[str, Any], *, client_id: str, audience: str, now: float) -> None:
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRejected("The assertion's iss and sub must both be the registered client id.")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise AssertionRejected(f"The assertion's aud {aud!r} is not this token endpoint ({audience}).")
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if (value is not None or name == "exp") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise AssertionRejected(f"The assertion's {name} claim must be a number of seconds since the epoch.")
    if claims.get("nbf") is not None and claims["nbf"] > now + LEEWAY_S:
        raise AssertionRejected(f"The assertion is not yet valid (nbf is in the future; server time {int(now)}).")
    if claims.get("iat") is not None and claims["iat"] > now + LEEWAY_S:
        raise AssertionRejected(f"The assertion was issued in the future (iat; server time {int(now)}).")
    if claims["exp"] < now - LEEWAY_S:
        raise AssertionRejected(f"The assertion expired (exp {int(claims['exp'])}, server time {int(now)}).")
    if claims["exp"] > now + MAX_LIFETIME_S + LEEWAY_S:
        raise AssertionRejected("The assertion's exp is more than five minutes in the future.")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise AssertionRejected("The assertion needs a unique jti claim.")


def _signature_ok(key: _Key, signing_input: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key.public, rsa.RSAPublicKey):
            key.public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA384())
        else:
            # A JWS ECDSA signature is r || s, each the curve's width; cryptography wants DER.
            if len(signature) != 2 * _P384_COORDINATE:
                return False
            r = int.from_bytes(signature[:_P384_COORDINATE], "big")
            s = int.from_bytes(signature[_P384_COORDINATE:], "big")
            key.public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def _parse_jwks(jwks: Mapping[str, Any]) -> tuple[_Key, ...]:
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValueError('a JWKS must be a JSON object with a "keys" list')
    return tuple(_parse_jwk(jwk, n) for n, jwk in enumerate(jwks["keys"]))


def _parse_jwk(jwk: Any, n: int) -> _Key:
    if not isinstance(jwk, Mapping):
        raise ValueError(f"keys[{n}] must be a JSON object")
    private = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if private:
        # A hospital must refuse a "public" key set that leaks the private key.
        raise ValueError(f"keys[{n}] contains private key material ({', '.join(private)}); register public keys only")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"keys[{n}].kid must be a string")
    try:
        if jwk.get("kty") == "RSA":
            public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = rsa.RSAPublicNumbers(
                _b64int(jwk["e"]), _b64int(jwk["n"])
            ).public_key()
            alg = jwk.get("alg", "RS384")
        elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-384":
            public = ec.EllipticCurvePublicNumbers(_b64int(jwk["x"]), _b64int(jwk["y"]), ec.SECP384R1()).public_key()
            alg = jwk.get("alg", "ES384")
        else:
            raise ValueError(f"keys[{n}] must be an RSA key or an EC P-384 key")
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"keys[{n}] is missing or has a malformed member: {exc}") from None
    if alg not in ALGORITHMS or (alg == "RS384") != isinstance(public, rsa.RSAPublicKey):
        raise ValueError(f"keys[{n}].alg {alg!r} does not fit its key type; use RS384 for RSA, ES384 for P-384")
    return _Key(kid=kid, alg=alg, public=public)


def _json_part(part: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(part, name))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise AssertionRejected(f"The assertion's {name} is not a base64url JSON object.")
    return value


def _b64decode(part: str, name: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AssertionRejected(f"The assertion's {name} is not valid base64url.") from None


def _b64int(value: str) -> int:
    if not isinstance(value, str):
        raise TypeError("expected a base64url string")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
