"""Safe reads of FHIR JSON from a hospital, where any element can have the wrong shape.

A list where an object belongs, or a number where a string belongs, must become a finding (the
structure check reports it), never an AttributeError that ends a whole run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def as_object(value: Any) -> Mapping[str, Any]:
    """The value if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_items(value: Any) -> Sequence[Any]:
    """The value if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else ()
