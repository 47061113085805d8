"""The guarded outbound client and the auth flows, against real HTTP servers on loopback.

Nothing here mocks the client: each test starts a small ``http.server`` on 127.0.0.1 (TLS where
the test is about TLS), lets the client reach it through the allowlist, and counts on the server
side what actually arrived. Host names resolve through an injected table, never through DNS.
No database is used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connections.auth import AuthConfig, Authenticator, basic_header
from connections.errors import ErrorKind, Redactor, RemoteError
from connections.http import (
    GuardedClient,
    OutboundPolicy,
    _ssl_context,
    check_url,
    default_resolver,
    is_public_address,
    parse_rate_limit_reset,
    parse_retry_after,
)

Route = Callable[[BaseHTTPRequestHandler], None]


# --- A loopback server that counts what reaches it ------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.record(self.command, self.path, dict(self.headers), body)
        route = self.server.owner.routes.get(path)
        if route is None:
            reply(self, 404, {"resourceType": "OperationOutcome", "issue": []})
            return
        self.body = body
        # The client hanging up on us is what several tests want.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer


class LoopbackServer:
    """An HTTP(S) server on 127.0.0.1 with per-path routes and a request log."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.hits[path.split("?", 1)[0]] += 1
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def key(self, host: str = "127.0.0.1") -> str:
        return f"{host}:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: Any = b"",
    headers: dict[str, str] | None = None,
    content_type: str = "application/fhir+json",
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(raw)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(raw)


def ok(body: Any = None, **headers: str) -> Route:
    return lambda h: reply(h, 200, {"resourceType": "Patient", "id": "1"} if body is None else body, headers)


def status(code: int, body: Any = None, **headers: str) -> Route:
    return lambda h: reply(h, code, body if body is not None else {"resourceType": "OperationOutcome"}, headers)


def redirect(code: int, location: str) -> Route:
    return lambda h: reply(h, code, b"", {"Location": location})


def sequence(*routes: Route) -> Route:
    """Answer the n-th request with the n-th route (the last one repeats)."""
    calls = iter(range(10_000))

    def route(handler: BaseHTTPRequestHandler) -> None:
        routes[min(next(calls), len(routes) - 1)](handler)

    return route


# --- Fixtures -------------------------------------------------------------------------------------

NAMES = {
    "hospital.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "public.example.org": ["93.184.216.34"],
    "localhost": ["127.0.0.1"],
    "localhost.": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "rebind.example.com": ["93.184.216.34", "10.0.0.7"],
    "internal.example.com": ["192.168.1.10"],
    "v6loop.example.com": ["::1"],
    "mapped.example.com": ["::ffff:10.0.0.1"],
    "nat64.example.com": ["64:ff9b::a9fe:a9fe"],
}


class TableResolver:
    """Resolves from NAMES and remembers what it was asked; unknown names fail like NXDOMAIN."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in NAMES:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return NAMES[host]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    hospital = LoopbackServer()
    yield hospital
    hospital.stop()


@pytest.fixture
def other_server() -> Iterator[LoopbackServer]:
    other = LoopbackServer()
    yield other
    other.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def resolver() -> TableResolver:
    return TableResolver()


_OPEN_CLIENTS: list[GuardedClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


def make_client(
    *servers: LoopbackServer,
    sleeps: list[float] | None = None,
    resolver: Any = None,
    hosts: tuple[str, ...] = ("127.0.0.1", "hospital.test"),
    **policy: Any,
) -> GuardedClient:
    allow = frozenset(s.key(h) for s in servers for h in hosts)
    client = GuardedClient(
        OutboundPolicy(allowlist=allow, **policy),
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
        resolver=resolver or TableResolver(),
    )
    _OPEN_CLIENTS.append(client)
    return client


def raises(call: Callable[[], Any]) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call()
    return info.value


# --- SSRF guard -----------------------------------------------------------------------------------

HOSTILE_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:6379/",
    "http://127.0.0.1:5432/",
    "http://127.0.0.1./",
    "http://127.1/",
    "http://2130706433/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[::1]:6379/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://localhost/",
    "http://localhost./",
    "http://LOCALHOST:8080/",
    "http://good.com@127.0.0.1/",
    "http://public.example.org@127.0.0.1:6379/",
    "http://user:pass@public.example.org/",
    "http://public.example.org\\@127.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://100.100.100.200/",
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://192.0.0.8/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://rebind.example.com/",
    "http://internal.example.com/",
    "http://v6loop.example.com/",
    "http://mapped.example.com/",
    "http://nat64.example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "ftp://public.example.org/",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_urls_are_refused_before_anything_is_sent(url: str, sleeps: list[float]) -> None:
    client = make_client(sleeps=sleeps)
    error = raises(lambda: client.get_json(url))
    assert error.kind is ErrorKind.BLOCKED_ADDRESS, (url, error.kind, error.message)
    assert error.detail["attempts"] == 1 and sleeps == []


def test_hostile_table_is_big_enough() -> None:
    assert len(HOSTILE_URLS) >= 30


def test_a_real_loopback_server_is_not_reached_unless_allowlisted(server: LoopbackServer) -> None:
    server.routes["/x"] = ok()
    for url in (server.url("/x"), server.url("/x", host="localhost"), f"http://[::ffff:127.0.0.1]:{server.port}/x"):
        assert raises(lambda u=url: make_client().get_json(u)).kind is ErrorKind.BLOCKED_ADDRESS
    assert server.hits["/x"] == 0


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_public_urls_pass_the_url_check() -> None:
    policy = OutboundPolicy()
    for url in ("https://fhir.hospital.example.org/api/FHIR/R4", "http://93.184.216.34:8443/fhir"):
        assert check_url(url, policy).host


def test_allowlisted_loopback_works_and_only_for_that_exact_port(
    server: LoopbackServer, other_server: LoopbackServer
) -> None:
    server.routes["/metadata"] = ok({"resourceType": "CapabilityStatement"})
    other_server.routes["/metadata"] = ok()
    with make_client(server) as client:
        response = client.get_json(server.url("/metadata"))
        assert response.status == 200 and response.json()["resourceType"] == "CapabilityStatement"
        assert response.attempts == 1
        assert raises(lambda: client.get_json(other_server.url("/metadata"))).kind is ErrorKind.BLOCKED_ADDRESS
    assert other_server.hits["/metadata"] == 0


def test_connection_is_pinned_to_the_checked_address(server: LoopbackServer, resolver: TableResolver) -> None:
    """The name is resolved once, by our resolver, and the server still sees the original Host.

    ``hospital.test`` exists only in the injected table, so the request can only succeed if the
    connection was opened to the address our resolver returned (no second, system lookup).
    """
    server.routes["/fhir/metadata"] = ok()
    with make_client(server, resolver=resolver) as client:
        client.get_json(server.url("/fhir/metadata", host="hospital.test"))
    assert resolver.asked == ["hospital.test"]
    assert server.requests[0]["headers"]["Host"] == f"hospital.test:{server.port}"


class RebindingResolver:
    """A DNS-rebinding attacker's name server: a public address first, loopback ever after."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        return ["93.184.216.34"] if self.asked == 1 else ["127.0.0.1"]


def test_dns_rebinding_never_reaches_loopback(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The address checked is the address connected to: there is no second lookup to rebind.

    The public address is made unreachable (tests never touch the internet), so the first
    request fails to connect; the point is where it tried. The next connection asks DNS
    again, gets loopback, and is refused before any socket opens.
    """
    server.routes["/x"] = ok()
    dialled: list[str] = []

    def record_dial(self: Any, host: str, port: int, **kwargs: Any) -> Any:
        dialled.append(host)
        raise httpcore.ConnectError("network unreachable in the test")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", record_dial)
    resolver = RebindingResolver()
    client = make_client(resolver=resolver, max_attempts=1)
    url = f"http://rebind.test:{server.port}/x"
    assert raises(lambda: client.get_json(url)).kind is ErrorKind.CONNECT
    assert resolver.asked == 1 and dialled == ["93.184.216.34"]
    error = raises(lambda: client.get_json(url))
    assert error.kind is ErrorKind.BLOCKED_ADDRESS and error.detail["address"] == "127.0.0.1"
    assert resolver.asked == 2 and dialled == ["93.184.216.34"]  # loopback was never dialled
    assert server.hits["/x"] == 0


def test_a_name_resolving_to_loopback_is_refused_when_not_allowlisted(
    server: LoopbackServer, resolver: TableResolver
) -> None:
    server.routes["/x"] = ok()
    error = raises(lambda: make_client(resolver=resolver).get_json(server.url("/x", host="hospital.test")))
    assert error.kind is ErrorKind.BLOCKED_ADDRESS and error.detail["address"] == "127.0.0.1"
    assert server.hits["/x"] == 0


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hospital.test (not for 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hospital.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[LoopbackServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    hospital = LoopbackServer(tls=context)
    yield hospital
    hospital.stop()


def test_tls_verifies_the_host_name_through_the_pinned_connection(
    tls_server: LoopbackServer, certificate: tuple[Path, Path]
) -> None:
    tls_server.routes["/metadata"] = ok()
    client = make_client(tls_server, ca_bundle=str(certificate[0]))
    assert client.get_json(tls_server.url("/metadata", host="hospital.test")).status == 200
    # Same server, same trusted certificate, but reached by IP: the name check must fail.
    error = raises(lambda: client.get_json(tls_server.url("/metadata")))
    assert error.kind is ErrorKind.TLS


def test_untrusted_certificate_is_a_tls_error(tls_server: LoopbackServer) -> None:
    tls_server.routes["/metadata"] = ok()
    error = raises(lambda: make_client(tls_server).get_json(tls_server.url("/metadata", host="hospital.test")))
    assert error.kind is ErrorKind.TLS and error.detail["attempts"] == 1
    assert "certificate" in str(error.detail["tls_reason"]).lower()
    assert tls_server.hits["/metadata"] == 0


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_a_server_that_only_speaks_tls_1_1_is_refused(certificate: tuple[Path, Path]) -> None:
    """TLS 1.2 is the floor: a server stuck on TLS 1.1 is a TLS error, and nothing is sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 disables TLS 1.0/1.1 above level 0
    old = LoopbackServer(tls=context)
    try:
        old.routes["/metadata"] = ok()
        # Control: a client willing to speak TLS 1.1 gets through, so the server really offers it.
        willing = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        willing.load_verify_locations(certificate[0])
        willing.minimum_version = ssl.TLSVersion.TLSv1
        willing.set_ciphers("DEFAULT:@SECLEVEL=0")
        with (
            socket.create_connection(("127.0.0.1", old.port), timeout=5) as raw,
            willing.wrap_socket(raw, server_hostname="hospital.test") as tls,
        ):
            assert tls.version() == "TLSv1.1"
        client = make_client(old, ca_bundle=str(certificate[0]))
        error = raises(lambda: client.get_json(old.url("/metadata", host="hospital.test")))
        assert error.kind is ErrorKind.TLS and "protocol" in str(error.detail["tls_reason"]).lower()
        assert old.hits["/metadata"] == 0
        assert _ssl_context(client.policy).minimum_version is ssl.TLSVersion.TLSv1_2
    finally:
        old.stop()


def test_https_to_http_redirect_is_refused(
    tls_server: LoopbackServer, server: LoopbackServer, certificate: tuple[Path, Path]
) -> None:
    tls_server.routes["/fhir/metadata"] = redirect(302, server.url("/fhir/metadata", host="hospital.test"))
    server.routes["/fhir/metadata"] = ok()
    client = make_client(tls_server, server, ca_bundle=str(certificate[0]))
    error = raises(lambda: client.get_json(tls_server.url("/fhir/metadata", host="hospital.test")))
    assert error.kind is ErrorKind.REDIRECT_REFUSED
    assert server.hits["/fhir/metadata"] == 0


# --- Redirects ------------------------------------------------------------------------------------


def test_redirects_are_followed_up_to_the_limit(server: LoopbackServer) -> None:
    for n in range(1, 5):
        server.routes[f"/hop{n}"] = redirect(302, f"/hop{n + 1}")
    server.routes["/hop5"] = ok()
    client = make_client(server, max_redirects=3)
    assert client.get_json(server.url("/hop2")).url.endswith("/hop5")  # 3 redirects: allowed
    error = raises(lambda: client.get_json(server.url("/hop1")))  # 4 redirects: refused
    assert error.kind is ErrorKind.REDIRECT_REFUSED
    assert server.hits["/hop5"] == 1


@pytest.mark.parametrize("location", ["http://[::1", "//[", "https://xn--zz/", "http://a\x01b/", "http://[::1]:x/"])
def test_a_redirect_whose_location_cannot_be_read_is_refused_once(server: LoopbackServer, location: str) -> None:
    server.routes["/moved"] = redirect(302, location)
    sleeps: list[float] = []
    error = raises(lambda: make_client(server, sleeps=sleeps).get_json(server.url("/moved")))
    assert error.kind is ErrorKind.REDIRECT_REFUSED, (error.kind, error.message)
    assert "cannot be read" in error.message
    assert (error.detail["attempts"], server.hits["/moved"], sleeps) == (1, 1, [])


def test_redirect_into_a_private_address_is_refused(server: LoopbackServer, other_server: LoopbackServer) -> None:
    other_server.routes["/admin"] = ok()
    server.routes["/a"] = redirect(302, "http://10.0.0.1/admin")
    server.routes["/b"] = redirect(307, other_server.url("/admin"))  # loopback, but not allowlisted
    client = make_client(server)
    for path in ("/a", "/b"):
        assert raises(lambda p=path: client.get_json(server.url(p))).kind is ErrorKind.BLOCKED_ADDRESS
    assert other_server.hits["/admin"] == 0


def test_credentials_do_not_follow_a_redirect_to_another_origin(
    server: LoopbackServer, other_server: LoopbackServer
) -> None:
    server.routes["/here"] = redirect(302, other_server.url("/there"))
    other_server.routes["/there"] = ok()
    client = make_client(server, other_server)
    client.get_json(server.url("/here"), headers={"Authorization": "Bearer tok-abcdef123456"})
    assert "Authorization" in server.requests[0]["headers"]
    assert "Authorization" not in other_server.requests[0]["headers"]


def test_a_body_is_never_replayed_to_another_origin(server: LoopbackServer, other_server: LoopbackServer) -> None:
    server.routes["/token"] = redirect(307, other_server.url("/token"))
    other_server.routes["/token"] = ok()
    client = make_client(server, other_server)
    error = raises(lambda: client.request("POST", server.url("/token"), data={"client_secret": SECRET}))
    assert error.kind is ErrorKind.REDIRECT_REFUSED and other_server.hits["/token"] == 0


# --- Retries --------------------------------------------------------------------------------------


def test_retry_after_in_seconds_is_honoured(server: LoopbackServer, sleeps: list[float]) -> None:
    server.routes["/p"] = sequence(status(503, **{"Retry-After": "2"}), ok())
    response = make_client(server, sleeps=sleeps).get_json(server.url("/p"))
    assert response.attempts == 2 and sleeps == [2.0]
    assert server.hits["/p"] == 2


def test_retry_after_as_an_http_date_is_honoured(server: LoopbackServer, sleeps: list[float]) -> None:
    when = email.utils.formatdate(time.time() + 6, usegmt=True)
    server.routes["/p"] = sequence(status(429, **{"Retry-After": when}), ok())
    response = make_client(server, sleeps=sleeps).get_json(server.url("/p"))
    assert response.attempts == 2
    assert 3.0 <= sleeps[0] <= 6.0


def test_retry_after_beyond_the_cap_gives_up_throttled(server: LoopbackServer, sleeps: list[float]) -> None:
    server.routes["/p"] = status(429, **{"Retry-After": "120"})
    error = raises(lambda: make_client(server, sleeps=sleeps, max_retry_after=30).get_json(server.url("/p")))
    assert error.kind is ErrorKind.THROTTLED and "120 seconds" in error.message
    assert sleeps == [] and server.hits["/p"] == 1


# --- Throttling: RateLimit fields, the run's deadline, and the counts ------------------------------


def test_rate_limit_fields_parsing() -> None:
    now = 1_800_000_000.0
    assert parse_rate_limit_reset({"RateLimit": '"fhirInteractions";r=0;t=53'}) == (53.0, "RateLimit")
    # Several quotas: the wait is the longest one among those used up.
    assert parse_rate_limit_reset({"RateLimit": '"burst";r=5;t=1, "day";r=0;t=3600'})[0] == 3600.0
    assert parse_rate_limit_reset({"RateLimit": "limit=100, remaining=0, reset=20"})[0] == 20.0
    assert parse_rate_limit_reset({"RateLimit-Reset": "7"}) == (7.0, "RateLimit-Reset")
    assert parse_rate_limit_reset({"X-RateLimit-Reset": "12"}, now=now) == (12.0, "X-RateLimit-Reset")
    assert parse_rate_limit_reset({"X-RateLimit-Reset": str(int(now) + 45)}, now=now) == (45.0, "X-RateLimit-Reset")
    in_ms = {"X-RateLimit-Reset": str(int(now + 9) * 1000)}
    assert parse_rate_limit_reset(in_ms, now=now) == (9.0, "X-RateLimit-Reset")
    for useless in ({}, {"RateLimit": "garbage"}, {"RateLimit-Reset": "soon"}, {"X-RateLimit-Reset": "nan"}):
        assert parse_rate_limit_reset(useless) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit": '"fhirInteractions";r=0;t=4', "RateLimit-Policy": '"fhirInteractions";q=100;w=60'},
        {"RateLimit-Reset": "4"},
        {"X-RateLimit-Reset": "4"},
    ],
)
def test_without_retry_after_the_rate_limit_fields_say_how_long_to_wait(
    server: LoopbackServer, sleeps: list[float], headers: dict[str, str]
) -> None:
    server.routes["/p"] = sequence(status(429, **headers), ok())
    client = make_client(server, sleeps=sleeps)
    response = client.get_json(server.url("/p"))
    # One wait of what the server said, not three quick back-offs.
    assert response.attempts == 2 and sleeps == [4.0]
    assert client.stats.as_dict() == {
        "requests": 2,
        "throttled": 1,
        "retries": 1,
        "waited_s": 4.0,
        "throttle_waited_s": 4.0,
    }


def test_a_rate_limit_wait_that_fits_the_run_is_waited_out(server: LoopbackServer, sleeps: list[float]) -> None:
    server.routes["/p"] = sequence(status(429, RateLimit='"fhirInteractions";r=0;t=53'), ok())
    client = make_client(server, sleeps=sleeps)
    client.wait_deadline = time.monotonic() + 600
    assert client.get_json(server.url("/p")).attempts == 2
    assert sleeps == [53.0]


def test_a_rate_limit_wait_beyond_the_runs_deadline_fails_with_the_time_it_needed(
    sleeps: list[float],
) -> None:
    """The production server of the report: 429, no Retry-After, RateLimit t=53 (here a sandbox quirk)."""
    from connections.sandbox import SandboxHospital

    hospital = SandboxHospital(
        flavour="generic",
        patients=3,
        faults={"rate_429": 1.0, "retry_after": 53, "throttle_style": "ratelimit"},
    ).start()
    try:
        client = GuardedClient(OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{hospital.port}"})), sleep=sleeps.append)
        _OPEN_CLIENTS.append(client)
        client.wait_deadline = time.monotonic() + 20
        error = raises(lambda: client.get_json(f"{hospital.base_url}/Patient"))
    finally:
        hospital.stop()
    assert error.kind is ErrorKind.THROTTLED
    assert "53 s" in error.message and "would have needed 53 s" in error.message
    assert "RateLimit" in error.message and "try again" not in (error.message + error.hint).lower()
    assert error.detail["would_need_s"] == 53.0 and error.detail["time_left_s"] <= 15
    # Refused at once: no sleep, one request, and the 429 counted.
    assert sleeps == [] and client.stats.throttled == 1 and client.stats.requests == 1


def test_a_plain_500_does_not_promise_that_a_retry_helps(server: LoopbackServer) -> None:
    server.routes["/p"] = status(500)
    error = raises(lambda: make_client(server).get_json(server.url("/p")))
    assert error.kind is ErrorKind.SERVER_ERROR
    assert "try again" not in error.hint.lower() and "500" in error.hint
    server.routes["/q"] = status(503)
    unavailable = raises(lambda: make_client(server, max_attempts=1).get_json(server.url("/q")))
    assert "re-run afterwards" in unavailable.hint


def test_backoff_is_exponential_with_full_jitter(server: LoopbackServer, sleeps: list[float]) -> None:
    server.routes["/p"] = status(502)
    client = make_client(server, sleeps=sleeps, max_attempts=4, backoff_base=0.5, backoff_max=1.5)
    error = raises(lambda: client.get_json(server.url("/p")))
    assert error.kind is ErrorKind.SERVER_ERROR and error.detail["attempts"] == 4
    assert server.hits["/p"] == 4
    assert error.detail["waits"] == sleeps and len(sleeps) == 3
    for wait, ceiling in zip(sleeps, (0.5, 1.0, 1.5), strict=True):
        assert 0 <= wait <= ceiling


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, ErrorKind.BAD_REQUEST),
        (401, ErrorKind.AUTH),
        (403, ErrorKind.FORBIDDEN),
        (404, ErrorKind.NOT_FOUND),
        (422, ErrorKind.BAD_REQUEST),
        (500, ErrorKind.SERVER_ERROR),
    ],
)
def test_permanent_statuses_are_tried_exactly_once(
    server: LoopbackServer, sleeps: list[float], code: int, kind: ErrorKind
) -> None:
    server.routes["/p"] = status(code, **{"Retry-After": "1"})
    error = raises(lambda: make_client(server, sleeps=sleeps).get_json(server.url("/p")))
    assert error.kind is kind and error.status == code
    assert server.hits["/p"] == 1 and sleeps == []


def test_operation_outcome_diagnostics_reach_the_message(server: LoopbackServer) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "required", "diagnostics": "category is required"}],
    }
    server.routes["/Observation"] = status(400, outcome)
    error = raises(lambda: make_client(server).get_json(server.url("/Observation")))
    assert "category is required" in error.message
    assert error.detail["diagnostics"] == ["error required: category is required"]


def test_a_read_timeout_is_retried_then_reported(server: LoopbackServer, sleeps: list[float]) -> None:
    def stall(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(0.6)
        reply(handler, 200, {"late": True})

    server.routes["/slow"] = stall
    client = make_client(server, sleeps=sleeps, read_timeout=0.2, deadline=5)
    error = raises(lambda: client.get_json(server.url("/slow")))
    assert error.kind is ErrorKind.TIMEOUT and error.detail["attempts"] == 3 and len(sleeps) == 2


# --- Size and time caps ---------------------------------------------------------------------------


def test_body_over_the_cap_is_too_large(server: LoopbackServer) -> None:
    big = b'{"x": "' + b"a" * 4000 + b'"}'

    def unannounced(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)  # no Content-Length: the cap must hold while streaming
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        handler.wfile.write(big)

    server.routes["/announced"] = ok(big)
    server.routes["/unannounced"] = unannounced
    client = make_client(server, max_response_bytes=1024)
    for path in ("/announced", "/unannounced"):
        error = raises(lambda p=path: client.get_json(server.url(p)))
        assert error.kind is ErrorKind.TOO_LARGE and error.detail["attempts"] == 1


def test_the_cap_counts_decompressed_bytes(server: LoopbackServer) -> None:
    bomb = gzip.compress(b'{"x": "' + b"0" * 2_000_000 + b'"}')
    small = gzip.compress(json.dumps({"resourceType": "Patient", "id": "7"}).encode())
    server.routes["/bomb"] = lambda h: reply(h, 200, bomb, {"Content-Encoding": "gzip"})
    server.routes["/small"] = lambda h: reply(h, 200, small, {"Content-Encoding": "gzip"})
    client = make_client(server, max_response_bytes=100_000)
    assert len(bomb) < 100_000
    assert raises(lambda: client.get_json(server.url("/bomb"))).kind is ErrorKind.TOO_LARGE
    assert client.get_json(server.url("/small")).json() == {"resourceType": "Patient", "id": "7"}


def test_slow_drip_is_cut_at_the_deadline(server: LoopbackServer, sleeps: list[float]) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)  # each byte arrives well within the read timeout

    server.routes["/drip"] = drip
    client = make_client(server, sleeps=sleeps, deadline=1.0, read_timeout=5.0)
    started = time.monotonic()
    error = raises(lambda: client.get_json(server.url("/drip")))
    elapsed = time.monotonic() - started
    assert error.kind is ErrorKind.DEADLINE
    assert elapsed <= 1.0 + 0.5
    assert error.detail["attempts"] == 1 and sleeps == []  # a deadline is not retried


def test_a_server_that_never_answers_is_cut_at_the_deadline(server: LoopbackServer) -> None:
    server.routes["/silent"] = lambda h: time.sleep(3)
    client = make_client(server, deadline=0.5, read_timeout=10.0)
    started = time.monotonic()
    assert raises(lambda: client.get_json(server.url("/silent"))).kind is ErrorKind.DEADLINE
    assert time.monotonic() - started <= 0.5 + 0.5


# --- Typed errors ---------------------------------------------------------------------------------


def test_dns_failure_is_typed() -> None:
    client = GuardedClient(OutboundPolicy(), sleep=lambda _s: None, resolver=default_resolver)
    error = raises(lambda: client.get_json("https://no-such-hospital.invalid/fhir/metadata"))
    assert error.kind is ErrorKind.DNS and error.detail["attempts"] == 1
    assert "host name" in error.message


def test_connection_refused_is_typed_and_retried(sleeps: list[float]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = GuardedClient(
        OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{port}"})), sleep=sleeps.append, resolver=TableResolver()
    )
    error = raises(lambda: client.get_json(f"http://127.0.0.1:{port}/metadata"))
    assert error.kind is ErrorKind.CONNECT and "refused" in error.message
    assert error.detail["attempts"] == 3 and len(sleeps) == 2


def test_html_answer_is_not_fhir(server: LoopbackServer) -> None:
    page = b"<!DOCTYPE html><html><body>Sign in to MyChart</body></html>"
    server.routes["/metadata"] = lambda h: reply(h, 200, page, content_type="text/html")
    error = raises(lambda: make_client(server).get_json(server.url("/metadata")))
    assert error.kind is ErrorKind.NOT_FHIR and "Sign in" in error.detail["body"]


def test_truncated_json_is_a_bad_payload_without_the_body(server: LoopbackServer) -> None:
    server.routes["/Patient/1"] = ok(b'{"resourceType": "Patient", "name": [{"family": "Sm')
    error = raises(lambda: make_client(server).get_json(server.url("/Patient/1")))
    assert error.kind is ErrorKind.BAD_PAYLOAD and "body" not in error.detail  # PHI stays out
    assert server.hits["/Patient/1"] == 1


def test_gzip_bodies_are_decoded(server: LoopbackServer) -> None:
    body = json.dumps({"resourceType": "Bundle", "entry": []}).encode()
    server.routes["/b"] = lambda h: reply(h, 200, gzip.compress(body), {"Content-Encoding": "gzip"})
    assert make_client(server).get_json(server.url("/b")).content == body


def test_deflate_with_and_without_the_zlib_wrapper(server: LoopbackServer) -> None:
    body = json.dumps({"resourceType": "Patient", "id": "9"}).encode()
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    server.routes["/zlib"] = lambda h: reply(h, 200, zlib.compress(body), {"Content-Encoding": "deflate"})
    server.routes["/raw"] = lambda h: reply(h, 200, raw.compress(body) + raw.flush(), {"Content-Encoding": "deflate"})
    server.routes["/br"] = lambda h: reply(h, 200, b"\x1b\x00", {"Content-Encoding": "br"})
    client = make_client(server)
    assert client.get_json(server.url("/zlib")).content == body
    assert client.get_json(server.url("/raw")).content == body
    assert raises(lambda: client.get_json(server.url("/br"))).kind is ErrorKind.BAD_PAYLOAD


def test_retry_after_parsing() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 10, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- Secrets never leak into errors ---------------------------------------------------------------

SECRET = "s3cr3t-Client-Value-987"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb3J0YWwifQ.c2lnbmF0dXJl"


def _everything_in(error: BaseException) -> str:
    """All text an error carries, including chained exceptions and their attributes."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(vars(current))]
        current = current.__cause__ or current.__context__
    if isinstance(error, RemoteError):
        parts.append(json.dumps(error.as_dict(), default=str))
    return "\n".join(parts)


def test_secrets_are_redacted_from_errors(server: LoopbackServer) -> None:
    def echo(handler: BaseHTTPRequestHandler) -> None:
        reply(
            handler,
            500,
            {
                "you_sent": handler.headers.get("Authorization"),
                "body": handler.body.decode(),
                "access_token": TOKEN,
                "note": f"client_secret={SECRET}&x=1",
            },
        )

    server.routes["/echo"] = echo
    client = make_client(server, max_attempts=1)
    error = raises(
        lambda: client.request(
            "POST",
            server.url(f"/echo?access_token={TOKEN}&_count=5"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            data={"client_secret": SECRET, "grant_type": "client_credentials"},
        )
    )
    text = _everything_in(error)
    assert error.kind is ErrorKind.SERVER_ERROR
    assert TOKEN not in text and SECRET not in text and "Bearer eyJ" not in text
    assert "_count=5" in error.detail["url"] and "[redacted]" in error.detail["body"]
    assert error.__cause__ is None and error.__context__ is None


def test_redactor_patterns() -> None:
    redactor = Redactor([SECRET])
    assert redactor.url("https://u:p@h.example/x?token=abc&code=1234-5678") == (
        "https://h.example/x?token=[redacted]&code=1234-5678"
    )
    text = redactor.text(f'{{"refresh_token": "r-123456", "x": "{SECRET}"}} Basic dXNlcjpwYXNz')
    assert "r-123456" not in text and SECRET not in text and "dXNlcjpwYXNz" not in text


# --- Auth flows -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def token_endpoint(
    *, client_id: str = "portal", secret: str = SECRET, expires_in: int = 300, scope: str | None = None
) -> Route:
    """An OAuth token endpoint accepting client_secret_basic or client_secret_post."""
    issued = iter(range(1, 1000))

    def route(handler: BaseHTTPRequestHandler) -> None:
        form = {k: v[0] for k, v in parse_qs(handler.body.decode()).items()}
        basic = handler.headers.get("Authorization", "")
        good = basic == basic_header(client_id, secret, form_encode=True) or (
            form.get("client_id") == client_id and form.get("client_secret") == secret
        )
        if form.get("grant_type") != "client_credentials":
            reply(handler, 400, {"error": "unsupported_grant_type"})
        elif not good:
            reply(handler, 401, {"error": "invalid_client", "error_description": f"bad secret {SECRET}"})
        else:
            body: dict[str, Any] = {
                "access_token": f"{TOKEN}-{next(issued)}",
                "token_type": "Bearer",
                "expires_in": expires_in,
            }
            if scope is not None:
                body["scope"] = scope
            reply(handler, 200, body, content_type="application/json")

    return route


def authenticator(server: LoopbackServer, clock: Clock, **config: Any) -> Authenticator:
    settings = {"method": "client_credentials", "client_id": "portal", "secret": SECRET}
    settings.update(token_url=server.url("/token"), **config)
    return Authenticator(AuthConfig(**settings), make_client(server), clock=clock)


def test_token_is_cached_until_30_seconds_before_expiry(server: LoopbackServer) -> None:
    server.routes["/token"] = token_endpoint(expires_in=300, scope="system/Patient.read")
    clock = Clock()
    auth = authenticator(server, clock, scope="system/Patient.read system/Observation.read")
    first = auth.headers()
    clock.now += 269
    assert auth.headers() == first and server.hits["/token"] == 1
    clock.now += 2  # 271 s: inside the 30 s margin
    assert auth.headers() != first and server.hits["/token"] == 2
    info = auth.token_info()
    assert info is not None and info.expires_in == 300 and info.scopes == ("system/Patient.read",)
    assert info.obtained_at == clock.now and TOKEN not in repr(info)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_both_client_authentication_methods(server: LoopbackServer, method: str) -> None:
    server.routes["/token"] = token_endpoint()
    auth = authenticator(server, Clock(), token_auth_method=method)
    assert auth.headers()["Authorization"].startswith(f"Bearer {TOKEN}")
    sent = server.requests[0]
    assert ("Authorization" in sent["headers"]) is (method == "client_secret_basic")
    assert (b"client_secret" in sent["body"]) is (method == "client_secret_post")


def test_invalid_client_is_an_auth_error_with_the_fix(server: LoopbackServer) -> None:
    server.routes["/token"] = token_endpoint(secret="the-right-one")
    error = raises(lambda: authenticator(server, Clock()).headers())
    assert error.kind is ErrorKind.AUTH and error.message.startswith("The hospital rejected the client id or secret")
    assert error.detail["oauth_error"] == "invalid_client" and server.hits["/token"] == 1
    text = _everything_in(error)
    assert SECRET not in text and "the-right-one" not in text


def test_none_and_basic_auth_headers(server: LoopbackServer) -> None:
    client = make_client(server)
    assert Authenticator(AuthConfig(method="none"), client).headers() == {}
    basic = Authenticator(AuthConfig(method="basic", client_id="u", secret="p w"), client)
    assert basic.headers() == {"Authorization": "Basic dTpwIHc="} and basic.token_info() is None
    assert "p w" not in repr(basic.config)
