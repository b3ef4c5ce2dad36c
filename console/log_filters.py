"""Logging filters: a refused or missing page is the client's mistake, not the console's."""

import logging

from console.leakguard import redact_key_shaped


class NoTracebackForClientErrors(logging.Filter):
    """django.request logs a 403 (PermissionDenied) with its traceback; a 4xx is an
    ordinary answer, so keep the one warning line and drop the traceback. 5xx records keep
    theirs. The line names the path, where someone may have pasted a key ("Not Found:
    /admin/…/sk-proj-…/"): every key shape is cut out of it."""

    def filter(self, record):
        status = getattr(record, "status_code", None)
        if status is not None and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
            record.msg, record.args = redact_key_shaped(record.getMessage()), None
        return True
