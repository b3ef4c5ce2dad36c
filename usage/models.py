"""Usage and cost buckets from OpenAI's Usage and Costs APIs, and each organization's
ingestion state.

A bucket row is one result of one daily bucket, as the API reports it. Upstream ids
(`proj_…`, `key_…`, `user-…`) are always kept as strings; the local project and key are
linked when the id is registered here and left empty ("unregistered") when it is not —
such rows are never dropped. The group-by columns store "" (never NULL) when the API did
not group by them, so the unique constraint on the natural key holds: re-ingesting a
window finds the same rows (usage/ingest.py).
"""

from datetime import timedelta

from django.db import models
from django.utils.timezone import now

from accounts.models import Notification, Organization, Project
from console.dates import IndexedDatesQuerySet
from keys.models import ApiKey


class Endpoint(models.TextChoices):
    """The Usage API endpoints ingested (`/v1/organization/usage/<value>`)."""

    COMPLETIONS = "completions", "Completions"
    EMBEDDINGS = "embeddings", "Embeddings"
    MODERATIONS = "moderations", "Moderations"
    IMAGES = "images", "Images"
    AUDIO_SPEECHES = "audio_speeches", "Audio speeches"
    AUDIO_TRANSCRIPTIONS = "audio_transcriptions", "Audio transcriptions"
    VECTOR_STORES = "vector_stores", "Vector stores"
    CODE_INTERPRETER_SESSIONS = "code_interpreter_sessions", "Code interpreter sessions"


class UsageBucket(models.Model):
    """One grouped result of one daily usage bucket."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="usage_buckets")
    project = models.ForeignKey(Project, models.SET_NULL, null=True, blank=True, related_name="usage_buckets")
    key = models.ForeignKey(
        ApiKey, models.SET_NULL, null=True, blank=True, related_name="usage_buckets", verbose_name="API key"
    )
    endpoint = models.CharField(max_length=40, choices=Endpoint.choices)
    start_time = models.DateTimeField("bucket start")
    end_time = models.DateTimeField("bucket end")
    # Upstream ids, "" when the result was not grouped by them (or the API gave null).
    upstream_project_id = models.CharField("upstream project id", max_length=100, blank=True, default="")
    upstream_key_id = models.CharField("upstream key id", max_length=100, blank=True, default="")
    upstream_user_id = models.CharField("upstream user id", max_length=100, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    # The counts the result objects carry; NULL where an endpoint does not report one.
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    input_cached_tokens = models.BigIntegerField(null=True, blank=True)
    input_audio_tokens = models.BigIntegerField(null=True, blank=True)
    output_audio_tokens = models.BigIntegerField(null=True, blank=True)
    num_model_requests = models.BigIntegerField(null=True, blank=True)
    images = models.BigIntegerField(null=True, blank=True)
    characters = models.BigIntegerField(null=True, blank=True)
    seconds = models.BigIntegerField(null=True, blank=True)
    usage_bytes = models.BigIntegerField(null=True, blank=True)
    num_sessions = models.BigIntegerField(null=True, blank=True)
    ingested_at = models.DateTimeField(default=now)

    # The list's date hierarchy by index probes, not a scan (console/dates.py).
    objects = IndexedDatesQuerySet.as_manager()

    # The unique natural key, and the value columns an upsert compares and rewrites.
    NATURAL_KEY = (
        "organization",
        "endpoint",
        "start_time",
        "upstream_project_id",
        "upstream_key_id",
        "upstream_user_id",
        "model",
    )
    COUNTS = (
        "input_tokens",
        "output_tokens",
        "input_cached_tokens",
        "input_audio_tokens",
        "output_audio_tokens",
        "num_model_requests",
        "images",
        "characters",
        "seconds",
        "usage_bytes",
        "num_sessions",
    )
    VALUES = ("project", "key", "end_time", *COUNTS)

    # An organization's history: deleted with it, never on its own (console/admin_base.py).
    deleted_with_parent = True

    class Meta:
        verbose_name = "usage bucket"
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "endpoint",
                    "start_time",
                    "upstream_project_id",
                    "upstream_key_id",
                    "upstream_user_id",
                    "model",
                ],
                name="usage_usagebucket_natural_key",
            ),
        ]
        indexes = [
            # The admin list (newest first) and its date hierarchy.
            models.Index(fields=["-start_time"], name="usage_usagebucket_recent"),
            # A key's usage (key page, last_used_at) and a project's.
            models.Index(fields=["key", "-start_time"], name="usage_usagebucket_key_recent"),
            models.Index(fields=["project", "-start_time"], name="usage_usagebucket_proj_recent"),
            # The admin list's full ordering (a page is an index range, not a sort of the
            # newest day's rows) and its model filter's values (usage/admin.py).
            models.Index(
                fields=["-start_time", "endpoint", "upstream_project_id", "upstream_key_id", "model"],
                name="usage_usagebucket_list_order",
            ),
            models.Index(fields=["model"], name="usage_usagebucket_model"),
            # The reconciliation's sums per day, organization, project and model
            # (usage/reconcile.py): an index-only scan in the GROUP BY's order, so 300,000
            # rows are summed as they are read, without a sort or the table's heap. The
            # counts are key columns, not INCLUDE ones, which SQLite (the demo) lacks.
            models.Index(
                fields=[
                    "start_time",
                    "organization",
                    "upstream_project_id",
                    "model",
                    "input_tokens",
                    "input_cached_tokens",
                    "output_tokens",
                ],
                name="usage_usagebucket_reconcile",
            ),
        ]

    def __str__(self):
        return f"{self.get_endpoint_display()} {self.start_time:%Y-%m-%d} {self.model or '—'}"

    def is_registered(self):
        """Is the upstream key (or, for ungrouped-by-key rows, project) known here?"""
        if self.upstream_key_id:
            return self.key_id is not None
        return self.project_id is not None or not self.upstream_project_id


class CostBucket(models.Model):
    """One grouped result of one daily costs bucket."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="cost_buckets")
    project = models.ForeignKey(Project, models.SET_NULL, null=True, blank=True, related_name="cost_buckets")
    key = models.ForeignKey(
        ApiKey, models.SET_NULL, null=True, blank=True, related_name="cost_buckets", verbose_name="API key"
    )
    start_time = models.DateTimeField("bucket start")
    end_time = models.DateTimeField("bucket end")
    upstream_project_id = models.CharField("upstream project id", max_length=100, blank=True, default="")
    upstream_key_id = models.CharField("upstream key id", max_length=100, blank=True, default="")
    line_item = models.CharField(max_length=200, blank=True, default="")
    # The API's float, kept as the decimal it printed (usage/ingest.py: to_amount).
    amount = models.DecimalField(max_digits=24, decimal_places=10)
    currency = models.CharField(max_length=10, default="usd")
    ingested_at = models.DateTimeField(default=now)

    # The list's date hierarchy by index probes, not a scan (console/dates.py).
    objects = IndexedDatesQuerySet.as_manager()

    NATURAL_KEY = ("organization", "start_time", "upstream_project_id", "upstream_key_id", "line_item")
    VALUES = ("project", "key", "end_time", "amount", "currency")

    deleted_with_parent = True

    class Meta:
        verbose_name = "cost bucket"
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "start_time", "upstream_project_id", "upstream_key_id", "line_item"],
                name="usage_costbucket_natural_key",
            ),
        ]
        indexes = [
            models.Index(fields=["-start_time"], name="usage_costbucket_recent"),
            models.Index(fields=["key", "-start_time"], name="usage_costbucket_key_recent"),
            models.Index(fields=["project", "-start_time"], name="usage_costbucket_proj_recent"),
            models.Index(
                fields=["-start_time", "upstream_project_id", "upstream_key_id", "line_item"],
                name="usage_costbucket_list_order",
            ),
            models.Index(fields=["line_item"], name="usage_costbucket_line_item"),
        ]

    def __str__(self):
        return f"{self.start_time:%Y-%m-%d} {self.line_item or '—'} {self.amount} {self.currency}"


class IngestState(models.Model):
    """Where one organization's ingestion stands. One organization's failure is recorded
    here, on that organization, and never stops the others.

    `next_attempt_at` is when a scheduled run may try this organization again: None or
    past means now. `last_error` is scrubbed (no key fragment)."""

    organization = models.OneToOneField(Organization, models.CASCADE, related_name="ingest_state")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # The end (exclusive) of the last window ingested completely.
    synced_until = models.DateTimeField(null=True, blank=True)
    last_outcome = models.CharField(max_length=30, blank=True)
    last_error = models.CharField(max_length=500, blank=True, help_text="Scrubbed: no key fragment.")
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The last run (successful or not): how long it took and what it did, summed over the
    # endpoints — {"buckets", "results", "created", "updated", "unchanged"}.
    last_duration_ms = models.PositiveIntegerField("last run took (ms)", null=True, blank=True)
    last_counts = models.JSONField("last run's counts", default=dict, blank=True)

    deleted_with_parent = True

    class Meta:
        verbose_name = "ingest state"
        ordering = ["organization__name"]

    def __str__(self):
        return f"{self.organization}: {self.last_outcome or 'never run'}"

    def is_due(self, now):
        return self.next_attempt_at is None or self.next_attempt_at <= now

    def is_failing(self):
        return self.consecutive_failures > 0

    def backoff(self, retry_after, base_seconds, max_seconds):
        """How long to wait after the current run of failures: exponential in
        `consecutive_failures` up to `max_seconds`, and never less than the API's
        retry-after (a minimum)."""
        exp = base_seconds * 2 ** max(self.consecutive_failures - 1, 0)
        return timedelta(seconds=max(min(exp, max_seconds), retry_after or 0))


class ModelPrice(models.Model):
    """What a model costs per million tokens from a date on (seeded from
    usage/data/model_prices.csv; console admins edit it). The estimator takes the newest
    row effective on the day it prices."""

    model = models.CharField(max_length=200)
    effective_date = models.DateField()
    input_per_1m = models.DecimalField("input (USD per 1M tokens)", max_digits=12, decimal_places=4)
    cached_input_per_1m = models.DecimalField(
        "cached input (USD per 1M tokens)", max_digits=12, decimal_places=4, null=True, blank=True
    )
    output_per_1m = models.DecimalField("output (USD per 1M tokens)", max_digits=12, decimal_places=4)
    source = models.CharField(max_length=300, blank=True, help_text="Where the price comes from.")

    class Meta:
        ordering = ["model", "-effective_date"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_date"], name="usage_modelprice_unique_model_date")
        ]

    def __str__(self):
        return f"{self.model} from {self.effective_date:%Y-%m-%d}"


class AlertKind(models.TextChoices):
    THRESHOLD = "threshold", "Threshold crossed"
    FORECAST = "forecast", "Forecast to exceed"


class BudgetAlert(models.Model):
    """One budget alert per scope (organization, or one of its projects), kind, threshold
    and month. The unique constraints make a second one impossible, however many workers
    evaluate at once; the notification it raised carries its delivery."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="budget_alerts")
    project = models.ForeignKey(Project, models.CASCADE, null=True, blank=True, related_name="budget_alerts")
    kind = models.CharField(max_length=20, choices=AlertKind.choices, default=AlertKind.THRESHOLD)
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the budget.")
    month = models.DateField(help_text="First day of the month the alert is about.")
    spend_usd = models.DecimalField("spend (USD)", max_digits=14, decimal_places=2)
    budget_usd = models.DecimalField("budget (USD)", max_digits=12, decimal_places=2)
    estimated = models.BooleanField(default=False, help_text="Spend includes estimated days.")
    created = models.DateTimeField(default=now)
    notification = models.ForeignKey(Notification, models.PROTECT, null=True, blank=True, related_name="+")

    deleted_with_parent = True

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "kind", "threshold", "month"],
                condition=models.Q(project__isnull=True),
                name="usage_budgetalert_once_per_org",
            ),
            models.UniqueConstraint(
                fields=["project", "kind", "threshold", "month"],
                condition=models.Q(project__isnull=False),
                name="usage_budgetalert_once_per_project",
            ),
        ]

    def __str__(self):
        scope = self.project or self.organization
        return f"{scope}: {self.threshold}% of {self.month:%B %Y}"
