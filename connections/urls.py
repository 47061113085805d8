"""The connections app's pages: add, edit, archive and restore a connection, and its SMART Backend Services key pair."""

from __future__ import annotations

from django.urls import path

from connections import views

urlpatterns = [
    path("t/<uuid:code>/connections/new/", views.connection_create, name="connection_create"),
    path("c/<uuid:code>/edit/", views.connection_edit, name="connection_edit"),
    path("c/<uuid:code>/smart-key/", views.smart_key, name="connection_smart_key"),
    path("c/<uuid:code>/jwks.json", views.jwks_download, name="connection_jwks"),
    path("c/<uuid:code>/archive/", views.connection_archive, name="connection_archive"),
    path("c/<uuid:code>/restore/", views.connection_restore, name="connection_restore"),
    path(
        "c/<uuid:code>/capability-statement/",
        views.capability_statement_choice,
        name="connection_capability_statement",
    ),
]
