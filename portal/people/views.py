"""People pages: a tenant's members and invitations, accepting an invitation, vendor staff.

Thin views: objects come through the selectors' access helpers (404 for another tenant's), the
services check permissions (403) and refuse bad changes with a message to show.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.access import get_tenant_for_user, require_perm
from portal.models import HospitalRole, Membership, Tenant
from portal.people import selectors, services
from portal.people.forms import AcceptForm, AssignStaffForm, InviteForm, RemoveForm, RoleForm, StaffInviteForm
from portal.people.pending import pending_approvals_count

PAGE_SIZE = 25


def _assign_choices(tenant: Tenant) -> list[tuple[str, str]]:
    return [
        (str(selectors.person_code(user)), f"{user.get_full_name() or user.get_username()} ({user.get_username()})")
        for user in selectors.assignable_staff(tenant)[:500]
    ]


@login_required
@require_GET
def tenant_members(request: HttpRequest, code: str) -> HttpResponse:
    """The tenant's people with their roles, pending invitations and the vendor staff assigned."""
    tenant = get_tenant_for_user(request.user, code)
    can_manage = selectors.can_manage_members(request.user, tenant)
    can_assign = request.user.has_perm("portal.assign_staff")
    members = Paginator(selectors.members_of(tenant), PAGE_SIZE).get_page(request.GET.get("page"))
    invitations = None
    if can_manage:
        pending = selectors.pending_invitations_of(tenant).order_by("email")
        invitations = Paginator(pending, PAGE_SIZE).get_page(request.GET.get("ipage"))
    context: dict[str, Any] = {
        "tenant": tenant,
        "members": members,
        "invitations": invitations,
        "assignments": selectors.assignments_of(tenant),
        "can_manage": can_manage,
        "can_assign": can_assign,
        "roles": HospitalRole.choices,
        "assign_form": AssignStaffForm(choices=_assign_choices(tenant)) if can_assign else None,
    }
    return render(request, "people/members.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def invitation_create(request: HttpRequest, code: str) -> HttpResponse:
    """Invite a person to the tenant by email, with a role."""
    tenant = get_tenant_for_user(request.user, code)
    require_perm(request.user, "portal.manage_members", tenant)
    form = InviteForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                invitation = services.invite_to_tenant(
                    actor=request.user, tenant=tenant, request=request, **form.cleaned_data
                )
            except services.PeopleError as exc:
                form.add_error("email", str(exc))
            else:
                messages.success(
                    request,
                    f"Invitation sent to {invitation.email} as {invitation.role_label}. "
                    f"The link works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
                )
                return redirect("tenant_members", code=tenant.code)
    return render(request, "people/invite.html", {"tenant": tenant, "form": form}, status=status)


def _back_to(invitation_tenant: Tenant | None) -> HttpResponse:
    if invitation_tenant is None:
        return redirect("staff_list")
    return redirect("tenant_members", code=invitation_tenant.code)


@login_required
@require_POST
def invitation_resend(request: HttpRequest, code: str) -> HttpResponse:
    invitation = selectors.get_invitation_for_user(request.user, code)
    try:
        invitation = services.resend_invitation(actor=request.user, invitation=invitation, request=request)
    except services.PeopleError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"A new link was sent to {invitation.email}; the earlier one no longer works. "
            f"It works until {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
        )
    return _back_to(invitation.tenant)


@login_required
@require_http_methods(["GET", "POST"])
def invitation_revoke(request: HttpRequest, code: str) -> HttpResponse:
    """Ask for confirmation (GET), then withdraw the invitation (POST)."""
    invitation = selectors.get_invitation_for_user(request.user, code)
    services.require_manage_invitation(request.user, invitation)
    if request.method == "POST":
        try:
            services.revoke_invitation(actor=request.user, invitation=invitation, request=request)
        except services.PeopleError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"The invitation of {invitation.email} was revoked; its link no longer works.")
        return _back_to(invitation.tenant)
    context = {
        "tenant": invitation.tenant,
        "title": f"Revoke the invitation of {invitation.email}?",
        "body": "The link in their email stops working at once. You can invite them again later.",
        "action": reverse("invitation_revoke", kwargs={"code": invitation.code}),
        "button": "Revoke invitation",
        "cancel": _cancel_url(invitation.tenant),
    }
    return render(request, "people/confirm.html", context)


def _cancel_url(tenant: Tenant | None) -> str:
    return reverse("staff_list") if tenant is None else reverse("tenant_members", kwargs={"code": tenant.code})


def _last_approver_warning(membership: Membership) -> str:
    """The warning the confirmation shows when this member is the last approver with approvals waiting."""
    if membership.role not in selectors.DECIDING_ROLES:
        return ""
    if selectors.approvers_of(membership.tenant).exclude(pk=membership.user_id).exists():
        return ""
    pending = pending_approvals_count(membership.tenant)
    if not pending:
        return ""
    return (
        f"{_name(membership)} is the last approver of {membership.tenant.name}, and {pending} "
        f"approval{'s' if pending != 1 else ''} {'are' if pending != 1 else 'is'} waiting for a decision. "
        "Nobody will be able to decide until another approver is added."
    )


def _name(membership: Membership) -> str:
    return membership.user.get_full_name() or membership.user.get_username()


@login_required
@require_POST
def member_role(request: HttpRequest, code: str) -> HttpResponse:
    """Change a member's role; taking the last approver's right to decide asks for a confirmation first."""
    membership = selectors.get_membership_for_user(request.user, code)
    require_perm(request.user, "portal.manage_members", membership.tenant)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles: viewer, approver or hospital admin.")
        return redirect("tenant_members", code=membership.tenant.code)
    role = form.cleaned_data["role"]
    try:
        services.change_role(
            actor=request.user,
            membership=membership,
            role=role,
            request=request,
            confirm_last_approver=form.cleaned_data["confirm_last_approver"],
        )
    except services.LastApproverPending as exc:
        context = {
            "tenant": membership.tenant,
            "title": f"Make {_name(membership)} a {HospitalRole(role).label.lower()}?",
            "warning": str(exc),
            "action": reverse("member_role", kwargs={"code": membership.code}),
            "hidden": {"role": role, "confirm_last_approver": "on"},
            "button": "Change the role anyway",
            "cancel": _cancel_url(membership.tenant),
        }
        return render(request, "people/confirm.html", context, status=409)
    except services.PeopleError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{_name(membership)} is now {HospitalRole(role).label.lower()}.")
    return redirect("tenant_members", code=membership.tenant.code)


@login_required
@require_http_methods(["GET", "POST"])
def member_remove(request: HttpRequest, code: str) -> HttpResponse:
    """Ask for confirmation (GET, with the last-approver warning if it applies), then remove (POST)."""
    membership = selectors.get_membership_for_user(request.user, code)
    require_perm(request.user, "portal.manage_members", membership.tenant)
    warning = _last_approver_warning(membership)
    if request.method == "POST":
        form = RemoveForm(request.POST)
        form.is_valid()
        try:
            removal = services.remove_member(
                actor=request.user,
                membership=membership,
                request=request,
                confirm_last_approver=bool(form.cleaned_data.get("confirm_last_approver")),
            )
        except services.LastApproverPending as exc:
            warning = str(exc)
        except services.PeopleError as exc:
            messages.error(request, str(exc))
            return redirect("tenant_members", code=membership.tenant.code)
        else:
            messages.success(
                request,
                f"{removal.username} was removed from {membership.tenant.name}; "
                "their sessions and API tokens ended at once.",
            )
            return redirect("tenant_members", code=membership.tenant.code)
    context = {
        "tenant": membership.tenant,
        "title": f"Remove {_name(membership)} from {membership.tenant.name}?",
        "body": "They lose access to this hospital at once: their sessions and API tokens end now.",
        "warning": warning,
        "action": reverse("member_remove", kwargs={"code": membership.code}),
        "hidden": {"confirm_last_approver": "on"} if warning else {},
        "button": "Remove anyway" if warning else "Remove",
        "cancel": _cancel_url(membership.tenant),
    }
    return render(request, "people/confirm.html", context, status=409 if request.method == "POST" else 200)


@login_required
@require_POST
def tenant_staff_assign(request: HttpRequest, code: str) -> HttpResponse:
    tenant = get_tenant_for_user(request.user, code)
    require_perm(request.user, "portal.assign_staff")
    form = AssignStaffForm(request.POST, choices=_assign_choices(tenant))
    if not form.is_valid():
        messages.error(request, "Choose a vendor staff member from the list to assign.")
        return redirect("tenant_members", code=tenant.code)
    member = selectors.vendor_staff().get(person__code=form.cleaned_data["member"])
    try:
        services.assign_staff(actor=request.user, tenant=tenant, member=member, request=request)
    except services.PeopleError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{member.get_username()} is assigned to {tenant.name}.")
    return redirect("tenant_members", code=tenant.code)


@login_required
@require_POST
def assignment_remove(request: HttpRequest, code: str) -> HttpResponse:
    assignment = selectors.get_assignment_for_user(request.user, code)
    tenant = assignment.tenant
    services.unassign_staff(actor=request.user, assignment=assignment, request=request)
    messages.success(request, f"{assignment.user.get_username()} is no longer assigned to {tenant.name}.")
    return redirect("tenant_members", code=tenant.code)


# --- Accepting an invitation (anyone with the link) ------------------------------------------------


@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """The link of the email: set a name and password (or join, if signed in as the invitee)."""
    try:
        invitation = services.invitation_for_link(token)
    except services.InvitationUnusable as exc:
        status = 404 if exc.reason == "invalid" else 410
        return render(request, "people/accept_problem.html", {"problem": str(exc)}, status=status)
    try:
        services.check_signed_in(request.user, invitation)
    except services.WrongAccount as exc:
        return render(request, "people/accept_problem.html", {"problem": str(exc), "offer_logout": True}, status=403)
    existing = services.existing_account(invitation)
    joining = request.user.is_authenticated
    must_log_in = existing is not None and not joining
    form = AcceptForm(request.POST or None) if not (joining or must_log_in) else None
    # Posting a password for an address that has an account already is refused: log in instead.
    status = 409 if request.method == "POST" and must_log_in else 200
    if request.method == "POST" and not must_log_in:
        status = 400
        if form is None or form.is_valid():
            try:
                accepted = services.accept_invitation(
                    token=token,
                    user=request.user,
                    full_name=form.cleaned_data["full_name"] if form else "",
                    password=form.cleaned_data["password"] if form else "",
                    request=request,
                )
            except ValidationError as exc:
                assert form is not None
                for field, errors in exc.message_dict.items():
                    for error in errors:
                        form.add_error(field if field in form.fields else None, error)
            except services.InvitationUnusable as exc:
                return render(request, "people/accept_problem.html", {"problem": str(exc)}, status=410)
            except services.PeopleError as exc:
                return render(request, "people/accept_problem.html", {"problem": str(exc)}, status=409)
            else:
                return _after_accept(request, accepted)
    context = {
        "invitation": invitation,
        "form": form,
        "joining": joining,
        "must_log_in": must_log_in,
        "login_url": f"{reverse('login')}?{urlencode({'next': request.get_full_path()})}",
    }
    return render(request, "people/accept.html", context, status=status)


def _after_accept(request: HttpRequest, accepted: services.Acceptance) -> HttpResponse:
    where = accepted.invitation.tenant.name if accepted.invitation.tenant else "the vendor's team"
    if not accepted.created:
        messages.success(request, f"You joined {where} as {accepted.invitation.role_label}.")
        if accepted.invitation.tenant is not None:
            return redirect("tenant_detail", code=accepted.invitation.tenant.code)
        return redirect("dashboard")
    text = (
        f"Your account is ready. Log in with your user name {accepted.user.get_username()} and the password you chose."
    )
    if accepted.two_factor_required:
        text += " Then you will set up two-factor authentication, which is required for you."
    messages.success(request, text)
    return redirect("login")


# --- Vendor staff (vendor administrators) ----------------------------------------------------------


@login_required
@require_GET
def staff_list(request: HttpRequest) -> HttpResponse:
    require_perm(request.user, "portal.manage_staff")
    staff = Paginator(selectors.vendor_staff().prefetch_related("groups"), PAGE_SIZE).get_page(request.GET.get("page"))
    pending = Paginator(selectors.pending_invitations_of(None).order_by("email"), PAGE_SIZE)
    context = {"staff": staff, "invitations": pending.get_page(request.GET.get("ipage"))}
    return render(request, "people/staff.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def staff_invite(request: HttpRequest) -> HttpResponse:
    require_perm(request.user, "portal.manage_staff")
    form = StaffInviteForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                invitation = services.invite_staff(actor=request.user, request=request, **form.cleaned_data)
            except services.PeopleError as exc:
                form.add_error("email", str(exc))
            else:
                messages.success(request, f"Invitation sent to {invitation.email} as {invitation.role_label}.")
                return redirect("staff_list")
    return render(request, "people/staff_invite.html", {"form": form}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def staff_deactivate(request: HttpRequest, code: str) -> HttpResponse:
    member = selectors.get_staff_for_user(request.user, code)
    require_perm(request.user, "portal.manage_staff")
    if request.method == "POST":
        try:
            services.deactivate_staff(actor=request.user, member=member, request=request)
        except services.PeopleError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{member.get_username()} was deactivated; their sessions and API tokens ended.")
        return redirect("staff_list")
    context = {
        "tenant": None,
        "title": f"Deactivate {member.get_full_name() or member.get_username()}?",
        "body": "They can no longer sign in; their sessions and API tokens end at once.",
        "action": reverse("staff_deactivate", kwargs={"code": code}),
        "button": "Deactivate",
        "cancel": reverse("staff_list"),
    }
    return render(request, "people/confirm.html", context)
