from __future__ import annotations

from django.urls import path

from onboarding.engine import views
from onboarding.evidence import views as evidence_views
from onboarding.gates import views as gate_views
from onboarding.golive import views as golive_views
from onboarding.loadtest import views as load_test_views
from onboarding.mapping import views as mapping_views
from onboarding.monitoring import views as monitoring_views
from onboarding.review import views as review_views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("work/", views.my_work, name="my_work"),
    path("t/<uuid:code>/", views.tenant_detail, name="tenant_detail"),
    path("c/<uuid:code>/", views.connection_detail, name="connection_detail"),
    path("c/<uuid:code>/steps/<slug:step>/start/", views.start_step, name="start_step"),
    path("runs/<uuid:code>/", views.run_detail, name="run_detail"),
    path("runs/<uuid:code>/cancel/", views.cancel_run, name="cancel_run"),
    path("c/<uuid:code>/mapping/", mapping_views.mapping_page, name="mapping"),
    path("c/<uuid:code>/mapping/code/", mapping_views.mapping_code, name="mapping_code"),
    path("c/<uuid:code>/mapping/mrn/", mapping_views.mapping_mrn, name="mapping_mrn"),
    path("c/<uuid:code>/mapping/extension/", mapping_views.mapping_extension, name="mapping_extension"),
    path("c/<uuid:code>/mapping/export.csv", mapping_views.mapping_export_csv, name="mapping_export_csv"),
    path("c/<uuid:code>/mapping/import/", mapping_views.mapping_import_csv, name="mapping_import_csv"),
    path("c/<uuid:code>/mapping/conceptmap.json", mapping_views.mapping_concept_map, name="mapping_concept_map"),
    path("c/<uuid:code>/gates/<slug:gate>/request/", gate_views.request_approval, name="gate_request"),
    path("approvals/<uuid:code>/", gate_views.approval_detail, name="approval_detail"),
    path("approvals/<uuid:code>/decide/", gate_views.decide, name="approval_decide"),
    path("approvals/<uuid:code>/remind/", gate_views.remind, name="approval_remind"),
    path("c/<uuid:code>/load-test/", load_test_views.load_test_plan, name="load_test_plan"),
    path("t/<uuid:code>/validation-policy/", mapping_views.validation_policy, name="validation_policy"),
    path("review/", review_views.review_queue, name="review_queue"),
    path("review/runs/<uuid:code>/", review_views.review_run, name="review_run"),
    path("review/runs/<uuid:code>/group/", review_views.review_group, name="review_group"),
    path("review/runs/<uuid:code>/waive/", review_views.review_waive, name="review_waive"),
    path("review/runs/<uuid:code>/unwaive/", review_views.review_unwaive, name="review_unwaive"),
    path("review/runs/<uuid:code>/export.csv", review_views.review_export_csv, name="review_export_csv"),
    path("review/runs/<uuid:code>/export.json", review_views.review_export_json, name="review_export_json"),
    path("review/findings/<uuid:code>/raw/", review_views.review_raw, name="review_raw"),
    # Go-live: windows, the go-live page and its actions, the product's service accounts.
    path("t/<uuid:code>/windows/", golive_views.tenant_windows, name="tenant_windows"),
    path("change-windows/<uuid:code>/delete/", golive_views.change_window_delete, name="change_window_delete"),
    path(
        "t/<uuid:code>/maintenance-windows/<int:pk>/delete/",
        golive_views.maintenance_window_delete,
        name="maintenance_window_delete",
    ),
    path("c/<uuid:code>/go-live/", golive_views.go_live, name="go_live"),
    path("c/<uuid:code>/go-live/<slug:action>/", golive_views.go_live_action, name="go_live_action"),
    path("service-accounts/", golive_views.service_accounts, name="service_accounts"),
    path("service-accounts/<uuid:code>/", golive_views.service_account, name="service_account"),
    path("service-tokens/<uuid:code>/revoke/", golive_views.service_token_revoke, name="service_token_revoke"),
    path("o/<uuid:code>/evidence/", evidence_views.evidence_pack, name="evidence_pack"),
    path("o/<uuid:code>/evidence.json", evidence_views.evidence_pack_json, name="evidence_pack_json"),
    path("o/<uuid:code>/evidence.pdf", evidence_views.evidence_pack_pdf, name="evidence_pack_pdf"),
    # Monitoring after go-live (issue 12).
    path("hypercare/", monitoring_views.hypercare, name="hypercare"),
    path("c/<uuid:code>/monitoring/", monitoring_views.connection_monitoring, name="connection_monitoring"),
    path("c/<uuid:code>/monitoring/drift/", monitoring_views.monitoring_drift, name="monitoring_drift"),
    path("c/<uuid:code>/monitoring/handoff/", monitoring_views.monitoring_handoff, name="monitoring_handoff"),
    path("alerts/<uuid:code>/", monitoring_views.alert_detail, name="alert_detail"),
    path("alerts/<uuid:code>/acknowledge/", monitoring_views.alert_acknowledge, name="alert_acknowledge"),
    path("alerts/<uuid:code>/assign/", monitoring_views.alert_assign, name="alert_assign"),
    path("t/<uuid:code>/monitoring-policy/", monitoring_views.monitoring_policy, name="monitoring_policy"),
]
