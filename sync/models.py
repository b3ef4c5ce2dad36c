"""What the organization sync (sync/sync.py) mirrors from OpenAI's Administration API and
where it stands.

- SyncState: one organization's last run (when, how long, counts, the error), its backoff
  and where its audit-log reading got to.
- UpstreamKey: every key the organization has upstream (project, service-account and
  admin keys), with owner, project, created and last used. `key` links the registered
  key it matched; a row without one is **unmanaged** (upstream, secret unknown here).
  `gone_at` is set when it disappeared upstream.
- UpstreamServiceAccount: each project's service accounts.
- SpendAlert: the organization's and its projects' spend alerts as OpenAI has them;
  `published_percent` marks the ones the console published from its budget.
- UpstreamEvent: audit-log events already read (deduplicated by their upstream id), and
  the KeyEvent each one became, if any.

Never a secret: upstream keys carry a hint built from the API's redacted value.
"""

from datetime import timedelta

from django.db import models
from django.utils.timezone import now

from accounts.models import Organization, Project
from keys.models import ApiKey, KeyEvent


class SyncState(models.Model):
    """Where one organization's sync stands. A failure is recorded here, on that
    organization, and never stops the others. `last_error` is scrubbed."""

    organization = models.OneToOneField(Organization, models.CASCADE, related_name="sync_state")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    last_outcome = models.CharField(max_length=30, blank=True)
    last_error = models.CharField(max_length=500, blank=True, help_text="Scrubbed: no key fragment.")
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The last run's counts: created, updated, unchanged, unmanaged, deleted_upstream, orphaned…
    counts = models.JSONField(default=dict, blank=True)
    requests = models.PositiveIntegerField(default=0, help_text="Requests the last run sent.")
    # Audit-log events up to here (their effective_at) have been read.
    audit_log_read_until = models.DateTimeField(null=True, blank=True)

    deleted_with_parent = True

    class Meta:
        verbose_name = "sync state"
        ordering = ["organization__name"]

    def __str__(self):
        return f"{self.organization}: {self.last_outcome or 'never synced'}"

    def is_due(self, now):
        return self.next_attempt_at is None or self.next_attempt_at <= now

    def backoff(self, retry_after, base_seconds, max_seconds):
        """Exponential in consecutive_failures up to max_seconds, never under retry-after."""
        exp = base_seconds * 2 ** max(self.consecutive_failures - 1, 0)
        return timedelta(seconds=max(min(exp, max_seconds), retry_after or 0))


class UpstreamKeyKind(models.TextChoices):
    PROJECT = "project", "Project key"
    SERVICE_ACCOUNT = "service_account", "Service-account key"
    ADMIN = "admin", "Admin key"


class UpstreamKeyQuerySet(models.QuerySet):
    def present(self):
        return self.filter(gone_at__isnull=True)

    def unmanaged(self):
        """Keys that exist upstream and are registered nowhere here."""
        return self.filter(gone_at__isnull=True, key__isnull=True)


class UpstreamKey(models.Model):
    organization = models.ForeignKey(Organization, models.CASCADE, related_name="upstream_keys")
    project = models.ForeignKey(Project, models.CASCADE, null=True, blank=True, related_name="upstream_keys")
    key = models.ForeignKey(
        ApiKey, models.SET_NULL, null=True, blank=True, related_name="upstream_records", verbose_name="registered key"
    )
    upstream_id = models.CharField("upstream key id", max_length=100)
    upstream_project_id = models.CharField("upstream project id", max_length=100, blank=True)
    kind = models.CharField(max_length=20, choices=UpstreamKeyKind.choices)
    name = models.CharField(max_length=200, blank=True)
    hint = models.CharField(max_length=40, blank=True, help_text="From the API's redacted value.")
    owner_type = models.CharField(max_length=20, blank=True)
    owner_id = models.CharField(max_length=100, blank=True)
    owner_label = models.CharField("owner", max_length=200, blank=True)
    owner_has_access = models.BooleanField(default=True)
    created_at = models.DateTimeField("created upstream", null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField(default=now)
    gone_at = models.DateTimeField(null=True, blank=True, help_text="When the sync found it gone upstream.")

    objects = UpstreamKeyQuerySet.as_manager()

    # The columns a sync compares and rewrites.
    VALUES = (
        "project_id",
        "key_id",
        "upstream_project_id",
        "kind",
        "name",
        "hint",
        "owner_type",
        "owner_id",
        "owner_label",
        "owner_has_access",
        "created_at",
        "last_used_at",
        "gone_at",
    )

    deleted_with_parent = True

    class Meta:
        verbose_name = "upstream key"
        constraints = [
            models.UniqueConstraint(fields=["organization", "upstream_id"], name="sync_upstreamkey_unique_id")
        ]
        indexes = [models.Index(fields=["organization", "key"], name="sync_upstreamkey_org_key")]

    def __str__(self):
        return f"{self.name or self.upstream_id} ({self.hint})" if self.hint else (self.name or self.upstream_id)

    def is_unmanaged(self):
        return self.key_id is None and self.gone_at is None


class UpstreamServiceAccount(models.Model):
    project = models.ForeignKey(Project, models.CASCADE, related_name="upstream_service_accounts")
    upstream_id = models.CharField(max_length=100)
    name = models.CharField(max_length=200, blank=True)
    role = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(null=True, blank=True)

    VALUES = ("name", "role", "created_at")

    deleted_with_parent = True

    class Meta:
        verbose_name = "upstream service account"
        constraints = [models.UniqueConstraint(fields=["project", "upstream_id"], name="sync_serviceaccount_unique_id")]

    def __str__(self):
        return self.name or self.upstream_id


class SpendAlert(models.Model):
    """One spend alert as OpenAI has it (organization-wide when `project` is empty)."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="spend_alerts")
    project = models.ForeignKey(Project, models.CASCADE, null=True, blank=True, related_name="spend_alerts")
    upstream_id = models.CharField(max_length=100)
    threshold_cents = models.PositiveBigIntegerField("threshold (cents)")
    currency = models.CharField(max_length=10, default="USD")
    interval = models.CharField(max_length=20, default="month")
    recipients = models.TextField(blank=True, help_text="Comma-separated.")
    # Set when the console published it from a budget: the budget's percentage.
    published_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    synced_at = models.DateTimeField(default=now)

    VALUES = ("threshold_cents", "currency", "interval", "recipients")

    deleted_with_parent = True

    class Meta:
        verbose_name = "spend alert"
        constraints = [
            models.UniqueConstraint(fields=["organization", "upstream_id"], name="sync_spendalert_unique_id")
        ]

    def __str__(self):
        scope = self.project.name if self.project_id else "organization"
        return f"{scope}: ${self.threshold_cents / 100:,.2f} per {self.interval}"


class UpstreamEvent(models.Model):
    """An audit-log event already read: its upstream id makes a re-read a no-op."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="upstream_events")
    upstream_id = models.CharField(max_length=100)
    type = models.CharField(max_length=60)
    effective_at = models.DateTimeField()
    actor_label = models.CharField(max_length=200, blank=True)
    upstream_project_id = models.CharField(max_length=100, blank=True)
    object_id = models.CharField("upstream object id", max_length=100, blank=True)
    key_event = models.ForeignKey(KeyEvent, models.SET_NULL, null=True, blank=True, related_name="+")

    deleted_with_parent = True

    class Meta:
        verbose_name = "upstream audit event"
        constraints = [
            models.UniqueConstraint(fields=["organization", "upstream_id"], name="sync_upstreamevent_unique_id")
        ]
        indexes = [models.Index(fields=["organization", "-effective_at"], name="sync_upstreamevent_recent")]

    def __str__(self):
        return f"{self.effective_at:%Y-%m-%d %H:%M} {self.type} {self.object_id}"


class SyncedOrganization(Organization):
    """The organizations as the sync sees them (admin page: state, budgets beside spend
    alerts, "Sync now" and "Publish budget as spend alert")."""

    class Meta:
        proxy = True
        verbose_name = "organization sync"
        verbose_name_plural = "organization sync"
