"""The rotation workflow (issue 9 §2) against the sandbox API over real HTTP: Rotate (the new
secret probed first, counted at the sandbox; the old one superseded and working until its
grace ends), a failing or duplicate secret changing nothing, Revoke with and without the
upstream delete, the grace-end retirement (in-process here; through a real worker in
test_rotation_worker.py), superuser-only deletion, and who may do what, by effect."""

import html
import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from console.upstream import Outcome
from keys import formats, rotation
from keys.models import ApiKey, KeyAction, KeyEvent, Kind, ProbeResult, SupersededSecret

pytestmark = pytest.mark.django_db

OLD_ID = "key_RotOld00000001"


def text(response):
    return html.unescape(response.content.decode())


def rotate_url(key):
    return reverse("admin:keys_apikey_rotate", args=[key.pk])


def revoke_url(key):
    return reverse("admin:keys_apikey_revoke", args=[key.pk])


def change_url(key):
    return reverse("admin:keys_apikey_change", args=[key.pk])


@pytest.fixture
def live(sandbox, settings, org, project, make_key):
    """A project key whose secret is live at the sandbox (and upstream id OLD_ID); returns
    (key, secret)."""
    settings.OPENAI_BASE_URL = sandbox.openai_url
    key, secret = make_key(name="Chatbot prod", upstream_key_id=OLD_ID, owner="web team")
    sandbox.register(secret, project=project.openai_project_id, organization=org.openai_org_id)
    return key, secret


@pytest.fixture
def upstream_org(sandbox, org, project, live, make_key):
    """The organization's admin key, registered in the console and at the sandbox, and the
    sandbox's Administration API seeded with the live key as a user's project key.
    Returns the admin key."""
    key, secret = live
    admin, admin_secret = make_key(fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name="Org admin")
    sandbox.register(admin_secret, organization=org.openai_org_id)
    sandbox.seed_admin(
        org.openai_org_id,
        users=[{"id": "user_owner", "name": "Olga", "email": "olga@example.com", "role": "owner"}],
        projects=[
            {
                "id": project.openai_project_id,
                "name": project.name,
                "users": [{"id": "user_owner", "role": "owner"}],
                "api_keys": [{"id": OLD_ID, "name": "prod", "owner": {"user": "user_owner"}, "key": secret}],
            }
        ],
        admin_keys=[{"id": "key_RotAdmin0000001", "name": "Main", "key": admin_secret, "owner": "user_owner"}],
    )
    return admin


def new_live_secret(sandbox, project, org, fmt=formats.PROJECT):
    secret = formats.generate(fmt)
    sandbox.register(secret, project=project.openai_project_id, organization=org.openai_org_id)
    return secret


def probe_status(sandbox, secret):
    """What the sandbox answers this secret on the models list (a caller's view)."""
    import httpx2

    return httpx2.get(sandbox.openai_url + "/models", headers={"Authorization": f"Bearer {secret}"}).status_code


def key_state(key):
    return ApiKey.objects.filter(pk=key.pk).values().get()


def everything_stored():
    """Every text the console stored about keys: rows, events, audit details."""
    parts = []
    for model in (ApiKey, KeyEvent, SupersededSecret, ProbeResult, AuditEvent):
        for row in model.objects.values():
            parts.extend(str(v) for v in row.values() if not isinstance(v, (bytes, memoryview)))
    return "\n".join(parts)


def assert_no_secret(secret, *texts):
    for text in texts:
        for fragment in (secret, secret[8:40], secret[-20:]):
            assert fragment not in text


# --- Rotate ---------------------------------------------------------------------------


def test_rotating_probes_the_new_secret_first_then_supersedes_the_old_one(
    admin_client, admin_user, sandbox, org, project, live, caplog
):
    caplog.set_level(logging.DEBUG)
    key, old = live
    new = new_live_secret(sandbox, project, org)
    before = timezone.now()
    page = admin_client.get(rotate_url(key)).content.decode()
    assert 'type="password"' in page and "csrfmiddlewaretoken" in page
    response = admin_client.post(rotate_url(key), {"secret": new, "upstream_key_id": "key_RotNew00000001"}, follow=True)
    assert response.redirect_chain[-1][0] == change_url(key)
    shown = text(response)
    assert "Rotated" in shown and formats.hint(new) in shown and formats.hint(old) in shown

    # The new secret was probed once, at the sandbox, before it went in.
    assert sandbox.stats()["per_key"].get(formats.hint(new)) == 1
    key.refresh_from_db()
    assert key.hint == formats.hint(new) and key.reveal_secret() == new
    assert key.upstream_key_id == "key_RotNew00000001"
    assert key.rotated_at >= before and key.rotated_by == admin_user.username
    assert key.last_probe_outcome == Outcome.OK
    (result,) = ProbeResult.objects.filter(key=key)
    assert result.secret_hint == formats.hint(new) and result.outcome == Outcome.OK

    # The old secret: superseded, still encrypted, in grace for ROTATION_GRACE_HOURS.
    (superseded,) = SupersededSecret.objects.filter(key=key)
    assert superseded.hint == formats.hint(old) and superseded.upstream_key_id == OLD_ID
    assert superseded.grace_until == key.rotated_at + timedelta(hours=24)
    assert superseded.revoked_at is None and superseded.secret_ciphertext is not None
    # Both work for callers during the grace.
    assert probe_status(sandbox, old) == 200 and probe_status(sandbox, new) == 200

    (event,) = KeyEvent.objects.filter(key=key, action=KeyAction.ROTATED)
    assert (event.old_hint, event.new_hint, event.actor, event.grace_until) == (
        formats.hint(old),
        formats.hint(new),
        admin_user,
        superseded.grace_until,
    )
    (audit,) = AuditEvent.objects.filter(action="key.rotated")
    assert audit.details["old_hint"] == formats.hint(old) and audit.details["new_hint"] == formats.hint(new)
    assert audit.actor == admin_user

    # The key's page shows its history: the rotation, and the superseded secret's grace end.
    key_page = text(admin_client.get(change_url(key)))
    assert "Rotated" in key_page and f"{formats.hint(old)} → {formats.hint(new)}" in key_page
    assert f"works until {superseded.grace_until:%Y-%m-%d %H:%M}" in key_page
    pages = shown + key_page + page
    for secret in (old, new):
        assert_no_secret(secret, pages, everything_stored(), caplog.text)


def test_a_new_secret_that_fails_its_probe_changes_nothing_and_says_why(admin_client, sandbox, live, caplog):
    key, old = live
    unknown = formats.generate(formats.PROJECT)  # never registered: the sandbox answers 401
    before = key_state(key)
    total = sandbox.stats()["total"]
    response = admin_client.post(rotate_url(key), {"secret": unknown})
    assert response.status_code == 200
    page = text(response)
    assert "Nothing was changed" in page and "Invalid key" in page
    assert sandbox.stats()["total"] == total + 1  # it was probed, once
    assert key_state(key) == before
    assert not SupersededSecret.objects.exists()
    assert not KeyEvent.objects.filter(action=KeyAction.ROTATED).exists()
    assert not ProbeResult.objects.exists()
    (refused,) = AuditEvent.objects.filter(action="key.rotation_refused")
    assert refused.details["outcome"] == Outcome.INVALID_KEY and refused.details["new_hint"] == formats.hint(unknown)
    assert_no_secret(unknown, page, everything_stored(), caplog.text)


def test_a_secret_registered_elsewhere_or_superseded_elsewhere_is_refused_unprobed(
    admin_client, sandbox, org, project, live, make_key
):
    key, _ = live
    other, other_secret = make_key(name="Other key")
    total = sandbox.stats()["total"]
    response = admin_client.post(rotate_url(key), {"secret": other_secret})
    assert "already registered as “Other key”" in text(response)

    # A secret another key was rotated away from is refused too (its superseded row).
    newer = new_live_secret(sandbox, project, org)
    sandbox.register(other_secret, project=project.openai_project_id, organization=org.openai_org_id)
    rotation.rotate(other, newer, "test")
    total = sandbox.stats()["total"]
    response = admin_client.post(rotate_url(key), {"secret": other_secret})
    assert "earlier secret of the key “Other key”" in text(response)
    # … and the key's own current secret.
    response = admin_client.post(rotate_url(key), {"secret": live[1]})
    assert "the key's current secret" in text(response)
    assert sandbox.stats()["total"] == total  # none of these was sent anywhere
    assert ApiKey.objects.get(pk=key.pk).hint == key.hint
    assert SupersededSecret.objects.filter(key=key).count() == 0
    # Registering it again as a new key is refused as well.
    with pytest.raises(Exception, match="earlier secret"):
        fresh = ApiKey(organization=org, project=project, name="again")
        fresh.set_secret(other_secret)
        fresh.validate_unique()


def test_a_revoked_key_cannot_be_rotated_nor_get_a_new_secret_on_its_page(admin_client, sandbox, org, project, live):
    key, _ = live
    rotation.revoke(key, "test", "compromised")
    new = new_live_secret(sandbox, project, org)
    total = sandbox.stats()["total"]
    before = key_state(key)
    response = admin_client.get(rotate_url(key), follow=True)
    assert "can no longer be replaced" in text(response)
    admin_client.post(rotate_url(key), {"secret": new})
    from tests.test_admin import key_change_data

    key.refresh_from_db()
    response = admin_client.post(change_url(key), key_change_data(key, secret=new))
    assert response.status_code == 200 and "can no longer be replaced" in text(response)
    assert key_state(key) == before and sandbox.stats()["total"] == total
    with pytest.raises(rotation.RotationRefused):
        rotation.rotate(key, new, "test")
    # No Rotate/Revoke buttons on a revoked key.
    page = admin_client.get(change_url(key)).content.decode()
    assert rotate_url(key) not in page and revoke_url(key) not in page


def test_rotating_twice_with_the_same_secret_is_harmless(admin_client, sandbox, org, project, live):
    key, _ = live
    new = new_live_secret(sandbox, project, org)
    admin_client.post(rotate_url(key), {"secret": new})
    response = admin_client.post(rotate_url(key), {"secret": new})  # a double submit
    assert "current secret" in text(response)
    assert SupersededSecret.objects.filter(key=key).count() == 1
    assert KeyEvent.objects.filter(key=key, action=KeyAction.ROTATED).count() == 1
    assert sandbox.stats()["per_key"][formats.hint(new)] == 1


# --- Registration starts the history ----------------------------------------------------


def test_registering_a_key_writes_its_first_history_row(admin_client, admin_user, project):
    from tests.test_admin import key_data

    secret = formats.generate(formats.PROJECT)
    response = admin_client.post(reverse("admin:keys_apikey_add"), key_data(secret, project=project.pk))
    assert response.status_code == 302
    key = ApiKey.objects.get()
    (event,) = KeyEvent.objects.filter(key=key)
    assert (event.action, event.new_hint, event.actor, event.old_hint) == (
        KeyAction.REGISTERED,
        formats.hint(secret),
        admin_user,
        "",
    )


def test_the_same_secret_pasted_again_for_a_new_destination_is_not_a_rotation(admin_client, live):
    from tests.test_admin import key_change_data

    key, secret = live
    moved = key_change_data(key, secret=secret, base_url="http://127.0.0.1:9/v1")
    assert admin_client.post(change_url(key), moved).status_code == 302
    key.refresh_from_db()
    assert key.base_url == "http://127.0.0.1:9/v1"
    assert key.rotated_at is None  # the rotation clock does not restart
    assert not KeyEvent.objects.filter(key=key, action=KeyAction.ROTATED).exists()


def test_a_secret_replaced_on_the_key_page_is_in_the_history_too(admin_client, admin_user, live):
    from tests.test_admin import key_change_data

    key, old = live
    new = formats.generate(formats.PROJECT)
    # A new secret is accepted on the key page only with a new destination.
    moved = key_change_data(key, secret=new, base_url="http://127.0.0.1:9/v1")
    response = admin_client.post(change_url(key), moved)
    assert response.status_code == 302
    key.refresh_from_db()
    (event,) = KeyEvent.objects.filter(key=key, action=KeyAction.ROTATED)
    assert (event.old_hint, event.new_hint, event.actor, event.at) == (
        formats.hint(old),
        formats.hint(new),
        admin_user,
        key.rotated_at,
    )


# --- Grace end (in-process; the worker and crash tests are in test_rotation_worker.py) ---


def test_grace_end_deletes_the_old_key_upstream_revokes_and_wipes_it_once(sandbox, org, project, live, upstream_org):
    key, old = live
    new = new_live_secret(sandbox, project, org)
    done = rotation.rotate(key, new, "test")
    assert rotation.end_grace_periods(now=done.grace_until - timedelta(seconds=1)) == {}  # still in grace
    assert probe_status(sandbox, old) == 200
    later = done.grace_until + timedelta(seconds=1)
    assert rotation.end_grace_periods(now=later) == {"revoked": 1}
    assert rotation.end_grace_periods(now=later + timedelta(hours=1)) == {}  # a second run: nothing
    assert rotation.end_grace(done.superseded.pk, now=later) == "busy"  # a redelivered task: nothing

    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls[f"DELETE /v1/organization/projects/{project.openai_project_id}/api_keys/{OLD_ID}"] == 1
    assert probe_status(sandbox, old) == 401 and probe_status(sandbox, new) == 200
    row = SupersededSecret.objects.get(pk=done.superseded.pk)
    assert row.revoked_at == later and row.deleted_upstream_at is not None
    assert row.secret_ciphertext is None and row.secret_key_version is None
    (event,) = KeyEvent.objects.filter(key=key, action=KeyAction.SUPERSEDED_REVOKED)
    assert event.old_hint == formats.hint(old) and "deleted upstream" in event.reason
    (audit,) = AuditEvent.objects.filter(action="key.superseded_revoked")
    assert audit.details["deleted_upstream"] is True and audit.details["old_hint"] == formats.hint(old)
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None  # the key itself lives on


def test_grace_end_without_an_admin_key_revokes_locally_and_says_so(sandbox, org, project, live):
    key, old = live
    done = rotation.rotate(key, new_live_secret(sandbox, project, org), "test")
    assert rotation.end_grace_periods(now=done.grace_until) == {"revoked": 1}
    row = SupersededSecret.objects.get(pk=done.superseded.pk)
    assert row.revoked_at and row.secret_ciphertext is None and row.deleted_upstream_at is None
    assert "no active admin key" in row.upstream_note
    assert probe_status(sandbox, old) == 200  # nobody could delete it upstream
    assert AuditEvent.objects.get(action="key.superseded_revoked").details["deleted_upstream"] is False


def test_after_a_crash_between_the_delete_and_the_local_update_it_asks_before_deleting_again(
    sandbox, org, project, live, upstream_org
):
    key, old = live
    done = rotation.rotate(key, new_live_secret(sandbox, project, org), "test")
    later = done.grace_until
    # A first run claimed the row, marked the DELETE as sent, sent it — and died.
    lease = later + timedelta(seconds=rotation.claim_seconds())
    SupersededSecret.objects.filter(pk=done.superseded.pk).update(claimed_until=lease, upstream_delete_sent_at=later)
    what, _ = rotation.upstream_keys.where_to_delete(key.kind, project.openai_project_id, OLD_ID)
    assert rotation.upstream_keys.delete(upstream_org, what, project.openai_project_id).outcome == Outcome.OK
    # Until its claim expires, nobody else touches the row.
    assert rotation.end_grace(done.superseded.pk, now=later + timedelta(seconds=1)) == "busy"
    assert rotation.end_grace(done.superseded.pk, now=lease) == "revoked"
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    path = f"/v1/organization/projects/{project.openai_project_id}/api_keys/{OLD_ID}"
    assert calls[f"DELETE {path}"] == 1 and calls[f"GET {path}"] == 1
    assert SupersededSecret.objects.get(pk=done.superseded.pk).deleted_upstream_at is not None


def test_a_passing_upstream_failure_keeps_the_row_for_the_next_run(sandbox, org, project, live, upstream_org):
    key, old = live
    done = rotation.rotate(key, new_live_secret(sandbox, project, org), "test")
    path = f"/v1/organization/projects/{project.openai_project_id}/api_keys/{OLD_ID}"
    sandbox.seed_admin(
        org.openai_org_id, replace=False, faults=[{"path": path, "method": "DELETE", "fault": "server_error"}]
    )
    assert rotation.end_grace_periods(now=done.grace_until) == {"retry": 1}
    row = SupersededSecret.objects.get(pk=done.superseded.pk)
    assert row.revoked_at is None and row.claimed_until is None and "Server error" in row.upstream_note
    assert rotation.end_grace_periods(now=done.grace_until) == {"revoked": 1}
    assert probe_status(sandbox, old) == 401


# --- Revoke ---------------------------------------------------------------------------


def test_revoke_needs_a_reason_and_then_takes_effect_at_once(admin_client, admin_user, sandbox, live):
    key, old = live
    key.make_due()
    ApiKey.objects.filter(pk=key.pk).update(last_probe_outcome=Outcome.INVALID_KEY, consecutive_failures=3)
    page = admin_client.get(revoke_url(key)).content.decode()
    assert "reason" in page and "delete_upstream" not in page  # no admin key: no upstream delete offered
    assert "no active admin key" in page
    response = admin_client.post(revoke_url(key), {"reason": ""})
    assert response.status_code == 200 and ApiKey.objects.get(pk=key.pk).revoked_at is None
    response = admin_client.post(revoke_url(key), {"reason": "Laptop stolen"}, follow=True)
    assert "Revoked in the console" in text(response)
    key.refresh_from_db()
    assert key.revoked_at is not None and key.next_probe_at is None
    assert not key.is_probe_failing()
    assert not ApiKey.objects.due_for_probe(timezone.now()).filter(pk=key.pk).exists()
    (event,) = KeyEvent.objects.filter(key=key, action=KeyAction.REVOKED)
    assert event.reason == "Laptop stolen" and event.actor == admin_user
    (audit,) = AuditEvent.objects.filter(action="key.revoked")
    assert audit.details["reason"] == "Laptop stolen" and audit.details["deleted_upstream"] is False
    assert probe_status(sandbox, old) == 200  # not deleted upstream
    # Revoking again changes nothing.
    admin_client.post(revoke_url(key), {"reason": "again"})
    assert KeyEvent.objects.filter(key=key, action=KeyAction.REVOKED).count() == 1


def test_revoke_with_the_upstream_delete_deletes_it_there_and_says_so(
    admin_client, sandbox, org, project, live, upstream_org
):
    key, old = live
    page = admin_client.get(revoke_url(key)).content.decode()
    assert 'name="delete_upstream"' in page
    response = admin_client.post(revoke_url(key), {"reason": "Leaked", "delete_upstream": "on"}, follow=True)
    assert "Revoked, and deleted upstream." in text(response)
    assert probe_status(sandbox, old) == 401
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls[f"DELETE /v1/organization/projects/{project.openai_project_id}/api_keys/{OLD_ID}"] == 1
    key.refresh_from_db()
    assert key.revoked_at and key.deleted_upstream_at
    assert AuditEvent.objects.get(action="key.revoked").details["deleted_upstream"] is True


def test_revoking_a_key_in_grace_ends_its_superseded_secrets_grace_now(sandbox, org, project, live):
    key, _ = live
    done = rotation.rotate(key, new_live_secret(sandbox, project, org), "test")
    rotation.revoke(key, "test", "decommissioned")
    row = SupersededSecret.objects.get(pk=done.superseded.pk)
    assert row.grace_until <= timezone.now()
    assert rotation.end_grace_periods() == {"revoked": 1}


def test_the_bulk_revoke_action_writes_the_same_history(admin_client, live):
    key, _ = live
    response = admin_client.post(
        reverse("admin:keys_apikey_changelist"), {"action": "revoke_selected", "_selected_action": [key.pk]}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at and key.next_probe_at is None
    assert KeyEvent.objects.filter(key=key, action=KeyAction.REVOKED).count() == 1


# --- Deleting: superusers only, behind a confirmation that names what goes with it ------


def test_only_superusers_delete_keys_and_the_confirmation_names_what_goes_with_it(
    client, admin_user, sandbox, org, project, live
):
    key, _ = live
    rotation.rotate(key, new_live_secret(sandbox, project, org), "test")  # a probe result, events, a superseded row
    client.force_login(admin_user)
    page = client.get(change_url(key)).content.decode()
    assert reverse("admin:keys_apikey_delete", args=[key.pk]) not in page  # no delete link
    assert client.get(reverse("admin:keys_apikey_delete", args=[key.pk])).status_code == 403
    assert client.post(reverse("admin:keys_apikey_delete", args=[key.pk]), {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()

    from usage.models import UsageBucket

    day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    UsageBucket.objects.create(
        organization=org,
        project=project,
        key=key,
        endpoint="completions",
        start_time=day,
        end_time=day + timedelta(days=1),
        model="gpt-4o-mini",
        num_model_requests=1,
    )
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-123456"))
    page = client.get(reverse("admin:keys_apikey_delete", args=[key.pk])).content.decode()
    for named in ("Probe result", "Key event", "Superseded secret", "unlinked-objects"):
        assert named in page
    response = client.post(reverse("admin:keys_apikey_delete", args=[key.pk]), {"post": "yes"})
    assert response.status_code == 302 and not ApiKey.objects.filter(pk=key.pk).exists()
    assert UsageBucket.objects.get().key_id is None
    (audit,) = AuditEvent.objects.filter(action="key.deleted")
    assert audit.actor_label == "root" and audit.details["hint"]


# --- Who may do what (effects, not only status codes) -----------------------------------


@pytest.mark.parametrize("action", ["rotate", "revoke"])
def test_a_reviewer_sees_no_buttons_and_a_post_changes_nothing(reviewer_client, sandbox, org, project, live, action):
    key, _ = live
    page = reviewer_client.get(change_url(key)).content.decode()
    assert rotate_url(key) not in page and revoke_url(key) not in page
    url = rotate_url(key) if action == "rotate" else revoke_url(key)
    assert reviewer_client.get(url).status_code == 403
    before, total = key_state(key), sandbox.stats()["total"]
    data = {"secret": new_live_secret(sandbox, project, org)} if action == "rotate" else {"reason": "x"}
    assert reviewer_client.post(url, data).status_code == 403
    assert key_state(key) == before and sandbox.stats()["total"] == total
    assert not KeyEvent.objects.exclude(action=KeyAction.REGISTERED).exists()
    assert not SupersededSecret.objects.exists()


@pytest.mark.parametrize("who", ["anonymous", "outsider"])
@pytest.mark.parametrize("action", ["rotate", "revoke"])
def test_anonymous_and_non_staff_get_the_login_page(client, outsider, sandbox, org, project, live, who, action):
    key, _ = live
    if who == "outsider":
        client.force_login(outsider)
    url = rotate_url(key) if action == "rotate" else revoke_url(key)
    before = key_state(key)
    for response in (client.get(url), client.post(url, {"secret": "x", "reason": "x"})):
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    assert key_state(key) == before


def test_console_admins_see_the_buttons_on_an_active_key(admin_client, live):
    key, _ = live
    page = admin_client.get(change_url(key)).content.decode()
    assert rotate_url(key) in page and revoke_url(key) in page


# --- Rotate via API -------------------------------------------------------------------

SVC_OLD = "svc_acct_RotOld000001"


@pytest.fixture
def service_key(sandbox, settings, org, project, make_key, live, upstream_org):
    """A service-account key whose service account exists upstream; returns (key, secret)."""
    key, secret = make_key(
        fmt=formats.SERVICE_ACCOUNT, kind=Kind.SERVICE_ACCOUNT, name="CI bot", upstream_key_id=SVC_OLD
    )
    sandbox.register(secret, project=project.openai_project_id, organization=org.openai_org_id)
    sandbox.seed_admin(
        org.openai_org_id,
        replace=False,
        projects=[
            {
                "id": project.openai_project_id,
                "name": project.name,
                "users": [{"id": "user_owner", "role": "owner"}],
                "service_accounts": [{"id": SVC_OLD, "name": "ci"}],
                "api_keys": [
                    {"id": OLD_ID, "name": "prod", "owner": {"user": "user_owner"}, "key": live[1]},
                    {"id": "key_RotSvcOld00001", "name": "ci", "owner": {"service_account": SVC_OLD}, "key": secret},
                ],
            }
        ],
    )
    return key, secret


def rotate_api_url(key):
    return reverse("admin:keys_apikey_rotate_api", args=[key.pk])


def test_rotate_via_api_replaces_a_service_account_key_without_ever_showing_it(
    admin_client, sandbox, org, project, service_key, caplog
):
    caplog.set_level(logging.DEBUG)
    key, old = service_key
    page = text(admin_client.get(change_url(key)))
    assert rotate_api_url(key) in page
    confirm = text(admin_client.get(rotate_api_url(key)))
    assert "new service account" in confirm
    response = admin_client.post(rotate_api_url(key), {}, follow=True)
    shown = text(response)
    assert "Rotated via the Administration API" in shown
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls[f"POST /v1/organization/projects/{project.openai_project_id}/service_accounts"] == 1
    key.refresh_from_db()
    new = key.reveal_secret()
    assert new.startswith("sk-svcacct-") and new != old
    assert key.upstream_key_id.startswith("svc_acct_") and key.upstream_key_id != SVC_OLD
    assert sandbox.stats()["per_key"][formats.hint(new)] == 1  # probed once before it went in
    (row,) = SupersededSecret.objects.filter(key=key)
    assert row.upstream_key_id == SVC_OLD and row.hint == formats.hint(old)
    assert AuditEvent.objects.get(action="key.rotated").details["via"] == "api"

    # When the grace ends, the old service account (and with it its key) is deleted upstream.
    assert rotation.end_grace_periods(now=row.grace_until) == {"revoked": 1}
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls[f"DELETE /v1/organization/projects/{project.openai_project_id}/service_accounts/{SVC_OLD}"] == 1
    assert probe_status(sandbox, old) == 401 and probe_status(sandbox, new) == 200
    for secret in (old, new):
        assert_no_secret(secret, page, confirm, shown, everything_stored(), caplog.text)


def test_rotate_via_api_replaces_the_admin_key_itself(admin_client, sandbox, org, live, upstream_org, caplog):
    admin = upstream_org
    ApiKey.objects.filter(pk=admin.pk).update(upstream_key_id="key_RotAdmin0000001")
    old = ApiKey.objects.get(pk=admin.pk).reveal_secret()
    response = admin_client.post(rotate_api_url(admin), {}, follow=True)
    assert "Rotated via the Administration API" in text(response)
    admin.refresh_from_db()
    new = admin.reveal_secret()
    assert new.startswith("sk-admin-") and new != old
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls["POST /v1/organization/admin_api_keys"] == 1
    row = SupersededSecret.objects.get(key=admin)
    # The new admin key deletes the old one when the grace ends.
    assert rotation.end_grace_periods(now=row.grace_until) == {"revoked": 1}
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls["DELETE /v1/organization/admin_api_keys/key_RotAdmin0000001"] == 1
    assert_no_secret(new, text(response), everything_stored(), caplog.text)


def test_a_user_owned_project_key_is_not_offered_rotate_via_api(admin_client, sandbox, org, live, upstream_org):
    key, _ = live
    assert rotate_api_url(key) not in text(admin_client.get(change_url(key)))
    assert "cannot create one" in text(admin_client.get(rotate_url(key)))
    before = key_state(key)
    response = admin_client.post(rotate_api_url(key), {})
    assert response.status_code == 200 and "cannot create one" in text(response)
    assert key_state(key) == before
    assert not any(c.startswith("POST") for c in sandbox.admin_state(org.openai_org_id)["calls"])


def test_rotate_via_api_changes_nothing_when_the_api_refuses(admin_client, sandbox, org, project, service_key):
    key, _ = service_key
    path = f"/v1/organization/projects/{project.openai_project_id}/service_accounts"
    sandbox.seed_admin(
        org.openai_org_id, replace=False, faults=[{"path": path, "method": "POST", "fault": "server_error"}]
    )
    before = key_state(key)
    response = admin_client.post(rotate_api_url(key), {}, follow=True)
    assert "Nothing was changed" in text(response) and "Server error" in text(response)
    assert key_state(key) == before and not SupersededSecret.objects.exists()


def test_a_reviewer_cannot_rotate_via_api(reviewer_client, sandbox, org, service_key):
    key, _ = service_key
    before = key_state(key)
    assert reviewer_client.get(rotate_api_url(key)).status_code == 403
    assert reviewer_client.post(rotate_api_url(key), {}).status_code == 403
    assert key_state(key) == before
    assert not any(c.startswith("POST") for c in sandbox.admin_state(org.openai_org_id)["calls"])


def test_an_admin_key_revoked_with_the_upstream_delete_deletes_itself_there(
    admin_client, sandbox, org, live, upstream_org
):
    admin = upstream_org
    ApiKey.objects.filter(pk=admin.pk).update(upstream_key_id="key_RotAdmin0000001")
    response = admin_client.post(revoke_url(admin), {"reason": "Leaked", "delete_upstream": "on"}, follow=True)
    assert "Revoked, and deleted upstream." in text(response)
    calls = sandbox.admin_state(org.openai_org_id)["calls"]
    assert calls["DELETE /v1/organization/admin_api_keys/key_RotAdmin0000001"] == 1


# --- The role matrix for the new pages: every role, every page, GET and POST, by effect ---

ACTION_PAGES = {"rotate": rotate_url, "rotate_api": rotate_api_url, "revoke": revoke_url}


@pytest.mark.parametrize("page", list(ACTION_PAGES))
@pytest.mark.parametrize("role", ["admin", "reviewer", "superuser", "outsider", "anonymous"])
def test_role_matrix_for_the_key_action_pages(
    client, admin_user, reviewer, outsider, sandbox, org, project, service_key, role, page
):
    key, _ = service_key
    users = {
        "admin": admin_user,
        "reviewer": reviewer,
        "outsider": outsider,
        "superuser": User.objects.create_superuser("root", "root@example.com", "pw-root-123456"),
    }
    if role in users:
        client.force_login(users[role])
    url = ACTION_PAGES[page](key)
    data = {"rotate": {"secret": new_live_secret(sandbox, project, org)}, "rotate_api": {}, "revoke": {"reason": "r"}}
    before, events = key_state(key), AuditEvent.objects.count()
    got, posted = client.get(url), client.post(url, data[page])
    if role in ("outsider", "anonymous"):
        for response in (got, posted):
            assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    elif role == "reviewer":
        assert (got.status_code, posted.status_code) == (403, 403)
    else:
        assert got.status_code == 200 and posted.status_code == 302
    after = key_state(key)
    if role in ("admin", "superuser"):
        # The effect happened: a new secret, or revoked.
        if page == "revoke":
            assert after["revoked_at"] is not None and before["revoked_at"] is None
        else:
            assert after["fingerprint"] != before["fingerprint"]
            assert SupersededSecret.objects.filter(key=key).count() == 1
        assert AuditEvent.objects.count() > events
    else:
        # Nothing changed; the only new events are the refusals themselves (a reviewer's
        # GET and POST, each recorded as access.denied).
        denied = 2 if role == "reviewer" else 0
        assert after == before and AuditEvent.objects.count() == events + denied
        assert AuditEvent.objects.filter(action="access.denied").count() == denied
        assert not SupersededSecret.objects.exists()
