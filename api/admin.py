"""API tokens in the admin (REST API › API tokens).

- Anyone with staff access makes tokens for themselves only: a token is a personal
  credential like a password or a two-factor device, and it can do no more than its
  user's role (a security reviewer's token reads only). The token is shown once, on the
  page after "Save", never stored (only its prefix and SHA-256) and never put in a
  message (messages live in the session).
- The list shows prefix, owner, expiry, state and last use. Console admins may revoke
  anyone's token (a leaked CI token); everyone may revoke their own. Tokens are never
  deleted: the audit log's api.call events keep naming them.
- Audited: api_token.created / updated / revoked (accounts/audit.py).
"""

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.utils.timezone import now
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables

from accounts.audit import AuditedAdmin
from accounts.models import AuditEvent
from console.admin_base import badge

from .forms import ApiTokenForm
from .models import ApiToken

STATE_BADGES = {"active": "ok", "expired": "warn", "revoked": "muted"}


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        at = now()
        if self.value() == "active":
            return queryset.usable(at)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=at)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin):
    form = ApiTokenForm
    list_display = ["name", "shown_prefix", "user", "state_badge", "created", "expires_at", "last_used_at"]
    list_select_related = ["user"]
    list_filter = [TokenStateFilter]
    search_fields = ["name", "prefix", "user__username"]
    actions = ["revoke_selected"]

    class Media:
        css = {"all": ["keys/admin.css"]}

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "expires_at"]
        return ["name", "user", "shown_prefix", "created", "expires_at", "revoked_at", "last_used_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["user", "shown_prefix", "created", "expires_at", "revoked_at", "last_used_at"]

    def get_ordering(self, request):
        return ["-created", "-pk"]

    # --- who may do what -------------------------------------------------------------
    def has_add_permission(self, request):
        # Everyone with staff access may make tokens for themselves (see the docstring).
        return request.user.is_active and request.user.is_staff

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.user_id == request.user.pk:
            return True
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def may_revoke(self, request, token):
        return token.user_id == request.user.pk or super().has_change_permission(request, token)

    def has_revoke_permission(self, request):
        return self.has_add_permission(request)

    # --- the token, shown once -----------------------------------------------------------
    def save_model(self, request, obj, form, change):
        form.save_and_record(request.user)
        obj.plaintext_token = form.plaintext  # in memory, for response_add only

    @method_decorator(never_cache)
    @method_decorator(sensitive_variables("plaintext", "context"))
    def response_add(self, request, obj, post_url_continue=None):
        plaintext = getattr(obj, "plaintext_token", None)
        if not plaintext:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "Your new API token",
            "opts": self.model._meta,
            "token": obj,
            "plaintext": plaintext,
        }
        response = TemplateResponse(request, "admin/api/apitoken/token_created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    # --- displays and actions ----------------------------------------------------------
    @admin.display(description="token", ordering="prefix")
    def shown_prefix(self, token):
        return f"{token.prefix}…"

    @admin.display(description="state")
    def state_badge(self, token):
        state = token.state(now())
        return badge(STATE_BADGES[state], state.capitalize())

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke_selected(self, request, queryset):
        tokens = [
            t for t in queryset.filter(revoked_at__isnull=True).select_related("user") if self.may_revoke(request, t)
        ]
        at = now()
        ApiToken.objects.filter(pk__in=[t.pk for t in tokens], revoked_at__isnull=True).update(revoked_at=at)
        for token in tokens:
            token.revoked_at = at
            AuditEvent.record(request.user, "api_token.revoked", token, **token.audit_details())
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)
