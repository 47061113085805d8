"""The API docs page (Swagger UI from drf-spectacular-sidecar) under the strict CSP.

The split view loads its start-up script from a URL instead of an inline <script>, and our
template drops the inline <style>, so the site-wide policy holds unchanged. (Redoc is not offered:
its bundle needs inline styles and a blob: worker, which the policy refuses everywhere.)
"""

from __future__ import annotations

from drf_spectacular.views import SpectacularSwaggerSplitView


class SwaggerView(SpectacularSwaggerSplitView):
    template_name = "portal/swagger_ui.html"
