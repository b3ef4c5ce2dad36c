"""The dashboard (the admin index) in a real browser at 1280×800: the counts, the
background work and four charts drawn as inline SVG under the Content-Security-Policy
without a violation, each non-empty. Writes docs/screenshots/dashboard.png, which the
README shows.

Debian's Chromium through Playwright, as tests/browser/test_admin_flow.py starts it.
"""

from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from accounts import heartbeat
from keys import formats
from keys.models import ApiKey, Circuit, CircuitState, ProbeResult
from sync.models import SyncState, UpstreamKey
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, shoot  # noqa: F401
from tests.browser.test_csp import PolicyWatch
from tests.browser.test_spend_view import seed_month
from usage.models import IngestState

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

OUTCOMES = ["ok"] * 7 + ["rate_limited", "invalid_key", "timeout"]
# keys/static/keys/dashboard.css: a non-zero count is red (#c62828) and bold, its tile
# edged in red; a zero is grey, regular weight, with a hairline edge.
ALERT_RED = "rgb(198, 40, 40)"
READ_TILES = """els => els.map(li => {
  const count = getComputedStyle(li.querySelector(".count"));
  const link = getComputedStyle(li.querySelector("a"));
  return {
    slug: li.dataset.attention, count: parseInt(li.querySelector(".count").textContent, 10),
    cls: li.className, colour: count.color, weight: parseInt(count.fontWeight, 10),
    edge: link.borderLeftColor, edgeWidth: parseFloat(link.borderLeftWidth),
  };
})"""


def attention_tiles(page):
    """Each "Needs attention" tile as the browser draws it: its count, class and the
    computed colour and weight of the count, and the colour and width of its left edge."""
    return page.locator("#needs-attention li[data-attention]").evaluate_all(READ_TILES)


def assert_zero_is_quiet_and_the_rest_prominent(tiles):
    for t in tiles:
        if t["count"]:
            assert t["cls"] == "alert", t
            assert t["colour"] == ALERT_RED and t["weight"] >= 600, t
            assert t["edge"] == ALERT_RED and t["edgeWidth"] >= 4, t
        else:
            assert t["cls"] == "quiet", t
            assert t["colour"] != ALERT_RED and t["weight"] < 600, t
            assert t["edge"] != ALERT_RED and t["edgeWidth"] <= 1, t


def seed_keys(org):
    """Keys in every rotation state with a week of probes, an open circuit, an unmanaged
    upstream key and the background work's states."""
    now = timezone.now()
    projects = list(org.projects.order_by("name"))
    keys = []
    for i in range(24):
        secret = formats.generate()
        key = ApiKey(
            organization=org,
            project=projects[i % len(projects)],
            name=f"service {i:02d}",
            issued_at=now - timedelta(days=(i * 7) % 120),
            last_used_at=now - timedelta(days=45 if i % 11 == 0 else 1),
            expires_at=now - timedelta(days=1) if i == 5 else None,
            revoked_at=now - timedelta(days=2) if i == 7 else None,
            last_probe_outcome=OUTCOMES[i % len(OUTCOMES)],
            consecutive_failures=3 if OUTCOMES[i % len(OUTCOMES)] in ("invalid_key", "timeout") else 0,
        )
        key.set_secret(secret)
        key.save()
        keys.append(key)
    for day in range(7):
        for n, key in enumerate(keys):
            ProbeResult.objects.create(
                key=key,
                slot=day,
                started_at=now - timedelta(days=day, minutes=n),
                outcome=OUTCOMES[(n + day) % len(OUTCOMES)],
            )
    Circuit.objects.create(
        host="eastus.api.cognitive.microsoft.com",
        state=CircuitState.OPEN,
        opened_at=now - timedelta(minutes=4),
        open_until=now + timedelta(minutes=1),
    )
    UpstreamKey.objects.create(organization=org, upstream_id="key_UnmanagedDemo01", kind="project", name="ci-bot")
    heartbeat.record_beat(now - timedelta(seconds=20), sweep_seconds=0.42)
    IngestState.objects.create(
        organization=org, last_attempt_at=now - timedelta(minutes=9), last_success_at=now - timedelta(minutes=9)
    )
    SyncState.objects.create(
        organization=org,
        last_attempt_at=now - timedelta(minutes=12),
        last_success_at=now - timedelta(minutes=12),
        duration_ms=1830,
        last_outcome="ok",
        requests=14,
        counts={"unchanged": 23, "unmanaged": 1, "deleted_upstream": 0},
    )


def test_the_dashboard_shows_counts_work_and_charts(browser, live_server, console_admin):  # noqa: F811
    org = seed_month()
    seed_keys(org)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        watch = PolicyWatch(page)
        log_in(page, live_server, "carol", PASSWORD)
        watch.visit(f"{live_server.url}/admin/")
        assert page.locator("#needs-attention li.alert").count() >= 4
        tiles = attention_tiles(page)
        assert {t["slug"] for t in tiles if t["count"]} >= {"keys-failing", "keys-expired", "circuits-open"}
        assert any(t["count"] == 0 for t in tiles)
        assert_zero_is_quiet_and_the_rest_prominent(tiles)
        assert "eastus.api.cognitive.microsoft.com since" in page.locator("#needs-attention").inner_text()
        charts = page.locator("#dashboard-charts svg[role=img]")
        assert charts.count() == 4
        for i in range(4):
            chart = charts.nth(i)
            chart.scroll_into_view_if_needed()
            box = chart.bounding_box()
            assert box["width"] > 200 and box["height"] > 100, (i, box)
            assert chart.locator("rect, polyline").count() > 0
            assert chart.locator("title").first.text_content()
        page.evaluate("window.scrollTo(0, 0)")
        shoot(page, "dashboard")
        assert watch.found == []
    finally:
        context.close()
        # The ORM calls above ran beside Playwright's loop on context-local connections:
        # closed, or the test database cannot be dropped at the end of the session.
        connections.close_all()
