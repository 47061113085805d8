"""Every change to people, each checked and written with its audit event in one transaction.

Hospital people: invite (by email, with a role), resend, revoke, accept; change a role; remove.
Vendor staff: invite, deactivate, assign to tenants. A refusal is a PeopleError whose message says
what to do instead; nothing is written then.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from portal import audit, twofactor
from portal.access import AuthUser, User, require_perm
from portal.models import (
    HospitalRole,
    Invitation,
    InvitationStatus,
    Membership,
    StaffAssignment,
    StaffRole,
    Tenant,
)
from portal.people import selectors, tokens
from portal.people.pending import pending_approvals_count
from portal.people.sessions import Ended, end_sessions_and_tokens
from portal.roles import CUSTOMER_SUCCESS, ENGINEERS, HOSPITAL_IT, HOSPITAL_ROLE_PERMS, HOSPITAL_TENANT_PERMS

STAFF_ROLE_GROUPS = {StaffRole.CUSTOMER_SUCCESS: CUSTOMER_SUCCESS, StaffRole.ENGINEER: ENGINEERS}


class PeopleError(Exception):
    """A refused change to people; the message says what to do instead."""


class AlreadyMember(PeopleError):
    """The person invited is a member of the tenant already."""


class InvitationUnusable(PeopleError):
    """The link is not valid, was replaced, expired, used or revoked (`reason` says which)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class WrongAccount(PeopleError):
    """Someone is signed in, and the invitation is for somebody else."""


class LastApproverPending(PeopleError):
    """The change leaves a tenant with approvals waiting and nobody to decide them."""

    def __init__(self, message: str, *, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


# --- Hospital members --------------------------------------------------------------------------


def _sync_tenant_perms(user: AuthUser, tenant: Tenant, role: str | None) -> None:
    """Give the object permissions of the role on the tenant and take back the others (None: all)."""
    wanted = set(HOSPITAL_ROLE_PERMS[role]) if role else set()
    for perm in HOSPITAL_TENANT_PERMS:
        if perm in wanted:
            assign_perm(perm, user, tenant)
        else:
            remove_perm(perm, user, tenant)


@transaction.atomic
def add_member(
    *,
    tenant: Tenant,
    user: AuthUser,
    role: str,
    actor: AuthUser | None = None,
    request: HttpRequest | None = None,
) -> Membership:
    """Make the user a person of this tenant with this role (or give an existing member this role).

    No permission check: invitations (accepted by the invitee) and set-up code call it. People
    are otherwise added only by accepting an invitation.
    """
    if role not in HospitalRole.values:
        raise PeopleError(f"“{role}” is not a hospital role; use one of {', '.join(HospitalRole.values)}.")
    membership, created = Membership.objects.get_or_create(
        tenant=tenant, user=user, defaults={"role": role, "created_by": actor}
    )
    if not created and membership.role == role:
        return membership
    old_role = None if created else membership.role
    if not created:
        membership.role = role
        membership.save(update_fields=["role"])
    user.groups.add(Group.objects.get(name=HOSPITAL_IT))
    _sync_tenant_perms(user, tenant, role)
    audit.record(
        action="member.add" if created else "member.role_change",
        actor=actor,
        tenant=tenant,
        obj=membership,
        request=request,
        detail={"user": user.get_username(), "role": role, **({"from": old_role} if old_role else {})},
    )
    return membership


def _refuse_self(actor: User, membership: Membership, what: str) -> None:
    if actor.is_authenticated and actor.pk == membership.user_id:
        raise PeopleError(f"You cannot {what} yourself. Ask customer success or another hospital admin.")


def _check_last_approver(membership: Membership, *, confirmed: bool, what: str) -> None:
    """Refuse, unless confirmed, to leave a tenant with approvals waiting and no approver left."""
    if membership.role not in selectors.DECIDING_ROLES:
        return
    others = selectors.approvers_of(membership.tenant).exclude(pk=membership.user_id)
    if others.exists():
        return
    pending = pending_approvals_count(membership.tenant)
    if pending and not confirmed:
        name = membership.user.get_full_name() or membership.user.get_username()
        raise LastApproverPending(
            f"{name} is the last approver of {membership.tenant.name}, and {pending} approval"
            f"{'s are' if pending != 1 else ' is'} waiting for a decision. If you {what}, nobody can decide "
            f"{'them' if pending != 1 else 'it'} until you add another approver. Confirm to go ahead.",
            pending=pending,
        )


@transaction.atomic
def change_role(
    *,
    actor: User,
    membership: Membership,
    role: str,
    request: HttpRequest | None = None,
    confirm_last_approver: bool = False,
) -> Membership:
    """Give a member another hospital role; their permissions on the tenant follow at once."""
    require_perm(actor, "portal.manage_members", membership.tenant)
    if role not in HospitalRole.values:
        raise PeopleError(f"Choose a role: {', '.join(label for _, label in HospitalRole.choices)}.")
    # Locks the tenant's row too, so two changes to one tenant's people take turns and the
    # last-approver check cannot be raced.
    membership = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
    if membership.role == role:
        return membership
    _refuse_self(actor, membership, "change the role of")
    if role not in selectors.DECIDING_ROLES:
        _check_last_approver(membership, confirmed=confirm_last_approver, what="make them a viewer")
    old_role = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    _sync_tenant_perms(membership.user, membership.tenant, role)
    audit.record(
        action="member.role_change",
        actor=actor,
        tenant=membership.tenant,
        obj=membership,
        request=request,
        detail={"user": membership.user.get_username(), "from": old_role, "role": role},
    )
    return membership


@dataclass(frozen=True)
class Removal:
    """What removing a member did."""

    username: str
    ended: Ended
    deactivated: bool


@transaction.atomic
def remove_member(
    *,
    actor: User,
    membership: Membership,
    request: HttpRequest | None = None,
    confirm_last_approver: bool = False,
) -> Removal:
    """Take a person off a tenant: permissions, sessions and API tokens end at once.

    A person left with no tenant is deactivated too (a new invitation brings them back).
    """
    require_perm(actor, "portal.manage_members", membership.tenant)
    membership = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
    _refuse_self(actor, membership, "remove")
    _check_last_approver(membership, confirmed=confirm_last_approver, what="remove them")
    user, tenant, role = membership.user, membership.tenant, membership.role
    membership.delete()
    _sync_tenant_perms(user, tenant, None)
    # Ended first, so the count is of what this removal ended (deactivating also drops tokens).
    ended = end_sessions_and_tokens(user)
    deactivated = False
    if not Membership.objects.filter(user=user).exists():
        user.groups.remove(Group.objects.get(name=HOSPITAL_IT))
        if not selectors.is_vendor_person(user):
            user.is_active = False
            user.save(update_fields=["is_active"])
            deactivated = True
    audit.record(
        action="member.remove",
        actor=actor,
        tenant=tenant,
        obj=user,
        request=request,
        detail={
            "user": user.get_username(),
            "role": role,
            "sessions_ended": ended.sessions,
            "tokens_revoked": ended.tokens,
            "deactivated": deactivated,
            "confirmed_last_approver": confirm_last_approver,
        },
    )
    return Removal(username=user.get_username(), ended=ended, deactivated=deactivated)


# --- Invitations --------------------------------------------------------------------------------


def _clean_email(email: str) -> str:
    address = (email or "").strip().lower()
    try:
        validate_email(address)
    except ValidationError:
        raise PeopleError(f"“{email}” is not an email address. Type the person's work email.") from None
    if len(address) > 150:
        raise PeopleError("That email address is too long for a user name (150 characters at most).")
    return address


def _account_for(email: str) -> AuthUser | None:
    User = get_user_model()
    return User.objects.filter(username__iexact=email).first() or User.objects.filter(email__iexact=email).first()


def _expiry() -> datetime:
    return timezone.now() + timedelta(hours=settings.INVITATION_TTL_HOURS)


def accept_path(token: str) -> str:
    """The path of the accept page for a link's token."""
    return reverse("invitation_accept", kwargs={"token": token})


@transaction.atomic
def invite_to_tenant(
    *, actor: User, tenant: Tenant, email: str, role: str, request: HttpRequest | None = None
) -> Invitation:
    """Invite a person to a tenant with a hospital role; the email carries the single-use link."""
    require_perm(actor, "portal.manage_members", tenant)
    if role not in HospitalRole.values:
        raise PeopleError(f"Choose a role: {', '.join(label for _, label in HospitalRole.choices)}.")
    address = _clean_email(email)
    existing = _account_for(address)
    if existing is not None and selectors.is_vendor_person(existing):
        raise PeopleError(
            f"{address} belongs to vendor staff. Vendor staff are assigned to hospitals, not invited: "
            "use “Assign vendor staff” below."
        )
    if existing is not None:
        membership = Membership.objects.filter(tenant=tenant, user=existing).first()
        if membership is not None:
            raise AlreadyMember(
                f"{address} is already a member of {tenant.name} as {membership.get_role_display()}. "
                "Change their role in the members list instead."
            )
    _refuse_pending_duplicate(selectors.pending_invitations_of(tenant), address)
    return _create_invitation(actor=actor, tenant=tenant, email=address, role=role, request=request)


@transaction.atomic
def invite_staff(*, actor: User, email: str, role: str, request: HttpRequest | None = None) -> Invitation:
    """Invite customer success or an engineer to the vendor's staff (vendor administrators only)."""
    require_perm(actor, "portal.manage_staff")
    if role not in StaffRole.values:
        raise PeopleError(f"Choose a role: {', '.join(label for _, label in StaffRole.choices)}.")
    address = _clean_email(email)
    existing = _account_for(address)
    if existing is not None:
        raise PeopleError(
            f"{address} has an account already ({existing.get_username()}). "
            "Vendor staff need an account of their own; use another address."
        )
    _refuse_pending_duplicate(selectors.pending_invitations_of(None), address)
    return _create_invitation(actor=actor, tenant=None, email=address, role=role, request=request)


def _refuse_pending_duplicate(pending: QuerySet[Invitation], address: str) -> None:
    live = pending.filter(email=address, expires_at__gt=timezone.now()).first()
    if live is not None:
        raise PeopleError(
            f"{address} was invited on {live.last_sent_at:%Y-%m-%d} and has not answered yet. "
            "Resend that invitation from the pending invitations instead."
        )


def _create_invitation(
    *, actor: User, tenant: Tenant | None, email: str, role: str, request: HttpRequest | None
) -> Invitation:
    secret, secret_hash = tokens.new_secret()
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role,
        secret_hash=secret_hash,
        expires_at=_expiry(),
        created_by=actor if actor.is_authenticated else None,
    )
    audit.record(
        action="invitation.create",
        actor=actor,
        tenant=tenant,
        obj=invitation,
        request=request,
        detail={"email": email, "role": role, "kind": "staff" if tenant is None else "hospital"},
    )
    _email_invitation(invitation, tokens.make_token(invitation.code, secret), actor=actor)
    return invitation


def require_manage_invitation(actor: User, invitation: Invitation) -> None:
    """Refuse (403) someone who may see the invitation but not resend or revoke it."""
    if invitation.tenant is None:
        require_perm(actor, "portal.manage_staff")
    else:
        require_perm(actor, "portal.manage_members", invitation.tenant)


def _locked(invitation: Invitation) -> Invitation:
    return (
        Invitation.objects.select_for_update(of=("self",)).select_related("tenant", "created_by").get(pk=invitation.pk)
    )


@transaction.atomic
def resend_invitation(*, actor: User, invitation: Invitation, request: HttpRequest | None = None) -> Invitation:
    """Send a new link with a new expiry; the link sent before stops working at once."""
    require_manage_invitation(actor, invitation)
    invitation = _locked(invitation)
    if invitation.status == InvitationStatus.ACCEPTED:
        raise PeopleError(f"{invitation.email} accepted this invitation already; there is nothing to resend.")
    if invitation.status == InvitationStatus.REVOKED:
        raise PeopleError("This invitation was revoked. Invite the person again instead.")
    secret, invitation.secret_hash = tokens.new_secret()
    invitation.sends += 1
    invitation.expires_at = _expiry()
    invitation.last_sent_at = timezone.now()
    invitation.save(update_fields=["secret_hash", "sends", "expires_at", "last_sent_at"])
    audit.record(
        action="invitation.resend",
        actor=actor,
        tenant=invitation.tenant,
        obj=invitation,
        request=request,
        detail={"email": invitation.email, "send": invitation.sends},
    )
    _email_invitation(invitation, tokens.make_token(invitation.code, secret), actor=actor)
    return invitation


@transaction.atomic
def revoke_invitation(*, actor: User, invitation: Invitation, request: HttpRequest | None = None) -> Invitation:
    """Withdraw an invitation; its link stops working at once."""
    require_manage_invitation(actor, invitation)
    invitation = _locked(invitation)
    if invitation.status == InvitationStatus.ACCEPTED:
        raise PeopleError(
            f"{invitation.email} accepted this invitation already. Remove them from the members list instead."
        )
    if invitation.status == InvitationStatus.REVOKED:
        raise PeopleError("This invitation was revoked already.")
    invitation.status = InvitationStatus.REVOKED
    invitation.revoked_at = timezone.now()
    invitation.revoked_by = actor if actor.is_authenticated else None
    invitation.save(update_fields=["status", "revoked_at", "revoked_by"])
    audit.record(
        action="invitation.revoke",
        actor=actor,
        tenant=invitation.tenant,
        obj=invitation,
        request=request,
        detail={"email": invitation.email},
    )
    return invitation


def _email_invitation(invitation: Invitation, token: str, *, actor: User) -> None:
    """The invitation email: the hospital, the role, the link and its expiry, nothing else (no PHI)."""
    from portal.notifications.services import notify_address

    inviter = (actor.get_full_name() or actor.get_username()) if actor.is_authenticated else "The portal team"
    where = invitation.tenant.name if invitation.tenant else "the vendor's onboarding team"
    expires = f"{invitation.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    body = (
        f"{inviter} invited you to {where} on the hospital onboarding portal, as {invitation.role_label}.\n\n"
        f"Open the link below to choose your password. It works once, and until {expires}."
    )
    notify_address(
        kind="invitation",
        email=invitation.email,
        subject=f"You are invited to {where} as {invitation.role_label}",
        body=body,
        link=accept_path(token),
        key=f"invitation:{invitation.code}:{invitation.sends}",
        tenant=invitation.tenant,
    )


# --- Accepting -----------------------------------------------------------------------------------


def _unusable(invitation: Invitation | None, secret: str | None) -> InvitationUnusable | None:
    """Why this link cannot be used, or None if it can."""
    if invitation is None or secret is None:
        return InvitationUnusable(
            "This invitation link is not valid. Copy the whole link from the email, or ask for a new invitation.",
            reason="invalid",
        )
    if invitation.status == InvitationStatus.REVOKED:
        return InvitationUnusable(
            "This invitation was withdrawn. Ask the person who invited you for a new one.", reason="revoked"
        )
    if invitation.status == InvitationStatus.ACCEPTED:
        return InvitationUnusable(
            "This invitation was used already. Log in with your email address and the password you chose.",
            reason="used",
        )
    if not tokens.secret_matches(secret, invitation.secret_hash):
        return InvitationUnusable(
            "This link was replaced by a newer invitation email. Open the link in the latest email, "
            "or ask the person who invited you to send it again.",
            reason="replaced",
        )
    if invitation.is_expired:
        return InvitationUnusable(
            f"This invitation expired on {invitation.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC. "
            "Ask the person who invited you to send it again.",
            reason="expired",
        )
    return None


def invitation_for_link(token: str) -> Invitation:
    """The invitation a link opens, if it can still be accepted; else InvitationUnusable saying why."""
    read = tokens.read_token(token)
    invitation = None
    if read is not None and _uuid_or_none(read.code) is not None:
        invitation = Invitation.objects.select_related("tenant", "created_by").filter(code=read.code).first()
    problem = _unusable(invitation, read.secret if read else None)
    if problem is not None:
        raise problem
    assert invitation is not None  # _unusable refuses a missing one
    return invitation


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def existing_account(invitation: Invitation) -> AuthUser | None:
    """The active account the invitation's address already has, if any (it joins instead of signing up)."""
    account = _account_for(invitation.email)
    return account if account is not None and account.is_active else None


def check_signed_in(user: User, invitation: Invitation) -> None:
    """Refuse someone signed in as another person than the invitee."""
    if not user.is_authenticated:
        return
    account = _account_for(invitation.email)
    if account is None or account.pk != user.pk:
        raise WrongAccount(
            f"You are signed in as {user.get_username()}, but this invitation is for {invitation.email}. "
            "Log out, then open the link again."
        )


@dataclass(frozen=True)
class Acceptance:
    """Who accepted, and whether they must set up a second factor before they can work."""

    user: AuthUser
    invitation: Invitation
    created: bool
    two_factor_required: bool


def _split_name(full_name: str) -> tuple[str, str]:
    first, _, last = " ".join(full_name.split()).partition(" ")
    return first[:150], last[:150]


@transaction.atomic
def accept_invitation(
    *,
    token: str,
    user: User,
    full_name: str = "",
    password: str = "",
    request: HttpRequest | None = None,
) -> Acceptance:
    """Accept an invitation: a new account sets its name and password; a signed-in invitee just joins.

    The invitation row is locked, so two clicks (or two tabs) accept it once.
    """
    found = invitation_for_link(token)
    invitation = _locked(found)
    read = tokens.read_token(token)
    problem = _unusable(invitation, read.secret if read else None)
    if problem is not None:
        raise problem
    check_signed_in(user, invitation)
    account = _account_for(invitation.email)
    if account is not None and selectors.is_vendor_person(account):
        raise PeopleError(f"{invitation.email} belongs to vendor staff, who are assigned to hospitals, not invited.")
    created = False
    if user.is_authenticated:
        assert isinstance(user, get_user_model())
        account = user
        if invitation.tenant is None:
            raise PeopleError("You have an account already; a staff invitation is for a new account.")
    elif account is not None and account.is_active:
        raise PeopleError(
            f"{invitation.email} has an account already. Log in first, then open this link again to join "
            f"{invitation.tenant.name if invitation.tenant else 'the team'}."
        )
    else:
        account = _set_up_account(account, invitation=invitation, full_name=full_name, password=password)
        created = True
    if invitation.tenant is not None:
        add_member(tenant=invitation.tenant, user=account, role=invitation.role, actor=account, request=request)
    else:
        account.groups.add(Group.objects.get(name=STAFF_ROLE_GROUPS[StaffRole(invitation.role)]))
    invitation.status = InvitationStatus.ACCEPTED
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = account
    invitation.save(update_fields=["status", "accepted_at", "accepted_by"])
    audit.record(
        action="invitation.accept",
        actor=account,
        tenant=invitation.tenant,
        obj=invitation,
        request=request,
        detail={"user": account.get_username(), "role": invitation.role, "new_account": created},
    )
    return Acceptance(
        user=account,
        invitation=invitation,
        created=created,
        two_factor_required=twofactor.requires_two_factor(account) and not twofactor.has_device(account),
    )


def _set_up_account(account: AuthUser | None, *, invitation: Invitation, full_name: str, password: str) -> AuthUser:
    """A new account for the invitee, or a deactivated one of theirs brought back with the new password."""
    first, last = _split_name(full_name)
    if not first:
        raise ValidationError({"full_name": "Enter your name, as your colleagues know you."})
    User = get_user_model()
    if account is None:
        account = User(username=invitation.email, email=invitation.email)
    account.first_name, account.last_name = first, last
    account.email = invitation.email
    try:
        validate_password(password, user=account)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from None
    account.set_password(password)
    account.is_active = True
    account.save()
    return account


# --- Vendor staff -------------------------------------------------------------------------------


def assign_without_check(
    *, tenant: Tenant, member: AuthUser, actor: AuthUser | None = None, request: HttpRequest | None = None
) -> StaffAssignment:
    """Assign staff to a tenant (idempotent) for callers that checked already, e.g. the tenant's creator.

    Staff without the global permission to see every tenant get to see this one.
    """
    assignment, created = StaffAssignment.objects.get_or_create(
        tenant=tenant, user=member, defaults={"created_by": actor}
    )
    if not member.has_perm("portal.view_all_tenants"):
        assign_perm("portal.access_tenant", member, tenant)
    if created:
        audit.record(
            action="staff.assign",
            actor=actor,
            tenant=tenant,
            obj=assignment,
            request=request,
            detail={"user": member.get_username()},
        )
    return assignment


@transaction.atomic
def assign_staff(
    *, actor: User, tenant: Tenant, member: AuthUser, request: HttpRequest | None = None
) -> StaffAssignment:
    """Assign a vendor staff member to a tenant: it becomes one of "my hospitals" for them."""
    require_perm(actor, "portal.assign_staff")
    if not member.is_active or not selectors.is_vendor_person(member):
        raise PeopleError(
            f"{member.get_username()} is not active vendor staff. People of the hospital are invited instead."
        )
    if StaffAssignment.objects.filter(tenant=tenant, user=member).exists():
        raise PeopleError(f"{member.get_username()} is assigned to {tenant.name} already.")
    return assign_without_check(
        tenant=tenant, member=member, actor=actor if actor.is_authenticated else None, request=request
    )


@transaction.atomic
def unassign_staff(*, actor: User, assignment: StaffAssignment, request: HttpRequest | None = None) -> None:
    """End a staff assignment; staff who see a tenant only through it stop seeing it."""
    require_perm(actor, "portal.assign_staff")
    member, tenant = assignment.user, assignment.tenant
    assignment.delete()
    if not member.has_perm("portal.view_all_tenants"):
        remove_perm("portal.access_tenant", member, tenant)
    audit.record(
        action="staff.unassign",
        actor=actor,
        tenant=tenant,
        obj=member,
        request=request,
        detail={"user": member.get_username()},
    )


@transaction.atomic
def deactivate_staff(*, actor: User, member: AuthUser, request: HttpRequest | None = None) -> Ended:
    """Deactivate a vendor staff member: they can no longer sign in, and their sessions and tokens end now."""
    require_perm(actor, "portal.manage_staff")
    if actor.is_authenticated and actor.pk == member.pk:
        raise PeopleError("You cannot deactivate yourself. Ask another vendor administrator.")
    if member.is_superuser and not getattr(actor, "is_superuser", False):
        raise PeopleError("Only a superuser can deactivate a superuser.")
    if not member.is_active:
        raise PeopleError(f"{member.get_username()} is deactivated already.")
    member.is_active = False
    member.save(update_fields=["is_active"])
    ended = end_sessions_and_tokens(member)
    audit.record(
        action="staff.deactivate",
        actor=actor,
        obj=member,
        request=request,
        detail={"user": member.get_username(), "sessions_ended": ended.sessions, "tokens_revoked": ended.tokens},
    )
    return ended


@transaction.atomic
def create_vendor_admin(
    *, username: str, email: str, password: str, first_name: str = "", last_name: str = ""
) -> AuthUser:
    """The first vendor administrator (manage.py create_vendor_admin); everyone else is invited.

    The second factor is enrolled at first login, as for all vendor staff.
    """
    from portal.roles import VENDOR_ADMINS

    User = get_user_model()
    if User.objects.filter(username__iexact=username).exists():
        raise PeopleError(f"A user named {username} exists already. Choose another user name.")
    address = _clean_email(email)
    user = User(username=username, email=address, first_name=first_name, last_name=last_name)
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise PeopleError("The password is not good enough: " + " ".join(exc.messages)) from None
    user.set_password(password)
    user.save()
    user.groups.add(Group.objects.get(name=VENDOR_ADMINS))
    audit.record(
        action="staff.vendor_admin_created",
        obj=user,
        actor_label="manage.py create_vendor_admin",
        detail={"user": username},
    )
    return user
