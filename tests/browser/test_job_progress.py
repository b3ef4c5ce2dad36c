"""Long work started from the admin, in Chromium at 1280×800 with a real Celery worker
(tests/workers.py) and the sandbox API: a console admin presses "Sync now" and watches
the progress page count the projects and end with the sync's summary, without a reload;
then "Ingest usage for a window…", its form, and the same page ending with the
per-endpoint summary. All under the Content-Security-Policy with no violation, and no
secret in any page. Rewrites docs/screenshots/job-sync.png and job-ingest.png.

Fixtures and the way Chromium is started: tests/browser/test_admin_flow.py.
"""

import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connections
from django.utils import timezone

from accounts.models import Job, JobState
from keys import formats
from keys.models import Kind
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, shoot  # noqa: F401, F811
from tests.browser.test_csp import PolicyWatch
from tests.workers import Worker
from usage import ingest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

WIDTH, HEIGHT = 1280, 800
NOW = int(time.time())
PROJECTS = 8
# Every text the progress line shows, as it changes (the page is never reloaded).
WATCH_PROGRESS = """() => {
  window.__samePage = true;
  window.__seen = [];
  const line = document.getElementById("job-progress");
  const observer = new MutationObserver(() => window.__seen.push(line.textContent));
  observer.observe(line, {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture
def laptop(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def broker():
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def upstream(org, make_key, sandbox):
    """Acme's admin key in the sandbox: eight projects and a usage plan. Returns the secret."""
    key, secret = make_key(fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name="acme admin")
    sandbox.register(secret, organization=org.openai_org_id, fault="healthy")
    projects = [
        {"id": f"proj_Browser{i:06d}", "name": f"Team {i} assistant", "created_at": NOW - i * 86400}
        for i in range(PROJECTS)
    ]
    sandbox.seed_admin(org.openai_org_id, projects=projects)
    sandbox.set_usage(secret, keys=[("key_Browser00001", "proj_Browser000000")], models=["gpt-4o-mini"])
    return secret


@pytest.fixture
def worker(tmp_path, sandbox, broker):
    """A real Celery worker, reading through a sandbox slow enough to watch."""
    sandbox.set_latency(120)
    worker = Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, SYNC_CONCURRENCY=2, CIRCUIT_FAILURE_THRESHOLD=1000)
    # The browser fixture allows Django in an event loop for this test's thread only: not
    # for the worker, which must run as in production.
    worker.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    with worker:
        yield worker
    sandbox.set_latency(0)


def run_action(page, action):
    page.check("#action-toggle")
    page.select_option("select[name=action]", action)
    with page.expect_navigation():
        page.click("button[name=index]")


def watch_to_the_end(page):
    assert "/admin/jobs/" in page.url
    page.evaluate(WATCH_PROGRESS)
    page.wait_for_selector("#job[data-finished='1']", timeout=60_000)
    assert page.evaluate("window.__samePage") is True
    return page.evaluate("window.__seen")


def summary_rows(page):
    return {
        row[0]: row[1:]
        for row in page.eval_on_selector_all(
            "#job-summary tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
    }


def test_an_admin_watches_a_sync_and_an_ingest_run_to_their_summaries(
    laptop,
    live_server,
    console_admin,  # noqa: F811
    org,
    upstream,
    worker,
):
    watch = PolicyWatch(laptop)
    log_in(laptop, live_server, "carol", PASSWORD)

    # Sync now: the page counts the projects read, then shows what the sync did.
    watch.visit(f"{live_server.url}/admin/sync/syncedorganization/")
    run_action(laptop, "sync_now")
    seen = watch_to_the_end(laptop)
    assert any(f" of {PROJECTS}" in text for text in seen[:-1]), seen  # progress shown on the way
    assert laptop.inner_text("#job-state") == "Succeeded"
    assert laptop.inner_text("#job-progress").startswith(f"{PROJECTS} of {PROJECTS}")
    assert laptop.inner_text("#job-outcome").startswith("Done in ")
    assert summary_rows(laptop)["projects"] == [str(PROJECTS), "0", "0", "0"]
    assert "changes written" in laptop.inner_text("#job-summary dl")
    assert laptop.get_attribute("#job-back", "href") == "/admin/sync/syncedorganization/"
    assert upstream not in laptop.content()
    shoot(laptop, "job-sync")
    watch.check()

    # Ingest usage for a window…: the form, then the same page with one row per endpoint.
    watch.visit(f"{live_server.url}/admin/accounts/organization/")
    run_action(laptop, "ingest_window")
    today = ingest.day_start(timezone.now()).date()
    laptop.fill("#id_since", (today - timedelta(days=7)).isoformat())
    laptop.fill("#id_until", today.isoformat())
    watch.check()
    with laptop.expect_navigation():
        laptop.click("input[name=apply]")
    seen = watch_to_the_end(laptop)
    assert any(" of 9" in text for text in seen), seen  # eight usage endpoints and costs
    assert laptop.inner_text("#job-state") == "Succeeded"
    rows = summary_rows(laptop)
    assert rows["completions"][0] == "7" and int(rows["completions"][2]) > 0  # seven daily buckets, rows created
    assert "costs" in rows and "total" in rows
    assert "budgets evaluated" in laptop.inner_text("#job-summary dl")
    assert upstream not in laptop.content()
    shoot(laptop, "job-ingest")
    watch.check()
    assert watch.found == []
    assert list(Job.objects.values_list("state", flat=True)) == [JobState.SUCCEEDED] * 2
    assert upstream not in worker.read_log()
    connections.close_all()
