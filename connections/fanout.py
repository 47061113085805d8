"""Work on a stream of items with a few threads, handing results back in the items' own order.

Map and validate pull patients this way: the patient pages are read in the caller's thread, each
patient's clinical searches run on a worker thread, and the caller gets (patient, resources) in
the order the server listed the patients, so what it computes is what a sequential pull gives.
At most ``window`` items are taken from the stream ahead of the caller, so memory holds a fixed
number of patients, never the whole pull. How many requests are in flight is the connection
limiter's business (``connections.limits``), not the number of threads here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    workers: int,
    window: int,
    on_stop: Callable[[], None] | None = None,
) -> Iterator[tuple[T, R]]:
    """(item, work(item)) in the items' order, ``workers`` at a time, at most ``window`` ahead of the caller.

    The first failure (in item order) is raised to the caller; the work still queued is dropped,
    ``on_stop`` is called (the limiter refuses further requests), and the threads are waited for,
    so nothing of this pull runs on after it. With one worker, everything runs in the caller's thread.
    """
    if workers <= 1:
        for item in items:
            yield item, work(item)
        return
    window = max(window, workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull")
    pending: deque[tuple[T, Future[R]]] = deque()
    finished = False
    try:
        for item in items:
            pending.append((item, pool.submit(work, item)))
            while len(pending) >= window:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
        finished = True
    finally:
        if not finished:
            # Failed, cancelled, past its deadline, or the caller stopped reading: drop what is queued
            # and stop the requests under way at their next attempt.
            for _, future in pending:
                future.cancel()
            if on_stop is not None:
                on_stop()
        pool.shutdown(wait=True, cancel_futures=True)
