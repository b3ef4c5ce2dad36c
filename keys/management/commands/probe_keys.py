"""Run a probe sweep in the foreground, with a progress bar and a summary table. Exits 1
when a probed key failed (the outcomes that count are chosen with --fail-on), after listing
the failing keys — so a CI job or a cron wrapper can act on it."""

import uuid
from collections import Counter

from django.core.management.base import CommandError
from django.db.models import Q
from django.utils import timezone
from tqdm import tqdm

from accounts.models import Organization
from console.leakguard import GuardedCommand
from console.upstream import Outcome
from keys import probe, sweep
from keys.models import ApiKey, ProbeResult


def outcome_list(value):
    """--fail-on's value: outcome names separated by commas, each a known outcome; "none"
    to always exit 0."""
    if value.strip().lower() == "none":
        return set()
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in Outcome.values]
    if unknown:
        raise CommandError(
            f"Unknown outcome(s) for --fail-on: {', '.join(unknown)}. Known: {', '.join(Outcome.values)}."
        )
    return set(names)


class Command(GuardedCommand):
    help = "Probe keys now (all active keys, or those selected) and print a summary of outcomes."

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Organization slug.")
        parser.add_argument("--project", help="Project name or OpenAI project id (proj_…).")
        parser.add_argument("--key", action="append", default=[], help="Key id (UUID); repeatable.")
        parser.add_argument("--due-only", action="store_true", help="Only keys whose probe is due.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
        parser.add_argument(
            "--fail-on",
            default=",".join(sorted(Outcome.failures())),
            help="Outcomes that exit 1, comma-separated (default: every failing outcome); none: never.",
        )

    def handle(self, *args, org, project, key, due_only, no_progress, fail_on, **options):
        fail_on = outcome_list(fail_on)
        keys = ApiKey.objects.due_for_probe(timezone.now()) if due_only else ApiKey.objects.active()
        if org:
            if not Organization.objects.filter(slug=org).exists():
                raise CommandError(f"No organization with slug “{org}”.")
            keys = keys.filter(organization__slug=org)
        if project:
            keys = keys.filter(Q(project__name=project) | Q(project__openai_project_id=project))
            if not keys.exists():
                raise CommandError(f"No active keys in a project named or with id “{project}”.")
        if key:
            try:
                ids = [uuid.UUID(k) for k in key]
            except ValueError:
                raise CommandError("--key takes key ids (UUIDs), as shown by list_keys --format csv.") from None
            keys = keys.filter(pk__in=ids)
        claims = sweep.claim(keys, slot_from_due_time=False)
        if not claims:
            self.stdout.write("No keys to probe.")
            return
        total = probe.Summary()
        with tqdm(total=len(claims), unit="key", disable=no_progress, file=self.stderr._out) as bar:
            for batch in sweep.batches(claims):
                total.add(probe.run_batch(batch))
                bar.update(len(batch))
        self.print_summary(total, len(claims))
        failing = self.failing(claims, fail_on)
        if failing:
            self.print_failing(failing)
            raise CommandError(f"{len(failing)} key(s) failed their probe.", returncode=1)

    def failing(self, claims, fail_on):
        """This run's results whose outcome is in `fail_on`: one query, however many keys."""
        slots = {str(claim.key_id): claim.slot for claim in claims}
        results = (
            ProbeResult.objects.filter(key_id__in=slots, slot__in=set(slots.values()), outcome__in=fail_on)
            .select_related("key__project", "key__organization")
            .order_by("key__organization__slug", "key__project__name", "key__name")
        )
        return [r for r in results if slots[str(r.key_id)] == r.slot]

    def print_failing(self, results):
        self.stdout.write("")
        self.stdout.write("Failing keys:")
        for r in results:
            where = f"{r.key.organization.slug}/{r.key.project.name if r.key.project else '(organization)'}"
            status = f"HTTP {r.http_status}" if r.http_status else "no response"
            self.stdout.write(
                f"  {r.key.name} ({r.secret_hint or r.key.hint}) in {where}: "
                f"{Outcome(r.outcome).label}, {status} — {r.message or '-'} [{r.key_id}]"
            )

    def print_summary(self, summary, claimed):
        rows = sorted(summary.outcomes.items(), key=lambda kv: (-kv[1], kv[0]))
        width = max([len("outcome")] + [len(o) for o, _ in rows])
        self.stdout.write(f"{'outcome'.ljust(width)}  keys")
        for outcome, count in rows:
            self.stdout.write(f"{outcome.ljust(width)}  {count}")
        extra = Counter(deferred=summary.deferred, already_done=summary.already_done)
        for label, count in extra.items():
            if count:
                self.stdout.write(f"{label.ljust(width)}  {count}")
        self.stdout.write(f"{'total'.ljust(width)}  {claimed}")
