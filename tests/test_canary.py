"""A canary secret registered through the admin must never come back out: not in the
database dump, dumpdata, any admin page, the admin history, the audit log, the logs, or
a DEBUG=False error report.

These tests commit their data (transaction=True) so pg_dump, a separate process, sees
it; serialized_rollback restores the groups and tiers the migrations created.
"""

import io
import logging
import subprocess
import sys

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.core.signals import got_request_exception
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.views.debug import ExceptionReporter

from accounts.models import AuditEvent, Organization, Project, Tier
from keys import formats
from keys.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ADD_KEY = reverse("admin:keys_apikey_add")


def canary_parts(secret):
    """The secret and distinctive pieces of it: the body before the marker, the body
    after it, and the whole secret without its prefix."""
    prefix = "sk-proj-"
    body = secret.removeprefix(prefix)
    head, tail = body.split(formats.MARKER)
    return [secret, body, head[10:40], tail[10:40]]


def assert_no_canary(text, secret, where):
    for part in canary_parts(secret):
        assert part not in text, f"the canary (or a piece of it) appears in {where}"


def key_form(secret, project, name="Canary key"):
    return {
        "organization": "",
        "project": project.pk,
        "name": name,
        "kind": "project",
        "provider": "openai",
        "secret": secret,
        "base_url": "",
        "azure_endpoint": "",
        "azure_api_version": "",
        "upstream_key_id": "",
        "owner": "canary owner",
        "issued_at_0": "2025-01-15",
        "issued_at_1": "09:00:00",
        "expires_at_0": "",
        "expires_at_1": "",
        "_save": "Save",
    }


@pytest.fixture
def project_with_tier(db):
    org = Organization.objects.create(name="Canary Org", slug="canary-org", openai_org_id="org-CanaryOrg1234")
    return Project.objects.create(
        organization=org,
        name="Canary project",
        openai_project_id="proj_Canary123456",
        tier=Tier.objects.get(name="Tier 1"),
    )


@pytest.fixture
def every_log_record(caplog):
    """caplog at DEBUG for every logger, including those that do not propagate to root."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    detached = []
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            logger.addHandler(caplog.handler)
            detached.append(logger)
    yield caplog
    for logger in detached:
        logger.removeHandler(caplog.handler)


def log_text(caplog):
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
        lines.append(repr(record.__dict__))
    return "\n".join(lines) + caplog.text


def admin_pages(key, user):
    """Every admin page `user` may open about this world."""
    request = RequestFactory().get("/")
    request.user = user
    pages = [reverse("admin:index")]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        if model_admin.has_view_or_change_permission(request):
            pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        if model_admin.has_add_permission(request):
            pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
    pages.append(reverse("admin:app_list", args=["keys"]))
    pages.append(reverse("admin:app_list", args=["accounts"]))
    pages.append(reverse("admin:keys_apikey_change", args=[key.pk]))
    pages.append(reverse("admin:keys_apikey_history", args=[key.pk]))
    if admin.site._registry[ApiKey].has_delete_permission(request, key):  # superusers only (issue 9)
        pages.append(reverse("admin:keys_apikey_delete", args=[key.pk]))
    # The key's action pages (keys/rotation.py): Rotate, Rotate via API, Revoke.
    for action in ("rotate", "rotate_api", "revoke"):
        pages.append(reverse(f"admin:keys_apikey_{action}", args=[key.pk]))
    pages.append(reverse("admin:keys_apikey_changelist") + f"?q={key.hint}")
    pages.append(reverse("admin:accounts_project_change", args=[key.project_id]))
    pages.append(reverse("admin:accounts_organization_change", args=[key.organization_id]))
    pages.append(reverse("admin:accounts_auditevent_changelist") + "?action__exact=key.created")
    for event in AuditEvent.objects.all():
        pages.append(reverse("admin:accounts_auditevent_change", args=[event.pk]))
    return pages


def test_a_canary_registered_through_the_admin_never_comes_back_out(
    client, admin_user, project_with_tier, every_log_record
):
    canary = formats.generate(formats.PROJECT)
    client.force_login(admin_user)
    # Events from before this test (a flush re-creating the roles records its permission
    # changes) are not this flow's; every event is still checked for the canary below.
    earlier = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    with CaptureQueriesContext(connection) as queries:  # also makes Django log every SQL statement
        # A rejected form first (no name): the re-rendered page must not echo it.
        rejected = client.post(ADD_KEY, key_form(canary, project_with_tier, name=""))
        assert rejected.status_code == 200
        assert_no_canary(rejected.content.decode(), canary, "the re-rendered add form")

        response = client.post(ADD_KEY, key_form(canary, project_with_tier))
        assert response.status_code == 302, response.content.decode()[:2000]
        key = ApiKey.objects.get(name="Canary key")
        assert key.reveal_secret() == canary  # it really is stored, encrypted

        # A duplicate submission names the holder, not the secret.
        duplicate = client.post(ADD_KEY, key_form(canary, project_with_tier, name="Copy"))
        assert "already registered" in duplicate.content.decode()
        assert_no_canary(duplicate.content.decode(), canary, "the duplicate-key message page")

        # An edit that keeps the secret.
        edit = key_form("", project_with_tier, name="Canary key")
        edit.update({"owner": "new owner", "organization": key.organization_id})
        del edit["kind"], edit["provider"]
        assert client.post(reverse("admin:keys_apikey_change", args=[key.pk]), edit).status_code == 302
        key.refresh_from_db()
        assert key.owner == "new owner" and key.reveal_secret() == canary

        # Then every admin page.
        for url in admin_pages(key, admin_user):
            page = client.get(url)
            assert page.status_code == 200, url
            assert_no_canary(page.content.decode(), canary, f"the admin page {url}")
        change_page = client.get(reverse("admin:keys_apikey_change", args=[key.pk])).content.decode()
        assert key.hint in change_page  # the pages do show the key, by its hint

    assert_no_canary("\n".join(q["sql"] for q in queries.captured_queries), canary, "the SQL sent")

    dump = subprocess.run(
        ["pg_dump", "--data-only", "-h", "127.0.0.1", "-U", "postgres", connection.settings_dict["NAME"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert key.hint in dump and str(key.pk) in dump  # the dump does hold the key's row
    assert_no_canary(dump, canary, "pg_dump --data-only")
    ciphertext = bytes(key.secret_ciphertext)
    assert ciphertext.hex() in dump  # encrypted at rest: only the ciphertext is there

    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    assert str(key.pk) in out.getvalue()
    assert_no_canary(out.getvalue(), canary, "dumpdata")

    entries = list(LogEntry.objects.all())
    assert entries
    for entry in entries:
        assert_no_canary(f"{entry.object_repr} {entry.change_message}", canary, "the admin history (LogEntry)")

    events = list(AuditEvent.objects.all())
    assert sorted(e.action for e in events if e.pk > earlier) == ["key.created", "key.updated"]
    for event in events:
        assert_no_canary(f"{event.target_repr} {event.details} {event.actor_label}", canary, "the audit log")

    text = log_text(every_log_record)
    assert "INSERT INTO" in text  # SQL was logged at DEBUG, so the check below means something
    assert_no_canary(text, canary, "the captured logs")


def test_a_debug_false_error_report_stars_the_secret(client, admin_user, project_with_tier, monkeypatch, settings):
    settings.DEBUG = False
    canary = formats.generate(formats.PROJECT)
    client.force_login(admin_user)
    client.raise_request_exception = False

    def fail_to_save(self, *args, **kwargs):
        raise RuntimeError("database went away while saving the canary key")

    monkeypatch.setattr(ApiKey, "save", fail_to_save)

    reports = []

    def report(sender, request, **kwargs):
        # What mail_admins or an error tracker would receive for this request.
        reporter = ExceptionReporter(request, *sys.exc_info())
        reports.append(reporter.get_traceback_text())
        reports.append(reporter.get_traceback_html())

    got_request_exception.connect(report)
    try:
        response = client.post(ADD_KEY, key_form(canary, project_with_tier))
    finally:
        got_request_exception.disconnect(report)

    assert response.status_code == 500
    assert not ApiKey.objects.exists()
    assert reports
    text_report, html_report = reports[0], reports[1]
    assert "database went away while saving the canary key" in text_report
    assert "secret = '********************'" in text_report  # the POST parameter is there, starred
    assert_no_canary(text_report, canary, "the text error report")
    assert_no_canary(html_report, canary, "the HTML error report")
    assert_no_canary(response.content.decode(), canary, "the 500 page")
