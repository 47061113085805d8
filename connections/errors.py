"""Typed errors for everything that can go wrong when talking to a hospital's endpoint.

A remote failure must never crash a pipeline step: it becomes a ``RemoteError`` whose ``kind``
the step can store, whose ``message`` a customer-success person can act on, whose ``hint`` says
what to try next, and whose ``detail`` gives an engineer the facts (method, redacted URL, status,
a redacted body snippet, timings). The redaction helpers live here too, so every producer of an
error scrubs secrets the same way.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"

# Field and query-parameter names whose values are credentials. Matched case-insensitively
# against the whole name, so ``client_secret`` and ``X-Api-Key`` both hit but ``secretary`` does not.
_SECRET_NAME = re.compile(
    r"(?i)^(?:access_token|refresh_token|id_token|token|client_secret|secret|password|passwd|pwd|"
    r"assertion|client_assertion|api[_-]?key|x-api-key|key|sig|signature|authorization|"
    r"session|sessionid|jwt)$"
)
_JSON_SECRET_FIELD = re.compile(
    r'(?i)("(?:access_token|refresh_token|id_token|client_secret|password|secret|assertion|'
    r'client_assertion|token|api_key|apikey)"\s*:\s*)"(?:[^"\\]|\\.)*"'
)
_FORM_SECRET_FIELD = re.compile(
    r"(?i)\b((?:access_token|refresh_token|id_token|client_secret|password|assertion|"
    r"client_assertion|api_key|apikey)=)[^&\s\"']+"
)
_AUTH_SCHEME_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")

# Shorter "secrets" would redact ordinary words; a credential is never this short.
_MIN_LITERAL_SECRET = 4


class ErrorKind(enum.StrEnum):
    """What went wrong, in a form a step can store and a UI can group by."""

    DNS = "dns"
    TLS = "tls"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    DEADLINE = "deadline"
    REDIRECT_REFUSED = "redirect_refused"
    BLOCKED_ADDRESS = "blocked_address"
    TOO_LARGE = "too_large"
    AUTH = "auth"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    SERVER_ERROR = "server_error"
    BAD_PAYLOAD = "bad_payload"
    NOT_FHIR = "not_fhir"
    NO_CAPABILITY_STATEMENT = "no_capability_statement"
    WRONG_VERSION = "wrong_version"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED = "unsupported"


# One table, so the wording is reviewed in one place. (message, hint)
DEFAULT_TEXT: Mapping[ErrorKind, tuple[str, str]] = {
    ErrorKind.DNS: (
        "The hospital's server name could not be found. Check the FHIR base URL's host name.",
        "Compare the host name with the one the hospital's IT team gave you; internal-only names "
        "cannot be reached from our network.",
    ),
    ErrorKind.TLS: (
        "A secure (TLS) connection to the hospital's server could not be set up.",
        "The certificate may be expired, self-signed, issued for a different name, or the server "
        "may only offer old TLS versions. Ask the hospital's IT team to check the certificate.",
    ),
    ErrorKind.CONNECT: (
        "The hospital's server refused or dropped the connection.",
        "Check the port in the FHIR base URL and ask the hospital's IT team whether our addresses "
        "are allowed through their firewall.",
    ),
    ErrorKind.TIMEOUT: (
        "The hospital's server did not answer in time.",
        "Try again later; if it keeps happening, ask the hospital's IT team whether the server "
        "is overloaded or a firewall is silently dropping our traffic.",
    ),
    ErrorKind.DEADLINE: (
        "The hospital's server took too long to send its full answer.",
        "The server is answering very slowly. Try again later, or ask for a smaller page size.",
    ),
    ErrorKind.REDIRECT_REFUSED: (
        "The hospital's server redirected us somewhere we will not follow.",
        "Use the final URL directly as the FHIR base URL; we never follow a redirect from https "
        "to plain http, or more than a few redirects.",
    ),
    ErrorKind.BLOCKED_ADDRESS: (
        "This address is not allowed: it points at a private, local or otherwise unsafe network location.",
        "Use the hospital's public FHIR base URL (https://host/path), without a user name or password in it.",
    ),
    ErrorKind.TOO_LARGE: (
        "The hospital's server sent an answer larger than we accept.",
        "Ask for fewer results per page (a smaller _count).",
    ),
    ErrorKind.AUTH: (
        "The hospital's server did not accept our credentials.",
        "Re-enter the client id and secret, and check they are for this environment.",
    ),
    ErrorKind.FORBIDDEN: (
        "The hospital's server accepted our credentials but refused access to this data.",
        "Ask the hospital's IT team to grant the app the scopes (permissions) it needs.",
    ),
    ErrorKind.NOT_FOUND: (
        "The hospital's server has nothing at this address.",
        "Check the FHIR base URL's path, and that the record exists in this environment.",
    ),
    ErrorKind.THROTTLED: (
        "The hospital's server is limiting how fast we may call it.",
        "Re-run once its limit has reset (the details say when, if the server said); if it keeps happening, "
        "agree a higher rate limit with the hospital or use a smaller sample.",
    ),
    ErrorKind.SERVER_ERROR: (
        "The hospital's server had an internal error.",
        # Only the statuses that say "unavailable for now" (502, 503, 504) get this hint; the client
        # gives a plain 500 one that does not promise a retry will help.
        "The server, or a gateway in front of it, said it is unavailable on every attempt: if the hospital has "
        "maintenance under way, re-run afterwards; otherwise send their IT team the time and the request shown in "
        "the details.",
    ),
    ErrorKind.BAD_PAYLOAD: (
        "The hospital's server sent an answer we could not read.",
        "An engineer should look at the details; the response may be cut off or malformed.",
    ),
    ErrorKind.NOT_FHIR: (
        "This address does not look like a FHIR server.",
        "Check the FHIR base URL: it usually ends in something like /fhir/r4, not a login or portal page.",
    ),
    ErrorKind.NO_CAPABILITY_STATEMENT: (
        "The server answers FHIR, but /metadata is not a CapabilityStatement.",
        "The base URL is probably right: the server answered FHIR. Ask the hospital whether it publishes its "
        "CapabilityStatement elsewhere; if it has none, choose “Continue without a CapabilityStatement” on the "
        "connection and re-run configure: the checks that need it are skipped and listed, and the test step's "
        "searches show what the server supports.",
    ),
    ErrorKind.WRONG_VERSION: (
        "The hospital's server speaks a FHIR version we do not support (we need R4, 4.0.x).",
        "Ask the hospital for their FHIR R4 endpoint; many servers publish DSTU2, STU3 and R4 at different URLs.",
    ),
    ErrorKind.BAD_REQUEST: (
        "The hospital's server rejected our request.",
        "An engineer should look at the details; the server usually says what it did not accept.",
    ),
    ErrorKind.UNSUPPORTED: (
        "The hospital's server does not support something we need.",
        "Check the server's capability statement with the hospital's IT team.",
    ),
}


class RemoteError(Exception):
    """A classified failure talking to a remote endpoint; ``str(err)`` is the plain message."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str | None = None,
        *,
        hint: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        default_message, default_hint = DEFAULT_TEXT[kind]
        self.kind = kind
        self.message = message or default_message
        self.hint = hint or default_hint
        self.detail: dict[str, Any] = dict(detail or {})
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"RemoteError(kind={self.kind.value!r}, message={self.message!r})"

    @property
    def status(self) -> int | None:
        """The HTTP status that caused this error, when there was one."""
        return self.detail.get("status")

    def with_detail(self, **extra: Any) -> RemoteError:
        """A copy with more detail merged in (e.g. attempts and waits once retries end)."""
        return RemoteError(self.kind, self.message, hint=self.hint, detail={**self.detail, **extra})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form for storing on a step run."""
        return {
            "kind": self.kind.value,
            "message": self.message,
            "hint": self.hint,
            "detail": self.detail,
        }


class Redactor:
    """Scrubs credentials from text that will be stored or shown.

    It knows the literal secrets used in the current request (header values, form fields) and
    also applies patterns for credentials it has never seen (tokens echoed back by a server).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        literal = {s for s in secrets if s and len(s) >= _MIN_LITERAL_SECRET}
        self._secrets = sorted(literal, key=len, reverse=True)

    def text(self, value: str) -> str:
        """Redact known secrets and anything that looks like a credential."""
        for secret in self._secrets:
            value = value.replace(secret, REDACTED)
        value = _JSON_SECRET_FIELD.sub(rf'\1"{REDACTED}"', value)
        value = _FORM_SECRET_FIELD.sub(rf"\1{REDACTED}", value)
        value = _AUTH_SCHEME_VALUE.sub(rf"\1 {REDACTED}", value)
        return _JWT.sub(REDACTED, value)

    def body(self, content: bytes, limit: int = 300) -> str:
        """The first ``limit`` characters of a body, redacted.

        Redaction runs before truncation so a secret cut in half by the limit cannot leave its
        first half behind.
        """
        text = content[:65536].decode("utf-8", errors="replace")
        return self.text(text)[:limit]

    def url(self, url: str) -> str:
        """The URL without userinfo and with credential-like query values replaced."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.text(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, REDACTED if _SECRET_NAME.match(k) else v) for k, v in pairs], safe="[]")
        return self.text(urlunsplit((parts.scheme, netloc, parts.path, query, "")))


def is_secret_name(name: str) -> bool:
    """Whether a header, form field or query parameter name carries a credential."""
    return bool(_SECRET_NAME.match(name))
