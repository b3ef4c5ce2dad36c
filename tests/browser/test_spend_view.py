"""The budget view in a real browser: the project list with this month's spend, % used
and state badges, and a project's page with its daily spend chart (inline SVG) against
its budget — drawn under the Content-Security-Policy without a violation. Writes
docs/screenshots/spend-projects.png and spend-project.png, which the README shows.

Debian's Chromium through Playwright, as tests/browser/test_admin_flow.py starts it.
"""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Organization, Project, Tier
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, page, shoot  # noqa: F401
from tests.browser.test_csp import PolicyWatch
from usage.budgets import month_start
from usage.models import CostBucket, ModelPrice, UsageBucket

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# name, budget, USD per day (the last two days have usage but no costs yet): late in a
# month these are over, forecast to exceed, near and within their budgets, and no budget.
PROJECTS = [
    ("Support chatbot", Decimal("1100"), Decimal("38.40")),
    ("Search ranking", Decimal("700"), Decimal("21.75")),
    ("Batch summaries", Decimal("250"), Decimal("4.10")),
    ("Data labelling", Decimal("300"), Decimal("14.20")),
    ("Internal tools", None, Decimal("2.35")),
]


def seed_month():
    """An organization whose projects spend steadily through this month (UTC)."""
    now = timezone.now()
    start = month_start(now)
    days = (now - start).days + 1
    org = Organization.objects.create(
        name="Acme Corp", slug="acme-corp", openai_org_id="org-AcmeSpend0001", monthly_budget_usd=Decimal("2000")
    )
    ModelPrice.objects.get_or_create(
        model="gpt-4o-mini",
        effective_date=date(2024, 7, 18),
        defaults={"input_per_1m": Decimal("0.15"), "output_per_1m": Decimal("0.60"), "source": "browser test"},
    )
    tier = Tier.objects.get(name="Tier 2")
    for n, (name, budget, per_day) in enumerate(PROJECTS):
        project = Project.objects.create(
            organization=org,
            name=name,
            openai_project_id=f"proj_Spend{n:08d}",
            tier=tier,
            monthly_budget_usd=budget,
        )
        for d in range(days):
            when = start + timedelta(days=d)
            if d >= days - 2:  # the Costs API lags: these days are estimated from usage
                UsageBucket.objects.create(
                    organization=org,
                    project=project,
                    endpoint="completions",
                    start_time=when,
                    end_time=when + timedelta(days=1),
                    upstream_project_id=project.openai_project_id,
                    model="gpt-4o-mini",
                    input_tokens=int(per_day * 3_000_000),
                    output_tokens=int(per_day * 900_000),
                    num_model_requests=1000,
                )
                continue
            wobble = Decimal(1) + Decimal((d * 7 + n * 3) % 9 - 4) / 20
            CostBucket.objects.create(
                organization=org,
                project=project,
                start_time=when,
                end_time=when + timedelta(days=1),
                upstream_project_id=project.openai_project_id,
                line_item="gpt-4o-mini, input",
                amount=(per_day * wobble).quantize(Decimal("0.01")),
            )
    CostBucket.objects.create(
        organization=org,
        start_time=start,
        end_time=start + timedelta(days=1),
        upstream_project_id="proj_NotRegisteredHere",
        line_item="gpt-4o, input",
        amount=Decimal("12.00"),
    )
    return org


def test_the_budget_view_shows_spend_states_and_the_chart(page, live_server, console_admin):  # noqa: F811
    org = seed_month()
    watch = PolicyWatch(page)
    log_in(page, live_server, "carol", PASSWORD)

    watch.visit(f"{live_server.url}/admin/accounts/project/?organization__id__exact={org.pk}")
    badges = page.locator("#result_list span.state").all_inner_texts()
    assert len(badges) == len(PROJECTS) and "No budget" in badges
    assert page.locator("#result_list").get_by_text("%").count() >= 3
    page.click("#toggle-nav-sidebar")  # room for every column in the picture
    shoot(page, "spend-projects")

    project = Project.objects.get(name="Support chatbot")
    watch.visit(f"{live_server.url}/admin/accounts/project/{project.pk}/change/")
    chart = page.locator("svg.spend-chart")
    assert chart.count() == 1 and chart.is_visible()
    assert "daily spend" in chart.locator("title").first.text_content()
    box = chart.bounding_box()
    assert box["width"] > 500 and box["height"] > 200
    chart.scroll_into_view_if_needed()
    shoot(page, "spend-project")

    watch.visit(f"{live_server.url}/admin/accounts/organization/{org.pk}/change/")
    assert "proj_NotRegisteredHere (unregistered)" in page.locator("svg.spend-chart").inner_html()
    assert watch.found == []
