"""The API's URL map (v1), its OpenAPI schema and docs served from local assets."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from connections.api import ConnectionViewSet
from onboarding.engine.api import OnboardingViewSet, StepRunViewSet, start_step
from portal.api import TenantViewSet, obtain_token, token_detail, token_list
from portal.api_docs import SwaggerView

router = DefaultRouter()
router.register("tenants", TenantViewSet, basename="tenant")
router.register("connections", ConnectionViewSet, basename="connection")
router.register("onboardings", OnboardingViewSet, basename="onboarding")
router.register("runs", StepRunViewSet, basename="steprun")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("v1/connections/<uuid:code>/steps/<slug:step>/start/", start_step, name="api_start_step"),
    path("v1/auth/token/", obtain_token, name="api_token"),
    path("v1/auth/tokens/", token_list, name="api_tokens"),
    path("v1/auth/tokens/<slug:token_id>/", token_detail, name="api_token_detail"),
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", SwaggerView.as_view(url_name="api_schema"), name="api_docs"),
]
