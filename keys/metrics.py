"""What keys measure for /metrics (console/metrics.py): one aggregate query per family,
whatever the number of keys."""

from datetime import timedelta

from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce
from prometheus_client.core import GaugeMetricFamily

from accounts import heartbeat
from console.upstream import Outcome

from . import states
from .models import ApiKey, Circuit, CircuitState, ProbeResult


def _age(at, now):
    return max((now - at).total_seconds(), 0.0) if at is not None else None


def probes_by_outcome(now):
    """Probes of the last hour by outcome (from ProbeResult: workers' counters would not
    be visible here). Every outcome is present, 0 when none."""
    rows = (
        ProbeResult.objects.filter(started_at__gte=now - timedelta(hours=1))
        .values("outcome")
        .annotate(n=Count("pk"))
        .order_by()
    )
    counts = {row["outcome"]: row["n"] for row in rows}
    family = GaugeMetricFamily(
        "console_probes_last_hour", "Probes started in the last hour, by outcome.", labels=["outcome"]
    )
    for outcome in Outcome:
        family.add_metric([outcome.value], counts.get(outcome.value, 0))
    return family


def sweep(now):
    """The last sweep's duration and age (accounts/heartbeat.py), and the lag: how many
    active keys are due and how long the oldest has waited."""
    beats = heartbeat.snapshot(now, heartbeat.worker_window())
    is_due = Q(next_probe_at__lte=now) | Q(next_probe_at__isnull=True)
    due = ApiKey.objects.active().aggregate(
        due=Count("pk", filter=is_due), oldest=Min(Coalesce("next_probe_at", "created"), filter=is_due)
    )
    yield GaugeMetricFamily(
        "console_sweep_duration_seconds",
        "How long the last probe sweep took to claim and queue.",
        value=beats["beat_value"] or 0,
    )
    if beats["beat_claimed"] is not None:
        yield GaugeMetricFamily(
            "console_sweep_keys_claimed", "Due keys the last probe sweep claimed.", value=beats["beat_claimed"]
        )
        yield GaugeMetricFamily(
            "console_sweep_keys_queued",
            "Keys the last probe sweep handed to workers (fewer than claimed: the broker failed part-way).",
            value=beats["beat_queued"] or 0,
        )
    beat_age = _age(beats["beat_at"], now)
    if beat_age is not None:
        yield GaugeMetricFamily(
            "console_sweep_last_run_age_seconds", "Seconds since a worker last ran a sweep.", value=beat_age
        )
    yield GaugeMetricFamily("console_workers_seen", "Workers seen within two sweep intervals.", value=beats["workers"])
    yield GaugeMetricFamily("console_keys_due", "Active keys due for a probe now.", value=due["due"])
    yield GaugeMetricFamily(
        "console_sweep_lag_seconds",
        "How long the oldest due key has been waiting (0: none due).",
        value=_age(due["oldest"], now) or 0,
    )


def rotation(now):
    """Keys by rotation state and by stale flag (keys/states.py), one query."""
    counts = ApiKey.objects.rotation_counts(now)
    by_state = GaugeMetricFamily("console_keys_by_rotation_state", "Keys by rotation state.", labels=["state"])
    for state in states.RotationState:
        by_state.add_metric([state.value], counts[state.value] or 0)
    flagged = GaugeMetricFamily("console_keys_flagged", "Keys carrying each stale flag.", labels=["flag"])
    for flag in states.FlagName:
        flagged.add_metric([flag.value], counts[f"flag:{flag.value}"] or 0)
    return [by_state, flagged]


def circuits(now):
    """One series per API host and state: 1 for the state it is in, 0 for the others."""
    family = GaugeMetricFamily(
        "console_circuit_state", "Circuit breaker state per API host (1: current state).", labels=["host", "state"]
    )
    failures = GaugeMetricFamily(
        "console_circuit_consecutive_failures", "Consecutive host failures counted by the breaker.", labels=["host"]
    )
    for host, state, count in Circuit.objects.values_list("host", "state", "consecutive_failures").order_by("host"):
        for choice in CircuitState:
            family.add_metric([host, choice.value], 1 if state == choice.value else 0)
        failures.add_metric([host], count)
    return [family, failures]


def collect(now):
    yield probes_by_outcome(now)
    yield from sweep(now)
    yield from rotation(now)
    yield from circuits(now)
