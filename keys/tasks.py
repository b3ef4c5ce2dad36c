"""Celery tasks: thin wrappers that carry key ids, slots and leases, never secrets.

Every task is idempotent, so acks_late redelivery (a worker killed mid-batch) is safe: a
batch probes a key only while the key's row still holds the lease in the message.
"""

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from accounts import heartbeat

from . import probe, probe_hours, reminders, retention, rotation
from . import sweep as sweeping

log = logging.getLogger(__name__)


@shared_task(name="keys.tasks.sweep", acks_late=True, ignore_result=True)
def sweep():
    """Beat: claim every due key and hand the claims to workers in batches. Returns how
    many keys were queued (claimed keys whose batch could not be queued are due again)."""
    started = timezone.now()
    claims = sweeping.claim_due(started)
    queued = publish(claims)
    # /readyz and /metrics: beat is scheduling and a worker ran its sweep (accounts/heartbeat.py).
    finished = timezone.now()
    heartbeat.record_beat(
        finished, sweep_seconds=(finished - started).total_seconds(), claimed=len(claims), queued=queued
    )
    if claims:
        log.info("probe sweep: %d keys claimed, %d queued", len(claims), queued)
    return queued


@shared_task(name="keys.tasks.probe_batch", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def probe_batch(claims):
    """Probe [[key_id, slot, lease], …]. Returns nothing; results go to the database."""
    summary = probe.run_batch([sweeping.Claim.parse(c) for c in claims])
    log.info(
        "probe batch: %d probed (%s), %d deferred, %d already done",
        summary.probed,
        summary.describe_outcomes(),
        summary.deferred,
        summary.already_done,
    )


@shared_task(name="keys.tasks.prune_probe_results", acks_late=True, ignore_result=True)
def prune_probe_results():
    """Beat, daily: roll up probe results older than PROBE_RESULTS_KEEP_DAYS into
    transitions and daily rollups, then delete them, a chunk of keys per transaction
    (keys/retention.py). Idempotent: a redelivered or overlapping run finds less to do."""
    done = retention.run(timezone.now(), settings.PROBE_RESULTS_KEEP_DAYS)
    log.info(
        "probe retention: %d results rolled up into %d daily rows and %d transitions, then deleted",
        done.rolled_up,
        done.days,
        done.transitions,
    )


@shared_task(name="keys.tasks.roll_up_probe_hours", acks_late=True, ignore_result=True)
def roll_up_probe_hours():
    """Beat, every 5 minutes: count each settled hour's probe outcomes once for the
    dashboard's chart (keys/probe_hours.py). Idempotent: every hour is replaced whole."""
    hours = probe_hours.roll_up(timezone.now())
    log.debug("probe hours: %d rolled up", hours)


@shared_task(name="keys.tasks.end_grace_periods", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def end_grace_periods():
    """Beat: revoke superseded secrets whose grace is over (deleted upstream where the
    Admin API allows, ciphertext wiped). Idempotent: a redelivered or overlapping run
    finds the rows done or claimed."""
    counts = rotation.end_grace_periods()
    if counts:
        log.info("grace periods ended: %s", counts)


@shared_task(name="keys.tasks.send_rotation_reminders", acks_late=True, ignore_result=True)
def send_rotation_reminders():
    """Beat, daily: raise the rotation reminders due now (keys/reminders.py); idempotent."""
    created = reminders.send_reminders(timezone.now())
    log.info("rotation reminders: %d raised", created)


def publish(claims):
    """Queue the claims in batches, one message per batch. Never raises for the broker:
    if publishing fails part-way (Redis down, a fresh clone without var/broker/, …), the
    keys of the batches that were not published are made due again (not leased), a
    warning is logged, and the count published so far is returned."""
    queued = 0
    pending = list(sweeping.batches(claims))
    for i, batch in enumerate(pending):
        try:
            probe_batch.delay([list(c) for c in batch])
        except Exception as e:  # noqa: BLE001 — whatever the transport raises: kombu, OSError, redis
            unsent = [c for b in pending[i:] for c in b]
            sweeping.release(unsent)
            log.warning(
                "broker unreachable (%s); %d keys will be probed by the next sweep", type(e).__name__, len(unsent)
            )
            break
        queued += len(batch)
    return queued


def enqueue_probes(key_ids):
    """Claim these keys now and queue their probes. Returns how many were queued: 0 when
    the broker cannot be reached (the keys are then due, and the next sweep probes them).
    Never raises for the broker."""
    return publish(sweeping.claim_now(key_ids))
