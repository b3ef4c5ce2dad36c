"""Who may do what in the admin, URL by URL.

Console admins have full rights on organizations, projects, tiers and keys, may close a
circuit (its only action: nobody adds, edits or deletes one) and may only look at audit
events and probe results. Security reviewers may look at
everything and change nothing. Non-staff users and anonymous visitors are sent to the
login page. Nobody, not even a superuser, adds, changes or deletes an audit event. A
refused request (403) changes nothing but the audit log, where it is one "access.denied"
event naming who, how and where.
"""

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEvent, Organization, Project, Tier
from keys import formats
from keys.models import ApiKey, Circuit, CircuitState, ProbeResult
from sync import tasks as sync_tasks
from sync.models import (
    SpendAlert,
    SyncedOrganization,
    SyncState,
    UpstreamEvent,
    UpstreamKey,
    UpstreamServiceAccount,
)
from usage import tasks as usage_tasks
from usage.models import BudgetAlert, CostBucket, IngestState, ModelPrice, UsageBucket

# model label → (search and filter on its changelist, expected result count, actions)
CHANGELISTS = {
    "accounts.organization": (
        {"q": "Acme", "rotation_policy_days": "90", "budget_state": "none"},
        1,
        ["delete_selected", "ingest_window"],
    ),
    "accounts.project": (
        {
            "q": "Chatbot",
            "environment__exact": "development",
            "archived": "no",
            "tier__id__exact": "TIER",
            "budget_state": "none",
        },
        1,
        ["delete_selected"],
    ),
    "accounts.tier": ({"q": "Tier 1", "requests_per_minute": "500"}, 1, ["delete_selected"]),
    "accounts.auditevent": ({"q": "alice", "action__exact": "key.created"}, 1, ["delete_selected"]),
    "keys.apikey": (
        {
            "q": "Chatbot",
            "status": "active",
            "probe": "ok",
            "provider__exact": "openai",
            "kind__exact": "project",
            "rotation": "compliant",
            "flag": "usage_unknown",
        },
        1,
        ["probe_selected", "revoke_selected", "delete_selected"],
    ),
    "keys.proberesult": ({"q": "req_roles_1", "outcome__exact": "ok"}, 1, ["delete_selected"]),
    "keys.circuit": ({"q": "api.openai.com", "state__exact": "open"}, 1, ["close_selected"]),
    "usage.usagebucket": (
        {
            "q": "gpt-4o-mini",
            "endpoint__exact": "completions",
            "registered": "yes",
            "project": "Chatbot",
            "key": "key_Roles000001",
            "model": "gpt-4o-mini",
        },
        1,
        ["delete_selected"],
    ),
    "usage.costbucket": (
        {
            "q": "key_RolesUnknown01",
            "registered": "no",
            "project": "proj_RolesUnknown01",
            "line_item": "gpt-4o-mini, input",
        },
        1,
        ["delete_selected"],
    ),
    "usage.ingeststate": ({"q": "Acme", "last_outcome__exact": "ok"}, 1, ["delete_selected"]),
    "usage.modelprice": ({"q": "gpt-4o-mini"}, 1, ["delete_selected"]),
    "usage.budgetalert": ({"q": "Acme", "kind__exact": "threshold"}, 1, ["delete_selected"]),
    "sync.syncedorganization": ({"q": "Acme"}, 1, ["sync_now", "publish_budget"]),
    "sync.upstreamkey": (
        {"q": "key_RolesUpstream1", "state": "unmanaged", "kind__exact": "project"},
        1,
        ["delete_upstream"],
    ),
    "sync.spendalert": ({"q": "alert_roles", "organization__id__exact": "ORG"}, 1, []),
    "sync.upstreamserviceaccount": ({"q": "svc_acct_roles"}, 1, []),
    "sync.upstreamevent": ({"q": "key_RolesUpstream1", "type__exact": "api_key.created"}, 1, []),
}
# What console admins may write; the rest they may only view.
ADMIN_WRITES = {
    "accounts.organization",
    "accounts.project",
    "accounts.tier",
    "keys.apikey",
    "usage.modelprice",
}
# What nobody may write, superusers included.
NOBODY_WRITES = {
    "accounts.auditevent",
    "keys.proberesult",
    "keys.circuit",
    "usage.usagebucket",
    "usage.costbucket",
    "usage.ingeststate",
    "usage.budgetalert",
    "sync.syncedorganization",
    "sync.upstreamkey",
    "sync.spendalert",
    "sync.upstreamserviceaccount",
    "sync.upstreamevent",
}
# Actions console admins (and superusers) may run on pages they may not edit: they act
# upstream (sync/admin.py) and are checked against the organization's and the key's rights; closing
# a circuit (keys/admin.py) makes the keys it held back due.
ACTIONS_OF_ADMINS = {
    ("sync.syncedorganization", "sync_now"),
    ("sync.syncedorganization", "publish_budget"),
    ("sync.upstreamkey", "delete_upstream"),
    ("keys.circuit", "close_selected"),
}
# What nobody may add by hand: circuits are made by the breaker, one per API host.
NOBODY_ADDS = {"keys.circuit"}
# What console admins may change but not delete: a key's history is evidence (they
# revoke it); only superusers delete keys.
ADMIN_CANNOT_DELETE = {"keys.apikey"}
# Deleting these takes their keys along: console admins are refused while they hold keys
# (Django names the missing right, "API key"), and nothing is deleted.
TAKES_KEYS_ALONG = {"accounts.organization", "accounts.project"}

REQUESTS = [
    ("changelist", "GET"),
    ("add", "GET"),
    ("add", "POST"),
    ("change", "GET"),
    ("change", "POST"),
    ("delete", "GET"),
    ("delete", "POST"),
    ("history", "GET"),
] + [(f"action:{name}", "POST") for name in {a for _, _, actions in CHANGELISTS.values() for a in actions}]

ROLES = ["admin", "reviewer", "superuser", "outsider", "anonymous"]


def cases():
    return list(_cases())


def _cases():
    for label, (_, _, actions) in CHANGELISTS.items():
        for view, method in REQUESTS:
            if view.startswith("action:") and view.removeprefix("action:") not in actions:
                continue
            for role in ROLES:
                yield pytest.param(role, label, view, method, id=f"{role}-{label}-{view}-{method}")


def expected(role, label, view, method):
    """What the role should get: "login" (a redirect to it), 200, "ok" (200 or 302) or 403."""
    if role in ("outsider", "anonymous"):
        return "login"
    writes = view in ("add", "delete") or method == "POST"
    if not writes:
        return 200
    if view == "add" and label in NOBODY_ADDS:
        return 403
    if role == "reviewer":
        return 403
    if (label, view.removeprefix("action:")) in ACTIONS_OF_ADMINS:
        return "ok"
    if role == "admin":
        deletes = view == "delete" or view == "action:delete_selected"
        if deletes and label in ADMIN_CANNOT_DELETE:
            return 403
        if deletes and label in TAKES_KEYS_ALONG:
            return "lacks key delete"
        return "ok" if label in ADMIN_WRITES else 403
    return 403 if label in NOBODY_WRITES else "ok"


@pytest.fixture
def world(admin_user, make_key, monkeypatch):
    """One row of every model, owned by the Acme organization."""
    key, _ = make_key(name="Chatbot prod", last_probe_outcome="ok")
    ProbeResult.objects.create(key=key, slot=1, outcome="ok", http_status=200, request_id="req_roles_1")
    Circuit.objects.create(host="api.openai.com", state=CircuitState.OPEN, consecutive_failures=5)
    AuditEvent.record(admin_user, "key.created", key, hint=key.hint)
    day = key.created.replace(hour=0, minute=0, second=0, microsecond=0)
    UsageBucket.objects.create(
        organization=key.organization,
        project=key.project,
        key=key,
        endpoint="completions",
        start_time=day,
        end_time=day + timedelta(days=1),
        upstream_project_id=key.project.openai_project_id,
        upstream_key_id="key_Roles000001",
        model="gpt-4o-mini",
        num_model_requests=1,
    )
    CostBucket.objects.create(
        organization=key.organization,
        start_time=day,
        end_time=day + timedelta(days=1),
        upstream_project_id="proj_RolesUnknown01",
        upstream_key_id="key_RolesUnknown01",
        line_item="gpt-4o-mini, input",
        amount=1,
    )
    IngestState.objects.create(organization=key.organization, last_outcome="ok")
    BudgetAlert.objects.create(
        organization=key.organization, threshold=50, month=day.date().replace(day=1), spend_usd=5, budget_usd=10
    )
    upstream_key = UpstreamKey.objects.create(
        organization=key.organization,
        project=key.project,
        upstream_id="key_RolesUpstream1",
        upstream_project_id=key.project.openai_project_id,
        kind="project",
        hint="sk-proj-…Ro1e",
    )
    SpendAlert.objects.create(organization=key.organization, upstream_id="alert_roles", threshold_cents=100)
    UpstreamServiceAccount.objects.create(project=key.project, upstream_id="svc_acct_roles", name="ci")
    UpstreamEvent.objects.create(
        organization=key.organization,
        upstream_id="audit_log-roles",
        type="api_key.created",
        effective_at=key.created,
        object_id="key_RolesUpstream1",
    )
    # "Sync now" queues a task: recorded here instead of sent to a broker nobody reads.
    monkeypatch.setattr(sync_tasks.sync_one, "delay", lambda pk, job_id: None)
    monkeypatch.setattr(usage_tasks.ingest_window, "delay", lambda job_id: None)
    return {
        "accounts.organization": key.organization,
        "accounts.project": key.project,
        "accounts.tier": Tier.objects.get(name="Tier 1"),
        "accounts.auditevent": AuditEvent.objects.get(),
        "keys.apikey": key,
        "keys.proberesult": ProbeResult.objects.get(),
        "keys.circuit": Circuit.objects.get(),
        "usage.usagebucket": UsageBucket.objects.get(),
        "usage.costbucket": CostBucket.objects.get(),
        "usage.ingeststate": IngestState.objects.get(),
        "usage.modelprice": ModelPrice.objects.get(model="gpt-4o-mini"),
        "usage.budgetalert": BudgetAlert.objects.get(),
        "sync.syncedorganization": SyncedOrganization.objects.get(pk=key.organization.pk),
        "sync.upstreamkey": upstream_key,
        "sync.spendalert": SpendAlert.objects.get(),
        "sync.upstreamserviceaccount": UpstreamServiceAccount.objects.get(),
        "sync.upstreamevent": UpstreamEvent.objects.get(),
    }


@pytest.fixture
def client_as(client, admin_user, reviewer, outsider):
    def login(role):
        if role == "admin":
            client.force_login(admin_user)
        elif role == "reviewer":
            client.force_login(reviewer)
        elif role == "superuser":
            root = User.objects.filter(username="root").first() or User.objects.create_superuser(
                "root", "root@example.com", "pw-root-123456"
            )
            client.force_login(root)
        elif role == "outsider":
            client.force_login(outsider)
        return client

    return login


def url_for(label, view, obj):
    app_label, model_name = label.split(".")
    if view == "changelist" or view.startswith("action:"):
        return reverse(f"admin:{app_label}_{model_name}_changelist")
    if view == "add":
        return reverse(f"admin:{app_label}_{model_name}_add")
    return reverse(f"admin:{app_label}_{model_name}_{view}", args=[obj.pk])


def test_every_model_of_ours_in_the_admin_is_covered_here():
    ours = {
        f"{model._meta.app_label}.{model._meta.model_name}"
        for model in admin.site._registry
        if model._meta.app_label in ("accounts", "keys", "usage", "sync")
    }
    assert ours == set(CHANGELISTS)


def test_every_admin_action_of_ours_is_covered_here(rf, db):
    request = rf.get("/")
    request.user = User.objects.create_superuser("root", "root@example.com", "pw-root-123456")
    for model, model_admin in admin.site._registry.items():
        label = f"{model._meta.app_label}.{model._meta.model_name}"
        if label in CHANGELISTS:
            assert set(model_admin.get_actions(request)) <= set(CHANGELISTS[label][2]), label


def snapshot(events_upto=None):
    """Everything a request could change in the world: each row of ours, every field
    (audit events only up to `events_upto` when given: a refusal adds its own)."""
    models = [
        Organization,
        Project,
        Tier,
        ApiKey,
        ProbeResult,
        Circuit,
        AuditEvent,
        UsageBucket,
        CostBucket,
        IngestState,
        ModelPrice,
        BudgetAlert,
        SyncState,
        UpstreamKey,
        SpendAlert,
        UpstreamServiceAccount,
        UpstreamEvent,
    ]
    rows = {m: m.objects.order_by("pk") for m in models}
    if events_upto is not None:
        rows[AuditEvent] = rows[AuditEvent].filter(pk__lte=events_upto)
    return {m.__name__: sorted(map(repr, qs.values())) for m, qs in rows.items()}


USERNAMES = {"admin": "alice", "reviewer": "rita", "superuser": "root"}


def last_event_id():
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def assert_one_denial_recorded(since, role, method, url):
    """A 403 is itself audited, once: who, how, where and from which address — and it
    is the only event the refused request made."""
    (event,) = AuditEvent.objects.filter(pk__gt=since)
    assert event.action == "access.denied"
    assert event.actor_label == USERNAMES[role] and event.actor.username == USERNAMES[role]
    assert (event.details["method"], event.details["path"], event.details["ip"]) == (method, url, "127.0.0.1")
    assert (event.target_type, event.target_id) == ("", "")


@pytest.mark.django_db
@pytest.mark.parametrize("role, label, view, method", cases())
def test_each_role_gets_exactly_its_rights_on_each_admin_url(client_as, world, role, label, view, method):
    client = client_as(role)
    obj = world[label]
    before = snapshot()
    since = last_event_id()
    url = url_for(label, view, obj)
    if view.startswith("action:"):
        data = {"action": view.removeprefix("action:"), "_selected_action": [obj.pk], "index": "0"}
        response = client.post(url, data)
    elif method == "POST":
        response = client.post(url, {"post": "yes"} if view == "delete" else {})
    else:
        response = client.get(url)

    want = expected(role, label, view, method)
    if want == "login":
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))
    elif want == "ok":
        assert response.status_code in (200, 302)
        if response.status_code == 200 and view == "delete":
            # The confirmation page, not "your account doesn't have permission".
            assert "permission to delete" not in response.content.decode()
    elif want == "lacks key delete":
        # GET: the confirmation page names the missing right; POST: refused.
        assert response.status_code in (200, 403)
        if response.status_code == 200:
            page = response.content.decode()
            assert "permission to delete" in page or "Cannot delete" in page
            assert "API key" in page
    else:
        assert response.status_code == want
    if want in ("login", 403, "lacks key delete") or (want == 200 and method == "GET"):
        # Refused (or only looked): the effect is nothing at all, not just a status code,
        # but for the one event that records the refusal.
        if response.status_code == 403:
            assert_one_denial_recorded(since, role, method, url)
        else:
            assert last_event_id() == since
        assert snapshot(events_upto=since) == before


# Pages that only read: every staff role may look (a POST is not allowed), nobody changes anything.
READ_ONLY_PAGES = {
    "admin:index": {},  # the dashboard (tests/test_dashboard.py checks what it shows)
    "admin:usage_estimate_cost": {"model": "gpt-4o-mini", "input_tokens": "1000", "output_tokens": "10"},
    "admin:usage_reconciliation": {"months": "3"},
}


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("page", list(READ_ONLY_PAGES))
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_its_rights_on_each_read_only_page(client_as, world, role, page, method):
    client = client_as(role)
    before = snapshot()
    send = client.get if method == "GET" else client.post
    response = send(reverse(page), READ_ONLY_PAGES[page])
    if role in ("outsider", "anonymous"):
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))
    else:
        assert response.status_code == (200 if method == "GET" else 405)
    assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "reviewer", "superuser"])
@pytest.mark.parametrize("label", list(CHANGELISTS))
def test_each_changelist_searches_and_filters_for_each_staff_role(client_as, world, role, label):
    params, count, _ = CHANGELISTS[label]
    ids = {"TIER": world["accounts.tier"].pk, "ORG": world["accounts.organization"].pk}
    params = {k: ids.get(v, v) for k, v in params.items()}
    response = client_as(role).get(url_for(label, "changelist", None), params)
    assert response.status_code == 200
    assert response.context["cl"].result_count == count
    # And the filter really filters: a value nothing matches finds nothing.
    response = client_as(role).get(url_for(label, "changelist", None), {"q": "no-such-thing-anywhere"})
    assert response.context["cl"].result_count == 0


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "reviewer", "superuser"])
def test_nobody_can_add_change_or_delete_an_audit_event(client_as, world, role):
    client = client_as(role)
    event = world["accounts.auditevent"]
    assert client.get(reverse("admin:accounts_auditevent_add")).status_code == 403
    assert client.post(reverse("admin:accounts_auditevent_add"), {"action": "x"}).status_code == 403
    change = reverse("admin:accounts_auditevent_change", args=[event.pk])
    assert client.post(change, {"action": "tampered", "actor_label": "x"}).status_code == 403
    assert client.post(reverse("admin:accounts_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.action == "key.created"
    # Nothing was added but the four refusals, each recorded as one.
    others = AuditEvent.objects.exclude(pk=event.pk)
    assert [e.action for e in others] == ["access.denied"] * 4
    assert {e.actor_label for e in others} == {USERNAMES[role]}


@pytest.mark.django_db
def test_a_reviewer_sees_no_add_button_no_actions_and_no_editable_fields(client_as, world):
    client = client_as("reviewer")
    html = client.get(reverse("admin:keys_apikey_changelist")).content.decode()
    assert reverse("admin:keys_apikey_add") not in html
    assert "revoke_selected" not in html
    html = client.get(reverse("admin:keys_apikey_change", args=[world["keys.apikey"].pk])).content.decode()
    assert 'name="secret"' not in html
    assert 'name="_save"' not in html


@pytest.mark.django_db
def test_a_reviewer_cannot_edit_tiers_in_the_list(client_as, world):
    tier = world["accounts.tier"]
    data = {
        "form-TOTAL_FORMS": 1,
        "form-INITIAL_FORMS": 1,
        "form-0-id": tier.pk,
        "form-0-requests_per_minute": 1,
        "form-0-tokens_per_minute": 1,
        "form-0-position": 0,
        "_save": "Save",
    }
    assert client_as("reviewer").post(reverse("admin:accounts_tier_changelist"), data).status_code == 403
    tier.refresh_from_db()
    assert tier.requests_per_minute == 500


def changelist_queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def add_rows(n, org, project):
    """n more keys, each with its own project, probe result and outcome."""
    tier = Tier.objects.get(name="Tier 2")
    for i in range(n):
        p = Project.objects.create(organization=org, name=f"P{i} {Project.objects.count()}", tier=tier)
        key = ApiKey(organization=org, project=p, name=f"k{i}", last_probe_outcome="invalid_key")
        key.set_secret(formats.generate())
        key.save()
        ProbeResult.objects.create(key=key, slot=i, outcome="invalid_key", http_status=401)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "label",
    [
        "keys.apikey",
        "accounts.project",
        "accounts.organization",
        "keys.proberesult",
        "accounts.auditevent",
        "sync.syncedorganization",
    ],
)
def test_changelist_queries_stay_constant_as_rows_grow(client_as, world, label):
    client = client_as("admin")
    org = world["accounts.organization"]
    url = url_for(label, "changelist", None)
    add_rows(2, org, world["accounts.project"])
    Organization.objects.create(name="Other", slug="other")
    for key in ApiKey.objects.all():
        AuditEvent.record("test", "key.created", key)
    few = changelist_queries(client, url)
    add_rows(27, org, world["accounts.project"])
    for i in range(27):
        Organization.objects.create(name=f"Org {i}", slug=f"org-{i}")
    for key in ApiKey.objects.all():
        AuditEvent.record("test", "key.updated", key)
    many = changelist_queries(client, url)
    assert ApiKey.objects.count() == 30
    assert many == few


# --- The key page's Probe now and probe status (keys/probe_admin.py) -----------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_its_rights_on_the_key_pages_probe_endpoints(client_as, world, role, monkeypatch):
    from keys import tasks as key_tasks

    sent = []
    monkeypatch.setattr(key_tasks.probe_batch, "delay", lambda claims: sent.append(claims))
    key = world["keys.apikey"]
    client = client_as(role)
    status_url = reverse("admin:keys_apikey_probe_status", args=[key.pk])
    probe_url = reverse("admin:keys_apikey_probe_now", args=[key.pk])
    before = snapshot()
    since = last_event_id()
    status = client.get(status_url)
    probe = client.post(probe_url)
    if role in ("outsider", "anonymous"):
        for response in (status, probe):
            assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
        assert sent == [] and last_event_id() == since and snapshot() == before
    elif role == "reviewer":
        assert status.status_code == 200 and status.json()["outcome"] == "ok"
        assert probe.status_code == 403
        assert sent == []
        assert_one_denial_recorded(since, role, "POST", probe_url)
        assert snapshot(events_upto=since) == before
    else:
        assert status.status_code == 200
        assert probe.status_code == 302
        assert [c[0] for batch in sent for c in batch] == [str(key.pk)]
        (event,) = AuditEvent.objects.filter(pk__gt=since)
        assert (event.action, event.target_id, event.actor.username) == (
            "key.probe_requested",
            str(key.pk),
            USERNAMES[role],
        )
