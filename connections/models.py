"""An EHR connection: where a hospital's FHIR server is and how we authenticate to it."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from portal.crypto import EncryptedTextField
from portal.models import Tenant


class Vendor(models.TextChoices):
    EPIC = "epic", "Epic"
    ORACLE_HEALTH = "oracle_health", "Oracle Health (Cerner)"
    MEDITECH = "meditech", "MEDITECH"
    ATHENAHEALTH = "athenahealth", "athenahealth"
    GENERIC = "generic", "Generic FHIR R4"


class Environment(models.TextChoices):
    SANDBOX = "sandbox", "Sandbox"
    PRODUCTION = "production", "Production"


class AuthMethod(models.TextChoices):
    NONE = "none", "None (open endpoint)"
    BASIC = "basic", "HTTP Basic"
    CLIENT_CREDENTIALS = "client_credentials", "OAuth2 client credentials"


class TokenAuthMethod(models.TextChoices):
    CLIENT_SECRET_BASIC = "client_secret_basic", "client_secret_basic (HTTP Basic header)"
    CLIENT_SECRET_POST = "client_secret_post", "client_secret_post (form fields)"


class EHRConnection(models.Model):
    """One FHIR R4 endpoint of a tenant. The secret is encrypted at rest and never shown again."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="connections")
    name = models.CharField(max_length=200)
    vendor = models.CharField(max_length=20, choices=Vendor.choices, default=Vendor.GENERIC)
    environment = models.CharField(max_length=20, choices=Environment.choices, default=Environment.SANDBOX)
    base_url = models.URLField(max_length=500, verbose_name="FHIR base URL")
    auth_method = models.CharField(max_length=30, choices=AuthMethod.choices, default=AuthMethod.NONE)
    client_id = models.CharField(max_length=200, blank=True, verbose_name="client id / user name")
    secret = EncryptedTextField(blank=True, verbose_name="client secret / password")
    token_url = models.URLField(
        max_length=500, blank=True, help_text="Leave blank to discover it from .well-known/smart-configuration."
    )
    token_auth_method = models.CharField(
        max_length=30, choices=TokenAuthMethod.choices, default=TokenAuthMethod.CLIENT_SECRET_BASIC
    )
    scope = models.CharField(max_length=500, blank=True, default="system/*.read")
    mrn_system = models.CharField(
        max_length=300, blank=True, help_text="Identifier system of the MRN; blank uses the vendor's default."
    )
    extra_search_params = models.CharField(
        max_length=500,
        blank=True,
        verbose_name="extra search parameters",
        help_text="Sent on every search, as name=value pairs joined by &, e.g. athenahealth's "
        "ah-practice=Organization/a-1.Practice-195900.",
    )
    secret_updated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="connection_name_unique_per_tenant")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_vendor_display()})"

    @property
    def has_secret(self) -> bool:
        return bool(self.secret)
