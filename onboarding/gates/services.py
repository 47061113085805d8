"""Gates: hospital IT's approval of one exact artifact before a gated step may start.

One mechanism for every gate. A wing (mapping, load test, go-live) registers a `Gate` that says
how to find the artifact that would be approved now; a step module names the gates it needs, and
the engine asks `check_start` before it queues that step, and refuses (a refused start, never a failed run) unless
a live approval binds the current artifact. Changing the artifact voids the approval with a
reason people see (`void_stale`); re-running a step a gate rests on voids it too
(`void_for_rerun`). The life of a request: pending, then approved or rejected; asking again is a new
request on the artifact as it is then, so the rows of a gate are its history.

Customer success request and remind; only the tenant's approvers decide, never vendor staff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from onboarding.gates import notices
from onboarding.models import Approval, Decision, Onboarding, Step
from portal import audit
from portal.access import AuthUser, User, require_perm
from portal.models import Tenant
from portal.roles import is_vendor_staff
from portal.timefmt import format_duration

REQUEST_PERM = "onboarding.run_step"
DECIDE_PERM = "portal.approve_gates"
MAX_COMMENT = 2000
# A reminder goes out at most this often per request, so "Remind" cannot flood an approver.
REMIND_EVERY = timedelta(hours=1)


STATUS_LABELS = {
    "approved": "approved",
    "pending": "waiting for hospital IT",
    "rejected": "rejected",
    "voided": "voided",
    "ready": "not requested yet",
    "not_ready": "not ready to request",
    "scheduled": "approved for a later window",
    "expired": "approval window ended",
}


class GateError(Exception):
    """A gate move refused; the message says what to do."""


@dataclass(frozen=True)
class Artifact:
    """The exact thing an approval binds: what it is, which row, which version, and its content hash."""

    kind: str
    id: int
    version: int
    content_hash: str
    label: str


@dataclass(frozen=True)
class Gate:
    """A registered gate: the step it guards and how to find (and judge) the artifact it approves."""

    key: str
    label: str
    # The step that produces the artifact: its chip shows the gate's state ("waiting for hospital IT").
    step: str
    # The artifact that would be approved now, or None when there is none yet.
    current: Callable[[Onboarding], Artifact | None]
    # None when the artifact may be put to hospital IT, else a sentence saying what to finish first.
    not_ready: Callable[[Onboarding, Artifact | None], str | None]
    # Steps whose new run voids an approval of this gate (its artifact rests on their results).
    voided_by_steps: tuple[str, ...] = ()
    # Where people look at the artifact (a URL for the connection), for links in inboxes and emails.
    link: Callable[[Onboarding], str] | None = None
    # Approved only for a time window (the load-test permission: it is the hospital's system): the
    # decision form asks for one, and outside it the approval is not live.
    wants_window: bool = False


_GATES: dict[str, Gate] = {}


def register(gate: Gate) -> Gate:
    """Add a wing's gate; registering the same key twice is a programming error."""
    if gate.key in _GATES and _GATES[gate.key] != gate:
        raise ValueError(f"A gate called {gate.key!r} is registered already.")
    _GATES[gate.key] = gate
    return gate


def get_gate(key: str) -> Gate:
    """The registered gate for a key; KeyError for an unknown one."""
    return _GATES[key]


def all_gates() -> list[Gate]:
    """Every registered gate, in the order of the pipeline's steps (whatever order the wings loaded in)."""
    order = list(Step.values)
    return sorted(_GATES.values(), key=lambda gate: order.index(gate.step) if gate.step in order else len(order))


# --- reads --------------------------------------------------------------------------------------


def is_live(approval: Approval, artifact: Artifact | None, *, at: datetime | None = None) -> bool:
    """Whether an approval still holds for this artifact at this time."""
    if approval.state != Decision.APPROVED or artifact is None:
        return False
    if (approval.artifact_kind, approval.artifact_id, approval.artifact_hash) != (
        artifact.kind,
        artifact.id,
        artifact.content_hash,
    ):
        return False
    now = at or timezone.now()
    if approval.valid_from is not None and now < approval.valid_from:
        return False
    return approval.valid_until is None or now <= approval.valid_until


def live_approval(onboarding: Onboarding, gate_key: str, *, at: datetime | None = None) -> Approval | None:
    """The approval that lets the gated step start now, or None."""
    artifact = get_gate(gate_key).current(onboarding)
    if artifact is None:
        return None
    candidates = Approval.objects.filter(
        onboarding=onboarding, gate=gate_key, decision=Decision.APPROVED, voided_at__isnull=True
    ).order_by("-decided_at")
    for approval in candidates:
        if is_live(approval, artifact, at=at):
            return approval
    return None


def latest_request(onboarding: Onboarding, gate_key: str) -> Approval | None:
    return Approval.objects.filter(onboarding=onboarding, gate=gate_key).order_by("-requested_at", "-id").first()


def history(onboarding: Onboarding, gate_key: str) -> list[Approval]:
    return list(Approval.objects.filter(onboarding=onboarding, gate=gate_key).order_by("-requested_at", "-id"))


@dataclass(frozen=True)
class GateState:
    """What a gate looks like now, for the pages: its state, who owes the next action, and why."""

    gate: Gate
    artifact: Artifact | None
    latest: Approval | None
    live: Approval | None
    not_ready: str | None

    @property
    def status(self) -> str:
        """approved, pending, rejected, voided, scheduled or expired (an approval of the current
        artifact outside its window), ready (may be requested) or not_ready."""
        if self.live is not None:
            return "approved"
        latest = self.latest
        window = self._window_state
        if window:
            return window
        if latest is not None and (
            latest.state == "pending" or (latest.state != "approved" and self._latest_is_current)
        ):
            return latest.state
        return "ready" if self.not_ready is None else "not_ready"

    @property
    def _window_state(self) -> str:
        """ "scheduled" or "expired" when the latest request is an approval of this artifact outside its window."""
        latest, artifact = self.latest, self.artifact
        if latest is None or artifact is None or latest.state != "approved":
            return ""
        if (latest.artifact_id, latest.artifact_hash) != (artifact.id, artifact.content_hash):
            return ""
        now = timezone.now()
        if latest.valid_from is not None and now < latest.valid_from:
            return "scheduled"
        if latest.valid_until is not None and now > latest.valid_until:
            return "expired"
        return ""

    @property
    def _latest_is_current(self) -> bool:
        latest, artifact = self.latest, self.artifact
        return latest is not None and artifact is not None and latest.artifact_hash == artifact.content_hash

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]

    @property
    def requestable(self) -> bool:
        """Whether customer success may put the current artifact to hospital IT now."""
        return (
            self.status in ("ready", "rejected", "voided", "expired")
            and self.not_ready is None
            and self.artifact is not None
        )

    @property
    def owed_by(self) -> str:
        """Who owes the next action: "hospital IT", "customer success" or ""."""
        return {"pending": "hospital IT", "approved": "", "scheduled": ""}.get(self.status, "customer success")

    @property
    def sentence(self) -> str:
        """One sentence for the page: what the gate waits on."""
        label = self.gate.label
        status = self.status
        if status == "approved" and self.live is not None:
            window = window_text(self.live)
            within = f", {window}" if window else ""
            return f"{label}: approved by {self.live.decided_by_label} for {self.live.artifact_label}{within}."
        if status == "scheduled" and self.latest is not None and self.latest.valid_from is not None:
            opens = duration(self.latest.valid_from - timezone.now())
            return (
                f"{label}: approved by {self.latest.decided_by_label} for {self.latest.artifact_label}, "
                f"{window_text(self.latest)}; the window opens in {opens}."
            )
        if status == "expired" and self.latest is not None:
            return (
                f"{label}: the approval of {self.latest.artifact_label} by {self.latest.decided_by_label} was "
                f"{window_text(self.latest)}, and that window has ended. Ask again for a new window."
            )
        if status == "pending" and self.latest is not None:
            return f"{label}: waiting for hospital IT since {_when(self.latest.requested_at)}."
        if status == "rejected" and self.latest is not None:
            who, why = self.latest.decided_by_label, self.latest.comment.rstrip(".")
            return f"{label}: rejected by {who}: “{why}”. Change it and ask again."
        if status == "voided" and self.latest is not None:
            return f"{label}: the approval was voided: {self.latest.voided_reason} Ask again."
        if status == "ready":
            if self.latest is not None and self.latest.state == "voided":
                return (
                    f"{label}: the approval of {self.latest.artifact_label} was voided ({self.latest.voided_reason}) "
                    f"and {self.artifact.label if self.artifact else 'the new version'} is ready to be requested."
                )
            return f"{label}: ready to be requested from hospital IT."
        return f"{label}: {self.not_ready}"


def gate_state(onboarding: Onboarding, gate_key: str) -> GateState:
    gate = get_gate(gate_key)
    artifact = gate.current(onboarding)
    return GateState(
        gate=gate,
        artifact=artifact,
        latest=latest_request(onboarding, gate_key),
        live=live_approval(onboarding, gate_key),
        not_ready=gate.not_ready(onboarding, artifact),
    )


def check_start(onboarding: Onboarding, gate_keys: tuple[str, ...]) -> str | None:
    """None when each of a step's gates has a live approval; else why the step may not start."""
    for key in gate_keys:
        if live_approval(onboarding, key) is None:
            state = gate_state(onboarding, key)
            return f"{state.gate.label} is needed first. {state.sentence}"
    return None


# --- moves --------------------------------------------------------------------------------------


def request_approval(
    *, user: User, onboarding: Onboarding, gate_key: str, note: str = "", request: HttpRequest | None = None
) -> Approval:
    """Put the current artifact to the tenant's approvers, and tell them."""
    tenant = onboarding.tenant
    require_perm(user, REQUEST_PERM, tenant)
    gate = get_gate(gate_key)
    note = note.strip()
    if len(note) > MAX_COMMENT:
        raise GateError(f"Keep the note under {MAX_COMMENT:,} characters.")
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        artifact = gate.current(onboarding)
        reason = gate.not_ready(onboarding, artifact)
        if reason is not None or artifact is None:
            raise GateError(reason or f"There is nothing to approve for {gate.label} yet.")
        if live_approval(onboarding, gate_key) is not None:
            raise GateError(f"{artifact.label} is approved already.")
        open_request = Approval.objects.filter(
            onboarding=onboarding, gate=gate_key, decision="", voided_at__isnull=True
        ).first()
        if open_request is not None:
            if open_request.artifact_hash == artifact.content_hash and open_request.artifact_id == artifact.id:
                raise GateError(
                    f"{open_request.artifact_label} is already waiting for hospital IT, since "
                    f"{_when(open_request.requested_at)}. Use “Remind” to nudge them."
                )
            _void(open_request, reason=f"{artifact.label} replaced it before a decision.", user=user, request=request)
        try:
            approval = Approval.objects.create(
                onboarding=onboarding,
                gate=gate_key,
                artifact_kind=artifact.kind,
                artifact_id=artifact.id,
                artifact_version=artifact.version,
                artifact_hash=artifact.content_hash,
                artifact_label=artifact.label,
                requested_by=user if isinstance(user, AuthUser) else None,
                requested_by_label=user.get_username(),
                request_note=note,
            )
        except IntegrityError:
            raise GateError(f"{gate.label} was requested a moment ago; reload the page.") from None
        audit.record(
            action="gate.request",
            actor=user,
            tenant=tenant,
            obj=approval,
            request=request,
            detail=_detail(approval),
        )
        notices.approval_requested(approval, gate_label=gate.label, reminder=0)
    return approval


def remind(*, user: User, approval: Approval, request: HttpRequest | None = None) -> Approval:
    """Send the approvers the pending request again (at most once per REMIND_EVERY)."""
    tenant = approval.onboarding.tenant
    require_perm(user, REQUEST_PERM, tenant)
    with transaction.atomic():
        locked = Approval.objects.select_for_update().get(pk=approval.pk)
        if not locked.is_pending:
            raise GateError(f"This request is {locked.state}; there is nothing to remind anyone of.")
        last = locked.reminded_at or locked.requested_at
        if timezone.now() - last < REMIND_EVERY:
            wait = REMIND_EVERY - (timezone.now() - last)
            raise GateError(f"Hospital IT were told {_ago(last)} ago. You can remind them again in {duration(wait)}.")
        locked.reminders += 1
        locked.reminded_at = timezone.now()
        locked.save(update_fields=["reminders", "reminded_at"])
        audit.record(
            action="gate.remind", actor=user, tenant=tenant, obj=locked, request=request, detail=_detail(locked)
        )
        notices.approval_requested(locked, gate_label=get_gate(locked.gate).label, reminder=locked.reminders)
    return locked


def decide(
    *,
    user: User,
    approval: Approval,
    decision: str,
    comment: str = "",
    artifact_hash: str | None = None,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    request: HttpRequest | None = None,
) -> Approval:
    """Hospital IT approve or reject a pending request. A rejection needs its reason.

    `artifact_hash`, when given, is the version the approver looked at: a stale page cannot approve
    an artifact that changed under it.
    """
    onboarding = approval.onboarding
    tenant = onboarding.tenant
    if is_vendor_staff(user):
        raise PermissionDenied("Only the hospital's approvers decide; vendor staff can never decide for the hospital.")
    require_perm(user, DECIDE_PERM, tenant)
    comment = comment.strip()
    if decision not in Decision.values:
        raise GateError("Choose approve or reject.")
    if decision == Decision.REJECTED and not comment:
        raise GateError("Say why you reject it: the reason is sent to the person who asked.")
    if len(comment) > MAX_COMMENT:
        raise GateError(f"Keep the comment under {MAX_COMMENT:,} characters.")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise GateError("The approval window must end after it starts.")
    if decision == Decision.APPROVED and get_gate(approval.gate).wants_window:
        if valid_until is None:
            raise GateError("Give the window this approval holds for: at least the time it ends.")
        if valid_until <= timezone.now():
            raise GateError("The approval window must end in the future.")
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        locked = Approval.objects.select_for_update().get(pk=approval.pk)
        if locked.voided_at is not None:
            raise GateError(f"This request was voided: {locked.voided_reason} There is nothing to decide.")
        if locked.decision:
            raise GateError(
                f"This request was already {locked.get_decision_display().lower()} by {locked.decided_by_label}."
            )
        if artifact_hash is not None and artifact_hash != locked.artifact_hash:
            raise GateError("What you looked at is not what was put to you. Reload the page and review it again.")
        current = get_gate(locked.gate).current(onboarding)
        if current is None or (current.id, current.content_hash) != (locked.artifact_id, locked.artifact_hash):
            stale = current.label if current is not None else "nothing"
        else:
            stale = None
        if stale is None:
            locked.decision = decision
            locked.decided_by = user if isinstance(user, AuthUser) else None
            locked.decided_by_label = user.get_username()
            locked.decided_at = timezone.now()
            locked.comment = comment
            locked.valid_from, locked.valid_until = valid_from, valid_until
            locked.save(
                update_fields=[
                    "decision",
                    "decided_by",
                    "decided_by_label",
                    "decided_at",
                    "comment",
                    "valid_from",
                    "valid_until",
                ]
            )
            audit.record(
                action=f"gate.{decision}",
                actor=user,
                tenant=tenant,
                obj=locked,
                request=request,
                detail={**_detail(locked), "comment": comment[:300]},
            )
            notices.approval_decided(locked, gate_label=get_gate(locked.gate).label)
        else:
            # Recorded (committed) before refusing: the void is what people see afterwards.
            _void(locked, reason=f"It changed to {stale} before the decision.", user=user, request=request)
    if stale is not None:
        raise GateError(
            f"{locked.artifact_label} changed before your decision (it is now {stale}), so this request was "
            "voided. Customer success will ask again."
        )
    return locked


def void_stale(
    onboarding: Onboarding,
    gate_key: str,
    *,
    reason: str,
    user: User | None = None,
    request: HttpRequest | None = None,
) -> int:
    """Void the gate's approvals and open requests that no longer bind its current artifact.

    The wing that changed the artifact calls it in the same transaction, with the reason people see.
    """
    artifact = get_gate(gate_key).current(onboarding)
    voided = 0
    open_or_approved = Approval.objects.select_for_update().filter(
        onboarding=onboarding, gate=gate_key, voided_at__isnull=True
    )
    for approval in open_or_approved.exclude(decision=Decision.REJECTED):
        if artifact is not None and (approval.artifact_id, approval.artifact_hash) == (
            artifact.id,
            artifact.content_hash,
        ):
            continue
        _void(approval, reason=reason, user=user, request=request)
        voided += 1
    return voided


def void_for_rerun(
    onboarding: Onboarding, step: str, *, user: User | None = None, request: HttpRequest | None = None
) -> int:
    """Void approvals of gates that rest on a step's results, because that step runs again."""
    voided = 0
    for gate in _GATES.values():
        if step not in gate.voided_by_steps:
            continue
        for approval in Approval.objects.select_for_update().filter(
            onboarding=onboarding, gate=gate.key, voided_at__isnull=True
        ):
            if approval.state == "rejected":
                continue
            _void(approval, reason=f"The {step.replace('_', ' ')} step was run again.", user=user, request=request)
            voided += 1
    return voided


def pending_count(tenant: Tenant) -> int:
    """Requests waiting on a tenant's approvers (the people wing asks before removing the last one)."""
    return Approval.objects.filter(onboarding__tenant=tenant, decision="", voided_at__isnull=True).count()


# --- helpers ------------------------------------------------------------------------------------


def _void(approval: Approval, *, reason: str, user: User | None, request: HttpRequest | None) -> None:
    approval.voided_at = timezone.now()
    approval.voided_reason = reason[:300]
    approval.save(update_fields=["voided_at", "voided_reason"])
    audit.record(
        action="gate.void",
        actor=user,
        tenant=approval.onboarding.tenant,
        obj=approval,
        request=request,
        detail={**_detail(approval), "reason": approval.voided_reason},
    )


def _detail(approval: Approval) -> dict[str, Any]:
    return {
        "gate": approval.gate,
        "artifact": approval.artifact_kind,
        "version": approval.artifact_version,
        "content_hash": approval.artifact_hash,
    }


def window_text(approval: Approval) -> str:
    """An approval's window in words, in the hospital's time zone: "from 2026-05-04 09:00 to 11:00 CDT"; "" for none."""
    start, end = approval.valid_from, approval.valid_until
    if start is None and end is None:
        return ""
    zone = tenant_zone(approval.onboarding.tenant)
    if end is None:
        assert start is not None
        return f"from {start.astimezone(zone):%Y-%m-%d %H:%M %Z}"
    end_local = end.astimezone(zone)
    if start is None:
        return f"until {end_local:%Y-%m-%d %H:%M %Z}"
    start_local = start.astimezone(zone)
    end_format = "%H:%M %Z" if start_local.date() == end_local.date() else "%Y-%m-%d %H:%M %Z"
    return f"from {start_local:%Y-%m-%d %H:%M} to {end_local.strftime(end_format)}"


def tenant_zone(tenant: Tenant) -> tzinfo:
    """The time zone a hospital's windows are written and shown in."""
    return _zone(tenant.timezone)


def _zone(name: str) -> tzinfo:
    """The hospital's time zone, or UTC when it has none (or an unknown one)."""
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _when(moment: datetime) -> str:
    return f"{_ago(moment)} ago"


def _ago(moment: datetime) -> str:
    return duration(timezone.now() - moment)


def duration(delta: timedelta) -> str:
    """A short human duration: "45 s", "12 min", "3 h 5 min", "2 days" (the portal's one way: portal.timefmt)."""
    return format_duration(delta)
