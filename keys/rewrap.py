"""Re-encrypt every stored secret under the newest master key.

Used after a new master key is put in front of CONSOLE_ENCRYPTION_KEYS: once every row
is on the new version, the old key can be removed. Each row is its own small write
(ApiKey.rewrap, a compare-and-swap), so the run can be killed at any point and simply
started again; rows already on the newest version are never read.
"""

from dataclasses import dataclass, field

from django.db.models import Count

from . import crypto
from .models import ApiKey


@dataclass
class Progress:
    rewrapped: int = 0
    unchanged: int = 0  # another process got there first (compare-and-swap lost)
    failed: list = field(default_factory=list)  # ids of rows that would not decrypt

    @property
    def seen(self):
        return self.rewrapped + self.unchanged + len(self.failed)


def version_counts():
    """{master-key version: number of rows}, lowest version first."""
    rows = ApiKey.objects.order_by().values_list("secret_key_version").annotate(n=Count("pk"))
    return dict(sorted(rows))


def describe(counts):
    """Counts as text: "v1: 120 rows, v2: 3 rows", or "no keys"."""
    if not counts:
        return "no keys"
    return ", ".join(f"v{version}: {n} row{'s' if n != 1 else ''}" for version, n in counts.items())


def stale_batches(current, batch_size):
    """Batches of keys not on version `current`, by primary key. Keyset pagination (id >
    last id), not OFFSET: rows rewrapped behind us do not shift the next page."""
    after = None
    while True:
        keys = ApiKey.objects.exclude(secret_key_version=current).order_by("pk")
        if after is not None:
            keys = keys.filter(pk__gt=after)
        fields = ["pk", "secret_ciphertext", "secret_key_version", *ApiKey.destination_fields]
        batch = list(keys.only(*fields)[:batch_size])
        if not batch:
            return
        yield batch
        after = batch[-1].pk


def rewrap_all(batch_size=500, dry_run=False, ring=None, on_batch=None):
    """Rewrap every key not on the newest version; returns a Progress. A row that fails to
    decrypt is recorded by id and skipped. With dry_run, rows are decrypted (to find the
    ones that would fail) but nothing is written. `on_batch(progress)` runs after each batch."""
    ring = ring or crypto.keyring()
    progress = Progress()
    for batch in stale_batches(ring.current, batch_size):
        for key in batch:
            try:
                if dry_run:
                    crypto.decrypt(
                        key.secret_ciphertext,
                        key.secret_key_version,
                        key.pk,
                        ring=ring,
                        binding=key.destination_binding(),
                    )
                    changed = True
                else:
                    changed = key.rewrap(ring=ring)
            except crypto.DecryptionError:
                progress.failed.append(key.pk)
                continue
            if changed:
                progress.rewrapped += 1
            else:
                progress.unchanged += 1
        if on_batch:
            on_batch(progress)
    return progress
