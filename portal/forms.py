"""Forms for tenants."""

from __future__ import annotations

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
        fields = ["name", "timezone", "contact_name", "contact_email"]
        labels = {"name": "Hospital name", "contact_name": "Hospital IT contact", "contact_email": "Contact email"}
        help_texts = {"timezone": "The hospital's time zone; change windows are scheduled in it."}
        widgets = {"timezone": forms.TextInput(attrs={"list": "tz-list"})}

    def clean_name(self) -> str:
        name = " ".join(self.cleaned_data["name"].split())
        if not name:
            raise forms.ValidationError("Enter the hospital's name.")
        return name
