"""`manage.py list_keys`: the key inventory, as a table or JSON. Hints only: no
ciphertext, no fingerprint, never a secret."""

import json

from django.core.management.base import CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import F, Q

from accounts.models import Organization
from console.exports import csv_lines
from console.leakguard import GuardedCommand
from console.upstream import Outcome
from keys.models import ApiKey

# (output name, queryset field): read with values() so ciphertext and fingerprint are
# never even loaded.
COLUMNS = [
    ("id", "id"),
    ("organization", "organization__slug"),
    ("project", "project__name"),
    ("name", "name"),
    ("kind", "kind"),
    ("provider", "provider"),
    ("hint", "hint"),
    ("owner", "owner"),
    ("issued_at", "issued_at"),
    ("rotated_at", "rotated_at"),
    ("expires_at", "expires_at"),
    ("revoked_at", "revoked_at"),
    ("last_probe_outcome", "last_probe_outcome"),
    ("last_probe_at", "last_probe_at"),
]
# The table fits 120 columns: fewer, combined columns; longer values are cut with "…"
# (--format csv or json give every column, ids included).
TABLE = [
    # (header, width, how a row's values give the cell)
    ("NAME", 24, lambda r: r["name"]),
    ("ORGANIZATION/PROJECT", 26, lambda r: f"{r['organization']}/{r['project'] or '(organization)'}"),
    ("KIND", 7, lambda r: KIND_SHORT.get(r["kind"], r["kind"])),
    ("HINT", 16, lambda r: r["hint"]),
    ("ROTATED", 10, lambda r: r["rotated_at"] or r["issued_at"]),
    ("LAST PROBE", 25, lambda r: last_probe(r)),
]
KIND_SHORT = {"project": "project", "service_account": "svcacct", "admin": "admin"}
CHUNK = 2000


def last_probe(row):
    if row["revoked_at"]:
        return f"revoked {row['revoked_at']:%Y-%m-%d}"
    if not row["last_probe_outcome"]:
        return "never probed"
    return f"{Outcome(row['last_probe_outcome']).label} {row['last_probe_at']:%m-%d %H:%M}"


def cell(value, width):
    if value is None or value == "":
        text = "-"
    elif hasattr(value, "strftime"):
        text = value.strftime("%Y-%m-%d")
    else:
        text = str(value)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


class Command(GuardedCommand):
    help = "List API keys (hints only) with their organization, project, dates and last probe."

    def add_arguments(self, parser):
        parser.add_argument("--org", default="", help="Only this organization (slug).")
        parser.add_argument("--project", default="", help="Only this project (name or proj_… id).")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.add_argument("--include-revoked", action="store_true", help="Also list revoked keys.")

    def handle(self, *args, **options):
        keys = ApiKey.objects.all()
        if options["org"]:
            org = Organization.objects.by_slug(options["org"])
            if org is None:
                raise CommandError(f"No organization with slug “{options['org']}”.")
            keys = keys.in_organization(org)
        if options["project"]:
            lookup = options["project"]
            keys = keys.filter(Q(project__name=lookup) | Q(project__openai_project_id=lookup))
        if not options["include_revoked"]:
            keys = keys.active()
        rows = (
            # Organization-level (admin) keys first, then by project.
            keys.order_by("organization__slug", F("project__name").asc(nulls_first=True), "name", "id")
            .values_list(*(field for _, field in COLUMNS))
            .iterator(chunk_size=CHUNK)
        )
        if options["format"] == "json":
            self.write_json(rows)
        elif options["format"] == "csv":
            self.write_csv(rows)
        else:
            self.write_table(rows)

    def write_json(self, rows):
        # Streamed: one object per line inside a JSON array, so 50,000 keys never sit in memory twice.
        names = [name for name, _ in COLUMNS]
        self.stdout.write("[", ending="")
        for n, row in enumerate(rows):
            obj = json.dumps(dict(zip(names, row, strict=True)), cls=DjangoJSONEncoder)
            self.stdout.write(("\n" if n == 0 else ",\n") + obj, ending="")
        self.stdout.write("\n]")

    def write_csv(self, rows):
        for line in csv_lines([name for name, _ in COLUMNS], rows):
            self.stdout.write(line, ending="")

    def write_table(self, rows):
        names = [name for name, _ in COLUMNS]
        self.stdout.write("  ".join(header.ljust(width) for header, width, _ in TABLE).rstrip())
        count = 0
        for row in rows:
            values = dict(zip(names, row, strict=True))
            self.stdout.write("  ".join(cell(get(values), width) for _, width, get in TABLE).rstrip())
            count += 1
        self.stdout.write(f"{count} key{'s' if count != 1 else ''}.")
