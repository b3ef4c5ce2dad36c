"""The admin index as a dashboard (console/dashboard.py and the apps' dashboard panels).

Each count is checked against hand-built data, and each link is followed: the list it
opens shows exactly the counted rows. The page runs the same number of queries at 5 and
at 60 keys, shows its charts as accessible SVG, is read-only for reviewers, sends
anonymous users to the login page, and never shows a secret.
"""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from accounts import heartbeat
from accounts.models import AuditEvent, Organization, Project, Tier
from console import dashboard
from keys.dashboard import deferrals
from keys.models import ApiKey, Circuit, CircuitState, ProbeResult
from sync.models import SyncState, UpstreamKey
from usage.models import CostBucket, IngestState

from .test_canary import assert_no_canary

pytestmark = pytest.mark.django_db

INDEX = "/admin/"
# A fixed mid-month moment, so budget forecasts do not depend on the day the suite runs.
MID_MONTH = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def attention(content):
    """{data-attention slug: (count, href)} from the dashboard's HTML."""
    found = {}
    for slug, href, count in re.findall(
        r'data-attention="([^"]+)">\s*<a href="([^"]+)"><span class="count">(\d+)</span>', content
    ):
        found[slug] = (int(count), href.replace("&amp;", "&"))
    return found


def listed(client, href):
    """The primary keys the changelist at `href` shows (all pages: its result count)."""
    response = client.get(href)
    assert response.status_code == 200, (href, response.status_code)
    assert "?e=1" not in response.get("Location", ""), href
    changelist = response.context["cl"]
    assert changelist.result_count == len(changelist.result_list), "the test data fits one page"
    return {obj.pk for obj in changelist.result_list}


@pytest.fixture
def keys_world(make_key, project):
    """One key per state the dashboard counts, plus keys that must not count."""
    now = timezone.now()
    recent = now - timedelta(days=1)
    made = {
        "healthy": make_key(name="healthy", issued_at=recent, last_used_at=recent, last_probe_outcome="ok"),
        "failing": make_key(
            name="failing", issued_at=recent, last_probe_outcome="server_error", consecutive_failures=3
        ),
        "invalid": make_key(name="invalid", issued_at=recent, last_probe_outcome="invalid_key", consecutive_failures=1),
        # Revoked: never failing, whatever its last probe said.
        "revoked": make_key(
            name="revoked",
            issued_at=recent,
            revoked_at=recent,
            last_probe_outcome="invalid_key",
            consecutive_failures=9,
        ),
        # Deleted upstream: expected to fail, so not failing; counted as deleted upstream.
        "deleted": make_key(
            name="deleted", issued_at=recent, deleted_upstream_at=recent, last_probe_outcome="invalid_key"
        ),
        # Revoked here after it was deleted upstream: settled, not counted as deleted upstream.
        "settled": make_key(
            name="settled", issued_at=recent, revoked_at=recent, deleted_upstream_at=recent, last_used_at=recent
        ),
        "overdue": make_key(name="overdue", issued_at=now - timedelta(days=100)),
        "due_soon": make_key(name="due soon", issued_at=now - timedelta(days=85)),
        # Expired and past its rotation date: shown as expired, not overdue.
        "expired": make_key(name="expired", issued_at=now - timedelta(days=100), expires_at=recent),
        "unused": make_key(name="unused", issued_at=recent, last_used_at=now - timedelta(days=60)),
        "leaked": make_key(name="leaked", issued_at=recent, leaked_at=recent),
    }
    return {name: key for name, (key, _) in made.items()}


def test_key_counts_and_links_show_exactly_those_keys(admin_client, keys_world):
    content = admin_client.get(INDEX).content.decode()
    counts = attention(content)
    expected = {
        "keys-failing": {"failing", "invalid"},
        "rotation-overdue": {"overdue"},
        "rotation-due-soon": {"due_soon"},
        "keys-expired": {"expired"},
        "keys-unused": {"unused"},
        "keys-leaked": {"leaked"},
        "keys-deleted-upstream": {"deleted"},
    }
    for slug, names in expected.items():
        count, href = counts[slug]
        assert count == len(names), slug
        assert listed(admin_client, href) == {keys_world[n].pk for n in names}, slug


def test_zero_counts_are_quiet_and_others_prominent(admin_client, keys_world):
    content = admin_client.get(INDEX).content.decode()
    assert re.search(r'<li class="alert" data-attention="keys-failing">', content)
    assert re.search(r'<li class="quiet" data-attention="circuits-open">', content)
    assert re.search(r'<li class="quiet" data-attention="projects-over-budget">', content)


def test_open_circuits_with_host_and_since(admin_client):
    opened = timezone.now() - timedelta(minutes=7)
    open_one = Circuit.objects.create(
        host="api.broken.example", state=CircuitState.OPEN, opened_at=opened, open_until=opened + timedelta(hours=1)
    )
    Circuit.objects.create(host="api.fine.example", state=CircuitState.CLOSED)
    Circuit.objects.create(host="api.trying.example", state=CircuitState.HALF_OPEN)
    content = admin_client.get(INDEX).content.decode()
    count, href = attention(content)["circuits-open"]
    assert count == 1
    assert f"api.broken.example since {opened:%Y-%m-%d %H:%M:%S}" in content
    assert "api.fine.example" not in content
    assert listed(admin_client, href) == {open_one.pk}


def test_unmanaged_upstream_keys(admin_client, org, make_key):
    key, _ = make_key(name="registered", upstream_key_id="key_registered01")
    now = timezone.now()
    rows = [
        UpstreamKey.objects.create(organization=org, upstream_id="key_unmanaged01", kind="project"),
        UpstreamKey.objects.create(organization=org, upstream_id="key_unmanaged02", kind="service_account"),
    ]
    UpstreamKey.objects.create(organization=org, upstream_id="key_registered01", kind="project", key=key)
    UpstreamKey.objects.create(organization=org, upstream_id="key_gone000001", kind="project", gone_at=now)
    count, href = attention(admin_client.get(INDEX).content.decode())["unmanaged-upstream-keys"]
    assert count == 2
    assert listed(admin_client, href) == {r.pk for r in rows}


def budget_project(org, name, budget, spent, now):
    project = Project.objects.create(
        organization=org, name=name, openai_project_id=f"proj_{name}00000001", monthly_budget_usd=budget
    )
    if spent:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        CostBucket.objects.create(
            organization=org,
            project=project,
            upstream_project_id=project.openai_project_id,
            start_time=start,
            end_time=start + timedelta(days=1),
            amount=spent,
        )
    return project


def test_projects_over_budget_and_forecast_to_exceed(admin_client, org):
    with time_machine.travel(MID_MONTH, tick=True):
        now = timezone.now()
        over = budget_project(org, "over", Decimal(100), Decimal(150), now)
        # $60 in 9.5 days heads for ~$189 by the 30th: forecast over a $100 budget.
        forecast = budget_project(org, "forecast", Decimal(100), Decimal(60), now)
        budget_project(org, "within", Decimal(1000), Decimal(10), now)
        budget_project(org, "nobudget", None, Decimal(500), now)
        # Last month's spend does not count.
        old = budget_project(org, "lastmonth", Decimal(100), None, now)
        CostBucket.objects.create(
            organization=org,
            project=old,
            upstream_project_id=old.openai_project_id,
            start_time=now - timedelta(days=40),
            end_time=now - timedelta(days=39),
            amount=Decimal(1000),
        )
        content = admin_client.get(INDEX).content.decode()
        counts = attention(content)
        assert counts["projects-over-budget"][0] == 1
        assert counts["projects-forecast-to-exceed"][0] == 1
        assert listed(admin_client, counts["projects-over-budget"][1]) == {over.pk}
        assert listed(admin_client, counts["projects-forecast-to-exceed"][1]) == {forecast.pk}
        assert "Billed spend against budget per project, November 2026" in content


def test_the_dashboards_month_spend_is_the_project_lists(org):
    """One pass over the month's cost buckets gives each project what the project list's
    `with_spend` column gives it, and each day every row of the day, unregistered included."""
    from usage.dashboard import month_costs
    from usage.spend_columns import with_spend

    with time_machine.travel(MID_MONTH, tick=True):
        now = timezone.now()
        a = budget_project(org, "a", Decimal(100), Decimal("12.5"), now)
        b = budget_project(org, "b", None, Decimal(7), now)
        budget_project(org, "lastmonth-only", Decimal(100), None, now)
        for project, days_ago, amount in ((a, 1, "3.25"), (b, 2, "1"), (None, 1, "40"), (a, 45, "999")):
            CostBucket.objects.create(
                organization=org,
                project=project,
                upstream_project_id=project.openai_project_id if project else "proj_unregistered",
                start_time=now - timedelta(days=days_ago),
                end_time=now - timedelta(days=days_ago - 1),
                amount=Decimal(amount),
            )
        by_project, by_day = month_costs(now)
        listed_spend = dict(with_spend(Project.objects.all(), "project", now).values_list("pk", "spend_mtd"))
        assert {pk: by_project.get(pk, Decimal(0)) for pk in listed_spend} == listed_spend
        assert by_project[a.pk] == Decimal("15.75")
        month = CostBucket.objects.filter(start_time__gte=now.replace(day=1, hour=0, minute=0, second=0))
        assert sum(by_day.values()) == sum(c.amount for c in month)


def test_tier_mismatches(admin_client, org, project):
    tier = Tier.objects.get(name="Tier 1")
    project.observed_rpm = tier.requests_per_minute + 1
    project.save()
    Project.objects.create(
        organization=org,
        name="Agrees",
        openai_project_id="proj_Agrees000001",
        tier=tier,
        observed_rpm=tier.requests_per_minute,
    )
    Project.objects.create(organization=org, name="Unknown", openai_project_id="proj_Unknown00001", tier=tier)
    count, href = attention(admin_client.get(INDEX).content.decode())["tier-mismatches"]
    assert count == 1
    # No tier-mismatch filter exists: the link is the project list, which shows the mismatch.
    assert href == "/admin/accounts/project/"
    assert "says" in admin_client.get(href).content.decode()


def test_deferrals_rule():
    # Free-like tier: 3 RPM × 0.1 share → at least one probe a minute.
    assert deferrals(5, 3, 0.1, 3600) == (1, 4, 5, False)
    assert deferrals(1, 3, 0.1, 3600) is None
    # 500 RPM (the default when nothing is known) × 0.1 → 50 a minute.
    assert deferrals(50, None, 0.1, 3600) is None
    assert deferrals(120, None, 0.1, 3600) == (50, 70, 3, False)
    # A round longer than the probe interval is said so.
    assert deferrals(200, 3, 0.1, 3600)[3] is True


def test_keys_deferred_by_the_probe_budget_say_why(admin_client, org, make_key):
    free = Tier.objects.get(name="Free")
    assert free.requests_per_minute == 3
    small = Project.objects.create(organization=org, name="Small", openai_project_id="proj_Small0000001", tier=free)
    for _ in range(3):
        make_key(project=small)
    make_key(project=small, revoked_at=timezone.now())  # revoked keys are not probed
    content = admin_client.get(INDEX).content.decode()
    assert "Acme / Small: 3 active keys; Free tier at 3 RPM × 0.1 share allows 1 probe(s) a minute" in content
    assert "up to 2 wait each sweep" in content
    assert attention(content)["keys-deferred-by-the-probe-budget-per-sweep"][0] == 2


def test_background_work(admin_client, org, make_key):
    now = timezone.now()
    heartbeat.record_beat(now - timedelta(seconds=30), sweep_seconds=1.25)
    key, _ = make_key()
    ProbeResult.objects.create(key=key, slot=1, started_at=now - timedelta(minutes=5), outcome="ok")
    ProbeResult.objects.create(key=key, slot=2, started_at=now - timedelta(minutes=3), outcome="invalid_key")
    ProbeResult.objects.create(key=key, slot=3, started_at=now - timedelta(hours=3), outcome="timeout")
    IngestState.objects.create(
        organization=org,
        last_attempt_at=now,
        last_success_at=now - timedelta(hours=1),
        last_outcome="rate_limited",
        last_error="429 from the Costs API",
        consecutive_failures=2,
        last_duration_ms=3400,
        last_counts={"buckets": 12, "results": 1500, "created": 20, "updated": 3, "unchanged": 1477},
    )
    SyncState.objects.create(
        organization=org,
        last_attempt_at=now,
        last_success_at=now,
        duration_ms=2500,
        last_outcome="ok",
        counts={"unmanaged": 1, "updated": 4},
        requests=7,
    )
    content = admin_client.get(INDEX).content.decode()
    assert "took 1.25 s" in content
    assert "Probes in the last hour: 2 (" in content
    assert "Failed probes in the last hour: 1;" in content
    assert "Acme: 2 failed run(s) in a row (rate_limited): 429 from the Costs API" in content
    assert "took 3.4 s, 12 buckets and 1,500 results read: 20 rows created, 3 updated, 1,477 unchanged" in content
    assert "took 2.5 s, 7 request(s), outcome ok" in content
    assert "unmanaged 1, updated 4" in content


def test_the_last_sweep_says_how_many_keys_it_claimed_and_queued(admin_client, make_key, monkeypatch, settings):
    """The real sweep task records its figures; a broker failing part-way shows as keys
    left due, and the sweep's status turns failing."""
    from keys import tasks

    settings.PROBE_BATCH_SIZE = 2
    for _ in range(5):
        make_key()
    sent = []

    def delay(claims):
        if sent:
            raise ConnectionError("broker went away")
        sent.append(claims)

    monkeypatch.setattr(tasks.probe_batch, "delay", delay)
    assert tasks.sweep() == 2

    content = admin_client.get(INDEX).content.decode()
    assert "5 due key(s) claimed, 2 queued to workers; 3 left due: the broker did not take them" in content
    # The three are due again, for the next sweep.
    assert ApiKey.objects.filter(next_probe_at__lte=timezone.now()).count() == 3


def test_charts_are_accessible_svg(admin_client, keys_world, project):
    key = keys_world["healthy"]
    now = timezone.now()
    Project.objects.filter(pk=project.pk).update(monthly_budget_usd=Decimal(100))
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    CostBucket.objects.create(
        organization=project.organization,
        project=project,
        start_time=today,
        end_time=today + timedelta(days=1),
        amount=Decimal("12.50"),
    )
    for i, outcome in enumerate(["ok", "ok", "invalid_key", "rate_limited"]):
        ProbeResult.objects.create(key=key, slot=i, started_at=now - timedelta(days=i), outcome=outcome)
    content = admin_client.get(INDEX).content.decode()
    charts = re.findall(r'<svg [^>]*class="(?:dashboard|spend)-chart"[^>]*>.*?</svg>', content, re.S)
    titles = [re.search(r'<title id="[^"]+-title">([^<]+)</title>', c).group(1) for c in charts]
    assert len(charts) == 4
    for chart in charts:
        assert 'role="img"' in chart.split(">", 1)[0]
        assert re.search(r"aria-label(ledby)?=", chart.split(">", 1)[0])
        assert "<rect" in chart or "<polyline" in chart
    assert titles[0] == "Probe outcomes per day, last 7 days (UTC)"
    assert titles[1] == "Keys by rotation state"
    assert titles[2].startswith("Billed spend against budget per project")
    assert titles[3].startswith("Billed spend per day in")
    assert "<script" not in "".join(charts)
    # The figures in words: 2 ok on the two oldest days, the failure and the throttle.
    assert "1 OK" in charts[0] and "1 failed" in charts[0] and "1 rate limited" in charts[0]
    # Keys by rotation state: 11 keys, 2 revoked, 1 expired.
    assert "Revoked: 2" in charts[1] and "Expired: 1" in charts[1]
    assert "Chatbot: $12.50 of $100.00" in charts[2]
    assert "$12.50 billed" in charts[3]


def test_chart_text_is_escaped(admin_client, org):
    Project.objects.create(
        organization=org, name="<b>x</b>", openai_project_id="proj_Escape000001", monthly_budget_usd=Decimal(5)
    )
    content = admin_client.get(INDEX).content.decode()
    assert "<b>x</b>" not in content
    assert "&lt;b&gt;x&lt;/b&gt;" in content


def test_no_external_assets(admin_client, keys_world):
    content = admin_client.get(INDEX).content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', content)
    assert sources and all(not s.startswith(("http://", "https://", "//")) for s in sources), sources


def build(org, make_key, n_keys, n_projects):
    """A world of `n_keys` keys with probe results, circuits, spend and states."""
    now = timezone.now()
    tier = Tier.objects.get(name="Tier 1")
    projects = [
        Project.objects.create(
            organization=org,
            name=f"p{i}",
            openai_project_id=f"proj_size{n_keys}x{i:04d}",
            tier=tier,
            monthly_budget_usd=Decimal(10),
            observed_rpm=7 if i % 2 else None,
        )
        for i in range(n_projects)
    ]
    for i in range(n_keys):
        key, _ = make_key(
            project=projects[i % n_projects],
            issued_at=now - timedelta(days=i * 3),
            last_probe_outcome="ok",
            revoked_at=now if i % 7 == 0 else None,
        )
        for day in range(3):
            ProbeResult.objects.create(
                key=key, slot=day, started_at=now - timedelta(days=day), outcome=["ok", "timeout", "ok"][day]
            )
        CostBucket.objects.create(
            organization=org,
            project=key.project,
            key=key,
            upstream_key_id=f"key_{key.pk}",
            start_time=now.replace(day=1, hour=0),
            end_time=now.replace(day=1, hour=0) + timedelta(days=1),
            amount=Decimal(3),
        )
    for i in range(min(n_keys // 5, 6)):
        Circuit.objects.create(host=f"h{n_keys}-{i}.example", state=CircuitState.OPEN, opened_at=now)
        UpstreamKey.objects.create(organization=org, upstream_id=f"key_u{n_keys}x{i}", kind="project")
    IngestState.objects.get_or_create(organization=org, defaults={"last_attempt_at": now, "consecutive_failures": 1})
    SyncState.objects.get_or_create(organization=org, defaults={"last_attempt_at": now, "counts": {"created": 1}})
    heartbeat.record_beat(now, 0.5)


@pytest.mark.parametrize("n_keys,n_projects", [(5, 2), (60, 12)])
def test_constant_queries(admin_client, org, make_key, django_assert_num_queries, n_keys, n_projects):
    other = Organization.objects.create(name="Other", slug="other", openai_org_id="org-OtherOther12")
    build(org, make_key, n_keys, n_projects)
    build(other, make_key, n_keys // 5 or 1, 1)
    admin_client.get(INDEX)  # warm per-process caches (content types, sessions)
    # The panels' 11 (test_gather_counts_queries_in_the_panels_only) and the admin's own 8:
    # session, user, two-factor device, user and group permissions, …
    with django_assert_num_queries(19):
        response = admin_client.get(INDEX)
    assert response.status_code == 200
    assert attention(response.content.decode())["circuits-open"][0] == min(n_keys // 5, 6) + min(
        (n_keys // 5 or 1) // 5, 6
    )


def test_gather_counts_queries_in_the_panels_only(org, make_key, django_assert_num_queries):
    build(org, make_key, 5, 2)
    with django_assert_num_queries(11):
        data = dashboard.gather(timezone.now())
    assert not data["unavailable"]


def test_a_failing_panel_leaves_the_rest(admin_client, monkeypatch, keys_world):
    def broken(now):
        raise RuntimeError("boom")

    monkeypatch.setattr(dashboard, "_panels", [(0, "broken", broken, None), *dashboard._panels])
    content = admin_client.get(INDEX).content.decode()
    assert "Unavailable: broken" in content
    assert attention(content)["keys-failing"][0] == 2


# --- roles -------------------------------------------------------------------------------
def test_anonymous_and_outsiders_get_the_login_page(client, outsider, keys_world):
    response = client.get(INDEX)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    client.force_login(outsider)
    response = client.get(INDEX)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert b"Needs attention" not in response.content


def test_staff_without_a_role_get_no_counts(client, keys_world):
    from django.contrib.auth.models import User

    user = User.objects.create_user("sam", "sam@example.com", "pw-sam-123456", is_staff=True)
    client.force_login(user)
    response = client.get(INDEX)
    content = response.content.decode()
    assert response.status_code == 200
    assert "Needs attention" not in content and not attention(content)
    assert 'class="dashboard-chart"' not in content


def test_reviewers_see_the_dashboard_and_change_nothing(reviewer_client, keys_world):
    before = (
        list(ApiKey.objects.order_by("pk").values()),
        AuditEvent.objects.count(),
        Circuit.objects.count(),
    )
    response = reviewer_client.get(INDEX)
    content = response.content.decode()
    assert response.status_code == 200
    assert "Needs attention" in content and attention(content)["keys-failing"][0] == 2
    # No add or change control on the dashboard for a reviewer; the app list shows views.
    dashboard_part = content.split('id="needs-attention"')[1].split('id="app-list"')[0]
    app_list = content.split('id="app-list"')[1]
    assert "/add/" not in dashboard_part and "<form" not in dashboard_part
    assert "/admin/keys/apikey/add/" not in app_list
    # Following a count works for a reviewer too.
    assert listed(reviewer_client, attention(content)["keys-failing"][1]) == {
        keys_world["failing"].pk,
        keys_world["invalid"].pk,
    }
    # A POST to the index is refused and changes nothing either.
    assert reviewer_client.post(INDEX, {"action": "revoke_selected"}).status_code == 405
    after = (list(ApiKey.objects.order_by("pk").values()), AuditEvent.objects.count(), Circuit.objects.count())
    assert after == before


def test_admins_see_the_dashboard_above_the_app_list(admin_client, keys_world):
    content = admin_client.get(INDEX).content.decode()
    assert content.index("Needs attention") < content.index('id="app-list"')
    assert "/admin/keys/apikey/add/" in content.split('id="app-list"')[1]


def test_no_secret_on_the_dashboard(admin_client, make_key):
    key, secret = make_key(name="canary", last_probe_outcome="invalid_key")
    Project.objects.filter(pk=key.project_id).update(observed_rpm=1)
    content = admin_client.get(INDEX).content.decode()
    assert_no_canary(content, secret, "the dashboard")
    assert key.hint not in content  # the dashboard shows counts, not keys


def test_on_the_demo_every_exact_link_shows_its_count(admin_client, sandbox):
    """With `load_demo`'s data (overdue, revoked and admin keys, four projects), each count
    whose link is a filter matches the rows that list shows."""
    from tests.test_demo import load_demo

    load_demo(sandbox.root)
    counts = attention(admin_client.get(INDEX).content.decode())
    exact = {slug: c for slug, c in counts.items() if "?" in c[1]}
    assert len(exact) >= 11
    for slug, (count, href) in exact.items():
        assert len(listed(admin_client, href)) == count, slug
    assert counts["rotation-overdue"][0] > 0
