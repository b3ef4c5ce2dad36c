"""Ingest usage and costs now (a backfill, or a catch-up), with a progress bar and a
summary table. Exits non-zero if any organization failed."""

from datetime import UTC, datetime, timedelta

from django.core.management.base import CommandError
from django.utils import timezone
from tqdm import tqdm

from accounts.models import Organization
from console.leakguard import GuardedCommand
from usage import ingest


def parse_day(value, option):
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"{option} takes a date as YYYY-MM-DD (got “{value}”).") from None


class Command(GuardedCommand):
    help = (
        "Read usage and costs from OpenAI's Usage and Costs APIs for every organization with an admin key "
        "(or one), for [--since, --until) in UTC days, and upsert them. Without --since: the trailing window "
        "(or USAGE_BACKFILL_DAYS for an organization never ingested). Ignores the scheduled backoff."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Organization slug (default: every organization with an admin key).")
        parser.add_argument("--since", help="First UTC day, YYYY-MM-DD (inclusive).")
        parser.add_argument("--until", help="Last UTC day, YYYY-MM-DD (exclusive; default: tomorrow).")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args, org, since, until, no_progress, **options):
        now = timezone.now()
        since = parse_day(since, "--since") if since else None
        until = parse_day(until, "--until") if until else ingest.day_start(now) + timedelta(days=1)
        if since and since >= until:
            raise CommandError("--since must be before --until.")
        if org:
            organization = Organization.objects.by_slug(org)
            if organization is None:
                raise CommandError(f"No organization with slug “{org}”.")
            if ingest.admin_key_of(organization) is None:
                raise CommandError(
                    f"Organization “{org}” has no active admin key: add one (kind “Admin key”) on its page."
                )
            organizations = [organization]
        else:
            organizations = list(ingest.organizations_with_admin_keys())
            if not organizations:
                raise CommandError("No organization has an active admin key: nothing to ingest.")
        summary = ingest.Summary()
        with tqdm(total=len(organizations), unit="org", disable=no_progress, file=self.stderr._out) as bar:
            for organization in organizations:
                window_since = since or ingest.default_window(ingest.state_of(organization), now)[0]
                summary.add(ingest.ingest_safely(organization, window_since, until, now))
                bar.update(1)
        self.print_summary(summary)
        if summary.failed:
            for slug, message in summary.failed.items():
                self.stderr.write(f"{slug}: {message}")
            raise CommandError(f"{len(summary.failed)} organization(s) failed: {', '.join(summary.failed)}.")

    def print_summary(self, summary):
        columns = ["buckets", "results", "created", "updated", "unchanged"]
        rows = [(name, summary.endpoints[name]) for name in sorted(summary.endpoints)]
        rows.append(("total", summary.total()))
        width = max(len("endpoint"), *(len(name) for name, _ in rows))
        self.stdout.write("  ".join(["endpoint".ljust(width), *(c.rjust(9) for c in columns)]))
        for name, counts in rows:
            self.stdout.write("  ".join([name.ljust(width), *(str(getattr(counts, c)).rjust(9) for c in columns)]))
        self.stdout.write(f"organizations: {len(summary.succeeded)} ok, {len(summary.failed)} failed")
