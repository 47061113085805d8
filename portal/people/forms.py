"""Forms of the people pages: invite, change a role, assign staff, accept an invitation."""

from __future__ import annotations

from typing import Any

from django import forms

from portal.models import HospitalRole, StaffRole

ROLE_HELP = (
    "Viewer: reads everything of the hospital. Approver: also decides its gates (mapping sign-off, "
    "load test, go-live). Hospital admin: an approver who also invites and removes colleagues."
)


class InviteForm(forms.Form):
    email = forms.EmailField(
        label="Email address", max_length=150, widget=forms.EmailInput(attrs={"autocomplete": "off"})
    )
    role = forms.ChoiceField(choices=HospitalRole.choices, initial=HospitalRole.APPROVER, help_text=ROLE_HELP)


class StaffInviteForm(forms.Form):
    email = forms.EmailField(
        label="Email address", max_length=150, widget=forms.EmailInput(attrs={"autocomplete": "off"})
    )
    role = forms.ChoiceField(
        choices=StaffRole.choices,
        help_text="Customer success drive onboardings; engineers review failed runs. Both need two-factor sign-in.",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=HospitalRole.choices)
    confirm_last_approver = forms.BooleanField(required=False, widget=forms.HiddenInput)


class RemoveForm(forms.Form):
    confirm_last_approver = forms.BooleanField(required=False, widget=forms.HiddenInput)


class AssignStaffForm(forms.Form):
    member = forms.ChoiceField(label="Vendor staff member")

    def __init__(self, *args: Any, choices: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["member"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Choose a person"), *choices]


class AcceptForm(forms.Form):
    """A new account's name and password; Django's password validators run in the service."""

    full_name = forms.CharField(
        label="Your name", max_length=300, widget=forms.TextInput(attrs={"autocomplete": "name"})
    )
    password = forms.CharField(
        label="Choose a password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 12 characters; not a common password, not only digits, not like your name or email.",
    )
    password_again = forms.CharField(
        label="Type the password again", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("password") and data.get("password_again") and data["password"] != data["password_again"]:
            self.add_error("password_again", "The two passwords differ. Type the same password twice.")
        return data
