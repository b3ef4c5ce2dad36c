"""Celery tasks for the organization sync: thin wrappers around sync/sync.py.

They take no secrets (an organization id at most) and are idempotent — a sync compares
and writes only what differs — so acks_late redelivery is safe.
"""

import logging

from celery import shared_task

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
def sync_one(organization_id):
    """ "Sync now" from the admin: one organization, whatever its backoff."""
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is not None:
        _log(sync.sync_safely(organization))
