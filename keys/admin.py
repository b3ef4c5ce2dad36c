"""Admin for API keys, probe results and circuit breakers.

Secrets: the key form (keys.forms.ApiKeyForm) is write-only, the secret POST parameter is
starred in error reports, lookups and searches never touch the ciphertext or the
fingerprint (ApiKey.secret_fields, enforced by console.admin_base.GuardedAdmin), and
audit events carry only hints, ids and field values (accounts.audit).
"""

from functools import partial

from django.contrib import admin, messages
from django.db import transaction
from django.urls import path
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.timezone import now
from django.views.decorators.debug import sensitive_post_parameters

from accounts import admin as accounts_admin
from accounts.audit import AuditedAdmin, AuditedInline
from accounts.models import AuditEvent, Organization, Project
from console.admin_base import ReadOnlyAdmin, badge
from console.upstream import Outcome

from . import tasks
from .forms import ApiKeyForm
from .models import ApiKey, Circuit, CircuitState, Kind, ProbeResult
from .report_views import rotation_report_view
from .states_admin import RotationDisplays, RotationStateFilter, StaleFlagFilter

BADGE_CSS = {"all": ["keys/admin.css"]}


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


def probe_queued_message(queued, asked):
    if asked and not queued:
        return (
            f"No worker queue answered: the {asked} key(s) stay due and will be probed by the next sweep; "
            "results appear under “Last probe”."
        )
    return f"Queued a probe for {queued} key(s); results appear under “Last probe”."


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


class ProjectKeyInline(AuditedInline, admin.TabularInline):
    model = ApiKey
    form = ProjectKeyForm
    fk_name = "project"
    fields = ["name", "kind", "provider", "secret", "hint", "azure_endpoint", "owner", "expires_at"]
    readonly_fields = ["hint"]
    extra = 1
    show_change_link = True
    verbose_name_plural = "API keys (leave the secret blank to keep it)"


class AdminKeyInline(AuditedInline, admin.TabularInline):
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


# --- the organization and project pages, with their keys ----------------------------
# accounts/admin.py knows nothing of keys (it is the floor below); these subclasses add
# the key rows and key counts to its pages.
admin.site.unregister(Organization)
admin.site.unregister(Project)


@admin.register(Organization)
class OrganizationAdmin(accounts_admin.OrganizationAdmin):
    list_display = [*accounts_admin.OrganizationAdmin.list_display, "key_count"]
    inlines = [*accounts_admin.OrganizationAdmin.inlines, AdminKeyInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_keys=accounts_admin.count_of(ApiKey, "organization"))

    @admin.display(description="keys", ordering="n_keys")
    def key_count(self, org):
        return org.n_keys


@admin.register(Project)
class ProjectAdmin(accounts_admin.ProjectAdmin):
    list_display = [*accounts_admin.ProjectAdmin.list_display[:-1], "key_count", "is_archived"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_keys=accounts_admin.count_of(ApiKey, "project"))

    def get_inlines(self, request, obj):
        # A key needs a saved project (ApiKey.clean requires project_id), so key rows
        # appear once the project exists: "Save and continue editing", then add keys.
        return [ProjectKeyInline] if obj is not None else []

    @admin.display(description="keys", ordering="n_keys")
    def key_count(self, project):
        return project.n_keys


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
class ApiKeyAdmin(RotationDisplays, AuditedAdmin):
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
        "rotation_badge",
        "last_probe",
        "consecutive_failures",
    ]
    list_select_related = ["organization", "project"]
    ordering = ["organization__name", "project__name", "name"]
    list_filter = [
        "provider",
        "kind",
        "organization",
        StatusFilter,
        LastProbeFilter,
        ("leaked_at", admin.EmptyFieldListFilter),  # set by manage.py scan_leaks
        RotationStateFilter,
        StaleFlagFilter,
    ]
    # Never secret_ciphertext or fingerprint (ApiKey.secret_fields).
    search_fields = ["name", "hint", "owner", "upstream_key_id", "project__name", "organization__name"]
    actions = ["probe_selected", "revoke_selected"]
    fieldsets = [
        (None, {"fields": ["organization", "project", "name", "kind", "provider", "secret", "hint"]}),
        ("Endpoint", {"fields": ["base_url", "azure_endpoint", "azure_api_version"], "classes": ["collapse"]}),
        (
            "Ownership and lifetime",
            {
                "fields": [
                    "upstream_key_id",
                    "owner",
                    "issued_at",
                    "rotated_at",
                    "expires_at",
                    "revoked_at",
                    "last_used_at",
                ]
            },
        ),
        ("Rotation", {"fields": ["rotation_state_display", "next_rotation_due_display", "stale_flags_display"]}),
        (
            "Last probe",
            {"fields": ["last_probe", "last_probe_at", "last_success_at", "consecutive_failures", "next_probe_at"]},
        ),
    ]
    readonly_fields = [
        "hint",
        "rotated_at",
        "revoked_at",
        "last_used_at",
        "last_probe",
        "last_probe_at",
        "last_success_at",
        "consecutive_failures",
        "next_probe_at",
        "rotation_state_display",
        "next_rotation_due_display",
        "stale_flags_display",
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

    def get_urls(self):
        report = self.admin_site.admin_view(partial(rotation_report_view, model_admin=self))
        return [path("rotation-report/", report, name="keys_rotation_report"), *super().get_urls()]

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

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)

        def say_if_not_queued():
            # Runs after the form's own on-commit enqueue, which sets first_probe_queued.
            if form.first_probe_queued is False:
                self.message_user(request, probe_queued_message(0, 1), messages.WARNING)

        transaction.on_commit(say_if_not_queued)

    @admin.action(description="Probe now", permissions=["change"])
    def probe_selected(self, request, queryset):
        key_ids = list(queryset.active().values_list("pk", flat=True))
        queued = tasks.enqueue_probes(key_ids)
        level = messages.INFO if queued or not key_ids else messages.WARNING
        self.message_user(request, probe_queued_message(queued, len(key_ids)), level)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        keys = list(queryset.active())
        ApiKey.objects.filter(pk__in=[k.pk for k in keys]).update(revoked_at=now())
        for key in keys:
            AuditEvent.record(request.user, "key.revoked", key, **key.audit_details())
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
    ordering = ["-started_at"]
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
    """Circuits are opened and closed by the breaker; a person may only close one (the
    action), never write its state by hand."""

    list_display = ["host", "state_badge", "consecutive_failures", "open_until", "last_outcome", "updated"]
    list_filter = ["state"]
    search_fields = ["host"]
    ordering = ["host"]
    actions = ["close_selected"]
    readonly_fields = ["host", "state", "consecutive_failures", "opened_at", "open_until", "last_outcome", "updated"]

    class Media:
        css = BADGE_CSS

    def has_add_permission(self, request):
        return False

    @admin.display(description="state", ordering="state")
    def state_badge(self, circuit):
        return badge(CIRCUIT_BADGES.get(circuit.state, "muted"), circuit.get_state_display())

    @admin.action(description="Close circuit", permissions=["change"])
    def close_selected(self, request, queryset):
        circuits = list(queryset)
        for circuit in circuits:
            circuit.close(now())
            AuditEvent.record(request.user, "circuit.closed", circuit)
        self.message_user(request, f"Closed {len(circuits)} circuit(s).", messages.SUCCESS)
