"""The hypercare dashboard's latency sparklines, drawn on the server as plain SVG.

As the load-test charts (onboarding.loadtest.charts, a sibling wing this one may not import): no
inline style or script, presentation attributes only, and each chart an image named by its title and
described in words by its ``<desc>``, so it passes the Content-Security-Policy and axe-core.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD = 160, 32, 3
LINE, FAILED, EMPTY = "#175cd3", "#b42318", "#5f6b7a"


def sparkline(points: Sequence[tuple[datetime, float | None, bool]], *, chart_id: str, name: str) -> SafeString:
    """Latency of the recent checks as a line; a failed check as a red tick at the bottom."""
    title = f"Health-check latency of {name}"
    if not points:
        return _svg(chart_id, title, "No health check in the last hours yet.", [])
    answered = [ms for _, ms, ok in points if ok and ms is not None]
    failed = sum(1 for _, _, ok in points if not ok)
    top = max(answered, default=1.0) * 1.1 or 1.0
    start, end = points[0][0], points[-1][0]
    span = max((end - start).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return PAD + (WIDTH - 2 * PAD) * (at - start).total_seconds() / span

    def y(ms: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * ms / top

    parts = []
    line = [(x(at), y(ms)) for at, ms, ok in points if ok and ms is not None]
    if len(line) > 1:
        pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in line)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{LINE}" stroke-width="1.5"/>')
    elif line:
        parts.append(f'<circle cx="{line[0][0]:.1f}" cy="{line[0][1]:.1f}" r="2" fill="{LINE}"/>')
    for at, _, ok in points:
        if not ok:
            parts.append(
                f'<line x1="{x(at):.1f}" y1="{HEIGHT - PAD}" x2="{x(at):.1f}" y2="{HEIGHT - 10}" '
                f'stroke="{FAILED}" stroke-width="2"/>'
            )
    if answered:
        desc = (
            f"{len(points)} checks: latency from {min(answered):.0f} to {max(answered):.0f} ms, "
            f"last {answered[-1]:.0f} ms; {failed} failed."
        )
    else:
        desc = f"{len(points)} checks, all failed."
    return _svg(chart_id, title, desc, parts)


def _svg(chart_id: str, title: str, desc: str, parts: list[str]) -> SafeString:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" class="sparkline">'
        f'<title id="{chart_id}-title">{escape(title)}</title><desc id="{chart_id}-desc">{escape(desc)}</desc>'
        f'<line x1="0" y1="{HEIGHT - 1}" x2="{WIDTH}" y2="{HEIGHT - 1}" stroke="{EMPTY}" stroke-width="0.5"/>'
    )
    return mark_safe(head + "".join(parts) + "</svg>")  # noqa: S308 - built from numbers and escaped text only
