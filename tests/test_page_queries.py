"""Every page the page benchmark times (bench/pages.py) costs the same SQL queries with 3
or with 25 keys in each state, for an admin and for a security reviewer.

The world has keys in every state a key-list filter selects (revoked, expired, due soon,
overdue, failing, rate limited, never probed, leaked, unused, usage unknown, deleted
upstream, owner left, orphaned, service-account, Azure and admin keys), projects in
every budget state, and per key probe results, usage and cost rows and an audit event.
A page whose count grows with the rows (a column or filter querying per row) fails here;
times are the benchmark's business (docs/PERFORMANCE.md), never a test's.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import AuditEvent, Environment, Organization, Project, Tier
from bench.pages import ROLES, pages
from console.upstream import Outcome
from keys import formats
from keys.models import ApiKey, Kind, ProbeResult, Provider
from usage import budgets
from usage.models import BudgetAlert, CostBucket, Endpoint, UsageBucket

from .conftest import join

AMOUNT = Decimal("0.50")
# A 1 % threshold first: a budget can be "near" (past it, forecast within) any day of the month.
THRESHOLDS = "1,50,80,100"
BUDGET_STATES = ["over", "forecast", "near", "within", "none"]


def states(now):
    """Field values of one key in each state the key list's filters tell apart."""
    old, recent = now - timedelta(days=400), now - timedelta(days=5)
    return [
        {"issued_at": recent, "last_probe_outcome": Outcome.OK, "last_used_at": recent},  # compliant
        {"issued_at": now - timedelta(days=85)},  # due soon (90-day policy)
        {"issued_at": old},  # overdue
        {"revoked_at": recent},
        {"expires_at": now - timedelta(days=1)},
        {"last_probe_outcome": Outcome.INVALID_KEY, "consecutive_failures": 3},
        {"last_probe_outcome": Outcome.RATE_LIMITED},
        {"last_probe_outcome": ""},  # never probed
        {"leaked_at": recent},
        {"last_used_at": now - timedelta(days=60)},  # unused
        {"last_used_at": None},  # usage unknown
        {"deleted_upstream_at": recent},
        {"owner_left_at": recent},
        {"kind": Kind.SERVICE_ACCOUNT},
        {"provider": Provider.AZURE, "azure_endpoint": "https://bench-resource.openai.azure.com"},
    ]


class World:
    """Organizations, projects and keys that `grow` adds to, a state at a time."""

    def __init__(self):
        self.now = timezone.now()
        tiers = list(Tier.objects.order_by("position"))
        self.orgs = [
            Organization.objects.create(
                name=f"Org {o}", slug=f"org-{o}", openai_org_id=f"org-Pages{o:07d}", alert_thresholds=THRESHOLDS
            )
            for o in range(len(BUDGET_STATES))
        ]
        self.projects = [
            Project.objects.create(
                organization=self.orgs[p % len(self.orgs)],
                name=f"project {p}",
                openai_project_id=f"proj_pages{p:06d}",
                environment=Environment.values[p % len(Environment.values)],
                tier=tiers[p % len(tiers)],
                observed_rpm=tiers[p % len(tiers)].requests_per_minute + (1 if p == 1 else 0),  # a tier mismatch
                archived_at=self.now - timedelta(days=1) if p == 4 else None,  # orphaned keys
            )
            for p in range(2 * len(BUDGET_STATES))
        ]
        for org in self.orgs:
            make_key(org, None, "admin key " + org.slug, kind=Kind.ADMIN, fmt=formats.ADMIN)
        self.n = 0

    def grow(self, per_state):
        """Add keys until each state has `per_state`, each with 2 probe results, a usage and
        a cost row and an audit event; then re-set the budgets against the new spend."""
        target = per_state * len(states(self.now))
        results, usage, costs, events = [], [], [], []
        while self.n < target:
            i, self.n = self.n, self.n + 1
            fields = {"last_probe_outcome": Outcome.OK, "last_used_at": self.now, "issued_at": self.now}
            fields.update(states(self.now)[i % len(states(self.now))])
            project = self.projects[i % len(self.projects)]
            key = make_key(project.organization, project, f"k{i:06d}", **fields)
            for h in range(2):
                results.append(
                    ProbeResult(
                        key=key,
                        slot=i * 10 + h,
                        started_at=self.now - timedelta(hours=h),
                        outcome=key.last_probe_outcome or Outcome.OK,
                    )
                )
            day = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
            common = {
                "organization": project.organization,
                "project": project,
                "key": key,
                "start_time": day,
                "end_time": day + timedelta(days=1),
                "upstream_project_id": project.openai_project_id,
                "upstream_key_id": f"key_pages{i:08d}",
            }
            if i % 5 == 0:  # an upstream key not registered here
                common = {**common, "key": None, "upstream_key_id": f"key_unknown{i:08d}"}
            usage.append(
                UsageBucket(endpoint=Endpoint.COMPLETIONS, model="gpt-4o-mini", num_model_requests=3, **common)
            )
            costs.append(CostBucket(line_item="gpt-4o-mini, input", amount=AMOUNT, **common))
            events.append(
                AuditEvent(
                    actor_label="admin",
                    action=["key.created", "key.updated", "key.revoked"][i % 3],
                    target_type="key",
                    target_id=str(key.pk),
                    target_repr=str(key),
                    details={"hint": key.hint},
                )
            )
        ProbeResult.objects.bulk_create(results)
        UsageBucket.objects.bulk_create(usage)
        CostBucket.objects.bulk_create(costs)
        AuditEvent.objects.bulk_create(events)
        for p, project in enumerate(self.projects):
            state = BUDGET_STATES[p % len(BUDGET_STATES)]
            spend = AMOUNT * CostBucket.objects.filter(project=project).count()
            project.monthly_budget_usd = budget_for(state, spend, self.now)
            project.save(update_fields=["monthly_budget_usd"])
            if state == "over":
                BudgetAlert.objects.get_or_create(
                    organization=project.organization,
                    project=project,
                    threshold=100,
                    month=self.now.date().replace(day=1),
                    defaults={"spend_usd": spend, "budget_usd": project.monthly_budget_usd},
                )
        for org, state in zip(self.orgs, BUDGET_STATES, strict=True):
            spend = AMOUNT * CostBucket.objects.filter(organization=org).count()
            org.monthly_budget_usd = budget_for(state, spend, self.now)
            org.save(update_fields=["monthly_budget_usd"])

    def ids(self):
        return {"org": self.orgs[0].pk, "project": self.projects[0].pk, "key": ApiKey.objects.get(name="k000001").pk}


def budget_for(state, spend, now):
    """A monthly budget that puts `spend` (billed today) in budget `state` (usage/budgets.py)
    under THRESHOLDS. On a month's last day nothing can be forecast to exceed: the forecast
    is the spend, and that budget reads "over"."""
    forecast = budgets.forecast(spend, now)
    budget = {
        "over": spend / 2,
        "forecast": (spend + forecast) / 2,
        "near": forecast * Decimal("1.05"),  # spend ≥ 1/31 of it: past the 1 % threshold
        "within": spend * 200,  # under 1 %, and no forecast reaches it
    }.get(state)
    return None if budget is None else budget.quantize(Decimal("0.01"))


def make_key(organization, project, name, kind=Kind.PROJECT, fmt=None, **fields):
    provider = fields.get("provider", Provider.OPENAI)
    if fmt is None:
        fmt = {Kind.SERVICE_ACCOUNT: formats.SERVICE_ACCOUNT}.get(fields.get("kind"), formats.PROJECT)
        fmt = formats.AZURE if provider == Provider.AZURE else fmt
    key = ApiKey(organization=organization, project=project, name=name, kind=fields.pop("kind", kind), **fields)
    key.set_secret(formats.generate(fmt))
    key.save()
    return key


def query_counts(client, world):
    """{label: (status, queries)} for every page, after one warm-up render each."""
    counts = {}
    for page in pages(world.ids()):
        client.get(page.path)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(page.path)
            if response.streaming:
                b"".join(response.streaming_content)
        counts[page.label] = (response.status_code, len(queries))
    return counts


@pytest.fixture
def users(db):
    admin = User.objects.create_superuser("root", "root@example.com", "pw-root-123456")
    reviewer = User.objects.create_user("rita", "rita@example.com", "pw-rita-123456", is_staff=True)
    join(reviewer, "Security reviewers")
    return {"admin": admin, "reviewer": reviewer}


@pytest.mark.parametrize("role", ROLES)
def test_every_benchmarked_page_costs_the_same_queries_at_3_and_25_keys_per_state(client, users, role):
    client.force_login(users[role])
    world = World()
    world.grow(3)
    small = query_counts(client, world)
    world.grow(25)
    large = query_counts(client, world)

    expected = {p.label: 200 if role == "admin" else p.reviewer_status for p in pages(world.ids())}
    assert {label: status for label, (status, _) in large.items()} == expected
    assert {label: status for label, (status, _) in small.items()} == expected
    grew = {label: (small[label][1], large[label][1]) for label in small if small[label][1] != large[label][1]}
    assert grew == {}, f"query counts that grew with the data (3 → 25 keys per state): {grew}"


def test_the_world_has_rows_in_every_state_the_filters_select(client, users):
    """The counts above mean something only if the filtered pages list rows."""
    client.force_login(users["admin"])
    world = World()
    world.grow(3)
    empty = []
    for page in pages(world.ids()):
        if "?" not in page.path or "format=" in page.path or "export" in page.path:
            continue
        response = client.get(page.path)
        cl = response.context.get("cl") if response.context else None
        if cl is not None and cl.result_count == 0:
            empty.append(page.label)
    if budgets.forecast(1, world.now) == 1:  # a month's last day: see budget_for
        empty = [label for label in empty if "forecast" not in label]
    assert empty == [], empty


def test_the_project_page_shows_its_keys_20_at_a_time(admin_client, project, make_key):
    for i in range(30):
        make_key(name=f"key {i:02d}")
    url = f"/admin/accounts/project/{project.pk}/change/"
    html = admin_client.get(url).content.decode()
    assert 'name="api_keys-19-name"' in html and 'value="key 19"' in html
    assert 'value="key 20"' not in html
    assert "1–20 of 30" in html and "api_keys_page=2" in html
    second = admin_client.get(url, {"api_keys_page": "2"}).content.decode()
    assert "21–30 of 30" in second
    assert 'value="key 29"' in second and 'value="key 00"' not in second


def test_a_key_edited_on_the_second_page_of_the_project_page_is_saved(admin_client, project, make_key):
    keys = [make_key(name=f"key {i:02d}", owner="a")[0] for i in range(22)]
    url = f"/admin/accounts/project/{project.pk}/change/?api_keys_page=2"
    page = admin_client.get(url)
    data = {
        "organization": project.organization_id,
        "name": project.name,
        "openai_project_id": project.openai_project_id,
        "environment": project.environment,
        "tier": project.tier_id,
        "api_keys-TOTAL_FORMS": "2",
        "api_keys-INITIAL_FORMS": "2",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
    }
    assert "21–22 of 22" in page.content.decode()
    for n, key in enumerate(keys[20:]):
        data.update(
            {
                f"api_keys-{n}-id": key.pk,
                f"api_keys-{n}-project": project.pk,
                f"api_keys-{n}-name": key.name,
                f"api_keys-{n}-kind": key.kind,
                f"api_keys-{n}-provider": key.provider,
                f"api_keys-{n}-secret": "",
                f"api_keys-{n}-owner": "b" if n == 1 else "a",
                f"api_keys-{n}-expires_at_0": "",
                f"api_keys-{n}-expires_at_1": "",
            }
        )
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["errors"] if response.context else response
    assert [k.owner for k in ApiKey.objects.order_by("name")] == ["a"] * 21 + ["b"]


@pytest.mark.django_db
@pytest.mark.parametrize("outcome", [None, Outcome.INVALID_KEY])
def test_the_date_hierarchy_by_index_probes_lists_what_distinct_lists(project, make_key, outcome):
    """console/dates.py against Django's own DISTINCT date_trunc, for years, months and
    days, with and without a filter."""
    from django.db.models import QuerySet

    key, _ = make_key()
    start = timezone.now() - timedelta(days=800)
    for n, days in enumerate([0, 1, 1, 3, 40, 41, 400, 790, 799]):
        ProbeResult.objects.create(
            key=key,
            slot=n,
            started_at=start + timedelta(days=days, hours=n),
            outcome=Outcome.INVALID_KEY if n % 2 else Outcome.OK,
        )
    rows = ProbeResult.objects.all() if outcome is None else ProbeResult.objects.filter(outcome=outcome)
    for kind in ("year", "month", "day"):
        for order in ("ASC", "DESC"):
            expected = list(QuerySet.datetimes(rows, "started_at", kind, order))
            assert list(rows.datetimes("started_at", kind, order)) == expected, (kind, order)
    narrow = rows.filter(started_at__lt=start + timedelta(days=45))  # 46 days: by index probes
    assert narrow.datetimes("started_at", "day") == list(QuerySet.datetimes(narrow, "started_at", "day"))
    assert ProbeResult.objects.filter(outcome="nothing").datetimes("started_at", "day") == []
