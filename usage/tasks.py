"""Celery tasks for usage and costs: thin wrappers around usage/ingest.py.

They take no secrets (no arguments, or a job id) and are idempotent — every write is an
upsert on a natural key, and a job is claimed once (accounts/jobs.py: a redelivered
finished job does nothing) — so acks_late redelivery is safe.
"""

import logging
from datetime import UTC, date, datetime, time

from celery import shared_task
from django.utils import timezone

from accounts import jobs

from . import alerts, ingest

log = logging.getLogger(__name__)


def _log(name, summary):
    total = summary.total()
    log.info(
        "%s: %d organizations ok, %d failed, %d backing off; %d results read, %d created, %d updated, %d unchanged",
        name,
        len(summary.succeeded),
        len(summary.failed),
        len(summary.skipped),
        total.results,
        total.created,
        total.updated,
        total.unchanged,
    )


@shared_task(name="usage.tasks.ingest_all", acks_late=True, ignore_result=True)
def ingest_all():
    """Beat, daily: every organization with an admin key, trailing window re-read."""
    _log("usage ingest", ingest.run_scheduled("daily"))
    evaluate_budgets()  # inline: the spend just ingested is judged now


@shared_task(name="usage.tasks.refresh_today", acks_late=True, ignore_result=True)
def refresh_today():
    """Beat, hourly: today's buckets; failed organizations due for a retry get their
    whole window."""
    _log("usage refresh", ingest.run_scheduled("today"))
    evaluate_budgets()  # inline: the spend just ingested is judged now


@shared_task(name="usage.tasks.evaluate_budgets", acks_late=True, ignore_result=True)
def evaluate_budgets():
    """Beat, hourly, and after each ingest: raise the budget alerts spend calls for (each
    once: usage/alerts.py). Idempotent."""
    summary = alerts.evaluate()
    log.info("budgets: %d scopes evaluated, %d alerts raised", summary.scopes, len(summary.raised))


@shared_task(name="usage.tasks.ingest_window", acks_late=True, ignore_result=True)
def ingest_window(job_id):
    """ "Ingest usage for a window…" from the admin: the job (accounts.models.Job) names
    the organization and the window [since, until) in UTC days; the same ingest as
    `manage.py ingest_usage --org … --since … --until …`, whatever the backoff, with its
    progress (endpoints done of all) and a per-endpoint summary written to the job. Then
    the budgets are evaluated, as after the scheduled ingests."""
    job = jobs.claim(job_id)
    if job is None:
        return
    if job.organization is None:
        jobs.fail(job.pk, "The organization was deleted before its ingest started.")
        return
    started = timezone.now()
    try:
        since, until = (window_day(job.parameters[name]) for name in ("since", "until"))
        with jobs.Progress(job) as progress:
            summary = ingest.ingest_safely(job.organization, since, until, started, progress=progress)
            _log("usage ingest (admin)", summary)
            progress(step="Evaluating budgets")
            budgets = alerts.evaluate()
            progress(step="Finished")
    except Exception as e:  # noqa: BLE001 — the job must not stay "running"
        jobs.fail(job.pk, f"{type(e).__name__}: {e}")
        raise
    table = job_summary(summary, budgets, timezone.now() - started)
    if summary.failed:
        jobs.fail(job.pk, summary.failed[job.organization.slug], summary=table, done=progress.done)
    else:
        jobs.succeed(job.pk, table, done=progress.done)


def window_day(value):
    """A job's "YYYY-MM-DD" as midnight UTC (the buckets are UTC days)."""
    return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)


COLUMNS = ("buckets", "results", "created", "updated", "unchanged")


def job_summary(summary, budgets, took):
    """Per endpoint: buckets and results read and what the upsert did with them (as
    `manage.py ingest_usage` prints), then the outcome and the budgets evaluated."""
    rows = [(name, *(getattr(summary.endpoints[name], c) for c in COLUMNS)) for name in sorted(summary.endpoints)]
    total = summary.total()
    rows.append(("total", *(getattr(total, c) for c in COLUMNS)))
    facts = [
        ("outcome", "failed" if summary.failed else "ingested"),
        ("duration", f"{took.total_seconds():.1f} s"),
        ("budgets evaluated", budgets.scopes),
        ("budget alerts raised", len(budgets.raised)),
    ]
    return jobs.table(("endpoint", *COLUMNS), rows, facts)
