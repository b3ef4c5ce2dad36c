"""A failing key's story in a real browser at 1280×800 (issue §4): a console admin
registers a key whose secret the sandbox rejects; a real Celery worker probes it over
real HTTP (its first probe, then "Probe now"); the dashboard's "Keys failing" count is 1
and prominent, its link and the key list's "Failing" filters list exactly that key; the
admin revokes it with a reason; then the count is 0 and quiet, the "Failing" filters no
longer list it and the "Revoked" status filter does.

Nothing is written into the database by hand: keys go in through the admin's add form,
outcomes come from the worker, the revocation from the Revoke page. A healthy key,
registered and probed the same way, stands beside it so that "exactly that key" means
something.

A screenshot of each step (the 1280×800 viewport) goes to the artifacts directory:
$BROWSER_ARTIFACTS/failing-key-story/, by default var/artifacts/browser/ (git-ignored),
for CI to keep. Fixtures and the way Chromium is started: tests/browser/test_admin_flow.py.
"""

import os
import struct
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connections

from accounts.models import AuditEvent
from console.upstream import Outcome
from keys import formats
from keys.models import ApiKey, KeyAction, KeyEvent
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, save  # noqa: F401
from tests.browser.test_csp import PolicyWatch
from tests.browser.test_dashboard_view import assert_zero_is_quiet_and_the_rest_prominent, attention_tiles
from tests.workers import Worker, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

WIDTH, HEIGHT = 1280, 800
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS") or ROOT / "var" / "artifacts" / "browser") / "failing-key-story"
FAILING_TILE = "#needs-attention li[data-attention=keys-failing]"
# The key list's two failing choices: the stale flag the dashboard counts, and any failed
# last probe.
FAILING_CHOICES = (("stale flag", "Failing"), ("last probe", "Failed"))
REASON = "Rejected upstream (401 invalid_api_key); replaced by a new key."


@pytest.fixture
def broker():
    """An empty Redis database for the broker and the probe limiter."""
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def laptop(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
    # ORM calls made while Playwright's loop ran got context-local connections: closed here,
    # whether the test passed or not, so the test database can be dropped.
    connections.close_all()


class Story:
    """Numbered screenshots of the viewport, each checked to be 1280×800."""

    def __init__(self, page):
        self.page = page
        self.step = 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()

    def shoot(self, name):
        self.step += 1
        path = ARTIFACTS / f"{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        # A PNG's IHDR: width and height, big-endian, at bytes 16–24.
        assert struct.unpack(">II", path.read_bytes()[16:24]) == (WIDTH, HEIGHT), path


def register_key(page, live_server, project, name, secret):
    """The admin's add form, as a console admin fills it in; returns the saved key."""
    page.goto(f"{live_server.url}/admin/keys/apikey/add/")
    page.select_option("#id_project", value=str(project.pk), force=True)
    page.fill("#id_name", name)
    page.fill("#id_secret", secret)  # the kind follows the prefix (keys/static/keys/key_page.js)
    save(page)
    assert secret not in page.content()
    return ApiKey.objects.get(name=name)


def wait_for_outcome(page):
    """The key page polls its probe status until the worker's outcome arrives."""
    page.wait_for_selector("#probe-status.done", timeout=30_000)
    return page.get_attribute("#probe-status", "data-outcome")


def failing_tile(page):
    """The "Keys failing" tile as drawn: its count, and whether it looks the part (red,
    bold and edged in red when non-zero; grey and plain at zero)."""
    (tile,) = [t for t in attention_tiles(page) if t["slug"] == "keys-failing"]
    assert_zero_is_quiet_and_the_rest_prominent([tile])
    return tile["count"]


def listed(page):
    """The key names the list shows (no table at all when it is empty)."""
    return [
        cell.split("\n")[0].strip() for cell in page.locator("#result_list tbody .field-key_cell").all_inner_texts()
    ]


def sidebar_choice(page, title, label):
    """A choice in the list's filter sidebar, inside the filter named `title`."""
    return page.locator(f"#changelist-filter details[data-filter-title='{title}'] li").get_by_role(
        "link", name=label, exact=True
    )


def follow(page, locator):
    with page.expect_navigation():
        locator.click()


def test_a_failing_key_shows_on_the_dashboard_and_in_failing_and_leaves_them_when_revoked(
    laptop,
    live_server,
    console_admin,  # noqa: F811
    project,
    sandbox,
    broker,
    tmp_path,
):
    page, story = laptop, Story(laptop)
    healthy_secret = formats.generate(formats.PROJECT)
    sandbox.register(healthy_secret, fault="healthy", project=project.openai_project_id)
    # Never registered with the sandbox: it answers 401 invalid_api_key, as OpenAI does
    # for a key it does not know (docs/sandbox.md).
    rejected_secret = formats.generate(formats.PROJECT)

    watch = PolicyWatch(page)
    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, PROBE_PROJECT_RPM_SHARE=1) as worker:
        log_in(page, live_server, "carol", PASSWORD)
        page.goto(f"{live_server.url}/admin/")
        assert failing_tile(page) == 0

        # Registered through the add form: each key's first probe is queued on saving,
        # and its page shows the outcome the worker gets from the sandbox.
        healthy = register_key(page, live_server, project, "assistant-web", healthy_secret)
        assert wait_for_outcome(page) == Outcome.OK
        failing = register_key(page, live_server, project, "billing-batch", rejected_secret)
        assert wait_for_outcome(page) == Outcome.INVALID_KEY
        story.shoot("registered-first-probe-invalid")

        # Probe now: queued from the page, probed by the worker, shown without a reload.
        first_probe_at = ApiKey.objects.get(pk=failing.pk).last_probe_at
        with page.expect_navigation():
            page.click("#probe-now")
        # (The worker may answer before the page first polls: the panel itself can
        # already show the outcome, so "queued" is read from the message.)
        assert "Probe queued" in page.inner_text("ul.messagelist")
        page.evaluate("window.__samePage = true")
        assert wait_for_outcome(page) == Outcome.INVALID_KEY
        assert ApiKey.objects.get(pk=failing.pk).last_probe_at > first_probe_at
        assert page.evaluate("window.__samePage") is True
        assert "Invalid key" in page.inner_text("#probe-status") and "HTTP status 401" in page.inner_text(
            "#probe-status"
        )
        story.shoot("probe-now-invalid")
        wait_for(lambda: not broker.llen("celery"), message="an empty queue")
        log = worker.read_log()
    # Three requests reached the sandbox over HTTP: the healthy key's first probe, and the
    # rejected key's first probe and Probe now (an unknown key is counted without a project).
    stats = sandbox.stats()
    assert stats["total"] == 3
    assert stats["per_key"] == {formats.hint(healthy_secret): 1}
    assert [where for _, where in stats["recent"]].count(None) == 2
    failing.refresh_from_db()
    assert failing.last_probe_outcome == Outcome.INVALID_KEY and failing.consecutive_failures == 2
    for secret in (healthy_secret, rejected_secret):
        assert secret not in log and secret[-20:] not in log

    # The dashboard: one key failing, prominent (red, bold, in the first screenful).
    page.goto(f"{live_server.url}/admin/")
    assert failing_tile(page) == 1
    box = page.locator(FAILING_TILE).bounding_box()
    assert 0 <= box["y"] and box["y"] + box["height"] <= HEIGHT and box["x"] + box["width"] <= WIDTH
    story.shoot("dashboard-one-failing")

    # Its link lists exactly that key, with the "Failing" stale flag selected.
    follow(page, page.locator(f"{FAILING_TILE} a"))
    assert "flag=failing" in page.url
    assert listed(page) == ["billing-batch"]
    chosen = sidebar_choice(page, "stale flag", "Failing")
    assert chosen.locator("xpath=..").get_attribute("class") == "selected"
    chosen.scroll_into_view_if_needed()
    story.shoot("dashboard-link-lists-the-key")

    # The sidebar's "Failing" choices, from the whole list, say the same.
    page.goto(f"{live_server.url}/admin/keys/apikey/")
    assert sorted(listed(page)) == ["assistant-web", "billing-batch"]
    for title, choice in FAILING_CHOICES:
        page.goto(f"{live_server.url}/admin/keys/apikey/")
        follow(page, sidebar_choice(page, title, choice))
        assert listed(page) == ["billing-batch"], title
    sidebar_choice(page, "last probe", "Failed").scroll_into_view_if_needed()
    story.shoot("failing-filter-lists-the-key")

    # Revoked through the UI: the key page's Revoke, with a reason.
    page.goto(f"{live_server.url}/admin/keys/apikey/{failing.pk}/change/")
    follow(page, page.locator("#content a", has_text="Revoke"))
    assert "/revoke/" in page.url
    page.fill("#id_reason", REASON)
    story.shoot("revoke-with-a-reason")
    follow(page, page.locator("input[name=_revoke]"))
    assert "Revoked in the console" in page.inner_text("ul.messagelist")
    story.shoot("revoked")
    failing.refresh_from_db()
    assert failing.revoked_at is not None
    # The reason is kept in the key's history and the audit log.
    assert KeyEvent.objects.get(key=failing, action=KeyAction.REVOKED).reason == REASON
    assert AuditEvent.objects.get(action="key.revoked", target_id=str(failing.pk)).details["reason"] == REASON

    # The dashboard: nothing failing, shown quietly.
    page.goto(f"{live_server.url}/admin/")
    assert failing_tile(page) == 0
    story.shoot("dashboard-none-failing")

    # Its link, and both "Failing" choices, list nothing now.
    follow(page, page.locator(f"{FAILING_TILE} a"))
    assert listed(page) == []
    assert page.locator("#changelist .paginator").inner_text().strip().startswith("0 ")
    sidebar_choice(page, "stale flag", "Failing").scroll_into_view_if_needed()
    story.shoot("failing-filter-empty")
    for title, choice in FAILING_CHOICES:
        page.goto(f"{live_server.url}/admin/keys/apikey/")
        follow(page, sidebar_choice(page, title, choice))
        assert listed(page) == [], title

    # The "Revoked" status filter lists it; the healthy key is still there, not revoked.
    page.goto(f"{live_server.url}/admin/keys/apikey/")
    follow(page, sidebar_choice(page, "status", "Revoked"))
    assert listed(page) == ["billing-batch"]
    story.shoot("revoked-filter-lists-it")
    healthy.refresh_from_db()
    assert healthy.revoked_at is None and healthy.last_probe_outcome == Outcome.OK

    assert rejected_secret not in page.content() and healthy_secret not in page.content()
    watch.check()
    assert watch.found == []
