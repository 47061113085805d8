"""The URL map. Apps own their pages; codes in URLs are opaque UUIDs, never row ids."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from portal import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tenants/new/", views.tenant_create, name="tenant_create"),
    path("", include("connections.urls")),
    path("", include("onboarding.urls")),
    path("api/", include("onboarding.api_urls")),
    path("admin/", admin.site.urls),
]
