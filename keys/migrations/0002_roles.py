from django.contrib.auth.management import create_permissions
from django.db import migrations

ADMINS = "Console admins"
REVIEWERS = "Security reviewers"
MODELS = {
    "accounts": ["organization", "project", "tier", "auditevent"],
    "keys": ["apikey", "proberesult", "circuit"],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure they exist now.
    for app_label in MODELS:
        app_config = apps.get_app_config(app_label)
        app_config.models_module = True  # the migration state's stub lacks it
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    admins, _ = Group.objects.get_or_create(name=ADMINS)
    reviewers, _ = Group.objects.get_or_create(name=REVIEWERS)
    for app_label, models in MODELS.items():
        for model in models:
            perms = Permission.objects.filter(content_type__app_label=app_label, content_type__model=model)
            view = perms.filter(codename__startswith="view_")
            reviewers.permissions.add(*view)
            if model == "auditevent":
                admins.permissions.add(*view)  # append-only: nobody edits the audit log
            elif model in ("proberesult",):
                admins.permissions.add(*view)  # written by probes only
            else:
                admins.permissions.add(*perms)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=[ADMINS, REVIEWERS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0001_initial"),
        ("accounts", "0002_seed_tiers"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
