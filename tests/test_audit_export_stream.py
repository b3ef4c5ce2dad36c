"""The audit log's CSV download (accounts/audit_export.py csv_stream): the same bytes as
csv_rows(), the reference, in chunks of rows; the header before any query; a stream closed
midway closes its server-side cursor."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.audit_export import csv_rows, csv_stream
from accounts.models import AuditEvent

EXPORT = reverse("admin:accounts_auditevent_export")


@pytest.fixture
def events(admin_user, org):
    start = datetime(2025, 1, 1, tzinfo=UTC)
    built = []
    for i in range(40):
        event = AuditEvent.build(
            admin_user if i % 3 else f"cli:job{i}",
            ["key.created", "=cmd", "report.exported"][i % 3],
            org if i % 2 else None,
            changes={"owner": {"old": "-a", "new": f"@b{i}"}},
            note=f'line\nbreak, "quoted" {i}',
        )
        event.at = start + timedelta(minutes=37 * i, microseconds=i)
        built.append(event)
    AuditEvent.record_many(built)
    return AuditEvent.objects.order_by("-at", "-pk")


@pytest.mark.django_db
def test_the_stream_is_csv_rows_byte_for_byte(events):
    reference = "".join(csv_rows(events.iterator()))
    chunks = list(csv_stream(events, lines=7, chunk_size=3))
    assert "".join(chunks) == reference
    assert len(chunks) == 1 + 6  # the header, then 40 rows 7 at a time
    rows = list(csv.reader(io.StringIO(reference)))
    assert len(rows) == 41 and any(cell.startswith("'=") for row in rows for cell in row)


@pytest.mark.django_db
def test_the_header_leaves_before_any_query(events):
    stream = csv_stream(events)
    with CaptureQueriesContext(connection) as queries:
        assert next(stream) == next(csv_rows(()))
    assert len(queries) == 0
    stream.close()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="server-side cursors are PostgreSQL's")
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_download_closed_midway_closes_its_cursor(events, client, reviewer):
    def open_cursors():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_cursors")
            return cursor.fetchone()[0]

    stream = csv_stream(events, lines=2, chunk_size=4)
    next(stream), next(stream)
    assert open_cursors() == 1
    stream.close()
    assert open_cursors() == 0

    client.force_login(reviewer)
    before = AuditEvent.objects.count()  # the 40, and what restoring the test database recorded
    response = client.get(EXPORT)
    text = b"".join(response.streaming_content).decode()
    assert len(list(csv.reader(io.StringIO(text)))) == 1 + before
    assert AuditEvent.objects.get(action="audit.exported").details["rows"] == before >= 40
