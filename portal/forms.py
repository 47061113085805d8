"""Forms for tenants, sign-in steps and the audit page filters."""

from __future__ import annotations

from typing import Any

from django import forms

from portal.models import Tenant

COMMON_ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Puerto_Rico",
)


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["name", "timezone", "contact_name", "contact_email", "require_two_factor"]
        labels = {
            "name": "Hospital name",
            "contact_name": "Hospital IT contact",
            "contact_email": "Contact email",
            "require_two_factor": "Require two-factor authentication for this hospital's people",
        }
        help_texts = {"timezone": "The hospital's time zone; change windows are scheduled in it."}
        widgets = {"timezone": forms.TextInput(attrs={"list": "tz-list"})}

    def clean_name(self) -> str:
        name = " ".join(self.cleaned_data["name"].split())
        if not name:
            raise forms.ValidationError("Enter the hospital's name.")
        return name


class NewTenantForm(TenantForm):
    """The new hospital's form: its IT contact is invited as its approver unless unticked."""

    # Checked by default: the contact typed here is the person the pipeline's approvals wait on,
    # and inviting them was otherwise three more clicks on the People page.
    invite_contact = forms.BooleanField(
        required=False,
        initial=True,
        label="Invite the contact as the hospital's approver",
        help_text="When a contact email is given, they get an email with a link to set their password.",
    )


class OTPTokenForm(forms.Form):
    otp_token = forms.CharField(
        label="Code",
        max_length=20,
        strip=True,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
        help_text="The 6-digit code your authenticator app shows now, or one of your backup codes.",
    )


class ReauthForm(forms.Form):
    password = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )
    otp_token = forms.CharField(
        label="Two-factor code",
        max_length=20,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    def __init__(self, *args: Any, needs_code: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if needs_code:
            self.fields["otp_token"].required = True
        else:
            del self.fields["otp_token"]


class AuditFilterForm(forms.Form):
    """Filters of the audit page; every field is optional and a bad value is simply ignored."""

    action = forms.CharField(required=False, max_length=64, widget=forms.TextInput(attrs={"list": "audit-actions"}))
    actor = forms.CharField(required=False, max_length=150, label="Who")
    object_id = forms.CharField(required=False, max_length=64, label="Object")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def filters(self) -> dict[str, Any]:
        """The valid, non-empty filters (an invalid field is dropped rather than failing the page)."""
        self.is_valid()
        return {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}
