"""Admin for API keys, probe results and circuit breakers.

Secrets: the key form (keys.forms.ApiKeyForm) is write-only, the secret POST parameter is
starred in error reports, lookups and searches never touch the ciphertext or the
fingerprint, and audit events carry only the hint, ids and field names.

The key inlines (ProjectKeyInline, AdminKeyInline) and the audit helpers live here so
accounts/admin.py can reuse them without keys depending on accounts' admin.
"""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.timezone import now
from django.views.decorators.debug import sensitive_post_parameters

from accounts.models import AuditEvent, Project
from console.upstream import Outcome

from . import tasks
from .forms import ApiKeyForm
from .models import ApiKey, Circuit, CircuitState, Kind, ProbeResult

BADGE_CSS = {"all": ["keys/admin.css"]}

# Fields no admin lookup, filter or search may touch: filtering on them would let anyone
# with view rights test guesses against the stored secret.
SECRET_FIELDS = {"secret_ciphertext", "fingerprint"}

# Audit action prefix per model; the rest use their model name.
AUDIT_NAMES = {"apikey": "key"}


# --- badges -----------------------------------------------------------------------
def badge(css, label):
    return format_html('<span class="state {}">{}</span>', css, label)


def outcome_badge(outcome):
    """A coloured span for a probe outcome; "Never" when there is none."""
    if not outcome:
        return badge("muted", "Never")
    label = Outcome(outcome).label if outcome in Outcome.values else outcome
    if outcome == Outcome.OK:
        return badge("ok", label)
    if outcome in Outcome.failures():
        return badge("failing", label)
    return badge("warn", label)


CIRCUIT_BADGES = {CircuitState.CLOSED: "ok", CircuitState.OPEN: "failing", CircuitState.HALF_OPEN: "warn"}


# --- audit ------------------------------------------------------------------------
def audit_name(obj):
    name = obj._meta.model_name
    return AUDIT_NAMES.get(name, name)


def save_key(request, key, form, adding):
    """Save a key edited in `form` (ApiKeyAdmin's form or an inline row) and record it.

    A new key, or a replaced secret, is made due for its first probe. The audit details
    hold the hint, kind, provider, ids and changed field names, never the secret."""
    replaced = not adding and form.secret_changed()
    if replaced:
        key.rotated_at = now()
    key.save()
    if adding:
        AuditEvent.record(
            request.user,
            "key.created",
            key,
            hint=key.hint,
            kind=key.kind,
            provider=key.provider,
            project=key.project_id,
        )
        key.schedule_first_probe()
        return
    if replaced:
        AuditEvent.record(request.user, "key.secret_replaced", key, hint=key.hint)
        key.schedule_first_probe()
    changed = [name for name in form.changed_data if name != "secret"]
    if changed:
        AuditEvent.record(request.user, "key.updated", key, fields=changed)


def save_audited(request, obj, form, adding):
    """Save `obj` from `form` and record "<model>.created" or "<model>.updated"."""
    if isinstance(obj, ApiKey):
        return save_key(request, obj, form, adding)
    obj.save()
    if adding:
        AuditEvent.record(request.user, f"{audit_name(obj)}.created", obj)
    elif form.changed_data:
        AuditEvent.record(request.user, f"{audit_name(obj)}.updated", obj, fields=form.changed_data)


def record_deletion(request, obj):
    """Record "<model>.deleted"; call it before the row is gone (it needs the pk)."""
    details = {"hint": obj.hint} if isinstance(obj, ApiKey) else {}
    AuditEvent.record(request.user, f"{audit_name(obj)}.deleted", obj, **details)


def refuses_lookup(lookup):
    return bool(SECRET_FIELDS.intersection(lookup.split("__")))


class GuardedAdmin(admin.ModelAdmin):
    """Refuses lookups on secret fields, and answers 403 to an action the user may not
    run (Django would otherwise ignore it and show the list again)."""

    def lookup_allowed(self, lookup, value, request=None):
        if refuses_lookup(lookup):
            return False
        return super().lookup_allowed(lookup, value, request)

    def changelist_view(self, request, extra_context=None):
        action = request.POST.get("action") if request.method == "POST" else None
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)


class AuditedAdmin(GuardedAdmin):
    """Records every create, update and delete made through this admin, its inlines and
    its bulk delete action, as AuditEvents."""

    def save_model(self, request, obj, form, change):
        save_audited(request, obj, form, adding=not change)

    def save_formset(self, request, form, formset, change):
        formset.save(commit=False)  # sorts rows into new/changed/deleted without writing
        for obj in formset.deleted_objects:
            record_deletion(request, obj)
            obj.delete()
        for row in formset.saved_forms:
            save_audited(request, row.instance, row, adding=row.instance._state.adding)
        formset.save_m2m()

    def delete_model(self, request, obj):
        record_deletion(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            record_deletion(request, obj)
        super().delete_queryset(request, queryset)

    def get_deleted_objects(self, objs, request):
        # Probe results are a key's history, written by probes only (nobody has delete
        # rights on them): they go with their key instead of blocking its deletion.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed.discard(ProbeResult._meta.verbose_name)
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


# --- inlines ------------------------------------------------------------------------
class ProjectKeyForm(ApiKeyForm):
    """A key row on a project's page: the organization comes from the project, and admin
    keys are not offered (they belong to the organization)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:
            self.fields["kind"].choices = [c for c in Kind.choices if c[0] != Kind.ADMIN]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("organization"):
            self.instance.organization = cleaned["organization"]
        return cleaned


class AdminKeyForm(ApiKeyForm):
    """An admin-key row on an organization's page: the kind is always “Admin key”."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.kind = Kind.ADMIN


class ProjectKeyInline(admin.TabularInline):
    model = ApiKey
    form = ProjectKeyForm
    fk_name = "project"
    fields = ["name", "kind", "provider", "secret", "hint", "owner", "expires_at"]
    readonly_fields = ["hint"]
    extra = 1
    show_change_link = True
    verbose_name_plural = "API keys (leave the secret blank to keep it)"


class AdminKeyInline(admin.TabularInline):
    model = ApiKey
    form = AdminKeyForm
    fk_name = "organization"
    fields = ["name", "secret", "hint", "owner", "expires_at"]
    readonly_fields = ["hint"]
    extra = 1
    show_change_link = True
    verbose_name = "admin key"
    verbose_name_plural = "admin keys (sk-admin-…, for the Usage, Costs and Administration APIs)"

    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=Kind.ADMIN)


# --- API keys -------------------------------------------------------------------------
class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


class LastProbeFilter(admin.SimpleListFilter):
    title = "last probe"
    parameter_name = "probe"

    def lookups(self, request, model_admin):
        return [("ok", "OK"), ("failing", "Failing"), ("rate_limited", "Rate limited"), ("never", "Never probed")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "ok":
            return queryset.filter(last_probe_outcome=Outcome.OK)
        if value == "failing":
            return queryset.filter(last_probe_outcome__in=Outcome.failures())
        if value == "rate_limited":
            return queryset.filter(last_probe_outcome=Outcome.RATE_LIMITED)
        if value == "never":
            return queryset.filter(last_probe_outcome="")
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "where",
        "kind",
        "provider",
        "hint",
        "owner",
        "issued_or_rotated",
        "expires_at",
        "is_active",
        "last_probe",
        "consecutive_failures",
    ]
    list_select_related = ["organization", "project"]
    list_filter = ["provider", "kind", "organization", StatusFilter, LastProbeFilter]
    # Never secret_ciphertext or fingerprint (see SECRET_FIELDS).
    search_fields = ["name", "hint", "owner", "upstream_key_id", "project__name", "organization__name"]
    actions = ["probe_selected", "revoke_selected"]
    fieldsets = [
        (None, {"fields": ["organization", "project", "name", "kind", "provider", "secret", "hint"]}),
        ("Endpoint", {"fields": ["base_url", "azure_endpoint", "azure_api_version"], "classes": ["collapse"]}),
        (
            "Ownership and lifetime",
            {"fields": ["upstream_key_id", "owner", "issued_at", "rotated_at", "expires_at", "revoked_at"]},
        ),
        (
            "Last probe",
            {"fields": ["last_probe", "last_probe_at", "last_success_at", "consecutive_failures", "next_probe_at"]},
        ),
    ]
    readonly_fields = [
        "hint",
        "rotated_at",
        "revoked_at",
        "last_probe",
        "last_probe_at",
        "last_success_at",
        "consecutive_failures",
        "next_probe_at",
    ]

    class Media:
        css = BADGE_CSS

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # The secret's format was checked against kind and provider when it was
            # entered; changing them later would skip that check. Register a new key.
            fields += ["kind", "provider"]
        return fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "project":
            # Project.__str__ names the organization: fetch it with the project.
            kwargs["queryset"] = Project.objects.select_related("organization")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @method_decorator(sensitive_post_parameters("secret"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="organization / project", ordering="organization__name")
    def where(self, key):
        return f"{key.organization.name} / {key.project.name}" if key.project_id else key.organization.name

    @admin.display(description="issued / rotated", ordering="issued_at")
    def issued_or_rotated(self, key):
        if key.rotated_at:
            return format_html("rotated {}", key.rotated_at.date())
        return format_html("issued {}", key.issued_at.date())

    @admin.display(description="active", boolean=True, ordering="revoked_at")
    def is_active(self, key):
        return not key.is_revoked()

    @admin.display(description="last probe", ordering="last_probe_outcome")
    def last_probe(self, key):
        return outcome_badge(key.last_probe_outcome)

    @admin.action(description="Probe now", permissions=["change"])
    def probe_selected(self, request, queryset):
        queued = tasks.enqueue_probes(list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True)))
        self.message_user(request, f"Queued a probe for {queued} key(s); results appear under “Last probe”.")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        keys = list(queryset.filter(revoked_at__isnull=True))
        ApiKey.objects.filter(pk__in=[k.pk for k in keys]).update(revoked_at=now())
        for key in keys:
            AuditEvent.record(request.user, "key.revoked", key, hint=key.hint)
        self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)


@admin.register(ProbeResult)
class ProbeResultAdmin(ReadOnlyAdmin):
    list_display = [
        "key",
        "started_at",
        "outcome_badge",
        "http_status",
        "error_code",
        "duration_ms",
        "request_id",
        "ratelimit_remaining_requests",
        "ratelimit_remaining_tokens",
    ]
    list_select_related = ["key"]
    list_filter = ["outcome"]
    search_fields = ["request_id", "client_request_id", "error_code", "key__name", "key__hint"]
    date_hierarchy = "started_at"

    class Media:
        css = BADGE_CSS

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, result):
        return outcome_badge(result.outcome)


@admin.register(Circuit)
class CircuitAdmin(AuditedAdmin):
    list_display = ["host", "state_badge", "consecutive_failures", "open_until", "last_outcome", "updated"]
    list_filter = ["state"]
    search_fields = ["host"]
    actions = ["close_selected"]

    class Media:
        css = BADGE_CSS

    @admin.display(description="state", ordering="state")
    def state_badge(self, circuit):
        return badge(CIRCUIT_BADGES.get(circuit.state, "muted"), circuit.get_state_display())

    @admin.action(description="Close circuit", permissions=["change"])
    def close_selected(self, request, queryset):
        circuits = list(queryset)
        queryset.update(
            state=CircuitState.CLOSED, consecutive_failures=0, opened_at=None, open_until=None, updated=now()
        )
        for circuit in circuits:
            AuditEvent.record(request.user, "circuit.closed", circuit)
        self.message_user(request, f"Closed {len(circuits)} circuit(s).", messages.SUCCESS)
