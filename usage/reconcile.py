"""Reconciliation: what usage × prices says each project cost each month, next to what
OpenAI billed (the Costs API), and the difference.

Both sides are grouped by organization, upstream project id and UTC month, so projects
not registered here appear too (by their proj_… id). Estimated cost prices every day's
usage at the price effective that day (usage/prices.py); usage of models without a price
is left out and the models are named. The difference is estimated − billed: positive
when the price table over-estimates. Four queries whatever the number of rows.
"""

from dataclasses import dataclass, field
from datetime import UTC, date
from decimal import Decimal

from django.db.models import Q, Sum

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


def reconcile(now, months=3, organization=None, prices=None):
    """Rows for the `months` UTC months up to and including `now`'s, for one organization
    or all, newest month first, then by organization and project."""
    since = months_back(now, months)
    costs = CostBucket.objects.filter(start_time__gte=since, start_time__lte=now)
    usage = UsageBucket.objects.filter(start_time__gte=since, start_time__lte=now).filter(
        Q(input_tokens__isnull=False) | Q(output_tokens__isnull=False)
    )
    if organization is not None:
        costs, usage = costs.filter(organization=organization), usage.filter(organization=organization)
    prices = prices or PriceBook.load()
    rows = {}

    def row(org_id, upstream_project_id, start_time):
        key = (org_id, upstream_project_id, first_of_month(start_time))
        if key not in rows:
            rows[key] = Row(None, upstream_project_id, None, key[2])
        return rows[key]

    for r in costs.values("organization", "upstream_project_id", "start_time").annotate(total=Sum("amount")).order_by():
        row(r["organization"], r["upstream_project_id"], r["start_time"]).billed += r["total"] or ZERO
    sums = (
        usage.values("organization", "upstream_project_id", "start_time", "model")
        .annotate(input=Sum("input_tokens"), cached=Sum("input_cached_tokens"), output=Sum("output_tokens"))
        .order_by()
    )
    for r in sums:
        target = row(r["organization"], r["upstream_project_id"], r["start_time"])
        input_tokens, cached = r["input"] or 0, r["cached"] or 0
        try:
            day = r["start_time"].astimezone(UTC).date()
            estimate = prices.estimate(r["model"], input_tokens, r["output"] or 0, min(cached, input_tokens), on=day)
        except UnknownModel:
            target.unpriced_models.add(r["model"] or "(no model)")
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
