"""What the organization sync measures for /metrics (console/metrics.py): the age of each
organization's last successful sync and its failures in a row, one query."""

from prometheus_client.core import GaugeMetricFamily

from .models import SyncState


def collect(now):
    age = GaugeMetricFamily(
        "console_sync_age_seconds",
        "Seconds since an organization's last successful Administration API sync.",
        labels=["organization"],
    )
    failing = GaugeMetricFamily(
        "console_sync_consecutive_failures", "Failed organization syncs in a row.", labels=["organization"]
    )
    for org, success, failures in SyncState.objects.values_list(
        "organization__slug", "last_success_at", "consecutive_failures"
    ).order_by("organization__slug"):
        if success is not None:
            age.add_metric([org], max((now - success).total_seconds(), 0.0))
        failing.add_metric([org], failures)
    yield age
    yield failing
