"""The go-live plan and its approval, the scheduled cutover, and the live connection's rollback and promotion.

A plan names the window (the next change window or a chosen one), the rollout (full, or a pilot
share of patients first) and the hypercare contacts. Versions are immutable. The go-live approval is
a gate (``go_live_approval``) whose artifact is the plan's current version *together with* the
latest validation and load-test runs: its content hash covers all three, so a new run of either
makes the approval stale (the engine also voids it when either step starts again), and approving a
plan whose runs moved on is refused by the gates.

A go-live is asked for (``schedule_go_live``) and waits for its window; beat creates the go-live run
when the window opens. Outside a window it is refused unless an emergency override gives a reason,
which tells the tenant's approvers and is audited. The go-live step calls ``cutover`` and, if the
first checks fail, ``rollback``; people roll back and promote a pilot here too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.validators import validate_email
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from connections.models import EHRConnection, Environment
from onboarding.gates import services as gates
from onboarding.golive import readapi, windows
from onboarding.golive.models import GoLivePlan, GoLiveSchedule, Rollout, ScheduleStatus, WindowChoice
from onboarding.live.models import LivePhase, LiveStage, LiveState
from onboarding.models import Approval, Onboarding, RunStatus, Step, StepRun
from portal import audit
from portal.access import AuthUser, User, require_perm
from portal.notifications.services import NotificationKind, notify
from portal.people.selectors import approvers_of
from portal.roles import is_vendor_staff
from portal.timefmt import format_duration

GATE_KEY = "go_live_approval"
EDIT_PERM = "onboarding.run_step"
PLAN_FIELDS = ("window_choice", "window_starts_at", "rollout", "pilot_percent", "hypercare_contacts")
EARLIER_STEPS = (Step.CONFIGURE, Step.TEST, Step.MAP, Step.VALIDATE, Step.LOAD_TEST)
MAX_CONTACTS = 10
MAX_REASON = 2000


class GoLiveRefused(Exception):
    """A go-live move refused; the message says what to do. ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- the plan -------------------------------------------------------------------------------------


def latest_plan(onboarding: Onboarding) -> GoLivePlan | None:
    return onboarding.go_live_plans.order_by("-version").first()


def plan_content(values: Mapping[str, Any] | GoLivePlan) -> dict[str, Any]:
    """What a plan's hash covers (the approval adds the runs it rests on)."""
    get = values.get if isinstance(values, Mapping) else lambda name: getattr(values, name)
    starts = get("window_starts_at")
    return {
        "window_choice": get("window_choice"),
        "window_starts_at": starts.isoformat() if isinstance(starts, datetime) else None,
        "rollout": get("rollout"),
        "pilot_percent": get("pilot_percent"),
        "hypercare_contacts": get("hypercare_contacts"),
    }


def _hash(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_plan(onboarding: Onboarding, values: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """The plan's values cleaned, or GoLiveRefused naming the field to fix."""
    now = now or timezone.now()
    choice = values.get("window_choice")
    if choice not in WindowChoice.values:
        raise GoLiveRefused("Choose the next change window or one of the windows listed.", field="window_choice")
    starts = values.get("window_starts_at")
    tenant = onboarding.tenant
    if choice == WindowChoice.CHOSEN:
        if not isinstance(starts, datetime):
            raise GoLiveRefused("Choose the window to go live in.", field="window_starts_at")
        if windows.occurrence_starting(tenant, starts) is None:
            raise GoLiveRefused(
                "That is not the start of one of the hospital's change windows. Choose one of the windows listed.",
                field="window_starts_at",
            )
        if starts <= now:
            raise GoLiveRefused("That window has started or passed: choose a later one.", field="window_starts_at")
    else:
        starts = None
        if not windows.change_windows(tenant):
            raise GoLiveRefused(
                f"{tenant.name} keeps no change windows yet: add one (on the hospital's windows page) first.",
                field="window_choice",
            )
    rollout = values.get("rollout")
    if rollout not in Rollout.values:
        raise GoLiveRefused("Choose the rollout: straight to full, or a pilot share first.", field="rollout")
    percent = values.get("pilot_percent") or 0
    if rollout == Rollout.PILOT:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 99:
            raise GoLiveRefused("The pilot share is a whole percentage from 1 to 99.", field="pilot_percent")
    else:
        percent = 0
    contacts = _contacts(values.get("hypercare_contacts"))
    return {
        "window_choice": choice,
        "window_starts_at": starts,
        "rollout": rollout,
        "pilot_percent": percent,
        "hypercare_contacts": contacts,
    }


def _contacts(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise GoLiveRefused("Name at least one hypercare contact (name and email).", field="hypercare_contacts")
    if len(raw) > MAX_CONTACTS:
        raise GoLiveRefused(f"Name at most {MAX_CONTACTS} hypercare contacts.", field="hypercare_contacts")
    cleaned = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise GoLiveRefused("Each hypercare contact has a name and an email.", field="hypercare_contacts")
        name = str(item.get("name") or "").strip()
        email = str(item.get("email") or "").strip()
        if not name or len(name) > 150:
            raise GoLiveRefused(
                "Give each hypercare contact a name (under 150 characters).", field="hypercare_contacts"
            )
        try:
            validate_email(email)
        except Exception:
            raise GoLiveRefused(f"“{email}” is not an email address.", field="hypercare_contacts") from None
        user_id = AuthUser.objects.filter(email__iexact=email, is_active=True).values_list("pk", flat=True).first()
        cleaned.append({"name": name, "email": email, "user_id": user_id})
    return cleaned


def parse_contacts(text: str) -> list[dict[str, Any]]:
    """Contacts typed one a line as "Name <email>" or "Name, email" (the page's form)."""
    contacts = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if "<" in line and line.endswith(">"):
            name, email = line[:-1].split("<", 1)
        elif "," in line:
            name, email = line.rsplit(",", 1)
        else:
            raise GoLiveRefused(
                f"Write “{line[:60]}” as a name and an email: Pat Lee <pat@hospital.org>.", field="hypercare_contacts"
            )
        contacts.append({"name": name.strip(), "email": email.strip()})
    return contacts


def save_plan(
    *,
    user: User,
    onboarding: Onboarding,
    values: Mapping[str, Any],
    seen_version: int,
    request: HttpRequest | None = None,
) -> tuple[GoLivePlan, bool]:
    """Write the next plan version; (plan, False) when nothing changed. A change voids the approval."""
    require_perm(user, EDIT_PERM, onboarding.tenant)
    cleaned = check_plan(onboarding, values)
    digest = _hash(plan_content(cleaned))
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        latest = latest_plan(onboarding)
        current = latest.version if latest else 0
        if seen_version != current:
            raise GoLiveRefused(
                f"The plan changed while you were editing it (it is version {current} now). Reload the page and "
                "make your change again."
            )
        if latest is not None and latest.content_hash == digest:
            return latest, False
        plan = GoLivePlan.objects.create(
            onboarding=onboarding,
            version=current + 1,
            content_hash=digest,
            created_by=user if isinstance(user, AuthUser) else None,
            created_by_label=user.get_username(),
            **cleaned,
        )
        gates.void_stale(
            onboarding, GATE_KEY, reason=f"Go-live plan version {plan.version} replaced it.", user=user, request=request
        )
        audit.record(
            action="go_live_plan.version",
            actor=user,
            tenant=onboarding.tenant,
            obj=plan,
            request=request,
            detail={"version": plan.version, "content_hash": digest},
        )
    return plan, True


def describe_plan(plan: GoLivePlan) -> dict[str, Any]:
    """The plan in the words and figures the page, the API and the approval show."""
    tenant = plan.onboarding.tenant
    if plan.window_choice == WindowChoice.CHOSEN and plan.window_starts_at is not None:
        occurrence = windows.occurrence_starting(tenant, plan.window_starts_at)
        window = windows.describe(occurrence.window) if occurrence else "a window no longer kept"
        when = f"the change window starting {_local(plan.window_starts_at, tenant)} ({window})"
    else:
        when = "the next change window"
    rollout = (
        f"a pilot of {plan.pilot_percent}% of patients first, then full"
        if plan.rollout == Rollout.PILOT
        else "straight to full"
    )
    return {
        "version": plan.version,
        "code": str(plan.code),
        "content_hash": plan.content_hash,
        "window_choice": plan.window_choice,
        "window_starts_at": plan.window_starts_at.isoformat() if plan.window_starts_at else None,
        "window": when,
        "rollout": plan.rollout,
        "pilot_percent": plan.pilot_percent,
        "rollout_sentence": rollout,
        "hypercare_contacts": [{"name": c["name"], "email": c["email"]} for c in plan.hypercare_contacts],
        "created_at": plan.created_at.isoformat() if plan.created_at else None,
        "created_by": plan.created_by_label,
    }


# --- the gate -------------------------------------------------------------------------------------


def latest_attempt(onboarding: Onboarding, step: str) -> StepRun | None:
    return onboarding.runs.filter(step=step).order_by("-attempt").first()


def bound_runs(onboarding: Onboarding) -> tuple[StepRun | None, StepRun | None]:
    """The validation run and the load-test run a go-live approval now rests on (the newest attempts)."""
    return latest_attempt(onboarding, Step.VALIDATE), latest_attempt(onboarding, Step.LOAD_TEST)


def _current_artifact(onboarding: Onboarding) -> gates.Artifact | None:
    plan = latest_plan(onboarding)
    if plan is None:
        return None
    validate, load_test = bound_runs(onboarding)
    digest = _hash(
        {
            "plan": plan.content_hash,
            "validate_run": str(validate.code) if validate else None,
            "load_test_run": str(load_test.code) if load_test else None,
        }
    )
    runs = f"validate #{validate.attempt if validate else '—'}, load test #{load_test.attempt if load_test else '—'}"
    return gates.Artifact(
        kind="go_live_plan",
        id=plan.pk,
        version=plan.version,
        content_hash=digest,
        label=f"Go-live plan version {plan.version} ({runs})",
    )


def _not_ready(onboarding: Onboarding, artifact: gates.Artifact | None) -> str | None:
    if artifact is None:
        return "There is no go-live plan yet: write one on the go-live page first."
    validate, load_test = bound_runs(onboarding)
    for label, run in (("Validate", validate), ("The load test", load_test)):
        if run is None or run.status != RunStatus.PASSED:
            return f"{label} must pass before the go-live plan can be put to hospital IT."
    return None


def _plan_link(onboarding: Onboarding) -> str:
    return reverse("go_live", kwargs={"code": onboarding.connection.code})


APPROVAL = gates.register(
    gates.Gate(
        key=GATE_KEY,
        label="Go-live approval",
        step=Step.GO_LIVE,
        current=_current_artifact,
        not_ready=_not_ready,
        voided_by_steps=(Step.VALIDATE, Step.LOAD_TEST),
        link=_plan_link,
    )
)


def gate_approved(onboarding: Onboarding, gate: gates.Gate) -> bool:
    """Whether a gate's current artifact was approved and never voided (a windowed permission may have ended)."""
    artifact = gate.current(onboarding)
    if artifact is None:
        return False
    return Approval.objects.filter(
        onboarding=onboarding,
        gate=gate.key,
        decision="approved",
        voided_at__isnull=True,
        artifact_id=artifact.id,
        artifact_hash=artifact.content_hash,
    ).exists()


def readiness(onboarding: Onboarding) -> list[str]:
    """What stops a go-live now: earlier steps not passed, gates not approved ([] when ready)."""
    problems = []
    for step in EARLIER_STEPS:
        run = latest_attempt(onboarding, step)
        if run is None or run.status != RunStatus.PASSED:
            problems.append(
                f"{Step(step).label} has not passed (its latest attempt is {run.status if run else 'not started'})."
            )
    for gate in gates.all_gates():
        if gate.key == GATE_KEY:
            if gates.live_approval(onboarding, GATE_KEY) is None:
                problems.append(gates.gate_state(onboarding, GATE_KEY).sentence)
        elif not gate_approved(onboarding, gate):
            problems.append(f"{gate.label} is not approved for its current version.")
    return problems


# --- scheduling -------------------------------------------------------------------------------------


def active_schedule(onboarding: Onboarding) -> GoLiveSchedule | None:
    return onboarding.go_live_schedules.filter(status=ScheduleStatus.SCHEDULED).first()


def schedule_go_live(
    *, user: User, onboarding: Onboarding, override_reason: str = "", request: HttpRequest | None = None
) -> GoLiveSchedule:
    """Ask for the go-live in the approved plan's window (beat starts it when the window opens).

    With an override reason, it starts now, outside any window: the tenant's approvers are told.
    """
    tenant = onboarding.tenant
    require_perm(user, EDIT_PERM, tenant)
    reason = override_reason.strip()
    if len(reason) > MAX_REASON:
        raise GoLiveRefused(f"Keep the reason under {MAX_REASON:,} characters.", field="override_reason")
    now = timezone.now()
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        if (state := LiveState.objects.filter(onboarding=onboarding).first()) is not None and state.is_live:
            raise GoLiveRefused(f"{onboarding.connection.name} is live already: roll it back before another go-live.")
        problems = readiness(onboarding)
        if problems:
            raise GoLiveRefused("The go-live cannot be scheduled yet. " + " ".join(problems))
        approval = gates.live_approval(onboarding, GATE_KEY)
        plan = latest_plan(onboarding)
        assert approval is not None and plan is not None
        if (held := active_schedule(onboarding)) is not None:
            raise GoLiveRefused(f"A go-live is already scheduled for {_local(held.opens_at, tenant)}. Cancel it first.")
        if reason:
            opens, closes = now, None
        elif plan.window_choice == WindowChoice.CHOSEN:
            assert plan.window_starts_at is not None
            occurrence = windows.occurrence_starting(tenant, plan.window_starts_at)
            if occurrence is None or occurrence.ends_at <= now:
                raise GoLiveRefused(
                    "The plan's chosen window has passed or is no longer kept: choose another in the plan, or give an "
                    "emergency override with its reason."
                )
            opens, closes = max(occurrence.starts_at, now), occurrence.ends_at
        else:
            occurrence = windows.next_window(tenant, now)
            if occurrence is None:
                raise GoLiveRefused(f"{tenant.name} keeps no change windows: add one, or give an emergency override.")
            opens, closes = max(occurrence.starts_at, now), occurrence.ends_at
        schedule = GoLiveSchedule.objects.create(
            onboarding=onboarding,
            plan=plan,
            approval=approval,
            opens_at=opens,
            closes_at=closes,
            override_reason=reason,
            requested_by=user if isinstance(user, AuthUser) else None,
        )
        detail = {"opens_at": opens.isoformat(), "plan_version": plan.version, "approval": str(approval.code)}
        if reason:
            audit.record(
                action="go_live.override",
                actor=user,
                tenant=tenant,
                obj=schedule,
                request=request,
                detail={**detail, "reason": reason[:300]},
            )
        else:
            audit.record(
                action="go_live.schedule", actor=user, tenant=tenant, obj=schedule, request=request, detail=detail
            )
        _tell_approvers(schedule, user)
    return schedule


def cancel_schedule(*, user: User, schedule: GoLiveSchedule, request: HttpRequest | None = None) -> None:
    require_perm(user, EDIT_PERM, schedule.onboarding.tenant)
    with transaction.atomic():
        changed = GoLiveSchedule.objects.filter(pk=schedule.pk, status=ScheduleStatus.SCHEDULED).update(
            status=ScheduleStatus.CANCELLED, status_note=f"Cancelled by {user.get_username()}."
        )
        if not changed:
            raise GoLiveRefused("This go-live is no longer waiting for its window.")
        audit.record(
            action="go_live.cancel", actor=user, tenant=schedule.onboarding.tenant, obj=schedule, request=request
        )


def start_refusal(onboarding: Onboarding, *, at: datetime | None = None) -> str | None:
    """None when a go-live may start now (in a change window, or under an override); else why not."""
    now = at or timezone.now()
    if windows.window_at(onboarding.tenant, now) is not None:
        return None
    if onboarding.go_live_schedules.filter(
        status=ScheduleStatus.SCHEDULED, opens_at__lte=now, override_reason__gt=""
    ).exists():
        return None
    upcoming = windows.next_window(onboarding.tenant, now)
    nxt = f" The next opens {_local(upcoming.starts_at, onboarding.tenant)}." if upcoming else ""
    return (
        f"It is outside {onboarding.tenant.name}'s change windows.{nxt} Schedule the go-live for a window, or give an "
        "emergency override with its reason."
    )


def due_schedules(*, at: datetime | None = None) -> list[GoLiveSchedule]:
    """Go-lives whose window has opened and that have no run yet (beat starts each)."""
    now = at or timezone.now()
    return list(
        GoLiveSchedule.objects.filter(status=ScheduleStatus.SCHEDULED, opens_at__lte=now).select_related(
            "onboarding__tenant", "onboarding__connection", "requested_by"
        )
    )


def mark_started(schedule: GoLiveSchedule, run: StepRun) -> None:
    GoLiveSchedule.objects.filter(pk=schedule.pk, status=ScheduleStatus.SCHEDULED).update(
        status=ScheduleStatus.STARTED, run=run, status_note=f"attempt {run.attempt}"
    )


def mark_refused(schedule: GoLiveSchedule, why: str) -> None:
    """The window opened but the go-live could not start (an approval voided since, a window missed)."""
    with transaction.atomic():
        changed = GoLiveSchedule.objects.filter(pk=schedule.pk, status=ScheduleStatus.SCHEDULED).update(
            status=ScheduleStatus.REFUSED, status_note=why[:300]
        )
        if changed:
            audit.record(
                action="go_live.refused", tenant=schedule.onboarding.tenant, obj=schedule, detail={"reason": why[:300]}
            )


def missed(schedule: GoLiveSchedule, *, at: datetime | None = None) -> bool:
    """Whether the schedule's window closed before anything started it (beat was down throughout)."""
    now = at or timezone.now()
    return schedule.closes_at is not None and schedule.closes_at <= now


# --- cutover, rollback, promotion ---------------------------------------------------------------


@dataclass(frozen=True)
class CutoverFacts:
    stage: str
    pilot_percent: int
    live_since: datetime
    hypercare_until: datetime


def cutover(*, onboarding: Onboarding, run: StepRun, probe_patient_id: str) -> CutoverFacts:
    """Switch the connection to production and mark it live at the plan's rollout stage; audited."""
    plan = latest_plan(onboarding)
    if plan is None:
        raise GoLiveRefused("There is no go-live plan.")
    validate, _ = bound_runs(onboarding)
    now = timezone.now()
    with transaction.atomic():
        connection = EHRConnection.objects.select_for_update().get(pk=onboarding.connection_id)
        before = {"environment": connection.environment}
        # Not save(): the switch is the go-live's, not an edit of the connection. The pre-flight has
        # checked what the model would (no plain http in production; EHRConnection.plain_http_problems).
        EHRConnection.objects.filter(pk=connection.pk).update(environment=Environment.PRODUCTION)
        stage = LiveStage.PILOT if plan.rollout == Rollout.PILOT else LiveStage.FULL
        hypercare_until = now + timedelta(days=settings.GO_LIVE_HYPERCARE_DAYS)
        state, _ = LiveState.objects.update_or_create(
            onboarding=onboarding,
            defaults={
                "tenant_id": onboarding.tenant_id,
                "stage": stage,
                "pilot_percent": plan.pilot_percent if stage == LiveStage.PILOT else 0,
                "live_since": now,
                "phase": LivePhase.HYPERCARE,
                "hypercare_until": hypercare_until,
                "handed_off_at": None,
                "handed_off_by": None,
                "go_live_run": run,
                "baseline_run": validate,
                "probe_patient_id": probe_patient_id,
                "hypercare_contacts": plan.hypercare_contacts,
                "before_cutover": before,
            },
        )
        readapi.forget_callers()  # the read API in this process sees the change at once
        audit.record(
            action="go_live.cutover",
            tenant=onboarding.tenant,
            obj=state,
            detail={"stage": stage, "pilot_percent": state.pilot_percent, "run": str(run.code), "before": before},
        )
        link = reverse("go_live", kwargs={"code": onboarding.connection.code})
        share = f" (a pilot for {state.pilot_percent}% of patients)" if stage == LiveStage.PILOT else ""
        notify(
            kind=NotificationKind.GO_LIVE_DONE,
            recipients=_people_to_tell(onboarding, plan.hypercare_contacts),
            subject=f"{onboarding.connection.name} is live",
            body=f"{onboarding.connection.name} of {onboarding.tenant.name} went live{share}. Hypercare runs until "
            f"{_local(hypercare_until, onboarding.tenant)}.",
            link=link,
            key=f"go_live:{run.code}:done",
            tenant=onboarding.tenant,
        )
    return CutoverFacts(stage, state.pilot_percent, now, hypercare_until)


def may_roll_back(user: User, onboarding: Onboarding) -> bool:
    """Customer success, and the tenant's approvers, may roll a live connection back."""
    if user.has_perm("connections.change_ehrconnection"):
        return True
    return not is_vendor_staff(user) and user.has_perm("portal.approve_gates", onboarding.tenant)


def rollback(
    *, user: User | None, onboarding: Onboarding, reason: str, request: HttpRequest | None = None
) -> LiveState:
    """Put the connection back as it was before go-live and stop serving the product; audited.

    ``user`` None is the go-live step itself, rolling back when its first checks fail.
    """
    if user is not None and not may_roll_back(user, onboarding):
        raise PermissionDenied("Only customer success and the hospital's approvers may roll a go-live back.")
    reason = reason.strip()
    if not reason:
        raise GoLiveRefused("Say why you roll it back: the reason goes to the hospital's approvers.", field="reason")
    if len(reason) > MAX_REASON:
        raise GoLiveRefused(f"Keep the reason under {MAX_REASON:,} characters.", field="reason")
    with transaction.atomic():
        state = LiveState.objects.select_for_update().filter(onboarding=onboarding).first()
        if state is None or not state.is_live:
            raise GoLiveRefused(f"{onboarding.connection.name} is not live: there is nothing to roll back.")
        before = dict(state.before_cutover or {})
        environment = before.get("environment", Environment.SANDBOX)
        EHRConnection.objects.filter(pk=onboarding.connection_id).update(environment=environment)
        was = state.stage
        state.stage = LiveStage.NOT_LIVE
        state.pilot_percent = 0
        state.save(update_fields=["stage", "pilot_percent", "updated_at"])
        readapi.forget_callers()
        audit.record(
            action="go_live.rollback",
            actor=user,
            tenant=onboarding.tenant,
            obj=state,
            request=request,
            detail={"was": was, "reason": reason[:300], "restored": {"environment": environment}},
        )
        who = user.get_username() if user is not None else "The go-live step"
        notify(
            kind=NotificationKind.GO_LIVE_ROLLED_BACK,
            recipients=_people_to_tell(onboarding, state.hypercare_contacts),
            subject=f"{onboarding.connection.name} was rolled back",
            body=f"{who} rolled {onboarding.connection.name} back to its state before go-live. "
            "Open the go-live page for the reason.",
            link=reverse("go_live", kwargs={"code": onboarding.connection.code}),
            key=f"go_live:{onboarding.code}:rollback:{timezone.now().timestamp()}",
            tenant=onboarding.tenant,
            actor=user if isinstance(user, AuthUser) else None,
        )
    return state


def promote(*, user: User, onboarding: Onboarding, request: HttpRequest | None = None) -> LiveState:
    """Promote a pilot to full: every patient is served from now on; audited."""
    if not may_roll_back(user, onboarding):
        raise PermissionDenied("Only customer success and the hospital's approvers may promote a pilot.")
    with transaction.atomic():
        state = LiveState.objects.select_for_update().filter(onboarding=onboarding).first()
        if state is None or state.stage != LiveStage.PILOT:
            raise GoLiveRefused(f"{onboarding.connection.name} is not in a pilot: there is nothing to promote.")
        share = state.pilot_percent
        state.stage = LiveStage.FULL
        state.save(update_fields=["stage", "updated_at"])
        readapi.forget_callers()
        audit.record(
            action="go_live.promote",
            actor=user,
            tenant=onboarding.tenant,
            obj=state,
            request=request,
            detail={"from_pilot_percent": share},
        )
    return state


# --- helpers ----------------------------------------------------------------------------------------


def _local(moment: datetime, tenant: Any) -> str:
    return f"{moment.astimezone(gates.tenant_zone(tenant)):%a %Y-%m-%d %H:%M %Z}"


def _people_to_tell(onboarding: Onboarding, contacts: list[dict[str, Any]]) -> list[AuthUser]:
    people = {user.pk: user for user in approvers_of(onboarding.tenant)}
    ids = [int(c["user_id"]) for c in contacts if c.get("user_id")]
    for user in AuthUser.objects.filter(pk__in=ids, is_active=True):
        people.setdefault(user.pk, user)
    return list(people.values())


def _tell_approvers(schedule: GoLiveSchedule, user: User) -> None:
    onboarding = schedule.onboarding
    tenant = onboarding.tenant
    name = onboarding.connection.name
    link = reverse("go_live", kwargs={"code": onboarding.connection.code})
    if schedule.override_reason:
        notify(
            kind=NotificationKind.GO_LIVE_OVERRIDE,
            recipients=approvers_of(tenant),
            subject=f"Emergency go-live of {name} outside your change windows",
            body=f"{user.get_username()} starts the go-live of {name} now, outside {tenant.name}'s change windows, "
            "with an emergency override. Open the go-live page for the reason.",
            link=link,
            key=f"go_live:{schedule.code}:override",
            tenant=tenant,
            actor=user if isinstance(user, AuthUser) else None,
        )
        return
    wait = format_duration(schedule.opens_at - timezone.now()) if schedule.opens_at > timezone.now() else "now"
    notify(
        kind=NotificationKind.GO_LIVE_SCHEDULED,
        recipients=approvers_of(tenant),
        subject=f"Go-live of {name} scheduled for {_local(schedule.opens_at, tenant)}",
        body=f"The go-live of {name} starts when the change window opens "
        f"({_local(schedule.opens_at, tenant)}, in {wait}).",
        link=link,
        key=f"go_live:{schedule.code}:scheduled",
        tenant=tenant,
        actor=user if isinstance(user, AuthUser) else None,
    )
