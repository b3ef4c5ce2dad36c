"""“Ingest usage for a window…”: an action on the organization list (usage/admin.py mixes
it in) that reads usage and costs for chosen UTC days now, as
`manage.py ingest_usage --org … --since … --until …` does, in a Celery worker.

The action first shows a form (since, until as dates) for the selected organizations;
the window is checked before anything starts — since before until, until not after
tomorrow (OpenAI has no usage for days that have not begun), at most MAX_WINDOW_DAYS
days, and every organization has an active admin key — each with a message saying what
to change. Then one job per organization (accounts/jobs.py: its own task, progress and
outcome) is queued and audited (`usage.ingest_requested`), and the browser goes to its
progress page (several: the list of one's jobs). Whoever may change organizations may
run it, like "Sync now" (sync/admin.py).
"""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from accounts import jobs
from accounts.models import AuditEvent, JobKind, JobState

from . import ingest, tasks

MAX_WINDOW_DAYS = 366
DEFAULT_DAYS = 30


class DateInput(forms.DateInput):
    input_type = "date"


class IngestWindowForm(forms.Form):
    since = forms.DateField(widget=DateInput, help_text="First UTC day, included.")
    until = forms.DateField(widget=DateInput, help_text="Last UTC day, excluded (at most tomorrow).")

    def __init__(self, *args, organizations, today, **kwargs):
        super().__init__(*args, **kwargs)
        self.organizations, self.today = organizations, today

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until:
            tomorrow = self.today + timedelta(days=1)
            if since >= until:
                raise forms.ValidationError("“Since” must be before “until”: the window is [since, until).")
            if until > tomorrow:
                raise forms.ValidationError(
                    f"“Until” can be tomorrow ({tomorrow:%Y-%m-%d}) at the latest: "
                    "OpenAI has no usage for days that have not begun."
                )
            if (until - since).days > MAX_WINDOW_DAYS:
                raise forms.ValidationError(
                    f"A window is at most {MAX_WINDOW_DAYS} days (this one is {(until - since).days}): "
                    "ingest a longer period in several windows."
                )
        missing = [org.name for org in self.organizations if ingest.admin_key_of(org) is None]
        if missing:
            raise forms.ValidationError(
                f"No active admin key for {', '.join(missing)}: add one (kind “Admin key”) on the organization's "
                "page, or leave it out of the selection."
            )
        return cleaned


def command_for(organization, since, until):
    return f".venv/bin/python manage.py ingest_usage --org {organization.slug} --since {since} --until {until}"


class IngestWindowActions:
    """Mix into the Organization admin (before its ModelAdmin base)."""

    actions = ["ingest_window"]

    def has_ingest_permission(self, request):
        return request.user.has_perm("accounts.change_organization")

    @admin.action(description="Ingest usage for a window…", permissions=["ingest"])
    def ingest_window(self, request, queryset):
        organizations = list(queryset.order_by("name"))
        today = ingest.day_start(timezone.now()).date()
        if "apply" in request.POST:
            form = IngestWindowForm(request.POST, organizations=organizations, today=today)
            if form.is_valid():
                since, until = form.cleaned_data["since"], form.cleaned_data["until"]
                started = [self.start_ingest(request, org, since, until) for org in organizations]
                queued = sum(job.state != JobState.FAILED for job in started)
                if queued:
                    self.message_user(request, f"Ingest queued for {queued} organization(s).")
                if queued < len(started):
                    warning = "No worker queue answered: run the ingest from a shell (see the job)."
                    self.message_user(request, warning, messages.WARNING)
                return jobs.redirect_to(started)
        else:
            initial = {"since": today - timedelta(days=DEFAULT_DAYS), "until": today + timedelta(days=1)}
            form = IngestWindowForm(initial=initial, organizations=organizations, today=today)
        context = {
            **self.admin_site.each_context(request),
            "title": "Ingest usage and costs for a window",
            "opts": self.opts,
            "form": form,
            "organizations": organizations,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/usage/ingest_window.html", context)

    def start_ingest(self, request, org, since, until):
        """One organization's window as a job: queued for a worker, audited."""
        command = command_for(org, since, until)
        parameters = {"since": since.isoformat(), "until": until.isoformat(), "command": command}
        back = reverse("admin:usage_ingeststate_changelist")
        job = jobs.create(JobKind.INGEST, request.user, org, parameters, return_url=back)
        queued = jobs.enqueue(job, lambda: tasks.ingest_window.delay(job.pk), command)
        AuditEvent.record(
            request.user,
            "usage.ingest_requested",
            org,
            job=job.pk,
            since=parameters["since"],
            until=parameters["until"],
            queued=queued,
        )
        return job
