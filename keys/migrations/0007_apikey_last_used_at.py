from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0006_bind_destination"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="last_used_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
