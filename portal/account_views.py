"""Sign-in pages beyond the password: the second factor, enrolling it, backup codes, re-authentication.

Logging in itself is Django's LoginView (django-axes counts its failures and locks the account);
the staff second factor is enforced for every other page by portal.middleware.StaffTwoFactorMiddleware.
"""

from __future__ import annotations

from base64 import b32encode
from typing import cast
from urllib.parse import urlencode

import segno
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.core.exceptions import PermissionDenied
from django.forms import Form
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import devices_for_user
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import audit, reauth, tokens, twofactor
from portal.access import AuthUser
from portal.forms import OTPTokenForm, ReauthForm
from portal.middleware import is_api_request
from portal.people.sessions import track_session


def _next_url(request: HttpRequest) -> str:
    """Where to go after this step: the `next` given, if it is on this site, else the dashboard."""
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return wanted
    return "/"


def _signed_in(request: HttpRequest) -> AuthUser:
    # Every view here is behind login_required.
    return cast(AuthUser, request.user)


def _with_next(url_name: str, next_url: str) -> str:
    return f"{reverse(url_name)}?{urlencode({'next': next_url})}"


@login_required
@require_http_methods(["GET", "POST"])
def two_factor_verify(request: HttpRequest) -> HttpResponse:
    user = _signed_in(request)
    if twofactor.is_verified(user):
        return redirect(_next_url(request))
    if not twofactor.has_device(user):
        return redirect(_with_next("two_factor_setup", _next_url(request)))
    form = OTPTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if twofactor.verify(request=request, user=user, token=form.cleaned_data["otp_token"]):
            return redirect(_next_url(request))
        form.add_error(
            "otp_token",
            "That code is not right. Type the code your app shows now (it changes every 30 seconds), "
            "or an unused backup code. After several wrong codes you must wait a little before trying again.",
        )
    return render(request, "registration/two_factor_verify.html", {"form": form, "next": _next_url(request)})


@login_required
@require_http_methods(["GET", "POST"])
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    user = _signed_in(request)
    if twofactor.has_device(user) and not twofactor.is_verified(user):
        # Someone holding only the password must not be able to enrol their own authenticator.
        return redirect(_with_next("two_factor_verify", request.get_full_path()))
    device = twofactor.pending_authenticator(user)
    form = OTPTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if twofactor.confirm_authenticator(request=request, user=user, token=form.cleaned_data["otp_token"]):
            messages.success(request, "Two-factor authentication is on. You will be asked for a code at each login.")
            return redirect(_next_url(request))
        form.add_error(
            "otp_token", "That code is not right. Scan the QR code again and type the code the app shows now."
        )
    context = {
        "form": form,
        "next": _next_url(request),
        "qr_svg": segno.make(device.config_url, error="m").svg_inline(scale=4, dark="#102a43"),
        "manual_key": _spaced_base32(device),
        "required": twofactor.requires_two_factor(user),
    }
    return render(request, "registration/two_factor_setup.html", context)


def _spaced_base32(device: TOTPDevice) -> str:
    key = b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(key[i : i + 4] for i in range(0, len(key), 4))


@login_required
@require_http_methods(["GET"])
def account_security(request: HttpRequest) -> HttpResponse:
    user = _signed_in(request)
    devices = [
        {"name": device.name, "kind": type(device).__name__, "codes_left": _codes_left(device)}
        for device in devices_for_user(user, confirmed=True)
    ]
    context = {
        "devices": devices,
        "required": twofactor.requires_two_factor(user),
        "api_tokens": [
            {"id": tokens.token_id(t), "created": t.created, "expiry": t.expiry} for t in tokens.live_tokens(user)
        ],
        "api_token_hours": settings.API_TOKEN_TTL / 3600,
    }
    return render(request, "registration/account_security.html", context)


@login_required
@require_POST
def revoke_api_token(request: HttpRequest, token_id: str) -> HttpResponse:
    """End one of the person's own API tokens; someone else's is a 404, as a missing one."""
    user = _signed_in(request)
    token = tokens.get_own_token(user, token_id)
    tokens.revoke_token(user=user, token=token, request=request)
    messages.success(request, f"API token {token_id} was revoked: clients using it are refused from now on.")
    return redirect("account_security")


def _codes_left(device: object) -> int | None:
    token_set = getattr(device, "token_set", None)
    return token_set.count() if token_set is not None else None


@login_required
@require_POST
def backup_codes(request: HttpRequest) -> HttpResponse:
    """New backup codes, shown once. Needs a verified session so a password alone cannot mint them."""
    user = _signed_in(request)
    if twofactor.has_device(user) and not twofactor.is_verified(user):
        raise PermissionDenied("Complete two-factor authentication first.")
    codes = twofactor.issue_backup_codes(user=user, request=request)
    return render(request, "registration/backup_codes.html", {"codes": codes})


@login_required
@require_http_methods(["GET", "POST"])
def reauthenticate(request: HttpRequest) -> HttpResponse:
    user = _signed_in(request)
    needs_code = twofactor.has_device(user)
    form: Form = ReauthForm(request.POST or None, needs_code=needs_code)
    if request.method == "POST" and form.is_valid():
        confirmed = authenticate(request, username=user.get_username(), password=form.cleaned_data["password"])
        if confirmed is None or confirmed.pk != user.pk:
            form.add_error("password", "That password is not right.")
        elif needs_code and not twofactor.verify(request=request, user=user, token=form.cleaned_data["otp_token"]):
            form.add_error("otp_token", "That code is not right. Type the code your app shows now.")
        else:
            reauth.mark_reauthenticated(request)
            audit.record(action="auth.reauthenticated", actor=user, tenant=audit.home_tenant(user), request=request)
            return redirect(_next_url(request))
    return render(request, "registration/reauthenticate.html", {"form": form, "next": _next_url(request)})


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change (with the configured validators), recorded in the audit trail."""

    template_name = "registration/password_change.html"
    success_url = reverse_lazy("account_security")

    def form_valid(self, form: PasswordChangeForm) -> HttpResponse:
        response = super().form_valid(form)
        user = form.user
        # Changing the password gives the session a new key; keep it, so it can still be ended.
        track_session(self.request, user)
        audit.record(
            action="auth.password_changed", actor=user, tenant=audit.home_tenant(user), obj=user, request=self.request
        )
        messages.success(self.request, "Your password was changed.")
        return response


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """django-axes' answer to a locked account: JSON 429 for the API, the lockout page for people."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    if is_api_request(request):
        return JsonResponse(
            {"detail": f"Too many wrong passwords: this account is locked for {minutes} minutes.", "code": "locked"},
            status=429,
        )
    context = {"failure_limit": settings.AXES_FAILURE_LIMIT, "minutes": minutes}
    return render(request, "registration/locked_out.html", context, status=429)
