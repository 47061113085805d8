"""Authentication flows for hospital endpoints, producing request headers.

Each connection authenticates one of four ways: not at all, HTTP Basic, OAuth2 client
credentials with a shared secret, or SMART Backend Services, where the client proves itself with
a JWT signed by a private key the hospital has the public half of (what Epic, Oracle Health and
athenahealth call "backend" or "system" apps). The access token is cached until shortly before
it expires, so a validation run of hundreds of requests costs one token call. Token endpoint
refusals become ``RemoteError(AUTH)`` with a message that names the fix, because
"invalid_client" means nothing to the person onboarding. The token itself is never returned,
stored on an error, or logged.
"""

from __future__ import annotations

import base64
import email.utils
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

from connections import keys
from connections.errors import ErrorKind, RemoteError
from connections.http import GuardedClient

# A token is renewed this long before it expires, so a request never leaves with a token that
# dies in flight.
EXPIRY_MARGIN = 30.0
# RFC 6749 only recommends expires_in; servers that omit it get this lifetime assumed.
DEFAULT_EXPIRES_IN = 300

# Clocks further apart than this explain an expired or not-yet-valid assertion by themselves.
CLOCK_SKEW_TOLERANCE = 60.0

AuthMethod = Literal["none", "basic", "client_credentials", "smart_backend"]
TokenAuthMethod = Literal["client_secret_basic", "client_secret_post"]
TOKEN_METHODS = frozenset({"client_credentials", "smart_backend"})

_OAUTH_FIXES: Mapping[str, str] = {
    "invalid_client": (
        "The hospital rejected the client id or secret. Re-enter the secret, and check the client "
        "is registered for this environment."
    ),
    "invalid_grant": (
        "The hospital refused the grant. Check the app is approved (activated) for this "
        "environment and that its credentials have not been revoked."
    ),
    "unauthorized_client": (
        "The hospital does not allow this client to use the client-credentials flow. Ask the "
        "hospital's IT team to enable backend (system) access for the app."
    ),
    "invalid_scope": (
        "The hospital refused the requested scopes ({scope}). Remove scopes the app is not registered "
        "for, or ask the hospital's IT team to grant them."
    ),
    "unsupported_grant_type": (
        "The hospital's token endpoint does not support the client-credentials flow. Check the "
        "token URL, and whether the hospital expects a different authentication method."
    ),
    "invalid_request": (
        "The hospital's token endpoint said our token request was malformed. Check the token "
        "URL and the client authentication method (basic or post)."
    ),
}

# The same codes where the client authenticates with a signed assertion (SMART Backend Services).
_SMART_FIXES: Mapping[str, str] = {
    **_OAUTH_FIXES,
    "invalid_client": (
        "The hospital did not accept our signed assertion for client id {client_id}. Check the client "
        "id, and that the hospital registered the public key set (JWKS) shown on this connection's page."
    ),
    "invalid_grant": (
        "The hospital refused the grant for client id {client_id}. Check the app is approved "
        "(activated) for this environment and that its registered key has not been revoked."
    ),
    "unauthorized_client": (
        "The hospital does not allow client id {client_id} to use SMART Backend Services. Ask the "
        "hospital's IT team to enable backend (system) access with a signed assertion for the app."
    ),
    "invalid_request": (
        "The hospital's token endpoint said our signed-assertion token request was malformed. Check "
        "the token URL, and that the hospital supports SMART Backend Services (private_key_jwt)."
    ),
}

# What a refused assertion's error_description says, matched loosely: servers word it freely.
_ASSERTION_PROBLEMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("audience", re.compile(r"(?i)\baud\b|audience")),
    ("replay", re.compile(r"(?i)\bjti\b|replay|already (?:been )?used")),
    ("wrong_key", re.compile(r"(?i)signature|\bkid\b|jwks|public key|\bkeys?\b")),
    ("not_yet_valid", re.compile(r"(?i)not yet valid|\bnbf\b|\biat\b|future")),
    ("expired", re.compile(r"(?i)expired|\bexp\b")),
)
_ASSERTION_FIXES: Mapping[str, str] = {
    "audience": (
        "The hospital refused our signed assertion because it was addressed to a different token URL "
        "(the JWT's aud claim). We signed it for {token_url}. Set the connection's token URL to exactly "
        "the one the hospital publishes, or leave it blank to read it from .well-known/smart-configuration."
    ),
    "replay": (
        "The hospital says it has already seen our signed assertion's id (jti). Try again; if it keeps "
        "happening, the hospital's token endpoint or a proxy in front of it is replaying requests."
    ),
    "not_yet_valid": (
        "The hospital says our signed assertion is not valid yet (issued in the future), although our "
        "clocks agree within a minute. Ask the hospital's IT team which clock tolerance their token "
        "endpoint applies."
    ),
    "expired": (
        "The hospital says our signed assertion had expired when it arrived, although our clocks agree "
        "within a minute. Ask the hospital's IT team what assertion lifetime their token endpoint accepts."
    ),
    "wrong_key": (
        "The hospital could not verify our signed assertion with the public key it has registered for "
        "client id {client_id}. Register the JWKS shown on this connection's page (key id "
        "{key_id}) with the hospital; if you generated a new key pair since, register the new one."
    ),
}
_SKEW_FIX = (
    "The hospital's clock and ours differ by about {minutes} (the hospital is {direction} by "
    "{seconds} s), so it judged our signed assertion {state}. Ask the hospital's IT team to check "
    "their server's time (NTP), and have an engineer check ours."
)


@dataclass(frozen=True)
class AuthConfig:
    """How to authenticate to one endpoint.

    ``secret`` is the password or client secret; ``private_key`` the PEM key that signs SMART
    Backend Services assertions, with its ``key_id`` (the JWK kid) and ``key_algorithm``.
    """

    method: AuthMethod
    client_id: str = ""
    secret: str = ""
    token_url: str = ""
    scope: str = ""
    token_auth_method: TokenAuthMethod = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    private_key: str = ""
    key_id: str = ""
    key_algorithm: str = "RS384"

    @property
    def needs_token(self) -> bool:
        """Whether requests carry a bearer token from a token endpoint."""
        return self.method in TOKEN_METHODS

    def __repr__(self) -> str:
        # Keeps the secret and the private key out of tracebacks, logs and debug pages.
        return (
            f"AuthConfig(method={self.method!r}, client_id={self.client_id!r}, secret='***', "
            f"token_url={self.token_url!r}, scope={self.scope!r}, "
            f"token_auth_method={self.token_auth_method!r}, private_key='***', "
            f"key_id={self.key_id!r}, key_algorithm={self.key_algorithm!r})"
        )


@dataclass(frozen=True)
class TokenInfo:
    """What is safe to report about a token: never the token itself."""

    token_type: str
    expires_in: int
    scopes: tuple[str, ...]
    obtained_at: float
    # Requested scopes the token endpoint did not grant (RFC 6749 5.1 lets it narrow them).
    missing_scopes: tuple[str, ...] = ()

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in


class Authenticator:
    """Produces the headers that authenticate a request, fetching and caching tokens."""

    def __init__(
        self,
        config: AuthConfig,
        client: GuardedClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._info: TokenInfo | None = None

    @property
    def config(self) -> AuthConfig:
        return self._config

    def headers(self) -> dict[str, str]:
        """Headers to add to a FHIR request; may call the token endpoint."""
        method = self._config.method
        if method == "none":
            return {}
        if method == "basic":
            return {"Authorization": basic_header(self._config.client_id, self._config.secret)}
        if method in TOKEN_METHODS:
            return {"Authorization": f"Bearer {self._current_token()}"}
        raise RemoteError(
            ErrorKind.UNSUPPORTED,
            f"The authentication method {method!r} is not supported.",
            hint="Choose none, basic, client credentials or SMART Backend Services.",
        )

    def token_info(self) -> TokenInfo | None:
        """The last token's type, lifetime and granted scopes; None before one is fetched."""
        return self._info

    def invalidate(self) -> None:
        """Forget the cached token, e.g. after the server answered 401 to it."""
        with self._lock:
            self._token = None
            self._info = None

    def _current_token(self) -> str:
        with self._lock:
            if self._token is None or self._info is None or not self._fresh(self._info):
                self._token, self._info = self._fetch_token()
            return self._token

    def _fresh(self, info: TokenInfo) -> bool:
        return self._clock() < info.expires_at - EXPIRY_MARGIN

    def _fetch_token(self) -> tuple[str, TokenInfo]:
        config = self._config
        if not config.token_url:
            raise RemoteError(
                ErrorKind.AUTH,
                "No token URL is configured for this connection.",
                hint="Enter the token URL, or read it from the server's SMART configuration.",
            )
        form = {"grant_type": "client_credentials"}
        if config.scope:
            form["scope"] = config.scope
        headers = {"Accept": "application/json"}
        obtained_at = self._clock()
        if config.method == "smart_backend":
            # SMART Backend Services: the client authenticates with a signed JWT, no secret.
            form["client_assertion_type"] = keys.JWT_BEARER
            form["client_assertion"] = self._assertion(obtained_at)
        elif config.token_auth_method == "client_secret_post":  # noqa: S105 - a method name
            form.update(client_id=config.client_id, client_secret=config.secret)
        else:
            headers["Authorization"] = basic_header(config.client_id, config.secret, form_encode=True)
        error: RemoteError | None = None
        try:
            response = self._client.request("POST", config.token_url, headers=headers, data=form, expect_json=True)
        except RemoteError as exc:
            error = token_error(exc, config, now=self._clock())
        if error is not None:
            raise error
        return _parse_token(response.json(), obtained_at, config.scope)

    def _assertion(self, now: float) -> str:
        config = self._config
        if not config.private_key:
            raise RemoteError(
                ErrorKind.AUTH,
                "No key pair has been generated for this SMART Backend Services connection.",
                hint="Generate a key pair on the connection's page and register its JWKS with the hospital.",
            )
        return keys.client_assertion(
            private_pem=config.private_key,
            algorithm=config.key_algorithm,
            key_id=config.key_id,
            client_id=config.client_id,
            token_url=config.token_url,
            now=now,
        )


def basic_header(user: str, password: str, *, form_encode: bool = False) -> str:
    """An HTTP Basic Authorization value.

    For OAuth client authentication RFC 6749 section 2.3.1 requires both parts to be
    form-urlencoded first; plain Basic auth to a FHIR server sends them as they are.
    """
    if form_encode:
        user, password = quote(user, safe=""), quote(password, safe="")
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def with_discovery(config: AuthConfig, smart: Mapping[str, Any] | None) -> AuthConfig:
    """The config with the token URL the SMART configuration advertises, when none is set.

    For SMART Backend Services it also checks the server accepts signed assertions made with
    this connection's key algorithm, so a mismatch is named before any token request fails.
    """
    smart = smart or {}
    token_url = smart.get("token_endpoint")
    if not config.token_url and isinstance(token_url, str) and token_url:
        config = replace(config, token_url=token_url)
    if config.method != "smart_backend":
        return config
    methods = smart.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list) and methods and "private_key_jwt" not in methods:
        raise RemoteError(
            ErrorKind.AUTH,
            "The hospital's SMART configuration does not accept signed assertions (private_key_jwt); "
            f"it lists {', '.join(str(m) for m in methods)}.",
            hint="Use OAuth2 client credentials with a secret, or ask the hospital to enable SMART Backend Services.",
        )
    algorithms = smart.get("token_endpoint_auth_signing_alg_values_supported")
    if isinstance(algorithms, list) and algorithms and config.key_algorithm not in algorithms:
        usable = [a for a in keys.ALGORITHMS if a in algorithms]
        raise RemoteError(
            ErrorKind.AUTH,
            f"The hospital accepts signed assertions made with {', '.join(str(a) for a in algorithms)}, "
            f"but this connection's key is {config.key_algorithm}.",
            hint=(
                f"Generate a {usable[0]} key pair on the connection's page and register it."
                if usable
                else "We sign with RS384 or ES384; ask the hospital whether either can be enabled."
            ),
        )
    return config


def token_error(exc: RemoteError, config: AuthConfig, *, now: float) -> RemoteError:
    """Re-word a token endpoint failure as the fix a person should make."""
    code = str(exc.detail.get("oauth_error", ""))
    fill = {
        "client_id": config.client_id,
        "scope": config.scope or "none",
        "token_url": config.token_url,
        "key_id": config.key_id,
    }
    if config.method == "smart_backend" and code in ("invalid_client", "invalid_grant", "invalid_request"):
        message = _assertion_problem(exc.detail, now)
        if message is not None:
            return RemoteError(ErrorKind.AUTH, message.format(**fill), detail=exc.detail)
    fixes = _SMART_FIXES if config.method == "smart_backend" else _OAUTH_FIXES
    if code in fixes:
        return RemoteError(ErrorKind.AUTH, fixes[code].format(**fill), detail=exc.detail)
    if exc.kind in (ErrorKind.AUTH, ErrorKind.BAD_REQUEST, ErrorKind.FORBIDDEN):
        return RemoteError(
            ErrorKind.AUTH,
            "The hospital's token endpoint refused our credentials.",
            detail=exc.detail,
        )
    if exc.kind in (ErrorKind.NOT_FOUND, ErrorKind.NOT_FHIR):
        return RemoteError(
            exc.kind,
            "Nothing that issues tokens answers at the token URL.",
            hint="Check the token URL; the server's SMART configuration lists the right one.",
            detail=exc.detail,
        )
    return exc


def _assertion_problem(detail: Mapping[str, Any], now: float) -> str | None:
    """The fix for a refused signed assertion, from what the server said and its clock."""
    description = str(detail.get("oauth_error_description") or "")
    problem = next((name for name, pattern in _ASSERTION_PROBLEMS if pattern.search(description)), None)
    if problem in ("audience", "replay", "wrong_key"):
        return _ASSERTION_FIXES[str(problem)]
    skew = server_clock_skew(detail.get("server_date"), now)
    if skew is not None and abs(skew) > CLOCK_SKEW_TOLERANCE:
        seconds = round(abs(skew))
        minutes = round(seconds / 60)
        return _SKEW_FIX.format(
            minutes=f"{minutes} minute{'s' if minutes != 1 else ''}",
            direction="ahead" if skew > 0 else "behind",
            seconds=seconds,
            state="expired" if skew > 0 else "not valid yet",
        )
    return _ASSERTION_FIXES[problem] if problem is not None else None


def server_clock_skew(server_date: Any, now: float) -> float | None:
    """How far the server's clock (its Date header) is ahead of ours, in seconds."""
    if not isinstance(server_date, str) or not server_date:
        return None
    try:
        when = email.utils.parsedate_to_datetime(server_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp() - now


def _parse_token(body: Any, obtained_at: float, requested_scope: str) -> tuple[str, TokenInfo]:
    """The access token and what is safe to report about it, from a token response body."""
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise RemoteError(
            ErrorKind.AUTH,
            "The hospital's token endpoint answered without an access token.",
            hint="Check the token URL points at the OAuth token endpoint.",
        )
    token_type = str(body.get("token_type", "")).lower()
    if token_type != "bearer":  # noqa: S105 - a token type, not a secret
        raise RemoteError(
            ErrorKind.AUTH,
            f"The hospital issued a {token_type or 'untyped'} token; we only support bearer tokens.",
            detail={"token_type": token_type},
        )
    try:
        expires_in = int(body.get("expires_in", DEFAULT_EXPIRES_IN))
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    # RFC 6749 section 5.1: an omitted scope means the requested scope was granted.
    granted = body.get("scope")
    scope = granted if isinstance(granted, str) else requested_scope
    scopes = tuple(scope.split())
    info = TokenInfo(
        token_type="bearer",  # noqa: S106 - a token type, not a secret
        expires_in=max(0, expires_in),
        scopes=scopes,
        obtained_at=obtained_at,
        missing_scopes=missing_scopes(requested_scope.split(), scopes),
    )
    return body["access_token"], info


# The resource types the product reads, so a wildcard asked for is granted when each of them is.
PRODUCT_RESOURCE_TYPES = ("Patient", "Observation", "Condition", "Encounter")
# SMART v1 "read" and v2 "rs" (read and search) grant the same reads; "*" grants everything.
_READ_ACCESS = {"read": ("read", "rs", "*", "cruds"), "rs": ("read", "rs", "*", "cruds"), "*": ("*",)}


def missing_scopes(requested: list[str], granted: tuple[str, ...]) -> tuple[str, ...]:
    """The requested scopes the token does not carry, as narrowly as can be said.

    A server may answer a wildcard (``system/*.read``) with one scope per resource type. The wildcard
    then counts as granted when every type the product reads was granted, and otherwise the missing
    types are named (``system/Encounter.read``), never the wildcard that was in fact mostly granted.
    """
    have = set(granted)
    missing: list[str] = []
    for scope in requested:
        if scope in have:
            continue
        context, _, rest = scope.partition("/")
        resource_type, _, access = rest.partition(".")
        if resource_type != "*" or not context or access not in _READ_ACCESS:
            missing.append(scope)
            continue
        if not any(g.startswith(f"{context}/") for g in have):
            missing.append(scope)  # nothing of this context was granted: the wildcard itself is missing
            continue
        covers = _READ_ACCESS[access]
        missing.extend(
            f"{context}/{rtype}.{access}"
            for rtype in PRODUCT_RESOURCE_TYPES
            if not any(f"{context}/{rtype}.{a}" in have or f"{context}/*.{a}" in have for a in covers)
        )
    return tuple(missing)
