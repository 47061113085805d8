"""Carry every mapping sign-off over to the one approval model of the gates, with its history."""

from django.db import migrations


def copy_sign_offs(apps, schema_editor):
    """Every mapping sign-off becomes an approval of the mapping gate, with its void and its history."""
    MappingSignOff = apps.get_model("onboarding", "MappingSignOff")
    Approval = apps.get_model("onboarding", "Approval")
    for old in MappingSignOff.objects.select_related("mapping").order_by("approved_at", "id"):
        Approval.objects.create(
            code=old.code,
            onboarding_id=old.mapping.onboarding_id,
            gate="mapping_sign_off",
            artifact_kind="mapping",
            artifact_id=old.mapping_id,
            artifact_version=old.version,
            artifact_hash=old.content_hash,
            artifact_label=f"Mapping version {old.version}",
            # Before gates there was no request: the sign-off was its own request.
            requested_by_id=None,
            requested_by_label="",
            requested_at=old.approved_at,
            decision="approved",
            decided_by_id=old.approver_id,
            decided_by_label=old.approver_label,
            decided_at=old.approved_at,
            comment=old.comment,
            voided_at=old.voided_at,
            voided_reason=old.voided_reason,
        )


def copy_approvals_back(apps, schema_editor):
    """The reverse: approved mapping approvals become sign-offs again (requests and rejections are lost)."""
    MappingSignOff = apps.get_model("onboarding", "MappingSignOff")
    Approval = apps.get_model("onboarding", "Approval")
    for approval in Approval.objects.filter(gate="mapping_sign_off", decision="approved"):
        MappingSignOff.objects.create(
            code=approval.code,
            mapping_id=approval.artifact_id,
            version=approval.artifact_version,
            content_hash=approval.artifact_hash,
            approver_id=approval.decided_by_id,
            approver_label=approval.decided_by_label,
            comment=approval.comment,
            voided_at=approval.voided_at,
            voided_reason=approval.voided_reason,
        )


class Migration(migrations.Migration):
    dependencies = [("onboarding", "0004_approvals")]

    operations = [migrations.RunPython(copy_sign_offs, copy_approvals_back)]
