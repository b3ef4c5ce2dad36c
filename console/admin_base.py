"""Base classes every app's admin builds on: guarded lookups, read-only history, badges.

Nothing here knows a concrete model. What differs per model is declared on the model:

- `secret_fields`: fields no admin lookup, filter or search may touch (filtering on them
  would let anyone with view rights test guesses against a stored secret);
- `deleted_with_parent = True`: rows that are another row's history (probe results) and
  go with it, so nobody needs delete rights on them to delete their parent.

The audit side (who changed what) is accounts/audit.py.
"""

from functools import cache

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.views.main import SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.utils.html import format_html

from .leakguard import find_key_shaped

SEARCH_REFUSED = "That search looks like an API key: secrets are never searchable. Search by name or hint."


@cache
def secret_field_names():
    """Every field name any model declares secret."""
    return frozenset(name for model in apps.get_models() for name in getattr(model, "secret_fields", ()))


@cache
def history_models():
    return tuple(model for model in apps.get_models() if getattr(model, "deleted_with_parent", False))


def refuses_lookup(lookup):
    """True when a lookup path (`key__fingerprint__startswith`) touches a secret field."""
    return bool(secret_field_names().intersection(lookup.split("__")))


def badge(css, label):
    """A small coloured state label: `<span class="state overdue">Overdue</span>`."""
    return format_html('<span class="state {}">{}</span>', css, label)


class GuardedAdmin(admin.ModelAdmin):
    """Refuses lookups on secret fields, answers 403 to an action the user may not run
    (Django would otherwise ignore it and show the list again), never echoes a key-shaped
    search back, and titles a refused change with the stored row, not what was typed."""

    def lookup_allowed(self, lookup, value, request=None):
        if refuses_lookup(lookup):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_search_fields(self, request):
        fields = super().get_search_fields(request)
        if any(refuses_lookup(f.lstrip("^=@")) for f in fields):
            raise ValueError(f"{type(self).__name__}.search_fields names a secret field.")
        return fields

    def changelist_view(self, request, extra_context=None):
        action = request.POST.get("action") if request.method == "POST" else None
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        if find_key_shaped(request.GET.get(SEARCH_VAR, "")):
            # Searching cannot find a secret, and the page would show it back in the box.
            self.message_user(request, SEARCH_REFUSED, messages.ERROR)
            params = request.GET.copy()
            del params[SEARCH_VAR]
            return HttpResponseRedirect(f"{request.path}?{params.urlencode()}" if params else request.path)
        return super().changelist_view(request, extra_context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        form = context["adminform"].form if context.get("adminform") else None
        if obj is not None and obj.pk is not None and form is not None and form.is_bound and form.errors:
            # Validating wrote what was typed onto `obj`; the page's title and breadcrumbs
            # name it with str(obj). Name the row as stored instead: a value that was
            # refused (a key pasted into a name) is never shown back.
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            if stored is not None:
                context.update(original=stored, subtitle=str(stored))
                obj = stored
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_deleted_objects(self, objs, request):
        # History rows go with their parent instead of blocking its deletion.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for model in history_models():
            perms_needed.discard(model._meta.verbose_name)
        return deleted, counts, perms_needed, protected


class ReadOnlyAdmin(GuardedAdmin):
    """Rows written by the system (audit events, probe results): everyone with view
    rights may look, nobody, not even a superuser, may add, change or delete."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
