"""The key admin's Rotate, Rotate via API and Revoke pages, and its superuser-only delete
page that names what goes with a key: a mixin for keys.admin.ApiKeyAdmin.

Each action is a page of its own, built like Django's change-password view (a form, CSRF,
the change permission checked on the key, a message after); the logic is keys/rotation.py.
Security reviewers (view only) get 403 and see no buttons; a revoked key has none.
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from . import rotation
from .display import moment
from .forms import RevokeForm, RotateForm


class KeyActionsAdmin:
    """Mix into the ApiKey admin (before its ModelAdmin base)."""

    @admin.display(description="history")
    def key_history(self, key):
        """The key's history (KeyEvent) and its superseded secrets, newest first: hints,
        dates and who acted, never a secret."""
        if key is None or key.pk is None:
            return "—"
        events = key.events.order_by("-at", "-pk")[:50]
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    moment(e.at),
                    e.get_action_display(),
                    e.actor_label,
                    " → ".join(h for h in (e.old_hint, e.new_hint) if h),
                    e.reason or (f"grace until {moment(e.grace_until)}" if e.grace_until else ""),
                )
                for e in events
            ),
        )
        superseded = format_html_join(
            "",
            "<li>{} — superseded {}, {}</li>",
            (
                (s.hint, moment(s.superseded_at), superseded_state(s))
                for s in key.superseded_secrets.order_by("-superseded_at")
            ),
        )
        table = format_html(
            "<table><thead><tr><th>when</th><th>what</th><th>who</th><th>hints</th><th>note</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )
        return format_html("{}<ul>{}</ul>", table, superseded) if superseded else table

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/rotate/", view(self.rotate_view), name="{}_{}_rotate".format(*info)),
            path("<path:object_id>/rotate-via-api/", view(self.rotate_api_view), name="{}_{}_rotate_api".format(*info)),
            path("<path:object_id>/revoke/", view(self.revoke_view), name="{}_{}_revoke".format(*info)),
            *super().get_urls(),
        ]

    def key_action_urls(self, request, key):
        """[(label, url)] of the actions this user may take on this key."""
        if key is None or key.is_revoked() or not self.has_change_permission(request, key):
            return []
        info = self.opts.app_label, self.opts.model_name
        actions = [("Rotate key", reverse("admin:{}_{}_rotate".format(*info), args=[key.pk]))]
        if rotation.api_rotation_available(key)[0]:
            actions.append(("Rotate via API", reverse("admin:{}_{}_rotate_api".format(*info), args=[key.pk])))
        actions.append(("Revoke", reverse("admin:{}_{}_revoke".format(*info), args=[key.pk])))
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        key = self.get_object(request, unquote(object_id))
        extra_context = {**(extra_context or {}), "key_actions": self.key_action_urls(request, key)}
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        key = self.get_object(request, unquote(object_id))
        extra_context = {**(extra_context or {}), "unlinked": unlinked_rows(key) if key else []}
        return super().delete_view(request, object_id, extra_context)

    def key_for_action(self, request, object_id):
        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404("No such key.")
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        return key

    def action_page(self, request, key, action, form, **context):
        titles = {"rotate": "Rotate key", "rotate_api": "Rotate via API", "revoke": "Revoke key"}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": key,
            "title": f"{titles[action]}: {key}",
            "action": action,
            "action_title": titles[action],
            "submit_label": titles[action],
            "form": form,
            **context,
        }
        return TemplateResponse(request, f"admin/keys/apikey/{action}.html", context)

    def back_to_key(self, key):
        return HttpResponseRedirect(reverse("admin:keys_apikey_change", args=[key.pk]))

    @method_decorator(sensitive_post_parameters("secret"))
    @method_decorator(csrf_protect)
    def rotate_view(self, request, object_id):
        key = self.key_for_action(request, object_id)
        if key.is_revoked():
            self.message_user(request, rotation.RotationRefused.REVOKED, messages.ERROR)
            return self.back_to_key(key)
        form = RotateForm(key, request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                done = rotation.rotate(
                    key, form.cleaned_data["secret"], request.user, upstream_key_id=form.cleaned_data["upstream_key_id"]
                )
            except rotation.RotationRefused as e:
                form.add_error("secret", str(e))
            else:
                self.message_user(
                    request,
                    f"Rotated: {done.new_hint} is the key's secret now (its probe succeeded). The previous secret "
                    f"{done.old_hint} keeps working until {done.grace_until:%Y-%m-%d %H:%M} UTC, then it is revoked.",
                    messages.SUCCESS,
                )
                return self.back_to_key(key)
        api_ok, api_note = rotation.api_rotation_available(key)
        return self.action_page(
            request,
            key,
            "rotate",
            form,
            grace_hours=settings.ROTATION_GRACE_HOURS,
            api_url=reverse("admin:keys_apikey_rotate_api", args=[key.pk]) if api_ok else "",
            api_note="" if api_ok else f"Rotate via API is not offered: {api_note}",
        )

    @method_decorator(csrf_protect)
    def rotate_api_view(self, request, object_id):
        key = self.key_for_action(request, object_id)
        available, why_not = rotation.api_rotation_available(key)
        form = forms.Form(request.POST if request.method == "POST" else None)
        if available and form.is_valid():
            try:
                done = rotation.rotate_via_api(key, request.user)
            except rotation.RotationRefused as e:
                self.message_user(request, str(e), messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Rotated via the Administration API: the new key {done.new_hint} was created, probed and put in "
                    f"(never shown). The previous key {done.old_hint} keeps working until "
                    f"{done.grace_until:%Y-%m-%d %H:%M} UTC, then it is deleted upstream.",
                    messages.SUCCESS,
                )
            return self.back_to_key(key)
        return self.action_page(
            request,
            key,
            "rotate_api",
            form if available else None,
            why_not=why_not,
            grace_hours=settings.ROTATION_GRACE_HOURS,
        )

    @method_decorator(csrf_protect)
    def revoke_view(self, request, object_id):
        key = self.key_for_action(request, object_id)
        if key.is_revoked():
            self.message_user(request, "This key is revoked already.", messages.WARNING)
            return self.back_to_key(key)
        can_delete, why_not = rotation.can_delete_upstream(key)
        form = RevokeForm(can_delete, request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                done = rotation.revoke(
                    key,
                    request.user,
                    form.cleaned_data["reason"],
                    delete_upstream=bool(form.cleaned_data.get("delete_upstream")),
                )
            except rotation.RotationRefused as e:
                self.message_user(request, str(e), messages.WARNING)
                return self.back_to_key(key)
            if done.deleted_upstream:
                self.message_user(request, "Revoked, and deleted upstream.", messages.SUCCESS)
            elif done.delete_asked:
                self.message_user(request, f"Revoked in the console. {done.note}", messages.WARNING)
            else:
                self.message_user(request, "Revoked in the console (not deleted upstream).", messages.SUCCESS)
            return self.back_to_key(key)
        return self.action_page(request, key, "revoke", form, can_delete_upstream=can_delete, why_not_upstream=why_not)


def unlinked_rows(obj):
    """[(label, count)] of rows that point at `obj` and are kept (their link set to NULL)
    when it is deleted, e.g. usage rows. Found generically: keys may not import usage."""
    rows = []
    for rel in obj._meta.related_objects:
        if rel.on_delete is models.SET_NULL and not rel.many_to_many:
            count = rel.related_model._default_manager.filter(**{rel.field.name: obj}).count()
            if count:
                rows.append((rel.related_model._meta.verbose_name_plural.capitalize(), count))
    return rows


def superseded_state(row):
    if row.revoked_at is None:
        return f"works until {moment(row.grace_until)}"
    deleted = " and deleted upstream" if row.deleted_upstream_at else ""
    return f"revoked {moment(row.revoked_at)}{deleted}"
