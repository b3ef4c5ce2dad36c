"""The OpenAI platform hierarchy: Organization → Project, usage tiers, and the audit log."""

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator, validate_email
from django.db import models
from django.utils.timezone import now

from console import destinations
from console.leakguard import refuse_key_shaped, refuse_unsafe_multiline_text, refuse_unsafe_text
from console.request_origin import current_ip

org_id_validator = RegexValidator(
    r"^org-[A-Za-z0-9]{8,64}$",
    "An OpenAI organization id looks like org-AbC123… (org- followed by letters and digits).",
)
project_id_validator = RegexValidator(
    r"^proj_[A-Za-z0-9]{8,64}$",
    "An OpenAI project id looks like proj_AbC123… (proj_ followed by letters and digits).",
)
non_negative = MinValueValidator(Decimal("0"), "A budget cannot be negative.")
at_least_one_day = MinValueValidator(1, "A rotation policy is at least one day.")


def validate_email_list(value):
    for address in split_emails(value):
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(f"“{address}” is not a valid email address.") from None


def split_thresholds(value):
    return [int(part) for part in (value or "").replace(" ", "").split(",") if part]


def validate_thresholds(value):
    try:
        percents = split_thresholds(value)
    except ValueError:
        raise ValidationError("Thresholds are whole percentages separated by commas, e.g. 50,80,100.") from None
    if not percents:
        raise ValidationError("Give at least one threshold, e.g. 100.")
    if any(p < 1 or p > 1000 for p in percents):
        raise ValidationError("Each threshold is a percentage between 1 and 1000.")
    if percents != sorted(set(percents)):
        raise ValidationError("List each threshold once, in increasing order.")


def split_emails(value):
    return [a.strip() for a in (value or "").replace(";", ",").replace("\n", ",").split(",") if a.strip()]


class URLField(models.URLField):
    """A URL field whose form assumes https:// when the scheme is left out (Django 6's
    default, adopted now)."""

    def formfield(self, **kwargs):
        return super().formfield(**{"assume_scheme": "https", **kwargs})


class Tier(models.Model):
    """An OpenAI usage tier. Rate limits belong to a project, never to a key: more keys in
    one project do not raise them."""

    name = models.CharField(max_length=50, unique=True)
    requests_per_minute = models.PositiveIntegerField(help_text="RPM the tier allows a project.")
    tokens_per_minute = models.PositiveBigIntegerField(help_text="TPM the tier allows a project.")
    position = models.PositiveSmallIntegerField(default=0, help_text="Order in lists, lowest first.")

    class Meta:
        ordering = ["position", "name"]

    def __str__(self):
        return f"{self.name} ({self.requests_per_minute:,} RPM / {self.tokens_per_minute:,} TPM)"


class OrganizationQuerySet(models.QuerySet):
    def by_slug(self, slug):
        """The organization with this slug, or None."""
        return self.filter(slug=slug).first()


class Organization(models.Model):
    name = models.CharField(max_length=200, validators=[refuse_key_shaped, refuse_unsafe_text])
    slug = models.SlugField(max_length=100, unique=True, validators=[refuse_key_shaped])
    openai_org_id = models.CharField(
        "OpenAI organization id", max_length=80, blank=True, validators=[refuse_key_shaped, org_id_validator]
    )
    rotation_policy_days = models.PositiveIntegerField(
        default=90, validators=[at_least_one_day], help_text="Keys older than this are overdue for rotation."
    )
    monthly_budget_usd = models.DecimalField(
        "monthly budget (USD)", max_digits=12, decimal_places=2, null=True, blank=True, validators=[non_negative]
    )
    alert_emails = models.TextField(
        blank=True,
        validators=[refuse_key_shaped, refuse_unsafe_multiline_text, validate_email_list],
        help_text="Comma-separated addresses for alerts.",
    )
    alert_webhook_url = URLField(
        blank=True,
        validators=[refuse_key_shaped, refuse_unsafe_text, destinations.validate_webhook_url],
        help_text="https:// only; a public host, or one on CONSOLE_ALLOWED_WEBHOOK_HOSTS.",
    )
    alert_thresholds = models.CharField(
        "budget alert thresholds (%)",
        max_length=50,
        default="50,80,100",
        validators=[validate_thresholds],
        help_text="Percentages of a monthly budget that send an alert once per month, e.g. 50,80,100.",
    )
    created = models.DateTimeField(default=now)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["openai_org_id"],
                condition=~models.Q(openai_org_id=""),
                name="accounts_organization_unique_openai_org_id",
                violation_error_message="Another organization already has this OpenAI organization id.",
            ),
        ]

    def __str__(self):
        return self.name

    def alert_email_list(self):
        return split_emails(self.alert_emails)

    def alert_threshold_list(self):
        return split_thresholds(self.alert_thresholds)

    def audit_details(self):
        return {"slug": self.slug}


class Environment(models.TextChoices):
    PRODUCTION = "production", "Production"
    STAGING = "staging", "Staging"
    DEVELOPMENT = "development", "Development"
    RESEARCH = "research", "Research"


class ProjectQuerySet(models.QuerySet):
    def by_name_or_id(self, lookup):
        """The project named `lookup`, or whose OpenAI id (proj_…) it is, or None. Used on
        one organization's projects (`org.projects.by_name_or_id(…)`)."""
        return self.filter(models.Q(name=lookup) | models.Q(openai_project_id=lookup)).first()


class Project(models.Model):
    organization = models.ForeignKey(Organization, models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200, validators=[refuse_key_shaped, refuse_unsafe_text])
    openai_project_id = models.CharField(
        "OpenAI project id", max_length=80, blank=True, validators=[refuse_key_shaped, project_id_validator]
    )
    environment = models.CharField(max_length=20, choices=Environment.choices, default=Environment.DEVELOPMENT)
    tier = models.ForeignKey(Tier, models.PROTECT, null=True, blank=True, related_name="projects")
    monthly_budget_usd = models.DecimalField(
        "monthly budget (USD)", max_digits=12, decimal_places=2, null=True, blank=True, validators=[non_negative]
    )
    rotation_policy_days = models.PositiveIntegerField(
        "rotation policy override (days)",
        null=True,
        blank=True,
        validators=[at_least_one_day],
        help_text="Leave blank to use the organization's policy.",
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    # Limits the API reported in x-ratelimit-limit-* on the last successful probe.
    observed_rpm = models.PositiveIntegerField("observed RPM", null=True, blank=True, editable=False)
    observed_tpm = models.PositiveBigIntegerField("observed TPM", null=True, blank=True, editable=False)
    observed_limits_at = models.DateTimeField(null=True, blank=True, editable=False)
    created = models.DateTimeField(default=now)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["organization__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["openai_project_id"],
                condition=~models.Q(openai_project_id=""),
                name="accounts_project_unique_openai_project_id",
                violation_error_message="Another project already has this OpenAI project id.",
            ),
            models.UniqueConstraint(
                fields=["organization", "name"],
                name="accounts_project_unique_name_per_org",
                violation_error_message="This organization already has a project with this name.",
            ),
        ]

    def __str__(self):
        return f"{self.organization.name} / {self.name}" if self.organization_id else self.name

    def audit_details(self):
        return {"organization": self.organization.slug if self.organization_id else None}

    def effective_rotation_days(self):
        return self.rotation_policy_days or self.organization.rotation_policy_days

    def synced_rpm(self):
        """The project's request limit as the organization sync last read it: the most
        restrictive per-model `max_requests_per_1_minute` (a probe, GET /v1/models, uses
        no model, so the lowest limit is the one it can never exceed), or None when
        nothing was synced. Reads `rate_limits.all()`, so a prefetch serves it."""
        if self.pk is None:
            return None
        return min((r.max_requests_per_1_minute for r in self.rate_limits.all()), default=None)

    def configured_rpm(self):
        """The limit the console expects: the synced per-model limits, else the tier's."""
        synced = self.synced_rpm()
        if synced is not None:
            return synced
        return self.tier.requests_per_minute if self.tier else None

    def tier_mismatch(self):
        """(configured RPM, observed RPM) when the API reports a different request limit
        than the project's synced rate limits (or, without them, its tier), else None."""
        configured = self.configured_rpm()
        if configured is None or self.observed_rpm is None:
            return None
        if self.observed_rpm != configured:
            return (configured, self.observed_rpm)
        return None

    def probe_rpm_budget(self):
        """Requests per minute probes may spend on this project, across all workers."""
        rpm = self.configured_rpm() or 500
        return max(rpm * settings.PROBE_PROJECT_RPM_SHARE, 1.0)


class ProjectRateLimit(models.Model):
    """A project's real per-model rate limits, mirrored from OpenAI's Administration API
    (GET /v1/organization/projects/{id}/rate_limits) by the organization sync."""

    project = models.ForeignKey(Project, models.CASCADE, related_name="rate_limits")
    upstream_id = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=100)
    max_requests_per_1_minute = models.PositiveIntegerField("Rate limit: requests per minute")
    max_tokens_per_1_minute = models.PositiveBigIntegerField("Rate limit: tokens per minute")
    max_images_per_1_minute = models.PositiveIntegerField("Rate limit: images per minute", null=True, blank=True)
    max_audio_megabytes_per_1_minute = models.PositiveIntegerField(
        "Rate limit: audio MB per minute", null=True, blank=True
    )
    max_requests_per_1_day = models.PositiveBigIntegerField("Rate limit: requests per day", null=True, blank=True)
    batch_1_day_max_input_tokens = models.PositiveBigIntegerField(
        "Rate limit: batch input tokens per day", null=True, blank=True
    )
    synced_at = models.DateTimeField(default=now)

    deleted_with_parent = True

    class Meta:
        ordering = ["model"]
        constraints = [models.UniqueConstraint(fields=["project", "model"], name="accounts_ratelimit_unique_model")]

    def __str__(self):
        return f"{self.project}: {self.model}"


class Notification(models.Model):
    """The alert outbox: one row per thing worth telling an organization (a budget
    threshold crossed, a key falling due, a leak). The unique `dedupe_key` makes "never
    twice" a database fact; delivery (accounts/notifications.py) retries email and webhook
    separately and records each. Never a secret in any field."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="notifications")
    dedupe_key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=30, db_index=True)
    subject = models.CharField(max_length=200)
    text = models.TextField()
    created = models.DateTimeField(default=now, db_index=True)
    # Recipients as they were when the alert was raised.
    email_to = models.TextField(blank=True)
    webhook_url = models.URLField(max_length=500, blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    gave_up_at = models.DateTimeField(null=True, blank=True)

    deleted_with_parent = True

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(gave_up_at__isnull=True, next_attempt_at__isnull=False),
                name="accounts_notification_pending",
            )
        ]

    def __str__(self):
        return self.subject


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("Audit events are append-only.")

    def delete(self):
        raise TypeError("Audit events are append-only.")


class AuditEvent(models.Model):
    """Append-only record of who did what. `details` never holds secret material: only
    hints, ids and field names; "ip" is the client's address when the event was made
    while serving a request (commands and tasks have none: their actor says which)."""

    at = models.DateTimeField(default=now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    actor_label = models.CharField(max_length=150, help_text="Username, or the command or task that acted.")
    action = models.CharField(max_length=50, db_index=True)
    target_type = models.CharField(max_length=50)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=300)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="accounts_audit_target")]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.target_repr}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are append-only.")

    @classmethod
    def record(cls, actor, action, target, **details):
        """Append an event. `actor` is a User or a label such as "cli:add_key". `target`
        is a model instance, or None when there is none (a failed login for a username
        that does not exist)."""
        event = cls.build(actor, action, target, **details)
        event.save()
        return event

    @classmethod
    def record_many(cls, events):
        """Append events made with `build`, in bulk (deleting an organization audits every
        key it takes along: thousands of rows)."""
        return cls.objects.bulk_create(events, batch_size=1000)

    @classmethod
    def build(cls, actor, action, target, **details):
        """An unsaved event; see `record`. Made while serving a request, its details hold
        the client's address as "ip" (console/request_origin.py) unless the caller gave one."""
        ip = current_ip()
        if ip and "ip" not in details:
            details["ip"] = ip
        user = actor if getattr(actor, "pk", None) and hasattr(actor, "get_username") else None
        label = user.get_username() if user else str(actor or "system")
        return cls(
            actor=user,
            actor_label=label,
            action=action,
            target_type=target._meta.model_name if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            target_repr=str(target)[:300] if target is not None else "",
            details=details,
        )


class Heartbeat(models.Model):
    """The last time a background process showed it was alive (accounts/heartbeat.py):
    "beat" when a worker ran a sweep beat scheduled, "worker:<hash>" per worker host
    (its name hashed: /readyz counts workers, it never names one). In the database
    because every process shares it, whatever the cache (the embedded default's cache is
    per process). `value` carries a figure with the beat, e.g. the last sweep's seconds;
    `claimed` and `queued` how many keys that sweep claimed and handed to workers (fewer
    queued than claimed: the broker failed part-way and the rest were left due)."""

    name = models.CharField(max_length=80, unique=True)
    seen_at = models.DateTimeField()
    value = models.FloatField(null=True, blank=True)
    claimed = models.PositiveIntegerField(null=True, blank=True)
    queued = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self):
        return f"{self.name} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"


class JobKind(models.TextChoices):
    SYNC = "sync", "Organization sync"
    INGEST = "ingest", "Usage ingest"


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class JobQuerySet(models.QuerySet):
    def for_user(self, user):
        """The jobs `user` may see: their own; every job for a superuser."""
        if user.is_superuser:
            return self
        return self.filter(requested_by=user) if user.pk else self.none()


class Job(models.Model):
    """Long work started from the admin (an organization sync, a usage ingest window)
    that a Celery worker runs and its progress page follows (accounts/jobs.py,
    accounts/job_admin.py). In the database, because the web process that shows the page,
    the worker that runs the job and beat are separate processes.

    `parameters` holds what the task needs besides the organization (the window's dates):
    never a secret. `summary` is what the page shows as a table when the job is done:
    {"columns": [...], "rows": [[...], ...], "facts": [[label, value], ...]}. `error` is
    scrubbed (console.upstream.scrub) before it is stored. `updated` is when the job last
    showed progress: a queued or running job silent for longer than JOB_STALE_SECONDS is
    stuck (no worker, or one that died)."""

    kind = models.CharField(max_length=20, choices=JobKind.choices)
    organization = models.ForeignKey(Organization, models.SET_NULL, null=True, blank=True, related_name="jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    requested_by_label = models.CharField(max_length=150, help_text="Username when it was requested.")
    parameters = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=20, choices=JobState.choices, default=JobState.QUEUED)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(null=True, blank=True, help_text="Unknown until the work is counted.")
    step = models.CharField(max_length=200, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    return_url = models.CharField(max_length=300, blank=True, help_text="Where the page's “Back to …” link goes.")
    created = models.DateTimeField(default=now, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(default=now)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self):
        where = f" of {self.organization}" if self.organization_id else ""
        return f"{self.get_kind_display()}{where} #{self.pk}"

    def is_finished(self):
        return self.state in (JobState.SUCCEEDED, JobState.FAILED)

    def is_stale(self, at, after_seconds=None):
        """Queued or running with no sign of life for longer than JOB_STALE_SECONDS:
        no worker took it, or the one that did is gone."""
        if self.is_finished():
            return False
        seconds = settings.JOB_STALE_SECONDS if after_seconds is None else after_seconds
        return (at - self.updated).total_seconds() > seconds
