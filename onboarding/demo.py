"""Demo data: one user per role, demo hospitals, and the sandbox hospitals the demo starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from portal import twofactor
from portal.models import Tenant
from portal.roles import CUSTOMER_SUCCESS, ENGINEERS
from portal.services import grant_hospital_it


@dataclass(frozen=True)
class DemoSandbox:
    flavour: str
    port: int
    auth: str
    client_id: str = ""
    client_secret: str = ""
    base_path: str = ""
    # Planted data-quality defects and the extra resource types, so map and validate find something.
    defects: bool = False

    def options(self) -> dict[str, Any]:
        """The sandbox's settings, as `SandboxHospital` takes them (`manage.py sandbox` spells them as flags)."""
        options: dict[str, Any] = {
            "flavour": self.flavour,
            "port": self.port,
            "auth": self.auth,
            "patients": DEMO_PATIENTS,
        }
        if self.client_id:
            options.update(client_id=self.client_id, client_secret=self.client_secret)
        if self.defects:
            # A showcase, not the flavour's plain rates: those leave most kinds out of the default
            # 10-patient sample (seed 1 put no local code in it), and the demo would hide what the
            # README promises map and validate find. Each kind is planted once on the first patients.
            options.update(defects="showcase", extended_clinical=True)
        return options

    def command(self) -> list[str]:
        """The `manage.py sandbox` arguments that serve this sandbox."""
        options = self.options()
        args = ["--flavour", self.flavour, "--port", str(self.port), "--auth", self.auth]
        args += ["--patients", str(options["patients"])]
        if self.client_id:
            args += ["--client-id", self.client_id, "--client-secret", self.client_secret]
        if "defects" in options:
            args += ["--defects", options["defects"], "--extended-clinical"]
        return args


# Patients each demo sandbox serves: enough for the policy's largest sensible demo sample.
DEMO_PATIENTS = 60

# The demo's hospitals. Ports match the embedded default OUTBOUND_ALLOWLIST.
SANDBOXES = (
    DemoSandbox("epic", 8101, "client_credentials", "demo-epic-client", "demo-epic-secret"),
    DemoSandbox("oracle_health", 8102, "none", defects=True),
    DemoSandbox("meditech", 8103, "basic", "demo-meditech-user", "demo-meditech-password"),
)

DEMO_PASSWORD = "onboard-demo-2026"
USERS = (
    ("cs", "Casey Success", CUSTOMER_SUCCESS, None),
    ("engineer", "Eli Engineer", ENGINEERS, None),
    ("it-riverside", "Riley Riverside IT", None, "Riverside Regional Medical Center (demo)"),
    ("it-lakeside", "Lee Lakeside IT", None, "Lakeside Community Hospital (demo)"),
)
TENANTS = (
    ("Riverside Regional Medical Center (demo)", "America/Chicago", "Riley Riverside IT", "it@riverside.example.org"),
    ("Lakeside Community Hospital (demo)", "America/New_York", "Lee Lakeside IT", "it@lakeside.example.org"),
)


@transaction.atomic
def seed() -> list[tuple[str, str]]:
    """Create the demo users and hospitals if missing; return (username, role) pairs."""
    tenants = {}
    for name, zone, contact, email in TENANTS:
        tenants[name], _ = Tenant.objects.get_or_create(
            name=name, defaults={"timezone": zone, "contact_name": contact, "contact_email": email}
        )
    User = get_user_model()
    made = []
    for username, full_name, group, tenant_name in USERS:
        first, _, last = full_name.partition(" ")
        user, created = User.objects.get_or_create(username=username, defaults={"first_name": first, "last_name": last})
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        if group:
            user.groups.add(Group.objects.get(name=group))
            made.append((username, group))
        if tenant_name:
            grant_hospital_it(tenant=tenants[tenant_name], member=user)
            made.append((username, f"Hospital IT of {tenant_name}"))
    return made


# Each backup code signs in once, and a person trying the demo signs in again and again.
BACKUP_CODES = 10


def backup_codes(count: int = BACKUP_CODES) -> dict[str, list[str]]:
    """Fresh single-use backup codes for each demo user who needs a second factor.

    Vendor staff must pass two-factor authentication; a person trying the demo has no authenticator
    app set up, so each start prints new codes (the old ones stop working), and ``manage.py demo
    --codes`` prints new ones while the demo runs.
    """
    User = get_user_model()
    codes = {}
    for username, _full_name, group, _tenant in USERS:
        user = User.objects.filter(username=username).first()
        if user is not None and group and twofactor.requires_two_factor(user):
            codes[username] = twofactor.issue_backup_codes(user=user, count=count)
    return codes
