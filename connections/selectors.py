"""Reads of connections, always through the tenants the user may see."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import Http404

from connections.models import EHRConnection
from portal.access import User, tenants_for


def connections_for(user: User) -> QuerySet[EHRConnection]:
    """Connections of every tenant the user may see."""
    return EHRConnection.objects.filter(tenant__in=tenants_for(user)).select_related("tenant")


def listed_connections_for(user: User, *, archived: bool = False) -> QuerySet[EHRConnection]:
    """What lists show: the live connections, or (``archived``) only the archived ones.

    An archived connection stays reachable by its code (get_connection_for_user): only lists hide it.
    """
    return connections_for(user).filter(archived_at__isnull=not archived)


def get_connection_for_user(user: User, code: uuid.UUID | str) -> EHRConnection:
    """The connection with this code if the user may see its tenant, else 404."""
    try:
        return connections_for(user).get(code=code)
    except (EHRConnection.DoesNotExist, ValueError):
        raise Http404("No such connection.") from None
