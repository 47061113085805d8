"""The connection form. The secret is write-only: never rendered back, blank keeps the stored one."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django import forms

from connections.keys import ALGORITHMS
from connections.models import AuthMethod, EHRConnection, Environment, KeyAlgorithm
from portal.models import Tenant


def check_fhir_base_url(url: str, *, environment: str) -> str:
    """Normalise a FHIR base URL and say plainly what is wrong with a bad one."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise forms.ValidationError("The FHIR base URL must start with https:// (or http:// for a sandbox).")
    if not parts.hostname:
        raise forms.ValidationError("The FHIR base URL has no host name.")
    if parts.username or parts.password:
        raise forms.ValidationError("Do not put a user name or password in the URL; use the authentication fields.")
    if parts.query or parts.fragment:
        raise forms.ValidationError("The FHIR base URL must not have a query (?…) or fragment (#…).")
    if environment == Environment.PRODUCTION and parts.scheme != "https":
        raise forms.ValidationError("A production connection must use https://.")
    return url.rstrip("/")


def check_extra_search_params(value: str) -> str:
    """Accept `name=value&name=value`; say which part is malformed otherwise."""
    value = value.strip().lstrip("?")
    if not value:
        return ""
    for part in value.split("&"):
        name, sep, param = part.partition("=")
        if not sep or not name.strip() or not param.strip():
            raise forms.ValidationError(f"“{part}” is not name=value. Join pairs with &.")
    return value


class ConnectionForm(forms.ModelForm):
    base_url = forms.URLField(
        label="FHIR base URL",
        max_length=500,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"placeholder": "https://fhir.hospital.org/api/FHIR/R4"}),
    )
    token_url = forms.URLField(
        label="Token URL",
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text="Leave blank to discover it from .well-known/smart-configuration.",
    )
    secret = forms.CharField(
        label="Client secret / password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again.",
    )

    class Meta:
        model = EHRConnection
        fields = [
            "name",
            "vendor",
            "environment",
            "base_url",
            "auth_method",
            "client_id",
            "token_url",
            "token_auth_method",
            "scope",
            "mrn_system",
            "extra_search_params",
            "pull_concurrency",
            "pull_rate",
            "pull_method",
            "bulk_group_id",
        ]
        # The model's field name would read "Mrn system"; changing its verbose_name would be a migration.
        labels = {"mrn_system": "MRN system"}

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        for name in ("pull_concurrency", "pull_method"):
            self.fields[name].required = False
        if self.instance.pk and self.instance.has_secret:
            self.fields[
                "secret"
            ].help_text = "A secret is stored. Leave blank to keep it; type a new one to replace it."

    def clean_pull_concurrency(self) -> int:
        # Left out of a post (an older form, a script): the agreed value stays as it is (4 for a new one).
        value = self.cleaned_data.get("pull_concurrency")
        return self.instance.pull_concurrency if value is None else value

    def clean_pull_method(self) -> str:
        return self.cleaned_data.get("pull_method") or self.instance.pull_method

    def clean_extra_search_params(self) -> str:
        return check_extra_search_params(self.cleaned_data["extra_search_params"])

    def clean_name(self) -> str:
        name = " ".join(self.cleaned_data["name"].split())
        others = EHRConnection.objects.filter(tenant=self.tenant, name__iexact=name)
        if self.instance.pk:
            others = others.exclude(pk=self.instance.pk)
        if others.exists():
            raise forms.ValidationError("This hospital already has a connection with that name.")
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "base_url" in cleaned:
            try:
                cleaned["base_url"] = check_fhir_base_url(
                    cleaned["base_url"], environment=cleaned.get("environment", Environment.SANDBOX)
                )
            except forms.ValidationError as exc:
                self.add_error("base_url", exc)
        method = cleaned.get("auth_method")
        needs_client_id = {AuthMethod.BASIC, AuthMethod.CLIENT_CREDENTIALS, AuthMethod.SMART_BACKEND}
        if method in needs_client_id and not cleaned.get("client_id"):
            self.add_error("client_id", "This authentication method needs a client id (user name for Basic).")
        if method in {AuthMethod.BASIC, AuthMethod.CLIENT_CREDENTIALS}:
            has_stored = bool(self.instance.pk and self.instance.has_secret)
            if not cleaned.get("secret") and not has_stored:
                self.add_error("secret", "This authentication method needs a secret (password for Basic).")
        if method == AuthMethod.SMART_BACKEND and cleaned.get("secret"):
            self.add_error(
                "secret",
                "SMART Backend Services signs with a key pair made here, not a secret. Leave this blank; "
                "generate the key pair on the connection page after saving.",
            )
        if method in {AuthMethod.CLIENT_CREDENTIALS, AuthMethod.SMART_BACKEND} and cleaned.get("token_url"):
            token_parts = urlsplit(cleaned["token_url"])
            if cleaned.get("environment") == Environment.PRODUCTION and token_parts.scheme != "https":
                self.add_error("token_url", "A production token URL must use https://.")
        return cleaned

    def editable_values(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.Meta.fields if name in self.cleaned_data}


class KeyPairForm(forms.Form):
    """Generate (or replace) a connection's SMART Backend Services key pair."""

    algorithm = forms.ChoiceField(
        choices=[(a, label) for a, label in KeyAlgorithm.choices if a in ALGORITHMS],
        initial=KeyAlgorithm.RS384,
        help_text="Use the algorithm the hospital accepts; RS384 is the most widely supported.",
    )
    confirm_replace = forms.BooleanField(
        required=False,
        label="Replace the current key pair",
        help_text="The current key stops working at once: the hospital must register the new public key "
        "before the next token request.",
    )

    def __init__(self, *args: Any, connection: EHRConnection, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = connection
        if not connection.has_key:
            del self.fields["confirm_replace"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.connection.auth_method != AuthMethod.SMART_BACKEND:
            raise forms.ValidationError(
                "This connection does not use SMART Backend Services. Edit the connection and choose that "
                "authentication method first."
            )
        if self.connection.has_key and not cleaned.get("confirm_replace"):
            self.add_error("confirm_replace", "Tick this box to confirm you want to replace the current key pair.")
        return cleaned
