"""Run a producer a few items ahead of its consumer, in a thread: the network wait and the checks overlap.

The validate step spends most of its time waiting for the hospital's answers, and the rest checking
them. With the next patient's resources fetched while the current one is checked, the step takes
about as long as the downloads alone. Only the producer thread touches what the iterator uses (the
adapter and its HTTP client); the consumer keeps everything else (the database, progress, the log).

The queue is bounded, so memory stays flat however many patients a run pulls. An exception in the
producer is raised in the consumer, where the sequential loop would have raised it (after the items
before it); a consumer that stops early (a cancel, a time limit) stops the producer at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.2


def ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order, produced in a background thread at most ``depth`` items ahead."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    iterator = iter(items)

    def produce() -> None:
        try:
            for item in iterator:
                if not put(item):
                    break
            else:
                put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator's cleanup (an adapter's paging) runs now, in this thread

    thread = threading.Thread(target=produce, name="validate-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=_POLL_S * 2)


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
