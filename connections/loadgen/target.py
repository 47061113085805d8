"""The one address a load test may reach, checked and pinned before the run starts.

The load generator never resolves a name or reads a URL: the guarded client's SSRF rules check
the connection's base URL once (``connections.http.pin_target``) and hand over the IP address
they allowed, with what a request must carry to reach the right virtual host. Connecting only
to that address means a DNS answer that changes mid-run (a rebinding attack, or a failover to a
host nobody approved) cannot redirect thousands of requests.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PinnedTarget:
    """Where and how to send load: an allowed address plus the request framing for it."""

    # The IP address (no brackets for IPv6) and port the guard allowed; nothing else is dialled.
    address: str
    port: int
    # The Host header, as the URL spelt it (``ehr.example.org`` or ``ehr.example.org:8443``).
    host_header: str
    scheme: str  # "http" or "https"
    # The FHIR base path, percent-encoded, without a trailing slash ("" for the root).
    base_path: str
    # TLS server name (SNI and certificate check); None for plain http.
    server_name: str | None = None
    # Headers every request carries: Accept, User-Agent and the credential. Kept out of repr so
    # an Authorization header never reaches a log or a traceback.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    # Wall-clock limit for one request, from the moment it is written to its last body byte.
    deadline: float = 30.0
    max_response_bytes: int = 20 * 1024 * 1024
    # A 429 asking for a longer wait than this ends the run instead of stalling it.
    max_retry_after: float = 30.0
    # Verification always on; built by the guarded client with its CA roots.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, got {self.scheme!r}")
        if self.scheme == "https" and (self.ssl_context is None or not self.server_name):
            raise ValueError("an https target needs an SSL context and a server name")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        for text in (self.host_header, self.base_path, *(f"{n}{v}" for n, v in self.headers)):
            if any(c in text for c in "\r\n\0"):
                raise ValueError("header names and values must not contain line breaks")
            try:
                text.encode("latin-1")  # what HTTP/1.1 can carry in a header
            except UnicodeEncodeError:
                raise ValueError("headers and the base path must be plain text (Latin-1)") from None
        if self.base_path.endswith("/"):
            raise ValueError("base_path must not end with '/'")
