"""The connections app's pages: add and edit a connection, and its SMART Backend Services key pair."""

from __future__ import annotations

from django.urls import path

from connections import views

urlpatterns = [
    path("t/<uuid:code>/connections/new/", views.connection_create, name="connection_create"),
    path("c/<uuid:code>/edit/", views.connection_edit, name="connection_edit"),
    path("c/<uuid:code>/smart-key/", views.smart_key, name="connection_smart_key"),
    path("c/<uuid:code>/jwks.json", views.jwks_download, name="connection_jwks"),
    path(
        "c/<uuid:code>/capability-statement/",
        views.capability_statement_choice,
        name="connection_capability_statement",
    ),
]
