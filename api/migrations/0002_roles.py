"""Security reviewers may view API tokens (prefixes, owners, dates; never a token);
console admins may view, add and change them (revoke anyone's). Nobody deletes one: the
audit log's api.call events keep naming it."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ADMINS = "Console admins"
REVIEWERS = "Security reviewers"
GRANTS = {REVIEWERS: ["view_apitoken"], ADMINS: ["view_apitoken", "add_apitoken", "change_apitoken"]}


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure they exist now.
    app_config = apps.get_app_config("api")
    app_config.models_module = True  # the migration state's stub lacks it
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="api", codename__in=codenames))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = Permission.objects.filter(content_type__app_label="api")
    for group in Group.objects.filter(name__in=[ADMINS, REVIEWERS]):
        group.permissions.remove(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0001_initial"),
        ("keys", "0002_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(grant, revoke)]
