"""Sandbox hospitals: FHIR R4 server simulators that play a customer's EHR on loopback.

Used by the demo and the test suite, reached only over HTTP. This package
imports nothing but the standard library, so it can run anywhere.
"""

from __future__ import annotations

from .flavours import FLAVOURS, Flavour
from .server import FAULT_SPECS, SandboxHospital

__all__ = ["FAULT_SPECS", "FLAVOURS", "Flavour", "SandboxHospital"]
