"""The admin in a real browser: a console admin registers an organization, a project and
a key; the secret never comes back into a page. Also writes the screenshots in
docs/screenshots/ that the README shows.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright; never a downloaded
browser. Missing Chromium is a failure, not a skip: a skipped browser test would hide
that the admin was never exercised.
"""

import os
import threading
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection, connections

from accounts.models import Organization, Project
from keys import formats
from keys.models import ApiKey

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "Browser-pass-4kQz81"

# transaction=True: the live server thread must see committed rows. serialized_rollback
# restores what the migrations created (groups, tiers) after the flush, for later tests.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


@pytest.fixture
def browser(monkeypatch):
    """Chromium for one test. Function-scoped on purpose: Playwright's sync API keeps an
    event loop running in this thread while it is open, and inside a running loop Django
    hands out other (context-local) database connections. Closing it before the database
    teardown lets the flush and serialized rollback work on the test's own connection."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"The browser tests need Debian's Chromium at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    # Django's ORM refuses to run in a thread with a running event loop. Allowed for this
    # test only: set for the whole session it would leak into subprocesses, and
    # `check --deploy` rightly rejects it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
        # A connection opened while the loop ran (a fixture set up after this one) belongs
        # to the loop's context, which ends here: close it, or it outlives the test and
        # keeps the test database from being dropped at the end of the session.
        connections.close_all()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1920, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def console_admin(db):
    user = User.objects.create_user("carol", "carol@example.com", PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Console admins"))
    return user


def shoot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page, live_server, username, password, screenshot=None):
    page.goto(f"{live_server.url}/admin/login/")
    if screenshot:
        shoot(page, screenshot)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert "/admin/login/" not in page.url, "login failed"


def save(page):
    with page.expect_navigation():
        page.click("input[name=_save]")
    assert page.locator(".errornote, .errorlist").count() == 0, page.locator("#content").inner_text()


def probe_all_keys():
    """A foreground probe sweep, in its own thread: this one runs Playwright's event loop."""
    errors = []

    def run():
        try:
            # Some demo keys fail by design: the sweep itself must succeed.
            call_command("probe_keys", "--no-progress", "--fail-on", "none", stdout=open(os.devnull, "w"))
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors, errors


def test_a_console_admin_registers_a_key_and_never_sees_its_secret_again(
    page, live_server, console_admin, sandbox, settings
):
    # Demo data behind the new objects, probed against the sandbox, makes the screenshots
    # show a realistic console.
    settings.OPENAI_BASE_URL = sandbox.openai_url
    call_command("load_demo", sandbox_url=sandbox.root, stdout=open(os.devnull, "w"))
    secret = formats.generate(formats.PROJECT)

    log_in(page, live_server, "carol", PASSWORD, screenshot="login")

    page.goto(f"{live_server.url}/admin/accounts/organization/add/")
    page.fill("#id_name", "Acme Research")
    # The slug is prepopulated from the name by the admin's JavaScript.
    page.fill("#id_openai_org_id", "org-AcmeResearch01")
    save(page)
    org = Organization.objects.get(name="Acme Research")
    assert org.slug == "acme-research"

    page.goto(f"{live_server.url}/admin/accounts/project/add/")
    page.select_option("#id_organization", value=str(org.pk), force=True)
    page.fill("#id_name", "Assistant")
    page.fill("#id_openai_project_id", "proj_AcmeAssistant01")
    page.select_option("#id_environment", value="production", force=True)
    save(page)
    project = Project.objects.get(organization=org, name="Assistant")

    page.goto(f"{live_server.url}/admin/keys/apikey/add/")
    page.select_option("#id_project", value=str(project.pk), force=True)
    page.fill("#id_name", "assistant-web")
    page.select_option("#id_kind", value="project", force=True)
    page.select_option("#id_provider", value="openai", force=True)
    page.fill("#id_secret", secret)
    # What the browser sends must not come back: not after saving, on no page.
    save(page)
    assert secret not in page.content()

    key = ApiKey.objects.get(name="assistant-web")
    assert key.hint == formats.hint(secret)
    assert key.reveal_secret() == secret

    sandbox.register(secret, fault="healthy", project="proj_AcmeAssistant01")
    probe_all_keys()
    page.goto(f"{live_server.url}/admin/keys/apikey/")
    assert key.hint in page.inner_text("#result_list")
    assert "Invalid key" in page.inner_text("#result_list")  # the demo key revoked upstream
    assert secret not in page.content()

    page.goto(f"{live_server.url}/admin/keys/apikey/{key.pk}/change/")
    assert page.input_value("#id_secret") == ""  # write-only field
    assert secret not in page.content()
    assert secret[-8:] not in page.content()

    demo = Organization.objects.get(slug="demo")
    page.goto(f"{live_server.url}/admin/accounts/organization/{demo.pk}/change/")
    assert "Demo Org" in page.content()
    shoot(page, "organization")

    page.goto(f"{live_server.url}/admin/keys/proberesult/")
    assert "assistant-web" in page.inner_text("#result_list")
    assert secret not in page.content()
    shoot(page, "probe-results")

    page.goto(f"{live_server.url}/admin/keys/apikey/rotation-report/")
    assert "assistant-web" in page.inner_text("#report-rows")
    assert secret not in page.content()
    shoot(page, "rotation-report")

    # Rotate: the new secret is probed first, then swapped in; the old one is superseded.
    rotated = formats.generate(formats.PROJECT)
    sandbox.register(rotated, fault="healthy", project="proj_AcmeAssistant01")
    page.goto(f"{live_server.url}/admin/keys/apikey/{key.pk}/rotate/")
    page.fill("#id_secret", rotated)
    shoot(page, "key-rotate")
    with page.expect_navigation():
        page.click("input[name=_rotate]")
    assert page.locator(".errornote, .errorlist").count() == 0, page.locator("#content").inner_text()
    assert rotated not in page.content() and secret not in page.content()
    key.refresh_from_db()
    assert key.reveal_secret() == rotated
    assert key.superseded_secrets.get().hint == formats.hint(secret)

    page.goto(f"{live_server.url}/admin/accounts/auditevent/")
    assert "assistant-web" in page.inner_text("#content")
    assert secret not in page.content() and rotated not in page.content()
    shoot(page, "audit-log")

    page.goto(f"{live_server.url}/admin/access/")
    assert "console admin" in page.inner_text("#access-list")
    shoot(page, "access")
    # ORM calls made while Playwright's loop runs got context-local connections; close
    # them, or the test database cannot be dropped at the end of the session.
    connections.close_all()
