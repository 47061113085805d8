"""The limits a hospital agreed to, shared by every request of one run: concurrency, rate and slow-downs.

One ``PullLimiter`` per run and connection, handed to the guarded client (``connections.http``),
which takes a place before each attempt and gives it back after. It holds three things:

- a concurrency cap: never more than ``concurrency`` requests in flight, whichever thread sends;
- a rate: places are handed out at most ``rate`` a second, evenly spaced;
- a connection-wide slow-down: when the hospital answers 429 or 503, the guarded client works out
  the wait as it always has (Retry-After, else the IETF RateLimit fields, else exponential back-off
  with jitter) and calls ``hold``; no request of the run, on any thread, goes out until it has passed.

It imports nothing but the standard library, so it is tested without Django or HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Kept for the tests and the run's report: the last holds and the moments places were granted. Short:
# a pull of thousands of requests must not grow with them.
_HISTORY = 256


class PullStopped(Exception):
    """The run this limiter serves has ended (failed, cancelled or done): no more places are handed out."""


@dataclass
class LimiterStats:
    """What the limiter did: places granted, the most ever in flight, and the connection-wide pauses."""

    granted: int = 0
    peak_in_flight: int = 0
    slowdowns: int = 0  # 429 and 503 answers that paused the connection
    paused_s: float = 0.0  # wall-clock time the whole connection was held, overlaps counted once
    holds: list[tuple[float, float]] = field(default_factory=list)  # (monotonic start, until)
    grants: list[float] = field(default_factory=list)  # monotonic moments places were granted

    def as_dict(self) -> dict[str, float | int]:
        """A JSON-ready summary (without the histories)."""
        return {
            "granted": self.granted,
            "peak_in_flight": self.peak_in_flight,
            "slowdowns": self.slowdowns,
            "paused_s": round(self.paused_s, 1),
        }


class PullLimiter:
    """A concurrency cap, an optional rate and a connection-wide pause, safe to share between threads."""

    def __init__(
        self,
        *,
        concurrency: int = 4,
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be above 0, or None")
        self.concurrency = concurrency
        self.rate = rate
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0
        self._next_grant = 0.0  # the earliest moment the rate lets the next place go
        self._resume_at = 0.0  # the end of the connection-wide pause
        self._stopped = False
        self.stats = LimiterStats()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the places for one attempt: waits out a pause, the rate and the cap."""
        self._acquire()
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def pause(self, wait: float) -> None:
        """The hospital said slow down (429 or 503): no place is granted for ``wait`` s, on any thread.

        The guarded client calls it while it still holds the place of the request that was refused,
        so no other thread can slip a request in between the answer and the pause.
        """
        started = self._clock()
        with self._cond:
            until = started + max(0.0, wait)
            if until > self._resume_at:
                # Only the part not already covered by a pause under way counts as more waiting.
                self.stats.paused_s += until - max(started, self._resume_at)
                self._resume_at = until
            self.stats.slowdowns += 1
            self._remember(self.stats.holds, (started, until))
            self._cond.notify_all()

    def wait_out(self) -> float:
        """Sleep until the connection's pause is over (or the run stops); the time slept."""
        started = self._clock()
        with self._cond:
            while not self._stopped:
                left = self._resume_at - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self._clock() - started

    def hold(self, wait: float) -> float:
        """``pause`` then ``wait_out``: for a caller that no longer holds a place."""
        self.pause(wait)
        return self.wait_out()

    def stop(self) -> None:
        """End the run's traffic: threads waiting for a place get PullStopped instead."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _acquire(self) -> None:
        with self._cond:
            while True:
                if self._stopped:
                    raise PullStopped("The run ended; no more requests are sent.")
                now = self._clock()
                ready_at = max(self._resume_at, self._next_grant)
                if now < ready_at:
                    self._cond.wait(ready_at - now)
                    continue
                if self._in_flight >= self.concurrency:
                    self._cond.wait()
                    continue
                break
            self._in_flight += 1
            if self.rate:
                self._next_grant = max(now, self._next_grant) + 1.0 / self.rate
            stats = self.stats
            stats.granted += 1
            stats.peak_in_flight = max(stats.peak_in_flight, self._in_flight)
            self._remember(stats.grants, now)

    @staticmethod
    def _remember(history: list[Any], item: Any) -> None:
        if len(history) >= _HISTORY:
            del history[: _HISTORY // 2]
        history.append(item)
