"""Key pairs and signed client assertions for SMART Backend Services (``private_key_jwt``).

A hospital registers our public key once (as a JWKS) and from then on we prove who we are by
signing a short-lived JWT with the private key, so no shared secret ever crosses the wire. The
portal makes the key pair itself: the private key is stored encrypted and never shown, and only
the public half leaves the portal. This module is pure crypto (``cryptography`` and PyJWT) with
no Django, so the auth flow and the tests can use it directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connections.errors import ErrorKind, RemoteError

KeyAlgorithm = Literal["RS384", "ES384"]
ALGORITHMS: tuple[KeyAlgorithm, ...] = ("RS384", "ES384")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RSA_KEY_BITS = 3072  # above the 2048 SMART asks for, so a key made today stays acceptable for years
# SMART: exp "SHALL be no more than five minutes in the future". A minute less leaves room for a
# hospital whose clock runs slightly behind ours.
ASSERTION_LIFETIME = 240

# The public members of each key type, in RFC 7638 (thumbprint) order.
_PUBLIC_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


@dataclass(frozen=True)
class KeyPair:
    """A freshly made key pair: the private PEM to store encrypted, the public JWK to publish."""

    algorithm: str
    key_id: str
    private_pem: str
    public_jwk: dict[str, Any]

    def __repr__(self) -> str:
        # Keeps the private key out of tracebacks and logs.
        return f"KeyPair(algorithm={self.algorithm!r}, key_id={self.key_id!r}, private_pem='***')"


def generate_key_pair(algorithm: str) -> KeyPair:
    """A new RS384 (RSA 3072) or ES384 (P-384) key pair, with its key id and public JWK."""
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS384":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    elif algorithm == "ES384":
        private_key = ec.generate_private_key(ec.SECP384R1())
    else:
        raise ValueError(f"Unsupported key algorithm {algorithm!r}; choose RS384 or ES384.")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    jwk = public_jwk(pem, algorithm)
    return KeyPair(algorithm=algorithm, key_id=jwk["kid"], private_pem=pem, public_jwk=jwk)


def public_jwk(private_pem: str, algorithm: str) -> dict[str, Any]:
    """The public half of a private key as a JWK, with its RFC 7638 thumbprint as ``kid``."""
    key = _load_private_key(private_pem, algorithm)
    members: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        members = {"kty": "RSA", "n": _b64_int(numbers.n), "e": _b64_int(numbers.e)}
    else:
        point = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        members = {"kty": "EC", "crv": "P-384", "x": _b64_int(point.x, size), "y": _b64_int(point.y, size)}
    return {**members, "kid": thumbprint(members), "alg": algorithm, "use": "sig", "key_ops": ["verify"]}


def jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    """A JSON Web Key Set of public keys, as a hospital registers it."""
    return {"keys": [dict(key) for key in keys if key]}


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK: a key id both sides can recompute."""
    required = _PUBLIC_MEMBERS[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def client_assertion(
    *,
    private_pem: str,
    algorithm: str,
    key_id: str,
    client_id: str,
    token_url: str,
    now: float,
    lifetime: int = ASSERTION_LIFETIME,
) -> str:
    """A signed ``private_key_jwt`` for one token request (SMART Backend Services, RFC 7523).

    iss and sub are the client id, aud is the exact token URL, and jti is random so the
    hospital can refuse a replayed assertion.
    """
    issued = int(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + min(lifetime, 300),
        "jti": secrets.token_urlsafe(24),
    }
    key = _load_private_key(private_pem, algorithm)
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": key_id, "typ": "JWT"})


def _load_private_key(private_pem: str, algorithm: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The stored key, checked against its algorithm; a broken key is an auth error to fix."""
    try:
        key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeError):
        key = None
    fits = (algorithm == "RS384" and isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048) or (
        algorithm == "ES384" and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    )
    if not fits:
        raise RemoteError(
            ErrorKind.AUTH,
            f"The stored private key is missing or is not a valid {algorithm} key.",
            hint="Generate a new key pair on the connection's page and register its JWKS with the hospital.",
        )
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64_int(value: int, size: int | None = None) -> str:
    """Base64url of an unsigned big-endian integer; EC coordinates keep their full width."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64(value.to_bytes(length, "big"))
