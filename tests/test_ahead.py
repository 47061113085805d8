"""The validate step's read-ahead: same items in the same order, errors where they happened, bounded, stoppable."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from onboarding.steps.ahead import ahead


def test_items_arrive_in_order_and_the_producer_runs_in_another_thread() -> None:
    producers: set[int] = set()

    def numbers() -> Iterator[int]:
        for n in range(100):
            producers.add(threading.get_ident())
            yield n

    assert list(ahead(numbers())) == list(range(100))
    assert producers and threading.get_ident() not in producers


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("hospital went away")

    seen = []
    with pytest.raises(ConnectionError, match="hospital went away"):
        for item in ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]


def test_the_producer_stays_at_most_depth_items_ahead_and_stops_with_the_consumer() -> None:
    produced = []
    finished = threading.Event()

    def counting() -> Iterator[int]:
        try:
            for n in range(1000):
                produced.append(n)
                yield n
        finally:
            finished.set()

    items = ahead(counting(), depth=2)
    assert next(items) == 0
    # One taken, two waiting in the queue, at most one more in the producer's hands.
    for _ in range(50):
        if len(produced) >= 3:
            break
        threading.Event().wait(0.01)
    assert 3 <= len(produced) <= 4
    items.close()  # the consumer stops (a cancel, a time limit): the producer must stop too
    assert finished.wait(5)
    assert len(produced) <= 5
