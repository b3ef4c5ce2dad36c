"""Who changed what: the one save path for audited objects, and the audited admin.

Every create, update and delete made through the admin, a command or the demo loader
goes through a form's `save_and_record(actor)` (AuditedForm here, or a subclass such as
keys.forms.ApiKeyForm that adds its own steps) and `record_deletion(actor, obj)`, so the
audit log reads the same whoever acted.

What an event holds: the action (`<audit_name>.created|updated|deleted`), the target's
type, id and text, and details: each changed field with its old and new value, fields a
model declares secret shown only as changed, plus whatever the model's
`audit_details()` adds (a key's hint, kind and provider). Never a secret.

Deleting a row audits every row it takes along whose model says `audit_when_cascaded`
(an organization's or a project's keys), found with Django's own deletion collector.
"""

import datetime
import decimal
import uuid

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import router
from django.db.models import Model
from django.db.models.deletion import Collector

from console.admin_base import GuardedAdmin

from .models import AuditEvent

MASKED = "(changed)"


def audit_name(obj):
    """The name an object's events start with: the model's `audit_name`, else its model name."""
    return getattr(obj, "audit_name", None) or obj._meta.model_name


# What events say about rows of models this project does not define (auth's User and
# Group), which cannot have an `audit_details()` method: model → function(row) → dict.
DETAILS_OF_MODEL = {}


def describe_with(model, function):
    """Declare what the audit log says about a row of `model` besides its name."""
    DETAILS_OF_MODEL[model] = function


def details_of(obj):
    method = getattr(obj, "audit_details", None)
    if method:
        return method()
    function = DETAILS_OF_MODEL.get(type(obj)._meta.concrete_model)
    return function(obj) if function else {}


def audit_value(value):
    """A JSON-friendly rendering of a field value for the audit log."""
    if isinstance(value, Model):
        return str(value.pk)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (list, tuple, set)):
        return [audit_value(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def field_changes(form, exclude=()):
    """{field: {"old": …, "new": …}} for every changed field of a bound, valid form;
    fields the model declares secret are reported only as changed; `exclude` is left out."""
    masked = set(getattr(form._meta.model, "secret_fields", ()))
    changes = {}
    for name in form.changed_data:
        if name in exclude:
            continue
        if name in masked:
            changes[name] = {"old": MASKED, "new": MASKED}
            continue
        old = form.initial.get(name)
        new = form.cleaned_data.get(name)
        if isinstance(new, Model):
            new = new.pk
        changes[name] = {"old": audit_value(old), "new": audit_value(new)}
    return changes


def record_created(actor, obj, **extra):
    return AuditEvent.record(actor, f"{audit_name(obj)}.created", obj, **details_of(obj), **extra)


def record_updated(actor, obj, changes, **extra):
    """Record "<name>.updated" when anything changed; returns the event or None."""
    if not changes:
        return None
    return AuditEvent.record(actor, f"{audit_name(obj)}.updated", obj, changes=changes, **extra)


def record_deletion(actor, obj):
    """Record "<name>.deleted" for `obj` and for every audited row its deletion cascades
    to. Call it before the row is gone (it needs the primary keys)."""
    collector = Collector(using=router.db_for_write(type(obj)))
    collector.collect([obj])
    AuditEvent.record(actor, f"{audit_name(obj)}.deleted", obj, **details_of(obj))
    cascaded = [
        row
        for model, rows in collector.data.items()
        if getattr(model, "audit_when_cascaded", False)
        for row in rows
        if row != obj
    ]
    for queryset in collector.fast_deletes:
        if getattr(queryset.model, "audit_when_cascaded", False):
            cascaded.extend(queryset)
    cascaded_from = {"type": obj._meta.model_name, "id": str(obj.pk), "repr": str(obj)[:200]}
    AuditEvent.record_many(
        AuditEvent.build(actor, f"{audit_name(row)}.deleted", row, **details_of(row), cascaded_from=cascaded_from)
        for row in cascaded
    )


class AuditedForm(forms.ModelForm):
    """A model form whose `save_and_record(actor)` saves and records what changed. The
    admin, the commands and the demo loader all save through it. Fields named in
    `audit_exclude` are left out of the recorded changes (a password hash; memberships,
    which accounts/access_changes.py records wherever they change)."""

    audit_exclude = ()

    def _update_errors(self, errors):
        # A model's clean() may name a field this form does not show (an inline row shows
        # a few): say it as a form-wide error, named by the field, instead of failing.
        if hasattr(errors, "error_dict"):
            kept, moved = {}, []
            for name, messages in errors.error_dict.items():
                if name == NON_FIELD_ERRORS or name in self.fields:
                    kept[name] = messages
                    continue
                label = self._meta.model._meta.get_field(name).verbose_name
                moved.extend(f"{label.capitalize()}: {m}" for e in messages for m in e.messages)
            if moved:
                kept.setdefault(NON_FIELD_ERRORS, []).extend(ValidationError(m) for m in moved)
                errors = ValidationError(kept)
        super()._update_errors(errors)

    def save_and_record(self, actor):
        adding = self.instance._state.adding
        changes = {} if adding else field_changes(self, exclude=self.audit_exclude)
        # Model signals that audit saves made elsewhere (accounts/access_changes.py) leave
        # this one to us.
        self.instance._saved_by_audited_form = True
        try:
            obj = self.save()
        finally:
            del self.instance._saved_by_audited_form
        if adding:
            record_created(actor, obj)
        else:
            record_updated(actor, obj, changes)
        return obj


class AuditedAdmin(GuardedAdmin):
    """Records every create, update and delete made through this admin, its inlines and
    its bulk delete action. Forms (the admin's and its inlines') save through
    `save_and_record`."""

    form = AuditedForm

    def get_changelist_form(self, request, **kwargs):
        # list_editable rows save through save_and_record too.
        kwargs.setdefault("form", AuditedForm)
        return super().get_changelist_form(request, **kwargs)

    def save_model(self, request, obj, form, change):
        form.save_and_record(request.user)

    def save_formset(self, request, form, formset, change):
        formset.save(commit=False)  # sorts rows into new/changed/deleted without writing
        for obj in formset.deleted_objects:
            record_deletion(request.user, obj)
            obj.delete()
        for row in formset.saved_forms:
            row.save_and_record(request.user)
        formset.save_m2m()

    def delete_model(self, request, obj):
        record_deletion(request.user, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            record_deletion(request.user, obj)
        super().delete_queryset(request, queryset)


class AuditedInline:
    """Mixin for inlines of an AuditedAdmin: their rows save through `save_and_record`."""

    form = AuditedForm


class AuditedPackageAdmin:
    """Mixin for the admins of other packages' models (django-otp's two-factor devices,
    django-axes' lockouts), whose forms are theirs: records that a row was created,
    changed or deleted and the NAMES of the fields that changed — never their values (a
    device's key is its TOTP seed) —, and each admin action run with the rows it ran on."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            AuditEvent.record(request.user, f"{audit_name(obj)}.created", obj)
        elif form.changed_data:
            AuditEvent.record(request.user, f"{audit_name(obj)}.updated", obj, fields=sorted(form.changed_data))

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            AuditEvent.record(request.user, f"{audit_name(obj)}.created", obj)
        for obj, fields in formset.changed_objects:
            AuditEvent.record(request.user, f"{audit_name(obj)}.updated", obj, fields=sorted(fields))
        for obj in formset.deleted_objects:
            AuditEvent.record(request.user, f"{audit_name(obj)}.deleted", obj)

    def delete_model(self, request, obj):
        record_deletion(request.user, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            record_deletion(request.user, obj)
        super().delete_queryset(request, queryset)

    def get_actions(self, request):
        actions = super().get_actions(request)
        for name, (function, action_name, description) in list(actions.items()):
            if name != "delete_selected":  # its deletions are recorded by delete_queryset
                actions[name] = (recorded_action(self.model, name, function), action_name, description)
        return actions


def recorded_action(model, name, function):
    def run(model_admin, request, queryset):
        ids = [str(pk) for pk in queryset.values_list("pk", flat=True)[:100]]
        AuditEvent.record(request.user, f"{model._meta.model_name}.action", None, admin_action=name, ids=ids)
        return function(model_admin, request, queryset)

    return run
