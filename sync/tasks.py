"""Celery tasks for the organization sync: thin wrappers around sync/sync.py.

They take no secrets (an organization id and a job id at most) and are idempotent — a
sync compares and writes only what differs, and a job is claimed once (accounts/jobs.py:
a redelivered finished job does nothing) — so acks_late redelivery is safe.
"""

import logging

from celery import shared_task

from accounts import jobs
from accounts.models import Organization

from . import sync

log = logging.getLogger(__name__)


def _log(summary):
    for slug, report in summary.reports.items():
        total = report.total()
        log.info(
            "org sync %s: %d created, %d updated, %d unchanged; %d unmanaged, %d deleted upstream, %d orphaned",
            slug,
            total.created,
            total.updated,
            total.unchanged,
            report.unmanaged,
            report.deleted_upstream,
            report.orphaned,
        )
    if summary.failed:
        log.warning("org sync: %d failed (%s)", len(summary.failed), ", ".join(summary.failed))


@shared_task(name="sync.tasks.sync_all", acks_late=True, ignore_result=True)
def sync_all():
    """Beat, every SYNC_INTERVAL_SECONDS: every organization with an admin key that is not
    backing off after a failure."""
    _log(sync.run_scheduled())


@shared_task(name="sync.tasks.sync_one", acks_late=True, ignore_result=True)
def sync_one(organization_id, job_id=None):
    """ "Sync now" from the admin: one organization, whatever its backoff. With a job
    (accounts.models.Job), its progress (projects read of all) and its summary go there;
    a job already finished or running elsewhere is left alone."""
    if job_id is not None:
        run_job(organization_id, job_id)
        return
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is not None:
        _log(sync.sync_safely(organization))


def run_job(organization_id, job_id):
    job = jobs.claim(job_id)
    if job is None:
        return
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        jobs.fail(job.pk, "The organization was deleted before its sync started.")
        return
    try:
        with jobs.Progress(job) as progress:
            progress(step="Reading projects, keys and members from OpenAI")
            summary = sync.sync_safely(organization, progress=lambda total=None, done=0: progress(total, done))
            progress(step="Finished")
    except Exception as e:  # noqa: BLE001 — the job must not stay "running"
        jobs.fail(job.pk, f"{type(e).__name__}: {e}")
        raise
    _log(summary)
    state = sync.state_of(organization)
    if organization.slug in summary.failed:
        facts = [("outcome", "failed: nothing was changed"), ("requests", state.requests)]
        facts.append(("duration", f"{state.duration_ms / 1000:.1f} s"))
        jobs.fail(job.pk, summary.failed[organization.slug], summary=jobs.table([], [], facts))
    else:
        report = summary.reports[organization.slug]
        jobs.succeed(job.pk, job_summary(report), done=progress.done)


COLUMNS = ("created", "updated", "unchanged", "deleted")


def job_summary(report):
    """The sync's report as the job page shows it: counts per section, then the
    reconciliation, requests, duration and outcome (as `manage.py sync_org` prints)."""
    rows = [(name.replace("_", " "), *(getattr(c, col) for col in COLUMNS)) for name, c in report.sections.items()]
    total = report.total()
    rows.append(("total", *(getattr(total, col) for col in COLUMNS)))
    facts = [
        ("unmanaged", report.unmanaged),
        ("deleted upstream", report.deleted_upstream),
        ("orphaned", report.orphaned),
        ("requests", report.requests),
        ("duration", f"{report.duration_ms / 1000:.1f} s"),
        ("outcome", "changes written" if report.has_changes() else "no changes"),
    ]
    return jobs.table(("section", *COLUMNS), rows, facts)
