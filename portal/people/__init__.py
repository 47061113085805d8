"""People of a hospital and of the vendor: roles, invitations, members, staff and their assignments.

- `models`: Membership, StaffAssignment, Invitation, Person, UserSession (loaded by portal/models.py).
- `services`: every change, each with its audit event; `selectors`: reads (approvers_of, ...).
- `pending`: the hook gates plug into, so removing the last approver can warn about waiting approvals.

Only the hook is re-exported here: importing models or services from this `__init__` would make
portal/models.py's import of the models circular.
"""

from __future__ import annotations

from portal.people.pending import (
    pending_approvals_count,
    register_pending_approvals,
    unregister_pending_approvals,
)

__all__ = ["pending_approvals_count", "register_pending_approvals", "unregister_pending_approvals"]
