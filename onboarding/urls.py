from __future__ import annotations

from django.urls import path

from onboarding import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("t/<uuid:code>/", views.tenant_detail, name="tenant_detail"),
    path("c/<uuid:code>/", views.connection_detail, name="connection_detail"),
    path("c/<uuid:code>/steps/<slug:step>/start/", views.start_step, name="start_step"),
    path("runs/<uuid:code>/", views.run_detail, name="run_detail"),
    path("runs/<uuid:code>/cancel/", views.cancel_run, name="cancel_run"),
]
