"""The load-test report's charts, drawn on the server as plain SVG.

The portal's Content-Security-Policy allows no inline script or style, so the charts are SVG
elements with presentation attributes only (``fill``, ``stroke``): no ``style`` attribute, no
``<style>`` element, no script and no third-party host. Each chart is an image to assistive
technology (``role="img"``) named by its title and described in words by its ``<desc>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 34, 44
INK, MUTED, GRID = "#1d2733", "#5f6b7a", "#d9dee5"
MEDIAN, BAND_MID, BAND_TAIL, SLA_LINE, ERRORS = "#175cd3", "#a9c2f5", "#dbe6fb", "#b42318", "#b42318"


@dataclass(frozen=True)
class SecondPoint:
    """What the charts need of one second of a run."""

    second: int
    answered: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    target_rps: float
    throughput: int
    errors: int


def latency_over_time(
    points: Sequence[SecondPoint], *, sla_p95_ms: float | None, chart_id: str, span_s: int = 0
) -> SafeString:
    """Latency per second of intended send time: p50 as a line, p50-p95 and p95-p99 as bands, the agreed p95.

    ``span_s`` keeps the time axis as long as the plan while a run is still going, so it fills up.
    The agreed p95 sets the scale only when it is near the data; far above it, the legend says so.
    """
    answered = [p for p in points if p.answered]
    if not answered:
        return _empty(chart_id, "Latency over time", "No request was answered, so there is no latency to draw.")
    data_top = max(p.p99_ms for p in answered) * 1.1
    sla_shown = sla_p95_ms is not None and sla_p95_ms <= 2 * data_top
    top = _nice(max(data_top, (sla_p95_ms or 0.0) * 1.1) if sla_shown else data_top)
    last = max([p.second for p in points] + [span_s - 1])
    x = _x_scale(last)
    y = _y_scale(top)
    parts = _frame(chart_id, "Latency over time", _latency_desc(answered, sla_p95_ms))
    parts += _y_axis(top, "ms")
    parts += _x_axis(last)
    for run in _runs(answered):
        tail = [(x(p.second), y(p.p99_ms)) for p in run] + [(x(p.second), y(p.p95_ms)) for p in reversed(run)]
        mid = [(x(p.second), y(p.p95_ms)) for p in run] + [(x(p.second), y(p.p50_ms)) for p in reversed(run)]
        parts.append(f'<polygon points="{_pts(tail)}" fill="{BAND_TAIL}" stroke="none"/>')
        parts.append(f'<polygon points="{_pts(mid)}" fill="{BAND_MID}" stroke="none"/>')
        parts.append(
            f'<polyline points="{_pts([(x(p.second), y(p.p50_ms)) for p in run])}" fill="none" '
            f'stroke="{MEDIAN}" stroke-width="2"/>'
        )
        if len({p.second for p in run}) == 1:
            parts.append(f'<circle cx="{x(run[0].second):.1f}" cy="{y(run[0].p50_ms):.1f}" r="3" fill="{MEDIAN}"/>')
    if sla_shown and sla_p95_ms is not None:
        level = y(sla_p95_ms)
        parts.append(
            f'<line x1="{LEFT}" y1="{level:.1f}" x2="{WIDTH - RIGHT}" y2="{level:.1f}" stroke="{SLA_LINE}" '
            'stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
    parts += _legend(
        [
            ("line", MEDIAN, "p50"),
            ("box", BAND_MID, "p50 to p95"),
            ("box", BAND_TAIL, "p95 to p99"),
            *([("dash", SLA_LINE, f"agreed p95 ({sla_p95_ms:g} ms)")] if sla_shown and sla_p95_ms is not None else []),
            *(
                [("none", SLA_LINE, f"agreed p95 {sla_p95_ms:g} ms: far above this chart")]
                if not sla_shown and sla_p95_ms is not None
                else []
            ),
        ]
    )
    return _close(parts)


def throughput_over_time(points: Sequence[SecondPoint], *, chart_id: str, span_s: int = 0) -> SafeString:
    """Answers per second against the target rate, with the errors of each second as bars."""
    if not points:
        return _empty(chart_id, "Throughput over time", "The run measured no second.")
    top = _nice(max([p.throughput for p in points] + [p.target_rps for p in points] + [1.0]) * 1.08)
    last = max([p.second for p in points] + [span_s - 1])
    x = _x_scale(last)
    y = _y_scale(top)
    peak = max(points, key=lambda p: p.throughput)
    errors = sum(p.errors for p in points)
    desc = (
        f"Answers per second against the target rate over {last + 1} s. The most in one second was "
        f"{peak.throughput:,} at {peak.second} s; the target peaked at {max(p.target_rps for p in points):g} req/s. "
        f"{errors:,} error{'s' if errors != 1 else ''} in all."
    )
    parts = _frame(chart_id, "Throughput over time", desc)
    parts += _y_axis(top, "req/s")
    parts += _x_axis(last)
    width = max(1.0, (WIDTH - LEFT - RIGHT) / (last + 1) - 1)
    for p in points:
        if p.errors:
            height = _y_scale(top)(0) - y(min(p.errors, top))
            parts.append(
                f'<rect x="{x(p.second) - width / 2:.1f}" y="{y(min(p.errors, top)):.1f}" width="{width:.1f}" '
                f'height="{height:.1f}" fill="{ERRORS}"/>'
            )
    parts.append(
        f'<polyline points="{_pts([(x(p.second), y(p.target_rps)) for p in points])}" fill="none" stroke="{MUTED}" '
        'stroke-width="1.5" stroke-dasharray="6 4"/>'
    )
    parts.append(
        f'<polyline points="{_pts([(x(p.second), y(p.throughput)) for p in points])}" fill="none" '
        f'stroke="{MEDIAN}" stroke-width="2"/>'
    )
    if len(points) == 1:
        parts.append(
            f'<circle cx="{x(points[0].second):.1f}" cy="{y(points[0].throughput):.1f}" r="3" fill="{MEDIAN}"/>'
        )
    parts += _legend([("line", MEDIAN, "answers per second"), ("dash", MUTED, "target"), ("box", ERRORS, "errors")])
    return _close(parts)


def latency_histogram(bars: Sequence[Sequence[float]], *, chart_id: str) -> SafeString:
    """How many answers fell in each latency range (the engine's bars, each up to its bound in ms)."""
    counts = [(float(bound), int(count)) for bound, count in bars]
    # Empty bars below the fastest answer say nothing; one is kept, so the first bar's range shows.
    first = next((i for i, (_, count) in enumerate(counts) if count), 0)
    counts = counts[max(0, first - 1) :]
    total = sum(count for _, count in counts)
    if not total:
        return _empty(chart_id, "Latency histogram", "No request was answered, so there is no histogram.")
    top = _nice(max(count for _, count in counts) * 1.1)
    y = _y_scale(top)
    slot = (WIDTH - LEFT - RIGHT) / len(counts)
    busiest = max(counts, key=lambda c: c[1])
    lower = _lower_bound(counts, busiest)
    desc = (
        f"{total:,} answers in {len(counts)} latency ranges. The most, {busiest[1]:,} "
        f"({100 * busiest[1] / total:.1f}%), took {lower} to {_ms(busiest[0])} ms; "
        f"the slowest took {_ms(counts[-1][0])} ms."
    )
    parts = _frame(chart_id, "Latency histogram", desc)
    parts += _y_axis(top, "answers")
    for index, (bound, count) in enumerate(counts):
        left = LEFT + index * slot
        if count:
            parts.append(
                f'<rect x="{left + 1:.1f}" y="{y(count):.1f}" width="{max(1.0, slot - 2):.1f}" '
                f'height="{y(0) - y(count):.1f}" fill="{MEDIAN}"/>'
            )
        label_x = left + slot / 2
        label_y = HEIGHT - BOTTOM + 12
        parts.append(
            f'<text x="{label_x:.1f}" y="{label_y}" font-size="10" fill="{INK}" text-anchor="end" '
            f'transform="rotate(-40 {label_x:.1f} {label_y})">{escape(_ms(bound))}</text>'
        )
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" font-size="11" fill="{MUTED}" text-anchor="end">'
        "latency up to (ms)</text>"
    )
    return _close(parts)


# --- drawing helpers ------------------------------------------------------------------------------------


def _frame(chart_id: str, title: str, desc: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" id="{chart_id}" class="chart" data-testid="{chart_id}">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]


def _close(parts: list[str]) -> SafeString:
    return mark_safe("".join([*parts, "</svg>"]))  # noqa: S308 - every text above is escaped or a number


def _empty(chart_id: str, title: str, desc: str) -> SafeString:
    parts = _frame(chart_id, title, desc)
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" font-size="14" fill="{INK}" text-anchor="middle">{escape(desc)}</text>'
    )
    return _close(parts)


def _x_scale(last: int) -> Callable[[float], float]:
    span = max(1, last)
    return lambda second: LEFT + (WIDTH - LEFT - RIGHT) * second / span


def _y_scale(top: float) -> Callable[[float], float]:
    return lambda value: HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * min(value, top) / top


def _y_axis(top: float, unit: str) -> list[str]:
    y = _y_scale(top)
    parts = []
    for i in range(5):
        value = top * i / 4
        level = y(value)
        parts.append(
            f'<line x1="{LEFT}" y1="{level:.1f}" x2="{WIDTH - RIGHT}" y2="{level:.1f}" stroke="{GRID}" '
            'stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{level + 4:.1f}" font-size="11" fill="{INK}" text-anchor="end">'
            f"{escape(_ms(value))}</text>"
        )
    parts.append(f'<text x="8" y="{TOP - 8}" font-size="11" fill="{MUTED}">{escape(unit)}</text>')
    return parts


def _x_axis(last: int) -> list[str]:
    x = _x_scale(last)
    step = _nice_step(max(1, last) / 6)
    parts = []
    second = 0
    while second <= last:
        parts.append(
            f'<text x="{x(second):.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11" fill="{INK}" '
            f'text-anchor="middle">{second} s</text>'
        )
        second += step
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" font-size="11" fill="{MUTED}" text-anchor="end">'
        "second of the run (by intended send time)</text>"
    )
    return parts


def _legend(items: list[tuple[str, str, str]]) -> list[str]:
    parts = []
    left = float(LEFT)
    for kind, colour, label in items:
        if kind == "none":
            pass
        elif kind == "box":
            parts.append(f'<rect x="{left:.1f}" y="10" width="14" height="10" fill="{colour}"/>')
        else:
            dash = ' stroke-dasharray="4 3"' if kind == "dash" else ""
            parts.append(
                f'<line x1="{left:.1f}" y1="15" x2="{left + 14:.1f}" y2="15" stroke="{colour}" stroke-width="2"{dash}/>'
            )
        parts.append(f'<text x="{left + 19:.1f}" y="19" font-size="11" fill="{INK}">{escape(label)}</text>')
        left += 30 + 6.5 * len(label)
    return parts


def _runs(points: Sequence[SecondPoint]) -> list[list[SecondPoint]]:
    """Consecutive seconds with answers; a second without any breaks the line rather than dropping to 0."""
    runs: list[list[SecondPoint]] = []
    for point in points:
        if runs and point.second == runs[-1][-1].second + 1:
            runs[-1].append(point)
        else:
            runs.append([point])
    # A lone second is drawn one pixel wide, so it still shows.
    return [run if len(run) > 1 else [run[0], run[0]] for run in runs]


def _latency_desc(points: Sequence[SecondPoint], sla_p95_ms: float | None) -> str:
    p50 = [p.p50_ms for p in points]
    worst = max(points, key=lambda p: p.p99_ms)
    over = sum(1 for p in points if sla_p95_ms is not None and p.p95_ms > sla_p95_ms)
    text = (
        f"Latency over {len(points)} s with answers: p50 from {_ms(min(p50))} to {_ms(max(p50))} ms; "
        f"p99 peaked at {_ms(worst.p99_ms)} ms at {worst.second} s."
    )
    if sla_p95_ms is not None:
        text += f" p95 was above the agreed {sla_p95_ms:g} ms in {over} of those seconds."
    return text


def _lower_bound(counts: list[tuple[float, int]], bar: tuple[float, int]) -> str:
    index = counts.index(bar)
    return "0" if index == 0 else _ms(counts[index - 1][0])


def _pts(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)


def _nice(value: float) -> float:
    """A round number at or above ``value`` for an axis top (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= factor * power:
            return factor * power
    return 10 * power


def _nice_step(value: float) -> int:
    return max(1, int(_nice(value)))


def _ms(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")
