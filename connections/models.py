"""An EHR connection: where a hospital's FHIR server is and how we authenticate to it."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from connections.http import origin_key
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
    SMART_BACKEND = "smart_backend", "SMART Backend Services (signed JWT, key pair made here)"


class TokenAuthMethod(models.TextChoices):
    CLIENT_SECRET_BASIC = "client_secret_basic", "client_secret_basic (HTTP Basic header)"
    CLIENT_SECRET_POST = "client_secret_post", "client_secret_post (form fields)"


class KeyAlgorithm(models.TextChoices):
    RS384 = "RS384", "RS384 (RSA)"
    ES384 = "ES384", "ES384 (elliptic curve P-384)"


class PullMethod(models.TextChoices):
    REST = "rest", "REST searches, patient by patient (concurrent within the agreed limits)"
    BULK = "bulk", "FHIR Bulk Data export ($export, NDJSON files)"


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
    # What customer success agreed with the hospital for map and validate pulls: at most this many
    # requests at once and (optionally) this many a second. Ceilings are in settings (PULL_MAX_*).
    pull_concurrency = models.PositiveSmallIntegerField(
        default=4,
        verbose_name="concurrent requests",
        help_text="Requests map and validate may have open at once, as agreed with the hospital.",
    )
    pull_rate = models.FloatField(
        null=True,
        blank=True,
        verbose_name="requests per second",
        help_text="The agreed request rate; blank for no rate beyond the concurrency.",
    )
    pull_method = models.CharField(
        max_length=10,
        choices=PullMethod.choices,
        default=PullMethod.REST,
        verbose_name="pull method",
        help_text="Bulk needs a server whose CapabilityStatement advertises $export (read by configure).",
    )
    # The $export levels (system, patient, group) the last configure run found advertised.
    bulk_export_levels = models.CharField(max_length=40, blank=True, editable=False)
    # A server may export only by Group (Epic's does): the hospital sets one up for the product and
    # tells us its id. When given, a bulk pull exports that Group.
    bulk_group_id = models.CharField(
        max_length=64,
        blank=True,
        validators=[RegexValidator(r"^[A-Za-z0-9\-.]{1,64}$", "A FHIR id: letters, digits, '-' and '.', at most 64.")],
        verbose_name="bulk export Group id",
        help_text="The Group the hospital set up for this product's bulk export; needed where only a Group exports.",
    )
    # Some servers publish no CapabilityStatement. Choosing to go on without one is explicit and
    # audited (connections.services.set_without_capability_statement); configure then skips, and
    # lists, the checks that need it.
    without_capability_statement = models.BooleanField(
        default=False, verbose_name="continue without a CapabilityStatement"
    )
    # SMART Backend Services: the portal makes the key pair. The private key is write-only (never
    # rendered or serialised); the public JWK is what the hospital registers.
    private_key = EncryptedTextField(blank=True, verbose_name="private key (PEM)")
    key_algorithm = models.CharField(max_length=10, choices=KeyAlgorithm.choices, blank=True)
    key_id = models.CharField(max_length=100, blank=True, verbose_name="key id (kid)")
    public_jwk = models.JSONField(default=dict, blank=True, verbose_name="public key (JWK)")
    key_created_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Archived: hidden from lists and closed to new runs, kept with its whole history for the audit.
    archived_at = models.DateTimeField(null=True, blank=True)
    archived_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="connection_name_unique_per_tenant")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_vendor_display()})"

    def clean(self) -> None:
        """Production traffic carries credentials and PHI, so it never goes over plain http.

        Checked here because every create and update goes through full_clean(): a form, an API
        PATCH that only flips the environment, or a future caller cannot get around it.
        """
        super().clean()
        self._check_pull_limits()
        if self.environment != Environment.PRODUCTION:
            return
        errors = self.plain_http_problems()
        if errors:
            raise ValidationError(errors)

    def plain_http_problems(self) -> dict[str, str]:
        """Each URL of this connection that may not carry production traffic over plain http, by field.

        In production mode that is every http:// URL. Outside it (the demo, the tests) the sandbox
        hospitals on OUTBOUND_ALLOWLIST may: they serve http on loopback and go live like a hospital.
        The go-live pre-flight asks the same, so a cutover never switches an http endpoint to production.
        """
        sandboxes = set() if settings.PRODUCTION else set(settings.OUTBOUND_ALLOWLIST)
        return {
            field: message
            for field, url, message in (
                ("base_url", self.base_url, "A production connection must use https://."),
                ("token_url", self.token_url, "A production token URL must use https://."),
            )
            if url and urlsplit(url).scheme != "https" and origin_key(url) not in sandboxes
        }

    def _check_pull_limits(self) -> None:
        """The agreed limits stay under the hard caps, and bulk needs an advertised $export."""
        errors: dict[str, str] = {}
        cap = settings.PULL_MAX_CONCURRENCY
        if self.pull_concurrency is not None and not 1 <= self.pull_concurrency <= cap:
            errors["pull_concurrency"] = (
                f"Choose 1 to {cap} concurrent requests (the cap PULL_MAX_CONCURRENCY is {cap})."
            )
        rate_cap = settings.PULL_MAX_RATE
        if self.pull_rate is not None and not 0 < self.pull_rate <= rate_cap:
            errors["pull_rate"] = (
                f"Choose a rate above 0 and at most {rate_cap:g} requests a second (the cap PULL_MAX_RATE is "
                f"{rate_cap:g}), or leave it blank."
            )
        levels = set(self.bulk_export_levels.split(",")) - {""}
        if self.pull_method == PullMethod.BULK and not levels:
            errors["pull_method"] = (
                "Bulk export needs a server whose CapabilityStatement advertises $export, and the last configure run "
                "found none. Re-run configure after the hospital enables it, or keep REST."
            )
        elif self.pull_method == PullMethod.BULK and levels == {"group"} and not self.bulk_group_id:
            errors["bulk_group_id"] = (
                "This server exports only by Group: give the id of the Group the hospital set up for this product "
                "(their Bulk Data administrator has it), or keep REST."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

    @property
    def has_secret(self) -> bool:
        return bool(self.secret)

    @property
    def has_key(self) -> bool:
        return bool(self.key_id and self.public_jwk)

    @property
    def jwks(self) -> dict[str, list[dict[str, object]]]:
        """The public key set the hospital registers; empty until a key pair is generated."""
        return {"keys": [dict(self.public_jwk)] if self.has_key else []}

    @property
    def jwks_json(self) -> str:
        """The public key set, pretty-printed for people to copy."""
        return json.dumps(self.jwks, indent=2)
