"""Any standards-conformant FHIR R4 server (HAPI and the like): no quirks to absorb.

The MRN system has no standard value, so hospitals on a generic server usually set
``ConnectionConfig.mrn_system`` during mapping; the default is the sandbox's.
"""

from __future__ import annotations

from typing import ClassVar

from connections.adapters.base import FHIRAdapter


class GenericAdapter(FHIRAdapter):
    vendor: ClassVar[str] = "generic"
    default_mrn_systems: ClassVar[tuple[str, ...]] = ("http://hospital.example.org/mrn",)
    max_page_size: ClassVar[int] = 500
