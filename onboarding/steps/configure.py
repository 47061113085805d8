"""Configure: is this URL a FHIR R4 server that supports what the product needs?

Two documents are read: the CapabilityStatement (``/metadata``) and the SMART configuration
(``.well-known/smart-configuration``). A server without a CapabilityStatement fails with what it
sent instead, unless the connection was set to go on without one; then the checks that need it are
skipped and listed. The SMART configuration is optional for an auth method that does not need it: a
failure to read it is then a warning, not a failed step.
"""

from __future__ import annotations

from typing import Any

from connections.adapters import CapabilitySummary
from connections.errors import ErrorKind, RemoteError
from connections.services import record_export_levels
from onboarding.steps.base import StepContext, StepModule, StepOutcome

# What the product reads. Patient by id and by search; clinical resources by patient.
REQUIRED_INTERACTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "Patient": {"interactions": ("read", "search-type"), "search_params": ()},
    "Observation": {"interactions": ("search-type",), "search_params": ("patient",)},
    "Condition": {"interactions": ("search-type",), "search_params": ("patient",)},
    "Encounter": {"interactions": ("search-type",), "search_params": ("patient",)},
}
# The answers to /metadata a connection set to go on without a CapabilityStatement accepts.
NO_CAPABILITY_KINDS = (ErrorKind.NO_CAPABILITY_STATEMENT, ErrorKind.NOT_FOUND)
# What cannot be checked without a CapabilityStatement; listed on the configure and test runs.
CAPABILITY_CHECKS = (
    "FHIR version 4.0.x (the CapabilityStatement's fhirVersion)",
    "Patient read and search, and Observation, Condition and Encounter search by patient (its resource list)",
    "which clinical resource types map and validate may read: they try each and skip those the server refuses",
)


def missing_capabilities(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-language list of what the CapabilityStatement does not offer."""
    missing: list[str] = []
    for resource_type, needs in REQUIRED_INTERACTIONS.items():
        offered = resources.get(resource_type)
        if offered is None:
            missing.append(f"{resource_type} is not listed")
            continue
        for interaction in needs["interactions"]:
            if interaction not in offered.get("interactions", []):
                missing.append(f"{resource_type} {interaction}")
        for param in needs["search_params"]:
            if param not in offered.get("search_params", []):
                missing.append(f"{resource_type} search by {param}")
    return missing


def capability_or_absent(ctx: StepContext) -> tuple[CapabilitySummary | None, RemoteError | None]:
    """The server's capabilities, or (None, why) for a server without any that the connection accepts."""
    try:
        return ctx.adapter.capability(), None
    except RemoteError as exc:
        if ctx.connection.without_capability_statement and exc.kind in NO_CAPABILITY_KINDS:
            return None, exc
        raise


def needs_smart_configuration(connection: Any) -> bool:
    """Whether the connection's auth reads the SMART configuration: to find its token URL, or its key's algorithm."""
    return connection.auth_method == "smart_backend" or (
        connection.auth_method == "client_credentials" and not connection.token_url
    )


class ConfigureStep(StepModule):
    key = "configure"
    label = "Configure"
    description = "Read /metadata and SMART configuration; check FHIR 4.0.x and the searches the product needs."

    def run(self, ctx: StepContext) -> StepOutcome:
        ctx.progress(0, 2, "Reading the CapabilityStatement (/metadata)")
        capability, absent = capability_or_absent(ctx)
        summary: dict[str, Any] = {}
        warnings: list[str] = []
        if capability is not None:
            ctx.log(
                "CapabilityStatement read",
                fhir_version=capability.fhir_version,
                software=capability.software,
                resources=len(capability.resources),
            )
            summary.update(
                fhir_version=capability.fhir_version,
                software=capability.software,
                formats=capability.formats,
                resources={name: capability.resources[name] for name in sorted(capability.resources)},
                security=capability.security,
                bulk_export=capability.export_levels(),
            )
        else:
            assert absent is not None  # capability_or_absent gives one or the other
            ctx.log(f"No CapabilityStatement; the connection goes on without one: {absent.message}", level="warning")
            summary["capability_statement"] = {
                "present": False,
                "received": absent.message,
                "detail": {k: absent.detail[k] for k in ("received", "status", "content_type") if k in absent.detail},
            }
            summary["skipped_checks"] = list(CAPABILITY_CHECKS)
            warnings.append(
                "No CapabilityStatement: by the connection's choice, configure goes on without one and skips "
                + "; ".join(CAPABILITY_CHECKS)
                + "."
            )

        # What the connection form may offer as the pull method ("bulk" only where $export is advertised).
        record_export_levels(connection=ctx.connection, levels=capability.export_levels() if capability else [])
        ctx.progress(1, 2, "Reading .well-known/smart-configuration")
        smart: dict[str, Any] | None = None
        try:
            smart = ctx.adapter.smart_configuration()
        except RemoteError as exc:
            if needs_smart_configuration(ctx.connection):
                raise
            # Optional for this auth: a broken document is worth a word, not a failed step.
            warning = (
                f"The optional .well-known/smart-configuration could not be read ({exc.message}). The "
                f"{ctx.connection.get_auth_method_display()} authentication does not need it, so configure goes on."
            )
            warnings.append(warning)
            ctx.log(warning, level="warning", error_kind=exc.kind.value, status=exc.status)
        else:
            ctx.log("SMART configuration " + ("found" if smart else "not offered"))
        summary["smart_configuration"] = _smart_summary(smart)
        if warnings:
            summary["warnings"] = warnings
        throttling = ctx.throttling()
        if throttling:
            summary["throttling"] = throttling
        missing = missing_capabilities(capability.resources) if capability is not None else []
        summary["missing"] = missing
        ctx.progress(2, 2, "Capabilities checked")
        if missing:
            return StepOutcome(
                passed=False,
                summary=summary,
                error_kind="unsupported",
                error_message="The server does not support everything the product needs: " + "; ".join(missing) + ".",
                error_hint="Ask the hospital to enable these interactions for our client, then re-run configure.",
            )
        return StepOutcome(passed=True, summary=summary)


def _smart_summary(smart: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep the parts of the SMART configuration people check; never tokens or keys."""
    if not smart:
        return None
    keys = (
        "token_endpoint",
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
        "scopes_supported",
        "capabilities",
    )
    return {key: smart[key] for key in keys if key in smart}
