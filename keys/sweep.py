"""Claiming keys for probing.

A key is due when `next_probe_at` has passed. Claiming moves `next_probe_at` forward by a
lease with a compare-and-swap (the UPDATE only touches rows still due, under row locks
taken with SKIP LOCKED on PostgreSQL), so overlapping sweeps or several workers never
hand out the same key for the same slot. The slot — the Unix time the key was due — goes
with the key id into the batch; the (key, slot) unique constraint on results does the rest.
If a batch dies, its lease runs out and the next sweep claims the key again.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import ApiKey

LEASE_SECONDS = 15 * 60


def claim(queryset, now=None, slot_from_due_time=True, limit=None):
    """Claim the keys in `queryset` (already filtered to what the caller wants probed).
    Returns [(key_id str, slot int), …] for the rows this caller won."""
    now = now or timezone.now()
    lease_until = now + timedelta(seconds=LEASE_SECONDS)
    with transaction.atomic():
        rows = queryset.filter(revoked_at__isnull=True).select_for_update(skip_locked=True).order_by("next_probe_at")
        if limit:
            rows = rows[:limit]
        rows = list(rows.values_list("pk", "next_probe_at"))
        if not rows:
            return []
        won = []
        # Group by the due time read, so each UPDATE is a compare-and-swap on it.
        by_due = {}
        for pk, due in rows:
            by_due.setdefault(due, []).append(pk)
        for due, pks in by_due.items():
            cas = ApiKey.objects.filter(pk__in=pks)
            cas = cas.filter(next_probe_at=due) if due is not None else cas.filter(next_probe_at__isnull=True)
            cas.update(next_probe_at=lease_until)
            slot = int((due if slot_from_due_time and due else now).timestamp())
            won.extend((str(pk), slot) for pk in pks)
        return won


def claim_due(now=None, limit=None):
    """Claim every key whose probe is due (the beat sweep)."""
    now = now or timezone.now()
    return claim(ApiKey.objects.due_for_probe(now), now=now, limit=limit)


def claim_now(key_ids, now=None):
    """Claim specific keys at once, due or not ("Probe now", a new key)."""
    return claim(ApiKey.objects.filter(pk__in=key_ids), now=now, slot_from_due_time=False)


def batches(claims, size=None):
    size = size or settings.PROBE_BATCH_SIZE
    for i in range(0, len(claims), size):
        yield claims[i : i + size]
