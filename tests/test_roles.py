"""Who may do what in the admin, URL by URL.

Console admins have full rights on organizations, projects, tiers, keys and circuits and
may only look at audit events and probe results. Security reviewers may look at
everything and change nothing. Non-staff users and anonymous visitors are sent to the
login page. Nobody, not even a superuser, adds, changes or deletes an audit event.
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
from usage.models import CostBucket, IngestState, UsageBucket

# model label → (search and filter on its changelist, expected result count, actions)
CHANGELISTS = {
    "accounts.organization": ({"q": "Acme", "rotation_policy_days": "90"}, 1, ["delete_selected"]),
    "accounts.project": (
        {"q": "Chatbot", "environment__exact": "development", "archived": "no", "tier__id__exact": "TIER"},
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
    "keys.circuit": ({"q": "api.openai.com", "state__exact": "open"}, 1, ["close_selected", "delete_selected"]),
    "usage.usagebucket": (
        {"q": "gpt-4o-mini", "endpoint__exact": "completions", "registered": "yes"},
        1,
        ["delete_selected"],
    ),
    "usage.costbucket": ({"q": "key_RolesUnknown01", "registered": "no"}, 1, ["delete_selected"]),
    "usage.ingeststate": ({"q": "Acme", "last_outcome__exact": "ok"}, 1, ["delete_selected"]),
}
# What console admins may write; the rest they may only view.
ADMIN_WRITES = {"accounts.organization", "accounts.project", "accounts.tier", "keys.apikey", "keys.circuit"}
# What nobody may write, superusers included.
NOBODY_WRITES = {
    "accounts.auditevent",
    "keys.proberesult",
    "usage.usagebucket",
    "usage.costbucket",
    "usage.ingeststate",
}
# What nobody may add by hand: circuits are made by the breaker, one per API host.
NOBODY_ADDS = {"keys.circuit"}

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
    if role == "admin":
        return "ok" if label in ADMIN_WRITES else 403
    return 403 if label in NOBODY_WRITES else "ok"


@pytest.fixture
def world(admin_user, make_key):
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
        if model._meta.app_label in ("accounts", "keys", "usage")
    }
    assert ours == set(CHANGELISTS)


def test_every_admin_action_of_ours_is_covered_here(rf, db):
    request = rf.get("/")
    request.user = User.objects.create_superuser("root", "root@example.com", "pw-root-123456")
    for model, model_admin in admin.site._registry.items():
        label = f"{model._meta.app_label}.{model._meta.model_name}"
        if label in CHANGELISTS:
            assert set(model_admin.get_actions(request)) <= set(CHANGELISTS[label][2]), label


def snapshot():
    """Everything a request could change in the world: each row of ours, every field."""
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
    ]
    return {m.__name__: sorted(map(repr, m.objects.order_by("pk").values())) for m in models}


@pytest.mark.django_db
@pytest.mark.parametrize("role, label, view, method", cases())
def test_each_role_gets_exactly_its_rights_on_each_admin_url(client_as, world, role, label, view, method):
    client = client_as(role)
    obj = world[label]
    before = snapshot()
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
    else:
        assert response.status_code == want
    if want in ("login", 403) or (want == 200 and method == "GET"):
        # Refused (or only looked): the effect is nothing at all, not just a status code.
        assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "reviewer", "superuser"])
@pytest.mark.parametrize("label", list(CHANGELISTS))
def test_each_changelist_searches_and_filters_for_each_staff_role(client_as, world, role, label):
    params, count, _ = CHANGELISTS[label]
    params = {k: (world["accounts.tier"].pk if v == "TIER" else v) for k, v in params.items()}
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
    assert AuditEvent.objects.count() == 1


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
    "label", ["keys.apikey", "accounts.project", "accounts.organization", "keys.proberesult", "accounts.auditevent"]
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
