"""Heartbeats of the background processes, for /readyz and /metrics.

- **beat**: beat schedules `keys.tasks.sweep` every PROBE_SWEEP_EVERY_SECONDS; the worker
  that runs it records "beat" (with the sweep's duration). Fresh means beat is
  scheduling and a worker is taking its messages.
- **workers**: every worker process records "worker:<hash of its host name>" when it
  starts and when it starts a task, at most once per WORKER_BEAT_SECONDS per process.
  /readyz shows how many distinct workers were seen recently, never their names.

Rows live in the database (accounts.Heartbeat), not the cache: the embedded default's
cache is per process (LocMemCache), so web, worker and beat would not see each other's.
One small UPDATE per sweep and per worker and half minute is nothing next to the probes.
"""

import hashlib
import logging
import socket
import time
from datetime import timedelta

from celery import signals
from django.conf import settings
from django.db.models import Count, Max, Q
from django.utils import timezone

from .models import Heartbeat

log = logging.getLogger(__name__)

BEAT = "beat"
WORKER_PREFIX = "worker:"
# A worker process writes its heartbeat at most this often (per process).
WORKER_BEAT_SECONDS = 30
_last_worker_write = {}


def record(name, now, value=None, **figures):
    """Upsert one heartbeat row (one or two queries)."""
    fields = {"seen_at": now, "value": value, **figures}
    updated = Heartbeat.objects.filter(name=name).update(**fields)
    if not updated:
        Heartbeat.objects.update_or_create(name=name, defaults=fields)


def record_beat(now, sweep_seconds=None, claimed=None, queued=None):
    """The sweep ran: when, how long it took, how many keys it claimed and queued."""
    record(BEAT, now, sweep_seconds, claimed=claimed, queued=queued)


def worker_name(hostname):
    """The heartbeat name of a worker host: a hash, so nothing names the machine."""
    return WORKER_PREFIX + hashlib.sha256(str(hostname).encode()).hexdigest()[:16]


def record_worker(hostname, now, force=False):
    """Record that the worker on `hostname` is alive; skipped (returns False) when this
    process wrote one less than WORKER_BEAT_SECONDS ago, unless `force`."""
    name = worker_name(hostname)
    clock = time.monotonic()
    if not force and clock - _last_worker_write.get(name, -WORKER_BEAT_SECONDS) < WORKER_BEAT_SECONDS:
        return False
    record(name, now)
    _last_worker_write[name] = clock
    return True


def snapshot(now, worker_window_seconds):
    """{"beat_at", "beat_value", "beat_claimed", "beat_queued", "worker_at", "workers"} in
    one query: the beat's last time and figures, the freshest worker's time and how many
    workers were seen within the window."""
    since = now - timedelta(seconds=worker_window_seconds)
    is_worker = Q(name__startswith=WORKER_PREFIX)
    row = Heartbeat.objects.aggregate(
        beat_at=Max("seen_at", filter=Q(name=BEAT)),
        beat_value=Max("value", filter=Q(name=BEAT)),
        beat_claimed=Max("claimed", filter=Q(name=BEAT)),
        beat_queued=Max("queued", filter=Q(name=BEAT)),
        worker_at=Max("seen_at", filter=is_worker),
        workers=Count("pk", filter=is_worker & Q(seen_at__gte=since)),
    )
    return row


def beat_max_age():
    """A beat heartbeat older than two sweep intervals is stale."""
    return 2 * settings.PROBE_SWEEP_EVERY_SECONDS


def worker_window():
    """A worker counts as seen recently within two sweep intervals plus its own write
    interval (an idle worker writes when it runs the next sweep)."""
    return 2 * settings.PROBE_SWEEP_EVERY_SECONDS + WORKER_BEAT_SECONDS


def _age(at, now):
    return None if at is None else round(max((now - at).total_seconds(), 0.0), 1)


def readiness(now):
    """The beat and workers checks of /readyz (console/health.py), one query."""
    beats = snapshot(now, worker_window())
    beat_age = _age(beats["beat_at"], now)
    worker_age = _age(beats["worker_at"], now)
    return {
        "beat": {
            "status": "ok" if beat_age is not None and beat_age <= beat_max_age() else "fail",
            "age_seconds": beat_age,
        },
        "workers": {
            "status": "ok" if beats["workers"] else "fail",
            "age_seconds": worker_age,
            "count": beats["workers"],
        },
    }


# --- worker signals (connected when accounts is ready: every worker process) ---------------
@signals.worker_ready.connect
def worker_heartbeat_at_start(sender=None, **kwargs):
    record_worker_heartbeat(getattr(sender, "hostname", ""), force=True)


@signals.task_prerun.connect
def worker_heartbeat_per_task(sender=None, **kwargs):
    request = getattr(sender, "request", None)
    if request is not None and not getattr(request, "is_eager", False):
        record_worker_heartbeat(getattr(request, "hostname", "") or "")


def record_worker_heartbeat(hostname, force=False):
    """Record this worker's heartbeat (its node name, else the host name, hashed). A
    failure to record never fails the task it runs before."""
    try:
        record_worker(hostname or socket.gethostname(), timezone.now(), force=force)
    except Exception as e:  # noqa: BLE001 — the database may be down; the task will say so
        log.warning("worker heartbeat not recorded (%s)", type(e).__name__)
