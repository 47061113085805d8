from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("onboarding", "0005_sign_offs_to_approvals")]

    operations = [migrations.DeleteModel(name="MappingSignOff")]
