"""The REST API's JSON parser: DRF's, with a cap on nesting so a hostile body is a 400, not a 500.

DRF's ``JSONParser`` turns malformed JSON into a 400 but lets the ``RecursionError`` of a body nested
thousands of levels deep through, which answered 500 (and, with DEBUG on, a debug page). It is the
default parser (``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]``), the anonymous token endpoint included.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json as drf_json

from portal import safejson


class BoundedJSONParser(JSONParser):
    """JSON bodies as DRF parses them, refusing those nested deeper than ``safejson.MAX_DEPTH``."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        """The parsed body; ParseError (HTTP 400) with a message saying what to fix otherwise."""
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            parse_constant = drf_json.strict_constant if self.strict else None
            return safejson.loads(text, parse_constant=parse_constant)
        except safejson.JSONTooDeep as exc:
            raise ParseError(
                f"The JSON body is nested more than {exc.max_depth} levels deep. "
                "Send the flat object this endpoint's schema describes (see /api/docs/)."
            ) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
