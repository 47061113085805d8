"""The one guarded HTTP client for every call the portal makes to a hospital.

Hospital URLs are typed in by people, so every outbound request is a potential SSRF: this module
refuses anything that is not a public http(s) address, pins each connection to the address it
checked (no second DNS lookup an attacker could rebind), caps time and size, follows redirects
itself so each hop is re-checked, retries only what is worth retrying, and turns every failure
into a typed ``RemoteError`` with secrets scrubbed. It takes its policy as an argument and imports
nothing from Django, so it can be tested against real loopback servers without settings.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import email.utils
import functools
import ipaddress
import logging
import math
import random
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import certifi
import httpcore
import httpx

from connections.errors import ErrorKind, Redactor, RemoteError, is_secret_name
from connections.loadgen.target import PinnedTarget
from portal import safejson

if TYPE_CHECKING:
    from connections.limits import PullLimiter

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> IP address strings. The default wraps socket.getaddrinfo; tests inject a table.
Resolver = Callable[[str, int], Sequence[str]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Answers that say "slow down" to the whole connection, not to one request.
SLOW_DOWN_STATUSES = frozenset({429, 503})
RETRYABLE_KINDS = frozenset({ErrorKind.TIMEOUT, ErrorKind.CONNECT})
DEFAULT_ACCEPT = "application/fhir+json, application/json;q=0.9"
# Error bodies are only read for their first few kilobytes: enough for an OperationOutcome.
ERROR_BODY_LIMIT = 64 * 1024
BODY_SNIPPET = 300

# Always refused, even where a network treats them as ordinary: cloud metadata services.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)
# The IANA special-purpose registries' "not globally reachable" blocks, checked explicitly:
# ``is_global`` varies between Python patch releases (3.11.7 calls 192.0.0.8 global).
_NON_GLOBAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
        "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


@dataclass(frozen=True)
class OutboundPolicy:
    """Limits for outbound calls; built from settings by the caller, never read from them here."""

    # "host:port" entries (IPv6 as "[::1]:8000") that may be reached although they are loopback
    # or private: the sandbox hospitals. Empty in production.
    allowlist: frozenset[str] = frozenset()
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    # Wall-clock limit for one attempt: connect, redirects, headers and the whole body.
    deadline: float = 30.0
    max_response_bytes: int = 20 * 1024 * 1024  # counted on decompressed bytes
    max_redirects: int = 3
    max_attempts: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 30.0
    user_agent: str = "onboarding-portal/0.1"
    # Extra CA certificates (PEM file) trusted on top of the public roots, for hospitals whose
    # endpoints use a private CA, and for the TLS tests. Verification is never switched off.
    ca_bundle: str | None = None


@dataclass
class ClientStats:
    """What one client met: how often the hospital throttled it and how long it waited before retrying.

    Counted per client, so a step that reads them from its adapter's client sees its own run's figures.
    """

    requests: int = 0
    throttled: int = 0  # answers 429
    unavailable: int = 0  # answers 503 (the server asks for time, as a 429 does)
    retries: int = 0
    waited_s: float = 0.0  # back-off and Retry-After waits, all causes
    throttle_waited_s: float = 0.0  # the part of it spent waiting out a 429

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, waits rounded to tenths of a second."""
        figures: dict[str, Any] = {
            "requests": self.requests,
            "throttled": self.throttled,
            "retries": self.retries,
            "waited_s": round(self.waited_s, 1),
            "throttle_waited_s": round(self.throttle_waited_s, 1),
        }
        if self.unavailable:
            figures["unavailable"] = self.unavailable
        return figures


# A server-requested wait must leave this much of the run's time for the retried request itself.
WAIT_MARGIN_S = 5.0


@dataclass
class Response:
    """A fully read, size-checked answer."""

    status: int
    headers: Mapping[str, str]
    url: str
    content: bytes
    elapsed_ms: float
    attempts: int
    _parsed: Any = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The body as JSON; a RemoteError(BAD_PAYLOAD) if it is not valid JSON."""
        if self._parsed is None:
            self._parsed = _parse_json(self)
        return self._parsed


# --------------------------------------------------------------------------------------------
# Address checks


def is_public_address(ip: IPAddress) -> bool:
    """Whether an address is safe to connect to: globally routable once any IPv4 inside is unwrapped.

    ``ipaddress.is_global`` alone is not enough: on Python 3.11 it calls ``::7f00:1`` (IPv4
    compatible loopback) and ``64:ff9b::7f00:1`` (NAT64 of loopback) global.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL_USE or ip.teredo is not None or ip.is_site_local:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return _is_public_v4(embedded)
        ip = ipaddress.IPv6Address(ip.packed)  # drops a %zone suffix
    elif not _is_public_v4(ip):
        return False
    return ip.is_global and not _is_special(ip)


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not _is_special(ip)


def _is_special(ip: IPAddress) -> bool:
    return (
        ip in _METADATA_ADDRESSES
        or any(ip in network for network in _NON_GLOBAL_NETWORKS if network.version == ip.version)
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form really reaches: mapped, 6to4, NAT64 or IPv4-compatible."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64_WELL_KNOWN or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _blocked(message: str, **detail: Any) -> RemoteError:
    return RemoteError(ErrorKind.BLOCKED_ADDRESS, message, detail=detail)


def _host_key(host: str, port: int) -> str:
    """The allowlist spelling of a host and port: lower case, IPv6 in brackets."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def origin_key(url: str) -> str:
    """A URL's host and port as OUTBOUND_ALLOWLIST spells them (``127.0.0.1:8101``); "" if it names no host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    if not parts.hostname:
        return ""
    return _host_key(parts.hostname, port or (443 if parts.scheme.lower() == "https" else 80))


def _host_literal(host: str) -> IPAddress | None:
    """The IP address a host names literally, or None for a DNS name.

    Refuses the numeric spellings ``inet_aton`` accepts but people never use (``2130706433``,
    ``0177.0.0.1``, ``0x7f.1``, ``127.1``): they exist to slip past naive string checks, and no
    hospital publishes its endpoint that way.
    """
    host = host.lower().strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(unquote(host))
        except ValueError:
            raise _blocked("The address is not a valid IPv6 address.") from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        raise _blocked(
            "The address uses an unusual numeric form; write the host name or a plain dotted IP address instead."
        )
    return None


def _check_literal(ip: IPAddress, key: str, allowlist: frozenset[str]) -> None:
    if key not in allowlist and not is_public_address(ip):
        raise _blocked(
            f"The address {ip} is private, local or reserved, so we will not connect to it.",
            address=str(ip),
        )


def check_url(url: str, policy: OutboundPolicy) -> httpx.URL:
    """Refuse URLs that are not plain public http(s) addresses; return the parsed URL.

    Literal IP hosts are checked here; DNS names are checked at connect time, on the addresses
    actually used. Both the standard-library parser and httpx's parser must agree the URL is
    safe, so a parser differential cannot smuggle a host past one of them.
    """
    return _check_url(url, policy.allowlist)


# Verdicts depend only on the URL text and the allowlist (no DNS), so they are cached: a URL a
# load test repeats is parsed and checked once, and a new URL on a known origin costs only the
# two parses. Refusals raise and are never cached.
@functools.lru_cache(maxsize=4096)
def _check_url(url: str, allowlist: frozenset[str]) -> httpx.URL:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise RemoteError(ErrorKind.BAD_REQUEST, "The URL is not valid.") from None
    _check_split_origin(parts.scheme, parts.netloc)
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoding an IDNA host can fail too (an invalid xn-- label)
    except (httpx.InvalidURL, ValueError):
        raise RemoteError(ErrorKind.BAD_REQUEST, "The URL is not valid.") from None
    _check_parsed_origin(parsed.scheme, host, parsed.port, parsed.userinfo, allowlist)
    return parsed


@functools.lru_cache(maxsize=256)
def _check_split_origin(scheme: str, netloc: str) -> None:
    """The standard library's view of the origin: http(s), no userinfo, a sane host."""
    if scheme.lower() not in ("http", "https"):
        raise _blocked("Only http and https addresses are allowed.", scheme=scheme)
    if "@" in netloc or "\\" in netloc:
        raise _blocked("The address must not contain a user name or password.")
    hostname = urlsplit(f"//{netloc}").hostname
    if not hostname:
        raise _blocked("The address has no host name.")
    _host_literal(hostname)


@functools.lru_cache(maxsize=256)
def _check_parsed_origin(scheme: str, host: str, port: int | None, userinfo: bytes, allowlist: frozenset[str]) -> None:
    """httpx's view of the same origin, which is the one actually connected to."""
    if userinfo:
        raise _blocked("The address must not contain a user name or password.")
    literal = _host_literal(host)
    if literal is not None:
        _check_literal(literal, _host_key(host, port or (443 if scheme == "https" else 80)), allowlist)


def default_resolver(host: str, port: int) -> list[str]:
    """Every address ``getaddrinfo`` gives for a host, in its preferred order, deduplicated."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# --------------------------------------------------------------------------------------------
# Per-attempt state shared with the network backend


@dataclass
class _Attempt:
    """The deadline of the attempt in progress and where it actually connected."""

    deadline_at: float
    connected_to: list[str] = field(default_factory=list)

    def remaining(self) -> float:
        return self.deadline_at - time.monotonic()

    def clamp(self, timeout: float | None, exc: type[Exception]) -> float:
        """The smaller of a socket timeout and the time left; raise ``exc`` if none is left."""
        left = self.remaining()
        if left <= 0:
            raise exc("deadline reached")
        return left if timeout is None else min(timeout, left)


# The backend is shared by all requests of a client; the attempt in progress on this thread is
# found through a context variable rather than threaded through httpx's call stack.
_CURRENT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("guarded_attempt", default=None)


def _clamp(timeout: float | None, exc: type[Exception]) -> float | None:
    attempt = _CURRENT.get()
    return timeout if attempt is None else attempt.clamp(timeout, exc)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and TLS handshake ends by the attempt's deadline.

    httpx's timeouts bound each socket operation, not the total, so a server dripping one byte
    at a time would otherwise hold a worker forever.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.SyncBackend):
    """Resolves, checks and connects in one place, so the checked address is the one used.

    httpcore asks the backend to connect to the URL's host name; this backend resolves the name
    itself, refuses the connection unless every address is public (or the host:port is
    allowlisted), and then opens the socket to those exact IPs. TLS still verifies the
    certificate against the host name (httpcore passes the URL host as SNI), and the Host header
    is untouched, so pinning is invisible to the server.
    """

    def __init__(self, policy: OutboundPolicy, resolver: Resolver, pool: ThreadPoolExecutor):
        self._policy = policy
        self._resolver = resolver
        self._pool = pool

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._addresses(host, port)
        _refuse_private(host, port, addresses, self._policy)
        last_error: Exception | None = None
        for address in addresses:
            try:
                stream = super().connect_tcp(
                    str(address),
                    port,
                    timeout=_clamp(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
                continue
            attempt = _CURRENT.get()
            if attempt is not None:
                attempt.connected_to.append(str(address))
            return _DeadlineStream(stream)
        assert last_error is not None
        raise last_error

    def _addresses(self, host: str, port: int) -> list[IPAddress]:
        literal = _host_literal(host)
        if literal is not None:
            return [literal]
        attempt = _CURRENT.get()
        limit = self._policy.connect_timeout
        if attempt is not None:
            limit = attempt.clamp(limit, httpcore.ConnectTimeout)
        # getaddrinfo has no timeout of its own; run it aside so the deadline still holds.
        future = self._pool.submit(self._resolver, host, port)
        error: RemoteError | None = None
        try:
            raw = future.result(timeout=limit)
        except FutureTimeout:
            error = RemoteError(ErrorKind.TIMEOUT, "Looking up the hospital's server name took too long.")
        except (OSError, UnicodeError):
            error = RemoteError(ErrorKind.DNS, detail={"host": host})
        if error is not None:
            raise error
        addresses = [_parse_resolved(a) for a in raw]
        if not addresses:
            raise RemoteError(ErrorKind.DNS, detail={"host": host})
        return addresses


def _refuse_private(host: str, port: int, addresses: Sequence[IPAddress], policy: OutboundPolicy) -> None:
    """Refuse a host whose addresses include a private one, unless its host:port is allowlisted."""
    if _host_key(host, port) in policy.allowlist:
        return
    refused = [a for a in addresses if not is_public_address(a)]
    if refused:
        # Refuse if any address is private: a name mixing public and private records is
        # exactly what a rebinding attacker publishes.
        raise _blocked(
            f"The host name {host} points at a private, local or reserved address, so we will not connect to it.",
            address=str(refused[0]),
        )


def _parse_resolved(address: str) -> IPAddress:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise _blocked("The host name resolved to something that is not an IP address.") from None


# --------------------------------------------------------------------------------------------
# Body reading


class _BoundedDecoder:
    """Decompresses as it goes and stops at the size cap.

    httpx's own decoder inflates a whole network chunk at once, so a 64 KiB gzip bomb becomes
    ~64 MiB in memory before any cap could be checked; bounding ``max_length`` here means we
    never hold more than the cap, however the body is compressed.
    """

    def __init__(self, encoding: str, limit: int, *, truncate: bool = False) -> None:
        self._limit = limit
        self._truncate = truncate
        self._parts: list[bytes] = []
        self._size = 0
        self.full = False
        self._raw_deflate_fallback = encoding.strip().lower() == "deflate"
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflater = None
        elif encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                "The hospital's server compressed its answer in a way we cannot read.",
                detail={"content_encoding": encoding},
            )

    def feed(self, chunk: bytes) -> None:
        if self._inflater is None:
            self._append(chunk)
            return
        data = chunk
        while data and not self.full:
            out = self._inflate(data)
            self._append(out)
            data = self._inflater.unconsumed_tail

    def _inflate(self, data: bytes) -> bytes:
        assert self._inflater is not None
        try:
            return self._inflater.decompress(data, self._limit - self._size + 1)
        except zlib.error:
            pass
        if self._raw_deflate_fallback and self._size == 0:
            # "deflate" should be zlib-wrapped (RFC 9110) but some servers send raw deflate.
            self._raw_deflate_fallback = False
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflate(data)
        raise RemoteError(ErrorKind.BAD_PAYLOAD, "The hospital's server sent a corrupt compressed answer.")

    def _append(self, data: bytes) -> None:
        room = self._limit - self._size
        if len(data) > room:
            if not self._truncate:
                raise RemoteError(ErrorKind.TOO_LARGE, detail={"max_response_bytes": self._limit})
            data = data[:room]
            self.full = True
        self._parts.append(data)
        self._size += len(data)

    def result(self) -> bytes:
        return b"".join(self._parts)


def _read_body(response: httpx.Response, attempt: _Attempt, limit: int, truncate: bool) -> bytes:
    """Stream the body under the size cap and the deadline."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise RemoteError(ErrorKind.TOO_LARGE, detail={"max_response_bytes": limit, "content_length": declared})
    decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), limit, truncate=truncate)
    for chunk in response.iter_raw():
        decoder.feed(chunk)
        if decoder.full:
            break
        if attempt.remaining() <= 0:
            raise RemoteError(ErrorKind.DEADLINE)
    return decoder.result()


def _lines(response: httpx.Response, attempt: _Attempt, max_line: int) -> Iterator[bytes]:
    """A streamed body's lines, decompressed as they come, each under ``max_line`` bytes, by the deadline."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflater = None
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj(zlib.MAX_WBITS)
    elif encoding not in ("", "identity"):
        raise RemoteError(ErrorKind.BAD_PAYLOAD, "The hospital's server compressed a file in a way we cannot read.")
    buffer = b""
    raw = response.iter_raw()
    while True:
        token = _CURRENT.set(attempt)
        try:
            chunk = next(raw, None)
        finally:
            _CURRENT.reset(token)
        if chunk is None:
            break
        if attempt.remaining() <= 0:
            raise RemoteError(ErrorKind.DEADLINE, "The file download did not finish within the run's time limit.")
        pieces = [chunk]
        if inflater is not None:
            pieces, data = [], chunk
            while data:
                try:
                    pieces.append(inflater.decompress(data, max_line + 1))
                except zlib.error:
                    raise RemoteError(ErrorKind.BAD_PAYLOAD, "The server sent a corrupt compressed file.") from None
                data = inflater.unconsumed_tail
        for piece in pieces:
            buffer += piece
            *complete, buffer = buffer.split(b"\n")
            yield from (line for line in complete if line.strip())
            if len(buffer) > max_line:
                raise RemoteError(
                    ErrorKind.TOO_LARGE,
                    f"One line of the file is larger than the {max_line} bytes we accept.",
                    detail={"max_response_bytes": max_line},
                )
    if buffer.strip():
        yield buffer


def _looks_like_html(content: bytes, content_type: str) -> bool:
    head = content[:512].lstrip().lower()
    return "html" in content_type.lower() or head.startswith((b"<!doctype", b"<html", b"<"))


def _parse_json(response: Response) -> Any:
    try:
        return safejson.loads(response.content)
    except ValueError as exc:
        error = _bad_json(response, exc)
    raise error


def _bad_json(response: Response, exc: ValueError) -> RemoteError:
    """NOT_FHIR for a web page, BAD_PAYLOAD for broken JSON.

    The body itself is left out of BAD_PAYLOAD: a truncated Patient bundle is PHI. An HTML page
    is shown (first bytes, redacted) because it usually names what answered (a login portal).
    """
    content_type = response.headers.get("content-type", "")
    detail: dict[str, Any] = {
        "url": Redactor().url(response.url),
        "status": response.status,
        "content_type": content_type,
        "length": len(response.content),
    }
    if _looks_like_html(response.content, content_type):
        detail["body"] = Redactor().body(response.content, BODY_SNIPPET)
        return RemoteError(
            ErrorKind.NOT_FHIR,
            "The address answered with a web page, not FHIR JSON. Check the FHIR base URL.",
            detail=detail,
        )
    if isinstance(exc, safejson.JSONTooDeep):
        detail["json_error"] = str(exc)
        return RemoteError(ErrorKind.BAD_PAYLOAD, too_deep_message("an answer", exc), detail=detail)
    detail["json_error"] = f"{type(exc).__name__} at position {getattr(exc, 'pos', '?')}"
    message = "The hospital's server sent JSON we could not read (it may be cut off)."
    if not response.content:
        message = "The hospital's server sent an empty answer where JSON was expected."
    return RemoteError(ErrorKind.BAD_PAYLOAD, message, detail=detail)


def too_deep_message(what: str, exc: safejson.JSONTooDeep) -> str:
    """The message for a hospital's JSON nested deeper than anyone reads."""
    return (
        f"The hospital's server sent {what} nested more than {exc.max_depth} levels deep; "
        "no FHIR resource is, so it was refused unread."
    )


# --------------------------------------------------------------------------------------------
# Classifying failures


def _cause_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _classify_transport_error(exc: httpx.HTTPError, attempt: _Attempt) -> RemoteError:
    """Map an httpx exception to a typed error, keeping only the exception class names."""
    chain = list(_cause_chain(exc))
    causes = [type(e).__name__ for e in chain]
    detail: dict[str, Any] = {"cause": causes[-1]}
    if isinstance(exc, httpx.TimeoutException):
        # A socket timeout clamped to the deadline fires at (or a hair before) it.
        kind = ErrorKind.DEADLINE if attempt.remaining() <= 0.05 else ErrorKind.TIMEOUT
        return RemoteError(kind, detail={**detail, "phase": type(exc).__name__})
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        detail["tls_reason"] = getattr(tls, "reason", None) or type(tls).__name__
        if isinstance(tls, ssl.SSLCertVerificationError):
            detail["tls_reason"] = tls.verify_message
        return RemoteError(ErrorKind.TLS, detail=detail)
    if any(isinstance(e, socket.gaierror) for e in chain):
        return RemoteError(ErrorKind.DNS, detail=detail)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return RemoteError(
            ErrorKind.CONNECT,
            "The hospital's server refused the connection (nothing is listening on that port).",
            detail=detail,
        )
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return RemoteError(ErrorKind.BAD_REQUEST, "The request could not be sent.", detail=detail)
    if isinstance(exc, httpx.RemoteProtocolError):
        return RemoteError(
            ErrorKind.CONNECT,
            "The hospital's server closed the connection or sent a broken HTTP answer.",
            detail=detail,
        )
    return RemoteError(ErrorKind.CONNECT, detail=detail)


_STATUS_KINDS = {
    401: ErrorKind.AUTH,
    403: ErrorKind.FORBIDDEN,
    404: ErrorKind.NOT_FOUND,
    429: ErrorKind.THROTTLED,
}


def _status_kind(status: int) -> ErrorKind:
    if status in _STATUS_KINDS:
        return _STATUS_KINDS[status]
    return ErrorKind.SERVER_ERROR if status >= 500 else ErrorKind.BAD_REQUEST


def _status_error(response: httpx.Response, body: bytes, redactor: Redactor) -> RemoteError:
    """A typed error for a 4xx/5xx, with what the server said about it."""
    status = response.status_code
    detail: dict[str, Any] = {
        "status": status,
        "content_type": response.headers.get("content-type", ""),
        "body": redactor.body(body, BODY_SNIPPET),
    }
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if retry_after is not None:
        detail["retry_after"] = retry_after
    elif status in RETRYABLE_STATUSES:
        # Many API gateways say when the quota resets in RateLimit fields instead of Retry-After.
        reset = parse_rate_limit_reset(response.headers)
        if reset is not None:
            detail["retry_after"], detail["retry_after_source"] = reset
    if response.headers.get("date"):
        # The server's clock, so a refused signed assertion can be blamed on clock skew.
        detail["server_date"] = response.headers["date"][:64]
    message = None
    summary = _error_body_summary(body, redactor)
    detail.update(summary)
    said = summary.get("diagnostics") or [summary.get("oauth_error_description", "")]
    if said and said[0]:
        message = f"{_default_message(_status_kind(status))} The server said: {said[0]}"
    kind = _status_kind(status)
    return RemoteError(kind, message, hint=_status_hint(kind, status), detail=detail)


def _status_hint(kind: ErrorKind, status: int) -> str | None:
    """A hint for what this status means; "try again later" only where trying again can help."""
    if kind is ErrorKind.SERVER_ERROR and status not in RETRYABLE_STATUSES:
        return (
            f"The server failed this request with an internal error (HTTP {status}); the same request usually "
            "fails the same way until the hospital fixes it. Send the hospital's IT team the time and the request "
            "shown in the details."
        )
    return None


def _default_message(kind: ErrorKind) -> str:
    return RemoteError(kind).message


def _error_body_summary(body: bytes, redactor: Redactor) -> dict[str, Any]:
    """OperationOutcome diagnostics or an OAuth error code, when the body is one."""
    try:
        data = safejson.loads(body)
    except safejson.JSONTooDeep as exc:
        # The status says what went wrong; the body is only left unread.
        return {"body_error": str(exc)}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    if data.get("resourceType") == "OperationOutcome":
        lines = []
        for issue in data.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            head = f"{issue.get('severity', '?')} {issue.get('code', '?')}"
            lines.append(redactor.text(f"{head}: {text}" if text else head)[:200])
        return {"diagnostics": lines[:5]}
    if isinstance(data.get("error"), str):
        summary = {"oauth_error": data["error"][:64]}
        if isinstance(data.get("error_description"), str):
            summary["oauth_error_description"] = redactor.text(data["error_description"])[:200]
        return summary
    return {}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, in either delta-seconds or HTTP-date form."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "1e999" or "nan" parse as floats; a wait we cannot honour is no wait we were given.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# An X-RateLimit-Reset above this is a moment (epoch seconds) rather than a number of seconds to wait.
_EPOCH_FLOOR = 1_000_000_000


def parse_rate_limit_reset(headers: Mapping[str, str], now: float | None = None) -> tuple[float, str] | None:
    """Seconds until a throttling server's quota resets, and the field that said so, when no Retry-After did.

    Understands the IETF RateLimit field (``RateLimit: "fhirInteractions";r=0;t=53``, the quota's
    remaining ``r`` and seconds to reset ``t``; the wait is the longest ``t`` of an exhausted quota),
    the older drafts' ``RateLimit-Reset: 53`` and ``RateLimit: limit=100, remaining=0, reset=53``, and
    the common ``X-RateLimit-Reset``, in seconds or as an epoch moment.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    field = lowered.get("ratelimit")
    if field:
        wait = _ietf_rate_limit_wait(field)
        if wait is not None:
            return wait, "RateLimit"
    for name in ("ratelimit-reset", "x-ratelimit-reset"):
        seconds = _finite(lowered.get(name, ""))
        if seconds is None:
            continue
        if seconds > _EPOCH_FLOOR * 1000:  # milliseconds since the epoch
            seconds = seconds / 1000
        if seconds > _EPOCH_FLOOR:
            seconds -= time.time() if now is None else now
        return max(0.0, seconds), {"ratelimit-reset": "RateLimit-Reset", "x-ratelimit-reset": "X-RateLimit-Reset"}[name]
    return None


def _ietf_rate_limit_wait(field: str) -> float | None:
    items = [item.strip() for item in field.split(",") if item.strip()]
    if items and all("=" in item.split(";")[0] for item in items):
        # The older drafts' dictionary: "limit=100, remaining=0, reset=53".
        values = {key.strip().lower(): value for key, _, value in (item.partition("=") for item in items)}
        reset = _finite(values.get("reset", ""))
        return None if reset is None else max(0.0, reset)
    exhausted: list[float] = []
    waits: list[float] = []
    for item in items:
        params = {key.strip().lower(): value for key, _, value in (p.partition("=") for p in item.split(";")[1:])}
        seconds = _finite(params.get("t", ""))
        if seconds is None:
            continue
        waits.append(max(0.0, seconds))
        if _finite(params.get("r", "")) == 0:
            exhausted.append(max(0.0, seconds))
    chosen = exhausted or waits
    return max(chosen) if chosen else None


def _finite(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _secrets_in(headers: Mapping[str, str] | None, *bodies: Any) -> list[str]:
    """The credential values this request carries, so errors can scrub them literally."""
    found: list[str] = []
    for name, value in (headers or {}).items():
        if name.lower() in ("authorization", "proxy-authorization", "cookie") or is_secret_name(name):
            found.append(value)
            scheme, _, credential = value.partition(" ")
            found.append(credential)
            if scheme.lower() == "basic":
                found.extend(_basic_parts(credential))
    for body in bodies:
        if isinstance(body, Mapping):
            found.extend(str(v) for k, v in body.items() if is_secret_name(str(k)))
    return [s for s in found if s]


def _basic_parts(credential: str) -> list[str]:
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return []
    return [decoded, decoded.partition(":")[2]]


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


@dataclass(frozen=True)
class _Hop:
    """One request of a redirect chain."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    data: Mapping[str, Any] | None
    json: Any


def _redirected(hop: _Hop, status: int, source: httpx.URL, target: httpx.URL, redactor: Redactor) -> _Hop:
    """The request to send after a redirect, as browsers and RFC 9110 rewrite it."""
    headers = hop.headers
    if not _same_origin(source, target):
        if status in (307, 308) and (hop.data is not None or hop.json is not None):
            # A 307/308 would re-send the body (a token request's client secret, say) to a host
            # nobody configured.
            raise RemoteError(
                ErrorKind.REDIRECT_REFUSED,
                "The hospital's server redirected a request with a body to another server.",
                detail={"location": redactor.url(str(target))},
            )
        # Credentials were issued for the hospital's host; a redirect elsewhere must not carry them.
        headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
    if status == 303 or (status in (301, 302) and hop.method == "POST"):
        return _Hop("GET", target, headers, None, None)
    return _Hop(hop.method, target, headers, hop.data, hop.json)


# --------------------------------------------------------------------------------------------
# The client


class GuardedClient:
    """The only way the portal talks to a hospital; see the module docstring for the guarantees."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        resolver: Resolver | None = None,
        limiter: PullLimiter | None = None,
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self.stats = ClientStats()
        # Threads of one concurrent pull share this client: its counters move under a lock.
        self._stats_lock = threading.Lock()
        # The connection's agreed limits (connections.limits), shared by every thread of a run: a place
        # per attempt, and a 429 or 503 pauses them all. None: no limits beyond the caller's own pace.
        self.limiter = limiter
        # When the work this client serves must end (time.monotonic()); a server-requested wait that
        # would not fit is refused at once, with the wait it asked for. None: policy.max_retry_after caps it.
        self.wait_deadline: float | None = None
        self._dns_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="guarded-dns")
        backend = _PinnedBackend(policy, resolver or default_resolver, self._dns_pool)
        self._http = _Client(
            transport=_transport(policy, backend),
            trust_env=False,  # no proxies or netrc from the environment
            follow_redirects=False,  # every hop is re-checked by us
            timeout=httpx.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=policy.connect_timeout,
            ),
        )

    @property
    def policy(self) -> OutboundPolicy:
        return self._policy

    def __enter__(self) -> GuardedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections and the DNS worker threads."""
        self._http.close()
        self._dns_pool.shutdown(wait=False, cancel_futures=True)

    def get_json(self, url: str, **kw: Any) -> Response:
        """GET a JSON document (the common case for FHIR reads)."""
        return self.request("GET", url, expect_json=True, **kw)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        expect_json: bool = True,
    ) -> Response:
        """Send one logical request with checks, caps and retries; raise RemoteError on failure.

        With ``expect_json`` the answer must parse as JSON (a web page is NOT_FHIR). The
        deadline applies to each attempt; ``elapsed_ms`` and ``detail["elapsed_ms"]`` span all
        attempts including back-off waits, listed in ``detail["waits"]``.
        """
        method = method.upper()
        redactor = Redactor(_secrets_in(headers, data, json))
        started = time.monotonic()
        waits: list[float] = []
        attempts = 0
        while True:
            attempts += 1
            with self._stats_lock:
                self.stats.requests += 1
            error: RemoteError | None = None
            early_wait: float | RemoteError | None = None
            with self.limiter.slot() if self.limiter is not None else contextlib.nullcontext():
                try:
                    response = self._attempt(method, url, headers, params, data, json, expect_json, redactor)
                except RemoteError as exc:
                    error = exc
                    if self.limiter is not None and exc.status in SLOW_DOWN_STATUSES:
                        # Pause the connection before this place is given back, so no other thread
                        # slips a request in between the hospital's "slow down" and the pause.
                        early_wait = self._next_wait(exc, attempts)
                        if not isinstance(early_wait, RemoteError):
                            self.limiter.pause(early_wait)
            elapsed_ms = round((time.monotonic() - started) * 1000, 1)
            if error is None:
                # Redacting and formatting cost as much as the guard itself: only when logged.
                if logger.isEnabledFor(logging.DEBUG):
                    self._log(method, redactor.url(url), response.status, elapsed_ms, attempts)
                response.elapsed_ms, response.attempts = elapsed_ms, attempts
                return response
            safe_url = redactor.url(url)
            error = RemoteError(
                error.kind,
                error.message,
                hint=error.hint,
                detail={
                    "method": method,
                    "url": safe_url,
                    **error.detail,
                    "elapsed_ms": elapsed_ms,
                    "attempts": attempts,
                    "waits": list(waits),
                },
            )
            self._log(method, safe_url, error.status, elapsed_ms, attempts, error.kind)
            with self._stats_lock:
                if error.status == 429:
                    self.stats.throttled += 1
                elif error.status == 503:
                    self.stats.unavailable += 1
            wait = early_wait if isinstance(early_wait, float) else self._next_wait(error, attempts)
            if isinstance(wait, RemoteError):
                raise wait
            waits.append(wait)
            with self._stats_lock:
                self.stats.retries += 1
                self.stats.waited_s += wait
                if error.status == 429:
                    self.stats.throttle_waited_s += wait
            if isinstance(early_wait, float) and self.limiter is not None:
                # The hospital asked for time: every request of the run waits, not just this one.
                self.limiter.wait_out()
            else:
                self._sleep(wait)

    def _next_wait(self, error: RemoteError, attempts: int) -> float | RemoteError:
        """How long to wait before retrying, or the error to give up with."""
        retryable = error.kind in RETRYABLE_KINDS or error.status in RETRYABLE_STATUSES
        if not retryable or attempts >= self._policy.max_attempts:
            return error
        retry_after = error.detail.get("retry_after")
        if retry_after is not None:
            return self._server_wait(error, float(retry_after))
        # Exponential back-off with full jitter, so many workers retrying do not stampede.
        ceiling = min(self._policy.backoff_max, self._policy.backoff_base * 2 ** (attempts - 1))
        return random.uniform(0, ceiling)

    def _server_wait(self, error: RemoteError, wait: float) -> float | RemoteError:
        """Honour a wait the server asked for if it fits the time left; otherwise say what it would have needed."""
        source = error.detail.get("retry_after_source", "Retry-After")
        kind = ErrorKind.THROTTLED if error.status == 429 else error.kind
        if self.wait_deadline is None:
            if wait <= self._policy.max_retry_after:
                return wait
            return RemoteError(
                kind,
                f"The hospital's server asked us to wait {wait:.0f} seconds before trying again ({source}), "
                f"longer than the {self._policy.max_retry_after:.0f} seconds we wait.",
                hint=f"Re-run after {wait:.0f} seconds; if it keeps happening, agree a higher rate limit with the "
                "hospital.",
                detail={**error.detail, "would_need_s": round(wait, 1)},
            )
        left = self.wait_deadline - time.monotonic() - WAIT_MARGIN_S
        if wait <= left:
            return wait
        return RemoteError(
            kind,
            f"The hospital's server is throttling us and asked us to wait {wait:.0f} s ({source}), but this run "
            f"has only {max(0.0, left):.0f} s left before its time limit: it would have needed {wait:.0f} s more.",
            hint=f"Re-run once the hospital's limit has reset (in {wait:.0f} s), with a smaller sample, or agree a "
            "higher rate limit with the hospital.",
            detail={**error.detail, "would_need_s": round(wait, 1), "time_left_s": round(max(0.0, left), 1)},
        )

    def _attempt(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None,
        json: Any,
        expect_json: bool,
        redactor: Redactor,
    ) -> Response:
        """One exchange, following redirects, under one deadline."""
        attempt = _Attempt(deadline_at=time.monotonic() + self._policy.deadline)
        token = _CURRENT.set(attempt)
        try:
            hop = _Hop(method, check_url(url, self._policy), self._headers(headers, expect_json), data, json)
            for count in range(self._policy.max_redirects + 1):
                request = self._http.build_request(
                    hop.method,
                    hop.url,
                    headers=hop.headers,
                    params=params if count == 0 else None,
                    data=hop.data,
                    json=hop.json,
                )
                response = self._send(request, attempt)
                try:
                    location = response.headers.get("location")
                    if response.status_code not in REDIRECT_STATUSES or not location:
                        return self._finish(response, attempt, expect_json, redactor)
                    target = self._redirect_target(request.url, location, count, redactor)
                finally:
                    response.close()
                hop = _redirected(hop, response.status_code, request.url, target, redactor)
            raise AssertionError("unreachable: _redirect_target limits hops")
        finally:
            _CURRENT.reset(token)

    def stream_lines(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        deadline_at: float | None = None,
    ) -> Iterator[bytes]:
        """GET a newline-delimited body (NDJSON) and yield it line by line, never holding it whole.

        The same guard as ``request``: address checks and pinning, each redirect re-checked, typed
        errors, retries with back-off (and the limiter's place and slow-downs) until the body starts.
        Once it streams, the whole download must end by ``deadline_at`` (time.monotonic()), a silent
        server is cut off by the read timeout, and one line may not pass the response size cap.
        """
        redactor = Redactor(_secrets_in(headers))
        attempts = 0
        started = time.monotonic()
        while True:
            attempts += 1
            with self._stats_lock:
                self.stats.requests += 1
            slot = self.limiter.slot() if self.limiter is not None else contextlib.nullcontext()
            slot.__enter__()
            attempt = _Attempt(deadline_at=deadline_at or time.monotonic() + self._policy.deadline)
            try:
                response = self._open(url, headers, attempt, redactor)
            except RemoteError as exc:
                slot.__exit__(None, None, None)
                error = exc.with_detail(method="GET", url=redactor.url(url), attempts=attempts)
                error.detail["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
                wait = self._next_wait(error, attempts)
                if isinstance(wait, RemoteError):
                    raise wait from None
                if self.limiter is not None and error.status in SLOW_DOWN_STATUSES:
                    self.limiter.hold(wait)
                else:
                    self._sleep(wait)
                continue
            try:
                yield from _lines(response, attempt, self._policy.max_response_bytes)
            except httpx.HTTPError as exc:
                error = _classify_transport_error(exc, attempt).with_detail(method="GET", url=redactor.url(url))
                raise error from None
            finally:
                response.close()
                slot.__exit__(None, None, None)
            return

    def _open(
        self, url: str, headers: Mapping[str, str] | None, attempt: _Attempt, redactor: Redactor
    ) -> httpx.Response:
        """One GET up to its final answer's headers, redirects re-checked; the body is left unread."""
        token = _CURRENT.set(attempt)
        try:
            hop = _Hop("GET", check_url(url, self._policy), self._headers(headers, False), None, None)
            for count in range(self._policy.max_redirects + 1):
                request = self._http.build_request(hop.method, hop.url, headers=hop.headers)
                response = self._send(request, attempt)
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    response.close()
                    target = self._redirect_target(request.url, location, count, redactor)
                    hop = _redirected(hop, response.status_code, request.url, target, redactor)
                    continue
                if response.status_code >= 400:
                    try:
                        body = _read_body(response, attempt, ERROR_BODY_LIMIT, truncate=True)
                    finally:
                        response.close()
                    raise _status_error(response, body, redactor)
                return response
            raise AssertionError("unreachable: _redirect_target limits hops")
        finally:
            _CURRENT.reset(token)

    def _headers(self, headers: Mapping[str, str] | None, expect_json: bool) -> dict[str, str]:
        merged = {"User-Agent": self._policy.user_agent, "Accept-Encoding": "gzip, deflate"}
        if expect_json:
            merged["Accept"] = DEFAULT_ACCEPT
        merged.update(headers or {})
        return merged

    def _send(self, request: httpx.Request, attempt: _Attempt) -> httpx.Response:
        error: RemoteError
        try:
            return self._http.send(request, stream=True)
        except RemoteError as exc:  # raised by the pinned backend (blocked address, DNS)
            error = exc.with_detail()
        except httpx.HTTPError as exc:
            error = _classify_transport_error(exc, attempt)
        if attempt.connected_to:
            error.detail["address"] = attempt.connected_to[-1]
        # Raised outside the except block so the httpx exception, whose request object holds
        # the Authorization header, is not chained onto the error.
        raise error

    def _redirect_target(self, current: httpx.URL, location: str, hop: int, redactor: Redactor) -> httpx.URL:
        if hop >= self._policy.max_redirects:
            raise RemoteError(
                ErrorKind.REDIRECT_REFUSED,
                f"The hospital's server redirected us more than {self._policy.max_redirects} times.",
                detail={"location": redactor.url(location)},
            )
        try:
            target = urljoin(str(current), location)
            scheme = urlsplit(target).scheme.lower()
        except ValueError:
            raise _unreadable_redirect(location, redactor) from None
        if current.scheme == "https" and scheme != "https":
            raise RemoteError(
                ErrorKind.REDIRECT_REFUSED,
                "The hospital's server redirected a secure (https) address to an insecure one.",
                detail={"location": redactor.url(target)},
            )
        try:
            return check_url(target, self._policy)
        except RemoteError as exc:
            if exc.kind is ErrorKind.BAD_REQUEST:
                error = _unreadable_redirect(location, redactor)
            else:
                error = exc.with_detail(location=redactor.url(target))
        raise error

    def _finish(self, response: httpx.Response, attempt: _Attempt, expect_json: bool, redactor: Redactor) -> Response:
        """Read the body of a final (non-redirect) answer, or raise the status error."""
        error: RemoteError | None = None
        try:
            if response.status_code >= 400:
                body = _read_body(response, attempt, ERROR_BODY_LIMIT, truncate=True)
                error = _status_error(response, body, redactor)
            else:
                content = _read_body(response, attempt, self._policy.max_response_bytes, False)
        except httpx.HTTPError as exc:
            error = _classify_transport_error(exc, attempt)
        if error is not None:
            raise error
        result = Response(
            status=response.status_code,
            headers=response.headers,
            url=str(response.url),
            content=content,
            elapsed_ms=0.0,
            attempts=1,
        )
        if expect_json:
            result.json()
        return result

    @staticmethod
    def _log(
        method: str,
        safe_url: str,
        status: int | None,
        elapsed_ms: float,
        attempts: int,
        kind: ErrorKind | None = None,
    ) -> None:
        # Only the redacted URL is ever logged; headers and bodies never are. Successes are
        # debug-level: a load test makes thousands of them.
        logger.log(
            logging.DEBUG if kind is None else logging.INFO,
            "outbound %s %s status=%s kind=%s elapsed_ms=%s attempt=%s",
            method,
            safe_url,
            status,
            kind.value if kind else "ok",
            elapsed_ms,
            attempts,
        )


def _unreadable_redirect(location: str, redactor: Redactor) -> RemoteError:
    # Not a transport failure: the same answer comes back every time, so it is refused once.
    return RemoteError(
        ErrorKind.REDIRECT_REFUSED,
        "The hospital's server redirected us to an address that cannot be read (a malformed Location header).",
        detail={"location": redactor.text(location)[:BODY_SNIPPET]},
    )


class _Client(httpx.Client):
    """httpx's client without its own reading of a redirect's Location: the guarded client reads it.

    With redirects off, httpx still parses Location to offer ``next_request``, and a malformed one
    became a RemoteProtocolError (classified ``connect`` and retried) or an uncaught InvalidURL or
    IDNAError. ``GuardedClient._redirect_target`` reads and checks every hop instead.
    """

    def _build_redirect_request(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        return request


def _transport(policy: OutboundPolicy, backend: _PinnedBackend) -> httpx.HTTPTransport:
    """An httpx transport whose connection pool uses the pinned backend.

    httpx does not expose httpcore's ``network_backend`` argument, so the pool is replaced after
    construction; httpx is pinned to 0.28.x in pyproject.toml, and a test connects through a
    name that only the injected resolver knows, which fails loudly if the pool is not ours.
    """
    context = _ssl_context(policy)
    transport = httpx.HTTPTransport(verify=context, trust_env=False, retries=0)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=context,
        max_connections=20,
        max_keepalive_connections=10,
        keepalive_expiry=30.0,
        http1=True,
        http2=False,
        retries=0,
        network_backend=backend,
    )
    return transport


def _ssl_context(policy: OutboundPolicy) -> ssl.SSLContext:
    """Certificate and host-name verification always on, TLS 1.2 or newer."""
    return _shared_ssl_context(policy.ca_bundle)


@functools.lru_cache(maxsize=8)
def _shared_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    # Loading the CA roots costs ~20 ms of CPU; one context per CA bundle is shared by every client
    # in the process (an SSLContext is safe to share across connections and threads).
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --------------------------------------------------------------------------------------------
# Pinning a load test's target


def pin_target(
    base_url: str,
    policy: OutboundPolicy,
    *,
    headers: Mapping[str, str] | None = None,
    resolver: Resolver | None = None,
) -> PinnedTarget:
    """Check a FHIR base URL once through this guard and pin the one address a load test may reach.

    The load generator sends thousands of requests without httpx, so it cannot re-check each
    connection as the client does; instead the URL gets the same checks (http(s) only, no
    userinfo, no odd numeric hosts, every resolved address public unless the host:port is
    allowlisted), the first address that accepts a connection is pinned, and the engine dials
    only that. ``headers`` (the credential) join the client's own Accept and User-Agent. The
    client's timeouts, size cap and Retry-After limit go with it. RemoteError says what was refused.
    """
    url = check_url(base_url, policy)
    if url.query or url.fragment:
        raise RemoteError(ErrorKind.BAD_REQUEST, "A FHIR base URL has no query string or fragment.")
    https = url.scheme == "https"
    host = url.host
    port = url.port or (443 if https else 80)
    addresses = _resolve_once(host, port, policy, resolver or default_resolver)
    _refuse_private(host, port, addresses, policy)
    address = _first_reachable(addresses, port, policy.connect_timeout)
    merged = {"User-Agent": policy.user_agent, "Accept": DEFAULT_ACCEPT, "Accept-Encoding": "gzip, deflate"}
    merged.update(headers or {})
    for name, value in merged.items():
        if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise RemoteError(ErrorKind.BAD_REQUEST, f"The header {name[:40]!r} cannot be sent as it is written.")
    return PinnedTarget(
        address=str(address),
        port=port,
        host_header=url.netloc.decode("ascii"),
        scheme=url.scheme,
        base_path=url.raw_path.decode("ascii").rstrip("/"),
        server_name=host if https else None,
        headers=tuple(merged.items()),
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        deadline=policy.deadline,
        max_response_bytes=policy.max_response_bytes,
        max_retry_after=policy.max_retry_after,
        ssl_context=_ssl_context(policy) if https else None,
    )


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _resolve_once(host: str, port: int, policy: OutboundPolicy, resolver: Resolver) -> list[IPAddress]:
    """The addresses of a host (itself, for an IP literal), looked up within the connect timeout."""
    literal = _host_literal(host)
    if literal is not None:
        return [literal]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pin-dns")
    error: RemoteError | None = None
    try:
        raw = pool.submit(resolver, host, port).result(timeout=policy.connect_timeout)
    except FutureTimeout:
        error = RemoteError(ErrorKind.TIMEOUT, "Looking up the hospital's server name took too long.")
    except (OSError, UnicodeError):
        error = RemoteError(ErrorKind.DNS, detail={"host": host})
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if error is not None:
        raise error
    addresses = [_parse_resolved(a) for a in raw]
    if not addresses:
        raise RemoteError(ErrorKind.DNS, detail={"host": host})
    return addresses


def _first_reachable(addresses: Sequence[IPAddress], port: int, timeout: float) -> IPAddress:
    """The first address, in resolver order, that accepts a TCP connection (closed at once)."""
    timed_out = False
    for address in addresses:
        try:
            socket.create_connection((str(address), port), timeout=timeout).close()
        except TimeoutError:
            timed_out = True
        except OSError:
            continue
        else:
            return address
    if timed_out:
        raise RemoteError(ErrorKind.TIMEOUT, "Connecting to the hospital's server took too long.")
    raise RemoteError(
        ErrorKind.CONNECT,
        "The hospital's server refused the connection (nothing is listening on that port).",
        detail={"addresses": [str(a) for a in addresses], "port": port},
    )
