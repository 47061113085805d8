"""PHI retention: raw FHIR payloads are kept only RAW_PAYLOAD_RETENTION_DAYS days.

The portal core cannot import the apps above it, so each app that stores raw payloads registers
its model here, usually in its AppConfig.ready()::

    from portal import retention
    retention.register(RawResource, age_field="created_at", expires_field="expires_at")  # delete rows
    retention.register(Finding, age_field="created_at", clear={"raw": None})  # keep rows, drop payload

`manage.py purge_raw_payloads` and the beat task `portal.purge_raw_payloads` purge every
registered store and write one `phi.purge` audit event with the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from portal import audit


@dataclass(frozen=True)
class RawPayloadStore:
    """A model holding raw payloads: rows older than the limit are deleted, or their payload fields cleared."""

    model: type[models.Model]
    age_field: str
    clear: dict[str, Any] = field(default_factory=dict)
    expires_field: str | None = None

    @property
    def label(self) -> str:
        return self.model._meta.label

    def expired(self, cutoff: datetime, now: datetime) -> models.QuerySet[Any]:
        due = Q(**{f"{self.age_field}__lt": cutoff})
        if self.expires_field:
            due |= Q(**{f"{self.expires_field}__lte": now})
        rows = self.model._default_manager.filter(due)
        if self.clear:
            rows = rows.exclude(_all_cleared(self.clear))
        return rows

    def purge(self, cutoff: datetime, now: datetime, batch: int = 1000) -> int:
        rows = self.expired(cutoff, now)
        if self.clear:
            return rows.update(**self.clear)
        # In batches of ids, loading only the key: a plain delete() would fetch (and decrypt)
        # every payload just to find what refers to it.
        deleted = 0
        manager = self.model._default_manager
        while ids := list(rows.values_list("pk", flat=True)[:batch]):
            deleted += manager.filter(pk__in=ids).only("pk").delete()[1].get(self.label, 0)
        return deleted


_STORES: dict[str, RawPayloadStore] = {}


def register(
    model: type[models.Model],
    *,
    age_field: str,
    clear: dict[str, Any] | None = None,
    expires_field: str | None = None,
) -> None:
    """Declare a model that holds raw payloads (idempotent: registering again replaces the entry).

    Rows whose `age_field` is older than the retention limit are purged, and with `expires_field`
    also rows whose own expiry has passed.
    """
    for name in (age_field, expires_field, *(clear or {})):
        if name:
            model._meta.get_field(name)  # fail at start-up, not at 3 a.m., on a typo
    store = RawPayloadStore(model=model, age_field=age_field, clear=dict(clear or {}), expires_field=expires_field)
    _STORES[store.label] = store


def unregister(model: type[models.Model]) -> None:
    _STORES.pop(model._meta.label, None)


def stores() -> list[RawPayloadStore]:
    return list(_STORES.values())


def purge(*, days: int | None = None, now: datetime | None = None, dry_run: bool = False) -> dict[str, int]:
    """Purge every registered store of rows older than `days`; return rows purged (or due) per model."""
    days = settings.RAW_PAYLOAD_RETENTION_DAYS if days is None else days
    now = now or timezone.now()
    cutoff = now - timedelta(days=days)
    counts: dict[str, int] = {}
    with transaction.atomic():
        for store in stores():
            counts[store.label] = store.expired(cutoff, now).count() if dry_run else store.purge(cutoff, now)
        if not dry_run:
            audit.record(
                action="phi.purge",
                detail={"older_than_days": days, "cutoff": cutoff.isoformat(), "purged": counts},
            )
    return counts


def _all_cleared(clear: dict[str, Any]) -> Q:
    condition = Q()
    for name, value in clear.items():
        condition &= Q(**{f"{name}__isnull": True}) if value is None else Q(**{name: value})
    return condition
