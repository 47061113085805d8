"""Error reports that never carry secrets (or patients' data), DEBUG on or off.

Django's default filter hides only what views declare, and only when DEBUG is off. The embedded demo
runs with DEBUG on, and its technical 500 page lists every frame's local variables: a crash while a
JSON body is parsed shows the body, password and all, in the parser's and the JSON decoder's locals,
whatever their names; a crash in a review view would show a patient's record. So this filter is
always active:
- frame locals are listed by name and type only, never by value;
- POST fields, settings and request headers named like a credential are hidden (the pattern Django
  uses for settings), and so are query parameters (``SecretScrubbingReporter``).

``PlainRefusals`` keeps permission refusals in the log as the one line they are, without a traceback.
"""

from __future__ import annotations

import logging
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlencode

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, QueryDict
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter


class HiddenValue:
    """Stands in for a local variable's value on an error page: its type, and its size for containers."""

    def __init__(self, value: Any) -> None:
        kind = type(value).__name__
        try:
            size = f", {len(value):,} long" if isinstance(value, str | bytes | list | tuple | dict | set) else ""
        except TypeError:
            size = ""
        self._text = f"<{kind}{size}: value hidden>"

    def __repr__(self) -> str:
        return self._text


class SecretScrubbingFilter(SafeExceptionReporterFilter):
    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        params = super().get_post_parameters(request)
        if request is None or not isinstance(params, QueryDict):
            return params
        return self.scrubbed(params)

    def get_cleansed_multivaluedict(self, request: HttpRequest, multivaluedict: Any) -> Any:
        return self.scrubbed(super().get_cleansed_multivaluedict(request, multivaluedict))

    def scrubbed(self, params: QueryDict) -> QueryDict:
        """A copy of a QueryDict with the values of credential-named keys hidden."""
        cleansed = params.copy()
        for name in cleansed:
            if self.hidden_settings.search(name):
                cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: FrameType) -> Any:
        # Names tell a developer what was in scope; values can be anything the request carried.
        return [(name, HiddenValue(value)) for name, value in tb_frame.f_locals.items()]

    def get_safe_request_meta(self, request: HttpRequest) -> Any:
        meta = super().get_safe_request_meta(request)
        if isinstance(meta.get("QUERY_STRING"), str):
            meta["QUERY_STRING"] = self.scrubbed_query(meta["QUERY_STRING"])
        return meta

    def scrubbed_query(self, query: str) -> str:
        """A query string with the values of credential-named parameters hidden."""
        pairs = parse_qsl(query, keep_blank_values=True)
        return urlencode([(k, self.cleansed_substitute if self.hidden_settings.search(k) else v) for k, v in pairs])


class SecretScrubbingReporter(ExceptionReporter):
    """Django's reporter, with the query string (GET items and the URL) scrubbed like POST fields."""

    def get_traceback_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().get_traceback_data()
        scrubber = self.filter if isinstance(self.filter, SecretScrubbingFilter) else SecretScrubbingFilter()
        if self.request is not None:
            data["request_GET_items"] = scrubber.scrubbed(self.request.GET).items()
            uri = data.get("request_insecure_uri", "")
            if isinstance(uri, str) and "?" in uri:
                path, query = uri.split("?", 1)
                data["request_insecure_uri"] = f"{path}?{scrubber.scrubbed_query(query)}"
        return data


class PlainRefusals(logging.Filter):
    """Drop the traceback Django's request logger attaches to a 403 (PermissionDenied).

    Refusing a role an action is the access rules working, not a bug: the warning line
    ("Forbidden (Permission denied): /path") stays; a stack trace per refusal only buries real errors.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info = None
            record.exc_text = None
        return True
