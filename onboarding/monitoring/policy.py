"""Each tenant's monitoring policy: read with its defaults, changed by customer success with checks.

A change re-times the tenant's monitors in the same transaction (their copied interval), and is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from onboarding.monitoring.models import Monitor, MonitoringPolicy
from portal import audit
from portal.access import User, require_perm
from portal.models import Tenant

EDIT_PERM = "portal.change_tenant"


@dataclass(frozen=True)
class Field:
    """One setting of the policy: its label, unit, bounds and what it does."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    help: str
    whole: bool = True


FIELDS: tuple[Field, ...] = (
    Field("check_interval_min", "Check interval", "minutes", 1, 60, "How often each live connection is checked."),
    Field("failures_to_alert", "Failed checks before an alert", "checks", 1, 20, "Consecutive failed checks."),
    Field("latency_p95_ms", "Latency threshold (p95)", "ms", 50, 60_000, "Checks slower than this at p95 alert."),
    Field("latency_window_min", "Latency window", "minutes", 5, 1440, "The p95 is taken over this window."),
    Field(
        "error_rate_pct", "Production error rate", "%", 0.1, 100, "Product requests failing above this alert.", False
    ),
    Field("error_window_min", "Error-rate window", "minutes", 5, 1440, "The error rate is taken over this window."),
    Field("error_min_requests", "Fewest requests for an error rate", "requests", 1, 100_000, "Fewer say nothing yet."),
    Field("no_traffic_min", "No traffic for", "minutes", 0, 10_080, "No product request this long alerts (0: off)."),
    Field("escalate_after_min", "Escalate after", "minutes", 1, 1440, "An outage this long goes to hypercare."),
    Field("drift_every_days", "Drift watch every", "days", 1, 90, "How often a small sample is re-validated."),
    Field("drift_sample_size", "Drift sample", "patients", 1, 50, "How many patients the drift watch re-validates."),
)
FIELD_NAMES = tuple(field.name for field in FIELDS)


class PolicyRefused(ValueError):
    """A policy value out of bounds: the message names the setting and what is allowed."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def policy_for(tenant: Tenant) -> MonitoringPolicy:
    """The tenant's policy, made with the defaults on first need."""
    policy, _ = MonitoringPolicy.objects.get_or_create(tenant=tenant)
    return policy


def policy_for_id(tenant_id: int) -> MonitoringPolicy:
    """policy_for, by the tenant's id (for scans that read ids only)."""
    policy, _ = MonitoringPolicy.objects.get_or_create(tenant_id=tenant_id)
    return policy


def values_of(policy: MonitoringPolicy) -> dict[str, Any]:
    """The policy as a plain dict of its settings."""
    return {name: getattr(policy, name) for name in FIELD_NAMES}


def interval_s(policy: MonitoringPolicy) -> int:
    """Seconds between two checks of a connection (the test/demo override wins when set)."""
    override = int(settings.MONITORING_CHECK_INTERVAL_SECONDS)
    return override if override > 0 else int(policy.check_interval_min) * 60


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """The values checked against each setting's bounds; PolicyRefused names the first one out."""
    clean: dict[str, Any] = {}
    for field in FIELDS:
        if field.name not in values:
            raise PolicyRefused(f"{field.label} is missing.", field.name)
        raw = values[field.name]
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise PolicyRefused(f"{field.label} must be a number ({field.unit}).", field.name) from None
        if number != number or not field.low <= number <= field.high:  # NaN compares unequal to itself
            raise PolicyRefused(
                f"{field.label} must be from {field.low:g} to {field.high:g} {field.unit}, not {raw}.", field.name
            )
        if field.whole and number != int(number):
            raise PolicyRefused(f"{field.label} must be a whole number of {field.unit}.", field.name)
        clean[field.name] = int(number) if field.whole else number
    return clean


def update_policy(
    *, user: User, tenant: Tenant, values: dict[str, Any], request: HttpRequest | None = None
) -> tuple[MonitoringPolicy, list[str]]:
    """Save the tenant's new policy; returns it with the names of the settings that changed."""
    require_perm(user, EDIT_PERM, tenant)
    clean = validate(values)
    with transaction.atomic():
        policy = MonitoringPolicy.objects.select_for_update().get(pk=policy_for(tenant).pk)
        before = values_of(policy)
        changed = [name for name in FIELD_NAMES if before[name] != clean[name]]
        if not changed:
            return policy, []
        for name in changed:
            setattr(policy, name, clean[name])
        policy.updated_by = user if user.is_authenticated else None
        policy.save()
        if "check_interval_min" in changed:
            seconds = interval_s(policy)
            # A longer interval must not wait out the old schedule, nor a shorter one wait for it.
            Monitor.objects.filter(tenant=tenant).update(
                interval_s=seconds, next_check_at=timezone.now() + timedelta(seconds=min(seconds, 60))
            )
        audit.record(
            action="monitoring.policy_changed",
            actor=user,
            tenant=tenant,
            obj=policy,
            request=request,
            detail={name: {"from": before[name], "to": clean[name]} for name in changed},
        )
    return policy, changed
