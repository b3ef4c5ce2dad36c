"""CSV exports (commands, report downloads, the audit log): cells a spreadsheet will not
run as formulas, dates in ISO 8601, written a row at a time so 50,000 rows stream."""

import csv
import io

# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
# (OWASP's "CSV injection"; control characters are skipped before reading one); a leading
# apostrophe makes it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def formula_safe(text):
    """`text` as a cell a spreadsheet shows as text, never runs."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def safe_cell(value):
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return formula_safe(str(value))


def csv_lines(header, rows):
    """Yield the CSV text of the header, then of each row, one line at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([safe_cell(h) for h in header])
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([safe_cell(value) for value in row])
        yield buffer.getvalue()
