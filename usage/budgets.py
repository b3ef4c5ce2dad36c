"""Budget rules: pure functions of amounts, thresholds and `now` (no ORM, no clock).

The month is the UTC calendar month `now` falls in (OpenAI's cost buckets are UTC days).
Amounts are USD `Decimal`s; a budget of None means "no budget".

States, most severe first — a scope has exactly one, the first that applies:

1. NONE      no budget is set (None).
2. OVER      spend ≥ 100 % of the budget (a zero budget is over as soon as anything is
             spent).
3. FORECAST  still under the budget, but the end-of-month forecast (below) exceeds it.
4. NEAR      past the first threshold (e.g. 50 % of 50,80,100), and forecast to end the
             month within the budget.
5. WITHIN    otherwise.

Why FORECAST before NEAR: "you are at 60 % on the 10th and heading for 180 %" asks for
action now, "you are at 85 % on the 29th and will end at 88 %" does not; a user reads
FORECAST as the stronger warning, so it wins whenever both apply.

The forecast extrapolates the month's daily run rate: spend so far ÷ days elapsed × days
in the month. Days elapsed count the current day by the fraction of it that has passed
(the 10th at 12:00 is 9.5 days), with a floor of one whole day, so the first hours of a
month never extrapolate a few minutes' spend into a huge forecast. The forecast is never
below the spend so far.
"""

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import models

CENT = Decimal("0.01")
ONE_DAY = timedelta(days=1)


class BudgetState(models.TextChoices):
    NONE = "none", "No budget"
    WITHIN = "within", "Within budget"
    NEAR = "near", "Near budget"
    FORECAST = "forecast", "Forecast to exceed"
    OVER = "over", "Over budget"


@dataclass(frozen=True)
class Spend:
    """Month-to-date spend of one scope: `billed` from the Costs API, `estimated` from
    usage × prices for the days that have no cost rows yet (`estimated_days`).
    `unpriced_models` names models whose usage could not be priced (no ModelPrice row):
    their usage is not in `estimated`."""

    billed: Decimal
    estimated: Decimal
    estimated_days: list[date]
    unpriced_models: tuple[str, ...] = field(default=())

    @property
    def total(self):
        return self.billed + self.estimated

    @property
    def is_estimated(self):
        """Does the total include any estimated day?"""
        return bool(self.estimated_days)


def _utc(now):
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware.")
    return now.astimezone(UTC)


def month_start(now):
    """The first instant (UTC) of the month `now` falls in."""
    now = _utc(now)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def month_days(now):
    """How many days the month `now` falls in has (28–31)."""
    now = _utc(now)
    return calendar.monthrange(now.year, now.month)[1]


def next_month_start(now):
    """The first instant (UTC) of the month after `now`'s."""
    return month_start(month_start(now) + timedelta(days=32))


def days_elapsed(now):
    """Days of `now`'s month that have passed, the current one by its elapsed fraction,
    never less than 1 (see the module docstring)."""
    elapsed = (_utc(now) - month_start(now)) / ONE_DAY
    return max(Decimal(str(elapsed)), Decimal(1))


def forecast(spend_to_date, now):
    """End-of-month spend if the month's daily run rate so far holds, to the cent, never
    below `spend_to_date`."""
    spend_to_date = Decimal(spend_to_date)
    projected = spend_to_date / days_elapsed(now) * month_days(now)
    return max(projected, spend_to_date).quantize(CENT, rounding=ROUND_HALF_UP)


def percent_used(spend, budget):
    """Spend as a percentage of the budget (one decimal), or None without a budget. A
    zero budget reads 0 % with nothing spent and 100 % (over) once anything is."""
    if budget is None:
        return None
    budget = Decimal(budget)
    if budget == 0:
        return Decimal(100) if spend > 0 else Decimal(0)
    return (Decimal(spend) * 100 / budget).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _reached(spend, budget, percent):
    """Has `spend` reached `percent` % of `budget`? Exact: no rounding of the ratio."""
    if budget == 0:
        return spend > 0
    return Decimal(spend) * 100 >= Decimal(percent) * Decimal(budget)


def crossed_thresholds(spend, budget, thresholds):
    """The thresholds (percent) `spend` has reached, in increasing order; [] without a
    budget. Reaching exactly a threshold counts as crossing it. With a zero budget any
    spend crosses every threshold and no spend crosses none."""
    if budget is None:
        return []
    return [t for t in sorted(set(thresholds)) if _reached(spend, budget, t)]


def budget_state(spend, budget, thresholds, now):
    """The scope's state (see the module docstring for the order). `thresholds` are the
    organization's percentages; the first (smallest) one marks NEAR; with none, a scope
    is never NEAR."""
    if budget is None:
        return BudgetState.NONE
    spend, budget = Decimal(spend), Decimal(budget)
    if budget == 0:
        return BudgetState.OVER if spend > 0 else BudgetState.WITHIN
    if _reached(spend, budget, 100):
        return BudgetState.OVER
    if forecast(spend, now) > budget:
        return BudgetState.FORECAST
    if thresholds and _reached(spend, budget, min(thresholds)):
        return BudgetState.NEAR
    return BudgetState.WITHIN
