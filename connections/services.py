"""Writes to connections, and the bridge from a saved connection to a working adapter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from connections import keys
from connections.adapters import ConnectionConfig, FHIRAdapter, get_adapter
from connections.auth import AuthConfig, with_discovery
from connections.errors import RemoteError
from connections.http import GuardedClient, OutboundPolicy
from connections.limits import PullLimiter
from connections.models import AuthMethod, EHRConnection
from portal import audit
from portal.access import User, require_perm
from portal.models import Tenant

# Fields a person may set; the secret is handled apart so a blank never overwrites it.
EDITABLE_FIELDS = (
    "name",
    "vendor",
    "environment",
    "base_url",
    "auth_method",
    "client_id",
    "token_url",
    "token_auth_method",
    "scope",
    "mrn_system",
    "extra_search_params",
    "pull_concurrency",
    "pull_rate",
    "pull_method",
    "bulk_group_id",
)


def outbound_policy() -> OutboundPolicy:
    """The guarded client's policy, from settings."""
    return OutboundPolicy(
        allowlist=frozenset(settings.OUTBOUND_ALLOWLIST),
        connect_timeout=settings.OUTBOUND_CONNECT_TIMEOUT,
        read_timeout=settings.OUTBOUND_READ_TIMEOUT,
        deadline=settings.OUTBOUND_DEADLINE,
        max_response_bytes=settings.OUTBOUND_MAX_RESPONSE_BYTES,
        max_attempts=settings.OUTBOUND_MAX_ATTEMPTS,
    )


def connection_config(connection: EHRConnection) -> ConnectionConfig:
    """The adapter's view of a connection: plain values, decrypted secret, no model."""
    return ConnectionConfig(
        vendor=connection.vendor,
        base_url=connection.base_url,
        mrn_system=connection.mrn_system,
        extra_params=tuple(parse_qsl(connection.extra_search_params)),
        auth=AuthConfig(
            method=connection.auth_method,  # type: ignore[arg-type]
            client_id=connection.client_id,
            secret=connection.secret or "",
            token_url=connection.token_url,
            scope=connection.scope,
            token_auth_method=connection.token_auth_method,  # type: ignore[arg-type]
            private_key=connection.private_key or "",
            key_id=connection.key_id,
            key_algorithm=connection.key_algorithm,
        ),
    )


def build_adapter(connection: EHRConnection) -> FHIRAdapter:
    """A vendor adapter over the one guarded client, ready to talk to the hospital.

    A token-based connection with no token URL gets the one the server's SMART configuration
    advertises; with none advertised, authenticating fails with a clear message. A SMART Backend
    Services connection always reads the configuration, to check its key algorithm is accepted.
    """
    config = connection_config(connection)
    client = GuardedClient(outbound_policy(), limiter=limiter_for(connection))
    adapter = get_adapter(config, client)
    needs_discovery = config.auth.needs_token and not config.auth.token_url
    if needs_discovery or config.auth.method == AuthMethod.SMART_BACKEND:
        try:
            smart = adapter.smart_configuration()
        except RemoteError as exc:
            if not needs_discovery:
                raise
            raise RemoteError(
                exc.kind,
                f"The token URL is read from .well-known/smart-configuration, which could not be read: {exc.message}",
                hint="Set the token URL on the connection (the hospital's documentation gives it) so it need not be "
                "discovered, or ask the hospital's IT team to fix the document.",
                detail=exc.detail,
            ) from None
        auth = with_discovery(config.auth, smart)
        if auth != config.auth:
            adapter = get_adapter(replace(config, auth=auth), client)
    return adapter


@transaction.atomic
def create_connection(
    *,
    user: User,
    tenant: Tenant,
    fields: dict[str, Any],
    secret: str,
    request: HttpRequest | None = None,
) -> EHRConnection:
    """Save a new connection and record who made it; the secret is written encrypted."""
    require_perm(user, "connections.add_ehrconnection", tenant)
    connection = EHRConnection(tenant=tenant, created_by=user if user.is_authenticated else None)
    for name in EDITABLE_FIELDS:
        if name in fields:
            setattr(connection, name, fields[name])
    if secret:
        connection.secret = secret
        connection.secret_updated_at = timezone.now()
    connection.full_clean()
    try:
        with transaction.atomic():
            connection.save()
    except IntegrityError:
        # Another request saved the same name between our check and this insert.
        raise ValidationError({"name": "This hospital already has a connection with that name."}) from None
    audit.record(
        action="connection.create",
        actor=user,
        tenant=tenant,
        obj=connection,
        request=request,
        detail={"vendor": connection.vendor, "auth_method": connection.auth_method, "secret_set": bool(secret)},
    )
    return connection


@transaction.atomic
def update_connection(
    *,
    user: User,
    connection: EHRConnection,
    fields: dict[str, Any],
    secret: str,
    request: HttpRequest | None = None,
) -> EHRConnection:
    """Change a connection; a blank secret keeps the stored one."""
    require_perm(user, "connections.change_ehrconnection", connection.tenant)
    # Work on a fresh, locked copy: a bound ModelForm has already changed the caller's instance.
    connection = EHRConnection.objects.select_for_update().get(pk=connection.pk)
    changed = sorted(name for name in EDITABLE_FIELDS if name in fields and getattr(connection, name) != fields[name])
    for name in changed:
        setattr(connection, name, fields[name])
    credential_event = ""
    if secret:
        connection.secret = secret
        connection.secret_updated_at = timezone.now()
        credential_event = "connection.secret_change"
    if connection.auth_method in (AuthMethod.NONE, AuthMethod.SMART_BACKEND) and connection.secret:
        # Switching to an open endpoint or to a signed-assertion client drops the secret rather
        # than keeping an unused credential.
        connection.secret = ""
        connection.secret_updated_at = timezone.now()
        credential_event = "connection.secret_remove"
    connection.full_clean()
    connection.save()
    audit.record(
        action="connection.update",
        actor=user,
        tenant=connection.tenant,
        obj=connection,
        request=request,
        detail={"changed": changed, "secret_changed": bool(credential_event)},
    )
    if credential_event:
        # Its own event, so a security reviewer can list every credential change (never the value).
        audit.record(action=credential_event, actor=user, tenant=connection.tenant, obj=connection, request=request)
    return connection


@transaction.atomic
def generate_key_pair(
    *,
    user: User,
    connection: EHRConnection,
    algorithm: str,
    replace_existing: bool = False,
    request: HttpRequest | None = None,
) -> EHRConnection:
    """Make a new SMART Backend Services key pair for a connection.

    The private key is stored encrypted and never leaves the portal; the audit event records
    the algorithm and key ids, never key material. Replacing a key breaks token requests until
    the hospital registers the new public key, so it needs ``replace_existing``.
    """
    require_perm(user, "connections.change_ehrconnection", connection.tenant)
    if algorithm not in keys.ALGORITHMS:
        raise ValidationError({"algorithm": f"Choose one of {', '.join(keys.ALGORITHMS)}."})
    connection = EHRConnection.objects.select_for_update().get(pk=connection.pk)
    if connection.auth_method != AuthMethod.SMART_BACKEND:
        raise ValidationError(
            {"auth_method": "This connection does not use SMART Backend Services; choose that method first."}
        )
    if connection.key_id and not replace_existing:
        raise ValidationError(
            {"replace": "This connection already has a key pair. Confirm the replacement (replace=true in the API)."}
        )
    replaced = connection.key_id
    pair = keys.generate_key_pair(algorithm)
    connection.private_key = pair.private_pem
    connection.key_algorithm = pair.algorithm
    connection.key_id = pair.key_id
    connection.public_jwk = pair.public_jwk
    connection.key_created_at = timezone.now()
    connection.save(
        update_fields=["private_key", "key_algorithm", "key_id", "public_jwk", "key_created_at", "updated_at"]
    )
    audit.record(
        action="connection.key_generate",
        actor=user,
        tenant=connection.tenant,
        obj=connection,
        request=request,
        detail={"algorithm": pair.algorithm, "key_id": pair.key_id, "replaced_key_id": replaced or None},
    )
    return connection


@transaction.atomic
def set_without_capability_statement(
    *, user: User, connection: EHRConnection, enabled: bool, request: HttpRequest | None = None
) -> EHRConnection:
    """Choose to go on without a CapabilityStatement (for a server that has none), or to require one again.

    Its own audit event: a security reviewer should see who decided that the portal may skip the
    checks a CapabilityStatement makes possible.
    """
    require_perm(user, "connections.change_ehrconnection", connection.tenant)
    connection = EHRConnection.objects.select_for_update().get(pk=connection.pk)
    if connection.without_capability_statement == enabled:
        return connection
    connection.without_capability_statement = enabled
    connection.save(update_fields=["without_capability_statement", "updated_at"])
    audit.record(
        action="connection.capability_statement_" + ("skipped" if enabled else "required"),
        actor=user,
        tenant=connection.tenant,
        obj=connection,
        request=request,
        detail={"without_capability_statement": enabled},
    )
    return connection


class ArchiveError(ValidationError):
    """An archive or restore that cannot happen as asked (already archived, or not archived)."""


@transaction.atomic
def archive_connection(*, user: User, connection: EHRConnection, request: HttpRequest | None = None) -> EHRConnection:
    """Archive a connection: hidden from lists, closed to new runs, kept with its whole history.

    Nothing is deleted: its runs, mappings, approvals and audit trail stay, and the evidence pack
    and every link to it keep working. A run already going finishes; no new one can start until
    the connection is restored.
    """
    require_perm(user, "connections.change_ehrconnection", connection.tenant)
    connection = EHRConnection.objects.select_for_update().get(pk=connection.pk)
    if connection.archived_at is not None:
        raise ArchiveError(f"“{connection.name}” is already archived.")
    connection.archived_at = timezone.now()
    connection.archived_by = user if user.is_authenticated else None
    connection.save(update_fields=["archived_at", "archived_by", "updated_at"])
    audit.record(action="connection.archive", actor=user, tenant=connection.tenant, obj=connection, request=request)
    return connection


@transaction.atomic
def restore_connection(*, user: User, connection: EHRConnection, request: HttpRequest | None = None) -> EHRConnection:
    """Bring an archived connection back into the lists; its steps can run again."""
    require_perm(user, "connections.change_ehrconnection", connection.tenant)
    connection = EHRConnection.objects.select_for_update().get(pk=connection.pk)
    if connection.archived_at is None:
        raise ArchiveError(f"“{connection.name}” is not archived.")
    archived_at = connection.archived_at
    connection.archived_at = None
    connection.archived_by = None
    connection.save(update_fields=["archived_at", "archived_by", "updated_at"])
    audit.record(
        action="connection.restore",
        actor=user,
        tenant=connection.tenant,
        obj=connection,
        request=request,
        detail={"archived_at": archived_at.isoformat()},
    )
    return connection


def record_export_levels(*, connection: EHRConnection, levels: list[str]) -> None:
    """Note which Bulk Data $export levels the server advertised (configure reads them), for the pull method."""
    value = ",".join(levels)
    if connection.bulk_export_levels != value:
        EHRConnection.objects.filter(pk=connection.pk).update(bulk_export_levels=value)
        connection.bulk_export_levels = value


def limiter_for(connection: EHRConnection) -> PullLimiter:
    """The limiter every request of one run to this connection shares: its agreed limits, under the caps."""
    return PullLimiter(
        concurrency=min(connection.pull_concurrency or 1, settings.PULL_MAX_CONCURRENCY),
        rate=min(connection.pull_rate, settings.PULL_MAX_RATE) if connection.pull_rate else None,
    )
