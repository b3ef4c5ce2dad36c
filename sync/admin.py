"""Admin pages of the organization sync: read-only for everyone (the sync writes them).

- Organization sync: each organization's last run, its reconciliation counts, and its
  budgets beside the spend alerts OpenAI has; actions "Sync now" and "Publish budget as
  spend alert" (for those who may change organizations; audited). "Sync now" starts one
  job per organization (accounts/jobs.py: each its own task, progress and outcome, so
  one organization's failure is its own) and opens its progress page (several: the list
  of one's jobs).
- Upstream keys: every key the organization has upstream, with a filter for the
  unmanaged ones (register them by pasting the secret on a project's page, or delete
  them upstream: action behind a confirmation page, for those who may delete keys;
  audited), the ones gone upstream and the orphaned ones.
- Spend alerts, upstream service accounts, upstream audit events.
"""

from django.contrib import admin, messages
from django.db.models import Prefetch
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from accounts import jobs
from accounts.models import AuditEvent, JobKind, JobState
from console.admin_base import ReadOnlyAdmin, badge

from . import publish, tasks
from .models import SpendAlert, SyncedOrganization, UpstreamEvent, UpstreamKey, UpstreamServiceAccount

BADGE_CSS = {"all": ["keys/admin.css"]}


class SpendAlertInline(admin.TabularInline):
    model = SpendAlert
    fields = readonly_fields = ["project", "threshold_usd", "recipients", "published_percent", "synced_at"]
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project").order_by("project__name", "threshold_cents")

    @admin.display(description="threshold (USD)")
    def threshold_usd(self, alert):
        return f"{alert.threshold_cents / 100:,.2f}"


@admin.register(SyncedOrganization)
class SyncedOrganizationAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "last_sync",
        "outcome",
        "duration",
        "unmanaged",
        "deleted_upstream",
        "orphaned",
        "monthly_budget_usd",
        "alert_thresholds",
        "spend_alerts_usd",
    ]
    search_fields = ["name", "slug"]
    fields = readonly_fields = [
        "name",
        "slug",
        "openai_org_id",
        "monthly_budget_usd",
        "alert_thresholds",
        "alert_emails",
        "last_sync",
        "outcome",
        "last_error",
        "duration",
        "requests",
    ]
    inlines = [SpendAlertInline]
    actions = ["sync_now", "publish_budget"]
    ordering = ["name"]

    class Media:
        css = BADGE_CSS

    def get_queryset(self, request):
        org_alerts = SpendAlert.objects.filter(project__isnull=True).order_by("threshold_cents")
        return (
            super()
            .get_queryset(request)
            .select_related("sync_state")
            .prefetch_related(Prefetch("spend_alerts", queryset=org_alerts, to_attr="org_spend_alerts"))
        )

    def has_sync_permission(self, request):
        return request.user.has_perm("accounts.change_organization")

    def state(self, org):
        return getattr(org, "sync_state", None)

    @admin.display(description="last sync")
    def last_sync(self, org):
        state = self.state(org)
        return state.last_attempt_at if state else "never"

    @admin.display(description="outcome")
    def outcome(self, org):
        state = self.state(org)
        if state is None or not state.last_outcome:
            return ""
        return badge("ok" if state.last_outcome == "ok" else "failing", state.last_outcome)

    @admin.display(description="last error")
    def last_error(self, org):
        state = self.state(org)
        return state.last_error if state else ""

    @admin.display(description="duration (s)")
    def duration(self, org):
        state = self.state(org)
        return f"{state.duration_ms / 1000:.1f}" if state else ""

    @admin.display(description="requests")
    def requests(self, org):
        state = self.state(org)
        return state.requests if state else ""

    def count(self, org, name):
        state = self.state(org)
        return (state.counts or {}).get(name, "") if state else ""

    @admin.display(description="unmanaged")
    def unmanaged(self, org):
        return self.count(org, "unmanaged")

    @admin.display(description="deleted upstream")
    def deleted_upstream(self, org):
        return self.count(org, "deleted_upstream")

    @admin.display(description="orphaned")
    def orphaned(self, org):
        return self.count(org, "orphaned")

    @admin.display(description="OpenAI spend alerts (USD)")
    def spend_alerts_usd(self, org):
        return ", ".join(f"{a.threshold_cents / 100:,.0f}" for a in org.org_spend_alerts) or "—"

    @admin.action(description="Sync now", permissions=["sync"])
    def sync_now(self, request, queryset):
        back = reverse("admin:sync_syncedorganization_changelist")
        started = [self.start_sync(request, org, back) for org in queryset.order_by("name")]
        queued = sum(job.state != JobState.FAILED for job in started)
        if queued:
            self.message_user(request, f"Sync queued for {queued} organization(s).")
        if queued < len(started):
            self.message_user(
                request, "No worker queue answered: run the sync from a shell (see the job).", messages.WARNING
            )
        return jobs.redirect_to(started)

    def start_sync(self, request, org, back):
        """One organization's sync as a job: queued for a worker, audited."""
        command = f".venv/bin/python manage.py sync_org {org.slug}"
        job = jobs.create(JobKind.SYNC, request.user, org, {"command": command}, return_url=back)
        queued = jobs.enqueue(job, lambda: tasks.sync_one.delay(org.pk, job.pk), command)
        AuditEvent.record(request.user, "organization.sync_requested", org, job=job.pk, queued=queued)
        return job

    @admin.action(description="Publish budget as spend alert", permissions=["sync"])
    def publish_budget(self, request, queryset):
        for org in queryset:
            try:
                result = publish.publish_budgets(org, request.user)
            except publish.PublishRefused as e:
                self.message_user(request, f"{org}: not published: {e}", messages.ERROR)
            except publish.SyncFailure as e:
                self.message_user(request, f"{org}: publishing failed: {e.message}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{org}: {len(result.created)} spend alert(s) created, {len(result.updated)} updated, "
                    f"{result.unchanged} already up to date.",
                )


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [
            ("unmanaged", "Unmanaged"),
            ("registered", "Registered"),
            ("orphaned", "Owner left"),
            ("gone", "Gone upstream"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "unmanaged":
            return queryset.unmanaged()
        if value == "registered":
            return queryset.filter(key__isnull=False)
        if value == "orphaned":
            return queryset.filter(owner_has_access=False, gone_at__isnull=True)
        if value == "gone":
            return queryset.filter(gone_at__isnull=False)
        return queryset


@admin.register(UpstreamKey)
class UpstreamKeyAdmin(ReadOnlyAdmin):
    list_display = [
        "upstream_id",
        "name",
        "hint",
        "kind",
        "organization",
        "project",
        "owner_label",
        "created_at",
        "last_used_at",
        "state",
        "key",
    ]
    list_filter = [KeyStateFilter, "kind", "organization"]
    list_select_related = ["organization", "project__organization", "key"]
    search_fields = ["upstream_id", "name", "owner_label", "hint"]
    ordering = ["organization__name", "upstream_project_id", "upstream_id"]
    actions = ["delete_upstream"]

    class Media:
        css = BADGE_CSS

    @admin.display(description="state")
    def state(self, row):
        if row.gone_at:
            return badge("revoked", "Gone upstream")
        if not row.owner_has_access:
            return badge("warn", "Owner left")
        if row.key_id is None:
            return badge("overdue", "Unmanaged")
        return badge("ok", "Registered")

    def has_delete_upstream_permission(self, request):
        # Those who may revoke keys (and so delete them upstream) may delete an unmanaged
        # one: it has no history here to keep. Deleting a registered key's row is another
        # matter (keys.delete_apikey, superusers only).
        return request.user.has_perm("keys.change_apikey")

    @admin.action(description="Delete at OpenAI (unmanaged keys)…", permissions=["delete_upstream"])
    def delete_upstream(self, request, queryset):
        rows = list(queryset.select_related("organization"))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Delete keys at OpenAI?",
                "opts": self.model._meta,
                "rows": [(row, publish.deletable(row)) for row in rows],
            }
            return TemplateResponse(request, "admin/sync/confirm_delete_upstream.html", context)
        deleted, now = 0, timezone.now()
        for row in rows:
            reason = publish.delete_upstream(row, request.user, now)
            if reason:
                self.message_user(request, f"{row.upstream_id}: not deleted: {reason}", messages.WARNING)
            else:
                deleted += 1
        self.message_user(request, f"{deleted} key(s) deleted at OpenAI.")


@admin.register(SpendAlert)
class SpendAlertAdmin(ReadOnlyAdmin):
    list_display = ["organization", "project", "threshold_usd", "interval", "recipients", "published_percent"]
    list_filter = ["organization"]
    list_select_related = ["organization", "project__organization"]
    search_fields = ["upstream_id", "recipients", "project__name"]
    ordering = ["organization__name", "project__name", "threshold_cents"]

    @admin.display(description="threshold (USD)", ordering="threshold_cents")
    def threshold_usd(self, alert):
        return f"{alert.threshold_cents / 100:,.2f}"


@admin.register(UpstreamServiceAccount)
class UpstreamServiceAccountAdmin(ReadOnlyAdmin):
    list_display = ["upstream_id", "name", "role", "project", "created_at"]
    list_select_related = ["project__organization"]
    search_fields = ["upstream_id", "name"]
    ordering = ["project__name", "name"]


@admin.register(UpstreamEvent)
class UpstreamEventAdmin(ReadOnlyAdmin):
    list_display = ["effective_at", "type", "actor_label", "upstream_project_id", "object_id", "organization"]
    list_filter = ["type", "organization"]
    list_select_related = ["organization"]
    search_fields = ["object_id", "actor_label", "upstream_project_id"]
    date_hierarchy = "effective_at"
    ordering = ["-effective_at"]
