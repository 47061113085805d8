"""The API docs pages (Swagger UI and Redoc from drf-spectacular-sidecar) under the strict CSP.

Swagger UI: the split view loads its start-up script from a URL instead of an inline <script>, and
our template drops the inline <style>, so the site-wide policy holds unchanged.
Redoc: its bundle injects <style> elements (styled-components) and starts a web worker from a
blob: URL, so that one page's policy adds style-src 'unsafe-inline' and worker-src blob:. It shows
only the schema (no patient data) and script-src stays 'self', so scripts still cannot be injected.
Its sidebar also hard-codes a logo from cdn.redoc.ly; static/js/redoc-offline.js swaps that one
image for an empty inline one, so the page makes no request off the portal's host.
"""

from __future__ import annotations

from typing import Any

from csp.constants import SELF, UNSAFE_INLINE
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.request import Request
from rest_framework.response import Response

REDOC_POLICY = {"style-src": [SELF, UNSAFE_INLINE], "worker-src": [SELF, "blob:"]}


class SwaggerView(SpectacularSwaggerSplitView):
    template_name = "portal/swagger_ui.html"


class RedocView(SpectacularRedocView):
    template_name = "portal/redoc.html"

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        response._csp_update = REDOC_POLICY  # type: ignore[attr-defined]  # read by django-csp's middleware
        return response
