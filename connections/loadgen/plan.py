"""What a load test will do, the limits it must stay inside, and its arrival schedule.

A plan is checked against hard caps before anything is sent: a hospital approves a plan, not
whatever a typo makes of it, so a plan above a cap is refused with the cap named, and the engine
enforces the same caps again while it runs. The schedule turns the plan's rates into intended
send times (an open model: arrivals do not wait for answers), which is what lets a slow server
show its latency instead of slowing the sender down.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from dataclasses import dataclass, field

from .mix import RequestType


class PlanError(ValueError):
    """A plan that cannot run as written; ``cap`` names the hard cap it exceeds, if any."""

    def __init__(self, message: str, *, cap: str | None = None, field_name: str | None = None) -> None:
        super().__init__(message)
        self.cap = cap
        self.field = field_name


@dataclass(frozen=True)
class Caps:
    """Hard limits from settings that no plan may exceed, and that the engine never exceeds."""

    max_rate: float  # requests per second
    max_concurrency: int  # open connections
    max_duration_s: float  # the whole run, ramp and steps included
    max_total_requests: int


@dataclass(frozen=True)
class Sla:
    """The agreed latency and error limits; None means not agreed (not checked)."""

    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_pct: float | None = None


@dataclass(frozen=True)
class AbortRule:
    """Stop early when this share of requests fails over a sliding window.

    429s are left out: they are answered by backing off, not by giving up. The window needs
    ``min_requests`` answers or failures before it can trip, so one early error cannot end a run.
    """

    error_pct: float = 50.0
    window_s: int = 5
    min_requests: int = 20


@dataclass(frozen=True)
class Staircase:
    """A capacity search: each rate in turn for ``step_s`` seconds, stopping at the first step whose SLA fails."""

    rates: tuple[float, ...]
    step_s: int

    @classmethod
    def linear(cls, start: float, step: float, steps: int, step_s: int) -> Staircase:
        """``steps`` rates from ``start`` rising by ``step`` each."""
        return cls(tuple(start + step * i for i in range(steps)), step_s)


@dataclass(frozen=True)
class LoadPlan:
    """One load test: the mix, the load shape and the limits that judge and guard it."""

    mix: tuple[RequestType, ...]
    rate: float  # target arrival rate, req/s (the last staircase rate when stepping)
    duration_s: int  # seconds at the target rate, after the ramp (ignored by a staircase)
    ramp_s: int = 0  # seconds rising linearly from 0 to the rate (to the first step's rate)
    concurrency: int = 50  # connection pool size: at most this many requests in flight
    staircase: Staircase | None = None
    sla: Sla = field(default_factory=Sla)
    abort: AbortRule = field(default_factory=AbortRule)
    seed: int = 1
    # A request the engine could not send within this long of its intended time is dropped
    # (counted, never sent late): the engine fell behind, and the report says so.
    late_after_s: float = 0.05

    def stages(self) -> tuple[Stage, ...]:
        """The plan's shape as stages of linearly changing rate, in order."""
        stages: list[Stage] = []
        if self.staircase is not None:
            first = self.staircase.rates[0] if self.staircase.rates else 0.0
            if self.ramp_s:
                stages.append(Stage("ramp-up", self.ramp_s, 0.0, first))
            for number, rate in enumerate(self.staircase.rates, 1):
                stages.append(Stage(f"step {number}", self.staircase.step_s, rate, rate, step=number))
            return tuple(stages)
        if self.ramp_s:
            stages.append(Stage("ramp-up", self.ramp_s, 0.0, self.rate))
        stages.append(Stage("steady", self.duration_s, self.rate, self.rate))
        return tuple(stages)

    @property
    def total_duration_s(self) -> int:
        return sum(stage.duration_s for stage in self.stages())

    @property
    def peak_rate(self) -> float:
        return max((max(s.rate_from, s.rate_to) for s in self.stages()), default=0.0)


def rate_for_peak(normal_peak: float, stress_factor: float = 2.0) -> float:
    """The target rate of a plan stated as "normal peak N req/s, stress factor F"."""
    return normal_peak * stress_factor


@dataclass(frozen=True)
class Stage:
    """A stretch of the schedule whose rate moves linearly from ``rate_from`` to ``rate_to``."""

    label: str
    duration_s: int
    rate_from: float
    rate_to: float
    step: int | None = None  # the staircase step number

    @property
    def expected_requests(self) -> float:
        return (self.rate_from + self.rate_to) / 2 * self.duration_s


def validate(plan: LoadPlan, caps: Caps) -> None:
    """Refuse a plan that is malformed or above a cap; the PlanError names what to fix."""
    if not plan.mix:
        raise PlanError("The request mix is empty; give at least one request type a weight.", field_name="mix")
    if any(not (t.weight > 0 and math.isfinite(t.weight)) for t in plan.mix):
        raise PlanError("Every request type in the mix needs a weight above zero.", field_name="mix")
    if len({t.name for t in plan.mix}) != len(plan.mix):
        raise PlanError("A request type appears twice in the mix.", field_name="mix")
    for request_type in plan.mix:
        _check_builder(request_type)
    for name in ("duration_s", "ramp_s", "concurrency", "seed"):
        value = getattr(plan, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(f"{name} must be a whole number, got {value!r}.", field_name=name)
    if plan.ramp_s < 0:
        raise PlanError("The ramp-up must not be negative.", field_name="ramp_s")
    if plan.concurrency < 1:
        raise PlanError("Concurrency must be at least 1 connection.", field_name="concurrency")
    if not 0 < plan.late_after_s <= 10:
        raise PlanError("late_after_s must be above 0 and at most 10 seconds.", field_name="late_after_s")
    if plan.staircase is None:
        if not (plan.rate > 0 and math.isfinite(plan.rate)):
            raise PlanError("The target rate must be above 0 requests per second.", field_name="rate")
        if plan.duration_s < 1:
            raise PlanError("The duration must be at least 1 second.", field_name="duration_s")
    else:
        steps = plan.staircase
        if not steps.rates:
            raise PlanError("A staircase needs at least one rate.", field_name="staircase")
        if any(not (r > 0 and math.isfinite(r)) for r in steps.rates):
            raise PlanError("Every staircase rate must be above 0 requests per second.", field_name="staircase")
        if list(steps.rates) != sorted(steps.rates):
            raise PlanError("Staircase rates must rise step by step.", field_name="staircase")
        if isinstance(steps.step_s, bool) or not isinstance(steps.step_s, int) or steps.step_s < 1:
            raise PlanError(
                "Each staircase step must last a whole number of seconds, at least 1.", field_name="staircase"
            )
    rule = plan.abort
    if not 0 < rule.error_pct <= 100:
        raise PlanError("The abort threshold must be above 0% and at most 100%.", field_name="abort")
    if rule.window_s < 1 or rule.min_requests < 1:
        raise PlanError("The abort window must be at least 1 second and 1 request.", field_name="abort")
    for name in ("p95_ms", "p99_ms", "max_error_pct"):
        value = getattr(plan.sla, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise PlanError(f"The SLA's {name} must be a number of at least 0.", field_name="sla")

    if plan.peak_rate > caps.max_rate:
        raise PlanError(
            f"The plan's rate of {plan.peak_rate:g} req/s is above the cap of {caps.max_rate:g} req/s.",
            cap="max_rate",
        )
    if plan.concurrency > caps.max_concurrency:
        raise PlanError(
            f"The plan's concurrency of {plan.concurrency} is above the cap of {caps.max_concurrency} connections.",
            cap="max_concurrency",
        )
    if plan.total_duration_s > caps.max_duration_s:
        raise PlanError(
            f"The plan runs for {plan.total_duration_s} s, above the cap of {caps.max_duration_s:g} s.",
            cap="max_duration_s",
        )
    total = Schedule(plan.stages()).total
    if total > caps.max_total_requests:
        raise PlanError(
            f"The plan sends {total:,} requests, above the cap of {caps.max_total_requests:,}.",
            cap="max_total_requests",
        )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PATH = re.compile(r"[!-~]*")  # printable ASCII without spaces: a request-target as sent


def _check_builder(request_type: RequestType) -> None:
    """A request type must build a method and a plain-ASCII path under the base (tried once, seeded)."""
    try:
        method, path = request_type.build(random.Random(0))
    except Exception as exc:
        raise PlanError(
            f"The request type {request_type.name} could not build a request ({type(exc).__name__}).", field_name="mix"
        ) from None
    if method not in _METHODS or not isinstance(path, str) or not _PATH.fullmatch(path) or path.startswith("/"):
        raise PlanError(
            f"The request type {request_type.name} builds {method!r} {path!r}; it must give an HTTP method and a "
            "percent-encoded path under the FHIR base (no leading slash).",
            field_name="mix",
        )


class Schedule:
    """Intended send times of an open-model run: arrival n happens when the cumulative rate reaches n + 1/2.

    Half-integers centre each arrival in its share of time, so a constant rate r over D seconds
    gives round(r * D) arrivals spaced exactly 1/r apart. Both directions are closed forms per
    stage (linear rate means quadratic cumulative), so the engine can ask "how many were due by
    now" in O(log stages) without keeping a queue.
    """

    def __init__(self, stages: tuple[Stage, ...]) -> None:
        self.stages = stages
        self._starts: list[float] = []  # stage start times
        self._counts: list[float] = []  # cumulative arrivals (continuous) at each stage start
        t = 0.0
        c = 0.0
        for stage in stages:
            self._starts.append(t)
            self._counts.append(c)
            t += stage.duration_s
            c += stage.expected_requests
        self.duration = t
        self._end_count = c
        self.total = max(0, math.floor(c + 0.5))
        # One constant-rate stage (most plans) takes a closed form on the hot path.
        self._rate = stages[0].rate_from if len(stages) == 1 and stages[0].rate_from == stages[0].rate_to else 0.0

    def cumulative(self, t: float) -> float:
        """Arrivals (continuous) expected by ``t`` seconds after the start."""
        if t <= 0 or not self.stages:
            return 0.0
        if t >= self.duration:
            return self._end_count
        i = bisect.bisect_right(self._starts, t) - 1
        stage = self.stages[i]
        s = t - self._starts[i]
        slope = (stage.rate_to - stage.rate_from) / stage.duration_s
        return self._counts[i] + stage.rate_from * s + slope * s * s / 2

    def count_at(self, t: float) -> int:
        """How many arrivals are due at or before ``t``."""
        if self._rate:
            due = math.floor((t if t < self.duration else self.duration) * self._rate + 0.5)
        else:
            due = math.floor(self.cumulative(t) + 0.5)
        return self.total if due > self.total else (due if due > 0 else 0)

    def time_of(self, n: int) -> float:
        """The intended send time of arrival ``n`` (from 0), in seconds after the start."""
        target = n + 0.5
        if self._rate:
            return min(target / self._rate, self.duration)
        # The last stage starting at or below the target count (every stage adds arrivals, as
        # validated plans have rates above zero, so starts strictly rise).
        i = max(0, bisect.bisect_right(self._counts, target) - 1)
        stage = self.stages[i]
        c = target - self._counts[i]
        a = stage.rate_from
        k = (stage.rate_to - stage.rate_from) / (2 * stage.duration_s)
        # k s^2 + a s = c, written so that neither a = 0 nor k = 0 divides by zero.
        root = math.sqrt(max(0.0, a * a + 4 * k * c))
        s = 2 * c / (a + root) if a + root > 0 else 0.0
        return self._starts[i] + min(s, stage.duration_s)

    def stage_at(self, t: float) -> int:
        """The index of the stage running at ``t`` (the last one after the end)."""
        if not self.stages:
            return 0
        return max(0, min(len(self.stages) - 1, bisect.bisect_right(self._starts, t) - 1))

    def rate_at(self, t: float) -> float:
        """The target rate at ``t`` seconds."""
        if not self.stages or t < 0 or t >= self.duration:
            return 0.0
        i = self.stage_at(t)
        stage = self.stages[i]
        return stage.rate_from + (stage.rate_to - stage.rate_from) * (t - self._starts[i]) / stage.duration_s
