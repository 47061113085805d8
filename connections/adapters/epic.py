"""Epic: Observation searches must name a category.

Epic serves vitals, labs and social history from different back ends, so an Observation search
without ``category`` is refused; the adapter searches each category and merges. Epic also
answers 400 to search parameters it does not support, so nothing speculative is ever sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from connections.adapters.base import FHIRAdapter


class EpicAdapter(FHIRAdapter):
    vendor: ClassVar[str] = "epic"
    default_mrn_systems: ClassVar[tuple[str, ...]] = ("urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14",)
    max_page_size: ClassVar[int] = 100
    fan_out_params: ClassVar[Mapping[str, tuple[str, tuple[str, ...]]]] = {
        "Observation": ("category", ("vital-signs", "laboratory", "social-history")),
    }
