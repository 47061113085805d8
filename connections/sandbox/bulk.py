"""The sandbox's FHIR Bulk Data export (IG 2.0): ``$export`` kick-off, status, NDJSON files, DELETE.

Asynchronous as a real server is: the kick-off answers 202 with a status URL in Content-Location;
the status answers 202 (Retry-After, X-Progress) until ``export_delay_s`` has passed, then 200
with the manifest; the files are served until ``export_expiry_s`` after that; DELETE on the status
URL cancels. The switches below (set like every fault) make it misbehave on purpose: no
Content-Location, a line that is not JSON, file URLs on another host, a manifest listing a type
nobody asked for, a status URL that answers 404 mid-poll, an export that never finishes.

It answers plain tuples (status, body, content type, headers) so the server module wraps them;
it imports nothing of the portal.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

NDJSON = "application/fhir+ndjson"
MANIFEST_JSON = "application/json; charset=utf-8"
Answer = tuple[int, bytes, str, dict[str, str]]
# What the Bulk Data IG calls the operation, as a CapabilityStatement names it.
EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
PATIENT_EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
GROUP_EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
# The one Group a sandbox knows, holding every patient: what a hospital sets up for a product on a
# server that exports only by Group (as Epic's does).
SANDBOX_GROUP_ID = "onboarding-cohort"
EXPORT_LEVELS = ("system", "patient", "group")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86_400:
        raise ValueError(f"expected seconds from 0 to 86400, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise ValueError(f"expected a whole number from 0 to 1000000, got {value!r}")
    return value


def _type_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isalpha() or not value[:1].isupper():
        raise ValueError(f"expected a resource type such as 'Observation', or null, got {value!r}")
    return value


def _levels(value: Any) -> str:
    levels = value.split(",") if isinstance(value, str) else None
    if not levels or any(level not in EXPORT_LEVELS for level in levels):
        raise ValueError(f"expected a comma-separated list of {', '.join(EXPORT_LEVELS)}, got {value!r}")
    return value


def _origin_or_none(value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"expected an origin such as 'http://10.0.0.7:8080', or null, got {value!r}")
    return value.rstrip("/")


# name -> (default, parser, what it does); the server adds them to its fault table.
BULK_FAULTS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "no_bulk_export": (False, _bool, "Bulk: no $export (not advertised, the kick-off answers 404)."),
    "export_levels": (
        "system,patient",
        _levels,
        f"Bulk: the $export levels advertised and served (system, patient, group; Group/{SANDBOX_GROUP_ID}).",
    ),
    "export_delay_s": (1.0, _seconds, "Bulk: seconds from kick-off until the export is complete."),
    "export_retry_after": (1.0, _seconds, "Bulk: the Retry-After seconds sent while the export is in progress."),
    "export_expiry_s": (600.0, _seconds, "Bulk: seconds a complete export's status and files stay available."),
    "export_error_file": (False, _bool, "Bulk: the manifest lists an OperationOutcome error file."),
    "export_no_content_location": (False, _bool, "Bulk: the kick-off answers 202 without Content-Location."),
    "export_bad_line": (None, _type_or_none, "Bulk: this type's file has a line that is not JSON."),
    "export_file_origin": (None, _origin_or_none, "Bulk: file URLs point at this origin instead of the sandbox."),
    "export_unknown_type": (False, _bool, "Bulk: the manifest also lists a file of a type nobody asked for."),
    "export_status_404_after": (0, _count, "Bulk: the status URL answers 404 from this poll on (0 = never)."),
    "export_never_ready": (False, _bool, "Bulk: the export stays in progress for ever."),
}


@dataclass
class _Job:
    types: list[str]
    since: str | None
    request: str
    created: float
    ready_at: float
    polls: int = 0
    files: dict[str, list[bytes]] = field(default_factory=dict)


class BulkExports:
    """The export jobs of one sandbox hospital."""

    def __init__(self, bodies: Callable[[str], list[bytes]], types: tuple[str, ...], last_updated: str) -> None:
        self._bodies = bodies
        self._types = types
        self._last_updated = last_updated
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self.deleted: list[str] = []  # job ids cancelled by DELETE, for tests

    def kick_off(
        self,
        *,
        request: str,
        query: Mapping[str, str],
        prefer: str,
        base: str,
        values: Mapping[str, Any],
        level: str = "system",
        group: str = "",
    ) -> Answer:
        """Start an export: 202 and the status URL, or an OperationOutcome saying what was wrong."""
        if values["no_bulk_export"]:
            return _outcome(404, "not-supported", "This server does not support $export.")
        if level not in values["export_levels"].split(","):
            return _outcome(404, "not-supported", f"This server does not offer a {level}-level $export.")
        if level == "group" and group != SANDBOX_GROUP_ID:
            return _outcome(404, "not-found", f"Group {group} is not known to this server.")
        if "respond-async" not in prefer.lower():
            return _outcome(400, "invalid", "A bulk export needs the header Prefer: respond-async.")
        fmt = query.get("_outputFormat", NDJSON)
        if fmt not in (NDJSON, "application/ndjson", "ndjson"):
            return _outcome(400, "invalid", f"_outputFormat {fmt} is not supported; use {NDJSON}.")
        asked = [t for t in (query.get("_type") or ",".join(self._types)).split(",") if t]
        unknown = [t for t in asked if t not in self._types]
        if unknown:
            return _outcome(400, "not-supported", f"_type names types this server does not have: {', '.join(unknown)}.")
        now = time.monotonic()
        job_id = uuid.uuid4().hex
        with self._lock:
            self._jobs[job_id] = _Job(
                types=asked,
                since=query.get("_since"),
                request=request,
                created=now,
                ready_at=now + float(values["export_delay_s"]),
            )
        headers = (
            {} if values["export_no_content_location"] else {"Content-Location": f"{base}/$export-status/{job_id}"}
        )
        return 202, b"", MANIFEST_JSON, headers

    def status(self, job_id: str, method: str, *, base: str, auth: bool, values: Mapping[str, Any]) -> Answer:
        """In progress (202), complete (200 and the manifest), gone (404), or cancelled by DELETE (202)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and method == "DELETE":
                del self._jobs[job_id]
                self.deleted.append(job_id)
                return 202, b"", MANIFEST_JSON, {}
            if job is not None:
                job.polls += 1
        now = time.monotonic()
        if job is None or self._expired(job, now, values):
            return _outcome(404, "not-found", "No export with this id (it expired, was deleted or never existed).")
        limit = int(values["export_status_404_after"])
        if limit and job.polls >= limit:
            return _outcome(404, "not-found", "No export with this id (the server lost it).")
        if values["export_never_ready"] or now < job.ready_at:
            done = (
                0
                if values["export_never_ready"]
                else min(99, int(100 * (now - job.created) / max(1e-3, job.ready_at - job.created)))
            )
            retry = values["export_retry_after"]
            headers = {"X-Progress": f"in progress, {done}%", "Retry-After": f"{retry:g}"}
            return 202, b"", MANIFEST_JSON, headers
        return 200, json.dumps(self._manifest(job_id, job, base, auth, values)).encode(), MANIFEST_JSON, {}

    def file(self, job_id: str, name: str, *, values: Mapping[str, Any]) -> Answer:
        """One NDJSON file of a complete export."""
        with self._lock:
            job = self._jobs.get(job_id)
        now = time.monotonic()
        if job is None or now < job.ready_at or self._expired(job, now, values):
            return _outcome(404, "not-found", "No such export file (the export is not complete, or has expired).")
        resource_type = name.removesuffix(".ndjson")
        if resource_type == "errors":
            lines = [json.dumps(_error_outcome()).encode()]
        elif resource_type in job.types or resource_type == "Basic":
            lines = self._lines(job, resource_type)
        else:
            return _outcome(404, "not-found", f"No file {name} in this export.")
        if values["export_bad_line"] == resource_type and lines:
            lines = [lines[0], b'{"resourceType": "' + resource_type.encode() + b'", this is not json', *lines[1:]]
        return 200, b"".join(line + b"\n" for line in lines), NDJSON, {}

    # -- helpers ----------------------------------------------------------------------------

    def _lines(self, job: _Job, resource_type: str) -> list[bytes]:
        if resource_type == "Basic":
            return [b'{"resourceType":"Basic","id":"unasked","code":{"text":"nobody asked for this"}}']
        if job.since and job.since > self._last_updated:
            return []  # nothing changed since then
        return self._bodies(resource_type)

    def _expired(self, job: _Job, now: float, values: Mapping[str, Any]) -> bool:
        return not values["export_never_ready"] and now > job.ready_at + float(values["export_expiry_s"])

    def _manifest(self, job_id: str, job: _Job, base: str, auth: bool, values: Mapping[str, Any]) -> dict[str, Any]:
        file_base = base
        if values["export_file_origin"]:
            file_base = values["export_file_origin"] + urlsplit(base).path
        output = [
            {"type": t, "url": f"{file_base}/$export-file/{job_id}/{t}.ndjson", "count": len(self._lines(job, t))}
            for t in job.types
        ]
        if values["export_unknown_type"]:
            output.append({"type": "Basic", "url": f"{file_base}/$export-file/{job_id}/Basic.ndjson", "count": 1})
        errors = []
        if values["export_error_file"]:
            errors.append({"type": "OperationOutcome", "url": f"{file_base}/$export-file/{job_id}/errors.ndjson"})
        return {
            "transactionTime": self._last_updated,
            "request": job.request,
            "requiresAccessToken": auth,
            "output": output,
            "error": errors,
        }


def _error_outcome() -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": "Some MedicationRequest resources could not be exported: the pharmacy feed was offline.",
            }
        ],
    }


def _outcome(status: int, code: str, diagnostics: str) -> Answer:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return status, json.dumps(body).encode(), "application/fhir+json; charset=utf-8", {}
