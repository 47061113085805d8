"""Mappings: reads and writes of a connection's versioned mapping, its CSV and ConceptMap forms, and sign-off.

A mapping says which identifier system carries the MRN, what to do with extensions the product
does not know, and which standard code each local code means. Versions are immutable: every
change (the map step, an edit in the browser, a CSV import) writes a new version, which voids
any sign-off of an earlier one. The sign-off is the mapping's gate (``onboarding.gates``): hospital
IT approve one exact version, and it can be put to them once every local code and the MRN system
are covered.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from onboarding.gates import services as gates
from onboarding.mapping.profile import CODE_FORMATS, ELEMENTS_BY_KEY, SYSTEM_LABELS
from onboarding.models import Approval, Mapping, Onboarding, Step, StepRun, ValidationPolicy
from portal import audit, csvsafe
from portal.access import AuthUser, User, require_perm
from portal.models import Tenant

# Whoever drives the pipeline edits its mapping; hospital IT approve it.
EDIT_PERM = "onboarding.run_step"
SIGN_OFF_PERM = gates.DECIDE_PERM
SIGN_OFF_GATE = "mapping_sign_off"
EXTENSION_CHOICES = {"use": "Use it", "ignore": "Ignore it", "": "Not decided"}
CSV_COLUMNS = (
    "element",
    "source_system",
    "source_code",
    "source_display",
    "count",
    "target_system",
    "target_code",
    "target_display",
)
REQUIRED_CSV_COLUMNS = ("element", "source_system", "source_code", "target_system", "target_code", "target_display")
MAX_CSV_BYTES = 1024 * 1024
MAX_CSV_ROWS = 5000
# Codes, systems and displays are short (a display at most 300 characters): anything longer is not a mapping.
MAX_CSV_CELL_CHARS = 1000
_TARGETS = ("target_system", "target_code", "target_display")
# What a person may change in a tenant's validation policy (the page's form and the API alike).
POLICY_FIELDS = ("max_error_patient_pct", "max_warning_patient_pct", "map_sample_size", "validate_sample_size")


class MappingError(Exception):
    """A change the mapping refuses; the message says what to fix."""


class MappingConflict(MappingError):
    """The mapping changed since the person loaded it."""


# --- reads --------------------------------------------------------------------------------------------


def latest_mapping(onboarding: Onboarding) -> Mapping | None:
    """The newest version: the one people edit and hospital IT sign."""
    return onboarding.mappings.order_by("-version").first()


def latest_map_run(onboarding: Onboarding) -> StepRun | None:
    """The newest attempt of the map step, whose profile the mapping page shows."""
    return onboarding.runs.filter(step=Step.MAP).order_by("-attempt").first()


def active_sign_off(mapping: Mapping) -> Approval | None:
    """The live approval of exactly this version, unless a newer version voided it."""
    approval = gates.live_approval(mapping.onboarding, SIGN_OFF_GATE)
    return approval if approval is not None and approval.artifact_id == mapping.pk else None


def signed_mapping(onboarding: Onboarding) -> Mapping | None:
    """The latest version if hospital IT signed it off; None when the latest is unsigned."""
    mapping = latest_mapping(onboarding)
    if mapping is None or active_sign_off(mapping) is None:
        return None
    return mapping


def policy_for(tenant: Tenant) -> ValidationPolicy:
    """The tenant's validation policy; until someone saves one, an unsaved copy with the defaults.

    Reading never writes: the row appears when a person changes it, with its audit event.
    """
    return ValidationPolicy.objects.filter(tenant=tenant).first() or ValidationPolicy(tenant=tenant)


def update_policy(
    *, user: User, tenant: Tenant, changes: dict[str, Any], request: HttpRequest | None = None
) -> ValidationPolicy:
    """Change some of the tenant's policy fields (``POLICY_FIELDS``) and record which changed.

    The page's form and the API's serializer both land here. The model's validators run again, so
    a bad value is a ``ValidationError`` naming its field, and nothing is saved.
    """
    require_perm(user, EDIT_PERM, tenant)
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise ValueError(f"Not policy fields: {', '.join(unknown)}")
    with transaction.atomic():
        # Compare with what is stored, not with an instance a bound form may already have changed.
        policy = ValidationPolicy.objects.select_for_update().filter(tenant=tenant).first()
        policy = policy or ValidationPolicy(tenant=tenant)
        changed = sorted(name for name, value in changes.items() if getattr(policy, name) != value)
        for name, value in changes.items():
            setattr(policy, name, value)
        policy.full_clean(exclude=["tenant", "updated_by"], validate_unique=False)
        policy.updated_by = user if isinstance(user, AuthUser) else None
        policy.save()
        audit.record(
            action="validation_policy.update",
            actor=user,
            tenant=tenant,
            obj=policy,
            request=request,
            detail={"changed": changed},
        )
    return policy


@dataclass(frozen=True)
class Coverage:
    """Whether a mapping covers what the product needs: the MRN system and every local code."""

    mrn_system_set: bool
    unmapped: list[dict[str, Any]]
    undecided_extensions: list[str]

    @property
    def complete(self) -> bool:
        return self.mrn_system_set and not self.unmapped

    def summary(self) -> str:
        if self.complete:
            return "Every required element is covered."
        parts = []
        if not self.mrn_system_set:
            parts.append("choose the MRN identifier system")
        if self.unmapped:
            parts.append(f"map {len(self.unmapped)} local code{'s' if len(self.unmapped) != 1 else ''}")
        return "To finish the mapping: " + " and ".join(parts) + "."


def coverage(mapping: Mapping) -> Coverage:
    """What the mapping still lacks before the map step can pass."""
    return Coverage(
        mrn_system_set=bool(mapping.mrn_system),
        unmapped=[row for row in mapping.codes if not all(row.get(k) for k in _TARGETS)],
        undecided_extensions=sorted(url for url, handling in mapping.extension_handling.items() if not handling),
    )


def sign_off_state(mapping: Mapping | None) -> tuple[bool, str]:
    """Whether this version may be put to hospital IT now, and a sentence saying why (not)."""
    if mapping is None:
        return False, "There is no mapping yet: run the map step first."
    if active_sign_off(mapping) is not None:
        return False, f"Version {mapping.version} is signed off."
    reason = _not_ready(mapping.onboarding, _artifact(mapping))
    if reason is not None:
        return False, reason
    return True, f"Version {mapping.version} is ready for hospital IT to sign off."


def row_key(row: dict[str, Any]) -> str:
    """The identity of a code row across versions: element, local system and local code."""
    return f"{row['element']}|{row['system']}|{row['code']}"


# --- the map step's version ---------------------------------------------------------------------------


def record_map_result(*, onboarding: Onboarding, profile: dict[str, Any], run: StepRun | None) -> Mapping:
    """Make the version a map run produces: the previous decisions, with this sample's codes and counts.

    Re-running map always makes a new version, so a sign-off of an earlier one is void.
    """
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        if run is not None:
            already = onboarding.mappings.filter(map_run=run).order_by("-version").first()
            if already is not None:
                # A redelivered run (its first worker was lost) must not write a second version.
                return already
        previous = latest_mapping(onboarding)
        old_rows = {row_key(row): row for row in previous.codes} if previous else {}
        rows: dict[str, dict[str, Any]] = {key: {**row, "count": 0} for key, row in old_rows.items()}
        for element in profile["elements"]:
            for local in element["local_codes"]:
                row = {"element": element["element"], "system": local["system"], "code": local["code"]}
                key = row_key(row)
                kept = old_rows.get(key, {})
                rows[key] = {
                    **row,
                    "display": local["display"] or kept.get("display", ""),
                    "count": local["count"],
                    **{k: kept.get(k, "") for k in _TARGETS},
                }
        handling = dict(previous.extension_handling) if previous else {}
        for extension in profile["extensions"]:
            if not extension["known"]:
                handling.setdefault(extension["url"], "")
        return _write_version(
            onboarding,
            previous,
            user=None,
            source=Mapping.Source.MAP_STEP,
            mrn_system=(previous.mrn_system if previous else "") or profile["suggested_mrn_system"],
            extension_handling=handling,
            codes=_sorted_rows(rows.values()),
            run=run,
        )


# --- edits ----------------------------------------------------------------------------------------------


def update_code(
    *,
    user: User,
    mapping: Mapping,
    key: str,
    target_system: str,
    target_code: str,
    target_display: str,
    request: HttpRequest | None = None,
) -> Mapping:
    """Map one local code (or clear its mapping with three blanks) in the latest version.

    ``mapping`` is the version the person was looking at: if someone changed this code's mapping
    since, the edit is refused rather than silently overwriting theirs. Other rows may have changed.
    """
    require_perm(user, EDIT_PERM, mapping.onboarding.tenant)
    seen = {row_key(row): row for row in mapping.codes}.get(key)
    if seen is None:
        raise MappingError("That local code is not in this mapping. Reload the page.")
    target = _clean_target(seen["element"], target_system, target_code, target_display)

    def change(latest: Mapping) -> dict[str, Any]:
        rows = {row_key(row): dict(row) for row in latest.codes}
        now = rows.get(key)
        if now is None:
            raise MappingConflict("That local code was removed from the mapping meanwhile. Reload the page.")
        if _target(now) != _target(seen):
            shown = now.get("target_code") or "unmapped"
            raise MappingConflict(
                f"Someone changed the mapping of {seen['code']} while you were editing (it is now {shown}). "
                "Reload the page and make your change again."
            )
        now.update(target)
        return _content(latest, codes=_sorted_rows(rows.values()))

    return _apply(mapping.onboarding, user=user, request=request, what=f"code {key}", change=change)


def set_mrn_system(*, user: User, mapping: Mapping, system: str, request: HttpRequest | None = None) -> Mapping:
    """Choose the identifier system that carries the MRN."""
    require_perm(user, EDIT_PERM, mapping.onboarding.tenant)
    system = system.strip()
    if not system:
        raise MappingError("Choose the identifier system that carries the MRN.")
    if len(system) > 300 or any(ch.isspace() for ch in system):
        raise MappingError("An identifier system is a URI without spaces, up to 300 characters.")

    def change(latest: Mapping) -> dict[str, Any]:
        if latest.mrn_system != mapping.mrn_system:
            raise MappingConflict(
                f"Someone changed the MRN system while you were editing (it is now {latest.mrn_system}). "
                "Reload the page and choose again."
            )
        return _content(latest, mrn_system=system)

    return _apply(mapping.onboarding, user=user, request=request, what="MRN system", change=change)


def set_extension_handling(
    *, user: User, mapping: Mapping, url: str, handling: str, request: HttpRequest | None = None
) -> Mapping:
    """Decide what the product does with an extension it does not know: use it or ignore it."""
    require_perm(user, EDIT_PERM, mapping.onboarding.tenant)
    if url not in mapping.extension_handling:
        raise MappingError("That extension is not in this mapping. Reload the page.")
    if handling not in EXTENSION_CHOICES:
        raise MappingError("Choose “use it”, “ignore it” or “not decided”.")

    def change(latest: Mapping) -> dict[str, Any]:
        if latest.extension_handling.get(url) != mapping.extension_handling[url]:
            raise MappingConflict("Someone decided about this extension while you were editing. Reload the page.")
        return _content(latest, extension_handling={**latest.extension_handling, url: handling})

    return _apply(mapping.onboarding, user=user, request=request, what=f"extension {url}", change=change)


def _target(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row.get("target_system", ""), row.get("target_code", ""), row.get("target_display", ""))


def _content(latest: Mapping, **changes: Any) -> dict[str, Any]:
    return {
        "mrn_system": changes.get("mrn_system", latest.mrn_system),
        "extension_handling": changes.get("extension_handling", latest.extension_handling),
        "codes": changes.get("codes", latest.codes),
    }


def _apply(
    onboarding: Onboarding,
    *,
    user: User,
    request: HttpRequest | None,
    what: str,
    change: Callable[[Mapping], dict[str, Any]],
    source: str = "editor",
    detail: dict[str, Any] | None = None,
) -> Mapping:
    """Apply a change to the latest version under the pipeline's lock; no version if nothing changed."""
    with transaction.atomic():
        Onboarding.objects.select_for_update().get(pk=onboarding.pk)
        latest = latest_mapping(onboarding)
        if latest is None:
            raise MappingError("There is no mapping yet: run the map step first.")
        content = change(latest)
        if _content_hash(**content) == latest.content_hash:
            return latest  # nothing changed: no new version, no voided sign-off
        return _write_version(
            onboarding,
            latest,
            user=user,
            source=source,
            request=request,
            detail={"changed": what, **(detail or {})},
            **content,
        )


def _clean_target(element_key: str, system: str, code: str, display: str) -> dict[str, str]:
    """Check a mapping target; blanks everywhere clear the mapping. MappingError says what to fix."""
    system, code, display = resolve_system(system.strip()), code.strip(), display.strip()
    if not (system or code or display):
        return {"target_system": "", "target_code": "", "target_display": ""}
    element = ELEMENTS_BY_KEY.get(element_key)
    if element is None:
        raise MappingError(f"{element_key} is not an element the product maps.")
    if system not in element.accepted:
        raise MappingError(f"{element.key} must be mapped to {element.accepted_labels}.")
    pattern, shape = CODE_FORMATS[system]
    if not pattern.fullmatch(code):
        raise MappingError(f"“{code or '(blank)'}” is not a {SYSTEM_LABELS[system]} code: expected {shape}.")
    if not display:
        raise MappingError("Give the display of the standard code, as the code system writes it.")
    if len(display) > 300:
        raise MappingError("The display is longer than 300 characters.")
    return {"target_system": system, "target_code": code, "target_display": display}


def resolve_system(value: str) -> str:
    """A standard system's URI from its URI or its label (``LOINC``, ``SNOMED CT``...), case-insensitive."""
    for uri, label in SYSTEM_LABELS.items():
        if value.lower() in (uri.lower(), label.lower()):
            return uri
    return value


# --- CSV ------------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """A CSV import: the new version, or row-level errors and nothing saved."""

    errors: list[tuple[int, str]] = field(default_factory=list)
    mapping: Mapping | None = None
    changed: int = 0


def export_csv(mapping: Mapping) -> str:
    """The mapping's code rows as CSV, in the columns the import reads back."""
    rows = [
        [
            row["element"],
            row["system"],
            row["code"],
            row.get("display", ""),
            row.get("count", 0),
            row.get("target_system", ""),
            row.get("target_code", ""),
            row.get("target_display", ""),
        ]
        for row in mapping.codes
    ]
    # Local codes and displays are the hospital's data and targets are typed in: defuse formulas.
    return csvsafe.text([list(CSV_COLUMNS), *rows], lineterminator="\n")


def import_csv(*, user: User, mapping: Mapping, data: bytes, request: HttpRequest | None = None) -> ImportResult:
    """Apply a CSV of code mappings to the version the person was looking at.

    Any bad row means nothing is saved and every error is listed with its line. A file is a bulk
    change, so it is refused if the mapping changed at all since that version.
    """
    require_perm(user, EDIT_PERM, mapping.onboarding.tenant)
    result = ImportResult()
    parsed = _parse_csv(data, result)
    if any(line <= 1 for line, _ in result.errors):
        return result  # the file itself is unreadable: row checks would only add noise
    bad_lines = {line for line, _ in result.errors}
    rows = {row_key(row): dict(row) for row in mapping.codes}
    for line, row in parsed:
        if line in bad_lines:
            continue
        try:
            target = _clean_target(row["element"], row["target_system"], row["target_code"], row["target_display"])
        except MappingError as exc:
            result.errors.append((line, str(exc)))
            continue
        key = row_key({"element": row["element"], "system": row["source_system"], "code": row["source_code"]})
        existing = rows.setdefault(
            key,
            {
                "element": row["element"],
                "system": row["source_system"],
                "code": row["source_code"],
                "display": row.get("source_display", ""),
                "count": 0,
            },
        )
        if _target(existing) != (target["target_system"], target["target_code"], target["target_display"]):
            result.changed += 1
        existing.update(target)
    if result.errors:
        result.errors.sort()
        return result

    def change(latest: Mapping) -> dict[str, Any]:
        if latest.version != mapping.version:
            raise MappingConflict(
                f"The mapping changed after you opened it (it is now version {latest.version}). "
                "Export it again, redo your changes in the new file and import that."
            )
        return _content(latest, codes=_sorted_rows(rows.values()))

    result.mapping = _apply(
        mapping.onboarding,
        user=user,
        request=request,
        what="CSV import",
        change=change,
        source=Mapping.Source.CSV_IMPORT,
        detail={"rows": len(parsed), "changed_rows": result.changed},
    )
    return result


def _parse_csv(data: bytes, result: ImportResult) -> list[tuple[int, dict[str, str]]]:
    """Rows with their line numbers; file-level and row-level errors go to result.errors."""
    if len(data) > MAX_CSV_BYTES:
        result.errors.append((0, f"The file is larger than {MAX_CSV_BYTES // 1024} KB."))
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        result.errors.append((0, "The file is not UTF-8 text. Save it as CSV UTF-8 and try again."))
        return []
    # csv.reader, not DictReader: DictReader skips blank rows unseen, so they escaped the row cap.
    reader = csv.reader(io.StringIO(text))
    try:
        # Reading the header parses the first row, which can already be malformed.
        header = [name.strip() for name in next((row for row in reader if row), [])]
    except csv.Error as exc:
        result.errors.append((1, f"The header row cannot be read as CSV ({exc}). Start from an exported file."))
        return []
    missing = [column for column in REQUIRED_CSV_COLUMNS if column not in header]
    if missing:
        result.errors.append((1, f"The header row lacks {', '.join(missing)}. Start from an exported file."))
        return []
    parsed: list[tuple[int, dict[str, str]]] = []
    seen: dict[str, int] = {}
    rows = 0
    end = reader.line_num  # the last line read so far; a row starts on the next one
    try:
        for cells in reader:
            line, end = end + 1, reader.line_num  # a quoted cell may span lines: name the first
            rows += 1  # blank rows count too: the cap bounds the work whatever the rows hold
            if rows > MAX_CSV_ROWS:
                result.errors.append((line, f"The file has more than {MAX_CSV_ROWS} rows (blank rows included)."))
                break
            if len(cells) > len(header):
                result.errors.append((line, "This row has more cells than the header."))
                continue
            cells += [""] * (len(header) - len(cells))  # a short row reads as blanks, as DictReader filled it
            named = list(zip(header, cells, strict=True))
            too_long = next((name for name, cell in named if len(cell) > MAX_CSV_CELL_CHARS), None)
            if too_long is not None:
                result.errors.append(
                    (line, f"{too_long or 'A cell'} is longer than {MAX_CSV_CELL_CHARS:,} characters.")
                )
                continue
            # The export quotes cells that look like formulas (portal.csvsafe): read back the value.
            values = {name: csvsafe.undefuse(cell.strip()) for name, cell in named if name}
            if not any(values.values()):
                continue
            _check_source(line, values, seen, result)
            parsed.append((line, values))
    except csv.Error as exc:
        # The row being read when the parser gave up starts on the line after the last one read.
        if "field larger than field limit" in str(exc):
            message = f"A cell is longer than {MAX_CSV_CELL_CHARS:,} characters."
        else:
            message = f"The file is not valid CSV: {exc}."
        result.errors.append((end + 1, message))
    return parsed


def _check_source(line: int, values: dict[str, str], seen: dict[str, int], result: ImportResult) -> None:
    if values["element"] not in ELEMENTS_BY_KEY:
        known = ", ".join(ELEMENTS_BY_KEY)
        result.errors.append((line, f"element “{values['element']}” is not one the product maps ({known})."))
        return
    if not values["source_code"]:
        result.errors.append((line, "source_code is empty: every row maps one local code."))
        return
    key = f"{values['element']}|{values['source_system']}|{values['source_code']}"
    if key in seen:
        result.errors.append((line, f"This local code is already mapped on line {seen[key]}."))
        return
    seen[key] = line


# --- FHIR ConceptMap ------------------------------------------------------------------------------------


def concept_map(mapping: Mapping) -> dict[str, Any]:
    """The code mappings as a FHIR R4 ConceptMap, one group per (local system, standard system)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in mapping.codes:
        if not row.get("target_code"):
            continue
        element: dict[str, Any] = {
            "code": row["code"],
            "target": [{"code": row["target_code"], "display": row["target_display"], "equivalence": "equivalent"}],
        }
        if row.get("display"):
            element["display"] = row["display"]
        groups.setdefault((row["system"], row["target_system"]), []).append(element)
    signed = active_sign_off(mapping) is not None
    resource: dict[str, Any] = {
        "resourceType": "ConceptMap",
        "id": str(mapping.code),
        "url": f"urn:uuid:{mapping.code}",
        "version": str(mapping.version),
        "name": "LocalCodeMapping",
        "title": f"Local codes of {mapping.onboarding.connection.name}, version {mapping.version}",
        "status": "active" if signed else "draft",
        "date": mapping.created_at.isoformat(timespec="seconds"),
    }
    if groups:
        resource["group"] = [
            {"source": source, "target": target, "element": elements}
            for (source, target), elements in sorted(groups.items())
        ]
    return resource


# --- the sign-off gate ---------------------------------------------------------------------------------


def _artifact(mapping: Mapping | None) -> gates.Artifact | None:
    if mapping is None:
        return None
    return gates.Artifact(
        kind="mapping",
        id=mapping.pk,
        version=mapping.version,
        content_hash=mapping.content_hash,
        label=f"Mapping version {mapping.version}",
    )


def _current_artifact(onboarding: Onboarding) -> gates.Artifact | None:
    return _artifact(latest_mapping(onboarding))


def _not_ready(onboarding: Onboarding, artifact: gates.Artifact | None) -> str | None:
    """Why the current version cannot be put to hospital IT yet, or None."""
    if artifact is None:
        return "There is no mapping yet: run the map step first."
    mapping = onboarding.mappings.get(pk=artifact.id)
    cover = coverage(mapping)
    return None if cover.complete else cover.summary()


def _mapping_link(onboarding: Onboarding) -> str:
    from django.urls import reverse

    return reverse("mapping", kwargs={"code": onboarding.connection.code})


SIGN_OFF = gates.register(
    gates.Gate(
        key=SIGN_OFF_GATE,
        label="Mapping sign-off",
        step=Step.MAP,
        current=_current_artifact,
        not_ready=_not_ready,
        link=_mapping_link,
    )
)


# --- versions -------------------------------------------------------------------------------------------


def _write_version(
    onboarding: Onboarding,
    latest: Mapping | None,
    *,
    user: User | None,
    source: str,
    mrn_system: str,
    extension_handling: dict[str, str],
    codes: list[dict[str, Any]],
    run: StepRun | None = None,
    request: HttpRequest | None = None,
    detail: dict[str, Any] | None = None,
) -> Mapping:
    """Write the version after ``latest`` and void sign-offs of earlier ones (the caller holds the lock)."""
    version = (latest.version if latest else 0) + 1
    mapping = Mapping.objects.create(
        onboarding=onboarding,
        version=version,
        source=source,
        created_by=user if isinstance(user, AuthUser) else None,
        map_run=run,
        mrn_system=mrn_system,
        extension_handling=extension_handling,
        codes=codes,
        content_hash=_content_hash(mrn_system, extension_handling, codes),
    )
    gates.void_stale(
        onboarding,
        SIGN_OFF_GATE,
        reason=f"Mapping version {version} ({mapping.get_source_display()}) replaced it.",
        user=user,
        request=request,
    )
    audit.record(
        action="mapping.version",
        actor=user,
        tenant=onboarding.tenant,
        obj=mapping,
        request=request,
        detail={"version": version, "source": source, **(detail or {})},
    )
    return mapping


def _sorted_rows(rows: Any) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["element"], -int(r.get("count") or 0), r["system"], r["code"]))


def _content_hash(mrn_system: str, extension_handling: dict[str, str], codes: list[dict[str, Any]]) -> str:
    # Counts are facts about a sample, not decisions: they do not change what is signed.
    decisions = [{k: v for k, v in row.items() if k != "count"} for row in codes]
    canonical = json.dumps(
        {"mrn_system": mrn_system, "extension_handling": extension_handling, "codes": decisions},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
