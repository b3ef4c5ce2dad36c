"""The audit trail is complete (issue 9, §4): every create, change, login, failed login,
logout and refused request is an event with its actor, action, target, time and source
address; changes to users, groups, staff and superuser status, memberships and
permissions are recorded with who did it and what was there before; reviewers see who has
access on a read-only page; the audit log is read-only, filterable and exportable as CSV,
and the export is audited itself. No secret reaches any of it.

The role matrix at the end covers every URL added for this (user and group admins, the
Access page, the CSV export) and checks each request's effect, not only its status.
"""

import csv
import datetime
import io
import json

import pytest
import time_machine
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.audit_export import details_text, safe_cell
from accounts.models import AuditEvent, Organization
from keys import formats

pytestmark = pytest.mark.django_db

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
ROOT_PASSWORD = "pw-root-123456"
EXPORT = reverse("admin:accounts_auditevent_export")
AUDIT_LOG = reverse("admin:accounts_auditevent_changelist")
ACCESS = reverse("admin:access")


def events(action=None, **filters):
    queryset = AuditEvent.objects.order_by("pk")
    return list(queryset.filter(action=action, **filters) if action else queryset.filter(**filters))


def everything_recorded():
    """Every audit event, every field, as one text."""
    return json.dumps(list(AuditEvent.objects.values()), default=str)


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root", "root@example.com", ROOT_PASSWORD)


@pytest.fixture
def root_client(client, root):
    client.force_login(root)
    return client


def org_change_data(org, **changes):
    data = {
        "name": org.name,
        "slug": org.slug,
        "openai_org_id": org.openai_org_id,
        "rotation_policy_days": org.rotation_policy_days,
        "monthly_budget_usd": "",
        "alert_emails": "",
        "alert_webhook_url": "",
    }
    for prefix in ("projects", "api_keys"):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})
    data.update(changes)
    return data


def user_change_data(user, **changes):
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [p.pk for p in user.user_permissions.all()],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    # As the page sends them: the field has a callable default, so its shown value is sent
    # back as "initial-…" too, and "changed" compares those.
    data.update({f"initial-{k}": v for k, v in data.items() if k.startswith("date_joined")})
    for flag in ("is_active", "is_staff", "is_superuser"):
        if getattr(user, flag):
            data[flag] = "on"
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = "on" if value is True else value
    return data


# --- Every event has actor, action, target, time and source address --------------------


def test_a_change_made_in_the_admin_records_actor_target_time_and_the_client_address(client, admin_user, org):
    client.force_login(admin_user)
    with time_machine.travel(NOW, tick=False):
        url = reverse("admin:accounts_organization_change", args=[org.pk])
        response = client.post(url, org_change_data(org, rotation_policy_days="30"), REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 302
    (event,) = events("organization.updated")
    assert (event.actor, event.actor_label) == (admin_user, "alice")
    assert (event.target_type, event.target_id, event.target_repr) == ("organization", str(org.pk), "Acme")
    assert event.at == NOW
    assert event.details == {"changes": {"rotation_policy_days": {"old": 90, "new": 30}}, "ip": "198.51.100.7"}


def test_the_address_is_the_one_login_lockouts_count_and_x_forwarded_for_is_not_trusted(
    client, admin_user, org, settings, rf
):
    from axes.helpers import get_client_ip_address

    client.force_login(admin_user)
    url = reverse("admin:accounts_organization_change", args=[org.pk])
    forwarded = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "8.8.4.4"}
    client.post(url, org_change_data(org, rotation_policy_days="30"), **forwarded)
    # No CONSOLE_LOGIN_PROXY_COUNT: the header is anyone's to forge, and ignored.
    assert events("organization.updated")[-1].details["ip"] == "10.0.0.1"

    # CONSOLE_LOGIN_PROXY_COUNT=1 (console/settings.py turns it into these): the audit
    # log records the address django-axes counts login attempts under, whatever it is.
    settings.AXES_IPWARE_PROXY_COUNT = 1
    settings.AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
    settings.AXES_IPWARE_PROXY_ORDER = "right-most"
    client.post(url, org_change_data(org, rotation_policy_days="60"), **forwarded)
    assert events("organization.updated")[-1].details["ip"] == get_client_ip_address(rf.get("/", **forwarded))


def test_events_made_outside_a_request_have_no_address_and_name_their_command(db):
    call_command("add_org", name="Initech", slug="initech", stdout=io.StringIO())
    (event,) = events("organization.created")
    assert event.actor_label == "cli:add_org"
    assert "ip" not in event.details


def test_login_failed_login_and_logout_each_record_actor_target_time_and_address(client, admin_user):
    login = reverse("admin:login")
    with time_machine.travel(NOW, tick=False):
        client.post(login, {"username": "alice", "password": "wrong-password-1"}, REMOTE_ADDR="192.0.2.1")
        client.post(login, {"username": "alice", "password": "pw-alice-123456"}, REMOTE_ADDR="192.0.2.2")
        client.post(reverse("admin:logout"), REMOTE_ADDR="192.0.2.3")
    failed, logged_in, logged_out = (
        events("auth.login_failed")[0],
        events("auth.login")[0],
        events("auth.logout")[0],
    )
    assert (failed.actor_label, failed.target_id, failed.at, failed.details) == (
        "anonymous",
        str(admin_user.pk),
        NOW,
        {"ip": "192.0.2.1"},
    )
    assert (logged_in.actor, logged_in.target_id, logged_in.at, logged_in.details) == (
        admin_user,
        str(admin_user.pk),
        NOW,
        {"ip": "192.0.2.2"},
    )
    assert (logged_out.actor, logged_out.target_id, logged_out.at, logged_out.details) == (
        admin_user,
        str(admin_user.pk),
        NOW,
        {"ip": "192.0.2.3"},
    )
    assert "wrong-password-1" not in everything_recorded() and "pw-alice-123456" not in everything_recorded()


# --- Refused requests ----------------------------------------------------------------------


def test_a_reviewers_refused_change_changes_nothing_and_is_recorded_without_the_body(client, reviewer, org):
    client.force_login(reviewer)
    before = list(Organization.objects.values())
    url = reverse("admin:accounts_organization_change", args=[org.pk])
    with time_machine.travel(NOW, tick=False):
        data = org_change_data(org, name="body-marker-in-form")
        response = client.post(url + "?next=body-marker-in-query", data, REMOTE_ADDR="192.0.2.9")
    assert response.status_code == 403
    assert list(Organization.objects.values()) == before
    (event,) = events()
    assert (event.action, event.actor, event.actor_label, event.at) == ("access.denied", reviewer, "rita", NOW)
    assert event.details == {
        "method": "POST",
        "path": url,
        "view": "admin:accounts_organization_change",
        "object_id": str(org.pk),
        "ip": "192.0.2.9",
    }
    assert "body-marker" not in everything_recorded()


def test_a_refused_admin_action_and_delete_are_recorded(client, reviewer, make_key):
    key, _ = make_key()
    client.force_login(reviewer)
    changelist = reverse("admin:keys_apikey_changelist")
    action = {"action": "revoke_selected", "_selected_action": [key.pk], "index": "0"}
    assert client.post(changelist, action).status_code == 403
    delete = reverse("admin:keys_apikey_delete", args=[key.pk])
    assert client.get(delete).status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None
    denied = events("access.denied")
    assert [(e.details["method"], e.details["path"], e.details["view"]) for e in denied] == [
        ("POST", changelist, "admin:keys_apikey_changelist"),
        ("GET", delete, "admin:keys_apikey_delete"),
    ]
    assert len(events()) == 2


def test_a_key_shaped_path_is_recorded_without_the_key(client, reviewer):
    canary = formats.generate(formats.PROJECT)
    client.force_login(reviewer)
    url = f"/admin/accounts/organization/{canary}/change/"
    assert client.post(url, {"name": canary}).status_code == 403
    (event,) = events("access.denied")
    assert event.details["path"] == "/admin/accounts/organization/[key-shaped value removed]/change/"
    assert event.details["object_id"] == "[key-shaped value removed]"
    assert_canary_absent(canary, everything_recorded())


def test_looking_and_being_sent_to_the_login_page_are_not_refusals(client, reviewer, outsider, org):
    client.force_login(reviewer)
    assert client.get(reverse("admin:accounts_organization_change", args=[org.pk])).status_code == 200
    client.force_login(outsider)
    assert client.post(reverse("admin:accounts_organization_change", args=[org.pk]), {}).status_code == 302
    assert events("access.denied") == []


# --- Users, groups, staff and superuser status, memberships, permissions -----------------


def test_creating_a_user_in_the_admin_records_who_and_never_the_password(root_client, root):
    password = "Fresh-pass-8Hq2mZ0w"
    response = root_client.post(
        reverse("admin:auth_user_add"),
        {"username": "newbie", "usable_password": "true", "password1": password, "password2": password},
        REMOTE_ADDR="192.0.2.20",
    )
    assert response.status_code == 302
    user = User.objects.get(username="newbie")
    (event,) = events("user.created")
    assert (event.actor, event.target_type, event.target_id) == (root, "user", str(user.pk))
    assert event.target_repr == "newbie"
    assert event.details == {
        "is_active": True,
        "is_staff": False,
        "is_superuser": False,
        "groups": [],
        "password": "set",
        "ip": "192.0.2.20",
    }
    recorded = everything_recorded()
    assert password not in recorded and user.password not in recorded
    assert user.password.split("$")[-1] not in recorded  # not even the hash's digest


def test_a_key_shaped_username_is_refused(root_client):
    canary = formats.generate(formats.PROJECT)
    password = "Fresh-pass-8Hq2mZ0w"
    response = root_client.post(
        reverse("admin:auth_user_add"),
        {"username": canary[:150], "usable_password": "true", "password1": password, "password2": password},
    )
    assert response.status_code == 200
    assert not User.objects.filter(username=canary[:150]).exists()
    assert events("user.created") == []


def test_giving_someone_staff_superuser_and_a_group_records_old_and_new(root_client, root, outsider):
    admins = Group.objects.get(name="Console admins")
    url = reverse("admin:auth_user_change", args=[outsider.pk])
    data = user_change_data(outsider, is_staff=True, is_superuser=True, groups=[admins.pk])
    response = root_client.post(url, data, REMOTE_ADDR="192.0.2.21")
    assert response.status_code == 302
    outsider.refresh_from_db()
    assert outsider.is_staff and outsider.is_superuser

    (updated,) = events("user.updated")
    assert (updated.actor, updated.target_id) == (root, str(outsider.pk))
    assert updated.details == {
        "changes": {"is_staff": {"old": False, "new": True}, "is_superuser": {"old": False, "new": True}},
        "ip": "192.0.2.21",
    }
    (membership,) = events("user.groups_changed")
    assert (membership.actor, membership.target_id, membership.target_repr) == (root, str(outsider.pk), "oscar")
    assert membership.details == {
        "added": ["Console admins"],
        "removed": [],
        "old": [],
        "new": ["Console admins"],
        "ip": "192.0.2.21",
    }


def test_taking_a_role_away_in_the_admin_records_what_was_removed(root_client, root, reviewer):
    url = reverse("admin:auth_user_change", args=[reviewer.pk])
    response = root_client.post(url, user_change_data(reviewer, is_staff=False, groups=[]))
    assert response.status_code == 302
    assert events("user.updated")[0].details["changes"] == {"is_staff": {"old": True, "new": False}}
    (membership,) = events("user.groups_changed")
    assert membership.details["removed"] == ["Security reviewers"]
    assert (membership.details["old"], membership.details["new"]) == (["Security reviewers"], [])


def test_deleting_a_user_or_a_group_records_the_access_that_went_with_it(root_client, root, admin_user, reviewer):
    url = reverse("admin:auth_user_delete", args=[admin_user.pk])
    assert root_client.post(url, {"post": "yes"}).status_code == 302
    (deleted,) = events("user.deleted")
    assert (deleted.actor, deleted.target_id, deleted.target_repr) == (root, str(admin_user.pk), "alice")
    assert deleted.details == {
        "is_active": True,
        "is_staff": True,
        "is_superuser": False,
        "groups": ["Console admins"],
        "ip": "127.0.0.1",
    }

    reviewers = Group.objects.get(name="Security reviewers")
    granted = sorted(f"{p.content_type.app_label}.{p.codename}" for p in reviewers.permissions.all())
    url = reverse("admin:auth_group_delete", args=[reviewers.pk])
    assert root_client.post(url, {"post": "yes"}).status_code == 302
    (gone,) = events("group.deleted")
    assert gone.target_repr == "Security reviewers"
    assert gone.details == {"members": ["rita"], "permissions": granted, "ip": "127.0.0.1"}
    assert "accounts.view_auditevent" in granted


def test_a_password_change_in_the_admin_records_only_that_it_changed(root_client, root, admin_user):
    password = "Other-pass-7Hq2mZ0w"
    old_hash = admin_user.password
    url = reverse("admin:auth_user_password_change", args=[admin_user.pk])
    response = root_client.post(url, {"usable_password": "true", "password1": password, "password2": password})
    assert response.status_code == 302
    admin_user.refresh_from_db()
    assert admin_user.check_password(password)
    (event,) = events("user.password_changed")
    assert (event.actor, event.target_id) == (root, str(admin_user.pk))
    assert event.details == {"usable": True, "ip": "127.0.0.1"}
    recorded = everything_recorded()
    for secret in (password, old_hash, admin_user.password):
        assert secret not in recorded
    assert events("user.updated") == []


def test_groups_and_their_permissions_are_audited_in_the_admin(root_client, root):
    view_org = Permission.objects.get(codename="view_organization")
    change_org = Permission.objects.get(codename="change_organization")
    response = root_client.post(reverse("admin:auth_group_add"), {"name": "Auditors", "permissions": [view_org.pk]})
    assert response.status_code == 302
    group = Group.objects.get(name="Auditors")
    (created,) = events("group.created")
    assert (created.actor, created.target_id, created.target_repr) == (root, str(group.pk), "Auditors")
    (granted,) = events("group.permissions_changed")
    assert granted.details["added"] == ["accounts.view_organization"]

    url = reverse("admin:auth_group_change", args=[group.pk])
    response = root_client.post(url, {"name": "Org auditors", "permissions": [change_org.pk]})
    assert response.status_code == 302
    (renamed,) = events("group.updated")
    assert renamed.details["changes"] == {"name": {"old": "Auditors", "new": "Org auditors"}}
    changed = events("group.permissions_changed")[1:]
    assert [(e.details["added"], e.details["removed"]) for e in changed] == [
        ([], ["accounts.view_organization"]),
        (["accounts.change_organization"], []),
    ]
    assert changed[-1].details["new"] == ["accounts.change_organization"]

    response = root_client.post(reverse("admin:auth_group_delete", args=[group.pk]), {"post": "yes"})
    assert response.status_code == 302
    (deleted,) = events("group.deleted")
    assert (deleted.actor, deleted.target_id) == (root, str(group.pk))


def test_memberships_and_permissions_changed_outside_the_admin_are_audited(outsider):
    reviewers = Group.objects.get(name="Security reviewers")
    outsider.groups.add(reviewers)
    outsider.groups.add(reviewers)  # already a member: nothing changed, nothing recorded
    (added,) = events("user.groups_changed")
    assert (added.actor, added.actor_label, added.target_id) == (None, "system", str(outsider.pk))
    assert added.details == {"added": ["Security reviewers"], "removed": [], "old": [], "new": ["Security reviewers"]}

    # From the group's side, for several users at once: one event per user.
    other = User.objects.create_user("olga", "olga@example.com", "pw-olga-123456")
    reviewers.user_set.add(other)
    reviewers.user_set.remove(outsider, other)
    removed = events("user.groups_changed")[2:]
    assert sorted((e.target_repr, tuple(e.details["removed"])) for e in removed) == [
        ("olga", ("Security reviewers",)),
        ("oscar", ("Security reviewers",)),
    ]
    outsider.groups.remove(reviewers)  # not a member any more: nothing recorded
    assert len(events("user.groups_changed")) == 4

    perm = Permission.objects.get(codename="change_apikey")
    outsider.user_permissions.add(perm)
    (direct,) = events("user.permissions_changed")
    assert direct.details["added"] == ["keys.change_apikey"]

    granted = list(reviewers.permissions.all())
    reviewers.permissions.clear()
    (cleared,) = events("group.permissions_changed")
    assert cleared.target_repr == "Security reviewers"
    assert cleared.details["removed"] == sorted(f"{p.content_type.app_label}.{p.codename}" for p in granted)
    assert cleared.details["new"] == []


def test_status_and_password_changed_outside_the_admin_are_audited(outsider):
    outsider.is_staff = True
    outsider.is_superuser = True
    outsider.save()
    (updated,) = events("user.updated")
    assert (updated.actor_label, updated.target_id) == ("system", str(outsider.pk))
    assert updated.details == {
        "changes": {"is_staff": {"old": False, "new": True}, "is_superuser": {"old": False, "new": True}}
    }
    outsider.first_name = "Oscar"
    outsider.save()  # nothing that gives access changed
    outsider.save(update_fields=["is_active"])  # compared, unchanged
    assert len(events("user.updated")) == 1

    old_hash = outsider.password
    outsider.set_password("Shell-pass-4Rt8zQ1w")
    outsider.save()
    (changed,) = events("user.password_changed")
    assert (changed.actor_label, changed.details) == ("system", {"usable": True})
    # Django re-hashing a password at login saves only the password: not a change of it.
    outsider.set_password("Shell-pass-4Rt8zQ1w")
    outsider.save(update_fields=["password"])
    assert len(events("user.password_changed")) == 1
    recorded = everything_recorded()
    assert old_hash not in recorded and outsider.password not in recorded and "Shell-pass" not in recorded


def test_ensure_admin_promoting_or_resetting_a_user_is_audited_as_the_command(outsider, monkeypatch):
    User.objects.filter(pk=outsider.pk).update(username="admin")
    monkeypatch.setenv("CONSOLE_DEMO_ADMIN_PASSWORD", "Demo-pass-9f3kQ2xv")
    call_command("ensure_admin", username="admin", stdout=io.StringIO())
    (updated,) = events("user.updated")
    assert (updated.actor_label, updated.target_id) == ("cli:ensure_admin", str(outsider.pk))
    assert updated.details["changes"] == {
        "is_staff": {"old": False, "new": True},
        "is_superuser": {"old": False, "new": True},
    }
    (password,) = events("user.password_changed")
    assert password.actor_label == "cli:ensure_admin"
    (joined,) = events("user.groups_changed")
    assert (joined.actor_label, joined.details["added"]) == ("cli:ensure_admin", ["Console admins"])
    assert "Demo-pass-9f3kQ2xv" not in everything_recorded()


def test_a_membership_changed_while_serving_a_request_names_the_signed_in_user(rf, root):
    from console.request_origin import RequestOriginMiddleware

    outsider = User.objects.create_user("olga", "olga@example.com", "pw-olga-123456")
    request = rf.post("/anything/", REMOTE_ADDR="192.0.2.30")
    request.user = root

    def view(request):
        outsider.groups.add(Group.objects.get(name="Console admins"))
        from django.http import HttpResponse

        return HttpResponse()

    RequestOriginMiddleware(view)(request)
    (event,) = events("user.groups_changed")
    assert (event.actor, event.details["ip"]) == (root, "192.0.2.30")


# --- The Access page -----------------------------------------------------------------------


def access_rows(html):
    """{username: {column class: text}} from the Access page."""
    import re

    rows = {}
    for name, body in re.findall(r'<tr class="access-row" data-username="([^"]+)">(.*?)</tr>', html, re.S):
        cells = dict(re.findall(r'<td class="([a-z-]+)">(.*?)</td>', body, re.S))
        rows[name] = {k: v.strip() for k, v in cells.items()}
    return rows


def test_the_access_page_shows_each_users_role_and_state_to_a_reviewer(client, admin_user, reviewer, outsider, root):
    User.objects.filter(pk=admin_user.pk).update(last_login=NOW)
    TOTPDevice.objects.create(user=reviewer, name="phone", confirmed=True)
    TOTPDevice.objects.create(user=outsider, name="unconfirmed", confirmed=False)
    User.objects.create_user("gone", "gone@example.com", "pw-gone-123456", is_staff=True, is_active=False)
    client.force_login(reviewer)
    client.session.save()
    # force_login did not verify rita's new device: sign her in as the login page would.
    client.logout()
    client.force_login(reviewer)
    from django_otp import DEVICE_ID_SESSION_KEY

    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=reviewer).persistent_id
    session.save()

    response = client.get(ACCESS)
    assert response.status_code == 200
    html = response.content.decode()
    rows = access_rows(html)
    assert set(rows) == {"alice", "rita", "oscar", "root", "gone"}
    assert rows["alice"]["roles"] == "console admin"
    assert rows["rita"]["roles"] == "security reviewer"
    assert rows["root"]["roles"] == "superuser"
    assert rows["oscar"]["roles"] == "none"
    assert (rows["alice"]["can-sign-in"], rows["oscar"]["can-sign-in"], rows["gone"]["can-sign-in"]) == (
        "yes",
        "no",
        "no",
    )
    assert (rows["gone"]["active"], rows["gone"]["staff"]) == ("no", "yes")
    assert rows["alice"]["last-login"] == "2026-03-04 05:06 UTC"
    assert rows["oscar"]["last-login"] == "never"
    assert (rows["rita"]["two-factor"], rows["oscar"]["two-factor"], rows["alice"]["two-factor"]) == (
        "enrolled",
        "no",
        "no",
    )
    # Each row links to the audit log of that user, and the link finds it.
    link = f"{AUDIT_LOG}?target_type__exact=user&amp;target_id={admin_user.pk}"
    assert f'<a href="{link}">history</a>' in rows["alice"]["history"]
    AuditEvent.record(reviewer, "user.updated", admin_user)
    history = client.get(AUDIT_LOG, {"target_type__exact": "user", "target_id": admin_user.pk})
    assert [e.target_repr for e in history.context["cl"].result_list] == ["alice"]
    # Read-only: nothing to submit.
    assert 'method="post"' not in html.split('id="content-main"')[1].split("<footer")[0]
    (viewed,) = events("access.viewed")
    assert (viewed.actor, viewed.details) == (reviewer, {"users": 5, "ip": "127.0.0.1"})


def test_the_index_links_the_access_page_for_those_who_may_see_it(client, reviewer, outsider):
    client.force_login(reviewer)
    assert ACCESS in client.get(reverse("admin:index")).content.decode()


def test_the_access_page_takes_the_same_queries_however_many_users(client, reviewer):
    client.force_login(reviewer)

    def queries():
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(ACCESS).status_code == 200
        return len(ctx.captured_queries)

    few = queries()
    reviewers = Group.objects.get(name="Security reviewers")
    for n in range(20):
        user = User.objects.create_user(f"user{n}", f"u{n}@example.com", "pw-user-123456", is_staff=True)
        User.groups.through.objects.create(user=user, group=reviewers)
        TOTPDevice.objects.create(user=user, name="phone", confirmed=n % 2 == 0)
    assert queries() == few


# --- The audit log: read-only, filterable, readable, exportable -----------------------------


def test_the_audit_log_filters_by_actor_action_target_and_date(client, reviewer, admin_user, org):
    with time_machine.travel(NOW, tick=False):
        AuditEvent.record(admin_user, "organization.updated", org)
    with time_machine.travel(NOW + datetime.timedelta(days=40), tick=False):
        AuditEvent.record("cli:add_org", "organization.created", org)
        AuditEvent.record(reviewer, "access.viewed", None)
    client.force_login(reviewer)

    def found(params):
        response = client.get(AUDIT_LOG, params)
        assert response.status_code == 200
        return sorted(e.action for e in response.context["cl"].result_list)

    assert found({"actor_label": "alice"}) == ["organization.updated"]
    assert found({"actor_label": "cli:add_org"}) == ["organization.created"]
    assert found({"action__exact": "access.viewed"}) == ["access.viewed"]
    assert found({"target_type__exact": "organization"}) == ["organization.created", "organization.updated"]
    assert found({"at__year": "2026", "at__month": "3"}) == ["organization.updated"]
    assert found({"target_type__exact": "organization", "target_id": str(org.pk), "actor_label": "alice"}) == [
        "organization.updated"
    ]


def test_the_audit_log_shows_details_as_text(client, reviewer, org):
    AuditEvent.record(reviewer, "organization.updated", org, changes={"name": {"old": "Acme", "new": "Acme Inc"}})
    client.force_login(reviewer)
    html = client.get(AUDIT_LOG).content.decode()
    assert "name: Acme → Acme Inc" in html
    assert details_text({"changes": {"owner": {"old": "", "new": "ml"}}, "ip": "10.0.0.1"}) == (
        "owner: (empty) → ml; ip: 10.0.0.1"
    )


def read_csv(response):
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-log-')
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_csv_export_holds_what_the_filters_select_and_is_audited(client, reviewer, admin_user, org):
    with time_machine.travel(NOW, tick=False):
        AuditEvent.record(admin_user, "organization.updated", org, changes={"slug": {"old": "a", "new": "b"}})
        AuditEvent.record(admin_user, "organization.created", org)
    AuditEvent.record(reviewer, "access.viewed", None)
    client.force_login(reviewer)

    rows = read_csv(client.get(EXPORT, {"actor_label": "alice", "action__exact": "organization.updated"}))
    assert rows == [
        {
            "at": NOW.isoformat(),
            "actor": "alice",
            "action": "organization.updated",
            "target_type": "organization",
            "target_id": str(org.pk),
            "target": "Acme",
            "ip": "",
            "details": "slug: a → b",
            "details_json": '{"changes": {"slug": {"new": "b", "old": "a"}}}',
        }
    ]
    (exported,) = events("audit.exported")
    assert exported.actor == reviewer
    assert exported.details == {
        "format": "csv",
        "filters": {"actor_label": "alice", "action__exact": "organization.updated"},
        "rows": 1,
        "ip": "127.0.0.1",
    }

    # Unfiltered: every event up to the export, not the export's own record.
    everything = read_csv(client.get(EXPORT))
    assert len(everything) == AuditEvent.objects.count() - 1
    assert events("audit.exported")[-1].details["rows"] == len(everything)
    assert everything[0]["action"] == "audit.exported"  # the first export, newest first


def test_the_export_link_carries_the_current_filters(client, reviewer):
    client.force_login(reviewer)
    html = client.get(AUDIT_LOG, {"action__exact": "auth.login"}).content.decode()
    assert f'href="{EXPORT}?action__exact=auth.login"' in html


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(client, reviewer):
    AuditEvent.record("=cmd|' /C calc'!A0", "+evil", None, note="@SUM(1+1)", other="-2+3")
    AuditEvent.record("\tTAB", "ok.action", None)
    client.force_login(reviewer)
    rows = read_csv(client.get(EXPORT, {"action__exact": "+evil"}))
    assert rows[0]["actor"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["action"] == "'+evil"
    assert rows[0]["details"] == "note: @SUM(1+1); other: -2+3"  # starts with n: harmless
    rows = read_csv(client.get(EXPORT, {"action__exact": "ok.action"}))
    assert rows[0]["actor"] == "'\tTAB"
    for value in ("=1", "+1", "-1", "@x", "\t1", "\r1"):
        assert safe_cell(value) == "'" + value
    assert safe_cell("plain") == "plain" and safe_cell(None) == ""


def test_a_key_shaped_search_is_not_exported_nor_recorded(client, reviewer):
    canary = formats.generate(formats.PROJECT)
    client.force_login(reviewer)
    response = client.get(EXPORT, {"q": canary})
    assert response.status_code == 302
    assert events("audit.exported") == []
    assert_canary_absent(canary, everything_recorded())


# --- No secret anywhere -------------------------------------------------------------------


def assert_canary_absent(canary, text):
    body = canary.removeprefix("sk-proj-")
    assert canary not in text
    assert not [body[i : i + 12] for i in range(0, len(body) - 12, 6) if body[i : i + 12] in text]


def test_the_canary_is_in_no_audit_event_export_or_page_after_every_flow(client, admin_user, reviewer, root, project):
    from .test_canary import key_form

    canary = formats.generate(formats.PROJECT)
    client.force_login(admin_user)
    assert client.post(reverse("admin:keys_apikey_add"), key_form(canary, project)).status_code == 302

    client.force_login(reviewer)  # refused: the secret in the body, the path and the query
    assert client.post(reverse("admin:keys_apikey_add") + f"?q={canary}", key_form(canary, project)).status_code == 403
    assert client.post(f"/admin/keys/apikey/{canary}/change/", {"secret": canary}).status_code == 403
    pages = [client.get(ACCESS).content.decode(), client.get(AUDIT_LOG).content.decode()]
    export = b"".join(client.get(EXPORT).streaming_content).decode()

    client.force_login(root)  # access changes, in and out of the admin
    url = reverse("admin:auth_user_change", args=[reviewer.pk])
    assert client.post(url, user_change_data(reviewer, is_superuser=True, groups=[])).status_code == 302
    assert client.post(reverse("admin:auth_group_add"), {"name": "Canary group"}).status_code == 302
    reviewer.groups.add(Group.objects.get(name="Canary group"))

    actions = {e.action for e in AuditEvent.objects.all()}
    assert {"key.created", "access.denied", "access.viewed", "audit.exported", "user.updated"} <= actions
    assert {"user.groups_changed", "group.created"} <= actions
    assert_canary_absent(canary, everything_recorded())
    assert_canary_absent(canary, export)
    for page in pages:
        assert_canary_absent(canary, page)


# --- The role matrix of the URLs added here ---------------------------------------------------

ROLES = ["admin", "reviewer", "superuser", "outsider", "anonymous"]


@pytest.fixture
def as_role(client, admin_user, reviewer, outsider, root):
    users = {"admin": admin_user, "reviewer": reviewer, "superuser": root, "outsider": outsider}

    def login(role):
        if role in users:
            client.force_login(users[role])
        return client

    return login


def world_state():
    """Everything the requests below could change: users, groups, memberships, permissions."""
    return {
        "users": sorted(map(repr, User.objects.order_by("pk").values())),
        "groups": sorted(map(repr, Group.objects.order_by("pk").values())),
        "members": sorted(User.groups.through.objects.values_list("user_id", "group_id")),
        "user_perms": sorted(User.user_permissions.through.objects.values_list("user_id", "permission_id")),
        "group_perms": sorted(Group.permissions.through.objects.values_list("group_id", "permission_id")),
    }


def new_events(since):
    return list(AuditEvent.objects.filter(pk__gt=since).order_by("pk"))


def last_id():
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


USER_PAGES = ["user-changelist", "user-add", "user-change", "user-password", "user-delete", "group-changelist"]
USER_PAGES += ["group-add", "group-change", "group-delete"]


def user_page_url(page, target, group):
    kind, view = page.split("-")
    if view in ("changelist", "add"):
        return reverse(f"admin:auth_{kind}_{view}")
    if view == "password":
        return reverse("admin:auth_user_password_change", args=[target.pk])
    return reverse(f"admin:auth_{kind}_{view}", args=[(target if kind == "user" else group).pk])


def user_page_post(page, target, group):
    """A POST that would change something if allowed."""
    if page == "user-add":
        password = "Made-pass-8Hq2mZ"
        return {"username": "made", "usable_password": "true", "password1": password, "password2": password}
    if page == "user-change":
        return user_change_data(target, is_superuser=True)
    if page == "user-password":
        return {"usable_password": "true", "password1": "Made-pass-8Hq2mZ", "password2": "Made-pass-8Hq2mZ"}
    if page in ("user-delete", "group-delete"):
        return {"post": "yes"}
    if page == "group-add":
        return {"name": "Made group"}
    if page == "group-change":
        return {"name": "Renamed", "permissions": []}
    return {"action": "delete_selected", "_selected_action": [target.pk if "user" in page else group.pk], "post": "yes"}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("page", USER_PAGES)
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix_user_and_group_admin(as_role, role, page, method):
    client = as_role(role)
    target = User.objects.create_user("target", "t@example.com", "pw-target-123456")
    group = Group.objects.create(name="Target group")
    url = user_page_url(page, target, group)
    before, since = world_state(), last_id()
    if method == "GET":
        response = client.get(url)
    else:
        response = client.post(url, user_page_post(page, target, group))

    if role in ("outsider", "anonymous"):
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
        assert world_state() == before and new_events(since) == []
    elif role in ("admin", "reviewer"):
        # Only superusers manage accounts; reviewers see them on the Access page.
        assert response.status_code == 403
        assert world_state() == before
        (denied,) = new_events(since)
        assert (denied.action, denied.actor_label, denied.details["method"], denied.details["path"]) == (
            "access.denied",
            {"admin": "alice", "reviewer": "rita"}[role],
            method,
            url,
        )
    elif method == "GET":
        assert response.status_code == 200
        assert world_state() == before and new_events(since) == []
    else:
        assert response.status_code == 302, response.content.decode()[:2000]
        assert world_state() != before
        made = new_events(since)
        assert made and all(e.actor_label == "root" and e.details["ip"] == "127.0.0.1" for e in made)
        expected = {
            "user-add": "user.created",
            "user-change": "user.updated",
            "user-password": "user.password_changed",
            "user-delete": "user.deleted",
            "user-changelist": "user.deleted",
            "group-add": "group.created",
            "group-change": "group.updated",
            "group-delete": "group.deleted",
            "group-changelist": "group.deleted",
        }[page]
        assert expected in [e.action for e in made]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("page", ["access", "export"])
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix_access_page_and_export(as_role, role, page, method):
    client = as_role(role)
    url = {"access": ACCESS, "export": EXPORT}[page]
    before, since = world_state(), last_id()
    response = client.get(url) if method == "GET" else client.post(url, {"action": "anything", "name": "x"})
    assert world_state() == before  # nobody changes anything here
    made = new_events(since)
    if role in ("outsider", "anonymous"):
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
        assert made == []
    elif method == "POST":
        assert response.status_code == 405
        assert made == []
    else:
        assert response.status_code == 200
        (event,) = made
        assert event.action == {"access": "access.viewed", "export": "audit.exported"}[page]
        assert event.actor_label == {"admin": "alice", "reviewer": "rita", "superuser": "root"}[role]


# --- Other packages' admins: two-factor devices and login lockouts --------------------------


def test_deleting_someones_two_factor_device_in_the_admin_is_audited(root_client, root, admin_user):
    device = TOTPDevice.objects.create(user=admin_user, name="phone", confirmed=True)
    url = reverse("admin:otp_totp_totpdevice_delete", args=[device.pk])
    assert root_client.post(url, {"post": "yes"}).status_code == 302
    assert not TOTPDevice.objects.exists()
    (event,) = events("totpdevice.deleted")
    assert (event.actor, event.target_type, event.target_id) == (root, "totpdevice", str(device.pk))
    assert event.details == {"ip": "127.0.0.1"}


def test_a_two_factor_device_change_records_field_names_never_the_seed(root_client, root, admin_user):
    device = TOTPDevice.objects.create(user=admin_user, name="phone", confirmed=True)
    old_seed = device.key
    new_seed = "ab" * 20
    url = reverse("admin:otp_totp_totpdevice_change", args=[device.pk])
    page = root_client.get(url)
    data = {
        k: v
        for k, v in page.context["adminform"].form.initial.items()
        if v is not None and not isinstance(v, (list, tuple)) and k != "last_used_at" and k != "created_at"
    }
    data.update({"user": admin_user.pk, "name": "new phone", "key": new_seed, "confirmed": "on"})
    response = root_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    device.refresh_from_db()
    assert device.name == "new phone"
    (event,) = events("totpdevice.updated")
    assert event.actor == root
    assert "name" in event.details["fields"]
    recorded = everything_recorded()
    assert old_seed not in recorded and new_seed not in recorded and device.key not in recorded


def test_unlocking_a_locked_out_login_in_the_admin_is_audited(root_client, root):
    from axes.models import AccessAttempt

    attempt = AccessAttempt.objects.create(
        username="alice", ip_address="192.0.2.50", user_agent="x", failures_since_start=5
    )
    response = root_client.post(
        reverse("admin:axes_accessattempt_changelist"),
        {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    (event,) = events("accessattempt.deleted")
    assert (event.actor, event.target_id) == (root, str(attempt.pk))


def test_an_admin_action_of_another_package_is_audited(rf, root):
    # Called as the changelist calls it: django-axes' own "clean up" action needs a request
    # attribute only its login handling sets (from the admin page it fails upstream).
    from axes.models import AccessAttempt
    from django.contrib import admin
    from django.utils.timezone import now

    attempt = AccessAttempt.objects.create(
        username="alice", ip_address="192.0.2.51", user_agent="x", failures_since_start=1
    )
    request = rf.post("/", REMOTE_ADDR="192.0.2.52")
    request.user, request.axes_attempt_time = root, now()
    request._messages = type("Messages", (), {"add": lambda *a, **k: None})()
    model_admin = admin.site._registry[AccessAttempt]
    function, _, _ = model_admin.get_actions(request)["cleanup_expired_attempts"]
    function(model_admin, request, AccessAttempt.objects.all())
    (event,) = events("accessattempt.action")
    assert (event.actor, event.details["admin_action"], event.details["ids"]) == (
        root,
        "cleanup_expired_attempts",
        [str(attempt.pk)],
    )


@pytest.mark.parametrize("role", ["admin", "reviewer"])
@pytest.mark.parametrize(
    "url_name",
    [
        "admin:otp_totp_totpdevice_changelist",
        "admin:otp_static_staticdevice_changelist",
        "admin:axes_accessattempt_changelist",
        "admin:axes_accesslog_changelist",
        "admin:axes_accessfailurelog_changelist",
    ],
)
def test_role_matrix_other_packages_admins_are_for_superusers_only(as_role, role, url_name):
    client = as_role(role)
    since = last_id()
    url = reverse(url_name)
    assert client.get(url).status_code == 403
    (denied,) = new_events(since)
    assert (denied.action, denied.details["path"]) == ("access.denied", url)
    assert as_role("superuser").get(url).status_code == 200


# --- Probe now ----------------------------------------------------------------------------------


def test_probe_now_records_one_event_per_key_it_queued(client, admin_user, make_key):
    from django.utils import timezone

    active, _ = make_key()
    revoked, _ = make_key(revoked_at=timezone.now())
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:keys_apikey_changelist"),
        {"action": "probe_selected", "_selected_action": [str(active.pk), str(revoked.pk)], "index": "0"},
        REMOTE_ADDR="192.0.2.60",
    )
    assert response.status_code == 302
    (event,) = events("key.probe_requested")
    assert (event.actor, event.target_type, event.target_id) == (admin_user, "apikey", str(active.pk))
    assert event.details == {"hint": active.hint, "queued": True, "ip": "192.0.2.60"}
