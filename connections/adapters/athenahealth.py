"""athenahealth (athenaOne): every search names the practice.

athenaOne is one multi-tenant system, so each search carries ``ah-practice`` with the practice
the client is provisioned for (``Organization/a-1.Practice-<id>``). The value is per hospital, so
it comes from ``ConnectionConfig.extra_params``; the adapter refuses to search without it rather
than let the server answer a vague 400.
"""

from __future__ import annotations

from typing import ClassVar

from connections.adapters.base import FHIRAdapter

PRACTICE_PARAM = "ah-practice"


class AthenahealthAdapter(FHIRAdapter):
    vendor: ClassVar[str] = "athenahealth"
    default_mrn_systems: ClassVar[tuple[str, ...]] = ("urn:oid:2.16.840.1.113883.3.564.1",)
    max_page_size: ClassVar[int] = 100
    required_extra_params: ClassVar[tuple[str, ...]] = (PRACTICE_PARAM,)
