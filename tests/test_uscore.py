"""US Core 6.1.0 validation against the guide's own examples, their mutations, and real-shaped data.

The official examples (``tests/us_core_examples/``, CC0) must each pass the profile they claim with
no finding. Then each example is broken, one required element or one required-binding code at a
time, and the validator must report each break at the right path, naming the profile; the recall
is printed as counts, and every miss is listed here by name with the reason it cannot be checked.
The committed table must be exactly what the generator makes of the guide's package, when the
package is at hand (it always is in CI, at ``../shared/reference/`` beside the project).
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from connections.adapters.structure import structure_problems
from onboarding.validation import generate_uscore, uscore
from onboarding.validation.uscore import Profile, Rule

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).resolve().parent / "us_core_examples"
# The IG package, for the reproduction test: $USCORE_IG_PACKAGE, else the shared reference folder.
IG_PACKAGE = Path(
    os.environ.get("USCORE_IG_PACKAGE") or ROOT / ".." / "shared" / "reference" / "us-core" / "us_core_610.tgz"
)
ERROR_RULES = {"uscore.mandatory", "uscore.slice", "uscore.category"}

# Value sets whose codes neither the IG package nor the base R4 packages list, so a binding to them
# cannot be checked: a bogus code there is a known miss.
_VSAC = "defined in VSAC only, and no package lists its codes"
UNLISTED_VALUESETS = {
    "http://hl7.org/fhir/us/core/ValueSet/omb-race-category": f"{_VSAC} (OMB race categories)",
    "http://hl7.org/fhir/us/core/ValueSet/detailed-race": f"{_VSAC} (CDC race codes)",
    "http://hl7.org/fhir/us/core/ValueSet/omb-ethnicity-category": f"{_VSAC} (OMB ethnicity categories)",
    "http://hl7.org/fhir/us/core/ValueSet/detailed-ethnicity": f"{_VSAC} (CDC ethnicity codes)",
    "http://hl7.org/fhir/us/core/ValueSet/birthsex": f"{_VSAC} (administrative sex)",
    "http://cts.nlm.nih.gov/fhir/ValueSet/2.16.840.1.113762.1.4.1240.3": f"{_VSAC} (sex)",
    "http://hl7.org/fhir/ValueSet/mimetypes": "all of BCP 13 (MIME types), a grammar with no list of codes",
}
# Value sets defined by a filter on a code system too large to list (LOINC): the table checks the
# system only, so a made-up code of the right system passes.
SYSTEM_ONLY_VALUESETS = {
    "http://hl7.org/fhir/us/core/ValueSet/us-core-documentreference-type": "LOINC codes whose SCALE_TYP is DOC",
}


def load_examples() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text())) for path in sorted(EXAMPLES.glob("*.json"))]


def claimed(resource: dict[str, Any]) -> list[Profile]:
    """The US Core profiles of the table that the resource claims."""
    found = [uscore.profile(url) for url in resource.get("meta", {}).get("profile", [])]
    return [p for p in found if p is not None]


# --- 1. the examples ----------------------------------------------------------------------------------------


def test_every_official_example_passes_the_profile_it_claims() -> None:
    examples = load_examples()
    assert len(examples) == 179
    checked, with_errors, other = 0, [], []
    for name, resource in examples:
        own = claimed(resource)
        chosen = uscore.profiles_for(resource)
        problems = [p for profile in chosen for p in profile.check(resource)]
        if own:
            assert chosen == own, (name, [p.name for p in chosen], [p.name for p in own])
            checked += 1
        else:
            other.append(f"{name} ({', '.join(p.name for p in chosen) or 'no US Core profile'})")
        if problems:
            with_errors.append((name, problems))
    claiming = len(examples) - len(other)
    print(f"\n{claiming} examples, {checked} checked against their own profile, {len(with_errors)} with errors")
    print(f"{len(other)} examples claim no US Core profile (Media, SDC Questionnaires), no finding: {other}")
    assert with_errors == []
    assert checked == claiming == 174
    # 47 of the table's 49 profiles have an example; the guide gives none for these two.
    unexampled = {p.name for p in uscore.table().profiles.values()} - {p.name for _, r in examples for p in claimed(r)}
    assert unexampled == {"us-core-vital-signs", "us-core-practitionerrole"}


def test_the_validate_step_reports_nothing_of_us_core_on_the_examples() -> None:
    """Through the step's own checks (structure included), not only the US Core engine."""
    from onboarding.steps.validate import MappingRules, Validator

    rules = MappingRules(version=1, mrn_system="urn:x", mapped_codes=frozenset(), decided_extensions=frozenset())
    validator = Validator(rules=rules, today=date(2026, 1, 1))
    found = Counter()
    for name, resource in load_examples():
        if resource["resourceType"] == "Patient":
            findings = validator.check_patient(resource)
        else:
            findings = validator.check_resource(resource, patient_id="x", encounter_ids=set(), birth_date=None)
        found.update((name, f.rule) for f in findings if f.rule.startswith(("uscore.", "structure.")))
    assert found == Counter()
    # The coverage report lists every profile the examples touched.
    touched = {item["profile"] for item in validator.must_support_summary()}
    assert touched == {p.name for _, r in load_examples() for p in claimed(r)}


# --- 2. mutations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One value (or set of values) of an example that a mutation changes."""

    steps: tuple[tuple[str, int], ...]  # JSON keys and list positions (-1: not a list) to the parent
    keys: tuple[str, ...]  # the element's JSON keys in that parent
    positions: tuple[tuple[str, int], ...]  # which values; empty: the whole element
    rule: Rule
    enclosing: Rule | None  # the innermost slice the values are inside, if any

    def discriminates(self) -> bool:
        """Whether the element is (part of) what puts its parent in an optional slice.

        Removing it takes the parent out of the slice, which the guide allows when the slice is
        optional (a Coverage identifier without its member-id type is just another identifier).
        """
        slice_rule = self.enclosing
        if slice_rule is None or slice_rule.min > 0 or not self.rule.path.startswith(f"{slice_rule.path}."):
            return False
        below = self.rule.path[len(slice_rule.path) + 1 :]
        pattern = (slice_rule.match or {}).get("pattern")
        return isinstance(pattern, dict) and below in set(generate_uscore._key_paths(pattern))


def _values(rule: Rule, node: dict[str, Any]) -> list[tuple[str, int, Any]]:
    found = []
    for key in rule.keys:
        value = node.get(key)
        if isinstance(value, list):
            found.extend((key, i, v) for i, v in enumerate(value))
        elif value is not None:
            found.append((key, -1, value))
    return found


def _member(slice_rule: Rule, key: str, value: Any) -> bool:
    match = slice_rule.match or {}
    if "pattern" in match:
        return uscore.matches(value, match["pattern"])
    if "type" in match:
        return key in slice_rule.keys
    valueset = slice_rule.valueset_of_match
    codings = value.get("coding", []) if isinstance(value, dict) else []
    return valueset is not None and any(valueset.has_coding(c.get("system"), c.get("code")) for c in codings)


def sites(
    rules: tuple[Rule, ...],
    node: dict[str, Any],
    steps: tuple[tuple[str, int], ...] = (),
    enclosing: Rule | None = None,
) -> Iterator[Site]:
    """Every element the profile's rules reach in an example, with the rule that governs it."""
    for rule in rules:
        values = _values(rule, node)
        if values:
            yield Site(steps, rule.keys, (), rule, enclosing)
        in_slice = set()
        for slice_rule in rule.slices:
            members = [(k, i, v) for k, i, v in values if _member(slice_rule, k, v)]
            if members:
                yield Site(steps, rule.keys, tuple((k, i) for k, i, _ in members), slice_rule, enclosing)
            for k, i, v in members:
                in_slice.add((k, i))
                if isinstance(v, dict):
                    yield from sites(slice_rule.children or rule.children, v, (*steps, (k, i)), slice_rule)
        for k, i, v in values:
            if (k, i) not in in_slice and isinstance(v, dict):
                yield from sites(rule.children, v, (*steps, (k, i)), enclosing)


def _parent(resource: dict[str, Any], steps: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    node: Any = resource
    for key, index in steps:
        node = node[key] if index < 0 else node[key][index]
    return node


def remove(resource: dict[str, Any], site: Site) -> dict[str, Any]:
    broken = copy.deepcopy(resource)
    parent = _parent(broken, site.steps)
    if not site.positions:
        for key in site.keys:
            parent.pop(key, None)
            parent.pop(f"_{key}", None)
        return broken
    for key, index in sorted(site.positions, key=lambda p: -p[1]):
        if index < 0:
            parent.pop(key, None)
        else:
            del parent[key][index]
            if not parent[key]:
                del parent[key]
    return broken


def make_bogus(resource: dict[str, Any], site: Site) -> dict[str, Any] | None:
    broken = copy.deepcopy(resource)
    parent = _parent(broken, site.steps)
    changed = False
    for key, index in site.positions or [(k, i) for k, i, _ in _values(site.rule, parent)]:
        value = parent[key] if index < 0 else parent[key][index]
        if isinstance(value, str):
            value = "bogus"
            changed = True
        elif isinstance(value, dict) and isinstance(value.get("coding"), list):
            for coding in value["coding"]:
                coding["code"] = "bogus"
                changed = True
        elif isinstance(value, dict) and "code" in value:
            value["code"] = "bogus"
            changed = True
        if index < 0:
            parent[key] = value
        else:
            parent[key][index] = value
    return broken if changed else None


def _plain(path: str) -> str:
    return ".".join(part.split(":")[0] for part in path.split("."))


def reported(problems: list[uscore.Problem], site: Site, profile: Profile, rules: set[str]) -> bool:
    """Whether a problem of one of ``rules`` names this profile at the site's path.

    A slice's discriminator removed takes its value out of the slice, so the finding may name the
    plain element (``component.code``) or the slice itself (``component:systolic``) instead.
    """
    path = site.rule.path
    for problem in problems:
        if problem.profile != profile.name or problem.severity != "error" or problem.rule not in rules:
            continue
        if problem.path == path or _plain(problem.path) == _plain(path) or path.startswith(f"{problem.path}."):
            return True
    return False


def test_every_required_element_removed_from_an_example_is_reported() -> None:
    total, caught, by_structure, allowed, misses = 0, 0, 0, [], []
    for name, resource in load_examples():
        for profile in claimed(resource):
            for site in sites(profile.rules, resource):
                if site.rule.min < 1:
                    continue
                broken = remove(resource, site)
                assert profile in uscore.profiles_for(broken)
                total += 1
                if reported(profile.check(broken), site, profile, ERROR_RULES):
                    caught += 1
                elif site.keys == ("url",) and structure_problems(broken):
                    # An extension without its url is no extension at all: the structure check
                    # (the step runs it on every resource) reports it, as the base spec requires.
                    by_structure += 1
                elif site.discriminates():
                    allowed.append(f"{name} {site.rule.path}")
                else:
                    misses.append((name, profile.name, site.rule.path))
    print(
        f"\nremoved required elements: {caught + by_structure} of {total} reported "
        f"({caught} by US Core rules, {by_structure} extension urls by the structure check); "
        f"{len(allowed)} not an error under the guide (the discriminator of an optional slice: {allowed}); "
        f"{len(misses)} missed"
    )
    assert total > 1000
    assert misses == []
    assert caught + by_structure + len(allowed) == total


def test_every_bogus_required_binding_code_is_reported_on_its_path() -> None:
    total, caught, open_slice, unlisted, misses = 0, 0, 0, Counter(), []
    known = {**UNLISTED_VALUESETS, **SYSTEM_ONLY_VALUESETS}
    for name, resource in load_examples():
        for profile in claimed(resource):
            for site in sites(profile.rules, resource):
                if site.rule.strength != "required":
                    continue
                broken = make_bogus(resource, site)
                if broken is None:
                    continue
                total += 1
                if reported(profile.check(broken), site, profile, {"uscore.binding", *ERROR_RULES}):
                    caught += 1
                elif "valueset" in (site.rule.match or {}) and site.rule.min == 0:
                    # A slice defined by a value set (clinical result's category:us-core): a code
                    # outside it only leaves the optional slice, and the slicing is open.
                    open_slice += 1
                elif site.rule.binding_url in known:
                    unlisted[site.rule.binding_url] += 1
                else:
                    misses.append((name, profile.name, site.rule.path, site.rule.binding_url))
    print(
        f"\nbogus required-binding codes: {caught} of {total} reported; {open_slice} not an error under the "
        f"guide (a code outside an optional value-set slice only leaves it); {sum(unlisted.values())} cannot be "
        f"checked; {len(misses)} missed"
    )
    for url, count in sorted(unlisted.items()):
        print(f"  {count:>3} x {url.rsplit('/', 1)[-1]}: {known[url]}")
    assert total > 300
    assert misses == []
    assert caught + open_slice + sum(unlisted.values()) == total
    # The lists of value sets that cannot be checked hold no stale entry, and agree with the table.
    assert set(unlisted) == set(known)
    assert set(UNLISTED_VALUESETS) - {"http://hl7.org/fhir/ValueSet/mimetypes"} <= set(uscore.unchecked_valuesets())
    assert all(uscore.table().valuesets[url].systems for url in SYSTEM_ONLY_VALUESETS)


@pytest.mark.parametrize(
    ("file", "field", "path"),
    [
        ("Observation-heart-rate.json", "status", "Observation.status"),
        ("Encounter-example-1.json", "status", "Encounter.status"),
        ("Patient-example.json", "gender", "Patient.gender"),
    ],
)
def test_a_bogus_status_or_gender_is_an_error_naming_the_profile(file: str, field: str, path: str) -> None:
    resource = json.loads((EXAMPLES / file).read_text())
    resource[field] = "bogus"
    (profile,) = uscore.profiles_for(resource)
    problems = [p for p in profile.check(resource) if p.rule == "uscore.binding"]
    assert [(p.path, p.severity, p.profile) for p in problems] == [(path, "error", profile.name)]
    assert "bogus" in problems[0].message and profile.name in problems[0].message


# --- 3. choosing profiles -------------------------------------------------------------------------------------

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"


def synthea_observation(category: str, loinc: str, value: dict[str, Any]) -> dict[str, Any]:
    """An Observation shaped as Synthea writes them (no meta.profile, category and LOINC code)."""
    return {
        "resourceType": "Observation",
        "id": f"synthea-{loinc}",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category, "display": category.title()}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": "x"}], "text": "x"},
        "subject": {"reference": "urn:uuid:3f228315-d2de-4292-a56a-b7c120c2875d"},
        "encounter": {"reference": "urn:uuid:0b7e8e4b-4d2e-4c2b-9a7b-1d2f3e4a5b6c"},
        "effectiveDateTime": "2019-02-11T08:24:23-05:00",
        "issued": "2019-02-11T08:24:23.227-05:00",
        **value,
    }


SMOKER = {
    "valueCodeableConcept": {
        "coding": [{"system": "http://snomed.info/sct", "code": "266919005", "display": "Never smoker"}],
        "text": "Never smoker",
    }
}
SCORE = {"valueQuantity": {"value": 29, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}}


def test_synthea_smoking_status_and_screening_scores_meet_their_own_profiles() -> None:
    # Synthea's smoking status carries category survey: it is a smoking-status Observation, checked
    # as one; the finding (smoking status wants social-history) is the real one, not clinical-result's.
    smoking = synthea_observation("survey", "72166-2", SMOKER)
    (profile,) = uscore.profiles_for(smoking)
    assert profile.name == "us-core-smokingstatus"
    problems = profile.check(smoking)
    assert [(p.rule, p.path) for p in problems] == [("uscore.category", "Observation.category:SocialHistory")]
    assert "social-history" in problems[0].message and "us-core-smokingstatus" in problems[0].message
    smoking["category"].append({"coding": [{"system": OBS_CATEGORY, "code": "social-history"}]})
    assert profile.check(smoking) == []
    # MMSE and PHQ-9 totals with category survey are screening assessments, and valid ones.
    for loinc in ("72107-6", "44261-6", "72166-2-not-smoking"):
        screening = synthea_observation("survey", loinc, SCORE)
        (profile,) = uscore.profiles_for(screening)
        assert profile.name == "us-core-observation-screening-assessment"
        assert profile.check(screening) == []


@pytest.mark.parametrize(
    ("category", "code", "expected"),
    [
        ("vital-signs", "8867-4", "us-core-heart-rate"),
        ("vital-signs", "59408-5", "us-core-pulse-oximetry"),
        ("vital-signs", "59576-9", "pediatric-bmi-for-age"),
        ("vital-signs", "8478-0", "us-core-vital-signs"),  # mean blood pressure: in the vital-signs value set
        ("exam", "8867-4", "us-core-heart-rate"),  # the code decides; its category is then a real finding
        ("social-history", "72166-2", "us-core-smokingstatus"),
        ("social-history", "11341-5", "us-core-observation-occupation"),
        ("social-history", "82810-3", "us-core-observation-pregnancystatus"),
        ("social-history", "76690-7", "us-core-observation-sexual-orientation"),
        ("survey", "44249-1", "us-core-observation-screening-assessment"),
        ("laboratory", "2339-0", "us-core-observation-lab"),
        ("imaging", "24627-2", "us-core-observation-clinical-result"),
        ("vital-signs", "72514-3", "us-core-observation-clinical-result"),  # pain score: not a vital-sign code
        ("social-history", "74013-4", "us-core-simple-observation"),  # alcohol use: no profile of its own
        (None, "1234-5", "us-core-simple-observation"),  # no category: the base profile of Observation
    ],
)
def test_code_then_category_then_the_base_profile_select(category: str | None, code: str, expected: str) -> None:
    resource = synthea_observation(category or "x", code, SCORE)
    if category is None:
        del resource["category"]
    assert [p.name for p in uscore.profiles_for(resource)] == [expected]


def test_claims_win_and_other_types_select_by_category() -> None:
    lab = synthea_observation("laboratory", "2339-0", SCORE)
    lab["meta"] = {"profile": [uscore.BASE + "us-core-observation-clinical-result|6.1.0", "http://example.org/x"]}
    assert [p.name for p in uscore.profiles_for(lab)] == ["us-core-observation-clinical-result"]

    def condition(system: str, code: str) -> dict[str, Any]:
        return {"resourceType": "Condition", "category": [{"coding": [{"system": system, "code": code}]}]}

    cc = "http://terminology.hl7.org/CodeSystem/condition-category"
    cases = {
        (cc, "encounter-diagnosis"): "us-core-condition-encounter-diagnosis",
        (cc, "problem-list-item"): "us-core-condition-problems-health-concerns",
        ("http://hl7.org/fhir/us/core/CodeSystem/condition-category", "health-concern"): (
            "us-core-condition-problems-health-concerns"
        ),
    }
    for (system, code), expected in cases.items():
        assert [p.name for p in uscore.profiles_for(condition(system, code))] == [expected]
    assert [p.name for p in uscore.profiles_for({"resourceType": "Condition"})] == [
        "us-core-condition-problems-health-concerns"
    ]
    lab_report = {
        "resourceType": "DiagnosticReport",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
    }
    assert [p.name for p in uscore.profiles_for(lab_report)] == ["us-core-diagnosticreport-lab"]
    assert [p.name for p in uscore.profiles_for({"resourceType": "DiagnosticReport"})] == [
        "us-core-diagnosticreport-note"
    ]
    assert [p.name for p in uscore.profiles_for({"resourceType": "Practitioner"})] == ["us-core-practitioner"]
    assert uscore.profiles_for({"resourceType": "Media"}) == []


# --- 4. the table is the guide's ------------------------------------------------------------------------------


def test_the_generator_reproduces_the_committed_table_from_the_package() -> None:
    if not IG_PACKAGE.is_file():
        # CI always has shared/ beside the clone: there a missing package is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail(f"the US Core package is not at {IG_PACKAGE} (set USCORE_IG_PACKAGE)")
        pytest.skip(f"the US Core package is not at {IG_PACKAGE} (set USCORE_IG_PACKAGE)")
    extract = json.loads(generate_uscore.R4_EXTRACT.read_text())
    rebuilt = generate_uscore.dump(generate_uscore.build_table(IG_PACKAGE, extract))
    assert rebuilt == generate_uscore.TABLE.read_text()
    # And the extract of R4 value sets still covers every base R4 value set the guide binds to.
    table = json.loads(rebuilt)
    assert table["package"] == "hl7.fhir.us.core@6.1.0 (CC0-1.0)"
    assert {"http://hl7.org/fhir/ValueSet/observation-status", "http://hl7.org/fhir/ValueSet/ucum-bodyweight"} <= set(
        extract["valuesets"]
    )
