"""Budget alerts: judge every budgeted scope's month-to-date spend and raise each alert
once.

`evaluate(now)` looks at every organization with a monthly budget and every
non-archived project with one. For each scope it computes the month-to-date Spend
(usage/spend.py), its state and crossed thresholds (usage/budgets.py, the organization's
thresholds), and raises:

- a THRESHOLD alert for each threshold crossed this month (50, 80, 100 % by default);
- one FORECAST alert per scope and month while the state is "forecast to exceed" (still
  under budget, heading past it). Its `threshold` is 100: the budget itself.

"Once" is the database's doing, not luck: the BudgetAlert and its Notification are
created in one transaction, the alert with get_or_create on the fields its partial
unique constraints cover (scope, kind, threshold, month) and the notification with a
unique dedupe key `budget:<org|project>:<id>:<kind>:<threshold>:<YYYY-MM>`. When two
workers evaluate at once, the second insert waits for the first to commit, fails the
constraint, and get_or_create returns the first's row: one alert, one notification, one
email. Delivery is the outbox's (accounts/notifications.py); a notification raised here is
due from the evaluation's `now`.

Cost: this month's alerts are read once per evaluation, so a scope whose alerts were all
raised already costs only its two spend queries (the hourly steady state).
"""

import logging
from dataclasses import dataclass, field

from django.db import transaction
from django.utils.timezone import now as current_time

from accounts.models import Notification, Organization, Project
from accounts.notifications import enqueue

from .budgets import CENT, BudgetState, budget_state, crossed_thresholds, forecast, month_start, percent_used
from .models import AlertKind, BudgetAlert
from .prices import PriceBook
from .spend import month_to_date

log = logging.getLogger(__name__)

NOTIFICATION_KIND = "budget"


@dataclass
class EvaluationSummary:
    scopes: int = 0
    raised: list = field(default_factory=list)  # the BudgetAlerts this run created


def usd(amount):
    return f"${amount:,.2f}"


def scope_names(organization, project):
    """(dedupe scope, label) for an organization or one of its projects."""
    if project is None:
        return f"org:{organization.pk}", f"Organization {organization.name}"
    return f"project:{project.pk}", f"Project {project.name} (organization {organization.name})"


def dedupe_key(organization, project, kind, threshold, month):
    return f"budget:{scope_names(organization, project)[0]}:{kind}:{threshold}:{month:%Y-%m}"


def message(organization, project, kind, threshold, spend, budget, now):
    """(subject, text) of an alert: the scope, spend (billed / estimated), budget, %, forecast."""
    _, label = scope_names(organization, project)
    month = month_start(now)
    total = spend.total
    projected = forecast(total, now)
    if kind == AlertKind.FORECAST:
        subject = f"[Budget] {label}: forecast to exceed its {month:%B %Y} budget"
        headline = f"{label} is forecast to spend {usd(projected)} in {month:%B %Y}, over its budget of {usd(budget)}."
    else:
        subject = f"[Budget] {label}: {threshold}% of its {month:%B %Y} budget reached"
        headline = f"{label} has reached {threshold}% of its {month:%B %Y} budget."
    detail = f"Spent so far: {usd(total)} of {usd(budget)} ({percent_used(total, budget)}%)"
    if spend.is_estimated:
        days = ", ".join(f"{d:%Y-%m-%d}" for d in spend.estimated_days)
        detail += f": {usd(spend.billed)} billed and {usd(spend.estimated)} estimated from usage (days {days})"
    else:
        detail += ", all billed"
    lines = [headline, detail + ".", f"Forecast for the month at the current daily rate: {usd(projected)}."]
    if spend.unpriced_models:
        lines.append("Not priced (no model price): " + ", ".join(spend.unpriced_models) + ".")
    return subject, "\n".join(lines)


def raise_alert(organization, project, kind, threshold, spend, budget, now):
    """Create the scope's alert for (kind, threshold, this month) and its notification,
    together, unless it exists. Returns the BudgetAlert if this call created it, else None."""
    month = month_start(now).date()
    with transaction.atomic():
        alert, created = BudgetAlert.objects.get_or_create(
            organization=organization,
            project=project,
            kind=kind,
            threshold=threshold,
            month=month,
            defaults={
                "spend_usd": spend.total.quantize(CENT),
                "budget_usd": budget,
                "estimated": spend.is_estimated,
                "created": now,
            },
        )
        if not created:
            return None
        subject, text = message(organization, project, kind, threshold, spend, budget, now)
        notification, raised = enqueue(
            organization, dedupe_key(organization, project, kind, threshold, month), NOTIFICATION_KIND, subject, text
        )
        if raised:
            # Raised at the evaluation's `now` (the real time, except in tests and replays),
            # and due for delivery from then.
            Notification.objects.filter(pk=notification.pk).update(created=now, next_attempt_at=now)
            notification.created = notification.next_attempt_at = now
        alert.notification = notification
        alert.save(update_fields=["notification"])
    log.info("Budget alert: %s", subject)
    return alert


def evaluate_scope(organization, project, budget, now, prices, existing=frozenset()):
    """Raise what one scope's spend calls for; returns the alerts created. `existing`
    holds (organization id, project id, kind, threshold) of this month's alerts already
    raised, read once per evaluation: they are skipped without a query. A missing one
    still goes through raise_alert, where the constraint decides."""
    spend = month_to_date(organization, project, now, prices=prices)
    thresholds = organization.alert_threshold_list()
    wanted = [(AlertKind.THRESHOLD, t) for t in crossed_thresholds(spend.total, budget, thresholds)]
    if budget_state(spend.total, budget, thresholds, now) == BudgetState.FORECAST:
        wanted.append((AlertKind.FORECAST, 100))
    project_id = project.pk if project is not None else None
    raised = [
        raise_alert(organization, project, kind, threshold, spend, budget, now)
        for kind, threshold in wanted
        if (organization.pk, project_id, kind, threshold) not in existing
    ]
    return [alert for alert in raised if alert is not None]


def budgeted_scopes():
    """(organization, project or None, budget) for every scope with a monthly budget."""
    for organization in Organization.objects.filter(monthly_budget_usd__isnull=False).order_by("pk"):
        yield organization, None, organization.monthly_budget_usd
    projects = (
        Project.objects.filter(monthly_budget_usd__isnull=False, archived_at__isnull=True)
        .select_related("organization")
        .order_by("pk")
    )
    for project in projects:
        yield project.organization, project, project.monthly_budget_usd


def evaluate(now=None):
    """Evaluate every budgeted scope at `now`; returns an EvaluationSummary. One scope's
    failure is logged and never stops the others."""
    now = now or current_time()
    prices = PriceBook.load()
    existing = frozenset(
        BudgetAlert.objects.filter(month=month_start(now).date()).values_list(
            "organization_id", "project_id", "kind", "threshold"
        )
    )
    summary = EvaluationSummary()
    for organization, project, budget in budgeted_scopes():
        summary.scopes += 1
        try:
            summary.raised.extend(evaluate_scope(organization, project, budget, now, prices, existing))
        except Exception:
            log.exception("Budget evaluation failed for %s", project or organization)
    return summary
