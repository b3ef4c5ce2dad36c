"""Read-only admin lists of usage and cost buckets and of each organization's ingest state.

Rows are written by ingestion only (usage/ingest.py): nobody, superusers included, adds,
changes or deletes them here (console.admin_base.ReadOnlyAdmin). Console admins and
Security reviewers may view them (usage/migrations/0002_roles.py). Each list fetches its
foreign keys in the page's one query (`list_select_related`), so the query count stays
constant as rows grow.
"""

from django.contrib import admin
from django.db.models import Q

from accounts.models import Project
from console.admin_base import ReadOnlyAdmin, badge

from .models import CostBucket, IngestState, UsageBucket

BADGE_CSS = {"all": ["keys/admin.css"]}


class RegisteredFilter(admin.SimpleListFilter):
    """Rows whose upstream key (or, without one, project) is registered here, or not."""

    title = "registered"
    parameter_name = "registered"

    def lookups(self, request, model_admin):
        return [("yes", "Registered"), ("no", "Unregistered")]

    def queryset(self, request, queryset):
        unregistered = Q(upstream_key_id__gt="", key__isnull=True) | Q(
            upstream_key_id="", upstream_project_id__gt="", project__isnull=True
        )
        if self.value() == "no":
            return queryset.filter(unregistered)
        if self.value() == "yes":
            return queryset.exclude(unregistered)
        return queryset


class ProjectFilter(admin.RelatedFieldListFilter):
    """The project filter, its choices fetched with their organization (Project.__str__
    names it) in one query."""

    def field_choices(self, field, request, model_admin):
        projects = Project.objects.select_related("organization").order_by("organization__name", "name")
        return [(p.pk, str(p)) for p in projects]


class BucketAdmin(ReadOnlyAdmin):
    date_hierarchy = "start_time"
    list_select_related = ["organization", "project__organization", "key"]
    list_per_page = 100
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page

    class Media:
        css = BADGE_CSS

    @admin.display(description="day", ordering="start_time")
    def day(self, row):
        return row.start_time.date()

    @admin.display(description="project", ordering="upstream_project_id")
    def project_cell(self, row):
        if row.project_id:
            return row.project.name
        if row.upstream_project_id:
            return badge("warn", f"{row.upstream_project_id} (unregistered)")
        return "—"

    @admin.display(description="key", ordering="upstream_key_id")
    def key_cell(self, row):
        if row.key_id:
            return str(row.key)
        if row.upstream_key_id:
            return badge("warn", f"{row.upstream_key_id} (unregistered)")
        return "—"


@admin.register(UsageBucket)
class UsageBucketAdmin(BucketAdmin):
    list_display = [
        "day",
        "organization",
        "endpoint",
        "project_cell",
        "key_cell",
        "model",
        "num_model_requests",
        "input_tokens",
        "output_tokens",
        "input_cached_tokens",
    ]
    list_filter = ["endpoint", RegisteredFilter, "organization", ("project", ProjectFilter), "key", "model"]
    search_fields = ["upstream_project_id", "upstream_key_id", "model", "project__name", "key__name"]
    ordering = ["-start_time", "endpoint", "upstream_project_id", "upstream_key_id", "model"]


@admin.register(CostBucket)
class CostBucketAdmin(BucketAdmin):
    list_display = ["day", "organization", "project_cell", "key_cell", "line_item", "amount", "currency"]
    list_filter = [RegisteredFilter, "organization", ("project", ProjectFilter), "key", "line_item", "currency"]
    search_fields = ["upstream_project_id", "upstream_key_id", "line_item", "project__name", "key__name"]
    ordering = ["-start_time", "upstream_project_id", "upstream_key_id", "line_item"]


@admin.register(IngestState)
class IngestStateAdmin(ReadOnlyAdmin):
    list_display = [
        "organization",
        "state",
        "last_success_at",
        "last_attempt_at",
        "consecutive_failures",
        "next_attempt_at",
        "last_error",
    ]
    list_select_related = ["organization"]
    list_filter = ["last_outcome"]
    search_fields = ["organization__name", "organization__slug", "last_error"]
    ordering = ["organization__name"]

    class Media:
        css = BADGE_CSS

    @admin.display(description="state", ordering="consecutive_failures")
    def state(self, row):
        if row.is_failing():
            return badge("failing", row.last_outcome or "failing")
        return badge("ok", "OK") if row.last_success_at else badge("muted", "Never")


# Model prices, budget alerts and the estimate / reconciliation pages.
from . import price_admin  # noqa: E402,F401
