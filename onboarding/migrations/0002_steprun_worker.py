from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("onboarding", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="steprun",
            name="worker",
            field=models.CharField(blank=True, max_length=200),
        ),
    ]
