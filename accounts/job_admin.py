"""The pages of jobs started from the admin (accounts/jobs.py), wired into the admin site
(console/admin_site.py):

- jobs/<id>/: the progress page. accounts/static/accounts/job_progress.js polls the
  status endpoint about once a second (its URL comes in a data- attribute: the admin's
  Content-Security-Policy allows no inline script) and updates the bar and
  "done of total — step" until the job has finished, then shows the outcome and the
  summary table without a reload;
- jobs/<id>/status/: that status as JSON;
- jobs/: one's recent jobs (where "Sync now" on several organizations leads).

A job is seen by whoever asked for it and by superusers; for anyone else it does not
exist (404, not 403: its id says nothing about whether there is one). Nothing here is
secret — parameters are dates and slugs, the error was scrubbed when stored — and looking
changes nothing.
"""

from django.http import HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

from .models import Job, JobKind, JobState

RECENT = 50
BACK_LABELS = {JobKind.SYNC: "Back to organization sync", JobKind.INGEST: "Back to ingest states"}


def progress_text(job):
    """ "3 of 12 — Reading projects"; "3 — …" while the total is unknown."""
    count = f"{job.done} of {job.total}" if job.total is not None else (str(job.done) if job.done else "")
    return " — ".join(part for part in (count, job.step) if part)


def outcome_text(job):
    if job.state == JobState.SUCCEEDED:
        took = f" in {(job.finished - job.started).total_seconds():.1f} s" if job.started and job.finished else ""
        return f"Done{took}."
    if job.state == JobState.FAILED:
        return f"Failed: {job.error}" if job.error else "Failed."
    return ""


def stale_text(job, now):
    """What the page says about a queued or running job that stopped showing progress."""
    if not job.is_stale(now):
        return ""
    silent = timesince(job.updated, now)
    command = job.parameters.get("command", "")
    instead = f" Or run it from a shell on the server: {command}" if command else ""
    if job.state == JobState.QUEUED:
        return (
            f"Still queued after {silent}: no worker has taken this job. Is the Celery worker running? "
            f"It starts when one does.{instead}"
        )
    return (
        f"No progress for {silent}: the worker running this job seems to have stopped (crashed or restarted). "
        f"A worker takes it over when the task is delivered again.{instead}"
    )


def status(job, now=None):
    """The JSON the progress page polls. Never a secret: the job's row holds none."""
    now = now or timezone.now()
    return {
        "id": job.pk,
        "kind": job.kind,
        "title": str(job),
        "state": job.state,
        "state_label": job.get_state_display(),
        "finished": job.is_finished(),
        "succeeded": job.state == JobState.SUCCEEDED,
        "done": job.done,
        "total": job.total,
        "step": job.step,
        "progress_text": progress_text(job),
        "stale": bool(stale_text(job, now)),
        "stale_text": stale_text(job, now),
        "outcome_text": outcome_text(job),
        "error": job.error,
        "summary": job.summary or {},
        "updated": job.updated.isoformat(),
    }


def job_for(request, pk):
    return get_object_or_404(Job.objects.for_user(request.user).select_related("organization"), pk=pk)


def job_view(request, site, pk):
    job = job_for(request, pk)
    context = {
        **site.each_context(request),
        "title": str(job),
        "job": job,
        "status": status(job),
        "status_url": reverse("admin:job_status", args=[job.pk], current_app=site.name),
        "back_label": BACK_LABELS.get(job.kind, "Back"),
        "back_url": job.return_url or reverse("admin:index", current_app=site.name),
        "jobs_url": reverse("admin:jobs", current_app=site.name),
    }
    return TemplateResponse(request, "admin/accounts/job.html", context)


def job_status_view(request, site, pk):
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET"])
    return JsonResponse(status(job_for(request, pk)))  # never cached: admin_view


def jobs_view(request, site):
    jobs = Job.objects.for_user(request.user).select_related("organization")[:RECENT]
    context = {
        **site.each_context(request),
        "title": "Your jobs" if not request.user.is_superuser else "Jobs",
        "rows": [(job, progress_text(job), outcome_text(job)) for job in jobs],
    }
    return TemplateResponse(request, "admin/accounts/jobs.html", context)
