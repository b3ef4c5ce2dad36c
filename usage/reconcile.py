"""Reconciliation: what usage × prices says each project cost each month, next to what
OpenAI billed (the Costs API), and the difference.

Both sides are grouped by organization, upstream project id and UTC month, so projects
not registered here appear too (by their proj_… id). Estimated cost prices every day's
usage at the price effective that day (usage/prices.py); usage of models without a price
is left out and the models are named. The difference is estimated − billed: positive
when the price table over-estimates. Four queries whatever the number of rows (five
when it reads the prices itself).

How, at 300,000 usage rows in three months: SQL sums usage per bucket start (a day),
organization, upstream project and model, reading the index `usage_usagebucket_reconcile`
in that order (an index-only scan grouped without a sort). Cached tokens are clamped to
the input tokens per such day group, as pricing each day on its own does. Each day group
also carries its *period*: the window is cut at every month start and at every day a
price takes effect (`PriceBook.effective_dates()`), so within a period every model has
one price, or none. Python adds up a period's day groups and prices the sums once, on
the period's first day. That gives the same Decimal figures as pricing each day: an
estimate is a sum of count × rate / 1M, linear in the counts, and Decimal adds and
multiplies exactly while a figure fits in 28 significant digits — at the prices' 4
decimal places, while a project's month is estimated below 10^18 USD. tests/test_prices.py
compares it with a per-day reference over a world with every case in between.
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal

from django.db.models import Case, Max, Q, Sum, Value, When

from accounts.models import Organization, Project

from .budgets import month_start
from .models import CostBucket, UsageBucket
from .prices import PriceBook, UnknownModel

ZERO = Decimal(0)


@dataclass
class Row:
    organization: Organization
    upstream_project_id: str
    project: Project | None
    month: date
    estimated: Decimal = ZERO
    billed: Decimal = ZERO
    unpriced_models: set = field(default_factory=set)

    @property
    def difference(self):
        return self.estimated - self.billed

    @property
    def difference_percent(self):
        """The difference as a percentage of the billed cost, None when nothing was billed."""
        if not self.billed:
            return None
        return (self.difference * 100 / self.billed).quantize(Decimal("0.1"))

    @property
    def unpriced(self):
        return sorted(self.unpriced_models)

    @property
    def project_label(self):
        if self.project is not None:
            return self.project.name
        return f"{self.upstream_project_id} (unregistered)" if self.upstream_project_id else "(no project)"


def first_of_month(moment):
    return moment.astimezone(UTC).date().replace(day=1)


def months_back(now, months):
    """The first instant of the month `months` − 1 months before `now`'s (months ≥ 1)."""
    start = month_start(now)
    index = start.year * 12 + start.month - 1 - (months - 1)
    return start.replace(year=index // 12, month=index % 12 + 1)


def period_starts(now, months, prices):
    """The first instants of the periods `reconcile()` prices at once, sorted: the first
    instant of each of the `months` months up to `now`'s, and of every day a price takes
    effect in between (up to `now`). A period lies in one month, and `prices` gives each
    model one price (or none) throughout it."""
    starts = {months_back(now, m) for m in range(1, months + 1)}
    since = min(starts)
    for day in prices.effective_dates():
        moment = datetime.combine(day, time.min, tzinfo=UTC)
        if since < moment <= now:
            starts.add(moment)
    return sorted(starts)


def period_of(starts):
    """SQL: the index in `starts` of the period a bucket's start_time falls in (rows
    before the first period are 0: the query leaves them out)."""
    return Case(
        *(When(start_time__gte=starts[i], then=Value(i)) for i in range(len(starts) - 1, 0, -1)),
        default=Value(0),
    )


def reconcile(now, months=3, organization=None, prices=None):
    """Rows for the `months` UTC months up to and including `now`'s, for one organization
    or all, newest month first, then by organization and project."""
    prices = prices or PriceBook.load()
    starts = period_starts(now, months, prices)
    since = starts[0]
    costs = CostBucket.objects.filter(start_time__gte=since, start_time__lte=now)
    usage = UsageBucket.objects.filter(start_time__gte=since, start_time__lte=now).filter(
        Q(input_tokens__isnull=False) | Q(output_tokens__isnull=False)
    )
    if organization is not None:
        costs, usage = costs.filter(organization=organization), usage.filter(organization=organization)
    # Grouped by bucket start (and start_time first, the index's order); the period is a
    # function of it, read through Max() so that the datetime need not be selected.
    period = Max(period_of(starts))
    month_of_period = [first_of_month(start) for start in starts]
    rows = {}

    def row(org_id, upstream_project_id, index):
        key = (org_id, upstream_project_id, month_of_period[index])
        if key not in rows:
            rows[key] = Row(None, upstream_project_id, None, key[2])
        return rows[key]

    billed = (
        costs.values("start_time", "organization", "upstream_project_id")
        .annotate(period=period, total=Sum("amount"))
        .values_list("organization", "upstream_project_id", "period", "total")
        .order_by()
    )
    for org_id, upstream_project_id, index, total in billed:
        row(org_id, upstream_project_id, index).billed += total or ZERO
    days = (
        usage.values("start_time", "organization", "upstream_project_id", "model")
        .annotate(
            period=period, input=Sum("input_tokens"), cached=Sum("input_cached_tokens"), output=Sum("output_tokens")
        )
        .values_list("organization", "upstream_project_id", "model", "period", "input", "cached", "output")
        .order_by()
    )
    periods = {}
    for org_id, upstream_project_id, model, index, input_tokens, cached, output in days:
        input_tokens, cached, output = input_tokens or 0, cached or 0, output or 0
        cached = min(cached, input_tokens)  # per day group, as pricing the day alone does
        if input_tokens < 0 or cached < 0 or output < 0:
            raise ValueError("A token count cannot be negative.")  # as pricing the day alone would
        sums = periods.setdefault((org_id, upstream_project_id, index, model), [0, 0, 0])
        sums[0] += input_tokens
        sums[1] += cached
        sums[2] += output
    for (org_id, upstream_project_id, index, model), (input_tokens, cached, output) in periods.items():
        target = row(org_id, upstream_project_id, index)
        try:
            estimate = prices.estimate(model, input_tokens, output, cached, on=starts[index].date())
        except UnknownModel:
            target.unpriced_models.add(model or "(no model)")
            continue
        target.estimated += estimate.total

    organizations = Organization.objects.in_bulk({k[0] for k in rows})
    projects = {
        p.openai_project_id: p
        for p in Project.objects.filter(openai_project_id__in={k[1] for k in rows if k[1]}).only(
            "id", "name", "openai_project_id", "organization_id"
        )
    }
    result = []
    for (org_id, upstream_id, _), r in rows.items():
        r.organization = organizations[org_id]
        project = projects.get(upstream_id)
        r.project = project if project is not None and project.organization_id == org_id else None
        result.append(r)
    result.sort(key=lambda r: (-r.month.toordinal(), r.organization.name, r.project_label))
    return result
