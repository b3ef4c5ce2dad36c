"""Run a probe sweep in the foreground, with a progress bar and a summary table."""

import uuid
from collections import Counter

from django.core.management.base import CommandError
from django.db.models import Q
from django.utils import timezone
from tqdm import tqdm

from accounts.models import Organization
from console.leakguard import GuardedCommand
from keys import probe, sweep
from keys.models import ApiKey


class Command(GuardedCommand):
    help = "Probe keys now (all active keys, or those selected) and print a summary of outcomes."

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Organization slug.")
        parser.add_argument("--project", help="Project name or OpenAI project id (proj_…).")
        parser.add_argument("--key", action="append", default=[], help="Key id (UUID); repeatable.")
        parser.add_argument("--due-only", action="store_true", help="Only keys whose probe is due.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args, org, project, key, due_only, no_progress, **options):
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
                raise CommandError("--key takes key ids (UUIDs), as shown by list_keys.") from None
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
