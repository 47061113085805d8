"""US Core 6.1.0, as the validate step checks it: the guide's own rules, read from a derived table.

The rules are not written here. ``generate_uscore`` (beside this module) derives them from the US
Core 6.1.0 IG package's StructureDefinition snapshots and value sets into ``uscore_610.json``, which
is committed; this module loads that table once and checks plain JSON dicts against it. Per
profile, at every depth the guide nests (an element inside a parent only where the parent is
present), it reports:

- ``uscore.mandatory``: an element with a minimum of one is missing;
- ``uscore.category`` / ``uscore.slice``: a required slice is missing (a category the profile
  needs, the systolic component of a blood pressure, race's ``text``...); an element missing
  altogether is reported through the slices it must have, which say what to add;
- ``uscore.fixed-value``: a fixed or pattern value differs (a vital sign's LOINC code, a UCUM unit);
- ``uscore.binding``: a code outside a required binding's value set (an error), and
  ``uscore.binding-extensible``: outside an extensible one (a warning);
- ``uscore.type``: a choice element in a type the profile does not allow;
- ``uscore.cardinality``: more repetitions than the profile allows (``0`` forbids the element).

Must-support elements are never errors: each check also says which of the profile's must-support
elements the resource populates, for the coverage report.

Which profiles a resource is checked against (``profiles_for``), as the guide means it: the US Core
profiles it claims in ``meta.profile``; else the one its code selects (a vital sign's LOINC code,
the smoking-status code...); else the one its categories select (``survey`` selects
screening-assessment, ``laboratory`` the lab profile...); else the base profile of its type.

Not checked: FHIRPath invariants (``us-core-6`` and the like), reference targets' profiles, and the
bindings whose value sets only VSAC or PHIN VADS publish (``UNCHECKED_VALUESETS`` says which).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from onboarding.validation.fhirjson import as_items, as_object

TABLE_PATH = Path(__file__).resolve().parent / "uscore_610.json"
BASE = "http://hl7.org/fhir/us/core/StructureDefinition/"
ERROR, WARNING = "error", "warning"
# Extensions any resource may carry that the guide uses without slicing them into a profile.
_CORE_EXTENSIONS = ("http://hl7.org/fhir/StructureDefinition/data-absent-reason",)


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a resource fails one profile."""

    rule: str
    severity: str
    path: str  # element path with slice names, without list positions (``Observation.component:systolic``)
    location: str  # JSON path with list positions, to highlight (``component[0].code``)
    message: str
    profile: str  # the profile's name (``us-core-smokingstatus``)


class ValueSet:
    """A value set as the table lists it: codes by system, and systems any code of which belongs."""

    __slots__ = ("codes", "name", "pairs", "systems", "url")

    def __init__(self, url: str, data: Mapping[str, Any]) -> None:
        self.url = url
        self.name = url.rsplit("/", 1)[-1]
        self.pairs = frozenset((system, code) for system, codes in data["codes"].items() for code in codes)
        self.codes = frozenset(code for _, code in self.pairs)
        self.systems = frozenset(data["systems"])

    def has_coding(self, system: Any, code: Any) -> bool:
        """Whether a (system, code) belongs; a code without a system (or not a string) never does."""
        if not isinstance(system, str) or not isinstance(code, str):
            return False
        return system in self.systems or (system, code) in self.pairs

    def has_code(self, code: str) -> bool | None:
        """Whether a bare code (of a ``code`` element) belongs; None when the table cannot tell."""
        if code in self.codes:
            return True
        return None if self.systems else False


class Rule:
    """One element or slice of a profile, with what the guide requires of it and of its children."""

    __slots__ = (
        "binding_url",
        "busy",
        "children",
        "counted",
        "fixed",
        "is_category",
        "keys",
        "match",
        "match_codings",
        "max",
        "min",
        "ms_index",
        "name",
        "path",
        "pattern",
        "pattern_codings",
        "relative",
        "required",
        "slices",
        "stem",
        "strength",
        "types",
        "valueset",
        "valueset_of_match",
    )

    def __init__(
        self, data: Mapping[str, Any], parent_path: str, parent_relative: str, valuesets: Mapping[str, ValueSet]
    ) -> None:
        name: str = data["name"]
        slice_name = data.get("slice")
        types: list[str] = data.get("types") or (data.get("match") or {}).get("type") or []
        self.name = name
        self.types = tuple(types)
        self.stem = name[:-3] if name.endswith("[x]") else ""
        self.keys = tuple(self.stem + t[0].upper() + t[1:] for t in types) if self.stem else (name,)
        shown = name
        if self.stem and slice_name and "type" in (data.get("match") or {}):
            shown = slice_name  # a type slice: valueQuantity
        elif self.stem and len(self.keys) == 1:
            shown = self.keys[0]
        elif slice_name:
            shown = f"{name}:{slice_name}"
        self.path = f"{parent_path}.{shown}"
        # As the table's must-support list names it: ``extension:race.extension:text``.
        own = f"{name}:{slice_name}" if slice_name else name
        self.relative = f"{parent_relative}.{own}" if parent_relative else own
        self.min: int = data.get("min", 0)
        self.max: int | None = data.get("max")
        self.fixed = data.get("fixed")
        self.pattern = data.get("pattern")
        binding = data.get("binding")
        self.strength: str = binding[0] if binding else ""
        self.binding_url: str = binding[1] if binding else ""
        self.valueset: ValueSet | None = valuesets.get(binding[1]) if binding else None
        self.match: Mapping[str, Any] | None = data.get("match")
        self.pattern_codings = _coding_pattern(self.pattern)
        self.match_codings = _coding_pattern((self.match or {}).get("pattern"))
        match_valueset = (self.match or {}).get("valueset")
        self.valueset_of_match: ValueSet | None = valuesets.get(match_valueset) if match_valueset else None
        self.children = tuple(Rule(c, self.path, self.relative, valuesets) for c in data.get("children", ()))
        self.slices = tuple(Rule(s, parent_path, parent_relative, valuesets) for s in data.get("slices", ()))
        self.ms_index: int = -1
        self.is_category = name == "category"
        # Precomputed for the walk: what a value or an absence of this element can violate.
        self.counted = self.min > 0 or self.max is not None
        self.required = self.min > 0 or any(s.min > 0 for s in self.slices)
        self.busy = bool(
            self.fixed is not None or self.pattern is not None or self.valueset is not None or self.children
        )

    def walk(self) -> Iterable[Rule]:
        """This rule, and every rule below it (children, then slices)."""
        yield self
        for child in self.children:
            yield from child.walk()
        for slice_rule in self.slices:
            yield from slice_rule.walk()


@dataclass(eq=False)
class Profile:
    """One US Core profile: its rules, must-support list and what selects it."""

    url: str
    name: str
    title: str
    resource_type: str
    parent: str | None
    depth: int
    rules: tuple[Rule, ...]
    must_support: tuple[str, ...]
    select: Mapping[str, Any] = field(default_factory=dict)

    def check(self, resource: Mapping[str, Any], seen: set[int] | None = None) -> list[Problem]:
        """Every problem of the resource against this profile; adds the must-support indexes it populates."""
        problems: list[Problem] = []
        _check(self.rules, resource, "", problems, seen, self.name)
        return problems


# --- the walk ---------------------------------------------------------------------------------------------


def _values(rule: Rule, node: Mapping[str, Any]) -> list[tuple[str, int, Any]]:
    """(JSON key, list position or -1, value) of every value of the element in ``node``."""
    found: list[tuple[str, int, Any]] = []
    for key in rule.keys:
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            found.extend((key, i, v) for i, v in enumerate(value) if v is not None)
        else:
            found.append((key, -1, value))
    return found


def _where(prefix: str, key: str, index: int) -> str:
    return f"{prefix}{key}" if index < 0 else f"{prefix}{key}[{index}]"


def _check(
    rules: tuple[Rule, ...],
    node: Mapping[str, Any],
    prefix: str,
    problems: list[Problem],
    seen: set[int] | None,
    profile: str,
) -> None:
    # The hot loop of validation (every rule at every depth of every resource): the common cases,
    # an absent element that nothing requires and a plain element, take the short paths.
    for rule in rules:
        if rule.stem:
            values = _values(rule, node)
            # A type the profile does not allow (one beside an allowed type would be two values for
            # one choice element: the structure check reports that) says all there is to say.
            if not values and _choice_types(rule, node, prefix, problems, profile):
                continue
        else:
            value = node.get(rule.name)
            if value is None:
                if rule.required:
                    _absent(rule, node, prefix, problems, profile)
                continue
            if isinstance(value, list):
                values = [(rule.name, i, v) for i, v in enumerate(value) if v is not None]
            else:
                values = [(rule.name, -1, value)]
        if not values:
            if rule.required:
                _absent(rule, node, prefix, problems, profile)
            continue
        if rule.counted:
            _count(rule, values, node, prefix, problems, profile, None)
        if seen is not None and rule.ms_index >= 0:
            seen.add(rule.ms_index)
        if not rule.slices:
            if rule.busy:
                _each(rule, values, prefix, problems, seen, profile)
            continue
        # A value in a slice is checked against the slice's definition (which repeats the element's
        # own rules in the snapshot); a value in no slice against the element's.
        in_slice: set[int] = set()
        for slice_rule in rule.slices:
            members = [item for item in values if _in_slice(slice_rule, item[0], item[2])]
            if slice_rule.counted:
                _count(slice_rule, members, node, prefix, problems, profile, rule)
            if members:
                in_slice.update(id(item) for item in members)
                if seen is not None and slice_rule.ms_index >= 0:
                    seen.add(slice_rule.ms_index)
                if slice_rule.busy or rule.children:
                    _each(slice_rule, members, prefix, problems, seen, profile, rule)
        if rule.busy:
            rest = [item for item in values if id(item) not in in_slice]
            if rest:
                _each(rule, rest, prefix, problems, seen, profile)


def _absent(rule: Rule, node: Mapping[str, Any], prefix: str, problems: list[Problem], profile: str) -> None:
    """An element with no value: the slices it must have say best what is missing, else its minimum."""
    required = [slice_rule for slice_rule in rule.slices if slice_rule.min]
    for slice_rule in required:
        _count(slice_rule, [], node, prefix, problems, profile, rule)
    if not required and rule.min:
        _count(rule, [], node, prefix, problems, profile, None)


def _count(
    rule: Rule,
    values: list[tuple[str, int, Any]],
    node: Mapping[str, Any],
    prefix: str,
    problems: list[Problem],
    profile: str,
    sliced: Rule | None,
) -> None:
    count = len(values)
    if count < rule.min:
        # A primitive may be absent with an extension in its place (``_birthDate`` with a data-absent-reason).
        if sliced is None and count == 0 and any(f"_{key}" in node for key in rule.keys):
            return
        where = prefix[:-1] if prefix else ""
        if sliced is None:
            rule_id, message = "uscore.mandatory", f"{_short(rule.path)} is mandatory in {profile} but missing."
        else:
            rule_id = "uscore.category" if sliced.is_category else "uscore.slice"
            message = f"{profile} needs {_short(sliced.path)} {describe(rule.match)}" + (
                "." if rule.min == 1 else f" ({rule.min} of them)."
            )
        problems.append(Problem(rule_id, ERROR, rule.path, where, message, profile))
    elif rule.max is not None and count > rule.max:
        key, index, _ = values[rule.max] if rule.max < count else values[-1]
        message = (
            f"{_short(rule.path)} is not allowed in {profile}."
            if rule.max == 0
            else f"{_short(rule.path)} may occur at most {rule.max} time(s) in {profile}, found {count}."
        )
        problems.append(Problem("uscore.cardinality", ERROR, rule.path, _where(prefix, key, index), message, profile))


def _each(
    rule: Rule,
    values: list[tuple[str, int, Any]],
    prefix: str,
    problems: list[Problem],
    seen: set[int] | None,
    profile: str,
    sliced: Rule | None = None,
) -> None:
    # A slice that constrains nothing below itself leaves its members to the element's child rules.
    children = rule.children if rule.children or sliced is None else sliced.children
    for key, index, value in values:
        if rule.fixed is not None and value != rule.fixed:
            problems.append(
                Problem(
                    "uscore.fixed-value",
                    ERROR,
                    rule.path,
                    _where(prefix, key, index),
                    f"{_short(rule.path)} must be {json.dumps(rule.fixed)} in {profile}.",
                    profile,
                )
            )
        if rule.pattern is not None and not (
            _has_codings(value, rule.pattern_codings)
            if rule.pattern_codings is not None
            else matches(value, rule.pattern)
        ):
            problems.append(
                Problem(
                    "uscore.fixed-value",
                    ERROR,
                    rule.path,
                    _where(prefix, key, index),
                    f"{_short(rule.path)} must carry {describe({'pattern': rule.pattern})} in {profile}.",
                    profile,
                )
            )
        if rule.valueset is not None:
            _binding(rule, value, _where(prefix, key, index), problems, profile)
        if children and isinstance(value, dict):
            _check(children, value, _where(prefix, key, index) + ".", problems, seen, profile)


def _choice_types(rule: Rule, node: Mapping[str, Any], prefix: str, problems: list[Problem], profile: str) -> bool:
    """Report a choice element given in a type the profile does not allow; whether there was one."""
    stem, size = rule.stem, len(rule.stem)
    found = False
    for key in node:
        if key.startswith(stem) and key[size : size + 1].isupper() and key not in rule.keys:
            allowed = " or ".join(rule.types) or "nothing"
            problems.append(
                Problem(
                    "uscore.type",
                    ERROR,
                    f"{rule.path.rsplit('.', 1)[0]}.{key}",
                    f"{prefix}{key}",
                    f"{stem}[x] may only be {allowed} in {profile}, not {key[size:]}.",
                    profile,
                )
            )
            found = True
    return found


def _binding(rule: Rule, value: Any, where: str, problems: list[Problem], profile: str) -> None:
    valueset = rule.valueset
    assert valueset is not None
    shown: str
    if isinstance(value, str):
        if valueset.has_code(value) is not False:
            return
        shown = value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value:
            codings = [c for c in as_items(value.get("coding")) if isinstance(c, dict) and "code" in c]
            if not codings or any(_coding_in(rule, c) for c in codings):
                return
            shown = ", ".join(f"{c.get('system') or 'no system'}|{c.get('code')}" for c in codings)
        elif "code" in value:
            if _coding_in(rule, value):
                return
            shown = f"{value.get('system') or 'no system'}|{value.get('code')}"
        else:
            return
    else:
        return
    if rule.strength == "required":
        rule_id, severity, how = "uscore.binding", ERROR, "requires a code from"
    else:
        rule_id, severity, how = "uscore.binding-extensible", WARNING, "expects a code from"
    message = f"{_short(rule.path)} {shown} is not in {valueset.name}: {profile} {how} that value set."
    problems.append(Problem(rule_id, severity, rule.path, where, message, profile))


def _coding_in(rule: Rule, coding: Mapping[str, Any]) -> bool:
    valueset = rule.valueset
    assert valueset is not None
    if valueset.has_coding(coding.get("system"), coding.get("code")):
        return True
    # Extensible only: a listed code under another system URL passes. Several code systems were
    # renamed between FHIR R4's value sets (2019) and the terminology the guide was published with
    # (IHE format codes...), and a warning there would be a false alarm.
    code = coding.get("code")
    return rule.strength == "extensible" and isinstance(code, str) and code in valueset.codes


def _in_slice(rule: Rule, key: str, value: Any) -> bool:
    match = rule.match
    if match is None:
        return False
    if rule.match_codings is not None:
        return _has_codings(value, rule.match_codings)
    if "pattern" in match:
        return matches(value, match["pattern"])
    if "type" in match:
        return key in rule.keys
    valueset = rule.valueset_of_match
    return valueset is not None and _concept_in(valueset, value)


def _concept_in(valueset: ValueSet, value: Any) -> bool:
    if isinstance(value, dict):
        if "coding" in value:
            return any(
                valueset.has_coding(c.get("system"), c.get("code"))
                for c in as_items(value.get("coding"))
                if isinstance(c, dict)
            )
        return valueset.has_coding(value.get("system"), value.get("code"))
    return isinstance(value, str) and bool(valueset.has_code(value))


def _coding_pattern(pattern: Any) -> tuple[tuple[str, str], ...] | None:
    """A CodeableConcept pattern of codings with only a system and a code, as pairs; else None.

    Most of the guide's patterns are of this shape (categories, vital-sign codes): checking them as
    pairs is what makes slice matching cheap.
    """
    if not isinstance(pattern, dict) or set(pattern) != {"coding"} or not isinstance(pattern["coding"], list):
        return None
    pairs = []
    for coding in pattern["coding"]:
        if not isinstance(coding, dict) or set(coding) != {"system", "code"}:
            return None
        pairs.append((str(coding["system"]), str(coding["code"])))
    return tuple(pairs)


def _has_codings(value: Any, pairs: tuple[tuple[str, str], ...]) -> bool:
    """``matches(value, {"coding": [...]})`` for a pattern of (system, code) pairs."""
    codings = value.get("coding") if isinstance(value, dict) else None
    if not isinstance(codings, list):
        return False
    for system, code in pairs:
        if not any(isinstance(c, dict) and c.get("code") == code and c.get("system") == system for c in codings):
            return False
    return True


def matches(value: Any, pattern: Any) -> bool:
    """FHIR pattern semantics: every element of the pattern is in the value (lists: each item somewhere)."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(matches(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value] if value is not None else []
        return all(any(matches(item, p) for item in items) for p in pattern)
    return bool(value == pattern)


def describe(match: Mapping[str, Any] | None) -> str:
    """A slice's or pattern's meaning in words: ``social-history (http://...observation-category)``."""
    if not match:
        return ""
    if "pattern" in match:
        pattern = match["pattern"]
        codings = pattern.get("coding") if isinstance(pattern, dict) else None
        if isinstance(codings, list):
            return " and ".join(f"{c.get('code')} ({c.get('system')})" for c in codings if isinstance(c, dict))
        if isinstance(pattern, dict) and "code" in pattern:
            return f"{pattern.get('code')} ({pattern.get('system')})"
        if isinstance(pattern, dict) and "url" in pattern and len(pattern) == 1:
            return f"(extension {pattern['url']})"
        return json.dumps(pattern, sort_keys=True)
    if "valueset" in match:
        return f"from value set {str(match['valueset']).rsplit('/', 1)[-1]}"
    if "type" in match:
        return "of type " + " or ".join(match["type"])
    return ""


def _short(path: str) -> str:
    return path.split(".", 1)[1] if "." in path else path


# --- the table --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """Every profile of the table, by URL and by resource type, and what the table cannot check."""

    profiles: Mapping[str, Profile]
    by_type: Mapping[str, tuple[Profile, ...]]
    valuesets: Mapping[str, ValueSet]
    unchecked_valuesets: Mapping[str, str]
    extensions: frozenset[str]
    package: str


@cache
def table() -> Table:
    """The derived table, loaded and compiled once per process."""
    data = json.loads(TABLE_PATH.read_text())
    valuesets = {url: ValueSet(url, vs) for url, vs in data["valuesets"].items() if "unavailable" not in vs}
    unchecked = {url: vs["unavailable"] for url, vs in data["valuesets"].items() if "unavailable" in vs}
    profiles: dict[str, Profile] = {}
    extensions = set(data["extensions"]) | set(_CORE_EXTENSIONS)
    for item in data["profiles"]:
        rules = tuple(Rule(node, item["type"], "", valuesets) for node in item["elements"])
        must_support = tuple(item["must_support"])
        index = {path: i for i, path in enumerate(must_support)}
        for top in rules:
            for rule in top.walk():
                rule.ms_index = index.get(rule.relative, -1)
                pattern = (rule.match or {}).get("pattern")
                if isinstance(pattern, dict) and isinstance(pattern.get("url"), str) and "://" in pattern["url"]:
                    extensions.add(pattern["url"])
        profiles[item["url"]] = Profile(
            url=item["url"],
            name=item["name"],
            title=item["title"],
            resource_type=item["type"],
            parent=item["parent"],
            depth=item["depth"],
            rules=rules,
            must_support=must_support,
            select=item["select"],
        )
    by_type: dict[str, list[Profile]] = {}
    for profile in profiles.values():
        by_type.setdefault(profile.resource_type, []).append(profile)
    return Table(
        profiles=profiles,
        by_type={t: tuple(ps) for t, ps in by_type.items()},
        valuesets=valuesets,
        unchecked_valuesets=unchecked,
        extensions=frozenset(extensions),
        package=data["package"],
    )


# --- choosing profiles ------------------------------------------------------------------------------------


def profile(url: str) -> Profile | None:
    """The profile of a canonical URL (a ``|version`` suffix is ignored), if the table has it."""
    return table().profiles.get(url.split("|", 1)[0])


def profiles_for(resource: Mapping[str, Any]) -> list[Profile]:
    """The profiles to check a resource against, as the guide means them (see the module doc)."""
    claimed: list[Profile] = []
    for url in as_items(as_object(resource.get("meta")).get("profile")):
        found = profile(url) if isinstance(url, str) else None
        if found is not None and found not in claimed:
            claimed.append(found)
    if claimed:
        return claimed
    resource_type = str(resource.get("resourceType"))
    candidates = table().by_type.get(resource_type, ())
    if len(candidates) <= 1:
        return list(candidates)
    categories = frozenset(
        pair for concept in as_items(resource.get("category")) for pair in _pairs(concept) if concept
    )
    return [_select(resource_type, frozenset(_pairs(resource.get("code"))), categories)]


@lru_cache(maxsize=4096)
def _select(
    resource_type: str, codings: frozenset[tuple[str, str]], category_pairs: frozenset[tuple[str, str]]
) -> Profile:
    """The profile for a type, code and categories (cached: a pull repeats few combinations)."""
    candidates = table().by_type[resource_type]
    # The table's category patterns and value sets look at codings only: one coding per category will do.
    categories = [{"coding": [{"system": s, "code": c}]} for s, c in sorted(category_pairs)]
    # 1. The code: a profile that fixes the code (most specific first), then one whose value set has it.
    by_code = [p for p in candidates if codings & _fixed_codes(p)]
    if not by_code:
        by_code = [p for p in candidates if any(_code_valueset_has(p, s, c) for s, c in codings)]
    if by_code:
        return max(by_code, key=lambda p: (p.depth, p.name))
    # 2. Required categories, for profiles not defined by a code: survey -> screening-assessment.
    open_profiles = [p for p in candidates if not _has_code_selector(p)]
    by_category = [
        p
        for p in open_profiles
        if p.select.get("categories") and all(_category_present(m, categories) for m in p.select["categories"])
    ]
    if by_category:
        return max(by_category, key=lambda p: (p.depth, len(p.select["categories"]), p.name))
    # 3. A category in a profile's category value set, narrowest value set first: imaging -> clinical result.
    lenient = [p for p in open_profiles if not p.select.get("categories")]
    by_valueset = [(size, p) for p in lenient for size in [_category_valueset_size(p, categories)] if size is not None]
    if by_valueset:
        return min(by_valueset, key=lambda item: (item[0], item[1].name))[1]
    return base_profile(candidates)


def base_profile(candidates: Iterable[Profile]) -> Profile:
    """The most general profile of a type: no code selector, fewest required categories, widest categories."""
    return min(
        candidates,
        key=lambda p: (
            p.depth,
            _has_code_selector(p),
            len(p.select.get("categories", ())),
            -_valueset_total(p.select.get("category_valuesets", ())),
            p.name,
        ),
    )


def _pairs(concept: Any) -> set[tuple[str, str]]:
    return {
        (str(c.get("system")), str(c.get("code")))
        for c in as_items(as_object(concept).get("coding"))
        if isinstance(c, dict)
    }


def _fixed_codes(profile: Profile) -> set[tuple[str, str]]:
    return {(s, c) for s, c in profile.select.get("code", ())}


def _has_code_selector(profile: Profile) -> bool:
    return bool(profile.select.get("code") or profile.select.get("code_valueset"))


def _code_valueset_has(profile: Profile, system: str, code: str) -> bool:
    url = profile.select.get("code_valueset")
    valueset = table().valuesets.get(url) if url else None
    return valueset is not None and (system, code) in valueset.pairs


def _category_present(match: Mapping[str, Any], categories: list[dict[str, Any]]) -> bool:
    if "pattern" in match:
        return any(matches(c, match["pattern"]) for c in categories)
    valueset = table().valuesets.get(match.get("valueset", ""))
    return valueset is not None and any(_concept_in(valueset, c) for c in categories)


def _category_valueset_size(profile: Profile, categories: list[dict[str, Any]]) -> int | None:
    sizes = [
        len(valueset.pairs)
        for url in profile.select.get("category_valuesets", ())
        for valueset in [table().valuesets.get(url)]
        if valueset is not None and any(_concept_in(valueset, c) for c in categories)
    ]
    return min(sizes) if sizes else None


def _valueset_total(urls: Iterable[str]) -> int:
    return sum(len(vs.pairs) for url in urls for vs in [table().valuesets.get(url)] if vs is not None)


def known_extensions() -> frozenset[str]:
    """Extensions the guide defines or slices into a profile, and core ones it uses anywhere."""
    return table().extensions


def unchecked_valuesets() -> Mapping[str, str]:
    """Value sets the table cannot list (and so bindings not checked), with the reason."""
    return table().unchecked_valuesets


KNOWN_EXTENSIONS = known_extensions()
