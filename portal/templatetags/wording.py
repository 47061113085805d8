"""Small wording filters shared by every page (template builtins: see ``TEMPLATES`` in the settings)."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

# What already ends a sentence, so a full stop is not added after it ("ok.." or "why?.").
_ENDINGS = (".", "!", "?", "…", '."', ".”", ".)")


@register.filter(name="sentence")
def sentence(value: Any) -> str:
    """``{{ waiver.reason|sentence }}``: the text as a sentence, with one full stop at its end, never two."""
    text = str(value or "").rstrip()
    if not text:
        return ""
    return text if text.endswith(_ENDINGS) else f"{text}."
