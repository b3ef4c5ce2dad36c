"""Celery tasks for usage and costs: thin wrappers around usage/ingest.py.

They take no secrets (no arguments at all) and are idempotent — every write is an upsert
on a natural key — so acks_late redelivery is safe.
"""

import logging

from celery import shared_task

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
