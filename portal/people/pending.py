"""How many approvals wait on a tenant's approvers, counted by whoever owns approvals (the gates).

The portal knows nothing of the pipeline (the layers forbid it), so the gates register a counter
here and the members pages ask through `pending_approvals_count`. With nothing registered the
answer is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portal.models import Tenant

PendingCounter = Callable[["Tenant"], int]

_counters: list[PendingCounter] = []


def register_pending_approvals(counter: PendingCounter) -> PendingCounter:
    """Add a counter of a tenant's pending approvals (idempotent); returns it, so it can be a decorator."""
    if counter not in _counters:
        _counters.append(counter)
    return counter


def unregister_pending_approvals(counter: PendingCounter) -> None:
    """Remove a counter added by register_pending_approvals (tests, or an app being unloaded)."""
    if counter in _counters:
        _counters.remove(counter)


def pending_approvals_count(tenant: Tenant) -> int:
    """Approvals of this tenant waiting on a decision, over every registered counter."""
    return sum(int(counter(tenant)) for counter in _counters)
