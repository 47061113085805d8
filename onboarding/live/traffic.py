"""Counting the product's production requests per connection and minute, and reading them back.

The read API calls `record_request` on every request. Counts gather in this process and reach the
database every FLUSH_SECONDS (`record_request` says when a flush is due, and the read API runs
`flush` on a thread of its own, so counting adds no write to a request's own path), one locked
upsert per connection and minute. A process that dies loses at most those seconds of counts, which
monitoring tolerates (it looks at windows of minutes).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from onboarding.live.models import TrafficMinute

FLUSH_SECONDS = 5.0
# Bucket upper bounds in ms, about 12% apart from 1 ms to 60 s: a window's p95 read from them is
# within one bucket's width of the true one. The last bucket holds everything slower.
BUCKETS_MS: tuple[float, ...] = tuple(round(math.exp(math.log(1.0) + i * math.log(1.12)), 3) for i in range(98))


def bucket_of(latency_ms: float) -> int:
    """The index of the bucket a latency falls in."""
    return min(bisect.bisect_left(BUCKETS_MS, latency_ms), len(BUCKETS_MS))


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    buckets: Counter[int] = field(default_factory=Counter)
    latency_total: float = 0.0


_lock = threading.Lock()
_pending: dict[tuple[int, datetime], _Tally] = {}
_last_flush = time.monotonic()


def record_request(onboarding_id: int, *, latency_ms: float, error_kind: str = "", at: datetime | None = None) -> bool:
    """Count one production request (its latency, and its typed error kind if it failed); True when the
    counts are due to be flushed (to the caller, once every FLUSH_SECONDS)."""
    global _last_flush
    minute = (at or timezone.now()).replace(second=0, microsecond=0)
    with _lock:
        tally = _pending.setdefault((onboarding_id, minute), _Tally())
        tally.requests += 1
        tally.latency_total += latency_ms
        tally.buckets[bucket_of(latency_ms)] += 1
        if error_kind:
            tally.errors += 1
            tally.by_kind[error_kind] += 1
        due = time.monotonic() - _last_flush >= FLUSH_SECONDS
        if due:
            _last_flush = time.monotonic()
    return due


def flush() -> int:
    """Write the counts gathered so far; returns the number of rows touched."""
    with _lock:
        pending = dict(_pending)
        _pending.clear()
    for (onboarding_id, minute), tally in pending.items():
        with transaction.atomic():
            row, _ = TrafficMinute.objects.select_for_update().get_or_create(onboarding_id=onboarding_id, minute=minute)
            row.requests += tally.requests
            row.errors += tally.errors
            kinds = Counter(row.errors_by_kind) + tally.by_kind
            row.errors_by_kind = dict(kinds)
            buckets = list(row.latency_buckets) + [0] * (len(BUCKETS_MS) + 1 - len(row.latency_buckets))
            for index, count in tally.buckets.items():
                buckets[index] += count
            row.latency_buckets = buckets
            row.latency_ms_total += tally.latency_total
            row.save()
    return len(pending)


@dataclass(frozen=True)
class TrafficSummary:
    """Production traffic over a window: counts, errors by kind and latency percentiles (ms)."""

    requests: int
    errors: int
    errors_by_kind: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def percentile_from_buckets(buckets: list[int], share: float) -> float | None:
    """The upper bound of the bucket holding the given share (0-1) of the counts, or None if empty."""
    total = sum(buckets)
    if not total:
        return None
    rank = share * total
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return BUCKETS_MS[index] if index < len(BUCKETS_MS) else float("inf")
    return float("inf")


def traffic_summary(onboarding_id: int, *, since: datetime, until: datetime) -> TrafficSummary:
    """The production traffic of one connection in [since, until), by whole minutes."""
    rows = TrafficMinute.objects.filter(onboarding_id=onboarding_id, minute__gte=since, minute__lt=until)
    requests = errors = 0
    kinds: Counter[str] = Counter()
    buckets = [0] * (len(BUCKETS_MS) + 1)
    for row in rows:
        requests += row.requests
        errors += row.errors
        kinds.update(row.errors_by_kind)
        for index, count in enumerate(row.latency_buckets):
            buckets[index] += count
    return TrafficSummary(
        requests=requests,
        errors=errors,
        errors_by_kind=dict(kinds),
        p50_ms=percentile_from_buckets(buckets, 0.50),
        p95_ms=percentile_from_buckets(buckets, 0.95),
    )
