"""Admin for API keys, probe results and circuit breakers.

Secrets: the key form (keys.forms.ApiKeyForm) is write-only, the secret POST parameter is
starred in error reports, lookups and searches never touch the ciphertext or the
fingerprint (ApiKey.secret_fields, enforced by console.admin_base.GuardedAdmin), and
audit events carry only hints, ids and field values (accounts.audit).
"""

import logging
from datetime import UTC, datetime
from functools import partial

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import unquote
from django.db import transaction
from django.db.models import F, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.timezone import now
from django.views.decorators.debug import sensitive_post_parameters

from accounts import admin as accounts_admin
from accounts.audit import AuditedAdmin, AuditedInline
from accounts.models import AuditEvent, Organization, Project, ProjectRateLimit
from console.admin_base import ReadOnlyAdmin, badge
from console.paged_inline import PagedInline
from console.upstream import Outcome

from . import rotation, tasks
from .display import moment, outcome_label
from .forms import ApiKeyForm
from .models import ApiKey, Circuit, CircuitState, Kind, ProbeResult
from .probe_admin import ProbeNowAdmin, last_probe_mark, rate_limit_text, remember_waiting, start_run
from .report_views import rotation_report_view
from .rotation_admin import KeyActionsAdmin
from .states_admin import RotationDisplays, RotationStateFilter, StaleFlagFilter, state_badge

BADGE_CSS = {"all": ["keys/admin.css"]}
log = logging.getLogger(__name__)


def outcome_badge(outcome):
    """A coloured span for a probe outcome; "Never" when there is none."""
    if not outcome:
        return badge("muted", "Never")
    label = outcome_label(outcome)
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


class ProjectKeyInline(PagedInline, AuditedInline, admin.TabularInline):
    """A project's keys as editable rows, 20 a page (console/paged_inline.py): with every
    key of a 100-key project the page took 0.7 s (1.2 s on a busy machine)."""

    model = ApiKey
    form = ProjectKeyForm
    fk_name = "project"
    fields = ["name", "kind", "provider", "secret", "hint", "azure_endpoint", "owner", "expires_at"]
    readonly_fields = ["hint"]
    extra = 1
    show_change_link = True
    verbose_name_plural = "API keys (leave the secret blank to keep it)"
    per_page = 20
    paged_ordering = ("name", "pk")


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
    """Active means usable: not revoked and not expired. "Not revoked" is what the console
    still probes (expired keys included), as the dashboard counts keys deleted upstream."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [
            ("active", "Active"),
            ("expired", "Expired"),
            ("not_revoked", "Not revoked (expired included)"),
            ("revoked", "Revoked"),
        ]

    def queryset(self, request, queryset):
        at = now()
        if self.value() == "active":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=at), revoked_at__isnull=True)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=at, revoked_at__isnull=True)
        if self.value() == "not_revoked":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


class LastProbeFilter(admin.SimpleListFilter):
    title = "last probe"
    parameter_name = "probe"

    def lookups(self, request, model_admin):
        # "Failed", not "Failing": any failed last probe (one timeout will do), where the
        # dashboard's "Keys failing" is the stricter stale flag (keys/states.py).
        return [("ok", "OK"), ("failing", "Failed"), ("rate_limited", "Rate limited"), ("never", "Never probed")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "ok":
            return queryset.filter(last_probe_outcome=Outcome.OK)
        if value == "failing":
            # ApiKey.is_probe_failing: a revoked key is not probed any more, and a key
            # deleted upstream is expected to fail.
            return queryset.filter(
                last_probe_outcome__in=Outcome.failures(), deleted_upstream_at__isnull=True, revoked_at__isnull=True
            )
        if value == "rate_limited":
            return queryset.filter(last_probe_outcome=Outcome.RATE_LIMITED)
        if value == "never":
            return queryset.filter(last_probe_outcome="")
        return queryset


class TierMismatchFilter(admin.SimpleListFilter):
    """Keys whose project's observed request limit differs from the one the console
    expects (Project.tier_mismatch, in SQL: the lowest synced per-model limit, else the
    tier's)."""

    title = "tier mismatch"
    parameter_name = "tier_mismatch"

    def lookups(self, request, model_admin):
        return [("yes", "Project's limits differ")]

    def queryset(self, request, queryset):
        if self.value() != "yes":
            return queryset
        synced = (
            ProjectRateLimit.objects.filter(project=OuterRef("project"))
            .order_by()
            .values("project")
            .annotate(rpm=Min("max_requests_per_1_minute"))
            .values("rpm")
        )
        return (
            queryset.annotate(expected_rpm=Coalesce(Subquery(synced), F("project__tier__requests_per_minute")))
            .filter(project__observed_rpm__isnull=False, expected_rpm__isnull=False)
            .exclude(project__observed_rpm=F("expected_rpm"))
        )


def small(text):
    return format_html('<br><span class="cell-detail">{}</span>', text) if text else ""


@admin.register(ApiKey)
class ApiKeyAdmin(ProbeNowAdmin, RotationDisplays, KeyActionsAdmin, AuditedAdmin):
    form = ApiKeyForm
    # Six columns that fit a 1280 px screen beside the filters; the rest is on the key page.
    list_display = ["key_cell", "where", "state_cell", "last_probe_cell", "issued_or_rotated", "expires_cell"]
    list_display_links = ["key_cell"]
    list_select_related = ["organization", "project"]
    ordering = ["organization__name", "project__name", "name"]
    list_filter = [
        StatusFilter,
        RotationStateFilter,
        LastProbeFilter,
        StaleFlagFilter,
        ("leaked_at", admin.EmptyFieldListFilter),  # set by manage.py scan_leaks
        TierMismatchFilter,
        "provider",
        "kind",
        ("project__environment", admin.ChoicesFieldListFilter),
        "organization",
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
                    "rotated_at_display",
                    "expires_at",
                    "revoked_at_display",
                    "last_used_at_display",
                ]
            },
        ),
        ("Rotation", {"fields": ["rotation_state_display", "next_rotation_due_display", "stale_flags_display"]}),
        (
            "Last probe",
            {
                "fields": [
                    "last_probe",
                    "last_probe_at_display",
                    "last_success_at_display",
                    "consecutive_failures",
                    "next_probe_at_display",
                ]
            },
        ),
        ("Probe history", {"fields": ["probe_history"]}),
        ("Rotation history", {"fields": ["rotated_by", "key_history"]}),
    ]
    readonly_fields = [
        "hint",
        "rotated_at_display",
        "revoked_at_display",
        "last_used_at_display",
        "last_probe",
        "last_probe_at_display",
        "last_success_at_display",
        "consecutive_failures",
        "next_probe_at_display",
        "rotated_by",
        "key_history",
        "probe_history",
        "rotation_state_display",
        "next_rotation_due_display",
        "stale_flags_display",
    ]

    class Media:
        css = BADGE_CSS
        js = ["keys/key_page.js"]

    def get_queryset(self, request):
        # "Issued / rotated" shows, and sorts by, the later of the two.
        return super().get_queryset(request).annotate(issued_or_rotated_at=Coalesce("rotated_at", "issued_at"))

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            # Adding: only what a new key needs; its history starts once it is saved.
            return [
                (None, {"fields": ["organization", "project", "name", "kind", "provider", "secret"]}),
                self.fieldsets[1],
                ("Ownership and lifetime", {"fields": ["upstream_key_id", "owner", "issued_at", "expires_at"]}),
            ]
        return super().get_fieldsets(request, obj)

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

    def get_object(self, request, object_id, from_field=None):
        # The key page's mixins (its actions, Probe now) and Django's view each look the
        # key up: once per request is enough.
        memo = request.__dict__.setdefault("_keys_apikey_objects", {})
        if (object_id, from_field) not in memo:
            memo[(object_id, from_field)] = super().get_object(request, object_id, from_field)
        return memo[(object_id, from_field)]

    def changelist_view(self, request, extra_context=None):
        # The list's health columns need the width: no app sidebar beside the filters.
        extra_context = {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        key = self.get_object(request, unquote(object_id))
        extra_context = {**(extra_context or {}), **self.probe_context(request, key)}
        return super().change_view(request, object_id, form_url, extra_context)

    def response_add(self, request, obj, post_url_continue=None):
        # A new key's first probe is queued: show its page, which polls for the outcome.
        response = super().response_add(request, obj, post_url_continue)
        stays = {"_addanother", "_continue", IS_POPUP_VAR}.intersection(request.POST)
        if response.status_code == 302 and not stays:
            return HttpResponseRedirect(reverse("admin:keys_apikey_change", args=[obj.pk]))
        return response

    # --- the list's columns ----------------------------------------------------------
    @admin.display(description="key", ordering="name")
    def key_cell(self, key):
        return format_html("{}{}", key.name, small(f"{key.hint} · {key.get_kind_display()}"))

    @admin.display(description="organization / project", ordering="organization__name")
    def where(self, key):
        if not key.project_id:
            return format_html("{}{}", key.organization.name, small("organization (admin key)"))
        return format_html("{}{}", key.project.name, small(key.organization.name))

    @admin.display(description="state")
    def state_cell(self, key):
        at = now()
        extra = []
        if key.leaked_at:
            extra.append(badge("failing", "Leaked"))
        if key.deleted_upstream_at:
            extra.append(badge("muted", "Deleted upstream"))
        return format_html(
            "{}{}", state_badge(key.rotation_state(at)), format_html_join("", " {}", ((b,) for b in extra))
        )

    @admin.display(description="last probe", ordering="last_probe_at")
    def last_probe_cell(self, key):
        if key.is_revoked():
            # A revoked key is not probed any more: never shown as failing.
            return format_html("{}{}", badge("muted", "Not probed"), small(moment(key.last_probe_at)))
        if not key.last_probe_outcome:
            return outcome_badge("")
        failures = f" · {key.consecutive_failures} failed in a row" if key.consecutive_failures > 1 else ""
        return format_html("{}{}", outcome_badge(key.last_probe_outcome), small(moment(key.last_probe_at) + failures))

    @admin.display(description="issued / rotated", ordering="issued_or_rotated_at")
    def issued_or_rotated(self, key):
        if key.rotated_at:
            return format_html("rotated {}", key.rotated_at.date())
        return format_html("issued {}", key.issued_at.date())

    @admin.display(description="expires", ordering="expires_at")
    def expires_cell(self, key):
        if key.expires_at is None:
            return "never"
        if key.expires_at <= now():
            return format_html("{}{}", badge("failing", "Expired"), small(key.expires_at.date()))
        return str(key.expires_at.date())

    # --- the key page's read-only fields -----------------------------------------------
    @admin.display(description="secret")
    def secret(self, key):
        # Read-only views (reviewers) render the form's fields through the admin's
        # attributes: they say what is stored, never "None".
        return f"stored ({key.hint})" if key and key.hint else "—"

    @admin.display(description="last probe")
    def last_probe(self, key):
        return outcome_badge(key.last_probe_outcome)

    @admin.display(description="rotated at")
    def rotated_at_display(self, key):
        return moment(key.rotated_at)

    @admin.display(description="revoked at")
    def revoked_at_display(self, key):
        return moment(key.revoked_at)

    @admin.display(description="last used (usage data)")
    def last_used_at_display(self, key):
        return moment(key.last_used_at)

    @admin.display(description="last probe at")
    def last_probe_at_display(self, key):
        return moment(key.last_probe_at)

    @admin.display(description="last success at")
    def last_success_at_display(self, key):
        return moment(key.last_success_at)

    @admin.display(description="next probe at")
    def next_probe_at_display(self, key):
        return moment(key.next_probe_at)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change or form.secret_changed():
            # Its first probe is queued once this commits (or, without a broker, due): the
            # key's page polls for a probe newer than what the key holds now.
            remember_waiting(request, obj, last_probe_mark(obj))

        def say_if_not_queued():
            # Runs after the form's own on-commit enqueue, which sets first_probe_queued.
            if form.first_probe_queued is False:
                self.message_user(request, probe_queued_message(0, 1), messages.WARNING)

        transaction.on_commit(say_if_not_queued)

    @admin.action(description="Probe now", permissions=["change"])
    def probe_selected(self, request, queryset):
        keys = list(queryset.active().select_related(None).only("pk", "name", "hint"))
        key_ids = [key.pk for key in keys]
        queued = tasks.enqueue_probes(key_ids)
        AuditEvent.record_many(
            AuditEvent.build(request.user, "key.probe_requested", key, hint=key.hint, queued=bool(queued))
            for key in keys
        )
        level = messages.INFO if queued or not key_ids else messages.WARNING
        self.message_user(request, probe_queued_message(queued, len(key_ids)), level)
        if queued:
            # Its live progress: how many of them were probed since, by outcome.
            token = start_run(request, key_ids)
            return HttpResponseRedirect(reverse("admin:keys_apikey_probe_run", args=[token]))
        return None

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        # The same path as the Revoke page (history row, audit event, no next probe),
        # without the upstream delete; the reason says where it came from.
        revoked = 0
        for key in queryset.active():
            try:
                rotation.revoke(key, request.user, "Revoked from the key list (bulk action).")
            except rotation.RotationRefused:
                continue  # revoked meanwhile
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(ProbeResult)
class ProbeResultAdmin(ReadOnlyAdmin):
    # Error code, duration and the token limits are on each result's page.
    list_display = ["key", "started", "outcome_badge", "status", "request", "requests_left", "secret_hint"]
    list_select_related = ["key"]
    ordering = ["-started_at"]
    list_filter = ["outcome"]
    search_fields = ["request_id", "client_request_id", "error_code", "key__name", "key__hint"]
    date_hierarchy = "started_at"
    # A COUNT(*) of every result (a million at 50,000 keys) on every page, as the usage lists.
    show_full_result_count = False
    fields = [
        "key",
        "started",
        "slot_display",
        "outcome_badge",
        "status",
        "error_code",
        "message",
        "duration_ms",
        "attempts",
        "request",
        "client_request_id",
        "requests_left",
        "tokens_left",
        "organization_header",
        "processing_ms",
        "secret_hint",
    ]
    readonly_fields = fields

    class Media:
        css = BADGE_CSS

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, result):
        return outcome_badge(result.outcome)

    @admin.display(description="started", ordering="started_at")
    def started(self, result):
        return moment(result.started_at)

    @admin.display(description="scheduled for")
    def slot_display(self, result):
        return moment(datetime.fromtimestamp(result.slot, tz=UTC))

    @admin.display(description="HTTP status", ordering="http_status")
    def status(self, result):
        return result.http_status or "—"

    @admin.display(description="request id", ordering="request_id")
    def request(self, result):
        return result.request_id or "—"

    @admin.display(description="Rate limit: requests")
    def requests_left(self, result):
        return rate_limit_text(
            result.ratelimit_remaining_requests, result.ratelimit_limit_requests, result.ratelimit_reset_requests
        )

    @admin.display(description="Rate limit: tokens")
    def tokens_left(self, result):
        return rate_limit_text(
            result.ratelimit_remaining_tokens, result.ratelimit_limit_tokens, result.ratelimit_reset_tokens
        )

    @admin.display(description="OpenAI organization (header)")
    def organization_header(self, result):
        return result.openai_organization or "—"


@admin.register(Circuit)
class CircuitAdmin(ReadOnlyAdmin):
    """Circuits are opened and closed by the breaker (keys/circuit.py): nobody adds, edits
    or deletes one here. Console admins may close one (the action), which makes the keys
    it skipped due; reviewers only look."""

    list_display = ["host", "state_badge", "consecutive_failures", "opened_at_display", "open_until_display", "outcome"]
    list_filter = ["state"]
    search_fields = ["host"]
    ordering = ["host"]
    actions = ["close_selected"]
    fields = [
        "host",
        "state_badge",
        "consecutive_failures",
        "opened_at_display",
        "open_until_display",
        "outcome",
        "updated_display",
    ]
    readonly_fields = fields

    class Media:
        css = BADGE_CSS

    def has_close_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.display(description="state", ordering="state")
    def state_badge(self, circuit):
        return badge(CIRCUIT_BADGES.get(circuit.state, "muted"), circuit.get_state_display())

    @admin.display(description="opened at", ordering="opened_at")
    def opened_at_display(self, circuit):
        return moment(circuit.opened_at)

    @admin.display(description="open until", ordering="open_until")
    def open_until_display(self, circuit):
        return moment(circuit.open_until)

    @admin.display(description="last outcome", ordering="last_outcome")
    def outcome(self, circuit):
        return outcome_label(circuit.last_outcome)

    @admin.display(description="updated", ordering="updated")
    def updated_display(self, circuit):
        return moment(circuit.updated)

    @admin.action(description="Close circuit", permissions=["close"])
    def close_selected(self, request, queryset):
        circuits = list(queryset)
        made_due = 0
        for circuit in circuits:
            was = circuit.state
            made_due += circuit.close(now())
            AuditEvent.record(request.user, "circuit.closed", circuit, host=circuit.host, was=was)
            log.warning("circuit for %s closed by %s (was %s)", circuit.host, request.user.get_username(), was)
        self.message_user(request, f"Closed {len(circuits)} circuit(s).", messages.SUCCESS)
        if made_due:
            self.message_user(request, f"{made_due} key(s) they held back are due for a probe now.", messages.INFO)
