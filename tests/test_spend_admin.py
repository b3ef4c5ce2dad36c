"""Spend in the admin (issue 8 §4): month-to-date columns, the budget state badge and
filter, the project and organization charts, the key page, the usage and cost filters.

Time is frozen on 2026-11-28 12:00 UTC: 27.5 days of November's 30 have passed, so a
spend of s forecasts s × 30 / 27.5 at the end of the month (usage/budgets.py). Every
expected figure below is summed by hand from the rows the fixture writes.
"""

import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Organization, Project, Tier
from keys.models import ApiKey
from usage import charts, spend_columns
from usage.budgets import BudgetState
from usage.models import CostBucket, ModelPrice, UsageBucket

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def day(d, month=11):
    return datetime(2026, month, d, tzinfo=UTC)


def cost(org, amount, when, project=None, key=None, upstream_project_id=None, upstream_key_id="", line_item="x"):
    return CostBucket.objects.create(
        organization=org,
        project=project,
        key=key,
        start_time=when,
        end_time=when + timedelta(days=1),
        upstream_project_id=upstream_project_id
        if upstream_project_id is not None
        else getattr(project, "openai_project_id", ""),
        upstream_key_id=upstream_key_id or getattr(key, "upstream_key_id", ""),
        line_item=line_item,
        amount=Decimal(amount),
    )


def new_project(org, name, budget):
    return Project.objects.create(
        organization=org,
        name=name,
        openai_project_id=f"proj_{name}{'0' * 8}"[:20],
        tier=Tier.objects.get(name="Tier 1"),
        monthly_budget_usd=budget,
    )


@pytest.fixture
def books(org, make_key):
    """Five projects, one per state, their cost rows this month and last, and one
    unregistered project's row (the organization's, nobody's project's)."""
    org.monthly_budget_usd = Decimal("1000")
    org.alert_thresholds = "50,80,100"
    org.save()
    p = {
        BudgetState.WITHIN: new_project(org, "Within", 100),  # 20 → 20 %, forecast 21.82
        BudgetState.NEAR: new_project(org, "Near", 100),  # 60 → 60 %, forecast 65.45
        BudgetState.FORECAST: new_project(org, "Forecast", 100),  # 95 → forecast 103.64
        BudgetState.OVER: new_project(org, "Over", 100),  # 120
        BudgetState.NONE: new_project(org, "Nobudget", None),  # 5
    }
    key, _ = make_key(project=p[BudgetState.WITHIN], name="Within key", upstream_key_id="key_WithinKey00001")
    other_key, _ = make_key(project=p[BudgetState.WITHIN], name="Other key", upstream_key_id="key_OtherKey000001")
    cost(org, "12.5", day(1), p[BudgetState.WITHIN], line_item="gpt-4o-mini, input")  # the month's first instant
    cost(org, "7.5", day(20), p[BudgetState.WITHIN], key=key, line_item="gpt-4o-mini, output")
    cost(org, "500", day(31, 10), p[BudgetState.WITHIN], key=key)  # last month: not this month's spend
    cost(org, "60", day(3), p[BudgetState.NEAR])
    cost(org, "95", day(4), p[BudgetState.FORECAST])
    cost(org, "100", day(5), p[BudgetState.OVER])
    cost(org, "20", day(6), p[BudgetState.OVER], line_item="gpt-4o, input")
    cost(org, "5", day(7), p[BudgetState.NONE])
    cost(org, "7", day(8), upstream_project_id="proj_NotRegistered1", upstream_key_id="key_NotRegistered1")
    # Another organization's spend never counts here.
    elsewhere = Organization.objects.create(name="Elsewhere", slug="elsewhere")
    cost(elsewhere, "999", day(9), upstream_project_id="proj_Elsewhere00001")
    return {"org": org, "projects": p, "key": key, "other_key": other_key, "elsewhere": elsewhere}


def result_names(response):
    return [str(row) if not hasattr(row, "name") else row.name for row in response.context["cl"].result_list]


# --- the annotations ----------------------------------------------------------------------
@pytest.mark.django_db
def test_month_to_date_spend_is_this_months_billed_rows_summed_by_hand(books):
    org, p = books["org"], books["projects"]
    projects = {x.name: x.spend_mtd for x in spend_columns.with_spend(Project.objects.all(), "project", NOW)}
    assert projects == {
        "Within": Decimal("20"),  # 12.5 + 7.5; October's 500 left out
        "Near": Decimal("60"),
        "Forecast": Decimal("95"),
        "Over": Decimal("120"),
        "Nobudget": Decimal("5"),
        "Chatbot": Decimal("0"),  # no rows: 0, not None
    }
    orgs = {o.slug: o.spend_mtd for o in spend_columns.with_spend(Organization.objects.all(), "organization", NOW)}
    # 20 + 60 + 95 + 120 + 5 + the unregistered project's 7 = 307; another org's 999 elsewhere.
    assert orgs == {org.slug: Decimal("307"), "elsewhere": Decimal("999")}
    assert sum(projects.values()) == orgs[org.slug] - 7  # unregistered: the organization's, no project's
    keys = {k.name: k.spend_mtd for k in spend_columns.with_spend(ApiKey.objects.all(), "key", NOW)}
    assert keys == {"Within key": Decimal("7.5"), "Other key": Decimal("0")}
    assert p[BudgetState.WITHIN].cost_buckets.count() == 3


@pytest.mark.django_db
def test_the_month_starts_on_the_first_at_midnight_utc(books):
    org = books["org"]
    cost(org, "1000", day(1) - timedelta(microseconds=1), books["projects"][BudgetState.NEAR], line_item="late")
    org = spend_columns.with_spend(Organization.objects.filter(pk=org.pk), "organization", NOW).get()
    assert org.spend_mtd == Decimal("307")
    # On December 1st November is last month.
    assert (
        spend_columns.with_spend(Organization.objects.filter(pk=org.pk), "organization", day(1, 12)).get().spend_mtd
        == 0
    )


# --- the lists: columns, badge, filter, order, queries --------------------------------
@pytest.mark.django_db
def test_the_project_list_shows_spend_budget_percent_and_a_state_badge(admin_client, books):
    html = admin_client.get(reverse("admin:accounts_project_changelist")).content.decode()
    assert "$120.00" in html and "120.0 %" in html
    assert '<span class="state failing">Over budget</span>' in html
    assert '<span class="state warn">Forecast to exceed</span>' in html
    assert '<span class="state warn">Near budget</span>' in html
    assert '<span class="state ok">Within budget</span>' in html
    assert '<span class="state muted">No budget</span>' in html


@pytest.mark.django_db
@pytest.mark.parametrize("state", list(BudgetState))
def test_the_budget_state_filter_keeps_exactly_the_projects_in_that_state(admin_client, books, state):
    response = admin_client.get(reverse("admin:accounts_project_changelist"), {"budget_state": state.value})
    assert response.status_code == 200
    expected = {books["projects"][state].name}
    if state == BudgetState.NONE:
        expected.add("Chatbot")  # the conftest project: no budget either
    assert set(result_names(response)) == expected


@pytest.mark.django_db
def test_the_organization_list_judges_the_whole_organization(admin_client, books):
    org = books["org"]
    url = reverse("admin:accounts_organization_changelist")
    html = admin_client.get(url).content.decode()
    assert "$307.00" in html and "30.7 %" in html
    assert set(result_names(admin_client.get(url, {"budget_state": "within"}))) == {org.name}
    assert set(result_names(admin_client.get(url, {"budget_state": "none"}))) == {"Elsewhere"}
    assert result_names(admin_client.get(url, {"budget_state": "over"})) == []
    # Over once the organization's budget is below its spend.
    Organization.objects.filter(pk=org.pk).update(monthly_budget_usd=300)
    assert set(result_names(admin_client.get(url, {"budget_state": "over"}))) == {org.name}


@pytest.mark.django_db
def test_the_lists_sort_by_spend(admin_client, books):
    model_admin = admin.site._registry[Project]
    column = model_admin.list_display.index("spend_this_month") + 1  # after the action checkbox
    response = admin_client.get(reverse("admin:accounts_project_changelist"), {"o": f"-{column}"})
    assert result_names(response) == ["Over", "Forecast", "Near", "Within", "Nobudget", "Chatbot"]
    response = admin_client.get(reverse("admin:accounts_project_changelist"), {"o": f"{column}"})
    assert result_names(response)[-1] == "Over"


def list_queries(client, url, params=None):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, params or {})
    assert response.status_code == 200
    return len(ctx.captured_queries)


def grow(org, n):
    tier = Tier.objects.get(name="Tier 1")
    for i in range(Project.objects.count(), Project.objects.count() + n):
        # Each one over budget: the budget state filter finds every new row.
        other = Organization.objects.create(name=f"Grown {i}", slug=f"grown-{i}", monthly_budget_usd=10)
        project = Project.objects.create(organization=org, name=f"Grown {i}", tier=tier, monthly_budget_usd=10)
        cost(org, 20, day(10), project, line_item=f"item {i}")
        cost(other, 20, day(10), upstream_project_id=f"proj_Grown{i}")


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["organization", "project"])
@pytest.mark.parametrize("params", [{}, {"budget_state": "over"}, {"o": "-4"}])
def test_list_queries_stay_constant_from_2_to_20_rows(
    admin_client, org, project, django_assert_num_queries, model, params
):
    url = reverse(f"admin:accounts_{model}_changelist")
    grow(org, 1)  # 2 rows of each (the conftest organization and project, and one more)
    assert Project.objects.count() == 2 and Organization.objects.count() == 2
    few = list_queries(admin_client, url, params)
    # Session, user, two-factor, permissions ×2, the filters' choices, the page and its
    # counts, the session's save (projects: and their synced rate limits, prefetched); the
    # budget state filter adds its one query.
    assert few == {"organization": 11, "project": 14}[model] + (1 if "budget_state" in params else 0)
    grow(org, 18)
    assert Project.objects.count() == 20 and Organization.objects.count() == 20
    with django_assert_num_queries(few):
        admin_client.get(url, params)


# --- the pages ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_project_page_draws_its_daily_spend_against_the_budget(admin_client, books):
    project = books["projects"][BudgetState.OVER]
    html = admin_client.get(reverse("admin:accounts_project_change", args=[project.pk])).content.decode()
    assert 'class="spend-chart" role="img"' in html
    assert "Over: daily spend in November 2026" in html
    assert "budget $100.00" in html
    # The summary: the month's spend, percent, forecast and the state badge.
    assert "$120.00 of $100.00 · 120.0 % · forecast $130.91" in html
    assert '<span class="state failing">Over budget</span>' in html
    chart = html.split('class="spend-chart"')[1].split("</svg>")[0]
    assert "<script" not in chart and "http" not in chart.replace("http://www.w3.org/2000/svg", "")


@pytest.mark.django_db
def test_the_chart_series_are_billed_days_and_estimated_days(books):
    project = books["projects"][BudgetState.NEAR]
    ModelPrice.objects.create(model="gpt-4o-mini", effective_date=date(2026, 1, 1), input_per_1m=1, output_per_1m=2)
    for d, tokens in ((3, 10**6), (12, 2 * 10**6)):  # the 3rd has billed costs; the 12th has none
        UsageBucket.objects.create(
            organization=books["org"],
            project=project,
            endpoint="completions",
            start_time=day(d),
            end_time=day(d + 1),
            model="gpt-4o-mini",
            input_tokens=tokens,
            output_tokens=tokens,
            num_model_requests=1,
        )
    days = spend_columns.daily_spend(books["org"], project, NOW)
    assert [d.day for d in days] == [date(2026, 11, i) for i in range(1, 29)]
    by_day = {d.day: (d.billed, d.estimated) for d in days}
    assert by_day[date(2026, 11, 3)] == (Decimal("60"), Decimal("0"))  # billed: its usage is not added
    assert by_day[date(2026, 11, 12)] == (Decimal("0"), Decimal("6"))  # 2M in × $1 + 2M out × $2
    assert sum(d.total for d in days) == Decimal("66")


@pytest.mark.django_db
def test_the_organization_page_shows_spend_per_project_with_the_unregistered_one(admin_client, books):
    html = admin_client.get(reverse("admin:accounts_organization_change", args=[books["org"].pk])).content.decode()
    start = html.index('<svg xmlns="http://www.w3.org/2000/svg" class="spend-chart"')
    svg = html[start : html.index("</svg>", start) + 6]
    assert "proj_NotRegistered1 (unregistered): $7.00" in svg
    assert "Over: $120.00" in svg and "Within: $20.00" in svg
    assert "Elsewhere" not in svg and "999" not in svg


@pytest.mark.django_db
def test_a_keys_page_shows_its_spend_this_month_and_its_last_use(admin_client, books):
    key = books["key"]
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=day(21))
    html = admin_client.get(reverse("admin:keys_apikey_change", args=[key.pk])).content.decode()
    assert "Billed spend this month" in html
    block = html[html.index("Billed spend this month") :]
    assert "$7.50" in block[:400]  # this month's row only; October's 500 left out
    assert "Nov. 21, 2026" in html or "2026-11-21" in html
    other = books["other_key"]
    html = admin_client.get(reverse("admin:keys_apikey_change", args=[other.pk])).content.decode()
    assert "$0.00" in html[html.index("Billed spend this month") :][:400]


@pytest.mark.django_db
def test_reviewers_see_the_spend_pages_and_change_nothing(reviewer_client, books):
    project = books["projects"][BudgetState.OVER]
    for url in [
        reverse("admin:accounts_project_changelist") + "?budget_state=over",
        reverse("admin:accounts_organization_changelist") + "?budget_state=within",
        reverse("admin:accounts_project_change", args=[project.pk]),
        reverse("admin:accounts_organization_change", args=[books["org"].pk]),
        reverse("admin:keys_apikey_change", args=[books["key"].pk]),
    ]:
        response = reviewer_client.get(url)
        assert response.status_code == 200, url
    html = reviewer_client.get(reverse("admin:accounts_project_change", args=[project.pk])).content.decode()
    assert 'role="img"' in html and 'name="_save"' not in html
    response = reviewer_client.post(
        reverse("admin:accounts_project_change", args=[project.pk]),
        {"name": "Renamed", "monthly_budget_usd": "100000", "organization": books["org"].pk},
    )
    assert response.status_code == 403
    project.refresh_from_db()
    assert (project.name, project.monthly_budget_usd) == ("Over", Decimal("100"))


@pytest.mark.django_db
def test_anonymous_gets_the_login_page(client, books):
    response = client.get(reverse("admin:accounts_project_change", args=[books["projects"][BudgetState.OVER].pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]


# --- the SVG builder ---------------------------------------------------------------------------
HOSTILE = '</title><script>alert("x")</script>&<svg onload=1>'


def parse(svg):
    root = ET.fromstring(str(svg))  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    title = root.find(f"{SVG}title")
    assert root[0] is title and root.get("aria-labelledby").split()[0] == title.get("id")
    return root, title


def test_the_daily_chart_is_accessible_and_escapes_every_text():
    days = [charts.DaySpend(date(2026, 11, d), Decimal(d), Decimal(1) if d % 2 else Decimal(0)) for d in range(1, 11)]
    svg = charts.daily_spend_chart(days, Decimal("80"), HOSTILE)
    root, title = parse(svg)
    assert title.text == HOSTILE  # shown as text, never markup
    assert "<script" not in svg and "onload=1>" not in svg
    assert not [el for el in root.iter() if el.tag.endswith("script") or any(a.startswith("on") for a in el.attrib)]
    desc = root.find(f"{SVG}desc").text
    assert "$55.00 billed and $5.00 estimated, $60.00 in all; budget $80.00" in desc
    assert len(root.findall(f".//{SVG}polyline")) == 1  # cumulative
    bars = [g for g in root.findall(f"{SVG}g")]
    assert len(bars) == 10 and bars[0].find(f"{SVG}title").text == "2026-11-01: $1.00 billed, $1.00 estimated"


def test_the_totals_chart_escapes_names_and_sorts_largest_first():
    svg = charts.totals_chart(
        [charts.Total("small", Decimal(1)), charts.Total(HOSTILE, Decimal(5), Decimal(2))], "Per project <b>"
    )
    root, title = parse(svg)
    assert title.text == "Per project <b>"
    assert "<script" not in svg and "<b>" not in svg
    names = [g.find(f"{SVG}title").text for g in root.findall(f"{SVG}g")]
    assert names == [f"{HOSTILE}: $5.00 billed, $2.00 estimated", "small: $1.00 billed, $0.00 estimated"]


def test_an_empty_month_and_no_budget_still_draw():
    root, _ = parse(charts.daily_spend_chart([], None, "Nothing yet"))
    assert "budget not set" in root.find(f"{SVG}desc").text
    root, _ = parse(charts.totals_chart([], "Nothing"))
    assert root.find(f"{SVG}desc").text == "No spend."


# --- the usage and cost lists -------------------------------------------------------------------
def usage(org, n_keys, project=None, first=0):
    UsageBucket.objects.bulk_create(
        (
            UsageBucket(
                organization=org,
                project=project if i % 2 == 0 else None,
                endpoint="completions",
                start_time=day(1 + i % 27),
                end_time=day(2 + i % 27),
                upstream_project_id=project.openai_project_id if i % 2 == 0 else f"proj_Unreg{i:06d}",
                upstream_key_id=f"key_Bulk{i:08d}",
                model=f"model-{i % 3}",
                num_model_requests=1,
            )
            for i in range(first, first + n_keys)
        ),
        batch_size=5000,
    )


@pytest.mark.django_db
def test_the_usage_list_filters_by_project_key_model_and_registration(admin_client, org, project, make_key):
    key, _ = make_key(name="Bulk key", upstream_key_id="key_Bulk00000002")
    usage(org, 40, project)
    UsageBucket.objects.filter(upstream_key_id="key_Bulk00000002").update(key=key)
    url = reverse("admin:usage_usagebucket_changelist")

    def count(**params):
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return response.context["cl"].result_count

    assert count() == 40
    assert count(project="Chatbot") == 20  # by name
    assert count(project=project.openai_project_id) == 20  # by upstream id
    assert count(project="proj_Unreg000001") == 1
    assert count(key="key_Bulk00000007") == 1
    assert count(key="Bulk key") == 1 and count(key=key.hint) == 1
    assert count(model="model-1") == 13
    assert count(registered="no") == 39  # every upstream key but one is unknown here
    assert count(registered="no", project="Chatbot") == 19
    assert count(model="model-1", project="Chatbot") == len([i for i in range(0, 40, 2) if i % 3 == 1])
    html = admin_client.get(url, {"project": "Chatbot", "model": "model-0"}).content.decode()
    # The typed filter keeps the page's other filters as hidden fields of its form.
    assert '<input type="hidden" name="model" value="model-0">' in html
    assert 'name="project" value="Chatbot"' in html


@pytest.mark.django_db
def test_the_cost_list_filters_by_line_item_and_unregistered(admin_client, books):
    url = reverse("admin:usage_costbucket_changelist")
    response = admin_client.get(url, {"line_item": "gpt-4o, input"})
    assert [str(r.amount) for r in response.context["cl"].result_list] == ["20.0000000000"]
    response = admin_client.get(url, {"registered": "no"})
    assert {r.upstream_project_id for r in response.context["cl"].result_list} == {
        "proj_NotRegistered1",
        "proj_Elsewhere00001",
    }
    assert admin_client.get(url, {"key": "key_WithinKey00001"}).context["cl"].result_count == 2


def costs(org, n, project=None, first=0):
    CostBucket.objects.bulk_create(
        (
            CostBucket(
                organization=org,
                project=project if i % 2 == 0 else None,
                start_time=day(1 + i % 27),
                end_time=day(2 + i % 27),
                upstream_project_id=project.openai_project_id if i % 2 == 0 else f"proj_Unreg{i:06d}",
                upstream_key_id=f"key_Bulk{i:08d}",
                line_item=f"item {i % 4}",
                amount=1,
            )
            for i in range(first, first + n)
        ),
        batch_size=5000,
    )


BOUNDED = [
    {},
    {"registered": "no", "start_time__year": "2026"},
    {"project": "Chatbot", "start_time__year": "2026", "start_time__month": "11"},
    {"key": "key_Bulk00000003"},
    {"organization__id__exact": "ORG", "o": "1"},
]


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["usagebucket", "costbucket"])
def test_the_usage_lists_are_query_bounded_at_50000_rows_and_list_no_key_or_project(admin_client, org, project, model):
    url = reverse(f"admin:usage_{model}_changelist")
    add = usage if model == "usagebucket" else costs
    params = [{k: (org.pk if v == "ORG" else v) for k, v in p.items()} for p in BOUNDED]
    add(org, 10, project)
    few = [list_queries(admin_client, url, p) for p in params]
    add(org, 49_990, project, first=10)
    assert admin.site._registry[UsageBucket if model == "usagebucket" else CostBucket].model.objects.count() == 50_000
    assert [list_queries(admin_client, url, p) for p in params] == few
    html = admin_client.get(url).content.decode()
    filters = html.split('id="changelist-filter"')[1]
    assert "key_Bulk00049999" not in filters and "proj_Unreg049999" not in filters  # nothing listed per row
    assert filters.count("<li") < 60 and html.count("<option") < 50


@pytest.mark.django_db
def test_an_organization_without_spend_this_month_says_so_instead_of_an_empty_chart(admin_client, org):
    cost(org, "50", day(31, 10), upstream_project_id="proj_LastMonth0001")  # last month only
    html = admin_client.get(reverse("admin:accounts_organization_change", args=[org.pk])).content.decode()
    assert "No billed spend this month yet." in html and 'class="spend-chart"' not in html
