"""The load engine: an open-model HTTP/1.1 load generator on asyncio, uvloop and httptools.

Why it is built like this:

* **Open model.** Requests are due at the plan's arrival rate whether or not earlier ones were
  answered, and each latency is measured from the request's *intended* send time. A closed loop
  (send, wait, send) lets a slow server slow the sender and hide its own queueing: the
  coordinated omission that wrk2 corrects. When no pooled connection is free, or the engine
  itself fell more than ``late_after_s`` behind, the request is counted as dropped (k6's
  ``dropped_iterations``) rather than sent late, so the sent rate never quietly differs from
  the reported one.
* **Speed.** One thread, one event loop, a bounded pool of keep-alive connections (the plan's
  concurrency), protocol callbacks rather than stream coroutines, httptools' C parser, requests
  pre-serialised per path, and one histogram record per answer. Timers are per run, not per
  request: a sweep every quarter second finds reads that timed out.
* **Safety.** Hard caps bound rate, connections, duration and request count; a 429 pauses all
  sending until its Retry-After has passed; the error rate over a sliding window can stop the
  run; a target that stops answering ends it as failed; a cancel callable and a progress
  callback are polled every second. Whatever ends a run, what was measured is returned.

It takes a ``PinnedTarget`` and dials only its address; it imports nothing of Django or the portal.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import math
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import httptools
import uvloop
from hdrh.histogram import HdrHistogram

from .mix import RequestType
from .plan import Caps, LoadPlan, Schedule, Stage, validate
from .results import (
    LATENCY_MAX_US,
    Latency,
    LoadResult,
    Outcome,
    SecondStats,
    SendLag,
    SlaVerdict,
    StageStats,
    TypeStats,
    check_sla,
    histogram_bars,
    new_histogram,
)
from .target import PinnedTarget

_monotonic = time.monotonic
SWEEP_INTERVAL_S = 0.25
# With every connection busy, how often arrivals are checked and counted as dropped.
POOL_FULL_POLL_S = 0.01
# The last stretch of a wait for the next arrival is slept rather than left to the loop's timer.
FINE_WAIT_S = 0.001
# The engine's own send lag (intended time to the write) in 0.1 ms buckets up to 20 ms.
_LAG_BUCKETS = 200
# Without a Retry-After header, a 429 pauses sending this long.
DEFAULT_RETRY_AFTER_S = 1.0
_REQUEST_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class Progress:
    """What a running test reports once a second (for the live page)."""

    elapsed_s: float
    planned_s: float
    target_rps: float  # the schedule's rate now
    sent: int
    answered: int
    errors: int
    dropped: int
    throttled: int
    paused: bool
    last_second_rps: float  # answers in the last whole second
    last_second_p95_ms: float | None  # of the requests scheduled in the last finished second
    stage: str
    # The seconds folded in since the last report, in order (each is reported once), so a caller
    # can keep the per-second series as it grows: a run whose process dies keeps what it measured.
    seconds: tuple[SecondStats, ...] = ()


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


def run(
    target: PinnedTarget,
    plan: LoadPlan,
    caps: Caps,
    *,
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck | None = None,
) -> LoadResult:
    """Run an open-model load test to its end (or an early stop) and return what it measured.

    Blocks the calling thread on its own uvloop event loop. ``progress`` and ``cancelled`` are
    called on that loop once a second: keep them short (one database write), as requests due
    meanwhile wait for them (and their latency, measured from the intended time, shows it).
    Raises ``PlanError`` before sending anything if the plan is malformed or above a cap.
    """
    validate(plan, caps)
    engine = _Engine(target, plan, caps, progress=progress, cancelled=cancelled)
    return uvloop.run(engine.run())


def run_closed(
    target: PinnedTarget,
    mix: tuple[RequestType, ...],
    caps: Caps,
    *,
    users: int,
    duration_s: int,
    rate: float | None = None,
    seed: int = 1,
) -> LoadResult:
    """A closed-loop run: ``users`` virtual users, each sending its next request when the last is answered.

    With ``rate``, each user paces itself to ``rate / users`` per second but sends at once when
    it is already late, and latency is measured from the actual send: what most load tools do,
    and exactly the coordinated omission the open model avoids. Kept to show the difference.
    """
    if not 1 <= users <= caps.max_concurrency:
        raise ValueError(f"users must be 1 to {caps.max_concurrency}")
    if not 1 <= duration_s <= caps.max_duration_s:
        raise ValueError(f"duration_s must be 1 to {caps.max_duration_s:g}")
    if rate is not None and not 0 < rate <= caps.max_rate:
        raise ValueError(f"rate must be above 0 and at most {caps.max_rate:g}")
    plan = LoadPlan(mix=mix, rate=rate or caps.max_rate, duration_s=duration_s, concurrency=users, seed=seed)
    engine = _Engine(target, plan, caps, closed_users=users, closed_rate=rate)
    return uvloop.run(engine.run())


class _TooLarge(Exception):
    pass


class _Second:
    """Running counts of the requests scheduled in one second."""

    __slots__ = ("answered", "errors", "failed", "hists", "kinds", "outstanding", "sent", "statuses")

    def __init__(self, types: int) -> None:
        self.hists: list[HdrHistogram | None] = [None] * types
        self.sent = 0
        self.answered = 0
        self.failed = 0
        self.errors = 0
        self.outstanding = 0
        self.statuses: dict[int, int] = {}
        self.kinds: dict[str, int] = {}


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; parsing in httptools' callbacks."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.gone = False
        self.kind = 0
        self.intended = 0.0
        self.sent_at = 0.0
        self.last_io = 0.0
        self.sec: _Second | None = None
        self.data = b""
        self.size = 0
        self.status = 0
        self.retry_after: bytes | None = None
        self.got_bytes = False
        self.used = 0
        self.retried = False
        self.too_large = False
        self.next_slot = 0.0  # closed loop: when this user may send next

    # -- sending ------------------------------------------------------------------------

    def send(self, kind: int, intended: float, sec: _Second, data: bytes, retried: bool = False) -> None:
        self.busy = True
        self.kind = kind
        self.intended = intended
        self.sec = sec
        self.data = data
        self.size = 0
        self.status = 0
        self.retry_after = None
        self.got_bytes = False
        self.retried = retried
        self.sent_at = self.last_io = now = _monotonic()
        assert self.transport is not None
        self.transport.write(data)
        engine = self.engine
        lag = now - intended
        bucket = int(lag * 10_000)
        engine.lag_buckets[bucket if bucket < _LAG_BUCKETS else _LAG_BUCKETS] += 1
        if lag > engine.lag_max:
            engine.lag_max = lag

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Headers and body are one write, but the server's delayed ACK must not hold the next.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_io = _monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.engine.failed(self, "too_large" if self.too_large else "protocol", close=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.lost(self)

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self.retry_after = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.engine.max_body:
            self.too_large = True
            raise _TooLarge

    def on_message_complete(self) -> None:
        self.engine.answered(self)


class _Engine:
    """The state of one run; every method runs on the event loop's thread."""

    def __init__(
        self,
        target: PinnedTarget,
        plan: LoadPlan,
        caps: Caps,
        *,
        progress: ProgressCallback | None = None,
        cancelled: CancelCheck | None = None,
        closed_users: int | None = None,
        closed_rate: float | None = None,
    ) -> None:
        self.target = target
        self.plan = plan
        self.caps = caps
        self.progress_cb = progress
        self.cancelled_cb = cancelled
        self.closed_users = closed_users
        self.closed_rate = closed_rate
        self.mode = "open" if closed_users is None else "closed"
        self.types = plan.mix
        self.rng = random.Random(plan.seed)
        total_weight = sum(t.weight for t in self.types)
        cumulative, running = [], 0.0
        for t in self.types:
            running += t.weight
            cumulative.append(running / total_weight)
        self.cumulative = cumulative
        if self.mode == "open":
            self.stages: tuple[Stage, ...] = plan.stages()
        else:
            self.stages = (Stage("closed loop", plan.duration_s, closed_rate or 0.0, closed_rate or 0.0),)
        self.schedule = Schedule(self.stages)
        self.duration = min(self.schedule.duration, caps.max_duration_s)
        self.total = min(self.schedule.total, caps.max_total_requests) if self.mode == "open" else 0
        self.cap_connections = min(plan.concurrency, caps.max_concurrency)
        self.max_body = target.max_response_bytes
        self.late_after = plan.late_after_s
        self.pool_full_poll = min(POOL_FULL_POLL_S, self.late_after / 2)
        head = f" HTTP/1.1\r\nHost: {target.host_header}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in target.headers) + "\r\n"
        self.head = head
        self.request_cache: dict[tuple[str, str], bytes] = {}

        self.t0 = 0.0
        self.wall0 = 0.0
        self.next_n = 0
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.open_count = 0
        self.opened = 0
        self.in_flight = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.stopping = False
        self.finished: asyncio.Future[None] | None = None
        self.outcome = Outcome.COMPLETED
        self.reason = ""
        self.interrupted = 0

        self.seconds: dict[int, _Second] = {}
        self.done_seconds: dict[int, SecondStats] = {}
        self.unreported: list[int] = []  # folded seconds not yet handed to the progress callback
        self.throughput: list[int] = []
        # Per completion second, for the abort window: attempts and errors (429s left out).
        self.window_total: list[int] = []
        self.window_errors: list[int] = []
        self.window_answers: list[int] = []
        self.type_hists = [new_histogram() for _ in self.types]
        self.type_sent = [0] * len(self.types)
        self.type_answered = [0] * len(self.types)
        self.type_errors = [0] * len(self.types)
        self.stage_hists = [new_histogram() for _ in self.stages]
        self.stage_starts = [sum(s.duration_s for s in self.stages[:i]) for i in range(len(self.stages))]
        self.stage_verdicts: dict[int, SlaVerdict] = {}
        self.overall = new_histogram()
        self.dropped = {"no_connection": 0, "late": 0, "paused": 0}
        # Drops per scheduled second, apart from the seconds' other counts: a pause can end (and
        # its arrivals be counted as dropped) after the seconds it covered were folded in.
        self.drops: dict[int, int] = {}
        self.sent = 0
        self.answered_count = 0
        self.failed_count = 0
        self.error_count = 0
        self.throttled = 0
        self.paused_until = 0.0
        self.paused_s = 0.0
        # Since when something has waited for an answer (a request in flight, or a failure)
        # with none arriving; None while the target keeps answering.
        self.unanswered_since: float | None = None
        self.lag_buckets = [0] * (_LAG_BUCKETS + 1)
        self.lag_max = 0.0

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> LoadResult:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.finished = loop.create_future()
        self.wall0 = time.time()
        self.t0 = _monotonic()
        self._tick_handle = loop.call_at(loop.time() + 1.0, self._tick, 1)
        self._sweep_handle = loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        if self.mode == "open":
            self._pump()
        else:
            for _ in range(self.closed_users or 0):
                self._closed_connect(first=True)
        try:
            await self.finished
        finally:
            self._tick_handle.cancel()
            self._sweep_handle.cancel()
            if self.timer is not None:
                self.timer.cancel()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.abort()
            # Let aborted transports report connection_lost before the loop closes.
            await asyncio.sleep(0)
        return self._result()

    def _stop(self, outcome: Outcome, reason: str) -> None:
        """End the run early: stop sending, count what is in flight as interrupted, keep the rest."""
        if self.stopping:
            return
        self.stopping = True
        self.outcome = outcome
        self.reason = reason
        self.interrupted = self.in_flight
        for sec in self.seconds.values():
            sec.outstanding = 0
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def _maybe_finished(self) -> None:
        if self.in_flight == 0 and self.next_n >= self.total and self.mode == "open" and not self.stopping:
            self.stopping = True
            if self.finished is not None and not self.finished.done():
                self.finished.set_result(None)

    # -- scheduling (open model) --------------------------------------------------------

    def _pump(self) -> None:
        """Send every request now due on a free connection; count the ones that cannot go.

        Called when the timer for the next arrival fires and whenever a connection frees up.
        Arrivals older than ``late_after_s`` are dropped as "late" (the engine fell behind);
        of the rest, those beyond the free connections are dropped as "no_connection".
        """
        if self.stopping or self.mode != "open":
            return
        now = _monotonic()
        elapsed = now - self.t0
        schedule = self.schedule
        due = schedule.count_at(elapsed if elapsed < self.duration else self.duration)
        if due > self.total:
            due = self.total
        n = self.next_n
        if due > n:
            if self.paused_until:
                # Requests due while a Retry-After was being honoured are never sent late.
                paused_cut = min(due, schedule.count_at(self.paused_until - self.t0))
                if paused_cut > n:
                    self._drop(n, paused_cut, "paused")
                    n = self.next_n
                if now < self.paused_until:
                    self._arm(self.paused_until)
                    return
            if due > n and schedule.time_of(n) < elapsed - self.late_after:
                self._drop(n, min(due, schedule.count_at(elapsed - self.late_after)), "late")
                n = self.next_n
            free = len(self.idle) + self.cap_connections - self.open_count
            if due - n > free:
                self._drop(n, due - free, "no_connection")
                n = self.next_n
            t0 = self.t0
            while n < due:
                self.next_n = n + 1
                self._dispatch(self._choose(), t0 + schedule.time_of(n))
                if self.stopping:
                    return
                n = self.next_n
        if n >= self.total:
            self._maybe_finished()
        elif self.idle or self.open_count < self.cap_connections:
            self._arm(self.t0 + schedule.time_of(n))
        else:
            # Every connection is busy: the next answer pumps again, but if none comes soon the
            # arrivals meanwhile must still be counted as dropped for want of a connection (not
            # later, as "late"), so look again shortly, whatever the rate.
            self._arm(max(self.t0 + schedule.time_of(n), now + self.pool_full_poll))

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            if when >= self.timer_at:
                return
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_later(when - _monotonic(), self._on_timer)

    def _on_timer(self) -> None:
        """The next arrival is (nearly) due: finish the wait precisely, then send.

        The event loop's timers have millisecond resolution and may fire early; spinning on the
        loop until the exact time would burn a core, so the last stretch (under a millisecond)
        is slept. Answers arriving meanwhile wait at most that long to be read.
        """
        self.timer = None
        self.timer_at = math.inf
        if self.mode == "open" and not self.stopping and self.next_n < self.total:
            wait = self.t0 + self.schedule.time_of(self.next_n) - _monotonic()
            if wait > FINE_WAIT_S:
                self._arm(self.t0 + self.schedule.time_of(self.next_n))
                return
            if wait > 0:
                time.sleep(wait)
        self._pump()

    def _drop(self, start: int, end: int, reason: str) -> None:
        """Count arrivals [start, end) as dropped, each in the second it was scheduled in."""
        if end <= start:
            return
        self.dropped[reason] += end - start
        schedule = self.schedule
        n = start
        while n < end:
            second = int(schedule.time_of(n))
            upto = min(end, schedule.count_at(second + 1))
            if upto <= n:
                upto = n + 1
            self.drops[second] = self.drops.get(second, 0) + upto - n
            n = upto
        self.next_n = max(self.next_n, end)

    def _choose(self) -> int:
        if len(self.cumulative) == 1:
            return 0
        return min(bisect.bisect_right(self.cumulative, self.rng.random()), len(self.cumulative) - 1)

    def _request(self, kind: int) -> bytes:
        key = self.types[kind].build(self.rng)
        data = self.request_cache.get(key)
        if data is None:
            method, path = key
            data = f"{method} {self.target.base_path}/{path}{self.head}".encode("latin-1")
            if len(self.request_cache) < _REQUEST_CACHE_LIMIT:
                self.request_cache[key] = data
        return data

    def _second(self, second: int) -> _Second:
        sec = self.seconds.get(second)
        if sec is None:
            sec = self.seconds[second] = _Second(len(self.types))
        return sec

    def _dispatch(self, kind: int, intended: float) -> None:
        """Send one request: on an idle connection, or on a new one while the pool has room."""
        if self.sent >= self.caps.max_total_requests:
            self._stop(Outcome.COMPLETED, f"stopped at the cap of {self.caps.max_total_requests:,} requests")
            return
        sec = self._second(int(intended - self.t0))
        sec.sent += 1
        sec.outstanding += 1
        self.sent += 1
        self.type_sent[kind] += 1
        self.in_flight += 1
        if self.unanswered_since is None:
            self.unanswered_since = intended
        data = self._request(kind)
        if self.idle:
            self.idle.pop().send(kind, intended, sec, data)
        else:
            self.open_count += 1
            self.loop.create_task(self._open_and_send(kind, intended, sec, data, False))

    def _redispatch(self, conn: _Conn) -> None:
        """Send a request again whose reused connection closed before any answer (an idle keep-alive race)."""
        assert conn.sec is not None
        if self.idle:
            self.idle.pop().send(conn.kind, conn.intended, conn.sec, conn.data, retried=True)
        elif self.open_count < self.cap_connections:
            self.open_count += 1
            self.loop.create_task(self._open_and_send(conn.kind, conn.intended, conn.sec, conn.data, True))
        else:
            self._count_failure(conn.kind, conn.sec, "closed")

    async def _open(self) -> _Conn:
        target = self.target
        kwargs: dict[str, Any] = {}
        if target.scheme == "https":
            kwargs = {"ssl": target.ssl_context, "server_hostname": target.server_name}
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(lambda: _Conn(self), target.address, target.port, **kwargs),
            timeout=target.connect_timeout,
        )
        self.opened += 1
        return conn

    async def _open_and_send(self, kind: int, intended: float, sec: _Second, data: bytes, retried: bool) -> None:
        try:
            conn = await self._open()
        except Exception as exc:  # any failure to connect is this request's error, never a lost task
            self.open_count -= 1
            if not self.stopping:
                self._count_failure(kind, sec, _connect_error_kind(exc))
                self._pump()
            return
        if self.stopping:
            conn.gone = True
            if conn.transport is not None:
                conn.transport.abort()
            return
        self.conns.add(conn)
        conn.send(kind, intended, sec, data, retried)

    # -- answers and failures -----------------------------------------------------------

    def answered(self, conn: _Conn) -> None:
        """A whole response arrived: record it, honour a 429, reuse or close the connection."""
        if not conn.busy or self.stopping:
            if not self.stopping:
                self.failed(conn, "protocol", close=True)  # an answer nobody asked for
            return
        now = _monotonic()
        conn.busy = False
        conn.used += 1
        sec = conn.sec
        assert sec is not None
        kind = conn.kind
        status = conn.status
        micros = int((now - conn.intended) * 1_000_000)
        hist = sec.hists[kind]
        if hist is None:
            hist = sec.hists[kind] = new_histogram()
        hist.record_value(1 if micros < 1 else (micros if micros < LATENCY_MAX_US else LATENCY_MAX_US))
        sec.answered += 1
        sec.outstanding -= 1
        sec.statuses[status] = sec.statuses.get(status, 0) + 1
        self.in_flight -= 1
        self.answered_count += 1
        self.type_answered[kind] += 1
        self.unanswered_since = now if self.in_flight else None
        second = int(now - self.t0)
        throughput = self.throughput
        if second >= len(throughput):
            self._grow(second)
        throughput[second] += 1
        self.window_answers[second] += 1
        if status != 429:
            self.window_total[second] += 1
        if not 200 <= status < 300:
            sec.errors += 1
            self.error_count += 1
            self.type_errors[kind] += 1
            if status == 429:
                self._throttle(conn.retry_after, now)
            else:
                self.window_errors[second] += 1
        if self.stopping:
            return
        if conn.parser.should_keep_alive():
            if self.mode == "open":
                self.idle.append(conn)
                self._pump()
            else:
                self._closed_next(conn)
        else:
            self._discard(conn)
            conn.transport.close() if conn.transport is not None else None
            if self.mode == "open":
                self._pump()
            else:
                self._closed_connect()

    def failed(self, conn: _Conn, kind_of_error: str, *, close: bool) -> None:
        """The request on ``conn`` got no usable answer; count it and drop the connection."""
        was_busy = conn.busy
        conn.busy = False
        self._discard(conn)
        if close and conn.transport is not None:
            conn.transport.abort()
        if was_busy and conn.sec is not None and not self.stopping:
            self._count_failure(conn.kind, conn.sec, kind_of_error)
        self._after_loss()

    def lost(self, conn: _Conn) -> None:
        """The connection closed under us (the server hung up, or we aborted it)."""
        if conn.gone:
            return
        was_busy = conn.busy
        conn.busy = False
        self._discard(conn)
        if was_busy and conn.sec is not None and not self.stopping:
            if not conn.got_bytes and conn.used > 0 and not conn.retried and self.mode == "open":
                self._redispatch(conn)
            else:
                self._count_failure(conn.kind, conn.sec, "closed")
        self._after_loss()

    def _after_loss(self) -> None:
        if self.stopping:
            return
        if self.mode == "open":
            self._pump()
        else:
            self._closed_connect(delay=0.1)

    def _discard(self, conn: _Conn) -> None:
        if conn.gone:
            return
        conn.gone = True
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.open_count -= 1

    def _count_failure(self, kind: int, sec: _Second, kind_of_error: str) -> None:
        sec.failed += 1
        sec.errors += 1
        sec.outstanding -= 1
        sec.kinds[kind_of_error] = sec.kinds.get(kind_of_error, 0) + 1
        self.in_flight -= 1
        self.failed_count += 1
        self.error_count += 1
        self.type_errors[kind] += 1
        if self.unanswered_since is None:
            self.unanswered_since = _monotonic()
        second = int(_monotonic() - self.t0)
        if second >= len(self.throughput):
            self._grow(second)
        self.window_total[second] += 1
        self.window_errors[second] += 1
        if self.mode == "open":
            self._maybe_finished()

    def _grow(self, second: int) -> None:
        extra = second + 1 - len(self.throughput)
        for series in (self.throughput, self.window_total, self.window_errors, self.window_answers):
            series.extend([0] * extra)

    def _throttle(self, retry_after: bytes | None, now: float) -> None:
        """A 429: pause every sender until Retry-After has passed (or end the run if it is too long)."""
        self.throttled += 1
        wait = _parse_retry_after(retry_after)
        if wait is None:
            wait = DEFAULT_RETRY_AFTER_S
        if wait > self.target.max_retry_after:
            self._stop(
                Outcome.ABORTED,
                f"the server asked us to wait {wait:.0f} s before sending more (429 Retry-After), longer than "
                f"the {self.target.max_retry_after:.0f} s we wait",
            )
            return
        until = now + wait
        if until > self.paused_until:
            self.paused_s += until - max(now, self.paused_until)
            self.paused_until = until

    # -- closed loop ----------------------------------------------------------------------

    def _closed_connect(self, *, first: bool = False, delay: float = 0.0) -> None:
        if self.stopping:
            return
        if delay:
            self.loop.call_later(delay, self._closed_connect)
            return
        self.open_count += 1
        self.loop.create_task(self._closed_open())

    async def _closed_open(self) -> None:
        try:
            conn = await self._open()
        except Exception as exc:
            self.open_count -= 1
            if not self.stopping:
                now = _monotonic()
                sec = self._second(int(now - self.t0))
                sec.sent += 1
                sec.outstanding += 1
                self.in_flight += 1
                self.sent += 1
                self._count_failure(0, sec, _connect_error_kind(exc))
                self._closed_connect(delay=0.1)
            return
        if self.stopping:
            conn.gone = True
            if conn.transport is not None:
                conn.transport.abort()
            return
        self.conns.add(conn)
        conn.next_slot = _monotonic()
        self._closed_send(conn)

    def _closed_next(self, conn: _Conn) -> None:
        if self.closed_rate:
            conn.next_slot += (self.closed_users or 1) / self.closed_rate
            wait = conn.next_slot - _monotonic()
            if wait > 0:
                self.loop.call_later(wait, self._closed_send, conn)
                return
        self._closed_send(conn)

    def _closed_send(self, conn: _Conn) -> None:
        if self.stopping or conn.gone:
            return
        now = _monotonic()
        if now >= self.t0 + self.duration:
            self._discard(conn)
            if conn.transport is not None:
                conn.transport.close()
            if not self.conns and self.finished is not None and not self.finished.done():
                self.stopping = True
                self.finished.set_result(None)
            return
        if now < self.paused_until:
            self.loop.call_later(self.paused_until - now, self._closed_send, conn)
            return
        kind = self._choose()
        sec = self._second(int(now - self.t0))
        sec.sent += 1
        sec.outstanding += 1
        self.sent += 1
        self.type_sent[kind] += 1
        self.in_flight += 1
        if self.unanswered_since is None:
            self.unanswered_since = now
        # Latency from the actual send: the closed loop's blind spot, on purpose.
        conn.send(kind, now, sec, self._request(kind))

    # -- once a second ------------------------------------------------------------------

    def _tick(self, number: int) -> None:
        if self.stopping:
            return
        now = _monotonic()
        elapsed = now - self.t0
        self._finalize(elapsed)
        try:
            if self.cancelled_cb is not None and self.cancelled_cb():
                self._stop(Outcome.CANCELLED, "cancelled by a person")
                return
        except Exception as exc:  # the caller's check failing must not lose the measurement
            self._stop(Outcome.FAILED, f"checking for a cancel failed ({type(exc).__name__})")
            return
        if self._check_stall(now) or self._check_abort(number) or self._check_staircase():
            return
        if elapsed >= self.duration + self.target.deadline + 1:
            # Scheduling ended long ago and something still has not answered: it never will.
            self._stop(Outcome.COMPLETED, "")
            return
        if self.mode == "closed" and elapsed >= self.duration and not self.conns:
            self._stop(Outcome.COMPLETED, "")
            return
        if self.progress_cb is not None:
            try:
                self.progress_cb(self._progress(now))
            except Exception as exc:
                self._stop(Outcome.FAILED, f"reporting progress failed ({type(exc).__name__})")
                return
        self._tick_handle = self.loop.call_at(
            self.loop.time() + (self.t0 + number + 1 - _monotonic()), self._tick, number + 1
        )

    def _check_stall(self, now: float) -> bool:
        """A target that stops answering ends the run as failed (what was measured stays)."""
        stall_after = self.target.read_timeout
        since = self.unanswered_since
        if since is None or now - since < stall_after:
            return False
        self._stop(Outcome.FAILED, f"the server stopped answering: no answer for {now - since:.0f} s")
        return True

    def _check_abort(self, number: int) -> bool:
        rule = self.plan.abort
        last = min(number, len(self.window_total))  # whole seconds completed so far
        first = max(0, last - rule.window_s)
        total = sum(self.window_total[first:last])
        if total < rule.min_requests:
            return False
        errors = sum(self.window_errors[first:last])
        pct = 100 * errors / total
        if pct < rule.error_pct:
            return False
        window = last - first
        if sum(self.window_answers[first:last]) == 0:
            self._stop(
                Outcome.FAILED,
                f"the server could not be reached: all {total} requests of the last {window} s failed "
                f"({self._kinds_in_words()})",
            )
        else:
            self._stop(
                Outcome.ABORTED,
                f"errors reached {pct:.0f}% over the last {window} s ({errors} of {total}), at or above the "
                f"abort threshold of {rule.error_pct:g}%",
            )
        return True

    def _kinds_in_words(self) -> str:
        kinds: dict[str, int] = {}
        for sec in self.seconds.values():
            for name, count in sec.kinds.items():
                kinds[name] = kinds.get(name, 0) + count
        return ", ".join(f"{name} {count}" for name, count in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"

    def _check_staircase(self) -> bool:
        """Stop a capacity search at the first step whose SLA failed (its verdict is in once its requests are)."""
        if self.plan.staircase is None or self.mode != "open":
            return False
        for index, verdict in sorted(self.stage_verdicts.items()):
            stage = self.stages[index]
            if stage.step is not None and not verdict.passed:
                self._stop(
                    Outcome.COMPLETED,
                    f"{stage.label} at {stage.rate_to:g} req/s missed the SLA ({'; '.join(verdict.reasons)}), "
                    "so the capacity search stopped there",
                )
                return True
        return False

    def _sweep(self) -> None:
        """Fail requests whose server went quiet for the read timeout or ran past the deadline."""
        if self.stopping:
            return
        now = _monotonic()
        read_timeout = self.target.read_timeout
        deadline = self.target.deadline
        for conn in list(self.conns):
            if conn.busy:
                if now - conn.last_io > read_timeout:
                    self.failed(conn, "timeout", close=True)
                elif now - conn.sent_at > deadline:
                    self.failed(conn, "deadline", close=True)
        self._sweep_handle = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _progress(self, now: float) -> Progress:
        elapsed = now - self.t0
        last = int(elapsed) - 1
        finished = [k for k in self.done_seconds if k <= last]
        p95 = self.done_seconds[max(finished)].latency.p95_ms if finished else None
        stage = self.stages[self.schedule.stage_at(elapsed)].label if self.stages else ""
        # A folded second's wall-clock second is over, so its throughput is final already.
        fresh = tuple(
            replace(
                self.done_seconds[k],
                dropped=self.drops.get(k, 0),
                throughput=self.throughput[k] if k < len(self.throughput) else 0,
            )
            for k in sorted(self.unreported)
        )
        self.unreported.clear()
        return Progress(
            elapsed_s=round(elapsed, 3),
            planned_s=self.duration,
            target_rps=self.schedule.rate_at(elapsed) if self.mode == "open" else (self.closed_rate or 0.0),
            sent=self.sent,
            answered=self.answered_count,
            errors=self.error_count,
            dropped=sum(self.dropped.values()),
            throttled=self.throttled,
            paused=now < self.paused_until,
            last_second_rps=float(self.throughput[last]) if 0 <= last < len(self.throughput) else 0.0,
            last_second_p95_ms=p95,
            stage=stage,
            seconds=fresh,
        )

    # -- summing up -----------------------------------------------------------------------

    def _finalize(self, elapsed: float, *, everything: bool = False) -> None:
        """Fold finished seconds into the per-type, per-stage and overall histograms, then free them."""
        horizon = elapsed - 1 - self.late_after
        for second in sorted(self.seconds):
            sec = self.seconds[second]
            if not everything and (second > horizon or sec.outstanding > 0):
                continue
            merged: HdrHistogram | None = None
            for kind, hist in enumerate(sec.hists):
                if hist is None:
                    continue
                self.type_hists[kind].add(hist)
                if merged is None:
                    merged = new_histogram()
                merged.add(hist)
            stage = self.schedule.stage_at(second + 0.5)
            if merged is not None:
                self.stage_hists[stage].add(merged)
                self.overall.add(merged)
            self.done_seconds[second] = SecondStats(
                second=second,
                target_rps=round(self.schedule.rate_at(second + 0.5), 3) if self.mode == "open" else 0.0,
                sent=sec.sent,
                dropped=self.drops.get(second, 0),
                answered=sec.answered,
                failed=sec.failed,
                errors=sec.errors,
                statuses=dict(sorted(sec.statuses.items())),
                error_kinds=dict(sorted(sec.kinds.items())),
                latency=_latency(merged),
                throughput=0,  # filled in at the end, when every answer is in
            )
            del self.seconds[second]
            self.unreported.append(second)
        if everything or self.plan.staircase is None or self.mode != "open":
            return
        # A step is judged once every second of it is folded in (its slowest answers included).
        for index, step in enumerate(self.stages):
            start, end = self.stage_starts[index], self.stage_starts[index] + step.duration_s
            if end - 1 > horizon:
                break
            if step.step is None or index in self.stage_verdicts or any(start <= k < end for k in self.seconds):
                continue
            self.stage_verdicts[index] = self._stage(index, self.schedule.duration).sla or SlaVerdict(True)

    def _stage(self, index: int, elapsed: float) -> StageStats:
        stage = self.stages[index]
        start = self.stage_starts[index]
        seconds = [self.done_seconds[k] for k in range(start, start + stage.duration_s) if k in self.done_seconds]
        ran = max(0.0, min(float(stage.duration_s), elapsed - start))
        sent = sum(s.sent for s in seconds)
        dropped = sum(self.drops.get(k, 0) for k in range(start, start + stage.duration_s))
        answered = sum(s.answered for s in seconds)
        failed = sum(s.failed for s in seconds)
        errors = sum(s.errors for s in seconds)
        attempts = answered + failed
        error_pct = 100 * errors / attempts if attempts else 0.0
        latency = _latency(self.stage_hists[index])
        scheduled = sent + dropped
        verdict = None
        if stage.label != "ramp-up":
            verdict = check_sla(
                self.plan.sla, latency, error_pct, dropped_pct=100 * dropped / scheduled if scheduled else 0.0
            )
        return StageStats(
            label=stage.label,
            step=stage.step,
            start_s=start,
            duration_s=stage.duration_s,
            ran_s=round(ran, 3),
            target_rps=stage.rate_to,
            scheduled=scheduled,
            sent=sent,
            dropped=dropped,
            answered=answered,
            errors=errors,
            achieved_rps=round(answered / ran, 3) if ran > 0 else 0.0,
            error_pct=round(error_pct, 3),
            latency=latency,
            sla=verdict,
        )

    def _result(self) -> LoadResult:
        end = _monotonic()
        elapsed = end - self.t0
        if self.paused_until > end:
            self.paused_s -= self.paused_until - end
        self._finalize(elapsed, everything=True)
        ends = [*self.done_seconds, *self.drops, len(self.throughput) - 1, int(min(elapsed, self.duration)) - 1, 0]
        per_second: list[SecondStats] = []
        for second in range(max(ends) + 1):
            stats = self.done_seconds.get(second)
            throughput = self.throughput[second] if second < len(self.throughput) else 0
            if stats is None:
                rate = round(self.schedule.rate_at(second + 0.5), 3) if self.mode == "open" else 0.0
                stats = SecondStats(second, rate, 0, 0, 0, 0, 0, {}, {}, _latency(None), 0)
            stats = replace(stats, dropped=self.drops.get(second, 0), throughput=throughput)
            self.done_seconds[second] = stats
            per_second.append(stats)

        statuses: dict[int, int] = {}
        kinds: dict[str, int] = {}
        for stats in per_second:
            for code, count in stats.statuses.items():
                statuses[code] = statuses.get(code, 0) + count
            for name, count in stats.error_kinds.items():
                kinds[name] = kinds.get(name, 0) + count
        attempts = self.answered_count + self.failed_count
        dropped = sum(self.dropped.values())
        scheduled = self.sent + dropped

        stages = tuple(self._stage(i, elapsed) for i in range(len(self.stages)) if self._stage_started(i, elapsed))
        main = [s for s in stages if s.label != "ramp-up"]
        achieved = main[-1].achieved_rps if main else 0.0
        target_rps = main[-1].target_rps if main else self.plan.rate
        if self.mode == "closed":
            ran = min(elapsed, float(self.duration)) or 1.0
            achieved = round(self.answered_count / ran, 3)
            target_rps = self.closed_rate or 0.0

        latency = _latency(self.overall)
        error_pct = 100 * self.error_count / attempts if attempts else 0.0
        sla: SlaVerdict | None = None
        highest: float | None = None
        if self.mode == "open":
            if self.plan.staircase is None:
                steady = main[-1] if main else None
                sla = check_sla(
                    self.plan.sla,
                    steady.latency if steady else latency,
                    steady.error_pct if steady else error_pct,
                    dropped_pct=100 * steady.dropped / steady.scheduled if steady and steady.scheduled else 0.0,
                    outcome=self.outcome,
                    reason=self.reason,
                )
            else:
                sla, highest = self._staircase_verdict(stages)

        return LoadResult(
            mode=self.mode,
            outcome=self.outcome,
            reason=self.reason,
            started_at=self.wall0,
            elapsed_s=round(elapsed, 3),
            planned_s=float(self.duration),
            target_rps=target_rps,
            achieved_rps=achieved,
            concurrency=self.cap_connections,
            connections_opened=self.opened,
            scheduled=scheduled,
            sent=self.sent,
            answered=self.answered_count,
            failed=self.failed_count,
            interrupted=self.interrupted,
            dropped=dropped,
            dropped_by_reason=dict(self.dropped),
            errors=self.error_count,
            error_pct=round(error_pct, 3),
            statuses=dict(sorted(statuses.items())),
            error_pct_by_status={
                code: round(100 * count / attempts, 3)
                for code, count in sorted(statuses.items())
                if not 200 <= code < 300 and attempts
            },
            errors_by_kind=dict(sorted(kinds.items())),
            error_pct_by_kind={name: round(100 * count / attempts, 3) for name, count in sorted(kinds.items())},
            throttled=self.throttled,
            paused_s=round(self.paused_s, 3),
            latency=latency,
            send_lag=SendLag.of(self.lag_buckets, self.lag_max),
            per_type=tuple(
                TypeStats(t.name, self.type_sent[i], self.type_answered[i], self.type_errors[i], _latency(h))
                for i, (t, h) in enumerate(zip(self.types, self.type_hists, strict=True))
            ),
            per_second=tuple(per_second),
            stages=stages,
            sla=sla,
            highest_passing_rate=highest,
            histogram=histogram_bars(self.overall),
            hdr=self.overall.encode().decode("ascii"),
        )

    def _stage_started(self, index: int, elapsed: float) -> bool:
        return self.stage_starts[index] < elapsed or index == 0

    def _staircase_verdict(self, stages: tuple[StageStats, ...]) -> tuple[SlaVerdict, float | None]:
        steps = [s for s in stages if s.step is not None]
        highest: StageStats | None = None
        failed_step: StageStats | None = None
        for step in steps:
            complete = step.ran_s >= step.duration_s
            if step.sla is not None and step.sla.passed and complete:
                highest = step
            else:
                failed_step = step
                break
        reasons: list[str] = []
        if highest is None:
            reasons.append("no step met the SLA")
        if failed_step is not None:
            why = "; ".join(failed_step.sla.reasons) if failed_step.sla and failed_step.sla.reasons else "not finished"
            reasons.append(f"{failed_step.label} at {failed_step.target_rps:g} req/s: {why}")
        if self.outcome is not Outcome.COMPLETED:
            reasons.append(f"the run was {self.outcome.value}: {self.reason}")
        passed = highest is not None and self.outcome is Outcome.COMPLETED
        return SlaVerdict(passed, tuple(reasons)), (highest.target_rps if highest else None)


def _latency(histogram: HdrHistogram | None) -> Latency:
    return Latency.of(histogram if histogram is not None else new_histogram())


def _connect_error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    return "connect"


def _parse_retry_after(raw: bytes | None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110)."""
    if not raw:
        return None
    text = raw.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
