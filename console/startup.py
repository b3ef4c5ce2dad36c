"""Refuse to start with a bad configuration.

The web (console/wsgi.py, console/asgi.py — and so runserver, which loads
WSGI_APPLICATION) and every Celery worker (the `worker_init` receiver below, connected at
the end of console/celery.py by importing this module) run Django's system checks before they serve anything,
with the database-tagged ones included: that adds keys.E007, the self-test that the
configured CONSOLE_ENCRYPTION_KEYS decrypt the newest stored secret. Any error stops the
process with a non-zero exit and the checks' own messages, which never hold key material.

Without this, gunicorn and workers start with a malformed or wrong key and every probe
fails afterwards; `manage.py check` is only as good as whoever remembers to run it.
"""

import sys

from celery.signals import worker_init
from django.db import DEFAULT_DB_ALIAS, DatabaseError


class BadConfiguration(Exception):
    """The process must not start; the message says why and how to fix it."""


def configuration_errors():
    """The serious (error or critical), unsilenced messages of every system check, the
    database-tagged ones included. An unreachable database only skips those."""
    import django
    from django.apps import apps
    from django.core import checks

    if not apps.ready:
        django.setup()
    try:
        messages = checks.run_checks(databases=[DEFAULT_DB_ALIAS])
    except DatabaseError:
        # The database is down or not migrated: the process can still refuse what the
        # settings alone show; the self-test runs at the next start.
        messages = checks.run_checks()
    return [m for m in messages if m.is_serious() and not m.is_silenced()]


def explain(errors, process):
    lines = [f"Refusing to start the {process}: the configuration has {len(errors)} error(s)."]
    lines += [str(e) for e in errors]
    return "\n".join(lines)


def check_configuration(process):
    """Raise BadConfiguration (message: every error with its hint) if any check fails."""
    errors = configuration_errors()
    if errors:
        raise BadConfiguration(explain(errors, process))


def refuse_to_start_web():
    """For wsgi.py/asgi.py: a failing check stops the import, so gunicorn, uvicorn and
    runserver exit (gunicorn: "Worker failed to boot") instead of serving."""
    check_configuration("web server")


@worker_init.connect(dispatch_uid="console.startup.refuse_to_start_worker", weak=False)
def refuse_to_start_worker(sender=None, **kwargs):
    """celery `worker_init` receiver. Celery logs and swallows exceptions from signal
    receivers, so this exits the process itself (SystemExit is not swallowed)."""
    try:
        check_configuration("Celery worker")
    except BadConfiguration as e:
        print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
