"""The organization sync against the sandbox's Administration API over real HTTP
(seeded with POST /_sandbox/admin): the first sync and a second one that changes
nothing, each reconciliation category, paging, an archived project, per-model rate
limits in the limiter, spend alerts published and re-published, 429 and retry-after, a
refused admin key, a project key given as the admin key, the parsers, the command, the
task, and the admin pages for each role with their effects."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Organization, Project, ProjectRateLimit, Tier
from keys import formats
from keys.models import ApiKey, Circuit, CircuitState, KeyAction, KeyEvent, Kind
from sync import parse, publish, sync, tasks
from sync.models import SpendAlert, SyncState, UpstreamEvent, UpstreamKey, UpstreamServiceAccount

NOW = int(time.time())
HOUR = 3600
DAY = 24 * HOUR


@pytest.fixture(autouse=True)
def sync_settings(settings, sandbox):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.UPSTREAM_READ_TIMEOUT = 5.0
    settings.SYNC_MAX_PAGES = 1000
    settings.SYNC_CONCURRENCY = 4
    return settings


@pytest.fixture
def admin_key(make_key, sandbox):
    """An organization's admin key, registered with the sandbox. Returns (key, secret)."""

    def make(org, fault="healthy", **plan):
        key, secret = make_key(
            fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name=f"{org.slug} admin"
        )
        sandbox.register(secret, organization=org.openai_org_id, fault=fault, **plan)
        return key, secret

    return make


def user(uid, email):
    return {"id": uid, "name": email.split("@")[0], "email": email}


@pytest.fixture
def world(org, project, make_key, admin_key, sandbox):
    """Acme, upstream and here, differing in every way the sync reconciles:

    - Chatbot (proj_Chatbot12345): a key matched by hint (registered here without an
      upstream id), a key matched by id (created upstream before it was registered here),
      an unmanaged user key, an unmanaged service-account key, a key whose owner left the
      project, and — here only — a key deleted upstream (the audit log says by whom);
    - Old stuff: archived upstream, unknown here; Fresh: new upstream;
    - the admin key itself, matched by hint; an organization spend alert; two per-model
      rate limits for Chatbot."""
    admin, admin_secret = admin_key(org)
    by_hint, by_hint_secret = make_key(name="by hint")
    issued = timezone.now() - timedelta(days=2)
    by_id, _ = make_key(name="by id", upstream_key_id="key_ById00000001", issued_at=issued)
    orphan, _ = make_key(name="orphan", upstream_key_id="key_Orphan0000001")
    deleted, _ = make_key(name="deleted", upstream_key_id="key_Deleted000001")
    sandbox.seed_admin(
        org.openai_org_id,
        users=[user("user_owner", "olga@example.com"), user("user_gone", "gone@example.com")],
        projects=[
            {
                "id": "proj_Chatbot12345",
                "name": "Chatbot",
                "created_at": NOW - 90 * DAY,
                "users": [{"id": "user_owner", "role": "owner"}],
                "service_accounts": [{"id": "svc_acct_ci", "name": "ci", "role": "member", "created_at": NOW - DAY}],
                "api_keys": [
                    {
                        "id": "key_ByHint0000001",
                        "name": "by hint",
                        "owner": {"user": "user_owner"},
                        "key": by_hint_secret,
                    },
                    {
                        "id": "key_ById00000001",
                        "name": "by id",
                        "owner": {"user": "user_owner"},
                        "created_at": NOW - 30 * DAY,
                        "last_used_at": NOW - HOUR,
                    },
                    {"id": "key_Unmanaged0001", "name": "laptop", "owner": {"user": "user_owner"}},
                    {"id": "key_SvcAcct000001", "name": "ci key", "owner": {"service_account": "svc_acct_ci"}},
                    {"id": "key_Orphan0000001", "name": "orphan", "owner": {"user": "user_gone"}},
                ],
                "rate_limits": [
                    {"model": "gpt-4o-mini", "max_requests_per_1_minute": 300, "max_tokens_per_1_minute": 90_000},
                    {"model": "gpt-4o", "max_requests_per_1_minute": 120, "max_tokens_per_1_minute": 30_000},
                ],
            },
            {"id": "proj_OldStuff00001", "name": "Old stuff", "archived": True, "archived_at": NOW - 10 * DAY},
            {"id": "proj_Fresh00000001", "name": "Fresh", "users": [{"id": "user_owner", "role": "owner"}]},
        ],
        admin_keys=[{"id": "key_Admin00000001", "name": "Main", "key": admin_secret, "owner": "user_owner"}],
        spend_alerts=[
            {"threshold_amount": 250_00, "notification_channel": {"type": "email", "recipients": ["f@example.com"]}}
        ],
        audit_logs=[
            {
                "id": "audit_log-del1",
                "type": "api_key.deleted",
                "effective_at": NOW - 2 * HOUR,
                "actor": {"type": "session", "session": {"user": {"id": "user_owner", "email": "olga@example.com"}}},
                "project": {"id": "proj_Chatbot12345", "name": "Chatbot"},
                "api_key.deleted": {"id": "key_Deleted000001"},
            },
            {
                "id": "audit_log-new1",
                "type": "api_key.created",
                "effective_at": NOW - 5 * DAY,  # within the first sync's 30 days, however late the test runs
                "actor": {"type": "session", "session": {"user": {"id": "user_owner", "email": "olga@example.com"}}},
                "project": {"id": "proj_Chatbot12345", "name": "Chatbot"},
                "api_key.created": {"id": "key_ById00000001"},
            },
        ],
    )
    return {
        "admin": admin,
        "admin_secret": admin_secret,
        "by_hint": by_hint,
        "by_id": by_id,
        "orphan": orphan,
        "deleted": deleted,
        "issued": issued,
    }


def calls(sandbox, org, route=None):
    served = sandbox.admin_state(org.openai_org_id)["calls"]
    return served.get(route, 0) if route else sum(served.values())


def reload(obj):
    obj.refresh_from_db()
    return obj


# --- the first sync and the second ---------------------------------------------------
@pytest.mark.django_db
def test_the_first_sync_mirrors_the_organization_and_reconciles_every_category(org, project, world, sandbox):
    report = sync.sync_organization(org)

    # Projects: linked, created, archived (never deleted).
    assert reload(project).openai_project_id == "proj_Chatbot12345"
    fresh = Project.objects.get(organization=org, openai_project_id="proj_Fresh00000001")
    assert fresh.name == "Fresh" and fresh.archived_at is None
    old = Project.objects.get(organization=org, openai_project_id="proj_OldStuff00001")
    assert old.archived_at == datetime.fromtimestamp(NOW - 10 * DAY, tz=UTC)
    assert report.sections["projects"].created == 2
    assert AuditEvent.objects.filter(action="project.created", actor_label="sync").count() == 2

    # Keys matched by hint and by id.
    by_hint, by_id = reload(world["by_hint"]), reload(world["by_id"])
    assert by_hint.upstream_key_id == "key_ByHint0000001"
    assert by_id.issued_at == datetime.fromtimestamp(NOW - 30 * DAY, tz=UTC)  # earlier upstream: moved back
    assert by_id.last_used_at == datetime.fromtimestamp(NOW - HOUR, tz=UTC)
    assert reload(world["admin"]).upstream_key_id == "key_Admin00000001"
    linked = AuditEvent.objects.get(action="key.updated", target_id=str(by_hint.pk), actor_label="sync")
    assert linked.details["changes"]["upstream_key_id"] == ["", "key_ByHint0000001"]

    # Unmanaged: the laptop key and the service account's key, with owner and project.
    unmanaged = {u.upstream_id: u for u in UpstreamKey.objects.unmanaged()}
    assert set(unmanaged) == {"key_Unmanaged0001", "key_SvcAcct000001"}
    assert unmanaged["key_Unmanaged0001"].owner_label == "olga@example.com"
    assert unmanaged["key_Unmanaged0001"].project == project
    assert unmanaged["key_SvcAcct000001"].kind == "service_account"
    assert report.unmanaged == 2

    # Deleted upstream: flagged with the audit log's time and actor, not deleted here.
    deleted = reload(world["deleted"])
    assert deleted.deleted_upstream_at == datetime.fromtimestamp(NOW - 2 * HOUR, tz=UTC)
    event = KeyEvent.objects.get(key=deleted, action=KeyAction.DELETED_UPSTREAM)
    assert (event.source, event.actor_label) == ("upstream", "olga@example.com")
    assert report.deleted_upstream == 1

    # Orphaned: the owner is not a member of the project any more.
    orphan = reload(world["orphan"])
    assert orphan.owner_left_at is not None
    assert KeyEvent.objects.filter(key=orphan, action=KeyAction.OWNER_LEFT).count() == 1
    assert report.orphaned == 1
    assert reload(world["by_hint"]).owner_left_at is None

    # The audit log's creation of a registered key, with its upstream actor and time.
    created = KeyEvent.objects.get(key=by_id, action=KeyAction.REGISTERED, source="upstream")
    assert created.actor_label == "olga@example.com"
    assert UpstreamEvent.objects.filter(organization=org).count() == 2

    # Service accounts, rate limits, spend alerts.
    assert list(UpstreamServiceAccount.objects.values_list("upstream_id", flat=True)) == ["svc_acct_ci"]
    limits = dict(ProjectRateLimit.objects.filter(project=project).values_list("model", "max_requests_per_1_minute"))
    assert limits == {"gpt-4o-mini": 300, "gpt-4o": 120}
    alert = SpendAlert.objects.get(organization=org, project=None)
    assert (alert.threshold_cents, alert.recipients) == (25000, "f@example.com")

    state = SyncState.objects.get(organization=org)
    assert state.last_outcome == "ok" and state.counts["unmanaged"] == 2 and state.requests == report.requests
    assert report.requests == calls(sandbox, org)


@pytest.mark.django_db
def test_a_second_sync_changes_nothing_and_says_so(org, world, sandbox, capsys):
    sync.sync_organization(org)
    events, audits = KeyEvent.objects.count(), AuditEvent.objects.count()

    def state_of_keys():
        # The admin key's last use moves with the sync's own requests (the sandbox, like
        # OpenAI, records them): checked apart below.
        return {
            k.pk: (k.upstream_key_id, k.issued_at, k.owner_left_at, k.deleted_upstream_at)
            + ((k.last_used_at,) if k.kind != Kind.ADMIN else ())
            for k in ApiKey.objects.all()
        }

    keys = state_of_keys()
    admin_used = reload(world["admin"]).last_used_at

    call_command("sync_org", "acme", "--no-progress")

    out = capsys.readouterr().out
    assert "no changes;" in out
    total = next(line.split() for line in out.splitlines() if line.startswith("total"))
    assert total[1:3] == ["0", "0"] and total[4] == "0"  # created, updated, deleted
    assert "unmanaged: 2  deleted upstream: 1  orphaned: 1" in out
    assert KeyEvent.objects.count() == events
    assert AuditEvent.objects.count() == audits
    assert state_of_keys() == keys
    assert reload(world["admin"]).last_used_at >= admin_used
    assert SyncState.objects.get(organization=org).counts["created"] == 0


@pytest.mark.django_db
def test_a_key_created_upstream_after_the_first_sync_is_unmanaged_until_registered(
    org, world, sandbox, make_key, project
):
    sync.sync_organization(org)
    secret = formats.generate(formats.PROJECT)
    sandbox.seed_admin(
        org.openai_org_id,
        replace=False,
        projects=[
            {
                "id": "proj_Chatbot12345",
                "name": "Chatbot",
                "users": [{"id": "user_owner", "role": "owner"}],
                "api_keys": [
                    {"id": "key_Later00000001", "name": "later", "owner": {"user": "user_owner"}, "key": secret}
                ],
            }
        ],
    )
    report = sync.sync_organization(org)
    assert UpstreamKey.objects.get(upstream_id="key_Later00000001").is_unmanaged()
    assert report.sections["keys"].created >= 1

    key = ApiKey(organization=org, project=project, name="later, registered")
    key.set_secret(secret)
    key.save()
    sync.sync_organization(org)
    assert reload(key).upstream_key_id == "key_Later00000001"
    assert not UpstreamKey.objects.get(upstream_id="key_Later00000001").is_unmanaged()


# --- paging, archived projects, rate limits ------------------------------------------
@pytest.mark.django_db
def test_every_list_is_read_across_several_pages(org, admin_key, sandbox):
    # Over 500 requests: more than the sandbox allows a key in a minute, lifted so that the test
    # reads pages instead of waiting out a 429 (the 429 tests below do that).
    admin_key(org, rpm=1_000_000)
    sandbox.seed_admin(org.openai_org_id, generate={"projects": 103, "keys_per_project": 0, "prefix": "pg"})
    sandbox.seed_admin(
        org.openai_org_id, replace=False, generate={"projects": 2, "keys_per_project": 230, "prefix": "big"}
    )
    report = sync.sync_organization(org)

    assert Project.objects.filter(organization=org, openai_project_id__startswith="proj_pg").count() == 103
    assert UpstreamKey.objects.filter(organization=org, upstream_id__startswith="key_big").count() == 460
    assert calls(sandbox, org, "GET /v1/organization/projects") == 2  # 105 projects (+ default), 100 a page
    assert calls(sandbox, org, "GET /v1/organization/projects/proj_big000001/api_keys") == 3  # 230 keys
    assert report.unmanaged == 460


@pytest.mark.django_db
def test_a_list_longer_than_the_page_cap_stops_the_run_with_a_clear_error_and_changes_nothing(
    org, admin_key, sandbox, settings
):
    admin_key(org)
    sandbox.seed_admin(org.openai_org_id, generate={"projects": 103, "keys_per_project": 0, "prefix": "cap"})
    settings.SYNC_MAX_PAGES = 1
    summary = sync.sync_safely(org)
    assert summary.failed["acme"].startswith("pagination_error: projects: Stopped after 1 pages")
    assert calls(sandbox, org, "GET /v1/organization/projects") == 1
    assert not Project.objects.filter(openai_project_id__startswith="proj_cap").exists()
    assert SyncState.objects.get(organization=org).last_outcome == "pagination_error"


@pytest.mark.django_db
def test_a_project_archived_upstream_is_archived_here_and_never_deleted(org, project, admin_key, sandbox):
    admin_key(org)
    sandbox.seed_admin(org.openai_org_id, projects=[{"id": "proj_Chatbot12345", "name": "Chatbot"}])
    sync.sync_organization(org)
    assert reload(project).archived_at is None
    sandbox.seed_admin(org.openai_org_id, projects=[{"id": "proj_Chatbot12345", "name": "Chatbot", "archived": True}])
    sync.sync_organization(org)
    assert reload(project).archived_at is not None
    assert AuditEvent.objects.filter(action="project.updated", target_id=str(project.pk)).exists()


@pytest.mark.django_db
def test_synced_rate_limits_replace_the_tier_table_for_the_probe_limiter_and_the_tier_check(
    org, project, admin_key, sandbox, settings, admin_client
):
    admin_key(org)
    settings.PROBE_PROJECT_RPM_SHARE = 0.5
    assert project.tier == Tier.objects.get(name="Tier 1")
    tier_rpm = project.tier.requests_per_minute
    assert project.probe_rpm_budget() == tier_rpm * 0.5
    sandbox.seed_admin(
        org.openai_org_id,
        projects=[
            {
                "id": "proj_Chatbot12345",
                "name": "Chatbot",
                "rate_limits": [
                    {"model": "gpt-4o-mini", "max_requests_per_1_minute": 40, "max_tokens_per_1_minute": 1000},
                    {"model": "gpt-4o", "max_requests_per_1_minute": 30, "max_tokens_per_1_minute": 1000},
                ],
            }
        ],
    )
    sync.sync_organization(org)
    project = Project.objects.get(pk=project.pk)
    assert project.synced_rpm() == 30  # the most restrictive model's
    assert project.probe_rpm_budget() == 15.0
    Project.objects.filter(pk=project.pk).update(observed_rpm=30)
    assert Project.objects.get(pk=project.pk).tier_mismatch() is None  # the tier says 500, upstream says 30
    Project.objects.filter(pk=project.pk).update(observed_rpm=500)
    assert Project.objects.get(pk=project.pk).tier_mismatch() == (30, 500)
    # Shown on the project's page, with the mismatch against the synced limit.
    html = admin_client.get(reverse("admin:accounts_project_change", args=[project.pk])).content.decode()
    assert "<td>gpt-4o</td><td>30</td>" in html and "<td>gpt-4o-mini</td><td>40</td>" in html
    assert "Synced rate limit says 30 RPM, API reports 500" in html


# --- failures --------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_429_is_waited_out_for_its_retry_after_and_the_page_read_again(org, world, sandbox, monkeypatch):
    import console.upstream

    waits = []
    real_sleep = console.upstream.asyncio.sleep

    async def sleep(seconds):
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(console.upstream.asyncio, "sleep", sleep)
    sandbox.seed_admin(
        org.openai_org_id,
        replace=False,
        faults=[
            {"path": "/v1/organization/projects", "method": "GET", "fault": "throttled", "retry_after": 7, "times": 1}
        ],
    )
    sync.sync_organization(org)
    assert waits == [7.0]
    assert calls(sandbox, org, "GET /v1/organization/projects") == 2
    assert SyncState.objects.get(organization=org).last_outcome == "ok"


@pytest.mark.django_db
def test_a_429_asking_for_too_long_a_wait_fails_the_run_and_backs_off_at_least_that_long(org, world, sandbox):
    sandbox.seed_admin(
        org.openai_org_id,
        replace=False,
        faults=[{"path": "/v1/organization/projects", "method": "GET", "fault": "throttled", "retry_after": 900}],
    )
    before = timezone.now()
    with pytest.raises(sync.SyncFailure):
        sync.sync_organization(org)
    state = SyncState.objects.get(organization=org)
    assert state.last_outcome == "rate_limited"
    assert state.next_attempt_at >= before + timedelta(seconds=900)
    assert not Project.objects.filter(openai_project_id="proj_Fresh00000001").exists()


@pytest.mark.django_db
def test_nothing_is_sent_while_the_hosts_circuit_is_open(org, world, sandbox):
    host = sandbox.openai_url.split("//")[1].split("/")[0]
    now = timezone.now()
    Circuit.objects.create(host=host, state=CircuitState.OPEN, open_until=now + timedelta(hours=3))
    summary = sync.run_scheduled(now=now)
    assert summary.failed["acme"].startswith("skipped_circuit_open: projects: the circuit for")
    assert calls(sandbox, org) == 0
    assert SyncState.objects.get(organization=org).next_attempt_at >= now + timedelta(hours=3)
    assert not Project.objects.filter(openai_project_id="proj_Fresh00000001").exists()


@pytest.mark.django_db
def test_an_invalid_admin_key_is_a_clear_error_and_changes_nothing(org, project, world, sandbox):
    sandbox.register(world["admin_secret"], organization=org.openai_org_id, fault="revoked")
    projects, keys = Project.objects.count(), list(ApiKey.objects.values_list("pk", "upstream_key_id"))
    summary = sync.sync_safely(org)
    assert "admin key was refused" in summary.failed["acme"]
    assert "invalid_api_key" in summary.failed["acme"]
    state = SyncState.objects.get(organization=org)
    assert state.last_outcome == "invalid_key" and state.consecutive_failures == 1
    assert world["admin_secret"][-8:] not in state.last_error
    assert Project.objects.count() == projects
    assert list(ApiKey.objects.values_list("pk", "upstream_key_id")) == keys
    assert not UpstreamKey.objects.exists() and not KeyEvent.objects.exists()


@pytest.mark.django_db
def test_a_project_key_given_as_the_admin_key_is_refused_before_any_request(org, project, make_key, sandbox):
    key, secret = make_key(name="not an admin key")
    # A row that claims to be the admin key (written past the form's format check).
    ApiKey.objects.filter(pk=key.pk).update(kind=Kind.ADMIN, project=None)
    hint = sandbox.register(secret, organization=org.openai_org_id)
    summary = sync.sync_safely(org)
    assert sandbox.stats()["per_key"].get(hint, 0) == 0  # refused before any request
    assert sandbox.stats()["total"] == 0
    assert "is not one (sk-admin-…): nothing was sent" in summary.failed["acme"]
    assert SyncState.objects.get(organization=org).last_outcome == "not_an_admin_key"


@pytest.mark.django_db
def test_one_organizations_failure_does_not_stop_the_others(org, world, admin_key, sandbox):
    beta = Organization.objects.create(name="Beta", slug="beta", openai_org_id="org-BetaBeta1234")
    admin_key(beta)
    sandbox.seed_admin(beta.openai_org_id, projects=[{"id": "proj_BetaOne000001", "name": "One"}])
    sandbox.register(world["admin_secret"], organization=org.openai_org_id, fault="server_error")
    summary = sync.run_scheduled()
    assert set(summary.failed) == {"acme"} and set(summary.reports) == {"beta"}
    assert Project.objects.filter(organization=beta, openai_project_id="proj_BetaOne000001").exists()
    assert SyncState.objects.get(organization=org).next_attempt_at > timezone.now()
    # Backing off: the next scheduled run leaves acme alone.
    assert sync.run_scheduled().skipped == ["acme"]


@pytest.mark.django_db
def test_the_task_syncs_every_organization_with_an_admin_key(org, world, sandbox):
    tasks.sync_all()
    assert SyncState.objects.get(organization=org).last_outcome == "ok"
    tasks.sync_one(org.pk)
    assert SyncState.objects.get(organization=org).counts["created"] == 0


@pytest.mark.django_db
def test_the_command_exits_non_zero_with_the_error_when_the_sync_fails(org, world, sandbox, capsys):
    sandbox.register(world["admin_secret"], organization=org.openai_org_id, fault="revoked")
    with pytest.raises(CommandError, match="failed; nothing was changed") as raised:
        call_command("sync_org", "acme", "--no-progress")
    assert raised.value.returncode == 1
    assert "acme: invalid_key" in capsys.readouterr().err


@pytest.mark.django_db
@pytest.mark.parametrize(
    "slug, message", [("nope", "No organization with slug “nope”"), ("acme", "has no active admin key")]
)
def test_the_command_refuses_bad_input(org, slug, message):
    with pytest.raises(CommandError, match=message):
        call_command("sync_org", slug, "--no-progress")


# --- spend alerts ----------------------------------------------------------------------
@pytest.fixture
def budgeted(org, project, world):
    Organization.objects.filter(pk=org.pk).update(
        monthly_budget_usd=Decimal("1000"), alert_thresholds="50,100", alert_emails="ops@example.com"
    )
    Project.objects.filter(pk=project.pk).update(monthly_budget_usd=Decimal("200"))
    return Organization.objects.get(pk=org.pk)


ORG_ALERTS = "/v1/organization/spend_alerts"
PROJECT_ALERTS = "/v1/organization/projects/proj_Chatbot12345/spend_alerts"


@pytest.mark.django_db
def test_publishing_a_budget_creates_one_alert_per_threshold_and_republishing_sends_only_the_lists(
    budgeted, admin_user, sandbox
):
    org = budgeted
    result = publish.publish_budgets(org, admin_user)
    assert sorted(result.created) == [
        ("Chatbot", 50, 10000),
        ("Chatbot", 100, 20000),
        ("organization", 50, 50000),
        ("organization", 100, 100000),
    ]
    assert calls(sandbox, org, "POST " + ORG_ALERTS) == 2
    assert calls(sandbox, org, "POST " + PROJECT_ALERTS) == 2
    assert AuditEvent.objects.filter(action="spend_alert.published", actor=admin_user).count() == 1

    again = publish.publish_budgets(org, admin_user)
    assert (again.created, again.updated, again.unchanged) == ([], [], 4)
    assert calls(sandbox, org, "POST " + ORG_ALERTS) == 2  # nothing more sent
    assert calls(sandbox, org, "POST " + PROJECT_ALERTS) == 2

    # A new budget updates the alerts the console published, in place.
    Organization.objects.filter(pk=org.pk).update(monthly_budget_usd=Decimal("2000"))
    org = Organization.objects.get(pk=org.pk)
    changed = publish.publish_budgets(org, admin_user)
    assert sorted(changed.updated) == [("organization", 50, 100000), ("organization", 100, 200000)]
    listed = {a["threshold_amount"] for a in sandbox_alerts(sandbox, org)}
    assert {100000, 200000} <= listed and 50000 not in listed
    # The hand-made alert upstream (250 USD) is left alone, and the sync mirrors them all.
    sync.sync_organization(org)
    assert SpendAlert.objects.filter(organization=org, project=None).count() == 3
    assert SpendAlert.objects.filter(published_percent__isnull=False).count() == 4


def sandbox_alerts(sandbox, org):
    import httpx2

    from keys.models import ApiKey as Key

    secret = Key.objects.get(organization=org, kind=Kind.ADMIN).reveal_secret()
    response = httpx2.get(
        sandbox.openai_url + "/organization/spend_alerts", headers={"Authorization": f"Bearer {secret}"}
    )
    return response.json()["data"]


@pytest.mark.django_db
def test_publishing_without_recipients_is_refused_before_any_request(budgeted, admin_user, sandbox):
    Organization.objects.filter(pk=budgeted.pk).update(alert_emails="")
    before = calls(sandbox, budgeted)
    with pytest.raises(publish.PublishRefused, match="no alert email"):
        publish.publish_budgets(Organization.objects.get(pk=budgeted.pk), admin_user)
    assert calls(sandbox, budgeted) == before


# --- parsers --------------------------------------------------------------------------
def test_parsers_accept_extra_unknown_fields_and_missing_optional_ones():
    key = parse.project_key(
        {
            "id": "key_x",
            "object": "organization.project.api_key",
            "redacted_value": "sk-proj-...Ab3d",
            "owner": {"type": "user", "user": {"id": "user_1", "email": "a@example.com", "future": 1}},
            "brand_new_field": {"nested": True},
        },
        "proj_1",
    )
    assert (key.hint, key.owner_label, key.created_at, key.last_used_at) == (
        "sk-proj-…Ab3d",
        "a@example.com",
        None,
        None,
    )
    assert key.owner_active and key.kind == "project"
    assert parse.project_key({"id": "key_y", "owner_project_access": "inactive"}, "p").owner_active is False
    assert parse.project_key({"name": "no id"}, "p") is None
    svc = parse.project_key({"id": "key_z", "owner": {"service_account": {"id": "svc_acct_1"}}}, "p")
    assert (svc.kind, svc.owner_id) == ("service_account", "svc_acct_1")

    project = parse.project({"id": "proj_1", "created_at": "not a number", "status": "archived", "extra": []})
    assert project.is_archived and project.created_at is None and project.name == "proj_1"
    limit = parse.rate_limit({"model": "gpt-4o", "max_requests_per_1_minute": 5, "max_tokens_per_1_minute": 9, "x": 1})
    assert dict(limit.values)["max_images_per_1_minute"] is None
    assert parse.rate_limit({"model": "gpt-4o"}) is None
    alert = parse.spend_alert({"id": "alert_1", "threshold_amount": 100})
    assert (alert.recipients, alert.currency, alert.interval) == ("", "USD", "month")
    event = parse.event({"id": "audit_log-1", "type": "project.created", "effective_at": 1711471533, "who": "?"})
    assert (event.actor_label, event.object_id, event.project_id) == ("upstream", "", "")
    assert parse.event({"id": "audit_log-2", "type": "project.created"}) is None
    admin = parse.admin_key({"id": "key_a", "redacted_value": "sk-admin-****wxyz"})
    assert admin.hint == "sk-admin-…wxyz" and admin.owner_label == ""
    assert parse.hint_of_redacted("sk-...") == ""
    # A name that carries a secret (someone pasted it there) is stored without it.
    secret = formats.generate(formats.PROJECT)
    named = parse.project_key({"id": "key_q", "name": f"prod {secret}", "owner": {"user": {"email": secret}}}, "p")
    assert secret not in named.name and "sk-proj-" not in named.name and secret not in named.owner_label
    assert parse.hint_of_redacted("sk-proj-…a_-9") == "sk-proj-…a_-9"  # key alphabets end in - and _ too


# --- the admin --------------------------------------------------------------------------
ROLES = ["admin_user", "reviewer"]


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "name",
    [
        "sync_syncedorganization",
        "sync_upstreamkey",
        "sync_spendalert",
        "sync_upstreamevent",
        "sync_upstreamserviceaccount",
    ],
)
def test_each_role_may_view_the_sync_pages_and_change_nothing(client, request, org, world, name, role):
    sync.sync_organization(org)
    client.force_login(request.getfixturevalue(role))
    assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200
    assert client.get(reverse(f"admin:{name}_add")).status_code == 403


@pytest.mark.django_db
def test_anonymous_gets_the_login_page(client, org):
    response = client.get(reverse("admin:sync_upstreamkey_changelist"))
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.django_db
def test_the_unmanaged_filter_lists_only_keys_registered_nowhere(admin_client, org, world):
    sync.sync_organization(org)
    html = admin_client.get(reverse("admin:sync_upstreamkey_changelist") + "?state=unmanaged").content.decode()
    assert "key_Unmanaged0001" in html and "key_SvcAcct000001" in html
    assert "key_ByHint0000001" not in html


def post_action(client, name, action, pks, **extra):
    return client.post(
        reverse(f"admin:{name}_changelist"), {"action": action, "_selected_action": [str(pk) for pk in pks], **extra}
    )


@pytest.mark.django_db
def test_an_admin_publishes_budgets_from_the_sync_page_and_a_reviewer_may_not(
    client, budgeted, admin_user, reviewer, sandbox
):
    org = budgeted
    client.force_login(reviewer)
    response = post_action(client, "sync_syncedorganization", "publish_budget", [org.pk])
    assert response.status_code == 403
    assert calls(sandbox, org, "POST " + ORG_ALERTS) == 0

    client.force_login(admin_user)
    response = post_action(client, "sync_syncedorganization", "publish_budget", [org.pk])
    assert response.status_code == 302
    assert calls(sandbox, org, "POST " + ORG_ALERTS) == 2
    assert AuditEvent.objects.filter(action="spend_alert.published", actor=admin_user).count() == 1


@pytest.mark.django_db
def test_sync_now_is_an_admins_action(client, org, world, admin_user, reviewer, sandbox, monkeypatch):
    monkeypatch.setattr(tasks.sync_one, "delay", lambda pk, job_id: tasks.sync_one(pk, job_id))  # in-process
    client.force_login(reviewer)
    assert post_action(client, "sync_syncedorganization", "sync_now", [org.pk]).status_code == 403
    assert not SyncState.objects.exists()
    client.force_login(admin_user)
    assert post_action(client, "sync_syncedorganization", "sync_now", [org.pk]).status_code == 302
    assert SyncState.objects.get(organization=org).last_outcome == "ok"
    assert AuditEvent.objects.filter(action="organization.sync_requested", actor=admin_user).exists()


@pytest.mark.django_db
def test_deleting_an_unmanaged_key_upstream_needs_confirmation_an_admin_and_is_audited(
    client, org, world, admin_user, reviewer, sandbox
):
    sync.sync_organization(org)
    laptop = UpstreamKey.objects.get(upstream_id="key_Unmanaged0001")
    route = "DELETE /v1/organization/projects/proj_Chatbot12345/api_keys/key_Unmanaged0001"

    client.force_login(reviewer)
    assert post_action(client, "sync_upstreamkey", "delete_upstream", [laptop.pk]).status_code == 403
    assert post_action(client, "sync_upstreamkey", "delete_upstream", [laptop.pk], confirm="yes").status_code == 403
    assert calls(sandbox, org, route) == 0

    client.force_login(admin_user)
    page = post_action(client, "sync_upstreamkey", "delete_upstream", [laptop.pk])
    assert page.status_code == 200 and "key_Unmanaged0001" in page.content.decode()
    assert calls(sandbox, org, route) == 0  # the confirmation page sends nothing
    done = post_action(client, "sync_upstreamkey", "delete_upstream", [laptop.pk], confirm="yes")
    assert done.status_code == 302
    assert calls(sandbox, org, route) == 1
    assert reload(laptop).gone_at is not None
    assert AuditEvent.objects.filter(action="upstream_key.deleted_upstream", actor=admin_user).count() == 1
    # A registered key is not deleted from here.
    registered = UpstreamKey.objects.get(upstream_id="key_ByHint0000001")
    post_action(client, "sync_upstreamkey", "delete_upstream", [registered.pk], confirm="yes")
    assert calls(sandbox, org, "DELETE /v1/organization/projects/proj_Chatbot12345/api_keys/key_ByHint0000001") == 0


@pytest.mark.django_db
def test_a_key_deleted_upstream_no_longer_counts_as_failing(org, world):
    sync.sync_organization(org)
    deleted = reload(world["deleted"])
    ApiKey.objects.filter(pk=deleted.pk).update(last_probe_outcome="invalid_key")
    assert not reload(deleted).is_probe_failing()
    ApiKey.objects.filter(pk=world["by_hint"].pk).update(last_probe_outcome="invalid_key")
    assert reload(world["by_hint"]).is_probe_failing()


# --- the demo ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_demo_organizations_drift_shows_in_every_category_and_a_second_sync_changes_nothing(sandbox):
    from tests.test_demo import demo_key, load_demo

    load_demo(sandbox.root)
    demo = Organization.objects.get(slug="demo")
    report = sync.sync_organization(demo)

    unmanaged = set(UpstreamKey.objects.unmanaged().values_list("upstream_id", flat=True))
    # The unmanaged key, and the usage-only key of the archived project nobody registered.
    assert unmanaged == {"key_DemoUnmanaged0001", "key_DemoUnregistered01"}
    flagged = set(ApiKey.objects.filter(deleted_upstream_at__isnull=False).values_list("name", flat=True))
    assert flagged == {"support-laptop", "checkout-2024"}
    assert demo_key("checkout-batch").owner_left_at is not None
    assert report.orphaned == 1
    archived = Project.objects.get(openai_project_id="proj_DemoUnregistered01")
    assert archived.organization == demo and archived.archived_at is not None

    again = sync.sync_organization(demo)
    assert not again.has_changes(), again.sections
