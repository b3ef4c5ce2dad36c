"""Log line formats (LOG_FORMAT in console/settings.py): `plain` for people, `json` for a
log pipeline — one JSON object per line, no dependency beyond the standard library.

Each JSON line has `time` (UTC, ISO 8601), `level`, `logger`, `message`, the HTTP
request's `request_id` when there is one (console/request_id.py; Django's own
django.request lines, written after the request's middleware returned, take it from the
request they carry), the upstream call's `upstream_request_id` (OpenAI's x-request-id),
`client_request_id`, `upstream_host`, `outcome`, `http_status` and `duration_ms` when the
line is about one (console/upstream.py), and `exception` with the traceback when there is
one. Django's DEBUG 500 page cleansing does not apply to logs: what keeps secrets out of
them is that nothing logs one (tests/test_json_logs.py runs every logger at DEBUG) — and,
as a last line of defence for what others log (Django's "Not Found: /admin/<a pasted
key>/", a library's exception text), both formats cut OpenAI-shaped keys and console API
tokens out of every line (console/leakguard.py, redact_unmistakable_keys; bare 32-hex runs
are left alone — in logs they are request ids; a refused or missing page's path is
redacted in full by console/log_filters.py).
"""

import json
import logging
from datetime import UTC, datetime

from console import request_id
from console.leakguard import redact_unmistakable_keys

# Extra fields a log call may pass (logger.info(…, extra={…})) that a JSON line carries.
EXTRA_FIELDS = ("upstream_request_id", "client_request_id", "upstream_host", "outcome", "http_status", "duration_ms")


def request_id_of(record):
    current = request_id.current.get()
    if current:
        return current
    request = getattr(record, "request", None)
    return getattr(request, "request_id", "") if request is not None else ""


class PlainFormatter(logging.Formatter):
    """ "time LEVEL logger message", with key-shaped text cut out (traceback included)."""

    def format(self, record):
        return redact_unmistakable_keys(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_unmistakable_keys(record.getMessage()),
        }
        rid = request_id_of(record)
        if rid:
            line["request_id"] = rid
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                line[name] = value
        if record.exc_info:
            line["exception"] = redact_unmistakable_keys(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact_unmistakable_keys(self.formatStack(record.stack_info))
        return json.dumps(line, default=str, ensure_ascii=False)
