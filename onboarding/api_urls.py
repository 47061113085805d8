"""The API's URL map (v1), its OpenAPI schema and docs served from local assets."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from connections.api import ConnectionViewSet
from onboarding.engine.api import OnboardingViewSet, StepRunViewSet, my_work, start_step
from onboarding.evidence import api as evidence_api
from onboarding.gates.api import ApprovalViewSet, connection_gates, request_gate
from onboarding.golive import api as golive_api
from onboarding.loadtest import api as load_test_api
from onboarding.mapping import api as mapping_api
from onboarding.monitoring import api as monitoring_api
from onboarding.review import api as review_api
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
router.register("waivers", review_api.WaiverViewSet, basename="waiver")

# What the mapping page does: read, edit (naming the version read), CSV both ways, the ConceptMap.
mapping_urls = [
    path("v1/connections/<uuid:code>/mapping/", mapping_api.mapping_detail, name="api_mapping"),
    path("v1/connections/<uuid:code>/mapping/mrn-system/", mapping_api.mapping_mrn, name="api_mapping_mrn"),
    path("v1/connections/<uuid:code>/mapping/codes/", mapping_api.mapping_code, name="api_mapping_code"),
    path("v1/connections/<uuid:code>/mapping/extensions/", mapping_api.mapping_extension, name="api_mapping_extension"),
    path("v1/connections/<uuid:code>/mapping/csv/", mapping_api.MappingCsv.as_view(), name="api_mapping_csv"),
    path(
        "v1/connections/<uuid:code>/mapping/conceptmap/",
        mapping_api.MappingConceptMap.as_view(),
        name="api_mapping_concept_map",
    ),
    path("v1/tenants/<uuid:code>/validation-policy/", mapping_api.validation_policy, name="api_validation_policy"),
]
# What the review pages do (waivers are the router's); raw PHI stays on the audited engineer page.
review_urls = [
    path("v1/review/queue/", review_api.ReviewQueue.as_view(), name="api_review_queue"),
    path("v1/runs/<uuid:code>/findings/", review_api.RunFindings.as_view(), name="api_run_findings"),
    path("v1/runs/<uuid:code>/findings/examples/", review_api.finding_examples, name="api_run_finding_examples"),
    path("v1/runs/<uuid:code>/diff/", review_api.run_diff, name="api_run_diff"),
    path("v1/runs/<uuid:code>/export/", review_api.run_export, name="api_run_export"),
    path("v1/runs/<uuid:code>/export/csv/", review_api.RunExportCsv.as_view(), name="api_run_export_csv"),
    path("v1/onboardings/<uuid:code>/evidence/", evidence_api.evidence_pack, name="api_evidence_pack"),
    path("v1/onboardings/<uuid:code>/evidence.pdf", evidence_api.evidence_pack_pdf, name="api_evidence_pack_pdf"),
]

# What the load-test plan page and a load-test run's report do; the permission is the gates API's.
load_test_urls = [
    path("v1/connections/<uuid:code>/load-test-plan/", load_test_api.load_test_plan, name="api_load_test_plan"),
    path("v1/runs/<uuid:code>/load-test/", load_test_api.load_test_report, name="api_run_load_test"),
]

# Go-live: windows, the plan and its actions, service accounts, and the product's read API.
go_live_urls = [
    path("v1/tenants/<uuid:code>/change-windows/", golive_api.change_windows, name="api_change_windows"),
    path("v1/change-windows/<uuid:code>/", golive_api.change_window, name="api_change_window"),
    path("v1/tenants/<uuid:code>/maintenance-windows/", golive_api.maintenance_windows, name="api_maintenance_windows"),
    path(
        "v1/tenants/<uuid:code>/maintenance-windows/<int:pk>/",
        golive_api.maintenance_window,
        name="api_maintenance_window",
    ),
    path("v1/connections/<uuid:code>/go-live/", golive_api.go_live, name="api_go_live"),
    path("v1/connections/<uuid:code>/go-live/plan/", golive_api.go_live_plan, name="api_go_live_plan"),
    path("v1/connections/<uuid:code>/go-live/<slug:action>/", golive_api.go_live_action, name="api_go_live_action"),
    path("v1/service-accounts/", golive_api.service_accounts, name="api_service_accounts"),
    path("v1/service-accounts/<uuid:code>/tokens/", golive_api.service_tokens, name="api_service_tokens"),
    path("v1/service-tokens/<uuid:code>/revoke/", golive_api.service_token_revoke, name="api_service_token_revoke"),
    path("v1/live/<uuid:code>/patients/", golive_api.live_patients, name="api_live_patients"),
    path("v1/live/<uuid:code>/patients/<str:patient_id>/", golive_api.live_patient, name="api_live_patient"),
    path(
        "v1/live/<uuid:code>/patients/<str:patient_id>/<slug:resource>/",
        golive_api.live_clinical,
        name="api_live_clinical",
    ),
]

# Monitoring after go-live: the hypercare dashboard, alerts, a connection's monitoring, the policy.
monitoring_urls = [
    path("v1/hypercare/", monitoring_api.hypercare, name="api_hypercare"),
    path("v1/alerts/", monitoring_api.alert_list, name="api_alerts"),
    path("v1/alerts/<uuid:code>/", monitoring_api.alert_detail, name="api_alert"),
    path("v1/alerts/<uuid:code>/acknowledge/", monitoring_api.alert_acknowledge, name="api_alert_acknowledge"),
    path("v1/alerts/<uuid:code>/assign/", monitoring_api.alert_assign, name="api_alert_assign"),
    path("v1/connections/<uuid:code>/monitoring/", monitoring_api.connection_monitoring, name="api_monitoring"),
    path("v1/connections/<uuid:code>/monitoring/drift/", monitoring_api.monitoring_drift, name="api_monitoring_drift"),
    path(
        "v1/connections/<uuid:code>/monitoring/handoff/",
        monitoring_api.monitoring_handoff,
        name="api_monitoring_handoff",
    ),
    path("v1/tenants/<uuid:code>/monitoring-policy/", monitoring_api.monitoring_policy, name="api_monitoring_policy"),
]

urlpatterns = [
    *go_live_urls,
    *mapping_urls,
    *monitoring_urls,
    *load_test_urls,
    *review_urls,
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
