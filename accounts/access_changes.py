"""Who was given access: status, passwords, group memberships and permissions, wherever
they change.

The admin's user and group pages save through AuditedForm (accounts/admin.py), but a
membership can change anywhere: a shell, a command, a migration, `group.user_set.add()`.
These m2m_changed receivers record every change of

    user.groups             → "user.groups_changed"        (target: the user)
    user.user_permissions   → "user.permissions_changed"   (target: the user)
    group.permissions       → "group.permissions_changed"  (target: the group)

from either side of the relation (`group.user_set.remove(user)` is the user's change),
one event per user or group whose access changed, with what was added and removed and
the whole set before and after: groups by name, permissions as "app_label.codename".
Nothing is recorded when nothing changed (adding a group a user already has).

A user saved anywhere but through the admin's audited form (a shell, `changepassword`,
`ensure_admin`) is compared with its stored row: a changed is_active, is_staff or
is_superuser is "user.updated" with old → new, a changed password "user.password_changed"
(never the hash). Saves of only the password (Django re-hashing it at login) or of
fields that give no access (last_login) are not compared.

The actor is the signed-in user of the request being served (console/request_origin.py),
else the command running ("cli:ensure_admin"), else "system" (a task, a shell). Rows
written directly into the through table (`User.groups.through.objects.create`) send no
m2m_changed signal and are not seen here; the admin and Django's managers never do that.
"""

from collections import defaultdict

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_save, pre_save
from django.dispatch import receiver

from console.request_origin import current_actor

from .models import AuditEvent

SYSTEM = "system"
# Stashed on the signal's instance between pre_remove/pre_clear and post_*.
PENDING = "_audit_access_pending"
# A user's stored row, stashed between pre_save and post_save.
STORED = "_audit_access_stored"
FLAGS = ("is_active", "is_staff", "is_superuser")


def permission_label(permission):
    return f"{permission.content_type.app_label}.{permission.codename}"


def relations():
    """through model → (m2m field, action, label of an item)."""
    User = get_user_model()
    return {
        User.groups.through: (User._meta.get_field("groups"), "user.groups_changed", lambda g: g.name),
        User.user_permissions.through: (
            User._meta.get_field("user_permissions"),
            "user.permissions_changed",
            permission_label,
        ),
        Group.permissions.through: (
            Group._meta.get_field("permissions"),
            "group.permissions_changed",
            permission_label,
        ),
    }


def items_of(field, owner_ids):
    """{owner id: set of item ids} as the through table holds them now."""
    owner_col, item_col = f"{field.m2m_field_name()}_id", f"{field.m2m_reverse_field_name()}_id"
    rows = field.remote_field.through.objects.filter(**{f"{owner_col}__in": owner_ids})
    held = defaultdict(set)
    for owner_id, item_id in rows.values_list(owner_col, item_col):
        held[owner_id].add(item_id)
    return held


def pairs_for(instance, reverse, pk_set):
    """(owner id, item id) pairs the signal is about: the instance is the owner (a user
    or group) unless the change was made from the other side (reverse)."""
    if reverse:
        return {(owner_id, instance.pk) for owner_id in pk_set}
    return {(instance.pk, item_id) for item_id in pk_set}


def held_pairs(field, instance, reverse, pk_set):
    """Of the pairs a remove or clear names, those that exist now (a remove may name
    items the owner does not have)."""
    if reverse:
        owner_ids = list(pk_set) if pk_set is not None else None
        owner_col, item_col = f"{field.m2m_field_name()}_id", f"{field.m2m_reverse_field_name()}_id"
        rows = field.remote_field.through.objects.filter(**{item_col: instance.pk})
        if owner_ids is not None:
            rows = rows.filter(**{f"{owner_col}__in": owner_ids})
        return {(owner_id, instance.pk) for owner_id in rows.values_list(owner_col, flat=True)}
    held = items_of(field, [instance.pk]).get(instance.pk, set())
    named = held if pk_set is None else held & set(pk_set)
    return {(instance.pk, item_id) for item_id in named}


@receiver(m2m_changed, dispatch_uid="accounts.audit_access_changes")
def record_access_change(sender, instance, action, reverse, model, pk_set, **kwargs):
    relation = relations().get(sender)
    if relation is None:
        return
    field, audit_action, label = relation
    if action in ("pre_remove", "pre_clear"):
        setattr(instance, PENDING, held_pairs(field, instance, reverse, pk_set))
        return
    if action == "post_add":
        added, removed = pairs_for(instance, reverse, pk_set or ()), set()
    elif action in ("post_remove", "post_clear"):
        added, removed = set(), instance.__dict__.pop(PENDING, set())
    else:
        return
    if added or removed:
        record_changes(field, audit_action, label, added, removed)


def record_changes(field, audit_action, label, added, removed):
    owner_model, item_model = field.model, field.related_model
    owner_ids = sorted({owner for owner, _ in added | removed})
    now_held = items_of(field, owner_ids)
    items = item_model._default_manager.all()
    if item_model is Permission:
        items = items.select_related("content_type")
    every_item = set().union(*now_held.values(), (i for _, i in added | removed))
    names = {item.pk: label(item) for item in items.filter(pk__in=every_item)}
    owners = owner_model._default_manager.in_bulk(owner_ids)
    actor = current_actor() or SYSTEM

    def named(ids):
        return sorted(names.get(i, str(i)) for i in ids)

    events = []
    for owner_id in owner_ids:
        plus = {i for o, i in added if o == owner_id}
        minus = {i for o, i in removed if o == owner_id}
        new = now_held.get(owner_id, set())
        old = (new - plus) | minus
        events.append(
            AuditEvent.build(
                actor,
                audit_action,
                owners[owner_id],
                added=named(plus),
                removed=named(minus),
                old=named(old),
                new=named(new),
            )
        )
    AuditEvent.record_many(events)


def compares(instance, raw, update_fields):
    """Whether a user's save is one this module audits (see the docstring)."""
    if raw or instance._state.adding or instance.pk is None:
        return False
    if getattr(instance, "_saved_by_audited_form", False):
        return False  # the admin's form records it, with every field
    if update_fields is None:
        return True
    fields = set(update_fields)
    return bool(fields & set(FLAGS)) or ("password" in fields and fields != {"password"})


@receiver(pre_save, dispatch_uid="accounts.audit_user_access_before")
def remember_stored_access(sender, instance, raw=False, update_fields=None, **kwargs):
    if sender is not get_user_model() or not compares(instance, raw, update_fields):
        return
    stored = sender._default_manager.filter(pk=instance.pk).values("password", *FLAGS).first()
    if stored is not None:
        instance.__dict__[STORED] = stored


@receiver(post_save, dispatch_uid="accounts.audit_user_access_after")
def record_user_access_change(sender, instance, created, **kwargs):
    stored = instance.__dict__.pop(STORED, None)
    if stored is None:
        return
    actor = current_actor() or SYSTEM
    changes = {
        flag: {"old": stored[flag], "new": getattr(instance, flag)}
        for flag in FLAGS
        if stored[flag] != getattr(instance, flag)
    }
    if changes:
        AuditEvent.record(actor, "user.updated", instance, changes=changes)
    if stored["password"] != instance.password:
        AuditEvent.record(actor, "user.password_changed", instance, usable=instance.has_usable_password())
