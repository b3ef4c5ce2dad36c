"""Usage's dashboard panel (console/dashboard.py): three aggregate queries.

1. billed spend this month per project and per UTC day, in one pass over the month's cost
   buckets (the spend-per-day chart: all organizations, unregistered rows included);
2. every project's budget and thresholds: the over-budget and forecast counts — judged by
   usage/budgets.py's budget_state on the same figures as the project list's "budget
   state" filter (the rows linked to the project), so the link shows exactly the counted
   rows — and the spend-against-budget chart (top N);
3. each organization's ingest state (one row per organization).

Spend here is **billed** (cost buckets), like the project list's columns and /metrics; the
estimate for days without costs costs queries per project and stays on the project page.
"""

from decimal import Decimal
from urllib.parse import urlencode

from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.urls import reverse

from accounts.models import Project, split_thresholds
from console import dashboard, dashboard_charts

from . import charts
from .budgets import BudgetState, budget_state, month_start, next_month_start
from .models import CostBucket, IngestState
from .spend_columns import month_so_far

TOP_PROJECTS = 10
STATE_COLOURS = {
    BudgetState.OVER: "#c62828",
    BudgetState.FORECAST: "#ef6c00",
    BudgetState.NEAR: "#f9a825",
    BudgetState.WITHIN: "#1565c0",
    BudgetState.NONE: "#90a4ae",
}


def project_list(**params):
    return reverse("admin:accounts_project_changelist") + "?" + urlencode(params)


def month_costs(now):
    """This month's billed spend per project and per UTC day, from one pass over the
    month's cost buckets (one query): ({project_id: total}, {day: total}). The days count
    every row, unregistered ones included; a project only the rows linked to it — the
    figures of usage/spend_columns.py's `with_spend`, which the project list filters by."""
    by_project, by_day = {}, {}
    rows = (
        CostBucket.objects.filter(start_time__gte=month_start(now), start_time__lt=next_month_start(now))
        .annotate(day=TruncDate("start_time"))
        .values_list("project_id", "day")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    for project_id, day, total in rows:
        by_day[day] = by_day.get(day, Decimal(0)) + total
        if project_id is not None:
            by_project[project_id] = by_project.get(project_id, Decimal(0)) + total
    return by_project, by_day


def project_spend(now, by_project):
    """[(name, spend, budget, state)] for every project, one query."""
    rows = Project.objects.values_list("pk", "name", "monthly_budget_usd", "organization__alert_thresholds")
    result = []
    for pk, name, budget, thresholds in rows.order_by():
        spent = by_project.get(pk, Decimal(0))
        result.append((name, spent, budget, budget_state(spent, budget, split_thresholds(thresholds), now)))
    return result


def panel(now):
    p = dashboard.Panel()
    by_project, billed = month_costs(now)
    projects = project_spend(now, by_project)
    for state, label in (
        (BudgetState.OVER, "Projects over budget"),
        (BudgetState.FORECAST, "Projects forecast to exceed"),
    ):
        p.attention.append(
            dashboard.Attention(
                label, sum(1 for *_, s in projects if s == state), project_list(budget_state=state.value)
            )
        )

    top = sorted((r for r in projects if r[1] or r[2] is not None), key=lambda r: (-r[1], r[0]))[:TOP_PROJECTS]
    p.charts.append(
        dashboard_charts.bars(
            [(name, spent, STATE_COLOURS[state], budget) for name, spent, budget, state in top],
            f"Billed spend against budget per project, {now:%B %Y} (top {TOP_PROJECTS}; red tick: budget)",
            unit=charts.usd,
        )
    )

    days = [charts.DaySpend(day, billed.get(day) or Decimal(0)) for day in month_so_far(now)]
    p.charts.append(
        charts.daily_spend_chart(
            days, None, f"Billed spend per day in {now:%B %Y}, all organizations, and its cumulative total", width=460
        )
    )

    states = list(
        IngestState.objects.values_list(
            "organization__name",
            "last_attempt_at",
            "last_success_at",
            "last_outcome",
            "last_error",
            "consecutive_failures",
            "synced_until",
            "last_duration_ms",
            "last_counts",
        ).order_by("organization__name")
    )
    p.status.append(ingestion_status(states, now))
    return p


def ingestion_status(states, now):
    """The last ingestion across organizations: when, how long, how many rows, what it
    covered, which failed."""
    if not states:
        return dashboard.Status(
            "Usage ingestion", ("No ingestion has run yet.",), url=reverse("admin:usage_ingeststate_changelist")
        )
    attempted = [s for s in states if s[1]]
    successes = [s[2] for s in states if s[2]]
    failing = [s for s in states if s[5]]
    facts = []
    if attempted:
        last = max(attempted, key=lambda s: s[1])
        name, at, ms, counts = last[0], last[1], last[7], last[8] or {}
        text = f"Last run: {name}, {at:%Y-%m-%d %H:%M:%S %Z}"
        if ms is not None:
            text += f", took {ms / 1000:.1f} s"
        if counts:
            text += (
                f", {counts.get('buckets', 0):,} buckets and {counts.get('results', 0):,} results read: "
                f"{counts.get('created', 0):,} rows created, {counts.get('updated', 0):,} updated, "
                f"{counts.get('unchanged', 0):,} unchanged"
            )
        facts.append(text)
    else:
        facts.append("Never attempted")
    facts.append(
        f"Organizations ingested: {len(successes)} of {len(states)}"
        + (f"; last success {max(successes):%Y-%m-%d %H:%M:%S %Z}" if successes else "")
    )
    until = [s[6] for s in states if s[6]]
    if until:
        facts.append(f"Complete up to {min(until):%Y-%m-%d %H:%M %Z} (the least advanced organization)")
    for name, _, _, outcome, error, failures, *_ in failing:
        facts.append(f"{name}: {failures} failed run(s) in a row ({outcome or 'error'}): {error or 'no message'}")
    if not failing:
        facts.append("Errors: none")
    return dashboard.Status(
        "Usage ingestion", tuple(facts), failing=bool(failing), url=reverse("admin:usage_ingeststate_changelist")
    )
