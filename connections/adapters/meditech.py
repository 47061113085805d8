"""MEDITECH Expanse: small pages and relative next links.

Expanse writes its next links relative to the FHIR base (``Patient?_count=10&page=2``); the base
adapter resolves every next link against the base URL, so nothing more is needed here than the
page-size limit and the MRN system.
"""

from __future__ import annotations

from typing import ClassVar

from connections.adapters.base import FHIRAdapter


class MeditechAdapter(FHIRAdapter):
    vendor: ClassVar[str] = "meditech"
    default_mrn_systems: ClassVar[tuple[str, ...]] = ("urn:oid:1.3.6.1.4.1.54392.5.1.1",)
    max_page_size: ClassVar[int] = 50
