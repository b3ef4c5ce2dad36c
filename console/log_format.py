"""Log line formats (LOG_FORMAT in console/settings.py): `plain` for people, `json` for a
log pipeline — one JSON object per line, no dependency beyond the standard library.

Each JSON line has `time` (UTC, ISO 8601), `level`, `logger`, `message`, the HTTP
request's `request_id` when there is one (console/request_id.py; Django's own
django.request lines, written after the request's middleware returned, take it from the
request they carry), the upstream call's `upstream_request_id` (OpenAI's x-request-id),
`client_request_id`, `upstream_host`, `outcome`, `http_status` and `duration_ms` when the
line is about one (console/upstream.py), and `exception` with the traceback when there is
one. Django's DEBUG 500 page cleansing does not apply to logs: what keeps secrets out of
them is that nothing logs one (tests/test_json_logs.py runs every logger at DEBUG).
"""

import json
import logging
from datetime import UTC, datetime

from console import request_id

# Extra fields a log call may pass (logger.info(…, extra={…})) that a JSON line carries.
EXTRA_FIELDS = ("upstream_request_id", "client_request_id", "upstream_host", "outcome", "http_status", "duration_ms")


def request_id_of(record):
    current = request_id.current.get()
    if current:
        return current
    request = getattr(record, "request", None)
    return getattr(request, "request_id", "") if request is not None else ""


class JsonFormatter(logging.Formatter):
    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_of(record)
        if rid:
            line["request_id"] = rid
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)
