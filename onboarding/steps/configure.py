"""Configure: is this URL a FHIR R4 server that supports what the product needs?"""

from __future__ import annotations

from typing import Any

from onboarding.steps.base import StepContext, StepModule, StepOutcome

# What the product reads. Patient by id and by search; clinical resources by patient.
REQUIRED_INTERACTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "Patient": {"interactions": ("read", "search-type"), "search_params": ()},
    "Observation": {"interactions": ("search-type",), "search_params": ("patient",)},
    "Condition": {"interactions": ("search-type",), "search_params": ("patient",)},
    "Encounter": {"interactions": ("search-type",), "search_params": ("patient",)},
}


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


class ConfigureStep(StepModule):
    key = "configure"
    label = "Configure"
    description = "Read /metadata and SMART configuration; check FHIR 4.0.x and the searches the product needs."

    def run(self, ctx: StepContext) -> StepOutcome:
        ctx.progress(0, 2, "Reading the CapabilityStatement (/metadata)")
        capability = ctx.adapter.capability()
        ctx.log(
            "CapabilityStatement read",
            fhir_version=capability.fhir_version,
            software=capability.software,
            resources=len(capability.resources),
        )
        ctx.progress(1, 2, "Reading .well-known/smart-configuration")
        smart = ctx.adapter.smart_configuration()
        ctx.log("SMART configuration " + ("found" if smart else "not offered"))
        summary: dict[str, Any] = {
            "fhir_version": capability.fhir_version,
            "software": capability.software,
            "formats": capability.formats,
            "resources": {name: capability.resources[name] for name in sorted(capability.resources)},
            "security": capability.security,
            "smart_configuration": _smart_summary(smart),
        }
        missing = missing_capabilities(capability.resources)
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
