"""Structural checks of FHIR R4 resources against fhirclient's models, fast enough for bulk validation.

``Model(json, strict=True)`` builds one Python object per element and stops at the first resource
with a problem; validating a thousand patients' records that way costs more than downloading
them. So the schema each fhirclient model declares in ``elementProperties()`` (JSON name, type,
list or not, choice group, required) is compiled once per class into a small table, and resources
are checked as plain dicts against it by the same rules the strict constructor applies:

- an element the type does not define is an error (``_name`` siblings of primitives excepted);
- strings, numbers and booleans must have their JSON type, lists must be lists and objects objects;
- dates, date-times, instants and times must parse with fhirclient's own date classes;
- a required element, or a required choice such as ``value[x]``, must be present.

Problems are reported as JSON paths (``code.coding[0].system``) with a message that never
repeats the value, since values can be PHI. tests/test_validate_step.py holds this module and
the strict constructor to the same verdicts.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhirclient.models.fhirabstractbase import FHIRAbstractBase, FHIRValidationError
from fhirclient.models.fhirabstractresource import FHIRAbstractResource
from fhirclient.models.fhirdate import FHIRDate

from connections.adapters.base import validation_paths

# Element kinds, as small ints so the hot loop compares cheaply.
_STR, _NUM, _BOOL, _DATE, _COMPLEX, _RESOURCE = range(6)
_KIND_WORDS = {_STR: "a string", _NUM: "a number", _BOOL: "true or false", _COMPLEX: "an object"}
_INDEX = re.compile(r"\[\d+\]")
MAX_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class _Prop:
    kind: int
    is_list: bool
    model: type | None  # the element's class for complex kinds, the date class for dates


@dataclass(frozen=True, slots=True)
class _Schema:
    props: dict[str, _Prop]
    # Required elements: each entry lists the JSON names that satisfy it (several for a choice).
    required: tuple[tuple[str, tuple[str, ...]], ...]


def structure_problems(resource: Mapping[str, Any], *, limit: int = MAX_PROBLEMS) -> list[tuple[str, str]]:
    """The structural problems of one resource as (JSON path, message) pairs; empty when it is valid."""
    resource_type = resource.get("resourceType")
    model = resource_model(resource_type) if isinstance(resource_type, str) else None
    if model is None:
        return [("resourceType", "is not a FHIR R4 resource type")]
    problems: list[tuple[str, str]] = []
    _check_object(resource, _schema(model), "", problems)
    return problems[:limit]


def strict_parse_problems(resource: Mapping[str, Any]) -> list[str]:
    """What fhirclient's strict constructor says about a resource ("path: problem" lines); [] if it parses.

    The reference the fast check is tested against, and a second opinion engineers can ask for.
    """
    resource_type = resource.get("resourceType")
    model = resource_model(resource_type) if isinstance(resource_type, str) else None
    if model is None:
        return ["resourceType: not a FHIR R4 resource type"]
    try:
        model(dict(resource), strict=True)
    except FHIRValidationError as exc:
        return validation_paths(exc)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return [f"{{root}}: {type(exc).__name__}"]
    return []


def element_path(path: str) -> str:
    """A problem's path without list positions, for grouping: ``code.coding[0].system`` -> ``code.coding.system``."""
    return _INDEX.sub("", path)


@functools.cache
def resource_model(resource_type: str) -> type | None:
    """fhirclient's class for a resource type name, or None for anything else."""
    if not resource_type.isalpha():
        return None
    try:
        module = importlib.import_module(f"fhirclient.models.{resource_type.lower()}")
    except ImportError:
        return None
    model = getattr(module, resource_type, None)
    if isinstance(model, type) and issubclass(model, FHIRAbstractResource):
        return model
    return None


@functools.cache
def _schema(model: type) -> _Schema:
    props: dict[str, _Prop] = {}
    groups: dict[str, list[str]] = {}
    required: list[str] = []
    for _name, jsname, typ, is_list, of_many, not_optional in model().elementProperties():
        props[jsname] = _Prop(_kind(typ), bool(is_list), typ if _kind(typ) in (_COMPLEX, _DATE) else None)
        group = of_many or jsname
        groups.setdefault(group, []).append(jsname)
        if not_optional and group not in required:
            required.append(group)
    return _Schema(props, tuple((group, tuple(groups[group])) for group in required))


def _kind(typ: Any) -> int:
    if typ is str:
        return _STR
    if typ is int or typ is float:
        return _NUM
    if typ is bool:
        return _BOOL
    if isinstance(typ, type) and issubclass(typ, FHIRDate):
        return _DATE
    if isinstance(typ, type) and issubclass(typ, FHIRAbstractResource):
        return _RESOURCE
    if isinstance(typ, type) and issubclass(typ, FHIRAbstractBase):
        return _COMPLEX
    raise TypeError(f"fhirclient declared an element type this check does not know: {typ!r}")


def _check_object(obj: Mapping[str, Any], schema: _Schema, path: str, problems: list[tuple[str, str]]) -> None:
    # The hot loop of structure checks: most values are plain strings of string elements, so those
    # are passed here, before a call or a path is built for them.
    props = schema.props
    prefix = path + "." if path else ""
    for key, value in obj.items():
        prop = props.get(key)
        if prop is None:
            if key == "resourceType" or (key[:1] == "_" and key[1:] in props):
                continue
            problems.append((prefix + key, "is not an element of this type"))
            continue
        if value is None:
            continue
        plain = prop.kind == _STR
        if prop.is_list:
            if type(value) is not list:
                problems.append((prefix + key, "must be a list"))
                continue
            for index, item in enumerate(value):
                if not (plain and type(item) is str):
                    _check_value(item, prop, f"{prefix}{key}[{index}]", problems)
        elif not (plain and type(value) is str):
            _check_value(value, prop, prefix + key, problems)
    for group, names in schema.required:
        if not any(obj.get(name) is not None for name in names):
            problems.append((prefix + (group if len(names) == 1 else f"{group}[x]"), "is required but missing"))


def _check_value(value: Any, prop: _Prop, path: str, problems: list[tuple[str, str]]) -> None:
    kind = prop.kind
    if kind == _COMPLEX:
        if type(value) is dict:
            _check_object(value, _schema(prop.model), path, problems)
            return
    elif kind == _STR:
        if type(value) is str:
            return
    elif kind == _NUM:
        if type(value) is int or type(value) is float:
            return
    elif kind == _BOOL:
        if type(value) is bool:
            return
    elif kind == _DATE:
        if type(value) is str:
            # What ``FHIRDate.with_json`` checks (its pattern, then its parser), without building the
            # object: a third of the structure check's time went to FHIRDate's ``__setattr__``.
            model: Any = prop.model
            try:
                if not model._REGEX.fullmatch(value):
                    raise ValueError("does not match expected format")
                model._from_string(value)
            except (TypeError, ValueError):
                problems.append((path, "is not a valid FHIR date or time"))
            return
        problems.append((path, "must be a date or time written as a string"))
        return
    elif kind == _RESOURCE:
        resource_type = value.get("resourceType") if type(value) is dict else None
        model = resource_model(resource_type) if isinstance(resource_type, str) else None
        if model is not None:
            _check_object(value, _schema(model), path, problems)
            return
        problems.append((path, "must be a resource with a known resourceType"))
        return
    problems.append((path, "must be " + _KIND_WORDS[kind]))
