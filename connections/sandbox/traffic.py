"""What a client's traffic looked like from the sandbox's side: requests in flight at once, and when each came.

Tests read it to check a client's promises against the server's own count, not the client's: "never
more than 4 requests in flight" and "nothing arrived before the Retry-After had passed".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

_KEPT = 100_000


class Traffic:
    """Counts FHIR requests in flight (now and at the peak) and keeps when each arrived and was answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.total = 0
        self._arrivals: deque[tuple[float, float, int, str]] = deque(maxlen=_KEPT)

    def arrive(self) -> float:
        """A request came in; its arrival time (time.monotonic())."""
        with self._lock:
            self.in_flight += 1
            self.total += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return time.monotonic()

    def leave(self, arrived: float, status: int, retry_after: str | None) -> None:
        """Its answer went out."""
        with self._lock:
            self.in_flight -= 1
            self._arrivals.append((arrived, time.monotonic(), status, retry_after or ""))

    def reset(self) -> None:
        """Forget the peak and the log (requests under way are still counted in flight)."""
        with self._lock:
            self.peak_in_flight = self.in_flight
            self.total = 0
            self._arrivals.clear()

    def summary(self) -> dict[str, Any]:
        """The counts, as the control API shows them."""
        with self._lock:
            return {"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight, "total": self.total}

    def log(self) -> list[dict[str, Any]]:
        """Every request kept: arrival, answer, status and Retry-After, oldest first."""
        with self._lock:
            return [{"arrived": a, "answered": b, "status": s, "retry_after": r} for a, b, s, r in list(self._arrivals)]

    def early_arrivals(self, *, allowed_in_flight: int = 0) -> list[dict[str, Any]]:
        """Requests that arrived after a 429 or 503 with Retry-After was answered and before its wait had passed.

        A client cannot know of a 429 before it arrives, so up to ``allowed_in_flight`` requests already on
        their way when it was answered may land inside its wait; past that, every one counts.
        """
        entries = self.log()
        early: list[dict[str, Any]] = []
        for slow in (e for e in entries if e["status"] in (429, 503) and e["retry_after"]):
            until = slow["answered"] + float(slow["retry_after"])
            inside = [e for e in entries if slow["answered"] < e["arrived"] < until]
            early.extend(inside[allowed_in_flight:])
        return early
