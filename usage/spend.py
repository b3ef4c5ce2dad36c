"""Month-to-date spend of an organization or one of its projects, from the database.

Billed spend is the sum of the scope's cost buckets (the Costs API). The Costs API lags
behind usage, so for each day of the month up to today that has *no* cost row for the
scope, the spend is estimated from that day's usage buckets × model prices
(usage/prices.py) and labelled estimated. A day with cost rows is billed only: its usage
is never added on top. The rules that judge the spend are in usage/budgets.py.

Only token usage is priced (completions, embeddings: input, cached input and output
tokens); images, audio, vector-store bytes and code-interpreter sessions have no price
here and count nothing on an estimated day. Models without a price are named in
`Spend.unpriced_models`.

Scope: an organization's spend is all its buckets (projects registered here or not); a
project's is the buckets linked to it (usage/ingest.py links them by upstream id).
"""

from collections import defaultdict
from datetime import UTC, timedelta
from decimal import Decimal

from django.db.models import Q, Sum
from django.utils.timezone import now as current_time

from .budgets import Spend, month_start
from .models import CostBucket, UsageBucket
from .prices import PriceBook, UnknownModel

ZERO = Decimal(0)


def _scoped(queryset, organization, project):
    queryset = queryset.filter(organization=organization)
    return queryset.filter(project=project) if project is not None else queryset


def billed_by_day(organization, project, since, until):
    """{date: billed USD} for the days in [since, until) that have cost rows."""
    rows = (
        _scoped(CostBucket.objects, organization, project)
        .filter(start_time__gte=since, start_time__lt=until)
        .values("start_time")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    billed = defaultdict(lambda: ZERO)
    for row in rows:
        billed[row["start_time"].astimezone(UTC).date()] += row["total"] or ZERO
    return dict(billed)


def unbilled(since, until, billed):
    """The UTC days in [since, until) (both UTC midnights) with no bill, as one Q of their
    ranges on start_time: only those days' usage is priced, so only those are read — an
    organization with 25,000 keys has 150,000 usage rows in a month, nearly all on days
    the Costs API already billed."""
    ranges, day = Q(pk__in=[]), since
    while day < until:
        if day.astimezone(UTC).date() not in billed:
            ranges |= Q(start_time__gte=day, start_time__lt=day + timedelta(days=1))
        day += timedelta(days=1)
    return ranges


def token_usage_by_day(organization, project, since, until, billed=()):
    """[(date, model, input, cached input, output)] token counts summed per day and model,
    for the usage buckets in [since, until) that report tokens, on the days not in
    `billed` (dates)."""
    rows = (
        _scoped(UsageBucket.objects, organization, project)
        .filter(start_time__gte=since, start_time__lt=until)
        .filter(unbilled(since, until, billed))
        .filter(Q(input_tokens__isnull=False) | Q(output_tokens__isnull=False))
        .values("start_time", "model")
        .annotate(
            input=Sum("input_tokens"),
            cached=Sum("input_cached_tokens"),
            output=Sum("output_tokens"),
        )
        .order_by()
    )
    return [
        (
            row["start_time"].astimezone(UTC).date(),
            row["model"],
            row["input"] or 0,
            row["cached"] or 0,
            row["output"] or 0,
        )
        for row in rows
    ]


def price_usage(rows, prices):
    """(USD by date, unpriced model names) for `token_usage_by_day` rows."""
    cost = defaultdict(lambda: ZERO)
    unpriced = set()
    for day, model, input_tokens, cached, output in rows:
        name = model or "(no model)"
        try:
            cost[day] += prices.estimate(name, input_tokens, output, min(cached, input_tokens), on=day).total
        except UnknownModel:
            unpriced.add(name)
    return dict(cost), unpriced


def month_to_date(organization, project=None, now=None, prices=None):
    """The Spend of `organization` (or of `project`, one of its projects) from the first
    instant of `now`'s UTC month through the end of `now`'s day. `prices` is a PriceBook
    to reuse across calls (loaded when None)."""
    now = now or current_time()
    start = month_start(now)
    until = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    billed = billed_by_day(organization, project, start, until)
    usage = [row for row in token_usage_by_day(organization, project, start, until, billed) if row[0] not in billed]
    estimated, unpriced = price_usage(usage, prices or PriceBook.load())
    return Spend(
        billed=sum(billed.values(), ZERO),
        estimated=sum(estimated.values(), ZERO),
        estimated_days=sorted({row[0] for row in usage}),
        unpriced_models=tuple(sorted(unpriced)),
    )
