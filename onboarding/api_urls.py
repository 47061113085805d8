"""The API's URL map (v1), its OpenAPI schema and docs served from local assets."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from connections.api import ConnectionViewSet
from onboarding.engine.api import OnboardingViewSet, StepRunViewSet, my_work, start_step
from onboarding.gates.api import ApprovalViewSet, connection_gates, request_gate
from portal.api import TenantViewSet, obtain_token, token_detail, token_list
from portal.api_docs import SwaggerView
from portal.notifications.api import NotificationViewSet, notification_preferences
from portal.people.api import AssignmentViewSet, InvitationViewSet, MemberViewSet, StaffViewSet

router = DefaultRouter()
router.register("tenants", TenantViewSet, basename="tenant")
router.register("connections", ConnectionViewSet, basename="connection")
router.register("onboardings", OnboardingViewSet, basename="onboarding")
router.register("runs", StepRunViewSet, basename="steprun")
router.register("members", MemberViewSet, basename="member")
router.register("invitations", InvitationViewSet, basename="invitation")
router.register("staff", StaffViewSet, basename="staff")
router.register("assignments", AssignmentViewSet, basename="assignment")
router.register("notifications", NotificationViewSet, basename="notification")
router.register("approvals", ApprovalViewSet, basename="approval")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("v1/connections/<uuid:code>/steps/<slug:step>/start/", start_step, name="api_start_step"),
    path("v1/connections/<uuid:code>/gates/", connection_gates, name="api_connection_gates"),
    path("v1/connections/<uuid:code>/gates/<slug:gate>/request/", request_gate, name="api_gate_request"),
    path("v1/me/work/", my_work, name="api_my_work"),
    path("v1/account/notification-preferences/", notification_preferences, name="api_notification_preferences"),
    path("v1/auth/token/", obtain_token, name="api_token"),
    path("v1/auth/tokens/", token_list, name="api_tokens"),
    path("v1/auth/tokens/<slug:token_id>/", token_detail, name="api_token_detail"),
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", SwaggerView.as_view(url_name="api_schema"), name="api_docs"),
]
