"""The URL map. Apps own their pages; codes in URLs are opaque UUIDs, never row ids."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django_otp.admin import OTPAdminSite

from portal import account_views, views

# The admin asks for the second factor too, whoever is staff there.
admin.site.__class__ = OTPAdminSite

urlpatterns = [
    # First: the product's read API is resolved on every one of its requests, and no page lives under api/.
    path("api/", include("onboarding.api_urls")),
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", account_views.account_security, name="account_security"),
    path("account/two-factor/", account_views.two_factor_verify, name="two_factor_verify"),
    path("account/two-factor/setup/", account_views.two_factor_setup, name="two_factor_setup"),
    path("account/two-factor/backup-codes/", account_views.backup_codes, name="backup_codes"),
    path("account/tokens/<slug:token_id>/revoke/", account_views.revoke_api_token, name="api_token_revoke"),
    path("account/confirm/", account_views.reauthenticate, name="reauthenticate"),
    path("account/password/", account_views.PasswordChangeView.as_view(), name="password_change"),
    path("", include("portal.notifications.urls")),
    path("tenants/new/", views.tenant_create, name="tenant_create"),
    path("t/<uuid:code>/edit/", views.tenant_edit, name="tenant_edit"),
    path("t/<uuid:code>/audit/", views.tenant_audit, name="tenant_audit"),
    path("t/<uuid:code>/audit.csv", views.tenant_audit_csv, name="tenant_audit_csv"),
    path("audit/", views.audit_log, name="audit_log"),
    path("audit.csv", views.audit_log_csv, name="audit_log_csv"),
    path("", include("portal.people.urls")),
    path("", include("connections.urls")),
    path("", include("onboarding.urls")),
    path("admin/", admin.site.urls),
]
