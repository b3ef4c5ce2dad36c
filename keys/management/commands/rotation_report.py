"""`manage.py rotation_report`: one row per key with its rotation state and stale flags,
now or `--as-of` a past date, as a table (120 columns), CSV or JSON. Hints only: never a
secret. Each run is an audit event (report.exported)."""

from django.core.management.base import CommandError
from django.utils.timezone import now

from accounts.models import AuditEvent, Environment, Organization
from console.leakguard import GuardedCommand
from keys import report, report_csv
from keys.states import FlagName, RotationState

ACTOR = "cli:rotation_report"


class Command(GuardedCommand):
    help = "The rotation report: every key's rotation state and stale flags, now or as of a past date."

    def add_arguments(self, parser):
        parser.add_argument("--org", default="", help="Only this organization (slug).")
        parser.add_argument("--project", default="", help="Only this project (name or proj_… id).")
        parser.add_argument("--environment", default="", choices=["", *Environment.values])
        parser.add_argument("--state", default="", choices=["", *RotationState.values])
        parser.add_argument("--flag", default="", choices=["", *FlagName.values])
        parser.add_argument(
            "--as-of", default="", help="The state as it was then: YYYY-MM-DD (end of that day, UTC) or ISO time."
        )
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")

    def handle(self, *args, **options):
        if options["org"] and Organization.objects.by_slug(options["org"]) is None:
            raise CommandError(f"No organization with slug “{options['org']}”.")
        try:
            filters = report.Filters(
                organization=options["org"],
                project=options["project"],
                environment=options["environment"],
                state=options["state"],
                flag=options["flag"],
            )
            as_of = report.parse_as_of(options["as_of"])
        except report.ReportError as e:
            raise CommandError(str(e)) from None
        current = now()
        if as_of is not None and as_of > current:
            raise CommandError("--as-of is in the future: the report shows what was, not what will be.")
        fmt = options["format"]
        if fmt == "csv":
            # The download's own stream (keys/report_csv.py csv_stream), the same bytes, a row
            # at a time so that the audit event counts what was written.
            rows = -1  # the header
            for line in report_csv.csv_stream(filters, current, as_of, lines=1):
                self.stdout.write(line, ending="")
                rows += 1
            AuditEvent.record(ACTOR, "report.exported", None, **report.export_details(filters, as_of, rows, fmt))
            return
        result = report.build(filters, current, as_of)
        if fmt == "json":
            self.stdout.write(report.to_json(result))
        else:
            self.stdout.write(report.to_table(result), ending="")
        AuditEvent.record(ACTOR, "report.exported", None, **report.audit_details(result, fmt))
