"""Celery tasks: thin wrappers that carry key ids and slots, never secrets.

Every task is idempotent, so acks_late redelivery (a worker killed mid-batch) is safe.
"""

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError

from . import probe
from . import sweep as sweeping
from .models import ApiKey, ProbeResult

log = logging.getLogger(__name__)


@shared_task(name="keys.tasks.sweep", acks_late=True, ignore_result=True)
def sweep():
    """Beat: claim every due key and hand the claims to workers in batches."""
    claims = sweeping.claim_due(timezone.now())
    for batch in sweeping.batches(claims):
        probe_batch.delay(batch)
    if claims:
        log.info("probe sweep: %d keys claimed", len(claims))
    return len(claims)


@shared_task(name="keys.tasks.probe_batch", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def probe_batch(claims):
    """Probe [[key_id, slot], …]. Returns nothing; results go to the database."""
    summary = probe.run_batch([(key_id, slot) for key_id, slot in claims])
    log.info(
        "probe batch: %d probed %s, %d deferred, %d already done",
        summary.probed,
        dict(summary.outcomes),
        summary.deferred,
        summary.already_done,
    )


@shared_task(name="keys.tasks.prune_probe_results", acks_late=True, ignore_result=True)
def prune_probe_results():
    """Beat, daily: drop probe results older than PROBE_RESULTS_KEEP_DAYS."""
    deleted = ProbeResult.prune(timezone.now(), settings.PROBE_RESULTS_KEEP_DAYS)
    log.info("pruned %d probe results", deleted)


def enqueue_probes(key_ids):
    """Claim these keys now and queue their probes. Returns how many were queued. If the
    broker cannot be reached, the keys stay due and the next sweep probes them."""
    claims = sweeping.claim_now(key_ids)
    try:
        for batch in sweeping.batches(claims):
            probe_batch.delay(batch)
    except OperationalError:
        log.warning("broker unreachable; %d keys will be probed by the next sweep", len(claims))
        ApiKey.objects.filter(pk__in=[c[0] for c in claims]).update(next_probe_at=timezone.now())
        return 0
    return len(claims)
