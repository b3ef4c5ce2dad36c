"""What usage measures for /metrics (console/metrics.py): spend vs budget per project and
the age of each organization's usage ingestion, one query each.

Spend here is the month's **billed** spend (cost buckets, the Costs API) summed in SQL.
The budget pages add an estimate for the days the Costs API has not reported yet
(usage/spend.py, usage × prices); that costs queries per project, so the scrape leaves it
out and says so in the metric's help."""

from django.db.models import Q, Sum
from prometheus_client.core import GaugeMetricFamily

from accounts.models import Project, split_thresholds

from .budgets import budget_state, month_start
from .models import IngestState


def spend(now):
    since = month_start(now)
    rows = (
        Project.objects.filter(archived_at__isnull=True)
        .annotate(billed=Sum("cost_buckets__amount", filter=Q(cost_buckets__start_time__gte=since)))
        .values_list("organization__slug", "name", "monthly_budget_usd", "organization__alert_thresholds", "billed")
        .order_by("organization__slug", "name")
    )
    labels = ["organization", "project"]
    spent = GaugeMetricFamily(
        "console_project_spend_usd", "Billed spend this UTC month (cost buckets; estimates excluded).", labels=labels
    )
    budget = GaugeMetricFamily("console_project_budget_usd", "Monthly budget (projects that have one).", labels=labels)
    state = GaugeMetricFamily(
        "console_project_budget_state",
        "Budget state of the billed spend (1: current state).",
        labels=[*labels, "state"],
    )
    for org, name, monthly, thresholds, billed in rows:
        billed = billed or 0
        spent.add_metric([org, name], float(billed))
        if monthly is None:
            continue
        budget.add_metric([org, name], float(monthly))
        current = budget_state(billed, monthly, split_thresholds(thresholds), now)
        state.add_metric([org, name, current.value], 1)
    return [spent, budget, state]


def ingestion(now):
    family = GaugeMetricFamily(
        "console_usage_ingest_age_seconds",
        "Seconds since an organization's last successful usage ingest.",
        labels=["organization"],
    )
    failing = GaugeMetricFamily(
        "console_usage_ingest_consecutive_failures", "Failed usage ingests in a row.", labels=["organization"]
    )
    for org, success, failures in IngestState.objects.values_list(
        "organization__slug", "last_success_at", "consecutive_failures"
    ).order_by("organization__slug"):
        if success is not None:
            family.add_metric([org], max((now - success).total_seconds(), 0.0))
        failing.add_metric([org], failures)
    return [family, failing]


def collect(now):
    yield from spend(now)
    yield from ingestion(now)
