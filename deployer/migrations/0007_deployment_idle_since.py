from datetime import datetime

from django.db import migrations, models


def idle_since_to_column(apps, schema_editor):
    """Stops the idle stop made before this field kept it in their resources JSON."""
    Deployment = apps.get_model("deployer", "Deployment")
    for stop in Deployment.objects.filter(kind="stop", resources__has_key="idle_since"):
        stop.idle_since = datetime.fromisoformat(stop.resources.pop("idle_since"))
        stop.save(update_fields=["idle_since", "resources"])


def idle_since_to_resources(apps, schema_editor):
    Deployment = apps.get_model("deployer", "Deployment")
    for stop in Deployment.objects.filter(idle_since__isnull=False):
        stop.resources["idle_since"] = stop.idle_since.isoformat()
        stop.save(update_fields=["resources"])


class Migration(migrations.Migration):
    dependencies = [
        ("deployer", "0006_shadow"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="idle_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(idle_since_to_column, idle_since_to_resources),
    ]
