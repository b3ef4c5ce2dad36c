"""The rotation report's streamed CSV (keys/report_csv.py csv_stream, the admin download and
`manage.py rotation_report --format csv`): byte for byte the reference to_csv(build()) on a
varied world, now and as of past dates, under every filter, both as PostgreSQL writes it
and as Python does elsewhere; the header before any query;
the audit event committed before the first byte with the true row count; and a stream
closed midway (a client gone) ends its transaction and its server-side cursor."""

import csv
import inspect
import io
import json
import random
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from django.core.management import call_command
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEvent, Organization, Project
from console.upstream import Outcome
from keys import formats, report, report_csv
from keys.models import ApiKey, KeyAction, KeyEvent, ProbeResult
from usage.models import UsageBucket

URL = reverse("admin:keys_rotation_report")
NOW = datetime(2025, 9, 1, 12, 30, 45, 123456, tzinfo=UTC)
AS_OF = [None, datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)]
ODD_TEXT = [
    "=SUM(A1)",
    "+1",
    "-2",
    "@here",
    "\tTab",
    "\rCR",
    "\nLF",
    'say "hi", then go',
    "línea\nnext",
    "",
    "C:\\keys\\new\\n",  # backslashes: COPY's escape character
    "tab\tand\x0bvt\x08bs\x0cff\x1fus",  # characters COPY escapes, and the guard's separator
]


def moment(rng, start=datetime(2024, 6, 1, tzinfo=UTC), days=500):
    return start + timedelta(seconds=rng.randrange(days * 86400), microseconds=rng.randrange(1_000_000))


def maybe(rng, value, chance=0.5):
    return value if rng.random() < chance else None


@pytest.fixture
def world(org, make_key):
    """About 120 keys with every kind of fact and history the rules read, and cells a
    spreadsheet would run or a CSV must quote."""
    rng = random.Random(20251126)
    other = Organization.objects.create(name="Other", slug="other", rotation_policy_days=30)
    projects = [
        Project.objects.create(
            organization=org, name="Web", openai_project_id="proj_Web0000001", environment="production"
        ),
        Project.objects.create(
            organization=org, name="=Batch", openai_project_id="proj_Batch00001", rotation_policy_days=7
        ),
        Project.objects.create(
            organization=other, name="Lab", openai_project_id="proj_Lab0000001", archived_at=NOW - timedelta(days=40)
        ),
    ]
    outcomes = [*Outcome.values, ""]
    for i in range(120):
        project = rng.choice([*projects, None])
        if project is None:
            key, _ = make_key(
                fmt=formats.ADMIN, project=None, kind="admin", organization=rng.choice([org, other]), name=f"admin {i}"
            )
        else:
            key, _ = make_key(project=project, name=f"key {i}")
        issued = moment(rng)
        rotated = maybe(rng, issued + timedelta(days=rng.randrange(1, 200)))
        revoked = maybe(rng, moment(rng), 0.15)
        used = maybe(rng, moment(rng, days=600), 0.7)
        probed = maybe(rng, moment(rng), 0.8)
        ApiKey.objects.filter(pk=key.pk).update(
            name=rng.choice([f"key {i}", f"{rng.choice(ODD_TEXT)}key {i}"]),
            owner=rng.choice(["", "team-a", *ODD_TEXT]),
            issued_at=issued,
            rotated_at=rotated,
            rotated_by=rng.choice(["", "bob", "=cmd()", "-carol"]) if rotated else "",
            revoked_at=revoked,
            expires_at=maybe(rng, moment(rng), 0.2),
            last_used_at=used,
            last_probe_outcome=rng.choice(outcomes) if probed else "",
            last_probe_at=probed,
            consecutive_failures=rng.choice([0, 0, 1, 2, 3, 7]),
            deleted_upstream_at=maybe(rng, moment(rng), 0.1),
            owner_left_at=maybe(rng, moment(rng), 0.1),
            leaked_at=maybe(rng, moment(rng), 0.1),
        )
        if rotated:
            for when in sorted([rotated, *(moment(rng) for _ in range(rng.randrange(3)))]):
                KeyEvent.objects.create(
                    key=key, at=when, action=KeyAction.ROTATED, actor_label=rng.choice(["al", "@x"])
                )
        if revoked:
            KeyEvent.objects.create(key=key, at=revoked, action=KeyAction.REVOKED, actor_label="al")
        for slot in range(rng.randrange(5)):
            ProbeResult.objects.create(key=key, slot=slot, started_at=moment(rng), outcome=rng.choice(Outcome.values))
        for _ in range(rng.randrange(3)):
            end = moment(rng)
            UsageBucket.objects.create(
                organization=key.organization,
                project=project,
                key=key,
                endpoint="completions",
                start_time=end - timedelta(days=1),
                end_time=end,
                model="gpt-4o-mini",
                num_model_requests=rng.choice([0, 3]),
            )
    return ApiKey.objects.count()


FILTERS = [
    {},
    {"organization": "acme"},
    {"project": "=Batch"},
    {"environment": "production"},
    *({"state": state} for state in ("compliant", "due_soon", "overdue", "expired", "revoked")),
    *({"flag": flag} for flag in ("overdue", "unused", "usage_unknown", "failing", "orphaned", "leaked")),
]


def database_and_python(monkeypatch):
    """The database's lines where it writes them (PostgreSQL), then Python's."""
    paths = ["postgresql", "python"] if connection.vendor == "postgresql" else ["python"]
    for path in paths:
        if path == "python":
            monkeypatch.setattr(report_csv, "database_writes", lambda: False)
        yield path


@pytest.mark.django_db
def test_the_stream_is_the_reference_csv_byte_for_byte(world, monkeypatch):
    seen, compared = set(), []
    for path in database_and_python(monkeypatch):
        for as_of in AS_OF:
            for filters in FILTERS:
                chosen = report.Filters(**filters)
                reference = report.to_csv(report.build(chosen, NOW, as_of))
                streamed = "".join(report_csv.csv_stream(chosen, NOW, as_of, chunk_size=7, lines=3))
                assert streamed == reference, (path, filters, as_of)
                seen.update(cell for row in csv.reader(io.StringIO(streamed)) for cell in row)
        compared.append(path)
    assert compared == (["postgresql", "python"] if connection.vendor == "postgresql" else ["python"])
    # The world is varied enough to mean something: quoted formulas, every state, flags
    # with and without a date, unknown uses, no rotation.
    assert {"'=SUM(A1)", "'-2", "'@here", "'\tTab", "'=cmd()", "unknown", ""} <= seen
    assert {"compliant", "due_soon", "overdue", "expired", "revoked"} <= seen
    assert any("(since " in cell for cell in seen) and any(cell.startswith("failing: ") for cell in seen)
    assert any("\n" in cell for cell in seen) and any('"' in cell for cell in seen)
    assert any("\\" in cell for cell in seen) and any("\x0b" in cell for cell in seen)


@pytest.mark.django_db
def test_the_json_stream_is_the_reference_json_byte_for_byte(world):
    for as_of in AS_OF:
        for filters in FILTERS:
            chosen = report.Filters(**filters)
            reference = report.to_json(report.build(chosen, NOW, as_of))
            streamed = "".join(report.json_stream(chosen, NOW, as_of, chunk_size=7, lines=3))
            assert streamed == reference, (filters, as_of)
    document = json.loads(streamed)  # the last one: revoked keys as of June, one at least
    assert document["rows"] and sum(document["totals"].values()) == len(document["rows"])
    empty = report.Filters(organization="nobody")
    assert "".join(report.json_stream(empty, NOW)) == report.to_json(report.build(empty, NOW))


def test_indented_is_json_dumps_with_indent_1():
    when = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    for value in [
        {},
        [],
        {"a": [], "b": {}, "c": [{"x": None, "y": True, "z": False}], "d": 'quote " é \n', "e": -3, "f": when},
        [1, "two", [3, [4, {}]], {"k": 1.5}],
    ]:
        for level in (0, 2):
            expected = json.dumps(value, cls=DjangoJSONEncoder, indent=1, ensure_ascii=False)
            assert report.indented(value, level) == expected.replace("\n", "\n" + " " * level)


@pytest.mark.django_db
def test_the_header_leaves_before_any_query(world):
    stream = report_csv.csv_stream(now=NOW)
    with CaptureQueriesContext(connection) as queries:
        header = next(stream)
    assert header == "\r\n".join(report.to_csv(report.build(now=NOW)).split("\r\n")[:1]) + "\r\n"
    assert len(queries) == 0
    stream.close()


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("params", [{}, {"state": "overdue"}, {"flag": "failing", "as_of": "2025-06-30"}])
def test_the_download_streams_after_its_audit_event_with_the_true_row_count(world, reviewer_client, params, fmt):
    response = reviewer_client.get(URL, {**params, "format": fmt})
    assert response.streaming
    assert response["Content-Type"] == {"csv": "text/csv; charset=utf-8", "json": "application/json"}[fmt]
    assert response["Content-Disposition"].startswith('attachment; filename="rotation-report-')
    assert response["Content-Disposition"].endswith(f'.{fmt}"')
    event = AuditEvent.objects.get(action="report.exported")  # before a byte is read
    text = b"".join(response.streaming_content).decode()
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))[1:]
    else:
        rows = json.loads(text)["rows"]
    assert event.details["rows"] == len(rows) > 0
    assert event.details["format"] == fmt and event.details["as_of"] == (
        report.parse_as_of(params["as_of"]).isoformat() if "as_of" in params else None
    )
    assert event.details["filters"] == {k: v for k, v in params.items() if k != "as_of"}


@pytest.mark.django_db
def test_the_csv_row_count_without_a_rule_filter_is_the_files(world, reviewer_client):
    """Without a state or flag filter the count skips the rules and their joins."""
    for params in [
        {"organization": "other"},
        {"project": "=Batch", "as_of": "2025-06-30"},
        {"environment": "production"},
    ]:
        text = b"".join(reviewer_client.get(URL, {**params, "format": "csv"}).streaming_content).decode()
        event = AuditEvent.objects.filter(action="report.exported").latest("pk")
        assert event.details["rows"] == len(list(csv.reader(io.StringIO(text)))) - 1 > 0, params


@pytest.mark.django_db
def test_the_command_writes_the_download_byte_for_byte(world, reviewer_client):
    for args, params in [
        (["--as-of", "2025-06-30"], {"as_of": "2025-06-30"}),
        (["--org", "acme", "--state", "overdue"], {"organization": "acme", "state": "overdue"}),
    ]:
        out = io.StringIO()
        call_command("rotation_report", *args, "--format", "csv", stdout=out)
        downloaded = b"".join(reviewer_client.get(URL, {**params, "format": "csv"}).streaming_content).decode()
        assert out.getvalue() == downloaded and downloaded.count("\r\n") > 2
    event = AuditEvent.objects.filter(actor_label="cli:rotation_report").latest("pk")
    assert event.details["rows"] == len(list(csv.reader(io.StringIO(out.getvalue())))) - 1


def session_state():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        cursors = cursor.fetchone()[0]
        cursor.execute("SHOW jit")
        return connection.in_atomic_block, cursors, cursor.fetchone()[0]


def backend_activity(pid):
    """What the backend `pid` is doing, seen from another connection (the stream's own is
    busy with its COPY)."""
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        return other.execute("SELECT state, left(query, 5) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="COPY and JIT are PostgreSQL's")
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_stream_closed_midway_ends_its_transaction_and_copy(world, reviewer_client, monkeypatch):
    before = session_state()
    assert before[:2] == (False, 0)
    pid = connection.connection.info.backend_pid
    stream = report_csv.csv_stream(now=NOW, chunk_size=5, lines=1)
    for _ in range(4):  # the header and three rows: the COPY is under way, in its transaction
        next(stream)
    assert connection.in_atomic_block
    state, query = backend_activity(pid)
    # Still sending, or (a world this small fits in the socket's buffers) sent it all.
    assert state in ("active", "idle in transaction") and query == "COPY "
    stream.close()
    assert backend_activity(pid)[0] == "idle"  # not "idle in transaction"
    assert session_state() == before  # JIT back on: the SET LOCAL ended with it

    # The admin download: closing the response (what the server does when the client
    # goes away) closes the generator.
    streams, stream_of = [], report_csv.csv_stream

    def watched(*args, **kwargs):
        streams.append(stream_of(*args, **{**kwargs, "chunk_size": 5, "lines": 1}))
        return streams[-1]

    monkeypatch.setattr(report_csv, "csv_stream", watched)
    response = reviewer_client.get(URL, {"format": "csv"})
    content = iter(response.streaming_content)
    for _ in range(4):
        next(content)
    assert inspect.getgeneratorstate(streams[0]) == inspect.GEN_SUSPENDED
    response.close()
    assert inspect.getgeneratorstate(streams[0]) == inspect.GEN_CLOSED
    assert AuditEvent.objects.filter(action="report.exported").count() == 1  # committed, not rolled back


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the SQL writer is PostgreSQL's")
@pytest.mark.django_db
def test_the_sql_dates_are_plains_dates():
    moments = [
        datetime(2025, 1, 2, 3, 4, 59, 999999, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, tzinfo=UTC),
        datetime(10, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2025, 1, 2, 23, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2025, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
    ]
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'America/New_York'")  # the session's zone does not matter
        for moment in moments:
            cursor.execute(
                f"SELECT {report_csv.minute('%s::timestamptz')}, {report_csv.day('%s::timestamptz')}", [moment] * 2
            )
            assert cursor.fetchone() == (report.plain(moment), f"{moment.astimezone(UTC):%Y-%m-%d}")
        cursor.execute("SET TIME ZONE 'UTC'")
