"""The product's read API behind service tokens: a live hospital's patients, normalised, through the adapters.

A service account (the product, or one of its services) holds one token per tenant it is granted.
A token is a random key shown once; only its SHA-256 digest is kept. A request's token and its
connection's live state are read together (two indexed reads in one round trip, compiled once per
process) and then kept by the process for READ_API_AUTH_CACHE_SECONDS (1 s by default; 0 reads them
on every request), read again in the background while requests keep coming: a revocation, a
rollback or a promotion made in this process takes effect at once, one made in another process
within that time, and a token's expiry is checked on every request. Other per-process caches:
which onboarding a connection code belongs to (it never changes), the connection's adapter (its
HTTP keep-alive pool and access token, rebuilt when the connection, its secret, its environment or
its go-live changes) and the signed mapping's MRN system and code translations (for
READ_API_MAPPING_CACHE_SECONDS).
Counting for monitoring is ``onboarding.live.traffic.record_request``, which buffers in memory.
Every answer that carries PHI writes an audit event naming the patient by its pseudonymous key,
never by id.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from time import monotonic  # by name, so a test can move this module's clock
from typing import Any

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    close_old_connections,
    connection,
    connections,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.db.models.sql.compiler import SQLCompiler
from django.http import HttpRequest
from django.utils import timezone

from connections.adapters.base import FHIRAdapter, NormalizedPatient
from connections.errors import RemoteError
from connections.models import EHRConnection
from connections.services import build_adapter
from onboarding.golive.models import ServiceAccount, ServiceToken
from onboarding.live import traffic
from onboarding.live.models import LiveStage, LiveState
from onboarding.models import Approval, Mapping, Onboarding
from portal import audit
from portal.access import AuthUser, User, require_perm
from portal.models import Tenant

MANAGE_PERM = "portal.change_tenant"
logger = logging.getLogger(__name__)

KEY_PREFIX = "svc_"
MAPPING_GATE = "mapping_sign_off"
CLINICAL_TYPES = {"observations": "Observation", "conditions": "Condition", "encounters": "Encounter"}


class NotLive(Exception):
    """The connection exists for this tenant but serves no product traffic now (409)."""

    def __init__(self, message: str, *, code: str = "not_live") -> None:
        super().__init__(message)
        self.code = code


class NotFound(Exception):
    """No such connection for this token's tenant, or no such patient (404)."""


class TokenRefused(Exception):
    """A token write refused; the message says what to fix."""


# --- service accounts and tokens ---------------------------------------------------------------


def create_account(*, user: User, name: str, request: HttpRequest | None = None) -> ServiceAccount:
    require_perm(user, MANAGE_PERM)
    name = name.strip()
    if not name or len(name) > 100:
        raise TokenRefused("Give the service account a name (under 100 characters).")
    if ServiceAccount.objects.filter(name__iexact=name).exists():
        raise TokenRefused(f"There is a service account called “{name}” already.")
    with transaction.atomic():
        account = ServiceAccount.objects.create(name=name, created_by=user if isinstance(user, AuthUser) else None)
        audit.record(action="service_account.create", actor=user, obj=account, request=request, detail={"name": name})
    return account


def issue_token(
    *, user: User, account: ServiceAccount, tenant: Tenant, request: HttpRequest | None = None
) -> tuple[ServiceToken, str]:
    """A new token of the account for one tenant, and its key (shown this once, never stored)."""
    require_perm(user, MANAGE_PERM)
    if account.disabled_at is not None:
        raise TokenRefused("This service account is disabled.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ServiceToken.objects.create(
            account=account,
            tenant=tenant,
            digest=digest_of(key),
            prefix=key[: len(KEY_PREFIX) + 6],
            created_by=user if isinstance(user, AuthUser) else None,
            expires_at=timezone.now() + timedelta(days=settings.SERVICE_TOKEN_TTL_DAYS),
        )
        audit.record(
            action="service_token.issue",
            actor=user,
            tenant=tenant,
            obj=token,
            request=request,
            detail={"account": account.name, "prefix": token.prefix, "expires_at": str(token.expires_at)},
        )
    return token, key


def revoke_token(*, user: User, token: ServiceToken, request: HttpRequest | None = None) -> None:
    require_perm(user, MANAGE_PERM)
    with transaction.atomic():
        if not ServiceToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
            raise TokenRefused("This token is revoked already.")
        forget_callers()  # this process refuses it at once; others within the cache's seconds
        audit.record(
            action="service_token.revoke",
            actor=user,
            tenant=token.tenant,
            obj=token,
            request=request,
            detail={"account": token.account.name, "prefix": token.prefix},
        )


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who calls the read API: a service account, through its token for one tenant."""

    token_id: int
    account_id: int
    tenant_id: int
    account_name: str
    # The live state read with the token, for the connection the request names: (onboarding id, row).
    state: tuple[int, tuple[Any, ...] | None] | None = None
    # DRF asks a request's user these.
    is_authenticated: bool = True
    is_active: bool = True
    pk: None = None

    def get_username(self) -> str:
        return f"service:{self.account_name}"

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return False


def caller_for(key: str, connection_code: str = "") -> Caller | None:
    """The caller a presented key belongs to (live, not revoked, account enabled), or None.

    Given the connection the request names, and known to this process, its live state is read in
    the same round trip and kept on the caller for ``live_target``; a good caller is then kept a
    moment (see ``_callers``).
    """
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    digest, code = digest_of(key), str(connection_code)
    kept = _callers.get((digest, code))
    if kept is not None:
        now = monotonic()
        if now < kept.until and (kept.expires_at is None or kept.expires_at > timezone.now()):
            if now >= kept.refresh_at:
                _refresh((digest, code))
            return kept.caller
        with _lock:
            if _callers.get((digest, code)) is kept:
                del _callers[(digest, code)]
    return _read_caller(digest, code)


def _read_caller(digest: str, code: str) -> Caller | None:
    """Read the token (and the connection's live state, where this process knows the connection); keep a good one."""
    generation = _generation  # a forget_callers() from here on means these rows may be old ones
    read_at = monotonic()  # what is read is as old as the read's start, however long it takes
    onboarding_id = _onboardings.get(code) if code else None
    state: tuple[int, tuple[Any, ...] | None] | None = None
    if onboarding_id is None:
        row = _TOKEN.first(digest)
    else:
        row, state_row = first_of_both(_TOKEN, digest, _STATE, onboarding_id)
        # Another tenant's live state is not kept on this caller: live_target finds it is not theirs
        # either way (a 404), and request.user carries nothing of that tenant meanwhile.
        theirs = row is not None and state_row is not None and state_row[0] == row[2]
        state = (onboarding_id, state_row if theirs else None)
    if row is None:
        _keep((digest, code), None, None, generation, read_at)
        return None
    token_id, account_id, tenant_id, account_name, disabled_at, revoked_at, expires_at = row
    if disabled_at is not None or revoked_at is not None or (expires_at is not None and expires_at <= timezone.now()):
        _keep((digest, code), None, None, generation, read_at)
        return None
    caller = Caller(token_id, account_id, tenant_id, account_name, state=state)
    _keep((digest, code), caller, expires_at, generation, read_at)
    return caller


@dataclass(frozen=True)
class _Kept:
    caller: Caller
    expires_at: Any  # the token's own expiry (an aware datetime, or None), checked on every request
    read_at: float  # when the read began, on the monotonic clock
    until: float  # served until then: read_at plus the cache's seconds
    refresh_at: float  # a request from then on has it read again in the background


# (token digest, connection code) -> what was read for them. The token and the live state, read
# in one round trip, are still a database round trip: the largest part of what the read API adds
# to a hospital's answer (about 1 ms of some 4 on a 2-core machine), and the product asks again and
# again with the same token for the same connection. So a good caller is kept for
# READ_API_AUTH_CACHE_SECONDS, and a request in the second half of that has it read again on the
# upkeep thread: steady traffic never waits on the database, and nothing served was read more
# than those seconds ago. Only a token found good, with its connection's live state read, is kept;
# a bad key is read (and refused) every time, so nobody can fill this up with guesses.
_callers: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
_refreshing: set[tuple[str, str]] = set()
_generation = 0  # moved by every forget_callers(): a read begun before it is not kept
CALLERS_KEPT = 10_000


def _keep(key: tuple[str, str], caller: Caller | None, expires_at: Any, generation: int, read_at: float) -> None:
    """Keep what a read begun at ``read_at`` found (None: refused, so nothing older is served either)."""
    seconds = float(settings.READ_API_AUTH_CACHE_SECONDS)
    with _lock:
        held = _callers.get(key)
        if generation != _generation or (held is not None and held.read_at > read_at):
            return  # cleared since, or a newer read's answer is kept: this one is older
        _callers.pop(key, None)
        until = read_at + seconds
        if caller is None or caller.state is None or caller.state[1] is None or until <= monotonic():
            return  # refused, not servable from here, or a read so slow that it is too old already
        while len(_callers) >= CALLERS_KEPT:
            _callers.popitem(last=False)  # the oldest kept first
        _callers[key] = _Kept(caller, expires_at, read_at, until=until, refresh_at=read_at + seconds / 2)


def _refresh(key: tuple[str, str]) -> None:
    if connection.in_atomic_block:
        return  # a transaction's own rows (a test's) are not for another thread to read; it runs out instead
    with _lock:
        if key in _refreshing:
            return
        _refreshing.add(key)
    try:
        _pool("upkeep").submit(_refresh_now, key)
    except RuntimeError:  # the pool was shut down meanwhile (clear_caches, or the process exiting)
        with _lock:
            _refreshing.discard(key)


def _refresh_now(key: tuple[str, str]) -> None:
    try:
        close_old_connections()  # this thread's own connection, as a request's
        _read_caller(*key)  # kept anew, or dropped if refused now
    except Exception:
        # The kept caller runs out as usual, and the next request after that reads for itself.
        logger.exception("read API: reading a kept service token again failed")
    finally:
        with _lock:
            _refreshing.discard(key)


def forget_callers() -> None:
    """Read every token and live state again on their next request in this process (after a revocation,
    a cutover, a rollback, a promotion or a connection's edit here; other processes see it when their
    kept entries run out).

    Called inside the change's transaction: cleared at once, and once more when it commits, since a
    request of this process may read and keep the rows as they were before the commit.
    """
    _clear_callers()
    transaction.on_commit(_clear_callers)


def _clear_callers() -> None:
    global _generation
    with _lock:
        _generation += 1
        _callers.clear()


def connection_saved(**kwargs: Any) -> None:
    """An edit of a connection (post_save): its kept callers carry the version the adapter is built for."""
    forget_callers()


class PreparedQuery:
    """A one-parameter queryset compiled to SQL once per database; each run only binds the parameter.

    The read API's lookups run on every request. Building and compiling them in the ORM costs more
    than the indexed reads themselves (about 0.4 ms a query against 0.1 ms), so they are compiled
    once; rows are still converted by the ORM's own converters, so values are as ``values_list`` gives.
    """

    def __init__(self, build: Callable[[Any], QuerySet[Any, Any]]) -> None:
        self._build = build
        self._compiled: dict[str, tuple[SQLCompiler, str]] = {}

    def compiled(self, value: Any, alias: str = DEFAULT_DB_ALIAS) -> tuple[SQLCompiler, str]:
        """The compiler (for its converters) and the SQL, with one placeholder for the parameter."""
        held = self._compiled.get(alias)
        if held is None:
            compiler = self._build(value).query.get_compiler(using=alias)
            sql, params = compiler.as_sql()
            if list(params) != [value]:
                raise ValueError(f"A prepared query takes exactly its one parameter, not {params!r}.")
            held = self._compiled[alias] = (compiler, sql)
        return held

    def first(self, value: Any) -> tuple[Any, ...] | None:
        """The first row for this parameter value, or None."""
        compiler, sql = self.compiled(value)
        row = _read_row(sql, [value])
        return None if row is None else _convert(compiler, row)


def first_of_both(
    left: PreparedQuery, left_value: Any, right: PreparedQuery, right_value: Any
) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
    """Both queries' first rows in one round trip; (None, None) when the left one finds nothing.

    A request's token and its connection's live state are two indexed reads of a fraction of a
    millisecond each; the round trips to the database, not the reads, are what the request waits for.
    """
    left_compiler, left_sql = left.compiled(left_value)
    right_compiler, right_sql = right.compiled(right_value)
    # Two independent one-row subqueries side by side (the right one may be empty): plain SQL that
    # PostgreSQL and SQLite both take. Both parts are the ORM's own SQL; the values stay parameters.
    sql = f"SELECT * FROM ({left_sql}) AS l LEFT JOIN ({right_sql}) AS r ON 1 = 1"  # noqa: S608
    row = _read_row(sql, [left_value, right_value])
    if row is None:
        return None, None
    width = len(left_compiler.select)
    left_row, right_row = row[:width], row[width:]
    right_found = right_row and right_row[0] is not None  # the live state's first column is never NULL
    return _convert(left_compiler, left_row), _convert(right_compiler, right_row) if right_found else None


def _read_row(sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    database: Any = connections[DEFAULT_DB_ALIAS]  # Any: django-stubs leave out the health-check flags
    if not _checks_health(database):
        return _fetch(database, sql, params)
    # The request's first read doubles as the health check Django would run before it (a
    # `SELECT 1`, a round trip of its own on every request): if the connection kept from an
    # earlier request died while idle, this read fails at once and is made again on a new one.
    database.health_check_done = True
    try:
        return _fetch(database, sql, params)
    except DatabaseError as exc:
        # Only a connection that is gone is replaced, as Django's own check would: an error on a
        # live one (a cancelled query, a lock, a full disk) is the request's, not the connection's.
        if database.connection is not None and database.is_usable():
            raise
        logger.warning("read API: a kept database connection was unusable (%s); reading again", type(exc).__name__)
        database.close()
        return _fetch(database, sql, params)


def _checks_health(database: Any) -> bool:
    """Whether this read is the first on a kept connection that Django would health-check, outside a
    transaction (where nothing else is lost with the connection if it is replaced)."""
    return bool(
        database.health_check_enabled
        and not database.health_check_done
        and database.connection is not None
        and not database.in_atomic_block
        and database.get_autocommit()
    )


def _fetch(database: BaseDatabaseWrapper, sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    with database.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchmany(1)
    return tuple(rows[0]) if rows else None


def _convert(compiler: SQLCompiler, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row as the ORM gives it (its converters: time zones, booleans on SQLite, JSON)."""
    return tuple(next(iter(compiler.results_iter(results=[[row]]))))


_TOKEN = PreparedQuery(
    lambda digest: ServiceToken.objects.filter(digest=digest).values_list(
        "pk", "account_id", "tenant_id", "account__name", "account__disabled_at", "revoked_at", "expires_at"
    )[:1]
)


# --- serving --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A live connection as one request uses it."""

    onboarding_id: int
    onboarding_code: str
    tenant_id: int
    connection_id: int
    connection_code: str
    stage: str
    pilot_percent: int
    # What a cached adapter must have been built for: the connection's last edit, its secret's,
    # its environment (cutover and rollback switch it without an edit) and the go-live it serves.
    version: tuple[Any, ...]


# The live state of one onboarding, with what its cached adapter depends on (one indexed read).
_STATE = PreparedQuery(
    lambda onboarding_id: LiveState.objects.filter(onboarding_id=onboarding_id).values_list(
        "tenant_id",
        "stage",
        "pilot_percent",
        "onboarding__code",
        "onboarding__connection_id",
        "onboarding__connection__updated_at",
        "onboarding__connection__secret_updated_at",
        "onboarding__connection__environment",
        "live_since",
    )[:1]
)


def live_target(caller: Caller, connection_code: str) -> Target:
    """The caller's tenant's connection, if live; NotFound for another tenant's (or none), NotLive before go-live."""
    code = str(connection_code)
    # A connection's code and its onboarding never change: looked up once per process.
    onboarding_id = _onboardings.get(code) or (
        Onboarding.objects.filter(connection__code=code).values_list("pk", flat=True).first()
    )
    if onboarding_id is None:
        row = None
    elif caller.state is not None and caller.state[0] == onboarding_id:
        row = caller.state[1]  # read with the token, in the same round trip
    else:
        row = _STATE.first(onboarding_id)
    if onboarding_id is not None and row is not None:
        _onboardings[code] = onboarding_id
    if onboarding_id is None or row is None or row[0] != caller.tenant_id:
        # No live state, or another tenant's: 404 for a stranger, 409 for the tenant's own connection.
        if not EHRConnection.objects.filter(code=code, tenant_id=caller.tenant_id).exists():
            raise NotFound("No such connection.")
        raise NotLive(_NOT_LIVE)
    tenant_id, stage, pilot_percent, onboarding_code, connection_id, *version = row
    if stage not in (LiveStage.PILOT, LiveStage.FULL):
        forget_adapter(connection_id)  # rolled back: whatever serves it next is built anew
        raise NotLive(_NOT_LIVE)
    return Target(
        onboarding_id, str(onboarding_code), tenant_id, connection_id, code, stage, pilot_percent, (*version,)
    )


_NOT_LIVE = "This connection is not live: the product is served only after go-live (and not after a rollback)."


def in_pilot(target: Target, patient_id: str) -> bool:
    """Whether the product is served for this patient: everyone when full; a stable hashed share in a pilot."""
    if target.stage == LiveStage.FULL:
        return True
    bucket = int(hashlib.sha256(f"{target.onboarding_code}:{patient_id}".encode()).hexdigest()[:8], 16) % 100
    return bucket < target.pilot_percent


@dataclass(frozen=True)
class SignedMapping:
    mrn_system: str
    # (local system, local code) -> (target system, target code, target display)
    translations: dict[tuple[str, str], tuple[str, str, str]]
    version: int


_lock = threading.Lock()
_adapters: dict[int, tuple[tuple[Any, ...], FHIRAdapter]] = {}
_onboardings: dict[str, int] = {}
_mappings: dict[int, tuple[float, SignedMapping | None]] = {}


def signed_mapping(onboarding_id: int) -> SignedMapping | None:
    """The mapping hospital IT signed last (the current one, else the newest one they approved), cached a while."""
    now = monotonic()
    with _lock:
        held = _mappings.get(onboarding_id)
    if held is not None and held[0] > now:
        return held[1]
    approval = (
        Approval.objects.filter(onboarding_id=onboarding_id, gate=MAPPING_GATE, decision="approved")
        .order_by("voided_at", "-decided_at")  # an approval never voided first (NULLs sort last ascending, so flip)
        .only("artifact_id", "voided_at")
    )
    live = approval.filter(voided_at__isnull=True).first() or approval.first()
    mapping = Mapping.objects.filter(pk=live.artifact_id).first() if live else None
    found = None
    if mapping is not None:
        found = SignedMapping(
            mrn_system=mapping.mrn_system,
            translations={
                (str(row.get("system")), str(row.get("code"))): (
                    str(row.get("target_system")),
                    str(row.get("target_code")),
                    str(row.get("target_display") or ""),
                )
                for row in mapping.codes
                if row.get("target_system") and row.get("target_code")
            },
            version=mapping.version,
        )
    with _lock:
        _mappings[onboarding_id] = (now + float(settings.READ_API_MAPPING_CACHE_SECONDS), found)
    return found


def adapter_for(target: Target, mrn_system: str) -> FHIRAdapter:
    """The connection's adapter, reading MRNs in the signed system, kept while the target's version holds.

    Kept per process, so its HTTP client's keep-alive connections and its access token serve request
    after request; an edit of the connection or its secret, a cutover or a rollback builds a new one.
    """
    version = (target.version, mrn_system)
    with _lock:
        held = _adapters.get(target.connection_id)
    if held is not None and held[0] == version:
        return held[1]
    adapter = build_adapter(EHRConnection.objects.get(pk=target.connection_id))
    if mrn_system and adapter.config.mrn_system != mrn_system:
        adapter = type(adapter)(replace(adapter.config, mrn_system=mrn_system), adapter.client)
    with _lock:
        _adapters[target.connection_id] = (version, adapter)
    return adapter


def forget_adapter(connection_id: int) -> None:
    """Drop a connection's cached adapter (it is not live any more)."""
    with _lock:
        _adapters.pop(connection_id, None)


def clear_caches() -> None:
    """Forget cached callers, adapters, routes and mappings; stop the background threads (tests, or to see a change)."""
    _clear_callers()
    with _lock:
        _adapters.clear()
        _mappings.clear()
        _onboardings.clear()
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.submit(connections.close_all).result()  # the thread's own database connection
        pool.shutdown(wait=True)


def patient_json(patient: NormalizedPatient) -> dict[str, Any]:
    return {
        "id": patient.id,
        "mrn": patient.mrn,
        "name": {"family": patient.family, "given": list(patient.given)},
        "birth_date": patient.birth_date,
        "gender": patient.gender,
    }


def translate(resource: dict[str, Any], mapping: SignedMapping | None) -> dict[str, Any]:
    """The resource with each local coding followed by its mapped standard coding (the local one is kept)."""
    if mapping is None or not mapping.translations:
        return resource

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {key: walk(item) for key, item in value.items()}
            codings = out.get("coding")
            if isinstance(codings, list):
                added = []
                for coding in codings:
                    if isinstance(coding, dict):
                        target = mapping.translations.get((str(coding.get("system")), str(coding.get("code"))))
                        if target is not None:
                            added.append({"system": target[0], "code": target[1], "display": target[2]})
                present = {(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)}
                out["coding"] = codings + [c for c in added if (c["system"], c["code"]) not in present]
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    translated: dict[str, Any] = walk(resource)
    return translated


def serve(
    caller: Caller,
    connection_code: str,
    *,
    patient_id: str = "",
    mrn: str = "",
    resource: str = "",
    request: HttpRequest | None = None,
) -> dict[str, Any]:
    """One read-API request: a patient by id or by MRN, or a patient's clinical resources, counted and audited.

    A request for a patient by id is audited as it goes to the hospital (the event is written while
    the hospital answers, so it is kept even if the hospital fails); a search by MRN once it names
    the patient. Either way the answer leaves only after its audit event is written.
    """
    target = live_target(caller, connection_code)
    started = time.perf_counter()
    error_kind = ""
    audited: Future[None] | None = None
    try:
        mapping = signed_mapping(target.onboarding_id)
        if patient_id and not in_pilot(target, patient_id):
            raise NotLive(
                "This patient is outside the pilot share: the product is not served for them yet.", code="not_in_pilot"
            )
        adapter = adapter_for(target, mapping.mrn_system if mapping else "")
        if mrn:
            if mapping is None or not mapping.mrn_system:
                raise NotLive(
                    "The connection has no signed MRN system, so it cannot be searched by MRN.", code="no_mrn_system"
                )
            found = adapter.find_patients_by_identifier(mapping.mrn_system, mrn)
            if not found:
                raise NotFound("No patient has that MRN.")
            if not in_pilot(target, found[0].id):
                raise NotLive(
                    "This patient is outside the pilot share: the product is not served for them yet.",
                    code="not_in_pilot",
                )
            audited = _audit(caller, target, found[0].id, resource="", by="mrn", request=request)
            body: dict[str, Any] = patient_json(found[0])
        else:
            audited = _audit(caller, target, patient_id, resource=resource, by="id", request=request)
            if resource:
                resource_type = CLINICAL_TYPES[resource]
                items = adapter.search_clinical(resource_type, patient_id)
                body = {
                    "patient": patient_id,
                    "resource_type": resource_type,
                    "items": [translate(r, mapping) for r in items],
                }
            else:
                body = patient_json(adapter.read_patient(patient_id))
    except RemoteError as exc:
        error_kind = exc.kind.value
        raise
    finally:
        if traffic.record_request(
            target.onboarding_id, latency_ms=(time.perf_counter() - started) * 1000, error_kind=error_kind
        ):
            _flush_traffic()
        if audited is not None:
            audited.result()  # the answer waits for its audit event; a failed write fails the request
    return body


# One thread each, with its own database connection: "audit" writes the requests' audit events
# (each request waits for its own), "upkeep" reads kept callers again and writes the traffic counts
# (no request waits for it). Made in the serving process (after gunicorn forks), on first use.
_pools: dict[str, ThreadPoolExecutor] = {}


def _flush_traffic() -> None:
    """Write the traffic counts off the request's path (a locked upsert and its commit, some milliseconds)."""
    if connection.in_atomic_block:
        traffic.flush()  # inside a transaction (a test's) its rows are visible only on this connection
        return
    # RuntimeError: the pool was shut down meanwhile (clear_caches); the counts go with the next flush.
    with contextlib.suppress(RuntimeError):
        _pool("upkeep").submit(_flush_traffic_now)


def _flush_traffic_now() -> None:
    try:
        close_old_connections()
        traffic.flush()
    except Exception:
        # Monitoring reads windows of minutes; a lost flush is a few seconds of counts.
        logger.exception("read API: writing the traffic counts failed")


def _pool(name: str) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-api-{name}")
    return pool


def _audit(
    caller: Caller, target: Target, subject: str, *, resource: str, by: str, request: HttpRequest | None
) -> Future[None]:
    """Write the request's audit event, on the audit thread while the hospital answers; done when written.

    The write (an INSERT and its commit, a millisecond or more when the database is busy) overlaps
    the hospital's tens of milliseconds instead of adding to them. Inside a transaction (a caller's
    own, or a test's) it is written at once on the caller's connection, as part of that transaction.
    """
    fields: dict[str, Any] = {
        "action": "read_api." + (resource or "patient"),
        "tenant": Tenant(pk=target.tenant_id),
        "actor_label": caller.get_username(),
        "detail": {"connection": target.connection_code, "patient_key": _patient_key(target, subject), "by": by},
        "request": request,  # only its address and user agent are read
    }
    if connection.in_atomic_block:
        written: Future[None] = Future()
        _write_audit(fields)
        written.set_result(None)
        return written
    return _pool("audit").submit(_on_audit_thread, fields)


def _on_audit_thread(fields: dict[str, Any]) -> None:
    # This thread's own database connection: replaced when it broke or outlived CONN_MAX_AGE, as a
    # request's is at its start.
    close_old_connections()
    _write_audit(fields)


def _write_audit(fields: dict[str, Any]) -> None:
    audit.record(**fields)


def _patient_key(target: Target, patient_id: str) -> str:
    """A pseudonymous key for the audit trail: stable per tenant and patient, meaningless without the secret."""
    digest = hmac.new(
        settings.PSEUDONYM_KEY.encode(), f"read-api\x1f{target.tenant_id}\x1f{patient_id}".encode(), hashlib.sha256
    )
    return digest.hexdigest()[:24]
