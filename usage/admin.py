"""Read-only admin lists of usage and cost buckets and of each organization's ingest
state; and the spend columns, filters and charts of the organization, project and key
pages.

Rows are written by ingestion only (usage/ingest.py): nobody, superusers included, adds,
changes or deletes them here (console.admin_base.ReadOnlyAdmin). Console admins and
Security reviewers may view them (usage/migrations/0002_roles.py). Each list fetches its
foreign keys in the page's one query (`list_select_related`), so the query count stays
constant as rows grow. Their filters stay bounded however many rows there are: project and
key are typed (a name or an upstream id), model and line item list only the values
present, unregistered ids are a yes/no filter.

Spend: the organization, project and key admins are registered here as subclasses of
keys/admin.py's (which subclass accounts/admin.py's), since usage is the floor that knows
costs. The lists annotate this month's billed spend (usage/spend.py: one correlated
subquery), show it with the budget, the percent used and a state badge, sort by spend, and
filter by budget state. The project page draws this month's daily spend against its
budget, the organization page this month's spend per project (usage/charts.py, inline
SVG), and a key's page shows its spend this month beside its last use.

The organization list also has "Ingest usage for a window…" (usage/ingest_admin.py).
"""

from django.contrib import admin
from django.db import connection
from django.db.models import Q
from django.utils.html import format_html
from django.utils.timezone import now

from accounts.models import Organization, Project, split_thresholds
from console.admin_base import ReadOnlyAdmin, badge
from keys import admin as keys_admin
from keys.models import ApiKey

from . import budgets, charts, spend_columns
from .budgets import BudgetState, budget_state
from .ingest_admin import IngestWindowActions
from .models import CostBucket, IngestState, UsageBucket
from .spend import month_to_date

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


class InputFilter(admin.SimpleListFilter):
    """A filter typed into a box instead of picked from a list: with thousands of keys
    or projects a list would be a page of its own. Subclasses name the parameter and say
    what a typed value matches (`matching`)."""

    template = "usage/admin/input_filter.html"

    def lookups(self, request, model_admin):
        # Never a list; Django shows a filter only when this is not None.
        return ()

    def has_output(self):
        return True

    def choices(self, changelist):
        # The page's other parameters (filters, search, order), kept as hidden fields.
        others = {k: v for k, v in changelist.params.items() if k not in (self.parameter_name, "p")}
        yield {
            "parameter_name": self.parameter_name,
            "value": self.value() or "",
            "others": sorted(others.items()),
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(self.matching(value)) if value else queryset


class ProjectInputFilter(InputFilter):
    title = "project (name or upstream id)"
    parameter_name = "project"

    def matching(self, value):
        return Q(upstream_project_id=value) | Q(project__name__iexact=value)


class KeyInputFilter(InputFilter):
    title = "key (name, hint or upstream id)"
    parameter_name = "key"

    def matching(self, value):
        return Q(upstream_key_id=value) | Q(key__name__iexact=value) | Q(key__hint=value)


def present_values(model, field, limit):
    """The distinct non-empty values of `field`, in order, at most `limit`: on PostgreSQL
    by a loose index scan (a recursive query that jumps from one value to the next through
    the field's index: a few dozen index probes, not a DISTINCT over every row — 65 ms at
    500,000 usage rows); elsewhere (the demo's SQLite) by DISTINCT."""
    if connection.vendor != "postgresql":
        rows = model.objects.exclude(**{field: ""}).order_by(field).values_list(field, flat=True).distinct()
        return list(rows[:limit])
    quote = connection.ops.quote_name
    table, column = quote(model._meta.db_table), quote(model._meta.get_field(field).column)
    sql = f"""
        WITH RECURSIVE present(v) AS (
            (SELECT {column} FROM {table} WHERE {column} > '' ORDER BY {column} LIMIT 1)
            UNION ALL
            SELECT (SELECT {column} FROM {table} WHERE {column} > present.v ORDER BY {column} LIMIT 1)
            FROM present WHERE present.v IS NOT NULL
        )
        SELECT v FROM present WHERE v IS NOT NULL LIMIT %s"""
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [v for (v,) in cursor.fetchall()]


class PresentValuesFilter(admin.SimpleListFilter):
    """The distinct values of one column present in the table (one query), at most
    MAX_CHOICES of them: models and line items are a few dozen, never a row per bucket.
    The column needs an index (usage/models.py) for present_values' loose index scan."""

    MAX_CHOICES = 100
    field = ""

    def lookups(self, request, model_admin):
        return [(v, v) for v in present_values(model_admin.model, self.field, self.MAX_CHOICES)]

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class ModelFilter(PresentValuesFilter):
    title = "model"
    parameter_name = "model"
    field = "model"


class LineItemFilter(PresentValuesFilter):
    title = "line item"
    parameter_name = "line_item"
    field = "line_item"


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
    list_filter = ["endpoint", RegisteredFilter, "organization", ProjectInputFilter, KeyInputFilter, ModelFilter]
    search_fields = ["upstream_project_id", "upstream_key_id", "model", "project__name", "key__name"]
    ordering = ["-start_time", "endpoint", "upstream_project_id", "upstream_key_id", "model"]


@admin.register(CostBucket)
class CostBucketAdmin(BucketAdmin):
    list_display = ["day", "organization", "project_cell", "key_cell", "line_item", "amount", "currency"]
    list_filter = [RegisteredFilter, "organization", ProjectInputFilter, KeyInputFilter, LineItemFilter, "currency"]
    search_fields = ["upstream_project_id", "upstream_key_id", "line_item", "project__name", "key__name"]
    ordering = ["-start_time", "upstream_project_id", "upstream_key_id", "line_item"]


@admin.register(IngestState)
class IngestStateAdmin(ReadOnlyAdmin):
    list_display = [
        "organization",
        "state",
        "last_success_at",
        "last_attempt_at",
        "last_run",
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

    @admin.display(description="last run", ordering="last_duration_ms")
    def last_run(self, row):
        """How long the last run took and the rows it wrote."""
        if row.last_duration_ms is None:
            return "—"
        counts = row.last_counts or {}
        return (
            f"{row.last_duration_ms / 1000:.1f} s; {counts.get('results', 0):,} results read, "
            f"{counts.get('created', 0):,} created, {counts.get('updated', 0):,} updated"
        )


# --- spend on the organization, project and key pages ---------------------------------
# usage/ is the floor that knows costs: the organization, project and key admins are
# registered here as subclasses of keys/admin.py's, which subclass accounts/admin.py's.
admin.site.unregister(Organization)
admin.site.unregister(Project)
admin.site.unregister(ApiKey)


def state_badge(state):
    state = BudgetState(state)
    return badge(STATE_BADGES[state], state.label)


STATE_BADGES = {
    BudgetState.NONE: "muted",
    BudgetState.WITHIN: "ok",
    BudgetState.NEAR: "warn",
    BudgetState.FORECAST: "warn",
    BudgetState.OVER: "failing",
}


class BudgetStateFilter(admin.SimpleListFilter):
    """Budget state is derived (spend, budget, thresholds and today), so it is no column
    to filter on. The filter reads each row's annotated spend, budget and thresholds (one
    query of four columns), judges them with usage/budgets.py's budget_state — the rule
    the badge shows — and keeps the matching rows by id."""

    title = "budget state"
    parameter_name = "budget_state"

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.thresholds_path = model_admin.thresholds_path

    def lookups(self, request, model_admin):
        return BudgetState.choices

    def queryset(self, request, queryset):
        if self.value() not in BudgetState.values:
            return queryset
        at = now()
        rows = queryset.order_by().values_list("pk", "spend_mtd", "monthly_budget_usd", self.thresholds_path)
        keep = [
            pk
            for pk, spent, budget, thresholds in rows
            if budget_state(spent, budget, split_thresholds(thresholds), at) == self.value()
        ]
        return queryset.filter(pk__in=keep)


class SpendColumns:
    """This month's spend, the percent of the budget it is and the budget state, on a
    list of organizations or projects annotated by get_queryset (usage/spend_columns.py).
    `thresholds_path`: where the row's alert thresholds are."""

    thresholds_path = "alert_thresholds"
    spend_scope = "organization"

    def get_queryset(self, request):
        return spend_columns.with_spend(super().get_queryset(request), self.spend_scope, now())

    def thresholds_of(self, row):
        return row.alert_threshold_list()

    @admin.display(description="billed this month", ordering="spend_mtd")
    def spend_this_month(self, row):
        return charts.usd(row.spend_mtd)

    @admin.display(description="% used")
    def percent_used(self, row):
        percent = budgets.percent_used(row.spend_mtd, row.monthly_budget_usd)
        return "—" if percent is None else f"{percent} %"

    @admin.display(description="budget state")
    def budget_state_badge(self, row):
        return state_badge(budget_state(row.spend_mtd, row.monthly_budget_usd, self.thresholds_of(row), now()))


def with_spend_columns(list_display):
    """`list_display` with the spend columns after the budget."""
    at = list_display.index("monthly_budget_usd")
    return [
        *list_display[:at],
        "spend_this_month",
        *list_display[at : at + 1],
        "percent_used",
        "budget_state_badge",
        *list_display[at + 1 :],
    ]


@admin.register(Organization)
class OrganizationAdmin(IngestWindowActions, SpendColumns, keys_admin.OrganizationAdmin):
    list_display = with_spend_columns(keys_admin.OrganizationAdmin.list_display)
    list_filter = [*keys_admin.OrganizationAdmin.list_filter, BudgetStateFilter]

    class Media:
        css = BADGE_CSS

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "spend_summary", "spend_by_project"] if obj is not None else fields

    @admin.display(description="spend this month")
    def spend_summary(self, org):
        return spend_summary(org, None, org.monthly_budget_usd, org.alert_threshold_list())

    @admin.display(description="spend per project this month")
    def spend_by_project(self, org):
        at = now()
        totals = spend_columns.project_totals(org, at)
        if not totals:
            return "No billed spend this month yet."
        return charts.totals_chart(totals, f"{org.name}: billed spend per project, {at:%B %Y}")


@admin.register(Project)
class ProjectAdmin(SpendColumns, keys_admin.ProjectAdmin):
    list_display = with_spend_columns(keys_admin.ProjectAdmin.list_display)
    list_filter = [*keys_admin.ProjectAdmin.list_filter, BudgetStateFilter]
    thresholds_path = "organization__alert_thresholds"
    spend_scope = "project"

    def thresholds_of(self, project):
        return project.organization.alert_threshold_list()

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        return [*fields, "spend_summary", "spend_chart"] if obj is not None else fields

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "spend_summary", "spend_chart"] if obj is not None else fields

    @admin.display(description="spend this month")
    def spend_summary(self, project):
        org = project.organization
        return spend_summary(org, project, project.monthly_budget_usd, org.alert_threshold_list())

    @admin.display(description="daily spend this month")
    def spend_chart(self, project):
        at = now()
        days = spend_columns.daily_spend(project.organization, project, at)
        title = (
            f"{project.name}: daily spend in {at:%B %Y} (billed and estimated) and cumulative spend against the budget"
        )
        return charts.daily_spend_chart(days, project.monthly_budget_usd, title)


def spend_summary(organization, project, budget, thresholds):
    """“$412.50 ($12.00 estimated) of $1,000.00 · 41.3 % · forecast $1,280.00 · badge”."""
    at = now()
    spent = month_to_date(organization, project, at)
    state = budget_state(spent.total, budget, thresholds, at)
    percent = budgets.percent_used(spent.total, budget)
    parts = [charts.usd(spent.total)]
    if spent.is_estimated:
        parts.append(f"({charts.usd(spent.estimated)} estimated for {len(spent.estimated_days)} day(s) without costs)")
    if budget is not None:
        parts.append(
            f"of {charts.usd(budget)} · {percent} % · forecast {charts.usd(budgets.forecast(spent.total, at))}"
        )
    if spent.unpriced_models:
        parts.append(f"· no price for {', '.join(spent.unpriced_models)}")
    return format_html("{} {}", " ".join(parts), state_badge(state))


class KeyBudgetStateFilter(admin.SimpleListFilter):
    """Keys by their project's budget state (admin keys have no project: never listed).
    One query judges every project with budget_state, as BudgetStateFilter does."""

    title = "budget state (project)"
    parameter_name = "budget_state"

    def lookups(self, request, model_admin):
        return BudgetState.choices

    def queryset(self, request, queryset):
        if self.value() not in BudgetState.values:
            return queryset
        at = now()
        rows = spend_columns.with_spend(Project.objects.order_by(), "project", at).values_list(
            "pk", "spend_mtd", "monthly_budget_usd", "organization__alert_thresholds"
        )
        keep = [
            pk
            for pk, spent, budget, thresholds in rows
            if budget_state(spent, budget, split_thresholds(thresholds), at) == self.value()
        ]
        return queryset.filter(project__in=keep)


@admin.register(ApiKey)
class ApiKeyAdmin(keys_admin.ApiKeyAdmin):
    """The key page adds the key's billed spend this month beside its last use; the list
    filters keys by their project's budget state."""

    list_filter = [*keys_admin.ApiKeyAdmin.list_filter, KeyBudgetStateFilter]

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        # Last use moves next to the spend (from “Ownership and lifetime”).
        fieldsets = [
            (name, {**options, "fields": [f for f in options["fields"] if f != "last_used_at_display"]})
            for name, options in fieldsets
        ]
        return [*fieldsets, ("Usage", {"fields": ["spend_this_month", "last_used_at_display"]})]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "spend_this_month"] if obj is not None else fields

    @admin.display(description="billed spend this month")
    def spend_this_month(self, key):
        at = now()
        total = ApiKey.objects.filter(pk=key.pk).annotate(spend=spend_columns.billed_in_month("key", at))
        return charts.usd(total.values_list("spend", flat=True).get())


# Model prices, budget alerts and the estimate / reconciliation pages.
from . import price_admin  # noqa: E402,F401
