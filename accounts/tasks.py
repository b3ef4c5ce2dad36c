"""Celery tasks for accounts: a thin wrapper around the outbox's delivery.

No arguments (nothing secret travels in a message); idempotent, since a delivered
channel is recorded and never sent again, so acks_late redelivery is safe.
"""

import logging

from celery import shared_task

from . import notifications

log = logging.getLogger(__name__)


@shared_task(name="accounts.tasks.deliver_notifications", acks_late=True, ignore_result=True)
def deliver_notifications():
    """Beat, every minute: deliver the outbox's due notifications (email, webhook)."""
    summary = notifications.deliver_due()
    if summary.delivered or summary.retrying or summary.gave_up:
        log.info(
            "notifications: %d delivered, %d to retry, %d given up",
            summary.delivered,
            summary.retrying,
            summary.gave_up,
        )
