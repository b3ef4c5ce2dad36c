"""Admin for organizations, projects, tiers and the audit log.

Registering org → project → key is one page each: the organization page has project rows
and admin-key rows, the project page has key rows. The key rows and key counts come from
the keys app, which builds on this one: keys/admin.py registers subclasses of these
admins that add them (this module imports nothing from keys). Every change is audited (see
accounts/audit.py); the audit log itself is read-only for everyone.
"""

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import SEARCH_VAR
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.timezone import now
from django.views.decorators.debug import sensitive_post_parameters

from console.admin_base import SEARCH_REFUSED, ReadOnlyAdmin
from console.leakguard import find_key_shaped, redact_key_shaped
from console.paged_inline import PagedInline

from .access_admin import ConsoleGroupAdmin, ConsoleUserAdmin
from .audit import AuditedAdmin, AuditedInline, AuditedPackageAdmin
from .audit_export import csv_stream, details_text
from .audit_phrases import phrase
from .forms import OrganizationForm, ProjectForm
from .models import AuditEvent, Organization, Project, Tier

BADGE_CSS = {"all": ["keys/admin.css"]}


class ProjectInline(PagedInline, AuditedInline, admin.TabularInline):
    """New projects can be added here; existing ones are listed read-only with a link to
    their own page (where their keys are). Editable rows would render a tier menu per
    project, which on an organization with hundreds of projects is slow and unwieldy; even
    read-only, 500 rows took 1.1 s, so they come 25 a page (console/paged_inline.py)."""

    model = Project
    form = ProjectForm
    fields = ["name", "openai_project_id", "environment", "tier", "monthly_budget_usd", "rotation_policy_days"]
    extra = 1
    show_change_link = True
    per_page = 25
    paged_ordering = ("name", "pk")

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tier", "organization")


def count_of(model, field):
    """A subquery counting `model` rows whose `field` is the outer row."""
    rows = model.objects.filter(**{field: OuterRef("pk")}).order_by().values(field).annotate(n=Count("pk"))
    return Coalesce(Subquery(rows.values("n")), 0)


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin):
    form = OrganizationForm
    list_display = [
        "name",
        "slug",
        "openai_org_id",
        "rotation_policy_days",
        "monthly_budget_usd",
        "project_count",
    ]
    search_fields = ["name", "slug", "openai_org_id"]
    prepopulated_fields = {"slug": ["name"]}  # the fields are OrganizationForm's
    inlines = [ProjectInline]

    def get_queryset(self, request):
        # Correlated counts, not joins: joining projects and keys (keys/admin.py adds that
        # count) at once would count their product.
        return super().get_queryset(request).annotate(n_projects=count_of(Project, "organization"))

    # Key rows carry secrets under prefixed names (api_keys-0-secret): star every POST
    # parameter in error reports.
    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="projects", ordering="n_projects")
    def project_count(self, org):
        return org.n_projects


class ArchivedFilter(admin.SimpleListFilter):
    title = "archived"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(archived_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(archived_at__isnull=True)
        return queryset


def tier_mismatch_badge(project):
    """A warning span when the API reports other limits than the project's synced rate
    limits (or its tier), else ""."""
    mismatch = project.tier_mismatch()
    if mismatch is None:
        return ""
    configured, observed = mismatch
    return format_html(
        '<span class="state warn" title="tier mismatch">{} says {} RPM, API reports {}</span>',
        "Synced rate limit" if project.synced_rpm() is not None else project.tier.name,
        f"{configured:,}",
        f"{observed:,}",
    )


def rate_limit_table(project):
    """The project's per-model rate limits as the organization sync last read them: a small
    read-only table (not an inline: the page's form stays what it was)."""
    limits = list(project.rate_limits.all())
    if not limits:
        return "None synced: the tier's limits apply."
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (r.model, f"{r.max_requests_per_1_minute:,}", f"{r.max_tokens_per_1_minute:,}", f"{r.synced_at:%Y-%m-%d}")
            for r in limits
        ),
    )
    return format_html(
        "<table><thead><tr><th>model</th><th>RPM</th><th>TPM</th><th>synced</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


@admin.register(Project)
class ProjectAdmin(AuditedAdmin):
    form = ProjectForm
    list_display = [
        "name",
        "organization",
        "openai_project_id",
        "environment",
        "tier",
        "tier_check",
        "monthly_budget_usd",
        "is_archived",
    ]
    list_select_related = ["organization", "tier"]
    list_filter = ["organization", "environment", "tier", ArchivedFilter]
    search_fields = ["name", "openai_project_id", "organization__name"]
    fields = [
        "organization",
        "name",
        "openai_project_id",
        "environment",
        "tier",
        "tier_check",
        "monthly_budget_usd",
        "rotation_policy_days",
        "archived_at",
        "observed_rpm",
        "observed_tpm",
        "observed_limits_at",
        "synced_rate_limits",
    ]
    readonly_fields = ["tier_check", "observed_rpm", "observed_tpm", "observed_limits_at", "synced_rate_limits"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("rate_limits")  # tier_check: no N+1

    class Media:
        css = BADGE_CSS

    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="archived", boolean=True, ordering="archived_at")
    def is_archived(self, project):
        return project.archived_at is not None

    @admin.display(description="tier check")
    def tier_check(self, project):
        return tier_mismatch_badge(project)

    @admin.display(description="per-model rate limits (synced)")
    def synced_rate_limits(self, project):
        return rate_limit_table(project) if project.pk else ""


@admin.register(Tier)
class TierAdmin(AuditedAdmin):
    list_display = ["name", "requests_per_minute", "tokens_per_minute", "position"]
    list_editable = ["requests_per_minute", "tokens_per_minute", "position"]
    search_fields = ["name"]


class ActorFilter(admin.AllValuesFieldListFilter):
    """Who acted: every username, "cli:…" command and "system" the log holds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "actor"


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only for everyone, superusers included. Filters: actor, action, target type
    and date; "Export CSV" downloads what the filters select (accounts/audit_export.py),
    and is itself recorded as "audit.exported" with the filters and the row count."""

    list_display = ["at", "actor_label", "what", "target_type", "target_repr", "details_summary"]
    list_filter = [("actor_label", ActorFilter), "action", "target_type"]
    search_fields = ["actor_label", "target_repr"]
    date_hierarchy = "at"
    fields = [
        "at",
        "actor",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "target_repr",
        "details_summary",
        "details",
    ]
    readonly_fields = ["details_summary"]
    list_select_related = ["actor"]

    class Media:
        css = BADGE_CSS

    @admin.display(description="action", ordering="action")
    def what(self, event):
        # The phrase, and the code the filter and the CSV use.
        return format_html('{}<br><span class="cell-detail">{}</span>', phrase(event.action), event.action)

    @admin.display(description="details")
    def details_summary(self, event):
        return details_text(event.details)

    def get_urls(self):
        export = path("export/", self.admin_site.admin_view(self.export_view), name="accounts_auditevent_export")
        return [export, *super().get_urls()]

    def export_view(self, request):
        """The events the changelist's filters, search and date select, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET"])
        if find_key_shaped(request.GET.get(SEARCH_VAR, "")):
            self.message_user(request, SEARCH_REFUSED, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:accounts_auditevent_changelist"))
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:accounts_auditevent_changelist") + "?e=1")
        # What exists now: the export's own event (and any made meanwhile) is not in it.
        upto = AuditEvent.objects.aggregate(last=Max("pk"))["last"] or 0
        events = changelist.queryset.filter(pk__lte=upto)
        filters = {k: redact_key_shaped(v)[:200] for k, v in request.GET.items()}
        AuditEvent.record(request.user, "audit.exported", None, format="csv", filters=filters, rows=events.count())
        name = f"audit-log-{now():%Y%m%d-%H%M%S}.csv"
        # The rows name their actor by actor_label: the changelist's join to the user is not read.
        response = StreamingHttpResponse(csv_stream(events.select_related(None)), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


# Users and groups: the console's audited admins in place of Django's (accounts/access_admin.py).
for model, model_admin in ((get_user_model(), ConsoleUserAdmin), (Group, ConsoleGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)


# Other packages' admins (two-factor devices, login lockouts) keep their own forms; their
# changes, deletions and actions are audited too. Their admin modules load after this one
# (INSTALLED_APPS order): accounts/apps.py calls this once every admin is registered.
AUDITED_PACKAGES = ("otp_totp", "otp_static", "axes")


def audit_other_packages_admins(site=admin.site):
    for model, model_admin in list(site._registry.items()):
        if model._meta.app_label in AUDITED_PACKAGES and not isinstance(model_admin, AuditedPackageAdmin):
            name = f"Audited{type(model_admin).__name__}"
            audited = type(name, (AuditedPackageAdmin, type(model_admin)), {"__module__": __name__})
            site.unregister(model)
            site.register(model, audited)
