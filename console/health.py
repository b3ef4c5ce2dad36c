"""/healthz and /readyz: cheap, unauthenticated, and revealing nothing sensitive.

- `/healthz` — the process is up: 200 "ok". No database, no cache, no broker.
- `/readyz` — the console can do its work: JSON with one entry per check, each a status
  (`ok`, `fail` or `not_configured`) and, where it has one, an age in seconds; 200 when
  every check is ok or not configured, 503 otherwise.

Checks: `database` (SELECT 1), `redis` (PING to REDIS_URL; "not_configured" in the
embedded default, which has no Redis), and whatever the apps register with
`register_check` — accounts registers the beat and worker heartbeats
(accounts/heartbeat.py) from its AppConfig.ready, so this module names no app above it.

Nothing in a response names a host, a URL, a version or an exception: a failed check is
"fail", and the reason goes to the log (exception type only).
"""

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)

OK, FAIL, NOT_CONFIGURED = "ok", "fail", "not_configured"
REDIS_TIMEOUT_SECONDS = 1.0

# [(name, function(now) -> {check name: {"status": …, …}})], filled by AppConfig.ready.
_checks = []


def register_check(name, function):
    """Add a readiness check: `function(now)` returns {check name: result dict}. A check
    that raises is reported as failed under `name`."""
    if name not in [n for n, _ in _checks]:
        _checks.append((name, function))


def check_database():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as e:  # noqa: BLE001 — any driver error means "not reachable"
        log.warning("readyz: database check failed (%s)", type(e).__name__)
        return {"status": FAIL}
    return {"status": OK}


def check_redis():
    url = settings.REDIS_URL
    if not url:
        return {"status": NOT_CONFIGURED}
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except Exception as e:  # noqa: BLE001 — connection refused, timeout, auth…
        log.warning("readyz: redis check failed (%s)", type(e).__name__)
        return {"status": FAIL}
    finally:
        client.close()
    return {"status": OK}


def run_checks(now):
    """{check name: result} for every check."""
    results = {"database": check_database(), "redis": check_redis()}
    for name, function in _checks:
        try:
            results.update(function(now))
        except Exception as e:  # noqa: BLE001 — e.g. the database is down
            log.warning("readyz: %s check failed (%s)", name, type(e).__name__)
            results[name] = {"status": FAIL}
    return results


@never_cache
@require_GET
def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


@never_cache
@require_GET
def readyz(request):
    checks = run_checks(timezone.now())
    ready = all(result["status"] in (OK, NOT_CONFIGURED) for result in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JsonResponse(body, status=200 if ready else 503)
