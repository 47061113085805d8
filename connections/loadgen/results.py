"""What a load test measured, in the shape the step stores and the report draws.

Latencies live in HDR histograms (the ``hdrhistogram`` package, the same structure wrk2 and
k6's HDR output use): fixed memory, three significant digits at any scale, and mergeable, so a
second, a request type, a stage and the whole run are all exact percentiles of their own
requests rather than averages of averages. Everything here is plain data with a ``to_dict`` for
JSON; the SLA verdict is words a person can act on ("p95 412 ms is above the agreed 300 ms").
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any

from hdrh.histogram import HdrHistogram

from .plan import Sla

# Latencies are recorded in microseconds, from 1 µs to one hour (three significant digits).
LATENCY_MAX_US = 3_600_000_000
# A run that drops more than this share of its planned requests did not hold the agreed rate.
DROP_TOLERANCE_PCT = 1.0
# Upper bounds (ms) of the latency histogram's bars, roughly logarithmic, as the report draws it.
HISTOGRAM_BOUNDS_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700,
    1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 60_000,
)  # fmt: skip


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds."""
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def percentiles(histogram: HdrHistogram, wanted: tuple[float, ...]) -> dict[float, int]:
    """The library's percentile values, found by bisecting cumulative counts instead of walking them.

    ``HdrHistogram.get_percentile_to_value_dict`` walks every bucket in Python (milliseconds per
    call, and the report asks for thousands); this takes the counts up to the largest value as one
    C-level slice and sums them with ``accumulate``, then applies the library's own rounding.
    """
    top = histogram.get_counts_array_index(histogram.get_max_value())
    cumulative = list(accumulate(histogram.counts[: top + 1]))
    result: dict[float, int] = {}
    for percentile in wanted:
        target = histogram.get_target_count_at_percentile(percentile)
        index = min(bisect.bisect_left(cumulative, target), top)
        result[percentile] = histogram.get_highest_equivalent_value(histogram.get_value_from_index(index))
    return result


class Outcome(enum.StrEnum):
    """How a run ended. Only COMPLETED ran its whole plan; every other outcome keeps what was measured."""

    COMPLETED = "completed"
    ABORTED = "aborted"  # the error rate crossed the abort threshold, or the server asked for too long a wait
    CANCELLED = "cancelled"  # the cancel callable said so
    FAILED = "failed"  # the target stopped answering, or could not be reached at all


@dataclass(frozen=True)
class Latency:
    """Percentiles of a set of answered requests, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, histogram: HdrHistogram) -> Latency:
        """The percentiles of a histogram of microseconds (zeros when it is empty)."""
        count = histogram.get_total_count()
        if not count:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        values = percentiles(histogram, (50, 90, 95, 99))
        return cls(
            count=count,
            p50_ms=values[50] / 1000,
            p90_ms=values[90] / 1000,
            p95_ms=values[95] / 1000,
            p99_ms=values[99] / 1000,
            max_ms=histogram.get_max_value() / 1000,
        )


@dataclass(frozen=True)
class SendLag:
    """How late the engine itself wrote requests, from their intended time (0.1 ms resolution).

    Latency is measured from the intended time, so this lag is inside every latency figure;
    it is reported apart to show how much of a latency is the load generator's own.
    """

    p50_ms: float
    p99_ms: float
    max_ms: float
    over_1ms_pct: float

    @classmethod
    def of(cls, buckets: list[int], max_s: float) -> SendLag:
        """From counts per 0.1 ms bucket (the last one holding everything beyond)."""
        total = sum(buckets)
        if not total:
            return cls(0.0, 0.0, 0.0, 0.0)

        def percentile(share: float) -> float:
            wanted = share * total
            running = 0
            for index, count in enumerate(buckets):
                running += count
                if running >= wanted:
                    return round(min((index + 1) / 10, max_s * 1000), 3)
            return round(max_s * 1000, 3)

        over = sum(buckets[10:])
        return cls(percentile(0.5), percentile(0.99), round(max_s * 1000, 3), round(100 * over / total, 3))


@dataclass(frozen=True)
class SlaVerdict:
    """Pass or fail against the agreed SLA, with each miss in words."""

    passed: bool
    reasons: tuple[str, ...] = ()


def check_sla(
    sla: Sla,
    latency: Latency,
    error_pct: float,
    *,
    dropped_pct: float = 0.0,
    outcome: Outcome = Outcome.COMPLETED,
    reason: str = "",
) -> SlaVerdict:
    """Judge measured figures against the SLA; a run that did not complete, or dropped requests, fails."""
    reasons: list[str] = []
    if outcome is not Outcome.COMPLETED:
        reasons.append(f"the run was {outcome.value}: {reason}" if reason else f"the run was {outcome.value}")
    if latency.count == 0:
        reasons.append("no request was answered")
    else:
        if sla.p95_ms is not None and latency.p95_ms > sla.p95_ms:
            reasons.append(f"p95 {latency.p95_ms:.0f} ms is above the agreed {sla.p95_ms:g} ms")
        if sla.p99_ms is not None and latency.p99_ms > sla.p99_ms:
            reasons.append(f"p99 {latency.p99_ms:.0f} ms is above the agreed {sla.p99_ms:g} ms")
    if sla.max_error_pct is not None and error_pct > sla.max_error_pct:
        reasons.append(f"errors {error_pct:.2f}% are above the agreed {sla.max_error_pct:g}%")
    if dropped_pct > DROP_TOLERANCE_PCT:
        reasons.append(
            f"{dropped_pct:.1f}% of the planned requests could not be sent on time (no free connection, "
            "or the load generator fell behind), so the agreed rate was not held"
        )
    return SlaVerdict(not reasons, tuple(reasons))


@dataclass(frozen=True)
class SecondStats:
    """One second of the run. Everything but ``throughput`` counts the requests *scheduled* in that second.

    Grouping by intended send time is what makes latency over time honest under an open model:
    a stall shows as a latency spike for the requests that met it, not as a quiet second.
    """

    second: int
    target_rps: float
    sent: int
    dropped: int
    answered: int
    failed: int  # no HTTP answer: timeout, refused, reset...
    errors: int  # failed plus answers that are not 2xx
    statuses: dict[int, int]
    error_kinds: dict[str, int]
    latency: Latency
    throughput: int  # answers received during this second, whenever they were sent


@dataclass(frozen=True)
class TypeStats:
    """One request type's share of the run."""

    name: str
    count: int  # sent
    answered: int
    errors: int
    latency: Latency


@dataclass(frozen=True)
class StageStats:
    """A ramp, the steady stretch or one staircase step, with its SLA verdict."""

    label: str
    step: int | None
    start_s: int
    duration_s: int  # as planned
    ran_s: float  # as run (shorter when the run stopped early)
    target_rps: float  # the stage's final rate
    scheduled: int
    sent: int
    dropped: int
    answered: int
    errors: int
    achieved_rps: float  # answered requests scheduled in the stage, per second it ran
    error_pct: float
    latency: Latency
    sla: SlaVerdict | None = None


@dataclass(frozen=True)
class LoadResult:
    """Everything a run measured. Kept whole when the run ends early, so nothing measured is lost."""

    mode: str  # "open" (constant arrival rate) or "closed" (virtual users back to back)
    outcome: Outcome
    reason: str  # why it ended early, in words; "" when completed
    started_at: float  # wall clock, seconds since the epoch
    elapsed_s: float
    planned_s: float
    target_rps: float
    achieved_rps: float  # of the steady stage (the last step reached for a staircase)
    concurrency: int  # the connection pool's size
    connections_opened: int
    scheduled: int  # arrivals due while the run went on
    sent: int
    answered: int
    failed: int
    interrupted: int  # in flight when an early stop closed the connections
    dropped: int
    dropped_by_reason: dict[str, int]  # "no_connection", "late", "paused"
    errors: int
    error_pct: float
    statuses: dict[int, int]
    error_pct_by_status: dict[int, float]
    errors_by_kind: dict[str, int]
    error_pct_by_kind: dict[str, float]
    throttled: int  # 429 answers
    paused_s: float  # time spent honouring Retry-After
    latency: Latency
    send_lag: SendLag
    per_type: tuple[TypeStats, ...]
    per_second: tuple[SecondStats, ...]
    stages: tuple[StageStats, ...]
    sla: SlaVerdict | None
    highest_passing_rate: float | None  # staircase: the highest step rate that met the SLA
    histogram: tuple[tuple[float, int], ...]  # (upper bound ms, answers) bars; the last bound is the max
    hdr: str = field(repr=False)  # the whole run's histogram, HdrHistogram-encoded, for later comparison

    @property
    def dropped_pct(self) -> float:
        return 100 * self.dropped / self.scheduled if self.scheduled else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status codes become string keys)."""
        data = asdict(self)
        data["outcome"] = self.outcome.value
        for name in ("statuses", "error_pct_by_status"):
            data[name] = {str(k): v for k, v in data[name].items()}
        for second in data["per_second"]:
            second["statuses"] = {str(k): v for k, v in second["statuses"].items()}
        data["dropped_pct"] = self.dropped_pct
        return data


def histogram_bars(histogram: HdrHistogram) -> tuple[tuple[float, int], ...]:
    """Counts per bar of ``HISTOGRAM_BOUNDS_MS`` up to the largest latency seen, for the report's chart.

    A bar counts the answers up to its bound (within the histogram's 0.1% resolution) and above
    the previous bar's; the last bar ends at the maximum.
    """
    total = histogram.get_total_count()
    if not total:
        return ()
    max_us = histogram.get_max_value()
    top = histogram.get_counts_array_index(max_us)
    cumulative = list(accumulate(histogram.counts[: top + 1]))
    bars: list[tuple[float, int]] = []
    below = 0
    for bound in (*(b for b in HISTOGRAM_BOUNDS_MS if b * 1000 < max_us), max_us / 1000):
        index = min(histogram.get_counts_array_index(int(bound * 1000)), top)
        upto = cumulative[index] if bound * 1000 < max_us else total
        bars.append((float(bound), upto - below))
        below = upto
    return tuple(bars)
