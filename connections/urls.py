from __future__ import annotations

from django.urls import path

from connections import views

urlpatterns = [
    path("t/<uuid:code>/connections/new/", views.connection_create, name="connection_create"),
    path("c/<uuid:code>/edit/", views.connection_edit, name="connection_edit"),
]
