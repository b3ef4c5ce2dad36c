"""Claiming keys for probing.

A key is due when `next_probe_at` has passed (or was never set). Claiming moves
`next_probe_at` forward to the end of a lease, one row at a time, with a compare-and-swap
on the value read: `filter(pk=…, next_probe_at=<what we read>).update(…)` changes the
row only if nobody moved it since, and a claimer keeps a key only when ITS update changed
that row (n == 1). No row locks, no `SKIP LOCKED`: the same rule holds on PostgreSQL
and SQLite, and two claimers racing for the same rows never both win one. On PostgreSQL
the swaps of up to CAS_CHUNK rows go in one statement (`UPDATE … FROM (VALUES (id, read
value), …) … RETURNING id`): each row is still compared with the value read for it —
PostgreSQL re-checks the condition on a row another transaction changed meanwhile — and
RETURNING names exactly the rows this statement moved.

What a claim hands out — `Claim(key_id, slot, lease)` — goes into the batch message:
- `slot` is the Unix time the key was due (sweep) or of the claim ("Probe now"), moved
  past the key's newest result if need be; with the key it is unique on results, so
  two "Probe now" in the same second are two slots and two probes.
- `lease` is the lease end this claim wrote. A batch probes a key only while the row
  still holds exactly that value (keys.probe.load_claimed): a batch redelivered after the
  key was claimed again, probed, or released does nothing for it.

The lease (settings.PROBE_LEASE_SECONDS) outlasts the broker's redelivery of a batch
whose worker died (visibility timeout + task time limit, system check keys.E010), so a
key is either redelivered to a worker or, if the message is lost for good, claimed
again after the lease in a new slot — never both.
"""

from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from .models import ApiKey, ProbeResult


class Claim(NamedTuple):
    key_id: str
    slot: int
    lease: str  # ISO 8601 lease end, exactly as written to next_probe_at

    @classmethod
    def parse(cls, item):
        """A claim from a batch message: [key_id, slot, lease] (or [key_id, slot] from a
        message queued before leases were carried: lease "")."""
        key_id, slot, *rest = item
        return cls(str(key_id), int(slot), str(rest[0]) if rest and rest[0] else "")

    def lease_until(self):
        return datetime.fromisoformat(self.lease) if self.lease else None


CAS_CHUNK = 1000


def lease_seconds():
    return settings.PROBE_LEASE_SECONDS


def claim(queryset, now=None, slot_from_due_time=True, limit=None):
    """Claim the keys in `queryset` (already filtered to what the caller wants probed).
    Returns [Claim, …] for the rows this caller's compare-and-swap moved, and no other."""
    now = now or timezone.now()
    lease_until = now + timedelta(seconds=lease_seconds())
    rows = candidates(queryset, limit)
    if not rows:
        return []
    newest = newest_slots([pk for pk, _ in rows])
    swapped = swap(rows, lease_until)
    won = []
    for pk, due in rows:
        if pk not in swapped:
            continue  # another claimer moved this row first
        # A slot is always past the key's newest result, so a claim never collides
        # with an earlier probe (a "Probe now" in the same second, a skip just before).
        base = int((due if slot_from_due_time and due else now).timestamp())
        slot = max(base, newest.get(pk, 0) + 1)
        won.append(Claim(str(pk), slot, lease_until.isoformat()))
    return won


def swap(rows, lease_until):
    """Compare-and-swap each row of [(pk, next_probe_at as read), …] to `lease_until`;
    returns the set of pks this call moved (a row someone changed since it was read, or
    revoked, is not moved)."""
    if connection.vendor != "postgresql":
        # next_probe_at=None filters IS NULL: a never-scheduled key is swapped the same way.
        return {
            pk
            for pk, due in rows
            if ApiKey.objects.filter(pk=pk, revoked_at__isnull=True, next_probe_at=due).update(
                next_probe_at=lease_until
            )
            == 1
        }
    moved = set()
    table = connection.ops.quote_name(ApiKey._meta.db_table)
    for start in range(0, len(rows), CAS_CHUNK):
        chunk = rows[start : start + CAS_CHUNK]
        values = ", ".join(["(%s::uuid, %s::timestamptz)"] * len(chunk))
        sql = (
            f"UPDATE {table} AS k SET next_probe_at = %s FROM (VALUES {values}) AS v(id, due) "
            "WHERE k.id = v.id AND k.revoked_at IS NULL AND k.next_probe_at IS NOT DISTINCT FROM v.due "
            "RETURNING k.id"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [lease_until, *(value for row in chunk for value in row)])
            moved.update(row[0] for row in cursor.fetchall())
    return moved


def candidates(queryset, limit=None):
    """[(pk, next_probe_at), …] as read now: what a claim then tries to swap."""
    rows = queryset.filter(revoked_at__isnull=True).order_by("next_probe_at")
    if limit:
        rows = rows[:limit]
    return list(rows.values_list("pk", "next_probe_at"))


def newest_slots(pks):
    """{pk: the slot of the key's newest result} for keys that have one."""
    return dict(ProbeResult.objects.filter(key_id__in=pks).values_list("key_id").annotate(Max("slot")).order_by())


def claim_due(now=None, limit=None):
    """Claim every key whose probe is due (the beat sweep)."""
    now = now or timezone.now()
    return claim(ApiKey.objects.due_for_probe(now), now=now, limit=limit)


def claim_now(key_ids, now=None):
    """Claim specific keys at once, due or not ("Probe now", a new key). A key leased to
    a queued batch is taken over: that batch will skip it, this one probes it."""
    return claim(ApiKey.objects.filter(pk__in=key_ids), now=now, slot_from_due_time=False)


def release(claims, now=None):
    """Make claimed keys due again (their batch was never queued), only where the row
    still holds the lease these claims wrote: a key claimed by someone else since keeps
    its new lease."""
    now = now or timezone.now()
    by_lease = {}
    for c in claims:
        by_lease.setdefault(c.lease, []).append(c.key_id)
    for lease, key_ids in by_lease.items():
        rows = ApiKey.objects.filter(pk__in=key_ids)
        if lease:
            rows = rows.filter(next_probe_at=datetime.fromisoformat(lease))
        rows.update(next_probe_at=now)


def batches(claims, size=None):
    size = size or settings.PROBE_BATCH_SIZE
    for i in range(0, len(claims), size):
        yield claims[i : i + size]
