"""A security reviewer's story in a real browser at 1280×800: logs in, reads the
dashboard, opens the rotation report from the key list, downloads its CSV, and finds no
control that would change anything on the pages they read.

Debian's Chromium through Playwright, as tests/browser/test_admin_flow.py starts it.
"""

import csv
import io
import os

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connections

from accounts.models import AuditEvent, Organization, Project
from keys.models import ApiKey
from tests.browser.test_admin_flow import PASSWORD, browser, log_in, probe_all_keys  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# What would change something: Django's save/delete buttons, "Add" links, action menus,
# our own key actions (Rotate, Revoke, Probe now), and any form that posts. A reviewer's
# own credentials are self-service, like their password: they may make an API token for
# themselves (it can only read), so that one "Add" link is not an edit control.
EDIT_CONTROLS = (
    "input[name=_save], input[name=_continue], input[name=_addanother], a.deletelink, a.addlink, "
    "select[name=action], a[href$='/rotate/'], a[href$='/revoke/'], a[href$='/rotate-via-api/'], "
    "form[method=post] button, form[method=post] input[type=submit]"
)


@pytest.fixture
def reviewer_user(db):
    user = User.objects.create_user("rita", "rita@example.com", PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Security reviewers"))
    return user


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def test_a_reviewer_reads_the_report_downloads_its_csv_and_can_change_nothing(
    page, live_server, reviewer_user, sandbox, settings
):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    call_command("load_demo", sandbox_url=sandbox.root, stdout=open(os.devnull, "w"))
    probe_all_keys()
    key = ApiKey.objects.filter(revoked_at__isnull=True).order_by("name").first()
    org, project = Organization.objects.get(slug="demo"), Project.objects.filter(organization__slug="demo").first()

    log_in(page, live_server, "rita", PASSWORD)
    assert page.locator("text=Needs attention").count() == 1  # the dashboard, read-only

    page.goto(f"{live_server.url}/admin/keys/apikey/")
    with page.expect_navigation():
        page.click("#rotation-report-link")
    rows = page.locator("#report-rows tbody tr")
    assert rows.count() >= 1
    report_text = page.inner_text("#report-rows")
    assert key.hint in report_text

    with page.expect_download() as download_info:
        page.click("#download-csv")
    download = download_info.value
    data = open(download.path(), encoding="utf-8").read()
    table = list(csv.DictReader(io.StringIO(data)))
    assert key.hint in {row["Hint"] for row in table}
    assert AuditEvent.objects.filter(action="report.exported", actor=reviewer_user).count() == 1

    for path in (
        "/admin/",
        "/admin/keys/apikey/",
        f"/admin/keys/apikey/{key.pk}/change/",
        "/admin/keys/apikey/rotation-report/",
        f"/admin/accounts/organization/{org.pk}/change/",
        f"/admin/accounts/project/{project.pk}/change/",
        "/admin/accounts/auditevent/",
        "/admin/keys/circuit/",
        "/admin/access/",
    ):
        page.goto(f"{live_server.url}{path}")
        assert "/admin/login/" not in page.url, path
        # Visible ones: Django's inline script keeps a hidden "Add another" when none may be added.
        visible = page.locator(f"#content :is({EDIT_CONTROLS}) >> visible=true")
        found = visible.evaluate_all("els => els.map(e => e.outerHTML)")
        found = [html for html in found if 'href="/admin/api/apitoken/add/"' not in html]
        assert found == [], f"{path}: {found}"
    connections.close_all()
