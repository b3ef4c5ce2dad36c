from django.db import migrations

# OpenAI's published usage tiers (requests and tokens per minute, per project).
TIERS = [
    ("Free", 3, 40_000),
    ("Tier 1", 500, 200_000),
    ("Tier 2", 5_000, 2_000_000),
    ("Tier 3", 5_000, 10_000_000),
    ("Tier 4+", 10_000, 50_000_000),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("accounts", "Tier")
    for position, (name, rpm, tpm) in enumerate(TIERS):
        Tier.objects.update_or_create(
            name=name, defaults={"requests_per_minute": rpm, "tokens_per_minute": tpm, "position": position}
        )


def unseed(apps, schema_editor):
    apps.get_model("accounts", "Tier").objects.filter(name__in=[t[0] for t in TIERS], projects=None).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
