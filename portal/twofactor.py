"""Second factor (django-otp): who needs one, enrolling an authenticator app, verifying a code.

Vendor staff see every hospital, so a stolen password alone must not be enough: they always need
a second factor. Hospital IT may enrol one; once they have, it is required for them too, otherwise
enrolling would protect nothing. Backup codes (a static device) let a person without their phone,
or the demo's users without any authenticator app, still complete the second step.
"""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest
from django_otp import devices_for_user, user_has_device
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import audit
from portal.access import AuthUser, User
from portal.models import Membership
from portal.roles import CUSTOMER_SUCCESS, ENGINEERS, VENDOR_ADMINS, is_vendor_staff

AUTHENTICATOR_NAME = "Authenticator app"
BACKUP_NAME = "Backup codes"
VENDOR_GROUPS = (CUSTOMER_SUCCESS, ENGINEERS, VENDOR_ADMINS)


def requires_two_factor(user: User) -> bool:
    """Vendor staff (by group or global permission), admin staff and superusers always; people of a
    hospital that requires it (Tenant.require_two_factor); anyone else once they enrolled a device."""
    if not user.is_authenticated:
        return False
    if is_vendor_staff(user) or getattr(user, "is_superuser", False) or getattr(user, "is_staff", False):
        return True
    if user.groups.filter(name__in=VENDOR_GROUPS).exists():
        return True
    if user_has_device(user, confirmed=True):
        return True
    return Membership.objects.filter(user=user, tenant__require_two_factor=True).exists()


def is_verified(user: User) -> bool:
    """Whether this session passed the second factor (set by django-otp's middleware)."""
    check = getattr(user, "is_verified", None)
    return bool(check()) if callable(check) else False


def has_device(user: User) -> bool:
    """Whether the user has a confirmed device to verify with (else they must enrol first)."""
    return bool(user_has_device(user, confirmed=True))


def pending_authenticator(user: AuthUser) -> TOTPDevice:
    """The unconfirmed authenticator the user is enrolling, made on first need (kept across reloads)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=AUTHENTICATOR_NAME, confirmed=False)
    return device


def confirm_authenticator(*, request: HttpRequest, user: AuthUser, token: str) -> bool:
    """Confirm the pending authenticator with a code it shows; the session counts as verified after."""
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("-id").first()
        if device is None or not device.verify_token(_clean(token)):
            audit.record(action="auth.2fa_enrol_failed", actor=user, tenant=audit.home_tenant(user), request=request)
            return False
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        # An older authenticator is replaced, not kept as a second way in.
        TOTPDevice.objects.filter(user=user, confirmed=True).exclude(pk=device.pk).delete()
        audit.record(action="auth.2fa_enrolled", actor=user, tenant=audit.home_tenant(user), request=request, obj=user)
    otp_login(request, device)
    return True


def verify(*, request: HttpRequest, user: AuthUser, token: str) -> Device | None:
    """Check a code against each of the user's devices (each throttles its own failures)."""
    token = _clean(token)
    matched: Device | None = None
    with transaction.atomic():
        for device in devices_for_user(user, confirmed=True, for_verify=True):
            if token and device.verify_token(token):
                matched = device
                break
        audit.record(
            action="auth.2fa_verified" if matched else "auth.2fa_failed",
            actor=user,
            tenant=audit.home_tenant(user),
            request=request,
            detail={"device": matched.name} if matched else {},
        )
    if matched is not None:
        otp_login(request, matched)
    return matched


@transaction.atomic
def issue_backup_codes(*, user: AuthUser, count: int = 5, request: HttpRequest | None = None) -> list[str]:
    """Replace the user's backup codes with new single-use ones and return them (shown once)."""
    device, _ = StaticDevice.objects.get_or_create(user=user, name=BACKUP_NAME, defaults={"confirmed": True})
    if not device.confirmed:
        device.confirmed = True
        device.save(update_fields=["confirmed"])
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(count)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
    audit.record(
        action="auth.backup_codes_issued",
        actor=request.user if request is not None else None,
        tenant=audit.home_tenant(user),
        request=request,
        obj=user,
        detail={"user": user.get_username(), "count": count},
    )
    return codes


def _clean(token: str) -> str:
    # Authenticator apps show "123 456"; people paste it with the space.
    return "".join(token.split())
