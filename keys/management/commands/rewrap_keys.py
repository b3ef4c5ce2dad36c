"""`manage.py rewrap_keys`: re-encrypt every secret under the newest master key
(keys/rewrap.py). Safe to kill and rerun."""

from django.core.management.base import CommandError

from console.leakguard import GuardedCommand
from keys import crypto, rewrap


class Command(GuardedCommand):
    help = (
        "Re-encrypt every API-key secret under the newest key in CONSOLE_ENCRYPTION_KEYS. "
        "Idempotent and resumable; rows that fail to decrypt are reported by id."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per batch (default 500).")
        parser.add_argument("--dry-run", action="store_true", help="Decrypt and count, write nothing.")

    def handle(self, *args, batch_size, dry_run, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be 1 or more.")
        try:
            ring = crypto.keyring()
        except crypto.ConfigurationError as e:
            raise CommandError(f"{e} Nothing was changed.") from None

        self.stdout.write(f"Newest master key: v{ring.current}.")
        self.stdout.write(f"Before: {rewrap.describe(rewrap.version_counts())}")
        self.stdout.flush()
        verb = "would be rewrapped" if dry_run else "rewrapped"
        batches = 0

        def report(progress):
            nonlocal batches
            batches += 1
            self.stdout.write(
                f"Batch {batches}: {progress.rewrapped} rows {verb} so far, {len(progress.failed)} failed"
            )
            self.stdout.flush()  # so whoever watches (or kills) the run sees where it got to

        progress = rewrap.rewrap_all(batch_size=batch_size, dry_run=dry_run, ring=ring, on_batch=report)

        self.stdout.write(
            f"Done: {progress.rewrapped} rows {verb}, {progress.unchanged} already done by another process."
        )
        self.stdout.write(f"After: {rewrap.describe(rewrap.version_counts())}")
        if progress.failed:
            for key_id in progress.failed:
                self.stderr.write(f"Key {key_id}: cannot be decrypted with the configured master keys.")
            raise CommandError(
                f"{len(progress.failed)} row(s) could not be decrypted and were left as they are "
                "(ids above). Check CONSOLE_ENCRYPTION_KEYS still lists the key that wrote them."
            )
