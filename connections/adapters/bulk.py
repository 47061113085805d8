"""A FHIR Bulk Data Access (IG 2.0) ``$export`` client over the vendor adapter and the guarded client.

Kick-off with ``Prefer: respond-async`` and ``_type`` (and ``_since`` when asked), poll the status
URL honouring Retry-After and passing X-Progress on, read the manifest, stream each NDJSON file
line by line (never a whole file in memory), read the OperationOutcome error files, and DELETE the
status URL when the run is cancelled or fails. Every request goes through the adapter's guarded
client, so a file URL on another host gets the same outbound checks, and the connection's token
goes with a file download only when the manifest says ``requiresAccessToken``.

Every bad answer becomes a typed ``RemoteError`` saying what the server did wrong.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from connections.adapters.base import FHIRAdapter
from connections.errors import ErrorKind, RemoteError
from connections.http import parse_retry_after
from portal import safejson

EXPORT_ACCEPT = "application/fhir+json"
# Without a Retry-After, the status is asked again after this long; a Retry-After above the cap is cut to it.
DEFAULT_POLL_S = 2.0
MAX_POLL_S = 60.0
# A poll must leave this much of the step's time for the download and the checks.
POLL_MARGIN_S = 5.0
_MAX_ISSUES = 20


@dataclass(frozen=True)
class ExportFile:
    """One file of an export's manifest."""

    type: str
    url: str
    count: int | None = None


@dataclass
class Manifest:
    """A finished export: its files, its error files, and whether downloads need the token."""

    transaction_time: str
    requires_access_token: bool
    output: list[ExportFile] = field(default_factory=list)
    error: list[ExportFile] = field(default_factory=list)

    def files_of(self, resource_type: str) -> list[ExportFile]:
        return [f for f in self.output if f.type == resource_type]


class BulkExport:
    """One ``$export`` of a hospital's server: kick-off, status, files, errors, cancel."""

    def __init__(
        self,
        adapter: FHIRAdapter,
        *,
        types: list[str],
        level: str = "system",
        group_id: str = "",
        since: str | None = None,
        deadline: float,
        min_poll_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.adapter = adapter
        self.types = list(types)
        self.level = level
        self.group_id = group_id
        self.since = since
        self.deadline = deadline
        self.min_poll_s = min_poll_s
        self._sleep = sleep
        self.status_url: str | None = None
        self.progress: str = ""
        self.polls = 0
        self.waited_s = 0.0

    # ---- kick-off and status ------------------------------------------------------------

    def kick_off(self) -> str:
        """Ask for the export; the status URL the server answered with (202 and Content-Location)."""
        path = {"system": "$export", "patient": "Patient/$export"}.get(self.level)
        if self.level == "group" and self.group_id:
            path = f"Group/{quote(self.group_id, safe='')}/$export"
        if path is None:
            raise RemoteError(
                ErrorKind.UNSUPPORTED, f"There is no $export level {self.level!r} (a Group-level one needs its id)."
            )
        params = {"_type": ",".join(self.types), "_outputFormat": "application/fhir+ndjson"}
        if self.since:
            params["_since"] = self.since
        response = self._request("GET", self.adapter._url(path), params=params, prefer=True)
        if response.status != 202:
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                f"The server answered the $export kick-off with HTTP {response.status}, not 202 Accepted: it did not "
                "start an asynchronous export as the Bulk Data IG requires.",
                detail={"status": response.status},
            )
        location = response.headers.get("content-location", "").strip()
        if not location:
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                "The server accepted the export (202) but sent no Content-Location, so there is no status URL to "
                "follow it at.",
                hint="Ask the hospital's FHIR team: the Bulk Data IG requires Content-Location on the 202.",
                detail={"status": 202},
            )
        self.status_url = urljoin(self.adapter.base_url + "/", location)
        return self.status_url

    def wait(self, on_progress: Callable[[str], None] | None = None) -> Manifest:
        """Poll the status URL until the export is complete (or the step's time runs out); the manifest."""
        if self.status_url is None:
            self.kick_off()
        assert self.status_url is not None
        while True:
            self.polls += 1
            try:
                response = self._request("GET", self.status_url)
            except RemoteError as exc:
                if exc.kind is ErrorKind.NOT_FOUND:
                    raise RemoteError(
                        ErrorKind.NOT_FOUND,
                        f"The export's status URL answered 404 after {self.polls - 1} polls: the server dropped the "
                        "export (it may have expired, been cancelled, or the server restarted).",
                        hint="Re-run the step; if it keeps happening, ask the hospital's FHIR team how long exports "
                        "are kept.",
                        detail=exc.detail,
                    ) from None
                raise
            if response.status == 200:
                return self._manifest(response.json())
            if response.status != 202:
                raise RemoteError(
                    ErrorKind.BAD_PAYLOAD,
                    f"The export's status URL answered HTTP {response.status}; the Bulk Data IG allows 202 (in "
                    "progress) or 200 (complete).",
                    detail={"status": response.status},
                )
            self.progress = response.headers.get("x-progress", "")[:100]
            if on_progress is not None:
                on_progress(self.progress)
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            wait = min(MAX_POLL_S, max(self.min_poll_s, DEFAULT_POLL_S if retry_after is None else retry_after))
            left = self.deadline - time.monotonic() - POLL_MARGIN_S
            if wait > left:
                said = f" (it last said “{self.progress}”)" if self.progress else ""
                raise RemoteError(
                    ErrorKind.TIMEOUT,
                    f"The hospital's export was not ready within this run's time limit after {self.polls} polls"
                    f"{said}; the export was cancelled.",
                    hint="Re-run when the hospital's server is less busy, ask for a smaller export (a Group), or "
                    "use the REST pull method.",
                    detail={"polls": self.polls, "x_progress": self.progress, "waited_s": round(self.waited_s, 1)},
                )
            self.waited_s += wait
            self._sleep(wait)

    def cancel(self) -> None:
        """Tell the server to stop and delete the export (DELETE on the status URL); quiet on failure."""
        if self.status_url is None:
            return
        url, self.status_url = self.status_url, None
        with contextlib.suppress(RemoteError):
            self._request("DELETE", url)

    # ---- the manifest and its files ----------------------------------------------------

    def _manifest(self, body: Any) -> Manifest:
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise RemoteError(ErrorKind.BAD_PAYLOAD, "The export's manifest is not a JSON object with an output list.")
        output = [self._file(item, "output") for item in body["output"]]
        errors = [self._file(item, "error") for item in body.get("error") or []]
        unknown = sorted({f.type for f in output} - set(self.types))
        if unknown:
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                f"The export's manifest lists files of types we did not ask for ({', '.join(unknown)[:200]}); we "
                f"asked for {', '.join(self.types)}. Nothing of them was read.",
                hint="Ask the hospital's FHIR team whether their server applies the _type parameter.",
                detail={"unknown_types": unknown[:20], "asked": self.types},
            )
        return Manifest(
            transaction_time=str(body.get("transactionTime") or "")[:40],
            requires_access_token=body.get("requiresAccessToken") is not False,
            output=output,
            error=errors,
        )

    def _file(self, item: Any, where: str) -> ExportFile:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not isinstance(item.get("url"), str):
            raise RemoteError(ErrorKind.BAD_PAYLOAD, f"An entry of the export manifest's {where} has no type or url.")
        count = item.get("count")
        return ExportFile(
            type=item["type"][:64],
            url=urljoin(self.adapter.base_url + "/", item["url"]),
            count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        )

    def resources(self, manifest: Manifest, file: ExportFile) -> Iterator[dict[str, Any]]:
        """The resources of one file, parsed line by line as they stream in."""
        headers = {"Accept": "application/fhir+ndjson"}
        if manifest.requires_access_token:
            headers.update(self.adapter.auth.headers())
        lines = self.adapter.client.stream_lines(file.url, headers=headers, deadline_at=self.deadline)
        for number, line in enumerate(lines, start=1):
            try:
                resource = safejson.loads(line)
            except ValueError:
                raise RemoteError(
                    ErrorKind.BAD_PAYLOAD,
                    f"Line {number} of the export's {file.type} file is not JSON, so the file was not read on.",
                    hint="Ask the hospital's FHIR team to check the export's NDJSON files; re-run after.",
                    detail={"file_type": file.type, "line": number, "length": len(line)},
                ) from None
            if not isinstance(resource, dict) or resource.get("resourceType") != file.type:
                found = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
                raise RemoteError(
                    ErrorKind.BAD_PAYLOAD,
                    f"Line {number} of the export's {file.type} file holds a {str(found)[:64]}, not a {file.type}.",
                    detail={"file_type": file.type, "line": number},
                )
            yield resource

    def error_issues(self, manifest: Manifest) -> list[dict[str, str]]:
        """What the export's OperationOutcome error files say: severity, code and diagnostics of each issue."""
        issues: list[dict[str, str]] = []
        for file in manifest.error:
            for outcome in self.resources(manifest, ExportFile("OperationOutcome", file.url)):
                for issue in outcome.get("issue") or []:
                    if not isinstance(issue, dict):
                        continue
                    text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
                    issues.append(
                        {
                            "severity": str(issue.get("severity") or "")[:16],
                            "code": str(issue.get("code") or "")[:32],
                            "diagnostics": str(text)[:300],
                        }
                    )
                    if len(issues) >= _MAX_ISSUES:
                        return issues
        return issues

    # ---- plumbing --------------------------------------------------------------------

    def _request(self, method: str, url: str, *, params: dict[str, str] | None = None, prefer: bool = False) -> Any:
        """An authenticated kick-off, poll or delete, on the FHIR server's own host only (it carries the token)."""
        if _origin(url) != _origin(self.adapter.base_url):
            raise RemoteError(
                ErrorKind.BAD_PAYLOAD,
                "The export's status URL points at a different server than the FHIR base URL; our token is not "
                "sent there.",
            )
        headers = {"Accept": EXPORT_ACCEPT, **self.adapter.auth.headers()}
        if prefer:
            headers["Prefer"] = "respond-async"
        return self.adapter.client.request(method, url, headers=headers, params=params, expect_json=False)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), parts.port or (443 if scheme == "https" else 80)
