"""Sync one organization with OpenAI's Administration API now, with a progress bar and a
summary table. Exits non-zero on failure."""

from django.core.management.base import CommandError
from tqdm import tqdm

from console.leakguard import GuardedCommand
from sync import sync

COLUMNS = ("created", "updated", "unchanged", "deleted")


class Command(GuardedCommand):
    help = (
        "Sync an organization (by slug) with OpenAI's Administration API using its admin key: projects, keys, "
        "service accounts, rate limits, admin keys, spend alerts and audit-log events. Prints what changed and "
        "the reconciliation (unmanaged, deleted upstream, orphaned). Ignores the scheduled backoff."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug", help="Organization slug.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args, slug, no_progress, **options):
        organization = sync.organization_by_slug(slug)
        if organization is None:
            raise CommandError(f"No organization with slug “{slug}”.")
        if sync.admin_key_of(organization) is None:
            raise CommandError(f"Organization “{slug}” has no active admin key: add one (kind “Admin key”).")
        with tqdm(unit="project", disable=no_progress, file=self.stderr._out, desc=slug) as bar:

            def progress(total=None, done=0):
                if total is not None:
                    bar.total = total
                bar.update(done)

            summary = sync.sync_safely(organization, progress=progress)
        if slug in summary.failed:
            self.stderr.write(f"{slug}: {summary.failed[slug]}")
            raise CommandError(f"The sync of “{slug}” failed; nothing was changed.")
        self.print_report(summary.reports[slug])

    def print_report(self, report):
        width = max(len("section"), *(len(name) for name in report.sections))
        self.stdout.write("  ".join(["section".ljust(width), *(c.rjust(9) for c in COLUMNS)]))
        rows = [*report.sections.items(), ("total", report.total())]
        for name, counts in rows:
            self.stdout.write("  ".join([name.ljust(width), *(str(getattr(counts, c)).rjust(9) for c in COLUMNS)]))
        self.stdout.write(
            f"unmanaged: {report.unmanaged}  deleted upstream: {report.deleted_upstream}  orphaned: {report.orphaned}"
        )
        state = "changes written" if report.has_changes() else "no changes"
        self.stdout.write(f"{state}; {report.requests} requests in {report.duration_ms / 1000:.1f} s")
