"""The audit log as readable text and as a CSV download.

`details_text(details)` renders an event's details for people: "owner: web team → payments;
hint: sk-proj-…Ab3d; ip: 10.0.0.5" instead of raw JSON. The audit log's list shows it,
and the CSV's "details" column holds it, next to a "details_json" column with the raw
JSON for machines.

`csv_rows(events)` yields the header and one row per event. Every cell is made safe for
spreadsheets: a cell that starts with = + - @ (or a tab or carriage return, which some
spreadsheets skip before reading a formula) gets a leading apostrophe, so it is shown as
text and never run as a formula ("formula injection"). Events hold no secret (see
accounts/models.py); what a client typed (a refused request's path) was stripped of
anything key-shaped when it was recorded.
"""

import csv
import json

from django.db import connections

from console.exports import formula_safe
from console.pg_timestamps import iso_timestamps

COLUMNS = [
    "at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "target",
    "ip",
    "details",
    "details_json",
]


def safe_cell(value):
    """`value` as CSV cell text that no spreadsheet runs as a formula."""
    return "" if value is None else formula_safe(str(value))


def value_text(value):
    if isinstance(value, dict) and set(value) == {"old", "new"}:
        return f"{value_text(value['old'])} → {value_text(value['new'])}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if value is None or value == "":
        return "(empty)"
    return str(value)


def details_text(details):
    """One line: each changed field as "field: old → new", then the other details, then
    the address."""
    details = dict(details or {})
    ip = details.pop("ip", None)
    parts = [f"{name}: {value_text(change)}" for name, change in (details.pop("changes", None) or {}).items()]
    parts += [f"{name}: {value_text(value)}" for name, value in details.items()]
    if ip:
        parts.append(f"ip: {ip}")  # last: what changed comes first
    return "; ".join(parts)


def event_row(event):
    return [
        event.at.isoformat(),
        event.actor_label,
        event.action,
        event.target_type,
        event.target_id,
        event.target_repr,
        (event.details or {}).get("ip", ""),
        details_text(event.details),
        json.dumps(event.details, sort_keys=True, ensure_ascii=False),
    ]


class _Line:
    """A file-like object whose write returns what was written (for streaming csv)."""

    def write(self, value):
        return value


def csv_rows(events):
    """The CSV text of `events`, line by line (header first), every cell made safe."""
    writer = csv.writer(_Line())
    yield writer.writerow(COLUMNS)
    for event in events:
        yield writer.writerow([safe_cell(cell) for cell in event_row(event)])


def csv_stream(events, lines=200, chunk_size=2000):
    """csv_rows() of a queryset for a download: the header at once, then `lines` rows a
    chunk (one write and one encode each, not one per row) from a server-side cursor that
    reads timestamps with fromisoformat (console/pg_timestamps.py). Closing the generator
    closes the cursor."""
    header, *_ = csv_rows(())
    yield header
    with iso_timestamps(connections[events.db]):
        rows = events.iterator(chunk_size=chunk_size)
        try:
            lines_of = csv_rows(rows)
            next(lines_of)  # the header, sent
            batch = []
            for line in lines_of:
                batch.append(line)
                if len(batch) >= lines:
                    yield "".join(batch)
                    batch = []
            if batch:
                yield "".join(batch)
        finally:
            rows.close()
