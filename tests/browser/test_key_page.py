"""The key list and the key page in Chromium at 1280×800 (issue 11 §2): the health
columns sit inside the viewport (element geometry, not by eye), pasting a secret selects
the kind its prefix implies, and "Probe now" shows the outcome without a reload — all
under the Content-Security-Policy with no violation. Rewrites
docs/screenshots/key-changelist.png and key-change.png, which the README shows.

Fixtures and the way Chromium is started: tests/browser/test_admin_flow.py.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from accounts.models import Environment, Project, Tier
from console.upstream import Outcome
from keys import formats, probe, sweep, tasks
from keys.models import ApiKey, Kind
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, shoot  # noqa: F401, F811
from tests.browser.test_csp import PolicyWatch

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

WIDTH, HEIGHT = 1280, 800
HEALTH_COLUMNS = ["key_cell", "where", "state_cell", "last_probe_cell", "issued_or_rotated", "expires_cell"]


@pytest.fixture
def laptop(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def seed_keys(make_key, project):
    """A list that looks like a console in use: long names, every state."""
    now = timezone.now()
    other = Project.objects.create(
        organization=project.organization,
        name="Customer support assistant (EU)",
        environment=Environment.PRODUCTION,
        tier=Tier.objects.get(name="Tier 2"),
    )
    make_key(name="chatbot-production-web-frontend", last_probe_outcome=Outcome.OK, last_probe_at=now)
    make_key(
        name="batch-summaries-nightly",
        project=other,
        issued_at=now - timedelta(days=200),
        last_probe_outcome=Outcome.QUOTA_EXHAUSTED,
        last_probe_at=now,
        consecutive_failures=6,
    )
    make_key(
        fmt=formats.SERVICE_ACCOUNT,
        kind=Kind.SERVICE_ACCOUNT,
        name="ci-service-account",
        project=other,
        issued_at=now - timedelta(days=40),
        expires_at=now - timedelta(days=1),
        last_probe_outcome=Outcome.RATE_LIMITED,
        last_probe_at=now,
    )
    make_key(name="old-revoked", revoked_at=now, last_probe_outcome=Outcome.INVALID_KEY, last_probe_at=now)


def test_the_key_lists_health_columns_are_inside_a_1280_px_viewport(
    laptop,
    live_server,
    console_admin,  # noqa: F811
    make_key,
    project,
):
    seed_keys(make_key, project)
    watch = PolicyWatch(laptop)
    log_in(laptop, live_server, "carol", PASSWORD)
    watch.visit(f"{live_server.url}/admin/keys/apikey/")
    assert laptop.locator("#result_list tbody tr").count() == 4
    shoot(laptop, "key-changelist")
    # What is visible of the list: its scrolling box, never wider than the window.
    shown = laptop.locator("#changelist .results").bounding_box()
    right = min(shown["x"] + shown["width"], WIDTH)
    for column in HEALTH_COLUMNS:
        header = laptop.locator(f"#result_list thead th.column-{column}").bounding_box()
        assert header is not None, column
        assert 0 <= header["x"] and header["x"] + header["width"] <= right, (column, header, right)
        # Each cell and everything in it (badges, the detail line) is inside too.
        for cell in laptop.locator(f"#result_list tbody .field-{column}, #result_list tbody .field-{column} *").all():
            box = cell.bounding_box()
            assert box["x"] + box["width"] <= right, (column, box, right)
    # Nothing to scroll sideways: not the page, not the list.
    assert laptop.evaluate("document.documentElement.scrollWidth") <= WIDTH
    assert laptop.evaluate(
        "(() => { const r = document.querySelector('#changelist .results'); return r.scrollWidth <= r.clientWidth; })()"
    )
    assert "Expired" in laptop.inner_text("#result_list")
    assert "Not probed" in laptop.inner_text("#result_list")
    watch.check()
    assert watch.found == []
    connections.close_all()


def test_pasting_a_secret_selects_the_kind_its_prefix_implies(laptop, live_server, console_admin, project):  # noqa: F811
    watch = PolicyWatch(laptop)
    log_in(laptop, live_server, "carol", PASSWORD)
    watch.visit(f"{live_server.url}/admin/keys/apikey/add/")
    assert laptop.input_value("#id_kind") == "project"
    laptop.fill("#id_secret", formats.generate(formats.SERVICE_ACCOUNT))
    assert laptop.input_value("#id_kind") == "service_account"
    laptop.fill("#id_secret", formats.generate(formats.ADMIN))
    assert laptop.input_value("#id_kind") == "admin"
    laptop.fill("#id_secret", formats.generate(formats.PROJECT))
    assert laptop.input_value("#id_kind") == "project"
    watch.check()
    assert watch.found == []
    connections.close_all()


class InProcessWorker:
    """Stands in for a Celery worker: each queued batch is probed in a thread of its own
    a moment later, while the page polls."""

    def __init__(self):
        self.threads = []
        self.errors = []

    def delay(self, claims):
        def run():
            try:
                time.sleep(1.0)
                probe.run_batch([sweep.Claim.parse(c) for c in claims])
            except Exception as e:  # reported in the test's thread
                self.errors.append(e)
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def join(self):
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, self.errors


def test_probe_now_shows_the_outcome_without_a_reload(
    laptop,
    live_server,
    console_admin,  # noqa: F811
    make_key,
    sandbox,
    settings,
    monkeypatch,
):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    worker = InProcessWorker()
    monkeypatch.setattr(tasks.probe_batch, "delay", worker.delay)
    key, secret = make_key(name="assistant-web", owner="platform team")
    sandbox.register(secret, fault="healthy", project=key.project.openai_project_id)

    watch = PolicyWatch(laptop)
    log_in(laptop, live_server, "carol", PASSWORD)
    watch.visit(f"{live_server.url}/admin/keys/apikey/{key.pk}/change/")
    with laptop.expect_navigation():
        laptop.click("#probe-now")
    assert "Probe queued" in laptop.inner_text("#probe-status")
    # The page is not loaded again from here on: a mark set now must survive.
    laptop.evaluate("window.__samePage = true")
    laptop.wait_for_selector("#probe-status.done", timeout=20_000)
    text = laptop.inner_text("#probe-status")
    assert "Last probe: OK" in text and "HTTP status 200" in text and "UTC" in text
    assert laptop.evaluate("window.__samePage") is True
    worker.join()
    assert ApiKey.objects.get(pk=key.pk).last_probe_outcome == Outcome.OK
    assert sandbox.stats()["total"] == 1
    assert secret not in laptop.content()
    shoot(laptop, "key-change")  # with the outcome that arrived while it polled
    laptop.reload()
    assert "Rate limit: requests" in laptop.text_content("#probe-history")  # shown in capitals by CSS
    watch.check()
    assert watch.found == []
    connections.close_all()


def test_probing_selected_keys_shows_live_progress_until_done(
    laptop,
    live_server,
    console_admin,  # noqa: F811
    make_key,
    sandbox,
    settings,
    monkeypatch,
):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    worker = InProcessWorker()
    monkeypatch.setattr(tasks.probe_batch, "delay", worker.delay)
    for name, fault in (("healthy-1", "healthy"), ("healthy-2", "healthy"), ("revoked-upstream", "revoked")):
        key, secret = make_key(name=name)
        sandbox.register(secret, fault=fault, project=key.project.openai_project_id)

    watch = PolicyWatch(laptop)
    log_in(laptop, live_server, "carol", PASSWORD)
    watch.visit(f"{live_server.url}/admin/keys/apikey/")
    laptop.check("#action-toggle")
    laptop.select_option("select[name=action]", "probe_selected")
    with laptop.expect_navigation():
        laptop.click("button[name=index]")
    assert "/probe-runs/" in laptop.url
    laptop.evaluate("window.__samePage = true")
    laptop.wait_for_selector("#probe-run[data-finished='1']", timeout=20_000)
    assert laptop.inner_text("#probe-run-count") == "3 of 3 probed"
    assert sorted(laptop.inner_text("#probe-run-outcomes").splitlines()) == ["Invalid key: 1", "OK: 2"]
    assert laptop.is_visible("#probe-run-done")
    assert laptop.evaluate("window.__samePage") is True
    worker.join()
    watch.check()
    assert watch.found == []
    connections.close_all()
