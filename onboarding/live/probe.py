"""One health probe of a connection: `/metadata` and a Patient read, each timed.

Used by the go-live step (pre-flight and the first checks after cutover) and by monitoring's
periodic checks, so both judge "healthy" the same way. A remote failure is a result, never raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from connections.adapters.base import FHIRAdapter
from connections.errors import RemoteError


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    metadata_ms: float | None
    patient_ms: float | None
    # The typed error kind (connections.errors.ErrorKind) and its message when not ok.
    error_kind: str = ""
    error_message: str = ""

    @property
    def latency_ms(self) -> float | None:
        """The slower of the two reads: what the product would wait on."""
        known = [ms for ms in (self.metadata_ms, self.patient_ms) if ms is not None]
        return max(known) if known else None


def probe(adapter: FHIRAdapter, patient_id: str) -> ProbeResult:
    """Read `/metadata`, then Patient/<patient_id>; stop at the first failure."""
    started = time.perf_counter()
    try:
        adapter.capability()
    except RemoteError as exc:
        return ProbeResult(False, None, None, exc.kind.value, exc.message)
    metadata_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        adapter.read_patient(patient_id)
    except RemoteError as exc:
        return ProbeResult(False, metadata_ms, None, exc.kind.value, exc.message)
    return ProbeResult(True, metadata_ms, (time.perf_counter() - started) * 1000)
