"""The sandbox hospital: a FHIR R4 server simulator on loopback.

The portal's pipeline (configure, test, map, validate, load-test) has to be
demonstrated and tested without a real hospital, so this module plays one. It
serves a synthetic population (see `data.py`) the way a chosen vendor would
(see `flavours.py`): the vendor's base path, paging links, mandatory and refused
search parameters, page-size limit and identifier systems, behind no auth, HTTP
Basic, an OAuth2 client-credentials token endpoint, or SMART Backend Services
(signed assertions verified against a registered JWKS, see `smart.py`). Faults
(latency, 429s with Retry-After in seconds or as a date, 5xx, refused
credentials, an HTML login page where FHIR should be, a wrong FHIR version, a
redirect elsewhere, a slow drip, oversized and gzip-bomb bodies, cut-off JSON, the
wrong resourceType, a next-link loop, a clock that is off) can be switched on at
start-up or at runtime, so every failure path of the pipeline can be shown on purpose.
Capacity knobs, set the same way, give the load test something to measure: a fixed
added latency, a seeded lognormal latency, a concurrency limit past which requests
queue in arrival order, and throttles that answer 429 with Retry-After (every Nth
request, or past a token bucket's rate). An optional request log keeps when each FHIR
request arrived and was answered, so tests can check a client's behaviour from the
server's side.

It is reached only over HTTP and depends on the standard library alone (plus
`cryptography` for SMART signatures), so it can run in any process (a test, the
demo, a load test) without Django.
Everything a response needs is built once at start-up: each resource is
serialised to JSON once and searches splice those strings into Bundles.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from .bulk import BULK_FAULTS, EXPORT_DEFINITION, GROUP_EXPORT_DEFINITION, PATIENT_EXPORT_DEFINITION, BulkExports
from .data import AS_OF, EXTENDED_CLINICAL_TYPES, Resource, generate_population
from .defects import parse_defects, plant_defects
from .flavours import FLAVOURS, RESOURCE_TYPES, Flavour
from .smart import ALGORITHMS, JWT_BEARER, AssertionRejected, KeyRegistry, ReplayCache, verify_assertion
from .traffic import Traffic

FHIR_JSON = "application/fhir+json; charset=utf-8"
PLAIN_JSON = "application/json; charset=utf-8"
HTML = "text/html; charset=utf-8"
AUTH_MODES = ("none", "basic", "client_credentials", "smart_backend")
# The modes with a token endpoint: a client secret, or a SMART Backend Services signed assertion.
TOKEN_MODES = ("client_credentials", "smart_backend")
FHIR_VERSION = "4.0.1"
MAX_BODY_BYTES = 1 << 20
LAST_UPDATED = AS_OF.isoformat(timespec="seconds")
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
RESTFUL_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# Parameters every flavour accepts and none acts on: they only shape the
# representation, which is always compact JSON here.
REPRESENTATION_PARAMS = ("_format", "_pretty")

# What a misconfigured reverse proxy answers when it sends API calls to the
# hospital's single-sign-on page instead of the FHIR server.
LOGIN_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in | Hospital Single Sign-On</title></head>
<body>
<main>
<h1>Sign in</h1>
<form method="post" action="/sso/login">
<label>User name <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""


class Headers(Protocol):
    """Case-insensitive request headers: `http.server`'s message object, or a dict in a unit test."""

    def get(self, name: str, /) -> str | None: ...


# --- responses -------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = FHIR_JSON
    headers: dict[str, str] = field(default_factory=dict)
    drip_bps: int = 0  # the slow-drip fault: send the body at this many bytes per second


def _json_response(status: int, payload: Any, content_type: str = FHIR_JSON, **headers: str) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), content_type, dict(headers))


def operation_outcome(
    status: int, code: str, diagnostics: str, *, severity: str = "error", headers: Mapping[str, str] | None = None
) -> Response:
    """Every error the sandbox gives is an OperationOutcome, as FHIR servers do."""
    payload = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
    return _json_response(status, payload, **dict(headers or {}))


class FhirError(Exception):
    """Raised deep inside request handling; becomes an OperationOutcome."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics

    def response(self) -> Response:
        return operation_outcome(self.status, self.code, self.diagnostics)


def _bad_request(diagnostics: str, code: str = "invalid") -> FhirError:
    return FhirError(400, code, diagnostics)


# --- faults ----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSpec:
    default: Any
    parse: Callable[[Any], Any]
    doc: str


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"expected a number between 0 and 1, got {value!r}")
    return float(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _optional_version(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a FHIR version string such as '3.0.2', got {value!r}")
    return value.strip()


def _server_error_status(value: Any) -> int:
    if value not in (500, 502, 503, 504) or isinstance(value, bool):
        raise ValueError(f"expected one of 500, 502, 503, 504, got {value!r}")
    return int(value)


def _bounded_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return parse


def _bounded_float(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}, got {value!r}")
        return float(value)

    return parse


def _optional_resource_type(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", value):
        raise ValueError(f"expected a resource type name such as 'Practitioner', got {value!r}")
    return value


def _optional_deep_json(value: Any) -> str | None:
    if value not in (None, *DEEP_JSON_PLACES):
        raise ValueError(f"expected one of {', '.join(map(repr, DEEP_JSON_PLACES))} or null, got {value!r}")
    return None if value is None else str(value)


def _optional_origin(value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"expected an origin such as 'http://10.0.0.7:8080', got {value!r}")
    return value


# Where the deep_json fault nests an element DEEP_JSON_LEVELS deep (hostile or broken servers do).
DEEP_JSON_PLACES = ("metadata", "search", "error")
DEEP_JSON_LEVELS = 50_000


def _choice(*choices: str | None) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value

    return parse


def _optional_error_status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or 400 <= value <= 599):
        raise ValueError(f"expected 0 (off) or an HTTP error status from 400 to 599, got {value!r}")
    return value


def _optional_uri(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(ch.isspace() or ch == '"' for ch in value):
        raise ValueError(f"expected an identifier system URI such as 'urn:oid:1.2.3', got {value!r}")
    return value


# Quirks: what real FHIR servers do that is no failure of the network or of the server, but misleads
# a client that takes the server at its word. They are switched like faults (same table, same
# `set_faults` and `/_sandbox/faults`), so a test or a person can show each diagnosis on purpose.
QUIRK_SPECS: dict[str, FaultSpec] = {
    "ignore_patient_param": FaultSpec(
        False, _boolean, "Quirk: clinical searches accept patient=/subject= but ignore it: every patient's resources."
    ),
    "ignore_count": FaultSpec(False, _boolean, "Quirk: searches ignore _count and answer pages of the default size."),
    "never_pages": FaultSpec(
        False, _boolean, "Quirk: search Bundles never carry a next link, though their total counts every match."
    ),
    "no_capability_statement": FaultSpec(
        None,
        _choice(None, "empty_bundle", "operation_outcome", "not_found"),
        "Quirk: /metadata answers an empty Bundle, an OperationOutcome or a 404 instead of a CapabilityStatement.",
    ),
    "smart_config_status": FaultSpec(
        0,
        _optional_error_status,
        "Quirk: .well-known/smart-configuration answers this HTTP error status (0: as the auth mode says).",
    ),
    "throttle_style": FaultSpec(
        "retry_after",
        _choice("retry_after", "ratelimit", "ratelimit_reset", "x_ratelimit_reset"),
        "Quirk: how the 429s say when to come back: Retry-After, or instead (no Retry-After) the IETF "
        'RateLimit field (RateLimit: "fhirInteractions";r=0;t=N), RateLimit-Reset: N, or '
        "X-RateLimit-Reset (epoch seconds); N is retry_after.",
    ),
    "per_type_scopes": FaultSpec(
        False, _boolean, "Quirk: the token endpoint grants a wildcard scope as one scope per resource type it serves."
    ),
    "mrn_system": FaultSpec(
        None, _optional_uri, "Quirk: patients carry their MRN under this identifier system instead of the flavour's."
    ),
    "icd9_conditions": FaultSpec(
        False, _boolean, "Quirk: Conditions are coded in ICD-9-CM instead of SNOMED CT, as a legacy feed sends them."
    ),
}


# The fault table: adding a fault means adding a row here and, if it acts on
# every request, a handler in REQUEST_FAULTS below. The quirks come last. The capacity knobs
# (latency, its distribution, the concurrency limit and the throttles) act in SandboxHospital._capacity.
FAULT_SPECS: dict[str, FaultSpec] = {
    "latency_ms": FaultSpec(0, _non_negative_int, "Sleep this long before every answer under the FHIR base."),
    "latency_median_ms": FaultSpec(
        0,
        _bounded_int(0, 600_000),
        "Also sleep a random time per answer: lognormal with this median in ms (0 = off), drawn from the seed.",
    ),
    "latency_sigma": FaultSpec(
        0.5, _bounded_float(0, 3), "Spread of that lognormal (its sigma): 0 is always the median, 1 puts p99 near 10x."
    ),
    "max_concurrency": FaultSpec(
        0,
        _bounded_int(0, 10_000),
        "Serve at most this many FHIR requests at once (0 = no limit); the rest queue in arrival order, and the "
        "latency is spent holding a place, as a server's worker pool would.",
    ),
    "throttle_every": FaultSpec(
        0, _non_negative_int, "Answer every Nth FHIR request 429 with Retry-After (retry_after seconds); 0 = off."
    ),
    "throttle_rps": FaultSpec(
        0.0,
        _bounded_float(0, 1_000_000),
        "Token-bucket throttle: let this many FHIR requests a second through (0 = off), answer the rest 429 "
        "with Retry-After (retry_after seconds).",
    ),
    "throttle_burst": FaultSpec(
        10, _bounded_int(1, 1_000_000), "The token bucket's size: requests let through at once after a quiet spell."
    ),
    "rate_429": FaultSpec(0.0, _probability, "Share of requests answered 429 Too Many Requests."),
    "retry_after": FaultSpec(1, _non_negative_int, "Retry-After seconds sent with those 429s."),
    "rate_5xx": FaultSpec(0.0, _probability, "Share of requests answered with a server error."),
    "status_5xx": FaultSpec(503, _server_error_status, "Which server error rate_5xx answers with."),
    "reject_credentials": FaultSpec(False, _boolean, "Token endpoint and HTTP Basic refuse even correct credentials."),
    "not_fhir": FaultSpec(False, _boolean, "Every FHIR path answers 200 with an HTML login page."),
    "fhir_version": FaultSpec(None, _optional_version, "FHIR version the CapabilityStatement claims."),
    "retry_after_date": FaultSpec(False, _boolean, "Send the 429s' Retry-After as an HTTP-date, not seconds."),
    "redirect_to": FaultSpec(
        None, _optional_origin, "Redirect (302) every FHIR path to the same path on this origin, e.g. http://10.0.0.7."
    ),
    "slow_drip_bps": FaultSpec(0, _non_negative_int, "Send read and search bodies at this many bytes a second."),
    "oversized_bytes": FaultSpec(
        0, _bounded_int(0, 1 << 30), "Answer reads and searches with a valid Bundle of at least this many bytes."
    ),
    "gzip_bomb_mib": FaultSpec(
        0, _bounded_int(0, 1024), "Answer reads and searches with a small gzip body inflating to this many MiB."
    ),
    "truncated_json": FaultSpec(False, _boolean, "Cut read and search answers off half-way (invalid JSON)."),
    "wrong_resource_type": FaultSpec(
        None, _optional_resource_type, "Claim this resourceType at the top of every read and search answer."
    ),
    "next_link_loop": FaultSpec(False, _boolean, "Point each search Bundle's next link back at the page itself."),
    "clock_offset_s": FaultSpec(
        0, _bounded_int(-86400, 86400), "Seconds the sandbox's clock is off (Date header, SMART assertion checks)."
    ),
    "deep_json": FaultSpec(
        None,
        _optional_deep_json,
        f"Nest an element {DEEP_JSON_LEVELS:,} levels deep in the CapabilityStatement ('metadata'), in read and "
        "search answers ('search'), or in a 500 OperationOutcome answering every FHIR request ('error').",
    ),
    **QUIRK_SPECS,
    **{name: FaultSpec(default, parse, doc) for name, (default, parse, doc) in BULK_FAULTS.items()},
}


def parse_faults(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a fault mapping and fill in defaults; ValueError says what is wrong."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ValueError("faults must be a JSON object")
    values = {name: spec.default for name, spec in FAULT_SPECS.items()}
    for name, value in (raw or {}).items():
        spec = FAULT_SPECS.get(name)
        if spec is None:
            raise ValueError(f"unknown fault {name!r}; known faults: {', '.join(FAULT_SPECS)}")
        try:
            values[name] = spec.parse(value)
        except ValueError as exc:
            raise ValueError(f"fault {name!r}: {exc}") from None
    return values


class FaultState:
    """The active faults plus the seeded generator that decides who gets hit.

    Replacing the faults reseeds the generator, so "the n-th request after
    faults were set" meets the same fate on every run with the same seed.
    """

    def __init__(self, seed: int, raw: Mapping[str, Any] | None) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._values = parse_faults(raw)
        self._reset()

    def _reset(self) -> None:
        # Latencies get a generator of their own, so drawing them never shifts who else gets hit.
        self._rng = random.Random(self._seed)
        self._latency_rng = random.Random(self._seed + 0x5EED)
        limit = self._values["max_concurrency"]
        self.slots: Slots | None = Slots(limit) if limit else None
        self._seen = 0
        self._tokens = float(self._values["throttle_burst"])
        self._refilled = time.monotonic()
        self.throttled = 0

    def replace(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        values = parse_faults(raw)
        with self._lock:
            self._values = values
            self._reset()
        return dict(values)

    def added_latency_s(self, values: dict[str, Any]) -> float:
        """The fixed latency plus one draw of the lognormal, in seconds."""
        delay = values["latency_ms"] / 1000
        median = values["latency_median_ms"]
        if median:
            with self._lock:
                delay += median / 1000 * math.exp(values["latency_sigma"] * self._latency_rng.gauss(0, 1))
        return delay

    def throttle(self, values: dict[str, Any]) -> bool:
        """Whether this request is one the throttles refuse (every Nth, or no token left)."""
        every, rate = values["throttle_every"], values["throttle_rps"]
        if not every and not rate:
            return False
        with self._lock:
            self._seen += 1
            refused = bool(every) and self._seen % every == 0
            if rate and not refused:
                now = time.monotonic()
                self._tokens = min(float(values["throttle_burst"]), self._tokens + (now - self._refilled) * rate)
                self._refilled = now
                if self._tokens >= 1:
                    self._tokens -= 1
                else:
                    refused = True
            if refused:
                self.throttled += 1
            return refused

    @property
    def values(self) -> dict[str, Any]:
        # The dict is replaced whole and never mutated, so handing it out is safe.
        return self._values

    def hit(self, probability: float) -> bool:
        if probability <= 0:
            return False
        with self._lock:
            return self._rng.random() < probability


class Slots:
    """A first-come, first-served limit on requests in service, counting who waits.

    ``threading.Semaphore`` lets a newly arrived thread overtake ones already waiting; a
    server's accept queue does not, and the queueing a load test should see is first in, first out.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self.busy = 0
        self.peak_queued = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def acquire(self) -> None:
        with self._cond:
            if self.busy < self.limit and not self._queue:
                self.busy += 1
                return
            ticket = object()
            self._queue.append(ticket)
            self.peak_queued = max(self.peak_queued, len(self._queue))
            while self._queue[0] is not ticket or self.busy >= self.limit:
                self._cond.wait()
            self._queue.popleft()
            self.busy += 1
            self._cond.notify_all()  # the next in line may fit too

    def release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()


RequestFault = Callable[[dict[str, Any], FaultState], "Response | None"]


def _fault_not_fhir(values: dict[str, Any], state: FaultState) -> Response | None:
    return Response(200, LOGIN_PAGE, HTML) if values["not_fhir"] else None


def _fault_429(values: dict[str, Any], state: FaultState) -> Response | None:
    if not state.hit(values["rate_429"]):
        return None
    return _too_many_requests(values)


def _too_many_requests(values: dict[str, Any]) -> Response:
    """A 429 with Retry-After in seconds (an HTTP-date with the retry_after_date fault), or, with the
    throttle_style quirk, the RateLimit fields instead."""
    style, wait = values["throttle_style"], values["retry_after"]
    if style != "retry_after":
        return _rate_limited(style, wait, time.time() + values["clock_offset_s"])
    retry_after = str(wait)
    if values["retry_after_date"]:
        # RFC 9110 allows an HTTP-date; rounded up so the wait is never shorter than asked.
        when = time.time() + values["clock_offset_s"] + wait
        retry_after = email.utils.formatdate(int(when) + 1, usegmt=True)
    return operation_outcome(
        429,
        "throttled",
        "Too many requests; slow down and retry after the indicated delay.",
        headers={"Retry-After": retry_after},
    )


def _fault_deep_error(values: dict[str, Any], state: FaultState) -> Response | None:
    if values["deep_json"] != "error":
        return None
    return _deepened(operation_outcome(500, "exception", "Simulated crash with a runaway error body."))


def _rate_limited(style: str, wait: int, now: float) -> Response:
    """A 429 with no Retry-After, saying when the quota resets the way API gateways do."""
    if style == "ratelimit":
        # draft-ietf-httpapi-ratelimit-headers: the policy's name, r = requests left, t = seconds to reset.
        headers = {"RateLimit": f'"fhirInteractions";r=0;t={wait}', "RateLimit-Policy": '"fhirInteractions";q=100;w=60'}
    elif style == "ratelimit_reset":
        headers = {"RateLimit-Limit": "100", "RateLimit-Remaining": "0", "RateLimit-Reset": str(wait)}
    else:
        headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(now) + wait)}
    diagnostics = f"Rate limit of 100 interactions a minute exceeded: {wait} s until the reset."
    return operation_outcome(429, "throttled", diagnostics, headers=headers)


def _fault_5xx(values: dict[str, Any], state: FaultState) -> Response | None:
    if not state.hit(values["rate_5xx"]):
        return None
    status = values["status_5xx"]
    return operation_outcome(status, "transient", f"Simulated server error {status}; the request may be retried.")


# Faults that act on every request under the FHIR base once it has its place (see
# SandboxHospital._capacity, which throttles, queues and adds latency first), in the
# order a real stack would apply them: a proxy answers instead of the server, then the
# gateway throttles, then the server fails.
REQUEST_FAULTS: dict[str, RequestFault] = {
    "not_fhir": _fault_not_fhir,
    "rate_429": _fault_429,
    "rate_5xx": _fault_5xx,
    "deep_json": _fault_deep_error,
}


# Faults that spoil a successful read or search answer (metadata, SMART configuration and the
# token endpoint are left alone, so configure passes and the damage shows where data flows).
ResponseFault = Callable[[Response, Any], Response]


def _fault_next_link_loop(response: Response, value: Any) -> Response:
    if not value:
        return response
    bundle = json.loads(response.body)
    links = {link.get("relation"): link for link in bundle.get("link", [])}
    if "next" in links and "self" in links:
        links["next"]["url"] = links["self"]["url"]
    return replace(response, body=json.dumps(bundle, separators=(",", ":")).encode())


def _fault_wrong_resource_type(response: Response, value: Any) -> Response:
    if not value:
        return response
    resource = json.loads(response.body)
    resource["resourceType"] = value
    return replace(response, body=json.dumps(resource, separators=(",", ":")).encode())


def _fault_truncated_json(response: Response, value: Any) -> Response:
    return replace(response, body=response.body[: len(response.body) // 2]) if value else response


def _fault_oversized(response: Response, value: Any) -> Response:
    return replace(response, body=_padded_bundle(value)) if value else response


def _fault_gzip_bomb(response: Response, value: Any) -> Response:
    if not value:
        return response
    return replace(response, body=_gzip_bomb(value), headers={**response.headers, "Content-Encoding": "gzip"})


def _fault_deep_json(response: Response, value: Any) -> Response:
    return _deepened(response) if value == "search" else response


def _deepened(response: Response) -> Response:
    """The JSON object answer with one more element, DEEP_JSON_LEVELS arrays deep (json.dumps cannot write it)."""
    nested = b"[" * DEEP_JSON_LEVELS + b"]" * DEEP_JSON_LEVELS
    return replace(response, body=response.body[:-1] + b',"_deep":' + nested + b"}")


def _fault_slow_drip(response: Response, value: Any) -> Response:
    return replace(response, drip_bps=value) if value else response


RESPONSE_FAULTS: dict[str, ResponseFault] = {
    "next_link_loop": _fault_next_link_loop,
    "wrong_resource_type": _fault_wrong_resource_type,
    "truncated_json": _fault_truncated_json,
    "oversized_bytes": _fault_oversized,
    "gzip_bomb_mib": _fault_gzip_bomb,
    "deep_json": _fault_deep_json,
    "slow_drip_bps": _fault_slow_drip,
}


@functools.lru_cache(maxsize=2)
def _padded_bundle(size: int) -> bytes:
    """A valid, empty searchset Bundle padded to ``size`` bytes: large, but not malformed."""
    head = b'{"resourceType":"Bundle","type":"searchset","total":0,"meta":{"source":"#'
    tail = b'"}}'
    return head + b"0" * max(0, size - len(head) - len(tail)) + tail


@functools.lru_cache(maxsize=2)
def _gzip_bomb(mib: int) -> bytes:
    """A gzip body of a few hundred KiB that inflates to ``mib`` MiB of one JSON string."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"0" * (1 << 20)
    parts = [packer.compress(b'{"resourceType":"Bundle","type":"searchset","meta":{"source":"#')]
    parts.extend(packer.compress(chunk) for _ in range(mib))
    parts.append(packer.compress(b'"}}') + packer.flush())
    return b"".join(parts)


# --- tokens ----------------------------------------------------------------------


class TokenStore:
    """Issued bearer tokens and when they expire."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            # Forget expired tokens as we go, so a long load test cannot grow this forever.
            for old in [t for t, exp in self._expiry.items() if exp <= now]:
                del self._expiry[old]
            self._expiry[token] = now + self.ttl_s
        return token

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and expiry > time.monotonic()


# The icd9_conditions quirk: the ICD-9-CM code a legacy feed sends for each SNOMED CT condition of data.py.
ICD9CM = "http://hl7.org/fhir/sid/icd-9-cm"
SNOMED = "http://snomed.info/sct"
ICD9_OF_SNOMED: dict[str, tuple[str, str]] = {
    "44054006": ("250.00", "Diabetes mellitus without mention of complication, type II"),
    "15777000": ("790.29", "Other abnormal glucose"),
    "38341003": ("401.9", "Unspecified essential hypertension"),
    "55822004": ("272.4", "Other and unspecified hyperlipidemia"),
    "162864005": ("278.00", "Obesity, unspecified"),
    "40055000": ("473.9", "Unspecified sinusitis (chronic)"),
    "195967001": ("493.90", "Asthma, unspecified"),
    "195662009": ("462", "Acute pharyngitis"),
    "10509002": ("466.0", "Acute bronchitis"),
    "444814009": ("461.9", "Acute sinusitis, unspecified"),
}

SUPPORTED_SCOPES = tuple(f"system/{rtype}.{access}" for rtype in ("*", *RESOURCE_TYPES) for access in ("read", "rs"))
DEFAULT_SCOPE = "system/*.read"


# --- search parameters ----------------------------------------------------------

Predicate = Callable[[Resource], bool]


@dataclass(frozen=True)
class SearchParam:
    type: str  # the FHIR search parameter type, for the CapabilityStatement
    compile: Callable[[str], Predicate]  # value (commas = OR) -> predicate; raises FhirError


def _parse_token(value: str) -> tuple[str | None, str | None]:
    # FHIR token syntax: "system|code", "|code" (no system), "system|" (any code), "code".
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code or None
    return None, value


def _token_param(extract: Callable[[Resource], list[tuple[str, str]]]) -> Callable[[str], Predicate]:
    def compile_(value: str) -> Predicate:
        wanted = [_parse_token(alt) for alt in value.split(",")]

        def predicate(resource: Resource) -> bool:
            pairs = extract(resource)
            return any(
                (system is None or s == system) and (code is None or c == code)
                for system, code in wanted
                for s, c in pairs
            )

        return predicate

    return compile_


def _string_param(extract: Callable[[Resource], list[str]]) -> Callable[[str], Predicate]:
    # FHIR string search: case-insensitive "starts with".
    def compile_(value: str) -> Predicate:
        wanted = [alt.strip().lower() for alt in value.split(",") if alt.strip()]

        def predicate(resource: Resource) -> bool:
            return any(text.lower().startswith(w) for text in extract(resource) for w in wanted)

        return predicate

    return compile_


_DATE_VALUE = re.compile(r"(eq|ne|gt|lt|ge|le)?(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def _date_param(extract: Callable[[Resource], str | None]) -> Callable[[str], Predicate]:
    def compile_(value: str) -> Predicate:
        ranges = []
        for alt in value.split(","):
            match = _DATE_VALUE.fullmatch(alt.strip())
            if not match:
                raise _bad_request(f"Invalid date search value {alt!r}; expected [prefix]YYYY[-MM[-DD]].")
            prefix, year, month, day = match.groups()
            try:
                date(int(year), int(month or 1), int(day or 1))
            except ValueError:
                raise _bad_request(f"Invalid date search value {alt!r}.") from None
            low = f"{year}-{month or '01'}-{day or '01'}"
            high = f"{year}-{month or '12'}-{day or '31'}"  # string comparison makes "-31" a safe upper bound
            ranges.append((prefix or "eq", low, high))

        def predicate(resource: Resource) -> bool:
            when = extract(resource)
            if not when:
                return False
            for prefix, low, high in ranges:
                inside = low <= when <= high
                if (
                    (prefix == "eq" and inside)
                    or (prefix == "ne" and not inside)
                    or (prefix == "gt" and when > high)
                    or (prefix == "lt" and when < low)
                    or (prefix == "ge" and when >= low)
                    or (prefix == "le" and when <= high)
                ):
                    return True
            return False

        return predicate

    return compile_


def _codings(concepts: list[Resource] | Resource | None) -> list[tuple[str, str]]:
    if concepts is None:
        return []
    if isinstance(concepts, dict):
        concepts = [concepts]
    return [(c.get("system", ""), c.get("code", "")) for concept in concepts for c in concept.get("coding", [])]


def _names(resource: Resource, part: str) -> list[str]:
    out: list[str] = []
    for name in resource.get("name", []):
        if part in ("family", "any") and name.get("family"):
            out.append(name["family"])
        if part in ("given", "any"):
            out.extend(name.get("given", []))
        if part == "any" and name.get("text"):
            out.append(name["text"])
    return out


_ID_PARAM = SearchParam("token", _token_param(lambda r: [("", r["id"])]))

SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    "Patient": {
        "_id": _ID_PARAM,
        "identifier": SearchParam(
            "token", _token_param(lambda r: [(i.get("system", ""), i.get("value", "")) for i in r["identifier"]])
        ),
        "name": SearchParam("string", _string_param(lambda r: _names(r, "any"))),
        "family": SearchParam("string", _string_param(lambda r: _names(r, "family"))),
        "given": SearchParam("string", _string_param(lambda r: _names(r, "given"))),
        "birthdate": SearchParam("date", _date_param(lambda r: r.get("birthDate"))),
        "gender": SearchParam("token", _token_param(lambda r: [(GENDER_SYSTEM, r.get("gender", ""))])),
    },
    "Observation": {
        "_id": _ID_PARAM,
        "category": SearchParam("token", _token_param(lambda r: _codings(r.get("category")))),
        "code": SearchParam("token", _token_param(lambda r: _codings(r.get("code")))),
    },
    "Condition": {
        "_id": _ID_PARAM,
        "category": SearchParam("token", _token_param(lambda r: _codings(r.get("category")))),
        "code": SearchParam("token", _token_param(lambda r: _codings(r.get("code")))),
        "clinical-status": SearchParam("token", _token_param(lambda r: _codings(r.get("clinicalStatus")))),
    },
    "Encounter": {
        "_id": _ID_PARAM,
        "class": SearchParam("token", _token_param(lambda r: _codings({"coding": [r["class"]]}))),
    },
    # Served only by a sandbox started with extended_clinical=True.
    "MedicationRequest": {
        "_id": _ID_PARAM,
        "code": SearchParam("token", _token_param(lambda r: _codings(r.get("medicationCodeableConcept")))),
    },
    "AllergyIntolerance": {
        "_id": _ID_PARAM,
        "code": SearchParam("token", _token_param(lambda r: _codings(r.get("code")))),
        "clinical-status": SearchParam("token", _token_param(lambda r: _codings(r.get("clinicalStatus")))),
    },
    "Procedure": {"_id": _ID_PARAM, "code": SearchParam("token", _token_param(lambda r: _codings(r.get("code"))))},
    "Immunization": {
        "_id": _ID_PARAM,
        "vaccine-code": SearchParam("token", _token_param(lambda r: _codings(r.get("vaccineCode")))),
    },
}


def _to_icd9(condition: Resource) -> None:
    """Recode a Condition's SNOMED CT codings in ICD-9-CM (the icd9_conditions quirk)."""
    for coding in (condition.get("code") or {}).get("coding", []):
        if coding.get("system") == SNOMED and coding.get("code") in ICD9_OF_SNOMED:
            code, display = ICD9_OF_SNOMED[coding["code"]]
            coding.update(system=ICD9CM, code=code, display=display)


def _patient_reference(value: str) -> str | None:
    """The patient id named by `patient=`/`subject=`: "ID", "Patient/ID" or an absolute URL."""
    parts = value.strip().rstrip("/").split("/")
    if len(parts) == 1:
        return parts[0] or None
    return parts[-1] if parts[-2] == "Patient" else None


# --- paging tokens ----------------------------------------------------------------


class PageTokens:
    """Opaque, deterministic, tamper-evident paging tokens.

    A token is the paging state as compact JSON, base64url-encoded, plus a
    truncated HMAC keyed by flavour and seed: two sandboxes started alike hand
    out the same tokens, and a client that edits one gets a 400 rather than a
    silently different page.
    """

    def __init__(self, key: str) -> None:
        self._key = hashlib.sha256(key.encode()).digest()

    def encode(self, payload: dict[str, Any]) -> str:
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        body = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return f"{body}.{self._sign(raw)}"

    def decode(self, token: str) -> dict[str, Any]:
        body, _, signature = token.partition(".")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            payload = json.loads(raw)
        except (binascii.Error, ValueError):
            payload = None
        if not isinstance(payload, dict) or not hmac.compare_digest(signature, self._sign(raw)):
            raise _bad_request("Invalid or expired paging token.")
        return payload

    def _sign(self, raw: bytes) -> str:
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:20]


def _query_hash(used: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(used).encode()).hexdigest()[:16]


def _query_string(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, quote_via=quote, safe="/:")


# --- the resource store -------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    resource: Resource
    position: int  # global order, so merged candidate lists stay in a stable order
    patient_id: str
    body: bytes  # the resource as JSON, for reads
    entry_tail: str  # a Bundle entry minus '{"fullUrl":"<base>', for searches


class ResourceStore:
    """The population, serialised once and indexed by id and by patient."""

    def __init__(self, by_type: dict[str, list[Resource]]) -> None:
        self.by_type: dict[str, list[Record]] = {}
        self.by_id: dict[tuple[str, str], Record] = {}
        self.by_patient: dict[str, dict[str, list[Record]]] = {}
        for rtype, resources in by_type.items():
            records = []
            per_patient: dict[str, list[Record]] = {}
            for position, resource in enumerate(resources):
                text = json.dumps(resource, separators=(",", ":"))
                owner = resource.get("subject") or resource.get("patient") or {}
                patient_id = resource["id"] if rtype == "Patient" else owner["reference"].split("/", 1)[1]
                record = Record(
                    resource=resource,
                    position=position,
                    patient_id=patient_id,
                    body=text.encode(),
                    entry_tail=f'/{rtype}/{resource["id"]}","resource":{text},"search":{{"mode":"match"}}}}',
                )
                records.append(record)
                per_patient.setdefault(patient_id, []).append(record)
                self.by_id[(rtype, resource["id"])] = record
            self.by_type[rtype] = records
            self.by_patient[rtype] = per_patient


# --- the hospital ----------------------------------------------------------------------


class SandboxHospital:
    """One simulated hospital EHR, served over HTTP on its own port."""

    def __init__(
        self,
        flavour: str = "epic",
        seed: int = 1,
        patients: int = 50,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: str = "none",
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",  # noqa: S107 - the sandbox's public demo credential
        faults: Mapping[str, Any] | None = None,
        *,
        token_ttl_s: int = 300,
        log_requests: bool = False,
        defects: Mapping[str, Any] | str | None = None,
        extended_clinical: bool = False,
        jwks: Mapping[str, Any] | None = None,
        request_log: int = 0,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
        if auth not in AUTH_MODES:
            raise ValueError(f"unknown auth {auth!r}; choose one of {', '.join(AUTH_MODES)}")
        if patients < 0:
            raise ValueError("patients must be zero or more")
        self.flavour = flavour
        self.facts: Flavour = FLAVOURS[flavour]
        self.seed = seed
        self.auth = auth
        self.client_id = client_id
        self.client_secret = client_secret
        self.log_requests = log_requests
        if request_log < 0:
            raise ValueError("request_log must be zero or more")
        # Validate faults and defects before binding, so a typo leaks no socket.
        self._faults = FaultState(seed, faults)
        # The last ``request_log`` FHIR requests with when they arrived and were answered, so a
        # test can check from the server's side what a client did (a load test's Retry-After).
        self._request_log: deque[dict[str, Any]] | None = deque(maxlen=request_log) if request_log else None
        self.defects = parse_defects(defects, flavour)
        self._tokens = TokenStore(token_ttl_s)
        self._pages = PageTokens(f"sandbox-pages:{flavour}:{seed}")
        # SMART Backend Services: the client's registered public keys, and assertion ids seen.
        self._keys = KeyRegistry(jwks)
        self._replays = ReplayCache()

        population = generate_population(seed=seed, patients=patients, flavour=self.facts, extended=extended_clinical)
        # Exactly what was planted, so tests can check every defect is found and nothing else.
        self.planted = plant_defects(population, seed=seed, flavour=self.facts, config=self.defects)
        self.resource_types = RESOURCE_TYPES + (EXTENDED_CLINICAL_TYPES if extended_clinical else ())
        self._store = ResourceStore(population.by_type())
        self.patient_ids: list[str] = [p["id"] for p in population.patients]
        # Requests in flight and when each came, counted by the server itself (see traffic.py).
        self.traffic = Traffic()
        self.exports = BulkExports(
            bodies=lambda rtype: [record.body for record in self._store.by_type.get(rtype, [])],
            types=self.resource_types,
            last_updated=LAST_UPDATED,
        )

        self._httpd = _Server((host, port), self)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"http://{_url_host(host)}:{self.port}{self.facts.base_path}"
        self._capability = self._build_capability()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- public API --------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth2/token"

    @property
    def mrn_system(self) -> str:
        return self.facts.mrn_system

    @property
    def faults(self) -> dict[str, Any]:
        return dict(self._faults.values)

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace every fault (unnamed ones go back to their defaults); ValueError on bad input."""
        return self._faults.replace(faults)

    @property
    def jwks(self) -> dict[str, Any]:
        """The public keys registered for SMART Backend Services (auth="smart_backend")."""
        return self._keys.jwks

    def register_jwks(self, jwks: Mapping[str, Any] | None) -> dict[str, Any]:
        """Register the client's public key set, as a hospital does once (None clears it)."""
        return self._keys.replace(jwks)

    def requests(self) -> list[dict[str, Any]]:
        """The request log, oldest first (empty unless started with ``request_log``).

        Each entry has the method, target, status, Retry-After, and the arrival and answer times
        in seconds on the machine's monotonic clock, the one ``time.monotonic()`` reads in any process.
        """
        return list(self._request_log or ())

    def clear_requests(self) -> None:
        """Empty the request log."""
        if self._request_log is not None:
            self._request_log.clear()
        self.traffic.reset()

    def capacity(self) -> dict[str, Any]:
        """The capacity knobs' live state: requests in service and queued, the peak queue, 429s sent."""
        slots = self._faults.slots
        return {
            "max_concurrency": slots.limit if slots else 0,
            "in_service": slots.busy if slots else 0,
            "queued": slots.queued if slots else 0,
            "peak_queued": slots.peak_queued if slots else 0,
            "throttled": self._faults.throttled,
            **self.traffic.summary(),
        }

    def record(self, entry: dict[str, Any]) -> None:
        """Add one answered FHIR request to the log (called by the HTTP handler)."""
        if self._request_log is not None:
            self._request_log.append(entry)

    @property
    def logging_requests(self) -> bool:
        return self._request_log is not None

    def now(self) -> float:
        """The sandbox's wall clock, shifted by the clock_offset_s fault."""
        return time.time() + self._faults.values["clock_offset_s"]

    def start(self) -> SandboxHospital:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"sandbox-{self.flavour}-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever(poll_interval=0.5)
        finally:
            self._closed = True
            self._httpd.server_close()

    def __enter__(self) -> SandboxHospital:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SandboxHospital {self.flavour} {self.base_url}>"

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        """Answer one HTTP request. Never raises: every failure is a response."""
        try:
            return self._spoil(target, self._route(method, target, headers, body))
        except FhirError as exc:
            return exc.response()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return operation_outcome(500, "exception", "Internal sandbox error; see the sandbox's stderr.")

    def _spoil(self, target: str, response: Response) -> Response:
        """Apply the response faults to a successful read or search answer."""
        path = urlsplit(target).path
        base_path = self.facts.base_path
        if response.status != 200 or response.content_type != FHIR_JSON or not path.startswith(base_path):
            return response
        if path[len(base_path) :].strip("/") in ("metadata", ".well-known/smart-configuration"):
            return response
        values = self._faults.values
        response = self._quirk_body(response, values)
        for name, fault in RESPONSE_FAULTS.items():
            response = fault(response, values[name])
        return response

    def _quirk_body(self, response: Response, values: dict[str, Any]) -> Response:
        """The quirks that rewrite what a read or search answers (before any fault spoils it)."""
        body = response.body
        if values["mrn_system"]:
            old, new = json.dumps(self.facts.mrn_system), json.dumps(values["mrn_system"])
            body = body.replace(f'"system":{old}'.encode(), f'"system":{new}'.encode())
        if values["icd9_conditions"] and b'"Condition"' in body:
            payload = json.loads(body)
            entries = [e.get("resource") for e in payload.get("entry", [])] if payload.get("entry") else [payload]
            for resource in entries:
                if isinstance(resource, dict) and resource.get("resourceType") == "Condition":
                    _to_icd9(resource)
            body = json.dumps(payload, separators=(",", ":")).encode()
        return response if body is response.body else replace(response, body=body)

    def _route(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        split = urlsplit(target)
        path = split.path
        query = parse_qsl(split.query, keep_blank_values=True)
        base_path = self.facts.base_path

        if path.startswith("/_sandbox/"):
            return self._control(method, path, headers, body)
        if path != base_path and not path.startswith(base_path + "/"):
            raise FhirError(404, "not-found", f"No FHIR endpoint at {path}; this sandbox's base is {base_path}.")

        values = self._faults.values
        if values["redirect_to"]:
            # A load balancer or vanity host sending every call elsewhere.
            return Response(302, b"", PLAIN_JSON, {"Location": values["redirect_to"] + target})
        return self._capacity(values, lambda: self._fhir(method, path, query, headers, body, values))

    def _capacity(self, values: dict[str, Any], serve: Callable[[], Response]) -> Response:
        """The capacity knobs: a gateway's throttle answers at once; the rest wait for a place, then take their time."""
        state = self._faults
        if state.throttle(values):
            return _too_many_requests(values)
        slots = state.slots
        if slots is not None:
            slots.acquire()
        try:
            delay = state.added_latency_s(values)
            if delay:
                time.sleep(delay)
            return serve()
        finally:
            if slots is not None:
                slots.release()

    def _fhir(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Headers,
        body: bytes,
        values: dict[str, Any],
    ) -> Response:
        base_path = self.facts.base_path
        for handler in REQUEST_FAULTS.values():
            faulted = handler(values, self._faults)
            if faulted is not None:
                return faulted

        base = self._public_base(headers)
        relative = path[len(base_path) :].strip("/")
        if relative == "metadata":
            self._require_get(method)
            return self._metadata(base)
        if relative == ".well-known/smart-configuration":
            self._require_get(method)
            if values["smart_config_status"]:
                status = values["smart_config_status"]
                said = f"Simulated error {status} reading the SMART configuration."
                return operation_outcome(status, "exception", said)
            return self._smart_configuration(base)
        if relative == "oauth2/token":
            return self._token(method, headers, body)

        denied = self._authorize(headers)
        if denied is not None:
            return denied
        if "$export" in relative:
            return self._bulk(method, relative, path, query, headers, base, values)
        self._check_format(query)
        segments = relative.split("/") if relative else []
        if not segments:
            # Only a cursor flavour's `_getpages` link lands on the bare base.
            self._require_get(method)
            return self._search(None, query, base)
        rtype = segments[0]
        if rtype not in self.resource_types:
            raise FhirError(404, "not-found", f"Resource type {rtype!r} is not supported by this server.")
        if len(segments) == 1:
            self._require_get(method)
            return self._search(rtype, query, base)
        if len(segments) == 2:
            self._require_get(method)
            return self._read(rtype, segments[1])
        raise FhirError(404, "not-found", f"No FHIR endpoint at {path}.")

    def _bulk(
        self,
        method: str,
        relative: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Headers,
        base: str,
        values: dict[str, Any],
    ) -> Response:
        """The Bulk Data export: kick-off at any level, the status URL, and the NDJSON files (see bulk.py)."""
        segments = relative.split("/")
        if segments[0] == "$export-status" and len(segments) == 2:
            if method not in ("GET", "DELETE"):
                raise FhirError(405, "not-supported", "The status URL answers GET and DELETE.")
            answer = self.exports.status(segments[1], method, base=base, auth=self.auth != "none", values=values)
        elif segments[0] == "$export-file" and len(segments) == 3:
            self._require_get(method)
            answer = self.exports.file(segments[1], segments[2], values=values)
        elif relative in ("$export", "Patient/$export") or (
            len(segments) == 3 and segments[0] == "Group" and segments[2] == "$export"
        ):
            self._require_get(method)
            request = base + "/" + relative + ("?" + _query_string(query) if query else "")
            level = "group" if segments[0] == "Group" else "patient" if segments[0] == "Patient" else "system"
            answer = self.exports.kick_off(
                request=request,
                query=dict(query),
                prefer=headers.get("Prefer") or "",
                base=base,
                values=values,
                level=level,
                group=segments[1] if level == "group" else "",
            )
        else:
            raise FhirError(404, "not-found", f"No FHIR endpoint at {path}.")
        status, body, content_type, extra = answer
        return Response(status, body, content_type, extra)

    @staticmethod
    def _require_get(method: str) -> None:
        if method != "GET":
            raise FhirError(405, "not-supported", f"{method} is not supported here; this sandbox is read-only.")

    @staticmethod
    def _check_format(query: list[tuple[str, str]]) -> None:
        for name, value in query:
            if name == "_format" and value and "json" not in value.lower():
                raise FhirError(406, "not-supported", f"_format={value} is not supported; this server speaks JSON.")

    def _public_base(self, headers: Headers) -> str:
        # Links follow the Host the client used, as HAPI and most servers do, so
        # a sandbox reached through a container name still pages correctly.
        host = (headers.get("Host") or "").strip()
        if host and _HOST_HEADER.fullmatch(host):
            return f"http://{host}{self.facts.base_path}"
        return self.base_url

    # -- auth ------------------------------------------------------------------------

    def _authorize(self, headers: Headers) -> Response | None:
        if self.auth == "none":
            return None
        scheme, _, credentials = (headers.get("Authorization") or "").strip().partition(" ")
        realm = f'realm="{self.facts.software_name} sandbox"'
        if self.auth == "basic":
            client = _basic_credentials(credentials) if scheme.lower() == "basic" else None
            if client is None or self._faults.values["reject_credentials"] or not self._known_client(*client):
                return operation_outcome(
                    401,
                    "login",
                    "HTTP Basic authentication with valid credentials is required.",
                    headers={"WWW-Authenticate": f'Basic {realm}, charset="UTF-8"'},
                )
            return None
        token = credentials.strip()
        if scheme.lower() != "bearer" or not token:
            return operation_outcome(
                401, "login", "A bearer access token is required.", headers={"WWW-Authenticate": f"Bearer {realm}"}
            )
        if not self._tokens.valid(token):
            return operation_outcome(
                401,
                "login",
                "The access token is unknown or has expired.",
                headers={
                    "WWW-Authenticate": f'Bearer {realm}, error="invalid_token", '
                    'error_description="The access token is unknown or has expired"'
                },
            )
        return None

    def _known_client(self, client_id: str, client_secret: str) -> bool:
        # Compare both halves every time, in constant time, as a real server must.
        id_ok = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        secret_ok = hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        return id_ok and secret_ok

    def _token(self, method: str, headers: Headers, body: bytes) -> Response:
        if self.auth not in TOKEN_MODES:
            raise FhirError(404, "not-found", f"This sandbox issues no OAuth2 tokens (auth is {self.auth}).")
        if method != "POST":
            return _oauth_error(405, "invalid_request", "The token endpoint accepts POST only.", Allow="POST")
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "Send the token request as application/x-www-form-urlencoded.")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(400, "invalid_request", "The request body is not valid form encoding.")
        form: dict[str, str] = {}
        for name, value in pairs:
            if name in form:
                # RFC 6749 section 3.2: parameters must not be repeated.
                return _oauth_error(400, "invalid_request", f"Parameter {name} is repeated.")
            form[name] = value

        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required.")
        if grant_type != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant_type} is not supported.")
        if self.auth == "smart_backend":
            return self._check_assertion(form, headers) or self._grant(form)

        scheme, _, credentials = (headers.get("Authorization") or "").strip().partition(" ")
        used_header = scheme.lower() == "basic"
        in_form = "client_secret" in form
        challenge = {"WWW-Authenticate": 'Basic realm="token"'} if used_header else {}
        if used_header and in_form:
            return _oauth_error(400, "invalid_request", "Use one client authentication method, not two.")
        if used_header:
            client = _basic_credentials(credentials, form_encoded=True)
            if client is None:
                return _oauth_error(401, "invalid_client", "Malformed HTTP Basic credentials.", **challenge)
            if form.get("client_id") not in (None, client[0]):
                return _oauth_error(400, "invalid_request", "client_id in the body does not match the header.")
        elif in_form:
            client = (form.get("client_id", ""), form["client_secret"])
        else:
            return _oauth_error(
                401,
                "invalid_client",
                "Client authentication is required (client_secret_basic or client_secret_post).",
                **{"WWW-Authenticate": 'Basic realm="token"'},
            )
        if self._faults.values["reject_credentials"] or not self._known_client(*client):
            return _oauth_error(401, "invalid_client", "Client authentication failed.", **challenge)
        return self._grant(form)

    def _check_assertion(self, form: dict[str, str], headers: Headers) -> Response | None:
        """SMART Backend Services client authentication: a signed JWT checked against the JWKS."""
        if (headers.get("Authorization") or "").strip() or "client_secret" in form:
            return _oauth_error(400, "invalid_request", "This client signs a private_key_jwt; send no secret.")
        if form.get("client_assertion_type") != JWT_BEARER:
            return _oauth_error(400, "invalid_request", f"client_assertion_type must be {JWT_BEARER}.")
        if not form.get("client_assertion"):
            return _oauth_error(400, "invalid_request", "client_assertion is required.")
        if form.get("client_id") not in (None, self.client_id) or self._faults.values["reject_credentials"]:
            return _oauth_error(401, "invalid_client", "Client authentication failed.")
        try:
            verify_assertion(
                form["client_assertion"],
                registry=self._keys,
                client_id=self.client_id,
                audience=self._public_base(headers) + "/oauth2/token",
                now=self.now(),
                replays=self._replays,
            )
        except AssertionRejected as exc:
            return _oauth_error(401, "invalid_client", str(exc))
        return None

    def _grant(self, form: dict[str, str]) -> Response:
        """Issue a bearer token to an authenticated client for the scopes it asked for."""
        requested = form.get("scope", "").split()
        unknown = [s for s in requested if s not in SUPPORTED_SCOPES]
        if unknown:
            return _oauth_error(400, "invalid_scope", f"Unsupported scope(s): {' '.join(unknown)}.")
        granted = requested or [DEFAULT_SCOPE]
        if self._faults.values["per_type_scopes"]:
            # Some servers spell out what a wildcard covers instead of echoing it.
            granted = [
                f"system/{rtype}.{scope.rsplit('.', 1)[1]}" if scope.startswith("system/*.") else scope
                for scope in granted
                for rtype in (self.resource_types if scope.startswith("system/*.") else ("",))
            ]
        payload = {
            "access_token": self._tokens.issue(),
            "token_type": "Bearer",
            "expires_in": self._tokens.ttl_s,
            "scope": " ".join(granted),
        }
        return _json_response(200, payload, PLAIN_JSON, **{"Cache-Control": "no-store", "Pragma": "no-cache"})

    # -- metadata --------------------------------------------------------------------

    def _build_capability(self) -> dict[str, Any]:
        facts = self.facts
        resources = []
        for rtype in self.resource_types:
            search_params = [{"name": name, "type": p.type} for name, p in SEARCH_PARAMS[rtype].items()]
            if rtype != "Patient":
                for name in facts.patient_params:
                    search_params.append(
                        {
                            "name": name,
                            "type": "reference",
                            "documentation": "Required." if facts.clinical_requires_patient else "Patient reference.",
                        }
                    )
            for rule in facts.required_for(rtype):
                existing = next((p for p in search_params if p["name"] == rule.param), None)
                if existing is None:
                    existing = {"name": rule.param, "type": "token"}
                    search_params.append(existing)
                existing["documentation"] = f"Required. {rule.why}"
            resources.append(
                {
                    "type": rtype,
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": search_params,
                }
            )
        rest: dict[str, Any] = {"mode": "server", "resource": resources}
        if self.auth == "basic":
            rest["security"] = {"service": [{"coding": [{"system": RESTFUL_SECURITY_SERVICE, "code": "Basic"}]}]}
        elif self.auth in TOKEN_MODES:
            rest["security"] = {
                "service": [
                    {
                        "coding": [
                            {
                                "system": RESTFUL_SECURITY_SERVICE,
                                "code": "SMART-on-FHIR",
                            }
                        ]
                    }
                ],
                "extension": [
                    {
                        "url": OAUTH_URIS,
                        "extension": [{"url": "token", "valueUri": "{token_url}"}],
                    }
                ],
            }
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": AS_OF.date().isoformat(),
            "publisher": facts.vendor,
            "kind": "instance",
            "software": {"name": facts.software_name, "version": facts.software_version},
            "implementation": {"description": f"{facts.software_name} sandbox (synthetic data)", "url": "{base}"},
            "fhirVersion": FHIR_VERSION,
            "format": ["json"],
            "rest": [rest],
        }

    def _metadata(self, base: str) -> Response:
        missing = self._faults.values["no_capability_statement"]
        if missing == "empty_bundle":
            # What some servers answer: /metadata routed to a search of nothing.
            return _json_response(200, {"resourceType": "Bundle", "type": "searchset", "total": 0})
        if missing == "operation_outcome":
            return operation_outcome(200, "not-supported", "The capabilities interaction is not supported.")
        if missing == "not_found":
            raise FhirError(404, "not-found", "No resource type or operation named metadata.")
        statement = json.loads(json.dumps(self._capability))  # a private copy to fill in
        statement["implementation"]["url"] = base
        statement["fhirVersion"] = self._faults.values["fhir_version"] or FHIR_VERSION
        if not self._faults.values["no_bulk_export"]:
            levels = self._faults.values["export_levels"].split(",")
            rest = statement["rest"][0]
            if "system" in levels:
                rest["operation"] = [{"name": "export", "definition": EXPORT_DEFINITION}]
            for resource in rest["resource"]:
                if resource["type"] == "Patient" and "patient" in levels:
                    resource["operation"] = [{"name": "export", "definition": PATIENT_EXPORT_DEFINITION}]
            if "group" in levels:
                # Group is only here for its export: the sandbox serves no Group reads or searches.
                rest["resource"].append(
                    {
                        "type": "Group",
                        "operation": [{"name": "export", "definition": GROUP_EXPORT_DEFINITION}],
                    }
                )
        for extension in statement["rest"][0].get("security", {}).get("extension", []):
            extension["extension"][0]["valueUri"] = base + "/oauth2/token"
        response = _json_response(200, statement)
        return _deepened(response) if self._faults.values["deep_json"] == "metadata" else response

    def _smart_configuration(self, base: str) -> Response:
        if self.auth not in TOKEN_MODES:
            raise FhirError(404, "not-found", "SMART configuration is only published when the sandbox issues tokens.")
        payload: dict[str, Any] = {
            "token_endpoint": base + "/oauth2/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": list(SUPPORTED_SCOPES),
            "capabilities": ["client-confidential-symmetric", "permission-v1", "permission-v2"],
        }
        if self.auth == "smart_backend":
            payload["token_endpoint_auth_methods_supported"] = ["private_key_jwt"]
            payload["token_endpoint_auth_signing_alg_values_supported"] = list(ALGORITHMS)
            payload["capabilities"] = ["client-confidential-asymmetric", "permission-v1", "permission-v2"]
        return _json_response(200, payload, PLAIN_JSON)

    # -- read and search ------------------------------------------------------------

    def _read(self, rtype: str, resource_id: str) -> Response:
        record = self._store.by_id.get((rtype, resource_id))
        if record is None:
            raise FhirError(404, "not-found", f"Resource {rtype}/{resource_id} is not known.")
        return Response(200, record.body)

    def _search(self, rtype: str | None, query: list[tuple[str, str]], base: str) -> Response:
        facts = self.facts
        query = [(name, value) for name, value in query if name not in REPRESENTATION_PARAMS]
        cursor = self._page_from_cursor(rtype, query) if facts.paging == "cursor" else None
        if cursor is not None:
            # The token carries the whole search; anything else on the URL is ignored.
            rtype, query, offset, count = cursor
            used, patient_ids, predicates = self._criteria(rtype, query)
        elif rtype is None:
            raise FhirError(404, "not-found", "System-level search is not supported; search a resource type.")
        else:
            used, patient_ids, predicates = self._criteria(rtype, query)
            count = self._count(query)
            offset = self._offset(rtype, query, used, count)

        if patient_ids is None:
            candidates = self._store.by_type[rtype]
        else:
            per_patient = self._store.by_patient[rtype]
            candidates = [r for pid in patient_ids for r in per_patient.get(pid, [])]
            candidates.sort(key=lambda r: r.position)
        matches = [r for r in candidates if all(p(r.resource) for p in predicates)]
        page = matches[offset : offset + count]

        links = [{"relation": "self", "url": self._page_link(base, rtype, used, offset, count, first=offset == 0)}]
        if count and offset + count < len(matches) and not self._faults.values["never_pages"]:
            links.append({"relation": "next", "url": self._page_link(base, rtype, used, offset + count, count)})
        head = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, links[0]["url"])),
            "meta": {"lastUpdated": LAST_UPDATED},
            "type": "searchset",
            "total": len(matches),
            "link": links,
        }
        text = json.dumps(head, separators=(",", ":"))
        if page:
            # FHIR JSON forbids empty arrays, so "entry" appears only with entries.
            prefix = '{"fullUrl":"' + base
            text = text[:-1] + ',"entry":[' + ",".join(prefix + r.entry_tail for r in page) + "]}"
        return Response(200, text.encode())

    def _criteria(
        self, rtype: str, query: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], set[str] | None, list[Predicate]]:
        """Apply the flavour's rules; return the params used, the patient filter and the predicates."""
        facts = self.facts
        clinical = rtype != "Patient"
        params = SEARCH_PARAMS[rtype]
        rules = facts.required_for(rtype)
        reference_params = facts.patient_params if clinical else ()
        control = {"_count", *facts.paging_params}
        known = {*params, *reference_params, *(r.param for r in rules)}

        used: list[tuple[str, str]] = []
        patient_ids: set[str] | None = None
        named_patient = False
        ignore_patient = self._faults.values["ignore_patient_param"]
        predicates: list[Predicate] = []
        for name, value in query:
            if name in control:
                continue
            if clinical and name in facts.refused_params:
                why = facts.refused_params_why
                raise _bad_request(f"The {name} parameter is not supported. {why}", "not-supported")
            if name not in known:
                if facts.reject_unknown_params:
                    raise _bad_request(f"Unsupported search parameter {name!r} for {rtype}.", "not-supported")
                continue  # ignored, and left out of the self link so the client can tell
            if not value:
                continue  # FHIR: a parameter with no value is ignored
            used.append((name, value))
            if name in reference_params:
                named_patient = True
                if ignore_patient:
                    continue  # the quirk: accepted, echoed in the links, and not applied
                ids = {pid for pid in (_patient_reference(v) for v in value.split(",")) if pid}
                patient_ids = ids if patient_ids is None else patient_ids & ids
            elif name in params:
                predicates.append(params[name].compile(value))

        for rule in rules:
            values = [v for n, v in used if n == rule.param]
            if not values:
                raise _bad_request(f"{rtype} searches require the {rule.param} parameter. {rule.why}", "required")
            if rule.allowed_values and any(v not in rule.allowed_values for v in values):
                raise FhirError(403, "forbidden", f"This client is not provisioned for {rule.param}={values[0]}.")
        if clinical and facts.clinical_requires_patient and not named_patient:
            names = " or ".join(facts.patient_params)
            raise _bad_request(f"{rtype} searches require {names}. {facts.clinical_requires_patient_why}", "required")
        return used, patient_ids, predicates

    def _count(self, query: list[tuple[str, str]]) -> int:
        raw = next((v for n, v in query if n == "_count"), None)
        if raw is None or raw == "" or self._faults.values["ignore_count"]:
            return self.facts.default_count
        if not raw.isdigit():
            raise _bad_request(f"_count must be a whole number >= 0, got {raw!r}.")
        return min(int(raw), self.facts.max_count)  # servers clamp rather than refuse

    def _offset(self, rtype: str, query: list[tuple[str, str]], used: list[tuple[str, str]], count: int) -> int:
        values = dict(reversed(query))  # the first occurrence wins
        paging = self.facts.paging
        if paging == "offset":
            raw = values.get("_offset")
            if raw is None:
                return 0
            if not raw.isdigit():
                raise _bad_request(f"_offset must be a whole number >= 0, got {raw!r}.")
            return int(raw)
        if paging == "relative_page":
            raw = values.get("page")
            if raw is None:
                return 0
            if not raw.isdigit() or int(raw) < 1:
                raise _bad_request(f"page must be a whole number >= 1, got {raw!r}.")
            return (int(raw) - 1) * count
        if paging == "page_context":
            token = values.get("-pageContext")
            if token is None:
                return 0
            direction = values.get("-pageDirection", "NEXT")
            if direction not in ("NEXT", "PREVIOUS"):
                raise _bad_request(f"-pageDirection must be NEXT or PREVIOUS, got {direction!r}.")
            state = self._pages.decode(token)
            if state.get("t") != rtype or state.get("h") != _query_hash(used):
                raise _bad_request("-pageContext does not belong to this search; repeat the original parameters.")
            offset = state.get("o")
            if not isinstance(offset, int) or offset < 0:
                raise _bad_request("Invalid or expired paging token.")
            return offset
        return 0

    def _page_from_cursor(
        self, rtype: str | None, query: list[tuple[str, str]]
    ) -> tuple[str, list[tuple[str, str]], int, int] | None:
        token = next((v for n, v in query if n == "_getpages"), None)
        if token is None:
            return None
        state = self._pages.decode(token)
        token_type, params, offset, count = state.get("t"), state.get("q"), state.get("o"), state.get("c")
        if (
            token_type not in self.resource_types
            or not isinstance(params, list)
            or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in params)
            or not isinstance(offset, int)
            or not isinstance(count, int)
            or offset < 0
            or count < 1
        ):
            raise _bad_request("Invalid or expired paging token.")
        if rtype is not None and rtype != token_type:
            raise _bad_request(f"This paging token belongs to a {token_type} search.")
        return token_type, [(n, v) for n, v in params], offset, count

    def _page_link(
        self, base: str, rtype: str, used: list[tuple[str, str]], offset: int, count: int, first: bool = False
    ) -> str:
        paging = self.facts.paging
        search = [*used, ("_count", str(count))]
        if paging == "cursor":
            if first:
                return f"{base}/{rtype}?{_query_string(search)}"
            token = self._pages.encode({"t": rtype, "q": used, "o": offset, "c": count})
            return f"{base}?_getpages={token}"
        if paging == "page_context":
            if first:
                return f"{base}/{rtype}?{_query_string(search)}"
            token = self._pages.encode({"t": rtype, "h": _query_hash(used), "o": offset})
            return f"{base}/{rtype}?{_query_string([*search, ('-pageContext', token), ('-pageDirection', 'NEXT')])}"
        if paging == "relative_page":
            # Relative to the FHIR base: resolve against base_url + "/".
            page = offset // count + 1 if count else 1
            return f"{rtype}?{_query_string([*search, ('page', str(page))] if page > 1 else search)}"
        return f"{base}/{rtype}?{_query_string([*search, ('_offset', str(offset))] if offset else search)}"

    # -- control -----------------------------------------------------------------------

    def info(self, base: str | None = None) -> dict[str, Any]:
        base = base or self.base_url
        facts = self.facts
        return {
            "flavour": self.flavour,
            "base_url": base,
            "token_url": base + "/oauth2/token",
            "auth": self.auth,
            "mrn_system": facts.mrn_system,
            "patient_count": len(self.patient_ids),
            "patient_ids": self.patient_ids,
            "faults": self.faults,
            "seed": self.seed,
            "software": {"name": facts.software_name, "version": facts.software_version},
            "paging": facts.paging,
            "default_count": facts.default_count,
            "max_count": facts.max_count,
            "resource_types": list(self.resource_types),
            "defects": self.defects.rates,
            "planted": len(self.planted),
            "capacity": self.capacity(),
        }

    def _control(self, method: str, path: str, headers: Headers, body: bytes) -> Response:
        if path == "/_sandbox/info":
            self._require_get(method)
            return _json_response(200, self.info(self._public_base(headers)), PLAIN_JSON)
        if path == "/_sandbox/planted":
            self._require_get(method)
            planted = [p.as_dict() for p in self.planted]
            return _json_response(200, {"defects": self.defects.rates, "planted": planted}, PLAIN_JSON)
        if path == "/_sandbox/jwks":
            return self._jwks_control(method, body)
        if path == "/_sandbox/requests":
            if method == "DELETE":
                self.clear_requests()
            elif method != "GET":
                raise FhirError(405, "not-supported", f"{method} is not supported here; use GET or DELETE.")
            return _json_response(200, {"requests": self.requests(), "capacity": self.capacity()}, PLAIN_JSON)
        if path != "/_sandbox/faults":
            raise FhirError(404, "not-found", f"No control endpoint at {path}.")
        if method == "GET":
            return _json_response(200, self.faults, PLAIN_JSON)
        if method == "DELETE":
            return _json_response(200, self._faults.replace(None), PLAIN_JSON)
        if method != "PUT":
            raise FhirError(405, "not-supported", f"{method} is not supported here; use GET, PUT or DELETE.")
        try:
            raw = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise _bad_request(f"The body must be a JSON object of faults: {exc}") from None
        try:
            return _json_response(200, self._faults.replace(raw), PLAIN_JSON)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None

    def _jwks_control(self, method: str, body: bytes) -> Response:
        """GET, PUT (register) or DELETE the client's public key set, as a hospital's admin would."""
        if method == "GET":
            return _json_response(200, self.jwks, PLAIN_JSON)
        if method == "DELETE":
            return _json_response(200, self.register_jwks(None), PLAIN_JSON)
        if method != "PUT":
            raise FhirError(405, "not-supported", f"{method} is not supported here; use GET, PUT or DELETE.")
        try:
            return _json_response(200, self.register_jwks(json.loads(body.decode("utf-8"))), PLAIN_JSON)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _bad_request(f"The body must be a public JWKS: {exc}") from None


# --- helpers ----------------------------------------------------------------------------

_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def _url_host(host: str) -> str:
    # A wildcard bind is not an address a client can use; advertise loopback.
    if host in ("", "0.0.0.0"):  # noqa: S104 - recognising a wildcard bind, not making one
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _basic_credentials(encoded: str, *, form_encoded: bool = False) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    if form_encoded:
        # RFC 6749 section 2.3.1: client_secret_basic form-encodes both halves first.
        client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    return client_id, secret


def _oauth_error(status: int, error: str, description: str, **headers: str) -> Response:
    return _json_response(
        status,
        {"error": error, "error_description": description},
        PLAIN_JSON,
        **{"Cache-Control": "no-store", "Pragma": "no-cache"},
        **headers,
    )


# --- HTTP plumbing --------------------------------------------------------------------


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so load tests measure the server, not TCP set-up
    timeout = 60  # idle keep-alive connections are dropped eventually
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus delayed ACKs
    # would add ~40 ms to every keep-alive response and ruin load-test latencies.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        hospital = self.server.hospital
        try:
            body = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            response = operation_outcome(exc.status, "invalid", str(exc))
        else:
            method = "GET" if self.command == "HEAD" else self.command
            counted = not self.path.startswith("/_sandbox/")
            arrived = hospital.traffic.arrive() if counted else time.monotonic()
            response = hospital.handle(method, self.path, self.headers, body)  # never raises
            if counted:
                hospital.traffic.leave(arrived, response.status, response.headers.get("Retry-After"))
            if hospital.logging_requests and not self.path.startswith("/_sandbox/"):
                hospital.record(
                    {
                        "method": method,
                        "target": self.path,
                        "status": response.status,
                        "retry_after": response.headers.get("Retry-After"),
                        "arrived": arrived,
                        "answered": time.monotonic(),
                    }
                )
        self._write(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if not raw_length:
            return b""
        if not raw_length.strip().isdigit():
            raise _BodyError(400, "Invalid Content-Length.")
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            raise _BodyError(413, "Request body too large.")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "Malformed chunked body.") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, "Request body too large.")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # the CRLF after each chunk

    def _write(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self._send_body(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to answer

    def _send_body(self, response: Response) -> None:
        if not response.drip_bps:
            self.wfile.write(response.body)
            return
        # The slow-drip fault: each piece arrives well within any read timeout, so only a
        # client with a total deadline gets away.
        step = max(1, response.drip_bps // 10)
        for start in range(0, len(response.body), step):
            self.wfile.write(response.body[start : start + step])
            time.sleep(step / response.drip_bps)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header follows the sandbox's clock, so the clock_offset_s fault shows.
        return super().date_time_string(self.server.hospital.now() if timestamp is None else timestamp)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class answers protocol errors with an HTML page; a FHIR client
        # deserves an OperationOutcome even for a malformed request line.
        self.close_connection = True
        if not (self.request_version or "").startswith("HTTP/1."):
            # A garbled request line leaves http.server assuming HTTP/0.9, which has no status
            # line; answer as HTTP/1.1 so the client can see what went wrong.
            self.request_version = "HTTP/1.1"
        try:
            short = HTTPStatus(code).phrase
        except ValueError:
            short = "Error"
        issue_code = "not-supported" if code in (405, 501) else ("exception" if code >= 500 else "invalid")
        self._write(operation_outcome(code, issue_code, message or short))

    def version_string(self) -> str:
        return f"sandbox-{self.server.hospital.flavour}"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hospital.log_requests:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # never let a slow client keep the process alive
    request_queue_size = 128  # load tests open many connections at once

    def __init__(self, address: tuple[str, int], hospital: SandboxHospital) -> None:
        self.hospital = hospital
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for
        # seconds on a machine with slow DNS; loopback needs no name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # clients hanging up is normal under load
        super().handle_error(request, client_address)
