"""The audit trail: one save path for every object, whoever acts (admin, command, demo),
each field change with its old and new value, and every key a deletion takes along."""

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse

from accounts.models import AuditEvent, Organization, Project
from keys.models import ApiKey

from .test_admin import key_change_data


@pytest.fixture
def superuser_client(client, db):
    """Deleting keys (directly or with their organization or project) is for superusers:
    console admins revoke them (issue 9)."""
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-123456"))
    return client


def events(action, **filters):
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


def test_deleting_an_organization_audits_every_key_it_takes_along(superuser_client, org, project, make_key):
    keys = [make_key()[0] for _ in range(3)]
    response = superuser_client.post(reverse("admin:accounts_organization_delete", args=[org.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not ApiKey.objects.exists()
    deleted = {e.target_id: e for e in events("key.deleted")}
    assert set(deleted) == {str(k.pk) for k in keys}
    for key in keys:
        details = deleted[str(key.pk)].details
        assert details["hint"] == key.hint
        assert details["cascaded_from"]["type"] == "organization"
        assert details["cascaded_from"]["id"] == str(org.pk)
    assert len(events("organization.deleted")) == 1
    assert len(events("project.deleted")) == 0  # projects are not audited by cascade: only keys


def test_deleting_projects_with_the_bulk_action_audits_their_keys(superuser_client, project, make_key):
    key, _ = make_key()
    response = superuser_client.post(
        reverse("admin:accounts_project_changelist"),
        {"action": "delete_selected", "_selected_action": [project.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Project.objects.exists()
    (event,) = events("key.deleted")
    assert event.target_id == str(key.pk)
    assert event.details["cascaded_from"]["type"] == "project"


def test_a_key_change_records_each_field_with_its_old_and_new_value(admin_client, make_key):
    key, secret = make_key(owner="web team")
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    response = admin_client.post(url, key_change_data(key, owner="payments", upstream_key_id="key_abcdef123"))
    assert response.status_code == 302
    (event,) = events("key.updated")
    assert event.details["changes"]["owner"] == {"old": "web team", "new": "payments"}
    assert event.details["changes"]["upstream_key_id"] == {"old": "", "new": "key_abcdef123"}
    assert secret not in str(event.details)


def test_an_organization_change_records_old_and_new_values(admin_client, org):
    url = reverse("admin:accounts_organization_change", args=[org.pk])
    data = {
        "name": org.name,
        "slug": org.slug,
        "openai_org_id": org.openai_org_id,
        "rotation_policy_days": "30",
        "monthly_budget_usd": "",
        "alert_emails": "",
        "alert_webhook_url": "",
        "projects-TOTAL_FORMS": "0",
        "projects-INITIAL_FORMS": "0",
        "projects-MIN_NUM_FORMS": "0",
        "projects-MAX_NUM_FORMS": "1000",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    (event,) = events("organization.updated")
    assert event.details["changes"] == {"rotation_policy_days": {"old": 90, "new": 30}}


def test_commands_and_the_admin_write_the_same_creation_events(db):
    call_command("add_org", name="Initech", slug="initech", stdout=StringIO())
    call_command("add_project", org="initech", name="Reports", stdout=StringIO())
    org = Organization.objects.get(slug="initech")
    (created,) = events("organization.created")
    assert created.actor_label == "cli:add_org"
    assert created.details == {"slug": "initech"}
    (project_created,) = events("project.created")
    assert project_created.details == {"organization": "initech"}
    assert project_created.target_id == str(org.projects.get().pk)


def test_auditing_a_cascade_takes_the_same_number_of_inserts_however_many_keys_go(org, make_key):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.audit import record_deletion

    def audit_inserts(n):
        doomed = Project.objects.create(organization=org, name=f"doomed {n}")
        for _ in range(n):
            make_key(project=doomed)
        before = AuditEvent.objects.filter(action="key.deleted").count()
        with CaptureQueriesContext(connection) as ctx:
            record_deletion("test", doomed)
        assert AuditEvent.objects.filter(action="key.deleted").count() - before == n
        return sum('INSERT INTO "accounts_auditevent"' in q["sql"] for q in ctx.captured_queries)

    assert audit_inserts(3) == audit_inserts(30) == 2  # the project's own event, then one bulk insert
