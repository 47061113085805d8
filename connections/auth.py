"""Authentication flows for hospital endpoints, producing request headers.

Each connection authenticates one of three ways: not at all, HTTP Basic, or OAuth2 client
credentials (what Epic, Oracle Health and athenahealth call "backend" or "system" apps). The
access token is cached until shortly before it expires, so a validation run of hundreds of
requests costs one token call. Token endpoint refusals become ``RemoteError(AUTH)`` with a
message that names the fix, because "invalid_client" means nothing to the person onboarding.
The token itself is never returned, stored on an error, or logged.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from connections.errors import ErrorKind, RemoteError
from connections.http import GuardedClient

# A token is renewed this long before it expires, so a request never leaves with a token that
# dies in flight.
EXPIRY_MARGIN = 30.0
# RFC 6749 only recommends expires_in; servers that omit it get this lifetime assumed.
DEFAULT_EXPIRES_IN = 300

AuthMethod = Literal["none", "basic", "client_credentials"]
TokenAuthMethod = Literal["client_secret_basic", "client_secret_post"]

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
        "The hospital refused the requested scopes. Remove scopes the app is not registered for, "
        "or ask the hospital's IT team to grant them."
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


@dataclass(frozen=True)
class AuthConfig:
    """How to authenticate to one endpoint. ``secret`` is the password or client secret."""

    method: AuthMethod
    client_id: str = ""
    secret: str = ""
    token_url: str = ""
    scope: str = ""
    token_auth_method: TokenAuthMethod = "client_secret_basic"  # noqa: S105 - a method name, not a secret

    def __repr__(self) -> str:
        # Keeps the secret out of tracebacks, logs and debug pages that print the config.
        return (
            f"AuthConfig(method={self.method!r}, client_id={self.client_id!r}, secret='***', "
            f"token_url={self.token_url!r}, scope={self.scope!r}, "
            f"token_auth_method={self.token_auth_method!r})"
        )


@dataclass(frozen=True)
class TokenInfo:
    """What is safe to report about a token: never the token itself."""

    token_type: str
    expires_in: int
    scopes: tuple[str, ...]
    obtained_at: float

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
        if method == "client_credentials":
            return {"Authorization": f"Bearer {self._current_token()}"}
        raise RemoteError(
            ErrorKind.UNSUPPORTED,
            f"The authentication method {method!r} is not supported.",
            hint="Choose none, basic or client credentials.",
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
        if config.token_auth_method == "client_secret_post":  # noqa: S105 - a method name
            form.update(client_id=config.client_id, client_secret=config.secret)
        else:
            headers["Authorization"] = basic_header(config.client_id, config.secret, form_encode=True)
        obtained_at = self._clock()
        error: RemoteError | None = None
        try:
            response = self._client.request("POST", config.token_url, headers=headers, data=form, expect_json=True)
        except RemoteError as exc:
            error = _token_error(exc)
        if error is not None:
            raise error
        return _parse_token(response.json(), obtained_at, config.scope)


def basic_header(user: str, password: str, *, form_encode: bool = False) -> str:
    """An HTTP Basic Authorization value.

    For OAuth client authentication RFC 6749 section 2.3.1 requires both parts to be
    form-urlencoded first; plain Basic auth to a FHIR server sends them as they are.
    """
    if form_encode:
        user, password = quote(user, safe=""), quote(password, safe="")
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _token_error(exc: RemoteError) -> RemoteError:
    """Re-word a token endpoint failure as the fix a person should make."""
    code = str(exc.detail.get("oauth_error", ""))
    if code in _OAUTH_FIXES:
        return RemoteError(ErrorKind.AUTH, _OAUTH_FIXES[code], detail=exc.detail)
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
    info = TokenInfo(
        token_type="bearer",  # noqa: S106 - a token type, not a secret
        expires_in=max(0, expires_in),
        scopes=tuple(scope.split()),
        obtained_at=obtained_at,
    )
    return body["access_token"], info
