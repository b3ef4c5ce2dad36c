"""The console's user and group admins: who was given access, by whom, audited.

Registered in accounts/admin.py in place of Django's. They save through AuditedForm like
every other admin:

    user.created            who made it; active/staff/superuser, groups; whether a password was set
    user.updated            each changed field, old → new (is_staff, is_superuser, is_active, …)
    user.password_changed   that it changed (or was made unusable), never a hash: the
                            password page saves the user, accounts/access_changes.py sees it
    user.deleted            with the access the user had (flags, groups)
    group.created, group.updated
    group.deleted           with its members (who lost access with it) and permissions

Memberships and permissions are recorded by accounts/access_changes.py wherever they
change (here too), so the forms leave them out of "updated". A username or group name
that looks like an API key is refused: names are shown everywhere, the audit log included.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.contrib.auth.models import Group

from console.leakguard import refuse_key_shaped

from .audit import AuditedAdmin, AuditedForm, describe_with, record_created

MEMBERSHIPS = ("groups", "user_permissions", "permissions")


MEMBERS_LISTED = 500  # a deleted group's members named in its event, at most


def user_details(user):
    """A user's access, as its created and deleted events state it."""
    return {
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": sorted(g.name for g in user.groups.all()) if user.pk else [],
    }


def group_details(group):
    """A group's members (who loses access with it) and permissions."""
    if not group.pk:
        return {}
    members = group.user_set.order_by("username").values_list("username", flat=True)
    permissions = group.permissions.select_related("content_type")
    return {
        "members": list(members[:MEMBERS_LISTED]),
        "permissions": sorted(f"{p.content_type.app_label}.{p.codename}" for p in permissions),
    }


describe_with(get_user_model(), user_details)
describe_with(Group, group_details)


class RefusesKeyShapedUsername:
    """A username is shown everywhere, the audit log included: never a pasted key."""

    def clean_username(self):
        username = self.cleaned_data.get("username")
        refuse_key_shaped(username)
        return username


class AuditedUserCreationForm(RefusesKeyShapedUsername, AuditedForm, AdminUserCreationForm):
    def save_and_record(self, actor):
        user = self.save()
        record_created(actor, user, password="set" if user.has_usable_password() else "unusable")
        return user


class AuditedUserChangeForm(RefusesKeyShapedUsername, AuditedForm, UserChangeForm):
    # The password field shows the hash's algorithm only and never changes here; the
    # password has its own page.
    audit_exclude = ("password", *MEMBERSHIPS)


class AuditedGroupForm(AuditedForm):
    audit_exclude = MEMBERSHIPS

    def clean_name(self):
        name = self.cleaned_data.get("name")
        refuse_key_shaped(name)
        return name


class ConsoleUserAdmin(AuditedAdmin, UserAdmin):
    form = AuditedUserChangeForm
    add_form = AuditedUserCreationForm
    list_display = ["username", "email", "first_name", "last_name", "is_active", "is_staff", "is_superuser"]


class ConsoleGroupAdmin(AuditedAdmin, GroupAdmin):
    form = AuditedGroupForm
