"""Writes to connections, and the bridge from a saved connection to a working adapter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from connections.adapters import ConnectionConfig, FHIRAdapter, get_adapter
from connections.auth import AuthConfig
from connections.http import GuardedClient, OutboundPolicy
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
        ),
    )


def build_adapter(connection: EHRConnection) -> FHIRAdapter:
    """A vendor adapter over the one guarded client, ready to talk to the hospital.

    A client-credentials connection with no token URL gets the one the server's SMART
    configuration advertises; with none advertised, authenticating fails with a clear message.
    """
    config = connection_config(connection)
    client = GuardedClient(outbound_policy())
    adapter = get_adapter(config, client)
    if config.auth.method == AuthMethod.CLIENT_CREDENTIALS and not config.auth.token_url:
        smart = adapter.smart_configuration() or {}
        token_url = smart.get("token_endpoint")
        if isinstance(token_url, str) and token_url:
            adapter = get_adapter(replace(config, auth=replace(config.auth, token_url=token_url)), client)
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
    connection.save()
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
    if secret:
        connection.secret = secret
        connection.secret_updated_at = timezone.now()
    if connection.auth_method == AuthMethod.NONE and connection.secret:
        # Switching to an open endpoint drops the secret rather than keeping an unused credential.
        connection.secret = ""
        connection.secret_updated_at = timezone.now()
    connection.full_clean()
    connection.save()
    audit.record(
        action="connection.update",
        actor=user,
        tenant=connection.tenant,
        obj=connection,
        request=request,
        detail={"changed": changed, "secret_changed": bool(secret)},
    )
    return connection
