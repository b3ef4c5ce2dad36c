"""Prometheus metrics at /metrics, computed from the database at scrape time.

Why at scrape time and not counters in the workers: Celery runs probes in worker
processes on several hosts; a prometheus-client counter lives in the memory of the
process that incremented it, so the web process would not see it (prometheus-client's
multiprocess mode shares files between processes of ONE host only, and needs a folder
wiped at every start). The database already holds every probe, key, circuit and ingest
state, so each scrape runs a fixed number of aggregate queries — the same count at 2 keys
and at 50,000 (tests/test_metrics.py pins it) — and every web process answers the same.

The apps register what they measure from their AppConfig.ready with
`register_provider(name, function)`; `function(now)` yields metric families
(prometheus_client.core.GaugeMetricFamily …). keys: probes by outcome, sweep duration
and lag, keys by rotation state and flag, breaker state per host. usage: spend vs budget
per project, ingestion age. A later app (the organization sync) adds its age the same
way. A provider that fails is counted in `console_metrics_provider_errors` and the rest
of the scrape goes on.

Access: off unless METRICS_ENABLED (default: on with DEBUG, off in production); with
METRICS_TOKEN set, a scrape must send `Authorization: Bearer <token>` (compared in
constant time). In production, also restrict /metrics to the scraper's network at the
reverse proxy (docs/OPERATIONS.md).
"""

import hmac
import logging

from django.conf import settings
from django.core.checks import Warning, register
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

# [(name, function(now) -> iterable of metric families)], filled by AppConfig.ready.
_providers = []


def register_provider(name, function):
    if name not in [n for n, _ in _providers]:
        _providers.append((name, function))


class ConsoleCollector:
    """Runs every provider at scrape time."""

    def collect(self):
        now = timezone.now()
        errors = GaugeMetricFamily(
            "console_metrics_provider_errors", "Metric providers that failed in this scrape.", labels=["provider"]
        )
        for name, function in _providers:
            try:
                families = list(function(now))
            except Exception as e:  # noqa: BLE001 — one provider's failure is not the scrape's
                log.warning("metrics provider %s failed (%s)", name, type(e).__name__)
                errors.add_metric([name], 1)
                continue
            errors.add_metric([name], 0)
            yield from families
        yield errors


registry = CollectorRegistry(auto_describe=False)
registry.register(ConsoleCollector())


def authorized(request):
    token = settings.METRICS_TOKEN
    if not token:
        return True
    sent = request.headers.get("Authorization", "")
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


@never_cache
@require_GET
def metrics_view(request):
    if not settings.METRICS_ENABLED:
        raise Http404
    if not authorized(request):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@register(deploy=True)
def check_metrics_exposure(app_configs=None, **kwargs):
    """console.W010: /metrics is on in production without a token."""
    if settings.METRICS_ENABLED and not settings.METRICS_TOKEN:
        return [
            Warning(
                "/metrics is enabled without METRICS_TOKEN: anyone who reaches it reads key counts, spend and hosts.",
                hint="Set METRICS_TOKEN, or restrict /metrics to the scraper's network at the proxy and add "
                "console.W010 to SILENCED_SYSTEM_CHECKS.",
                id="console.W010",
            )
        ]
    return []
