"""The portal's URLs plus a trivial page, so the scale benchmark can time the dashboard beside it."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import include, path


@login_required
def trivial(request: HttpRequest) -> HttpResponse:
    """The site's layout with no content: every middleware and the base template, no data."""
    return render(request, "base.html")


urlpatterns = [
    path("bench/trivial/", trivial),
    path("", include("portal.urls")),
]
