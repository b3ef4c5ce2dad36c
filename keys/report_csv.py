"""The rotation report's CSV, streamed: on PostgreSQL written by the database.

report.to_csv(report.build()) is the reference; csv_stream() yields the same bytes. At
50,000 keys the reference spends 1.7 s in Python (reading 30 columns a row, the rules of
keys/states.py, formatting and csv.writer). On PostgreSQL the one query of the report
(keys/report.py queryset(), with the rules' SQL twins that tests/test_key_states.py pins
to the pure rules) is wrapped in a SELECT that writes each row's CSV line, so Python reads
one string a row, through COPY so that the server's parallel workers write them:

- a cell a spreadsheet would run as a formula gets a leading apostrophe
  (console/exports.py FORMULA_STARTS), and a cell holding a comma, a double quote, CR or
  LF is quoted with its quotes doubled: csv.writer's QUOTE_MINIMAL;
- dates are the ISO text of the UTC time, cut to "YYYY-MM-DD HH:MM" as report.plain()
  writes them;
- the flag reasons are keys/states.py REASONS filled with the same values, and the
  outcome labels are console.upstream.Outcome's.

Elsewhere (SQLite, the embedded default) the rows go through the reference's own cells.
tests/test_report_stream.py compares both paths with the reference, byte for byte.
"""

import csv
import re
from contextlib import contextmanager
from datetime import UTC, datetime
from string import Formatter

from django.db import connection
from django.db.models import F

from console.exports import FORMULA_STARTS
from console.upstream import Outcome

from . import report
from .states import (
    DAY,
    NO_OUTCOME,
    OUTCOME_LABELS,
    REASONS,
    FlagName,
    RotationState,
    flag_field,
    orphan_reason,
    unused_days,
)

# csv.writer (the excel dialect, QUOTE_MINIMAL) quotes a cell holding one of these.
QUOTED = (",", '"', "\r", "\n")


class _Line:
    """A file whose write() returns what it is given: csv.writer.writerow() then returns
    the line (Django's documented way to stream CSV)."""

    def write(self, value):
        return value


def header():
    return csv.writer(_Line()).writerow([title for _, title in report.COLUMNS])


def csv_stream(filters=None, now=None, as_of=None, chunk_size=2000, lines=200, encoded=False):
    """The report's CSV: the header line at once, before any query, then the rows `lines`
    at a time as they arrive, in the JIT-off transaction (`chunk_size`: rows a fetch from
    the server-side cursor, where Python writes them). Closing the generator
    (StreamingHttpResponse does when the client goes away) cancels the query or closes
    the cursor, and ends the transaction. `encoded`: UTF-8 bytes instead of text (what a
    response sends: the database's bytes are then never decoded and encoded again)."""
    filters = filters or report.Filters()
    now = now or datetime.now(UTC)
    at = as_of or now
    yield header().encode() if encoded else header()
    if database_writes():
        yield from _database_lines(filters, at, as_of, lines, encoded)
    else:
        yield from _python_lines(filters, at, as_of, chunk_size, lines, encoded)


def database_writes():
    return connection.vendor == "postgresql"


def _python_lines(filters, at, as_of, chunk_size, lines, encoded):
    writerow, batch = csv.writer(_Line()).writerow, []
    with report.without_jit():
        rows = report.queryset(filters, at, as_of).iterator(chunk_size=chunk_size)
        try:
            for values in rows:
                batch.append(writerow(report.csv_row(report.make_row(values, at))))
                if len(batch) >= lines:
                    yield _text("".join(batch), encoded)
                    batch = []
            if batch:
                yield _text("".join(batch), encoded)
        finally:
            rows.close()


def _text(text, encoded):
    return text.encode() if encoded else text


def _database_lines(filters, at, as_of, lines, encoded):
    """The lines as PostgreSQL writes them, through COPY … TO STDOUT: it streams, and
    unlike a cursor (DECLARE CURSOR is never parallel) lets the server write them with
    its parallel workers. COPY's text format ends each row with LF and escapes a
    backslash, CR, LF or tab inside it; CSV wants CRLF and the characters themselves."""
    sql, params = line_query(filters, at, as_of)
    copy_sql = f"COPY ({sql}) TO STDOUT"
    with report.without_jit(), connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(f'set_config({name!r}, {value!r}, true)' for name, value in SETTINGS)}")
        with _logged(cursor, copy_sql, params), cursor.cursor.copy(copy_sql, params) as copy:
            batch = []
            for row in copy:
                batch.append(row)
                if len(batch) >= lines:
                    chunk, batch = _csv_text(b"".join(batch)), []
                    yield chunk if encoded else chunk.decode()
            if batch:
                chunk = _csv_text(b"".join(batch))
                yield chunk if encoded else chunk.decode()


# For the COPY's transaction only: the rows sorted in memory, not in temporary files; the
# date format minute() cuts; and the planner's parallel costs at zero, so that as many
# workers as max_parallel_workers_per_gather allows write lines beside the leader, which
# merges their sorted rows and sends them (at 50,000 keys on 2 cores, 2 workers: 241 ms
# in EXPLAIN ANALYZE, 1 worker by the default costs: 284 ms).
SETTINGS = [
    ("work_mem", "64MB"),
    ("DateStyle", "ISO, YMD"),
    ("parallel_setup_cost", "0"),
    ("parallel_tuple_cost", "0"),
    ("min_parallel_table_scan_size", "0"),
]

ESCAPES = {b"\\\\": b"\\", b"\\b": b"\b", b"\\f": b"\f", b"\\n": b"\n", b"\\r": b"\r", b"\\t": b"\t", b"\\v": b"\v"}
ESCAPE = re.compile(rb"\\[\\bfnrtv]")


def _csv_text(rows):
    """COPY text rows as CSV lines (UTF-8 bytes): each row's LF (the only bare LF there
    is) becomes CRLF, then escapes become their characters (COPY writes no other escape,
    see PostgreSQL's "COPY, File Formats")."""
    rows = rows.replace(b"\n", b"\r\n")
    if b"\\" in rows:
        rows = ESCAPE.sub(lambda match: ESCAPES[match.group()], rows)
    return rows


@contextmanager
def _logged(cursor, sql, params):
    """COPY does not go through execute(): log it as a query where queries are logged
    (DEBUG, tests' CaptureQueriesContext), so query counts stay true."""
    if hasattr(cursor, "debug_sql"):
        with cursor.debug_sql(sql, params):
            yield
    else:
        yield


# --- the line, in SQL ---------------------------------------------------------------------
# Row fields by alias: report.queryset()'s facts plus the rules' SQL twins (with_rotation).
ALIASES = {
    "c_org": F("organization__slug"),
    "c_project": F("project__name"),
    "c_environment": F("project__environment"),
    "c_name": F("name"),
    "c_id": F("pk"),
    "c_kind": F("kind"),
    "c_hint": F("hint"),
    "c_owner": F("owner"),
    "c_issued": F("issued_at"),
    "c_version": F("secret_key_version"),
}


def literal(value):
    """A constant of this module or a moment it was given (never user input) as an SQL
    literal: E'…' with backslash escapes, and % doubled for the driver's placeholders."""
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("%", "%%")
    return "E'" + "".join(f"\\x{ord(c):02x}" if c < " " else c for c in escaped) + "'"


def minute(column):
    """report.plain() of a timestamp: "YYYY-MM-DD HH:MM" in UTC. The ISO text of the UTC
    time (the transaction's DateStyle), cut; a year below 1000 unpadded, as strftime
    writes it. A quarter of the cost of to_char()."""
    return f"ltrim(left(({column} AT TIME ZONE 'UTC')::text, 16), '0')"


def day(column):
    """f"{value:%Y-%m-%d}" (keys/states.py DAY) of a UTC timestamp."""
    assert DAY == "%Y-%m-%d"
    return f"ltrim(left(({column} AT TIME ZONE 'UTC')::text, 10), '0')"


FORMULA = "ARRAY[" + ", ".join(literal(start) for start in FORMULA_STARTS) + "]"
NEEDS_QUOTES = literal("[" + "".join(QUOTED) + "]")


def text(column):
    """A text column as its cell: formula-safe, then quoted if it must be. Whether to
    quote reads the column itself: the apostrophe never needs it, and a cell starting
    with CR or LF needs it either way."""
    safe = f"(CASE WHEN left({column}, 1) = ANY({FORMULA}) THEN '''' || {column} ELSE {column} END)"
    quoted = f"""'"' || replace({safe}, '"', '""') || '"'"""
    return f"(CASE WHEN {column} ~ {NEEDS_QUOTES} THEN {quoted} ELSE {safe} END)"


def number(column):
    """report.plain() of an integer, formula-safe (only a negative one starts with "-")."""
    return f"(CASE WHEN {column} < 0 THEN '''' || {column}::text ELSE coalesce({column}::text, '') END)"


def fill(template, **values):
    """str.format(template, **values) with SQL text expressions for the values."""
    parts = []
    for fixed, name, _, _ in Formatter().parse(template):
        if fixed:
            parts.append(literal(fixed))
        if name is not None:
            parts.append(values[name])
    return "(" + " || ".join(parts) + ")"


def _unquoted(texts):
    """Reasons go into the line unquoted: no fixed piece of them may need quotes (their
    variable pieces are dates, numbers and outcome labels)."""
    for piece in texts:
        if any(character in piece for character in QUOTED):
            raise AssertionError(f"A reason holds a character CSV quotes: {piece!r}")


_unquoted([*REASONS.values(), *OUTCOME_LABELS.values(), NO_OUTCOME])
_unquoted(orphan_reason(*both) for both in [(True, False), (False, True), (True, True)])

# The order evaluate() appends flags in (unused and usage_unknown never both).
FLAG_ORDER = [
    FlagName.OVERDUE,
    FlagName.USAGE_UNKNOWN,
    FlagName.UNUSED,
    FlagName.FAILING,
    FlagName.ORPHANED,
    FlagName.LEAKED,
]


def since(column):
    return f"' (since ' || {minute(column)} || ')'"


def days_overdue(moment):
    """(now − due).days of an overdue key (now ≥ due): the difference of two timestamps
    is whole days and a time under a day, so its day field."""
    return f"date_part('day', {moment} - r.next_due_at)::int::text"


def reason_expressions(moment):
    """{flag: SQL text of its reason and "since"}, over the row's aliases (line_query)."""
    label = (
        "(CASE r.r_last_probe_outcome "
        + " ".join(f"WHEN {literal(value)} THEN {literal(title)}" for value, title in Outcome.choices)
        + f" ELSE {literal(NO_OUTCOME)} END)"
    )
    failures = fill(REASONS["failing"], count="coalesce(r.r_consecutive_failures, 0)::text", outcome=label)
    archived = f"(r.r_project_archived_at <= {moment})"
    owner_left = f"(r.r_owner_left_at <= {moment})"
    overdue = fill(
        REASONS["overdue"],
        due=day("r.next_due_at"),
        policy_days="r.policy_days::text",
        days_overdue=days_overdue(moment),
    )
    unused = fill(REASONS["unused"], days=literal(str(unused_days())), last_used=day("r.r_last_used_at"))
    return {
        FlagName.OVERDUE: f"{overdue} || {since('r.next_due_at')}",
        FlagName.USAGE_UNKNOWN: literal(REASONS["usage_unknown"]),
        FlagName.UNUSED: f"{unused} || {since('r.r_last_used_at')}",
        FlagName.FAILING: (
            f"(CASE WHEN r.r_last_probe_outcome = {literal(Outcome.INVALID_KEY.value)}"
            f" THEN {literal(REASONS['invalid_key'])} ELSE {failures} END)"
        ),
        FlagName.ORPHANED: (
            f"(CASE WHEN {archived} AND {owner_left} THEN {literal(orphan_reason(True, True))}"
            f" || {since('least(r.r_project_archived_at, r.r_owner_left_at)')}"
            f" WHEN {archived} THEN {literal(orphan_reason(True, False))} || {since('r.r_project_archived_at')}"
            f" ELSE {literal(orphan_reason(False, True))} || {since('r.r_owner_left_at')} END)"
        ),
        FlagName.LEAKED: f"{literal(REASONS['leaked'])} || {since('r.r_leaked_at')}",
    }


# The guard: whether any text cell of the row starts like a formula or holds a character
# CSV quotes, over the cells joined by a unit separator. Most rows do not, and take the
# plain line; a false alarm (a separator in the data) only takes the careful one.
SEPARATOR = "\x1f"
GUARD = literal(f"(^|{SEPARATOR})[" + "".join(FORMULA_STARTS).replace("-", "") + "-]|[" + "".join(QUOTED) + "]")


def flag_names():
    """An SQL array of the flag-names cell for every set of flags: index 1 + the set's
    bits in FLAG_ORDER (a cell naming two or more holds ", " and is quoted)."""
    cells = []
    for bits in range(2 ** len(FLAG_ORDER)):
        names = ", ".join(name.value for i, name in enumerate(FLAG_ORDER) if bits >> i & 1)
        cells.append(f'"{names}"' if "," in names else names)
    return "(ARRAY[" + ", ".join(literal(cell) for cell in cells) + "])"


def line_query(filters, at, as_of):
    """(sql, params): each row's CSV line, in the report's order."""
    keys, sources, extras = report.annotated(filters, at, as_of)
    facts = {f"r_{name}": getattr(sources, name) for name in report.FACT_FIELDS}
    twins = ["policy_days", "next_due_at", "key_state", *(flag_field(flag) for flag in FlagName.values)]
    inner = keys.annotate(**ALIASES, **facts, **extras).order_by().values(*ALIASES, *facts, *extras, *twins)
    inner_sql, inner_params = inner.query.sql_with_params()

    moment = literal(at)
    reasons = reason_expressions(moment)
    flag = {name: f"r.{flag_field(name)}" for name in FLAG_ORDER}
    bits = " + ".join(f"{1 << i} * {flag[name]}::int" for i, name in enumerate(FLAG_ORDER))
    flag_reasons = ", ".join(
        f"CASE WHEN {flag[n]} THEN {literal(n.value + ': ')} || {reasons[n]} END" for n in FLAG_ORDER
    )
    texts = [
        "r.c_org",
        "r.c_project",
        "r.c_environment",
        "r.c_name",
        "r.c_kind",
        "r.c_hint",
        "r.c_owner",
        "r.r_rotated_by",
        "r.r_last_probe_outcome",
    ]

    overdue = literal(RotationState.OVERDUE.value)

    def line(cell):
        rotated_by = cell("coalesce(r.r_rotated_by, '')")
        cells = [
            cell("r.c_org"),
            cell("coalesce(r.c_project, '')"),
            cell("coalesce(r.c_environment, '')"),
            cell("r.c_name"),
            "r.c_id::text",
            cell("r.c_kind"),
            cell("r.c_hint"),
            cell("r.c_owner"),
            minute("r.c_issued"),
            f"coalesce({minute('r.r_rotated_at')}, '')",
            f"(CASE WHEN r.r_rotated_at IS NULL THEN '' ELSE {rotated_by} END)",
            number("r.policy_days"),
            minute("r.next_due_at"),
            f"(CASE WHEN r.key_state = {overdue} THEN {days_overdue(moment)} ELSE '0' END)",
            "r.key_state",
            f"{flag_names()}[1 + {bits}]",
            f"concat_ws(' | ', {flag_reasons})",
            cell("coalesce(r.r_last_probe_outcome, '')"),
            f"(CASE WHEN r.r_last_probe_outcome <> '' THEN coalesce({minute('r.r_last_probe_at')}, '') ELSE '' END)",
            f"(CASE WHEN r.r_last_used_at <= {moment} THEN {minute('r.r_last_used_at')} ELSE 'unknown' END)",
            number("r.c_version"),
        ]
        return f"concat_ws(',', {', '.join(cells)})"

    guard = f"concat_ws({literal(SEPARATOR)}, {', '.join(texts)}) ~ {GUARD}"
    select = f"CASE WHEN {guard} THEN {line(text)} ELSE {line(lambda column: column)} END"
    order = "r.c_org, r.c_project NULLS FIRST, r.c_name, r.c_id"
    # As of a past date the facts are subqueries over history: the fence keeps PostgreSQL
    # from copying each into every expression that reads it (1.7 s instead of 2.4 s at
    # 50,000 keys). Live, the facts are columns, and the query stays one that its
    # parallel workers run together with the writing of the lines.
    fence = " OFFSET 0" if as_of is not None else ""
    return f"SELECT {select} FROM ({inner_sql}{fence}) AS r ORDER BY {order}", inner_params
