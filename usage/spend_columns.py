"""This month's spend for the admin: list annotations and the charts' series.

`with_spend(queryset, scope, now)` adds `spend_mtd` to each row of an organization,
project or key list: the sum of the billed CostBucket amounts linked to the row (`scope`
is the CostBucket field naming it) whose bucket starts in `now`'s UTC month. It is one
correlated subquery inside the list's own query, so the query count stays the same
however many rows the list has. An organization's sum includes its unregistered rows (an
upstream project or key not registered here); a project's and a key's only the rows
linked to them.

`daily_spend` (the project page's chart) and `project_totals` (the organization page's)
read the month from usage/spend.py's billed and estimated days; the rules that judge a
spend are usage/budgets.py's.
"""

from collections import defaultdict
from datetime import UTC, timedelta
from decimal import Decimal

from django.db.models import DecimalField, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce

from .budgets import month_start, next_month_start
from .charts import DaySpend, Total
from .models import CostBucket
from .prices import PriceBook
from .spend import billed_by_day, price_usage, token_usage_by_day

ZERO = Decimal(0)
AMOUNT = DecimalField(max_digits=24, decimal_places=10)


def billed_in_month(scope, now):
    """A subquery: the outer row's billed spend in `now`'s month, 0 when it has none."""
    rows = (
        CostBucket.objects.filter(
            **{scope: OuterRef("pk")}, start_time__gte=month_start(now), start_time__lt=next_month_start(now)
        )
        .order_by()
        .values(scope)
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Coalesce(Subquery(rows, output_field=AMOUNT), ZERO, output_field=AMOUNT)


def with_spend(queryset, scope, now):
    return queryset.annotate(spend_mtd=billed_in_month(scope, now))


def month_so_far(now):
    """The dates of `now`'s month up to and including today (UTC)."""
    start = month_start(now)
    return [(start + timedelta(days=i)).date() for i in range((now.astimezone(UTC) - start).days + 1)]


def daily_spend(organization, project, now, prices=None):
    """A DaySpend for each day of the month so far: billed where the Costs API has rows
    for the day, else estimated from the day's usage × prices (usage/spend.py's rule: a
    billed day never adds its usage on top). Three queries."""
    days = month_so_far(now)
    since = month_start(now)
    until = since + timedelta(days=len(days))
    billed = billed_by_day(organization, project, since, until)
    usage = [row for row in token_usage_by_day(organization, project, since, until, billed) if row[0] not in billed]
    estimated, _ = price_usage(usage, prices or PriceBook.load())
    return [DaySpend(day, billed.get(day, ZERO), estimated.get(day, ZERO)) for day in days]


def project_totals(organization, now):
    """This month's billed spend per project of `organization` (one query); rows no local
    project claims are shown under their upstream id, "(unregistered)"."""
    rows = (
        CostBucket.objects.filter(
            organization=organization, start_time__gte=month_start(now), start_time__lt=next_month_start(now)
        )
        .order_by()
        .values("project_id", "project__name", "upstream_project_id")
        .annotate(total=Sum("amount"))
    )
    totals, labels = defaultdict(Decimal), {}
    for row in rows:
        if row["project_id"] is not None:
            scope, label = row["project_id"], row["project__name"]
        elif row["upstream_project_id"]:
            scope = label = f"{row['upstream_project_id']} (unregistered)"
        else:
            scope = label = "(no project)"
        totals[scope] += row["total"]
        labels[scope] = label
    return [Total(labels[scope], total) for scope, total in totals.items()]
