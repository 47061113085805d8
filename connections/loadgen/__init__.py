"""The load-test engine's core: an open-model HTTP load generator with no Django in it.

The load-test step is a thin wrapper around ``run``: it builds a ``LoadPlan`` from the approved
plan, pins the connection's address with ``connections.http.pin_target``, and stores the
``LoadResult``. An import-linter contract keeps this package free of Django, the portal and
httpx, so it can be run and tested against any HTTP server on its own.

Names are imported from their modules on first use: the guarded client imports
``connections.loadgen.target``, and no web process should pay for uvloop, httptools and hdrh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Progress, run, run_closed
    from .mix import (
        CONDITION_BY_PATIENT,
        ENCOUNTER_BY_PATIENT,
        OBSERVATION_BY_PATIENT,
        PATIENT_BY_IDENTIFIER,
        PATIENT_READ,
        STANDARD_TYPES,
        RecordPool,
        RequestType,
        standard_mix,
    )
    from .plan import AbortRule, Caps, LoadPlan, PlanError, Sla, Stage, Staircase, rate_for_peak, validate
    from .results import (
        Latency,
        LoadResult,
        Outcome,
        SecondStats,
        SendLag,
        SlaVerdict,
        StageStats,
        TypeStats,
        check_sla,
    )
    from .target import PinnedTarget

_MODULES = {
    "engine": ("Progress", "run", "run_closed"),
    "mix": (
        "CONDITION_BY_PATIENT",
        "ENCOUNTER_BY_PATIENT",
        "OBSERVATION_BY_PATIENT",
        "PATIENT_BY_IDENTIFIER",
        "PATIENT_READ",
        "STANDARD_TYPES",
        "RecordPool",
        "RequestType",
        "standard_mix",
    ),
    "plan": ("AbortRule", "Caps", "LoadPlan", "PlanError", "Sla", "Stage", "Staircase", "rate_for_peak", "validate"),
    "results": (
        "Latency",
        "LoadResult",
        "Outcome",
        "SecondStats",
        "SendLag",
        "SlaVerdict",
        "StageStats",
        "TypeStats",
        "check_sla",
    ),
    "target": ("PinnedTarget",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = [
    "CONDITION_BY_PATIENT",
    "ENCOUNTER_BY_PATIENT",
    "OBSERVATION_BY_PATIENT",
    "PATIENT_BY_IDENTIFIER",
    "PATIENT_READ",
    "STANDARD_TYPES",
    "AbortRule",
    "Caps",
    "Latency",
    "LoadPlan",
    "LoadResult",
    "Outcome",
    "PinnedTarget",
    "PlanError",
    "Progress",
    "RecordPool",
    "RequestType",
    "SecondStats",
    "SendLag",
    "Sla",
    "SlaVerdict",
    "Stage",
    "StageStats",
    "Staircase",
    "TypeStats",
    "check_sla",
    "rate_for_peak",
    "run",
    "run_closed",
    "standard_mix",
    "validate",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
