"""Budget rules (usage/budgets.py) with `now` passed in, and month-to-date spend
(usage/spend.py): billed days from cost buckets, estimated days from usage × prices."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.models import Project
from usage.budgets import (
    BudgetState,
    Spend,
    budget_state,
    crossed_thresholds,
    forecast,
    month_days,
    month_start,
    percent_used,
)
from usage.models import CostBucket, Endpoint, ModelPrice, UsageBucket
from usage.prices import PriceBook
from usage.spend import month_to_date

D = Decimal
THRESHOLDS = [50, 80, 100]


def at(day, hour=0, minute=0, month=11, year=2026):
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- Month arithmetic -------------------------------------------------------------------


def test_month_start_is_the_first_utc_instant_of_the_month():
    assert month_start(at(26, 13, 5)) == at(1)
    assert month_start(at(1)) == at(1)


def test_month_start_converts_to_utc_first():
    from zoneinfo import ZoneInfo

    # 1 December 00:30 in Paris is still 30 November in UTC.
    paris = datetime(2026, 12, 1, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert month_start(paris) == at(1)


def test_month_start_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="timezone-aware"):
        month_start(datetime(2026, 11, 26))


@pytest.mark.parametrize(
    "now, days",
    [(at(26), 30), (at(15, month=2, year=2028), 29), (at(15, month=2, year=2027), 28), (at(31, month=12), 31)],
)
def test_month_days_counts_the_calendar_month(now, days):
    assert month_days(now) == days


# --- Forecast ---------------------------------------------------------------------------


def test_forecast_extrapolates_the_daily_run_rate():
    # Noon on the 16th of a 30-day month: 15.5 days elapsed.
    assert forecast(D("155"), at(16, 12)) == D("300.00")


def test_forecast_counts_the_current_day_by_its_elapsed_fraction():
    # Midnight on the 11th: exactly 10 days; 6:00 on the 11th: 10.25 days.
    assert forecast(D("100"), at(11)) == D("300.00")
    assert forecast(D("102.50"), at(11, 6)) == D("300.00")


def test_forecast_counts_at_least_one_day_at_the_start_of_a_month():
    # Five minutes into the month, $2 spent: a whole day's rate, not 288 × $2 per day.
    assert forecast(D("2"), at(1, 0, 5)) == D("60.00")


def test_forecast_is_never_below_spend_so_far():
    assert forecast(D("0"), at(20)) == D("0.00")
    assert forecast(D("12.345"), at(30, 23, 59)) >= D("12.345")


# --- Thresholds -------------------------------------------------------------------------


def test_crossed_thresholds_counts_reaching_a_threshold_exactly():
    assert crossed_thresholds(D("49.99"), D("100"), THRESHOLDS) == []
    assert crossed_thresholds(D("50"), D("100"), THRESHOLDS) == [50]
    assert crossed_thresholds(D("80"), D("100"), THRESHOLDS) == [50, 80]
    assert crossed_thresholds(D("250"), D("100"), THRESHOLDS) == [50, 80, 100]


def test_crossed_thresholds_are_sorted_and_include_those_above_100():
    assert crossed_thresholds(D("130"), D("100"), [150, 100, 120]) == [100, 120]


def test_no_budget_crosses_nothing():
    assert crossed_thresholds(D("1000"), None, THRESHOLDS) == []


def test_a_zero_budget_is_crossed_by_any_spend():
    assert crossed_thresholds(D("0.01"), D("0"), THRESHOLDS) == [50, 80, 100]
    assert crossed_thresholds(D("0"), D("0"), THRESHOLDS) == []


def test_percent_used():
    assert percent_used(D("33.333"), D("100")) == D("33.3")
    assert percent_used(D("5"), None) is None
    assert percent_used(D("5"), D("0")) == D("100")


# --- States -----------------------------------------------------------------------------

LATE = at(30, 23)  # little of the month left: the forecast is close to the spend
EARLY = at(5)  # four days elapsed of thirty: the forecast is 7.5 × the spend


def test_no_budget_is_state_none():
    assert budget_state(D("10"), None, THRESHOLDS, LATE) == BudgetState.NONE


def test_under_the_first_threshold_and_on_course_is_within():
    assert budget_state(D("40"), D("100"), THRESHOLDS, LATE) == BudgetState.WITHIN


def test_past_the_first_threshold_and_on_course_is_near():
    assert budget_state(D("50"), D("100"), THRESHOLDS, LATE) == BudgetState.NEAR
    assert budget_state(D("95"), D("100"), THRESHOLDS, LATE) == BudgetState.NEAR


def test_reaching_the_budget_is_over():
    assert budget_state(D("100"), D("100"), THRESHOLDS, LATE) == BudgetState.OVER
    assert budget_state(D("100"), D("100"), THRESHOLDS, EARLY) == BudgetState.OVER


def test_under_every_threshold_but_heading_past_the_budget_is_forecast():
    # $20 after 4 days of 30 → $150 forecast against $100.
    assert budget_state(D("20"), D("100"), THRESHOLDS, EARLY) == BudgetState.FORECAST


def test_forecast_to_exceed_wins_over_near():
    # $60 (past 50 %) after 4 days → $450 forecast: the stronger warning.
    assert budget_state(D("60"), D("100"), THRESHOLDS, EARLY) == BudgetState.FORECAST


def test_over_wins_over_everything():
    assert budget_state(D("101"), D("100"), THRESHOLDS, EARLY) == BudgetState.OVER


def test_without_thresholds_a_scope_is_never_near():
    assert budget_state(D("95"), D("100"), [], LATE) == BudgetState.WITHIN


def test_a_zero_budget_is_over_once_anything_is_spent():
    assert budget_state(D("0"), D("0"), THRESHOLDS, LATE) == BudgetState.WITHIN
    assert budget_state(D("0.01"), D("0"), THRESHOLDS, LATE) == BudgetState.OVER


def test_spend_total_adds_billed_and_estimated():
    spend = Spend(billed=D("10.50"), estimated=D("2.25"), estimated_days=[date(2026, 11, 26)])
    assert spend.total == D("12.75")
    assert spend.is_estimated
    assert not Spend(D("1"), D("0"), []).is_estimated


# --- Month to date from the database ----------------------------------------------------

NOW = at(26, 15)


def day(n, month=11):
    return at(n, month=month)


def cost(org, start, amount, project=None, line_item="completions"):
    return CostBucket.objects.create(
        organization=org,
        project=project,
        upstream_project_id=project.openai_project_id if project else "",
        start_time=start,
        end_time=start + timedelta(days=1),
        line_item=line_item,
        amount=D(amount),
    )


def usage(org, start, model, input_tokens, output_tokens, cached=0, project=None, key_id="key_A"):
    return UsageBucket.objects.create(
        organization=org,
        project=project,
        endpoint=Endpoint.COMPLETIONS,
        upstream_project_id=project.openai_project_id if project else "",
        upstream_key_id=key_id,
        model=model,
        start_time=start,
        end_time=start + timedelta(days=1),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_cached_tokens=cached,
        num_model_requests=1,
    )


@pytest.fixture
def prices(db):
    ModelPrice.objects.all().delete()
    ModelPrice.objects.create(
        model="gpt-test",
        effective_date=date(2026, 1, 1),
        input_per_1m=D("2"),
        cached_input_per_1m=D("0.5"),
        output_per_1m=D("8"),
    )


def test_billed_days_come_from_cost_buckets_and_days_without_them_are_estimated(org, project, prices):
    cost(org, day(24), "3.00", project)
    cost(org, day(25), "4.00", project)
    cost(org, day(25), "0.50", project, line_item="embeddings")
    # Usage on a billed day is never added on top of its cost.
    usage(org, day(25), "gpt-test", 1_000_000, 1_000_000, project=project)
    # Today has no cost row yet: 1M input (250k cached) + 0.5M output.
    usage(org, day(26), "gpt-test", 1_000_000, 500_000, cached=250_000, project=project)
    spend = month_to_date(org, project, NOW)
    assert spend.billed == D("7.50")
    # 750k × $2 + 250k × $0.5 + 500k × $8 per 1M = 1.5 + 0.125 + 4
    assert spend.estimated == D("5.625")
    assert spend.estimated_days == [date(2026, 11, 26)]
    assert spend.total == D("13.125")
    assert spend.unpriced_models == ()


def test_last_month_and_other_scopes_do_not_count(org, project, prices):
    other = Project.objects.create(organization=org, name="Other", openai_project_id="proj_Other1234567")
    cost(org, day(30, month=10), "100", project)
    cost(org, day(3), "2", project)
    cost(org, day(3), "5", other)
    assert month_to_date(org, project, NOW).billed == D("2")
    assert month_to_date(org, other, NOW).billed == D("5")
    # The organization is all its projects.
    assert month_to_date(org, None, NOW).billed == D("7")


def test_unpriced_models_are_named_and_not_guessed(org, project, prices):
    usage(org, day(26), "mystery-model", 1_000_000, 0, project=project)
    usage(org, day(26), "gpt-test-2099-01-01", 1_000_000, 0, project=project, key_id="key_B")
    spend = month_to_date(org, project, NOW)
    assert spend.unpriced_models == ("mystery-model",)
    assert spend.estimated == D("2")  # the dated snapshot is priced as its base model
    assert spend.estimated_days == [date(2026, 11, 26)]


def test_month_to_date_runs_a_constant_number_of_queries(org, project, prices, django_assert_num_queries):
    for n in range(1, 20):
        cost(org, day(n), "1", project)
        usage(org, day(n + 1), "gpt-test", 1000, 1000, project=project)
    book = PriceBook.load()
    with django_assert_num_queries(2):
        spend = month_to_date(org, project, NOW, prices=book)
    assert spend.billed == D("19")
    assert spend.estimated_days == [date(2026, 11, 20)]
