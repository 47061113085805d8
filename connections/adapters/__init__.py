"""FHIR adapters, one per EHR vendor, chosen by the connection's vendor key.

This package is the only place that imports fhirclient; steps reach hospitals only through
``get_adapter``.
"""

from __future__ import annotations

from connections.adapters.athenahealth import AthenahealthAdapter
from connections.adapters.base import (
    CapabilitySummary,
    ConnectionConfig,
    FHIRAdapter,
    NormalizedPatient,
    PatientPage,
    owner_id,
)
from connections.adapters.epic import EpicAdapter
from connections.adapters.generic import GenericAdapter
from connections.adapters.meditech import MeditechAdapter
from connections.adapters.oracle_health import OracleHealthAdapter
from connections.errors import ErrorKind, RemoteError
from connections.http import GuardedClient

ADAPTERS: dict[str, type[FHIRAdapter]] = {
    cls.vendor: cls for cls in (EpicAdapter, OracleHealthAdapter, MeditechAdapter, AthenahealthAdapter, GenericAdapter)
}


def get_adapter(config: ConnectionConfig, client: GuardedClient) -> FHIRAdapter:
    """The adapter for the connection's vendor (epic, oracle_health, meditech, athenahealth, generic)."""
    try:
        adapter_class = ADAPTERS[config.vendor]
    except KeyError:
        raise RemoteError(
            ErrorKind.UNSUPPORTED,
            f"We have no adapter for the EHR vendor {config.vendor!r}.",
            hint=f"Choose one of: {', '.join(sorted(ADAPTERS))}.",
        ) from None
    return adapter_class(config, client)


__all__ = [
    "ADAPTERS",
    "CapabilitySummary",
    "ConnectionConfig",
    "FHIRAdapter",
    "NormalizedPatient",
    "PatientPage",
    "get_adapter",
    "owner_id",
]
