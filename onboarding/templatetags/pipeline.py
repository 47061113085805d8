"""Template tags for pipeline pages.

The six step cells are drawn in Python, not with an included template: the dashboard draws them for
every connection on a page, and the template engine's loop cost three times the rest of the page.
"""

from __future__ import annotations

from django import template
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from onboarding.engine.selectors import StepCell

register = template.Library()


@register.simple_tag
def step_cells(cells: list[StepCell]) -> SafeString:
    """A pipeline's steps as an ordered list: each links to its newest run, or says it has none."""
    return mark_safe(  # noqa: S308 - every value below is escaped
        '<ol class="steps" aria-label="Pipeline steps">' + "".join(_cell(cell) for cell in cells) + "</ol>"
    )


def _cell(cell: StepCell) -> str:
    # The state is written out under the step's name: colour and the tooltip only repeat it (WCAG 1.4.1).
    label = escape(cell.label)
    state_label = escape(cell.state_label)
    if cell.run is not None:
        inner = f'<a href="{escape(reverse("run_detail", kwargs={"code": cell.run.code}))}">{label}</a>'
    else:
        inner = f"<span>{label}</span>"
    css = "na" if not cell.available else "chip-state"
    state = escape(cell.state)
    return (
        f'<li class="step state-{state}" data-step="{escape(cell.key)}" data-state="{state}" '
        f'title="{label}: {state_label}">{inner}<small class="{css}">{state_label}</small></li>'
    )
