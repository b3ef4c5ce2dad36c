"""API keys (secrets encrypted at rest), probe results and per-host circuit breakers."""

import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.timezone import now

from accounts.models import Organization, Project, URLField
from console import destinations
from console.dates import IndexedDatesQuerySet
from console.leakguard import refuse_key_shaped, refuse_unsafe_text
from console.upstream import Outcome

from . import crypto, formats, states


class Kind(models.TextChoices):
    PROJECT = "project", "Project key"
    SERVICE_ACCOUNT = "service_account", "Service-account key"
    ADMIN = "admin", "Admin key"


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    AZURE = "azure", "Azure OpenAI"


# Which secret formats each (provider, kind) accepts.
ACCEPTED_FORMATS = {
    (Provider.OPENAI, Kind.PROJECT): {formats.PROJECT, formats.LEGACY},
    (Provider.OPENAI, Kind.SERVICE_ACCOUNT): {formats.SERVICE_ACCOUNT, formats.PROJECT},
    (Provider.OPENAI, Kind.ADMIN): {formats.ADMIN},
    (Provider.AZURE, Kind.PROJECT): {formats.AZURE},
    (Provider.AZURE, Kind.SERVICE_ACCOUNT): {formats.AZURE},
}


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        """Keys not revoked in the console."""
        return self.filter(revoked_at__isnull=True)

    def in_organization(self, organization):
        return self.filter(organization=organization)

    def with_rotation(self, now, sources=states.LIVE):
        """Annotated with policy_days, next_due_at, key_state and flag_<name> for each
        stale flag, computed in SQL by the rules of keys/states.py at `now`."""
        return self.annotate(policy_days=sources.policy_days, **states.expressions(sources, now))

    def in_rotation_state(self, state, now):
        return self.with_rotation(now).filter(key_state=states.RotationState(state).value)

    def with_stale_flag(self, name, now):
        return self.with_rotation(now).filter(**{states.flag_field(name): True})

    def rotation_counts(self, now):
        """{state: count, "flag:<name>": count} over this queryset, in one query."""
        annotated = self.with_rotation(now)
        aggregates = {
            state.value: models.Count("pk", filter=models.Q(key_state=state.value)) for state in states.RotationState
        }
        for flag in states.FlagName:
            aggregates[f"flag:{flag.value}"] = models.Count("pk", filter=models.Q(**{states.flag_field(flag): True}))
        return annotated.aggregate(**aggregates)

    def due_for_probe(self, now):
        """Active keys whose next probe time has come, or that were never scheduled: the
        sweep's candidate set (index keys_apikey_due_for_probe)."""
        return self.filter(
            models.Q(next_probe_at__lte=now) | models.Q(next_probe_at__isnull=True), revoked_at__isnull=True
        )


class ApiKey(models.Model):
    # Client-side UUID: it exists before INSERT, so it can be the encryption's AAD.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, models.CASCADE, related_name="api_keys")
    project = models.ForeignKey(
        Project,
        models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="Required for project and service-account keys; empty for admin keys.",
    )
    name = models.CharField(max_length=200, validators=[refuse_key_shaped, refuse_unsafe_text])
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.PROJECT)
    provider = models.CharField(max_length=10, choices=Provider.choices, default=Provider.OPENAI)
    # Where the secret is sent: only to hosts an operator put on CONSOLE_ALLOWED_API_HOSTS
    # (checked here, and again for every request by console/destinations.py).
    base_url = URLField(
        "base URL",
        blank=True,
        validators=[refuse_key_shaped, refuse_unsafe_text, destinations.validate_api_base_url],
        help_text="For OpenAI-compatible endpoints on CONSOLE_ALLOWED_API_HOSTS; blank uses the OpenAI API.",
    )
    azure_endpoint = URLField(
        blank=True,
        validators=[refuse_key_shaped, refuse_unsafe_text, destinations.validate_azure_endpoint],
        help_text="https://<resource>.openai.azure.com",
    )
    azure_api_version = models.CharField(max_length=40, blank=True, validators=[refuse_key_shaped, refuse_unsafe_text])

    # The secret: AES-256-GCM ciphertext (nonce ‖ body ‖ tag), the master-key version that
    # wrote it, an HMAC blind index for duplicates and a display hint. Never the plaintext.
    secret_ciphertext = models.BinaryField(editable=False)
    secret_key_version = models.PositiveSmallIntegerField(editable=False, db_index=True)
    fingerprint = models.CharField(max_length=64, editable=False)
    hint = models.CharField(max_length=40, editable=False)

    upstream_key_id = models.CharField(
        "upstream key id",
        max_length=100,
        blank=True,
        validators=[refuse_key_shaped, refuse_unsafe_text],
        help_text="key_… or svc_acct_…",
    )
    owner = models.CharField(
        max_length=200,
        blank=True,
        validators=[refuse_key_shaped, refuse_unsafe_text],
        help_text="Person or team responsible for this key.",
    )
    issued_at = models.DateTimeField(default=now)
    rotated_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Newest usage bucket end with requests for this key (usage/ingest.py); never moves back.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=now)
    # Who rotated the current secret in (a username, or the task that did it).
    rotated_by = models.CharField(max_length=150, blank=True, editable=False)
    # Flags set by the leak scan (keys/leakscan.py) and the organization sync.
    leaked_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the leak scan found this key's secret."
    )
    deleted_upstream_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the sync found the key gone upstream."
    )
    owner_left_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the sync found the owner no longer in the project."
    )

    # Probe state, written by keys/probe.py.
    last_probe_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_probe_outcome = models.CharField(max_length=30, choices=Outcome.choices, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    next_probe_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    # For the shared admin machinery (console/admin_base.py, accounts/audit.py): fields no
    # lookup, filter, search or audit record may touch; the audit log's name for this
    # model; and that deleting an organization or project audits each key it takes along.
    secret_fields = ("secret_ciphertext", "fingerprint")
    audit_name = "key"
    audit_when_cascaded = True
    # Where the secret may be sent: bound into the ciphertext (see destination_binding).
    destination_fields = ("provider", "base_url", "azure_endpoint")

    class Meta:
        verbose_name = "API key"
        # No default ordering: the sweep, the probes and the counts never need one, and at
        # 50,000 keys an implicit ORDER BY costs. The admin and commands order explicitly.
        constraints = [
            models.UniqueConstraint(fields=["fingerprint"], name="keys_apikey_unique_fingerprint"),
            models.CheckConstraint(
                condition=(
                    models.Q(kind="admin", project__isnull=True)
                    | (~models.Q(kind="admin") & models.Q(project__isnull=False))
                ),
                name="keys_apikey_admin_keys_have_no_project",
            ),
        ]
        indexes = [
            # Used by ApiKey.objects.due_for_probe() in the sweep's claim query.
            models.Index(
                fields=["next_probe_at"], condition=models.Q(revoked_at__isnull=True), name="keys_apikey_due_for_probe"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.hint})" if self.hint else self.name

    # --- the secret -------------------------------------------------------------
    def set_secret(self, raw):
        """Validate, fingerprint and encrypt `raw` for this row. Raises ValidationError
        with a message that never contains the secret. Does not save."""
        secret = formats.normalize(raw)
        try:
            fmt = formats.check_shape(secret)
        except formats.KeyFormatError as e:
            raise ValidationError({"secret": str(e)}) from None
        self.check_format_fits(fmt)
        self.fingerprint = crypto.fingerprint(secret)
        self.secret_ciphertext, self.secret_key_version = crypto.encrypt(
            secret, self.pk, binding=self.destination_binding()
        )
        self.hint = formats.hint(secret)

    def destination_binding(self):
        """The destination this key's secret may be sent to, as bound into its ciphertext:
        provider, base URL and Azure endpoint exactly as stored. Change any of them without
        pasting the secret again and the secret no longer decrypts (fails closed)."""
        return "|".join(str(getattr(self, name) or "") for name in self.destination_fields)

    def check_format_fits(self, fmt):
        accepted = ACCEPTED_FORMATS.get((self.provider, self.kind), set())
        if fmt in accepted:
            return
        if fmt == formats.ADMIN:
            msg = (
                "This is an admin key (sk-admin-…): register it on the organization as kind “Admin key”, "
                "not on a project."
            )
        elif self.kind == Kind.ADMIN:
            msg = f"An admin key must start with sk-admin-; this is {formats.DESCRIPTIONS[fmt]}."
        elif self.provider == Provider.AZURE:
            msg = f"Azure OpenAI keys are 32 hexadecimal or 84 characters; this is {formats.DESCRIPTIONS[fmt]}."
        elif fmt == formats.AZURE:
            msg = "This looks like an Azure OpenAI key: choose provider “Azure OpenAI”."
        else:
            msg = f"A {self.get_kind_display().lower()} cannot be {formats.DESCRIPTIONS[fmt]}."
        raise ValidationError({"secret": msg})

    def reveal_secret(self):
        """The plaintext, for the one upstream call that needs it. Raises
        crypto.DecryptionError if it cannot be decrypted (never returns ciphertext)."""
        return crypto.decrypt(
            self.secret_ciphertext, self.secret_key_version, self.pk, binding=self.destination_binding()
        )

    def rewrap(self, ring=None):
        """Re-encrypt under the newest master key; returns True if it changed anything.
        Writes only if the row still holds the ciphertext we read (compare-and-swap)."""
        ring = ring or crypto.keyring()
        if self.secret_key_version == ring.current:
            return False
        old_version = self.secret_key_version
        binding = self.destination_binding()
        plain = crypto.decrypt(self.secret_ciphertext, old_version, self.pk, ring=ring, binding=binding)
        ciphertext, version = crypto.encrypt(plain, self.pk, ring=ring, binding=binding)
        n = ApiKey.objects.filter(pk=self.pk, secret_key_version=old_version).update(
            secret_ciphertext=ciphertext, secret_key_version=version
        )
        return n == 1

    def make_due(self, when=None):
        """Due for a probe now: the next sweep (or an immediate enqueue) picks it up."""
        self.next_probe_at = when or now()
        ApiKey.objects.filter(pk=self.pk).update(next_probe_at=self.next_probe_at)

    def audit_details(self):
        """What the audit log says about this key besides its name: never the secret."""
        return {
            "hint": self.hint,
            "kind": self.kind,
            "provider": self.provider,
            "project": self.project_id,
            "organization": self.organization_id,
        }

    # --- validation -------------------------------------------------------------
    def clean(self):
        errors = {}
        if self.kind == Kind.ADMIN:
            if self.project_id:
                errors["project"] = "Admin keys belong to the organization: leave the project empty."
            if self.provider != Provider.OPENAI:
                errors["provider"] = "Admin keys exist only on OpenAI."
        elif not self.project_id:
            errors["project"] = "Project and service-account keys need a project."
        elif self.organization_id and self.project.organization_id != self.organization_id:
            errors["project"] = "That project belongs to another organization."
        if self.provider == Provider.AZURE:
            if not self.azure_endpoint:
                errors["azure_endpoint"] = "Azure OpenAI keys need the resource endpoint."
            if not self.azure_api_version:
                self.azure_api_version = settings.AZURE_DEFAULT_API_VERSION
        elif self.azure_endpoint:
            errors["azure_endpoint"] = "Only Azure OpenAI keys have an Azure endpoint."
        if self.expires_at and self.issued_at and self.expires_at <= self.issued_at:
            errors["expires_at"] = "A key cannot expire before it was issued."
        if errors:
            raise ValidationError(errors)

    def validate_unique(self, exclude=None):
        super().validate_unique(exclude)
        if self.fingerprint:
            holder = (
                ApiKey.objects.filter(fingerprint=self.fingerprint)
                .exclude(pk=self.pk)
                .select_related("project", "organization")
                .first()
            )
            if holder:
                where = f"project “{holder.project}”" if holder.project else f"organization “{holder.organization}”"
                raise ValidationError({"secret": f"This key is already registered as “{holder.name}” in {where}."})
            earlier = SupersededSecret.objects.filter(fingerprint=self.fingerprint).select_related("key").first()
            if earlier:
                raise ValidationError({"secret": f"This secret was an earlier secret of the key “{earlier.key.name}”."})

    # --- state ------------------------------------------------------------------
    def rotation_policy_days(self):
        if self.project is not None:
            return self.project.effective_rotation_days()
        return self.organization.rotation_policy_days

    def rotation_due_at(self):
        return (self.rotated_at or self.issued_at) + timedelta(days=self.rotation_policy_days())

    def next_rotation_due(self):
        """Pure: see keys/states.py (load the project and organization with the key)."""
        return states.next_rotation_due(self)

    def rotation_state(self, now):
        return states.rotation_state(self, now)

    def stale_flags(self, now):
        return states.stale_flags(self, now)

    def is_revoked(self):
        return self.revoked_at is not None

    def is_probe_failing(self):
        """The last probe failed, and the key is still live: a revoked key is not probed any
        more, and once the sync found it deleted upstream (deleted_upstream_at) its failures
        are expected, not the key's."""
        return (
            not self.is_revoked() and self.deleted_upstream_at is None and self.last_probe_outcome in Outcome.failures()
        )


class ProbeResult(models.Model):
    """One probe of one key in one sweep slot. The unique (key, slot) pair makes a
    redelivered task harmless: its second write is ignored."""

    key = models.ForeignKey(ApiKey, models.CASCADE, related_name="probe_results")
    slot = models.BigIntegerField(help_text="Unix time of the scheduled probe this result answers.")
    started_at = models.DateTimeField(default=now)
    duration_ms = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=1)
    outcome = models.CharField(max_length=30, choices=Outcome.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    message = models.CharField(max_length=500, blank=True, help_text="Scrubbed: no key fragment.")
    request_id = models.CharField("x-request-id", max_length=100, blank=True)
    client_request_id = models.CharField("X-Client-Request-Id", max_length=100, blank=True)
    ratelimit_limit_requests = models.BigIntegerField(null=True, blank=True)
    ratelimit_limit_tokens = models.BigIntegerField(null=True, blank=True)
    ratelimit_remaining_requests = models.BigIntegerField(null=True, blank=True)
    ratelimit_remaining_tokens = models.BigIntegerField(null=True, blank=True)
    ratelimit_reset_requests = models.CharField(max_length=30, blank=True)
    ratelimit_reset_tokens = models.CharField(max_length=30, blank=True)
    openai_organization = models.CharField(max_length=100, blank=True)
    processing_ms = models.PositiveIntegerField(null=True, blank=True)
    # The hint of the secret this probe used: rotating the key does not relabel history.
    secret_hint = models.CharField("secret probed", max_length=40, blank=True)

    # The probe-result list's date hierarchy by index probes, not a scan (console/dates.py).
    objects = IndexedDatesQuerySet.as_manager()

    # A key's history: deleted with its key, never on its own (console/admin_base.py).
    deleted_with_parent = True

    class Meta:
        # No default ordering on this hot table: the admin orders it itself.
        constraints = [models.UniqueConstraint(fields=["key", "slot"], name="keys_proberesult_unique_key_slot")]
        indexes = [
            # A key's history, newest first (key change page, reports).
            models.Index(fields=["key", "-started_at"], name="keys_proberesult_key_recent"),
            # The probe results list (newest first) and pruning by age; with the outcome
            # included, the dashboard's recent counts are an index-only scan.
            models.Index(fields=["-started_at"], include=["outcome"], name="keys_proberesult_recent"),
        ]

    def __str__(self):
        return f"{self.key_id} @ {self.started_at:%Y-%m-%d %H:%M:%S}: {self.outcome}"

    @classmethod
    def prune(cls, now, keep_days, batch_size=10_000):
        """Delete results older than `keep_days`, a batch at a time (short transactions on
        a big table). Each key keeps its last outcome on its own row. Returns the count."""
        cutoff = now - timedelta(days=keep_days)
        deleted = 0
        while True:
            ids = list(cls.objects.filter(started_at__lt=cutoff).values_list("pk", flat=True)[:batch_size])
            if not ids:
                return deleted
            deleted += cls.objects.filter(pk__in=ids).delete()[0]


class ProbeHour(models.Model):
    """How many probes had each outcome in one UTC hour (keys/probe_hours.py), so the
    dashboard's 7-day chart reads a few hundred rows, not millions of results. Each rolled
    hour also has a marker row (outcome "", probes = the hour's total)."""

    hour = models.DateTimeField()
    outcome = models.CharField(max_length=40, blank=True)
    probes = models.PositiveIntegerField()

    class Meta:
        verbose_name = "probe outcomes per hour"
        verbose_name_plural = "probe outcomes per hour"
        constraints = [models.UniqueConstraint(fields=["hour", "outcome"], name="keys_probehour_unique_hour_outcome")]

    def __str__(self):
        return f"{self.hour:%Y-%m-%d %H:00} {self.outcome or 'all'}: {self.probes}"


class ProbeTransition(models.Model):
    """A probe result older than PROBE_RESULTS_KEEP_DAYS whose outcome differed from the
    key's previous one (the key's first result counts): the history kept once the full
    rows are pruned (keys/retention.py). Never a secret: the scrubbed fields of the row."""

    key = models.ForeignKey(ApiKey, models.CASCADE, related_name="probe_transitions")
    slot = models.BigIntegerField()
    started_at = models.DateTimeField()
    outcome = models.CharField(max_length=30, choices=Outcome.choices)
    previous_outcome = models.CharField(max_length=30, choices=Outcome.choices, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    message = models.CharField(max_length=500, blank=True, help_text="Scrubbed: no key fragment.")
    request_id = models.CharField("x-request-id", max_length=100, blank=True)
    secret_hint = models.CharField("secret probed", max_length=40, blank=True)

    deleted_with_parent = True

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "slot"], name="keys_probetransition_unique_key_slot")]
        indexes = [models.Index(fields=["key", "-started_at"], name="keys_transition_key_recent")]

    def __str__(self):
        return f"{self.key_id} @ {self.started_at:%Y-%m-%d %H:%M:%S}: {self.previous_outcome or '—'} → {self.outcome}"


class ProbeDaily(models.Model):
    """One key's probes on one UTC day, rolled up before the day's rows are pruned
    (keys/retention.py): how many, how many failed, and the median and 95th percentile
    duration (continuous percentiles, as PostgreSQL's percentile_cont)."""

    key = models.ForeignKey(ApiKey, models.CASCADE, related_name="probe_days")
    day = models.DateField()
    probes = models.PositiveIntegerField()
    failures = models.PositiveIntegerField()
    p50_ms = models.FloatField()
    p95_ms = models.FloatField()

    deleted_with_parent = True

    class Meta:
        verbose_name = "daily probe rollup"
        constraints = [models.UniqueConstraint(fields=["key", "day"], name="keys_probedaily_unique_key_day")]

    def __str__(self):
        return f"{self.key_id} {self.day}: {self.probes} probes, {self.failures} failed"


class KeyAction(models.TextChoices):
    REGISTERED = "registered", "Registered"
    ROTATED = "rotated", "Rotated"
    SUPERSEDED_REVOKED = "superseded_revoked", "Superseded secret revoked"
    REVOKED = "revoked", "Revoked"
    LEAKED = "leaked", "Leaked"
    DELETED_UPSTREAM = "deleted_upstream", "Deleted upstream"
    OWNER_LEFT = "owner_left", "Owner left the project"


class KeyEvent(models.Model):
    """One event in a key's life (rotation, revocation, leak, upstream change): the
    history the rotation report recomputes past states from. Never a secret."""

    key = models.ForeignKey(ApiKey, models.CASCADE, related_name="events")
    at = models.DateTimeField(default=now)
    action = models.CharField(max_length=30, choices=KeyAction.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    actor_label = models.CharField(max_length=150, help_text="Username, the task, or the upstream actor.")
    source = models.CharField(max_length=20, default="console", help_text="console, or upstream (OpenAI's audit log).")
    old_hint = models.CharField(max_length=40, blank=True)
    new_hint = models.CharField(max_length=40, blank=True)
    grace_until = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True)

    deleted_with_parent = True

    class Meta:
        indexes = [models.Index(fields=["key", "at"], name="keys_keyevent_key_at")]

    def __str__(self):
        return f"{self.key_id} @ {self.at:%Y-%m-%d %H:%M:%S}: {self.get_action_display()}"


class SupersededSecret(models.Model):
    """A key's previous secret, still encrypted (same key id and destination in its
    associated data), kept working until its grace period ends; then revoked (and
    deleted upstream where the Admin API allows) and its ciphertext wiped."""

    key = models.ForeignKey(ApiKey, models.CASCADE, related_name="superseded_secrets")
    secret_ciphertext = models.BinaryField(null=True, editable=False)
    secret_key_version = models.PositiveSmallIntegerField(null=True, editable=False)
    fingerprint = models.CharField(max_length=64, editable=False, db_index=True)
    hint = models.CharField(max_length=40, editable=False)
    upstream_key_id = models.CharField(max_length=100, blank=True)
    superseded_at = models.DateTimeField(default=now)
    grace_until = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    deleted_upstream_at = models.DateTimeField(null=True, blank=True)
    # The grace-end task's claim (keys/rotation.py end_grace): one run at a time holds a
    # row until this time; a crashed run's claim simply expires.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Set (and committed) before the upstream DELETE is sent: a run that finds it set
    # asks upstream whether the key still exists before deleting, so a crash between the
    # DELETE and the local update never deletes twice.
    upstream_delete_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Why it was not deleted upstream (no admin key, the Admin API refused, …).
    upstream_note = models.CharField(max_length=300, blank=True, editable=False)

    secret_fields = ("secret_ciphertext", "fingerprint")
    deleted_with_parent = True

    class Meta:
        indexes = [
            models.Index(
                fields=["grace_until"], condition=models.Q(revoked_at__isnull=True), name="keys_superseded_in_grace"
            )
        ]

    def __str__(self):
        return f"{self.hint} (superseded {self.superseded_at:%Y-%m-%d})"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open"


class Circuit(models.Model):
    """Circuit breaker for one API host, shared by every worker. Its state changes only
    through the breaker (keys/circuit.py) and `close()`; nobody forces one open."""

    # A key the open circuit skipped is looked at again this long after open_until.
    RECHECK_AFTER_OPEN = timedelta(seconds=1)

    host = models.CharField(max_length=255, unique=True)
    state = models.CharField(max_length=10, choices=CircuitState.choices, default=CircuitState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    open_until = models.DateTimeField(null=True, blank=True)
    last_outcome = models.CharField(max_length=30, blank=True)
    updated = models.DateTimeField(default=now)

    class Meta:
        ordering = ["host"]

    def __str__(self):
        return f"{self.host}: {self.get_state_display()}"

    def close(self, now):
        """Close the circuit by hand (the admin's “Close circuit”) and make the keys it
        skipped due at `now`, so the next sweep probes them. Returns how many keys.

        The keys it skipped wait until open_until (+ RECHECK_AFTER_OPEN), capped at one
        probe interval: the active keys on this host due after `now` and up to then are
        those, or keys that would have come due while it was open anyway."""
        from console.upstream import host_of

        open_until = self.open_until
        Circuit.objects.filter(pk=self.pk).update(
            state=CircuitState.CLOSED, consecutive_failures=0, open_until=None, updated=now
        )
        self.state, self.consecutive_failures, self.open_until, self.updated = CircuitState.CLOSED, 0, None, now
        if open_until is None:
            return 0
        until = min(open_until, now + timedelta(seconds=settings.PROBE_INTERVAL_SECONDS)) + self.RECHECK_AFTER_OPEN
        waiting = ApiKey.objects.active().filter(next_probe_at__gt=now, next_probe_at__lte=until)
        ids = [
            pk
            for pk, provider, base_url, azure_endpoint in waiting.values_list(
                "pk", "provider", "base_url", "azure_endpoint"
            )
            if host_of(provider, base_url, azure_endpoint) == self.host
        ]
        return ApiKey.objects.filter(pk__in=ids).update(next_probe_at=now)
