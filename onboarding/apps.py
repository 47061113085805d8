"""The onboarding pipeline: engine, steps, tasks, pages."""

from __future__ import annotations

from django.apps import AppConfig


class OnboardingConfig(AppConfig):
    name = "onboarding"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from connections.models import EHRConnection
        from onboarding.gates import services as gates
        from onboarding.golive import readapi
        from onboarding.models import RawResource
        from portal import retention
        from portal.people import register_pending_approvals

        # An edited connection is served by a new adapter at once in the process that edited it.
        post_save.connect(readapi.connection_saved, sender=EHRConnection, dispatch_uid="read_api_connection_saved")

        # Removing a hospital's last approver asks for a confirmation while requests wait on them.
        register_pending_approvals(gates.pending_count)

        # Raw FHIR resources are PHI: purged by `manage.py purge_raw_payloads` and the beat task
        # after RAW_PAYLOAD_RETENTION_DAYS, or sooner when their own expiry passes.
        retention.register(RawResource, age_field="created_at", expires_field="expires_at")
