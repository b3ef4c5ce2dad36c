"""Console admins and Security reviewers may view what the organization sync mirrors and
its state; nobody edits them (the sync writes them). Publishing a budget as a spend alert
and deleting an upstream key are checked against the organization's and the key's own
permissions (sync/admin.py)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ADMINS = "Console admins"
REVIEWERS = "Security reviewers"
MODELS = ["syncstate", "upstreamkey", "upstreamserviceaccount", "spendalert", "upstreamevent", "syncedorganization"]


def grant_view(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure they exist now.
    app_config = apps.get_app_config("sync")
    app_config.models_module = True  # the migration state's stub lacks it
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view = Permission.objects.filter(
        content_type__app_label="sync", content_type__model__in=MODELS, codename__startswith="view_"
    )
    for name in (ADMINS, REVIEWERS):
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*view)


def revoke_view(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = Permission.objects.filter(content_type__app_label="sync", content_type__model__in=MODELS)
    for group in Group.objects.filter(name__in=[ADMINS, REVIEWERS]):
        group.permissions.remove(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0001_initial"),
        ("keys", "0002_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(grant_view, revoke_view)]
