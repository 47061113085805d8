"""Oracle Health (Cerner Millennium): clinical searches name the patient with ``patient``.

Millennium's R4 clinical searches refuse ``subject`` with 400, so the patient parameter is pinned
to ``patient`` here even though it is also the base default: a change to the default must not
silently break this vendor. Base URLs carry the tenant GUID (``/r4/<tenant-guid>``).
"""

from __future__ import annotations

from typing import ClassVar

from connections.adapters.base import FHIRAdapter


class OracleHealthAdapter(FHIRAdapter):
    vendor: ClassVar[str] = "oracle_health"
    default_mrn_systems: ClassVar[tuple[str, ...]] = ("urn:oid:2.16.840.1.113883.3.13.6",)
    max_page_size: ClassVar[int] = 100
    patient_param: ClassVar[str] = "patient"
