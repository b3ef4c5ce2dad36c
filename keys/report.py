"""The rotation report: one row per key, for security reviewers, now or as of a past date.

`build(filters, now, as_of=None)` reads every row in ONE query (joins for organization and
project, subqueries for history) and computes each row's state and stale flags with the
pure rules of keys/states.py; totals per state and per flag come from the rows. Filters
(organization, project, environment, state, flag) are applied in SQL by the same rules'
SQL twins.

`as_of`: the state as it was then, recomputed from history, never guessed:
- keys issued after it are absent;
- the last rotation is the latest KeyEvent ROTATED at or before it (with its actor), else
  the issue date;
- revoked if a REVOKED event (or revoked_at) is at or before it; leaked, archived, owner
  gone, deleted upstream and expired likewise by their dates;
- the last probe is the latest ProbeResult started at or before it, and "failing" counts
  the failed results after the last success at or before it (results older than
  PROBE_RESULTS_KEEP_DAYS are pruned: then there is no probe to show);
- the last use is last_used_at when that is at or before it, else the newest usage bucket
  with requests ending at or before it, else unknown.
What has no history is read as it is now: the rotation policy (organization and project),
the owner, names and expires_at (a date, compared with the as-of moment).

Rows never hold secret material: values() reads named columns only (no ciphertext, no
fingerprint); the hint is the display hint. CSV cells that a spreadsheet would run as a
formula are prefixed with a quote.
"""

import csv
import io
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, time
from json.encoder import encode_basestring

from django.core.exceptions import FieldDoesNotExist
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Case, Count, F, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils.dateparse import parse_date, parse_datetime

from console.exports import formula_safe
from console.pg_timestamps import iso_timestamps
from console.upstream import Outcome

from .models import ApiKey, KeyAction, KeyEvent, ProbeResult
from .states import LIVE, Facts, FlagName, RotationState, Sources, evaluate, flag_field

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (row field, header): the order of every format.
COLUMNS = [
    ("organization", "Organization"),
    ("project", "Project"),
    ("environment", "Environment"),
    ("key_name", "Key name"),
    ("key_id", "Key id"),
    ("kind", "Kind"),
    ("hint", "Hint"),
    ("owner", "Owner"),
    ("issued_at", "Issued"),
    ("last_rotated_at", "Last rotated"),
    ("last_rotated_by", "Rotated by"),
    ("policy_days", "Policy days"),
    ("next_due_at", "Next due"),
    ("days_overdue", "Days overdue"),
    ("state", "State"),
    ("flags", "Stale flags"),
    ("flag_reasons", "Flag reasons"),
    ("last_probe_outcome", "Last probe"),
    ("last_probe_at", "Last probe at"),
    ("last_used_at", "Last used"),
    ("encryption_key_version", "Encryption key version"),
]


class ReportError(ValueError):
    """A filter that names nothing, or a date that is not one."""


@dataclass(frozen=True)
class Filters:
    organization: str = ""  # slug
    project: str = ""  # name or proj_… id
    environment: str = ""
    state: str = ""
    flag: str = ""

    def __post_init__(self):
        if self.state and self.state not in RotationState.values:
            raise ReportError(f"Unknown state “{self.state}”: one of {', '.join(RotationState.values)}.")
        if self.flag and self.flag not in FlagName.values:
            raise ReportError(f"Unknown flag “{self.flag}”: one of {', '.join(FlagName.values)}.")

    def as_dict(self):
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class Report:
    generated_at: datetime
    as_of: datetime | None
    filters: Filters
    rows: list
    totals: dict  # state value → count
    flag_totals: dict  # flag value → count

    @property
    def at(self):
        return self.as_of or self.generated_at


def parse_as_of(text):
    """A date (the end of that day, UTC) or an ISO date-time; None for empty."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        day = parse_date(text)  # a bare date: the end of that day
        moment = datetime.combine(day, time.max, tzinfo=UTC) if day else parse_datetime(text)
    except ValueError:
        moment = None
    if moment is None:
        raise ReportError("As of: not a date (YYYY-MM-DD) or an ISO date-time.")  # never echoes the input
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- sources ------------------------------------------------------------------------------
def usage_bucket_model():
    """The usage app's bucket model, through the key's reverse relation (keys sits below
    usage and does not import it); None when usage is not installed."""
    try:
        return ApiKey._meta.get_field("usage_buckets").related_model
    except FieldDoesNotExist:
        return None


def as_of_sources(at):
    """Sources (keys/states.py) for the state at `at`, from history."""
    rotations = KeyEvent.objects.filter(key=OuterRef("pk"), action=KeyAction.ROTATED, at__lte=at).order_by("-at", "-pk")
    revocation = (
        KeyEvent.objects.filter(key=OuterRef("pk"), action=KeyAction.REVOKED, at__lte=at)
        .order_by("at", "pk")
        .values("at")[:1]
    )
    probes = ProbeResult.objects.filter(key=OuterRef("pk"), started_at__lte=at).order_by("-started_at", "-pk")
    last_success = (
        ProbeResult.objects.filter(
            key=OuterRef(OuterRef("pk")), started_at__lte=at, outcome__in=[Outcome.OK, Outcome.RATE_LIMITED]
        )
        .order_by("-started_at")
        .values("started_at")[:1]
    )
    failures = (
        ProbeResult.objects.filter(key=OuterRef("pk"), started_at__lte=at, outcome__in=Outcome.failures())
        .filter(started_at__gt=Coalesce(Subquery(last_success), Value(EPOCH)))
        .order_by()
        .values("key")
        .annotate(n=Count("pk"))
        .values("n")
    )
    buckets = usage_bucket_model()
    if buckets is not None:
        newest = (
            buckets.objects.filter(key=OuterRef("pk"), end_time__lte=at, num_model_requests__gt=0)
            .order_by("-end_time")
            .values("end_time")[:1]
        )
        used = Case(When(last_used_at__lte=at, then=F("last_used_at")), default=Subquery(newest))
    else:
        used = Case(When(last_used_at__lte=at, then=F("last_used_at")), default=None)
    return Sources(
        rotated_at=Subquery(rotations.values("at")[:1]),
        revoked_at=Coalesce(Subquery(revocation), F("revoked_at")),
        last_used_at=used,
        last_probe_outcome=Coalesce(Subquery(probes.values("outcome")[:1]), Value("")),
        consecutive_failures=Coalesce(Subquery(failures, output_field=IntegerField()), Value(0)),
    ), {
        "r_rotated_by": Subquery(rotations.values("actor_label")[:1]),
        "r_last_probe_at": Subquery(probes.values("started_at")[:1]),
    }


def live_extras():
    return {"r_rotated_by": F("rotated_by"), "r_last_probe_at": F("last_probe_at")}


# --- the query ------------------------------------------------------------------------------
FACT_FIELDS = [
    "rotated_at",
    "revoked_at",
    "last_used_at",
    "last_probe_outcome",
    "consecutive_failures",
    "deleted_upstream_at",
    "project_archived_at",
    "owner_left_at",
    "leaked_at",
]
PLAIN_FIELDS = [
    "pk",
    "organization__slug",
    "organization__name",
    "project__name",
    "project__environment",
    "name",
    "kind",
    "hint",
    "owner",
    "issued_at",
    "expires_at",
    "secret_key_version",
]


def filtered(filters, as_of=None):
    """The keys the organization, project and environment filters select (and, as of a
    past date, that existed then)."""
    keys = ApiKey.objects.all()
    if as_of is not None:
        keys = keys.filter(issued_at__lte=as_of)
    if filters.organization:
        keys = keys.filter(organization__slug=filters.organization)
    if filters.project:
        keys = keys.filter(Q(project__name=filters.project) | Q(project__openai_project_id=filters.project))
    if filters.environment:
        keys = keys.filter(project__environment=filters.environment)
    return keys


def annotated(filters, at, as_of=None):
    """The filtered keys, annotated with the rules' SQL twins at `at`; and the sources."""
    if as_of is None:
        sources, extras = LIVE, live_extras()
    else:
        sources, extras = as_of_sources(as_of)
    keys = filtered(filters, as_of).with_rotation(at, sources)
    if filters.state:
        keys = keys.filter(key_state=filters.state)
    if filters.flag:
        keys = keys.filter(**{flag_field(filters.flag): True})
    return keys, sources, extras


def queryset(filters, at, as_of=None):
    """The report's one query: values() rows with every fact the rules need."""
    keys, sources, extras = annotated(filters, at, as_of)
    facts = {f"r_{name}": getattr(sources, name) for name in FACT_FIELDS}
    return (
        keys.annotate(**facts, **extras)
        .order_by("organization__slug", F("project__name").asc(nulls_first=True), "name", "pk")
        .values(*PLAIN_FIELDS, "policy_days", *facts, *extras)
    )


def make_row(values, at):
    facts = Facts(
        issued_at=values["issued_at"],
        policy_days=values["policy_days"],
        expires_at=values["expires_at"],
        **{name: values[f"r_{name}"] for name in FACT_FIELDS},
    )
    if facts.consecutive_failures is None:
        facts = Facts(**{**asdict(facts), "consecutive_failures": 0})
    result = evaluate(facts, at)
    state, flags = result.state, result.flags
    outcome = values["r_last_probe_outcome"] or ""
    return {
        "organization": values["organization__slug"],
        "project": values["project__name"] or "",
        "environment": values["project__environment"] or "",
        "key_name": values["name"],
        "key_id": str(values["pk"]),
        "kind": values["kind"],
        "hint": values["hint"],
        "owner": values["owner"],
        "issued_at": values["issued_at"],
        "last_rotated_at": facts.rotated_at,
        "last_rotated_by": (values["r_rotated_by"] or "") if facts.rotated_at else "",
        "policy_days": facts.policy_days,
        "next_due_at": result.next_due,
        "days_overdue": result.days_overdue,
        "state": state.value,
        "state_label": state.label,
        "flags": [{"name": f.name.value, "reason": f.reason, "since": f.since} for f in flags],
        "last_probe_outcome": outcome,
        "last_probe_at": values["r_last_probe_at"] if outcome else None,
        "last_used_at": facts.last_used_at if facts.last_used_at and facts.last_used_at <= at else None,
        "encryption_key_version": values["secret_key_version"],
    }


@contextmanager
def without_jit():
    """PostgreSQL compiles a query this wide (a CASE per rule, a subquery per fact) with
    its JIT, which at 50,000 keys cost more than it saved (4 s of a 6.5 s as-of query, see
    docs/PERFORMANCE.md): turn it off for the report's own transaction only."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
        yield


def build(filters=None, now=None, as_of=None):
    """The report at `as_of` (a past moment), or at `now`. One query (on PostgreSQL with
    JIT off for it)."""
    filters = filters or Filters()
    now = now or datetime.now(UTC)
    at = as_of or now
    with without_jit():
        rows = [make_row(values, at) for values in queryset(filters, at, as_of).iterator(chunk_size=5000)]
    totals = dict.fromkeys(RotationState.values, 0)
    flag_totals = dict.fromkeys(FlagName.values, 0)
    for row in rows:
        totals[row["state"]] += 1
        for flag in row["flags"]:
            flag_totals[flag["name"]] += 1
    return Report(now, as_of, filters, rows, totals, flag_totals)


def count_totals(keys):
    """({state: count}, {flag: count}) over annotated() keys, in one aggregate query by the
    SQL twins of the rules (tests/test_key_states.py checks they agree with the rules)."""
    aggregates = {f"s_{state}": Count("pk", filter=Q(key_state=state)) for state in RotationState.values}
    aggregates.update({f"f_{flag}": Count("pk", filter=Q(**{flag_field(flag): True})) for flag in FlagName.values})
    counted = keys.aggregate(**aggregates)
    totals = {state: counted[f"s_{state}"] for state in RotationState.values}
    return totals, {flag: counted[f"f_{flag}"] for flag in FlagName.values}


def build_page(filters=None, now=None, as_of=None, page=1, per_page=200):
    """For the admin page: the totals of every matching key (one aggregate query, by the
    SQL twins of the rules) and the rows of one page (one query). Returns (report, count);
    report.rows holds that page only."""
    filters = filters or Filters()
    now = now or datetime.now(UTC)
    at = as_of or now
    keys, _, _ = annotated(filters, at, as_of)
    with without_jit():
        totals, flag_totals = count_totals(keys)
        count = sum(totals.values())
        pages = max((count + per_page - 1) // per_page, 1)
        page = min(max(page, 1), pages)
        start = (page - 1) * per_page
        rows = [make_row(values, at) for values in queryset(filters, at, as_of)[start : start + per_page]]
    return Report(now, as_of, filters, rows, totals, flag_totals), count


# --- formats --------------------------------------------------------------------------------
def plain(value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return str(value)


def cell(row, field):
    if field == "flags":
        return ", ".join(f["name"] for f in row["flags"])
    if field == "flag_reasons":
        return " | ".join(
            f"{f['name']}: {f['reason']}" + (f" (since {plain(f['since'])})" if f["since"] else "")
            for f in row["flags"]
        )
    if field == "last_used_at" and row[field] is None:
        return "unknown"
    return plain(row[field])


def csv_row(row):
    """A row's CSV cells, formula-safe."""
    return [formula_safe(cell(row, field)) for field, _ in COLUMNS]


def to_csv(report):
    """The CSV of a built report: the reference whose bytes keys/report_csv.py streams."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([header for _, header in COLUMNS])
    for row in report.rows:
        writer.writerow(csv_row(row))
    return out.getvalue()


def export_size(filters=None, now=None, as_of=None):
    """How many rows a streamed export holds, known before its first byte: a COUNT with
    the rows' own WHERE (the same filters, the SQL twins of the rules for state and flag),
    so it is the row count unless a key is registered, deleted or changes state in the
    milliseconds between this statement and the stream's (README, "The rotation report")."""
    filters = filters or Filters()
    if not filters.state and not filters.flag:
        return filtered(filters, as_of).count()  # no rule to evaluate, no join to make
    at = as_of or now or datetime.now(UTC)
    keys, _, _ = annotated(filters, at, as_of)
    with without_jit():
        return keys.count()


def to_json(report):
    rows = [json_row(row) for row in report.rows]
    document = {
        "generated_at": report.generated_at,
        "as_of": report.as_of,
        "filters": report.filters.as_dict(),
        "totals": report.totals,
        "flag_totals": report.flag_totals,
        "rows": rows,
    }
    return json.dumps(document, cls=DjangoJSONEncoder, indent=1, ensure_ascii=False)


# --- the JSON, streamed ----------------------------------------------------------------------
# to_json(build()) is the reference here too. json.dumps(indent=1) runs the pure-Python
# encoder (the C one has no indent), most of the 6.7 s the 50,000-key JSON took; the rows are
# written by `indented`, which lays out the same text for the types a row holds.


def export_totals(filters=None, now=None, as_of=None):
    """The totals of a streamed JSON export, before its first byte: count_totals() over the
    rows' own WHERE. Their sum is the audited row count."""
    filters = filters or Filters()
    at = as_of or now or datetime.now(UTC)
    keys, _, _ = annotated(filters, at, as_of)
    with without_jit():
        return count_totals(keys)


_encoder = DjangoJSONEncoder()


def indented(value, level):
    """json.dumps(value, cls=DjangoJSONEncoder, indent=1, ensure_ascii=False) of a value
    nested `level` deep: dicts, lists, str, int, bool, None, and what DjangoJSONEncoder
    turns into a string (datetimes)."""
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = "\n" + " " * (level + 1)
        items = [f"{encode_basestring(str(k))}: {indented(v, level + 1)}" for k, v in value.items()]
        return "{" + pad + ("," + pad).join(items) + "\n" + " " * level + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        pad = "\n" + " " * (level + 1)
        return "[" + pad + ("," + pad).join([indented(v, level + 1) for v in value]) + "\n" + " " * level + "]"
    if isinstance(value, float):
        return json.dumps(value)
    return indented(_encoder.default(value), level)


def json_row(row):
    """A row as to_json() puts it in the document."""
    row = {field: row[field] for field, _ in COLUMNS if field != "flag_reasons"}
    row["last_used_at"] = row["last_used_at"] or "unknown"
    return row


def json_stream(filters=None, now=None, as_of=None, totals=None, flag_totals=None, chunk_size=2000, lines=200):
    """to_json(build()) in pieces: the document up to its rows at once (the totals from
    export_totals(), or from the caller), then the rows `lines` at a time from the
    server-side cursor, like keys/report_csv.py csv_stream()."""
    filters = filters or Filters()
    now = now or datetime.now(UTC)
    at = as_of or now
    if totals is None or flag_totals is None:
        totals, flag_totals = export_totals(filters, now, as_of)
    document = {
        "generated_at": now,
        "as_of": as_of,
        "filters": filters.as_dict(),
        "totals": totals,
        "flag_totals": flag_totals,
        "rows": [],
    }
    head = json.dumps(document, cls=DjangoJSONEncoder, indent=1, ensure_ascii=False)
    yield head[: -len("]\n}")]  # … "rows": [
    separator, batch = "\n  ", []
    with without_jit(), iso_timestamps(connection):
        rows = queryset(filters, at, as_of).iterator(chunk_size=chunk_size)
        try:
            for values in rows:
                batch.append(separator + indented(json_row(make_row(values, at)), 2))
                separator = ",\n  "
                if len(batch) >= lines:
                    yield "".join(batch)
                    batch = []
        finally:
            rows.close()
    yield "".join(batch) + ("]\n}" if separator == "\n  " else "\n ]\n}")


# (field, header, width), one space apart: the table fits 120 columns.
TABLE = [
    ("organization", "ORG", 10),
    ("project", "PROJECT", 10),
    ("environment", "ENV", 5),
    ("key_name", "KEY", 14),
    ("hint", "HINT", 16),
    ("state", "STATE", 9),
    ("next_due_at", "NEXT DUE", 10),
    ("days_overdue", "LATE", 4),
    ("flags", "FLAGS", 15),
    ("last_probe_outcome", "PROBE", 7),
    ("last_used_at", "LAST USED", 10),
]
WIDTH = sum(width for _, _, width in TABLE) + len(TABLE) - 1


def fit(text, width):
    return (text[: width - 1] + "…" if len(text) > width else text).ljust(width)


def table_cell(row, field):
    value = row[field]
    if field in ("next_due_at", "last_used_at") and value is not None:
        return value.astimezone(UTC).strftime("%Y-%m-%d")
    if field == "days_overdue":
        return str(value) if value else ""
    if field == "state":
        return RotationState(value).label
    return cell(row, field)


def to_table(report):
    when = f"as of {plain(report.as_of)} UTC" if report.as_of else f"at {plain(report.generated_at)} UTC"
    lines = [f"Rotation report {when}: {len(report.rows)} key{'s' if len(report.rows) != 1 else ''}"]
    lines.append("  ".join(f"{RotationState(s).label}: {n}" for s, n in report.totals.items()))
    lines.append("Flags: " + "  ".join(f"{f}: {n}" for f, n in report.flag_totals.items()))
    lines.append("")
    lines.append(" ".join(fit(header, width) for _, header, width in TABLE).rstrip())
    for row in report.rows:
        lines.append(" ".join(fit(table_cell(row, field), width) for field, _, width in TABLE).rstrip())
    return "\n".join(lines) + "\n"


def audit_details(report, fmt=None, rows=None):
    """What an audit event says about a view or an export: never row contents."""
    return export_details(report.filters, report.as_of, len(report.rows) if rows is None else rows, fmt)


def export_details(filters, as_of, rows, fmt=None):
    """audit_details() of a report not built in memory (a streamed export)."""
    details = {
        "report": "rotation",
        "filters": filters.as_dict(),
        "as_of": as_of.isoformat() if as_of else None,
        "rows": rows,
    }
    if fmt:
        details["format"] = fmt
    return details
