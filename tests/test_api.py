"""The REST API (api/): tokens, roles, validation, audit, rate limit, query counts, and no
secret in any answer. Secrets and tokens are generated at run time."""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
import time_machine
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Organization, Project, Tier
from api.forms import ApiTokenForm
from api.models import ApiToken
from keys import formats
from keys.models import ApiKey, Kind
from usage.models import CostBucket

API = "/api/v1"
TOKENS = "/admin/api/apitoken/"


@pytest.fixture(autouse=True)
def fresh_cache_and_broker():
    """An empty Redis database: no rate-limit windows or queued probes from another test."""
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def make_token(user, **fields):
    token = ApiToken(user=user, name=fields.pop("name", "ci"), **fields)
    plaintext = token.issue()
    token.save()
    return token, plaintext


@pytest.fixture
def admin_token(admin_user):
    return make_token(admin_user)


@pytest.fixture
def reviewer_token(reviewer):
    return make_token(reviewer, name="reviews")


def call(client, method, path, token=None, body=None, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method == "GET":
        return client.get(API + path, params, headers=headers)
    return getattr(client, method.lower())(
        API + path, json.dumps(body or {}), content_type="application/json", headers=headers
    )


def queued_probe_messages(broker):
    return [m.decode() for m in broker.lrange("celery", 0, -1)]


def world_snapshot():
    """Every row a write could touch, except the audit events of the calls themselves
    (api.call, and access.denied for a refused one: the tests count those apart)."""
    calls = ("api.call", "access.denied")
    return {
        "keys": sorted(map(repr, ApiKey.objects.order_by("pk").values())),
        "projects": sorted(map(repr, Project.objects.order_by("pk").values())),
        "orgs": sorted(map(repr, Organization.objects.order_by("pk").values())),
        "audit": sorted(map(repr, AuditEvent.objects.exclude(action__in=calls).order_by("pk").values())),
    }


def key_body(project, secret, **extra):
    return {"project": project.pk, "name": "ci key", "secret": secret, **extra}


# --- tokens ---------------------------------------------------------------------------------
def test_a_new_token_is_shown_once_and_stored_only_as_its_prefix_and_hash(admin_client, admin_user):
    response = admin_client.post(reverse("admin:api_apitoken_add"), {"name": "CI deploys", "expires_at_0": ""})
    assert response.status_code == 200
    html = response.content.decode()
    assert response["Cache-Control"].startswith("no-store") or "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get()
    plaintext = html.split('id="api-token" readonly size="60" value="')[1].split('"')[0]
    assert plaintext.startswith("occ_") and len(plaintext) == 44
    assert token.user == admin_user
    assert token.prefix == plaintext[:8]
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    stored = repr(list(ApiToken.objects.values())) + repr(list(AuditEvent.objects.values()))
    assert plaintext not in stored
    assert AuditEvent.objects.filter(action="api_token.created", target_id=str(token.pk)).count() == 1
    # Never again: not on the list, not on its page, not in a message.
    for url in (TOKENS, reverse("admin:api_apitoken_change", args=[token.pk])):
        page = admin_client.get(url).content.decode()
        assert plaintext not in page and token.token_hash not in page
        assert f"{token.prefix}…" in page
    assert plaintext not in repr(admin_client.session.items()) + repr(admin_client.cookies)
    # And it works.
    assert call(admin_client, "GET", "/organizations", plaintext).status_code == 200


def test_an_expired_a_revoked_and_an_unknown_token_get_401_in_the_error_shape(client, admin_user, org):
    live, live_plain = make_token(admin_user)
    _, expired = make_token(admin_user, expires_at=timezone.now() + timedelta(hours=1))
    _, revoked = make_token(admin_user, revoked_at=timezone.now())
    assert call(client, "GET", "/organizations", live_plain).status_code == 200
    assert call(client, "GET", "/organizations", expired).status_code == 200
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        response = call(client, "GET", "/organizations", expired)
    assert response.status_code == 401
    for token in (revoked, "occ_" + "x" * 40, live_plain[:-1]):
        response = call(client, "GET", "/organizations", token)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
        assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Token abc", "Basic YWxpY2U6cHc=", "bearer " + "y" * 300])
def test_a_missing_or_malformed_authorization_header_gets_401(client, db, header):
    response = client.get(API + "/keys", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_session_login_is_not_api_authentication(admin_client):
    # Token auth only: a browser's session cookie opens nothing, so CSRF cannot apply.
    assert admin_client.get(API + "/organizations").status_code == 401


def test_a_token_whose_user_is_no_longer_staff_or_active_stops_working(client, admin_user, org):
    _, plaintext = make_token(admin_user)
    assert call(client, "GET", "/organizations", plaintext).status_code == 200
    User.objects.filter(pk=admin_user.pk).update(is_staff=False)
    assert call(client, "GET", "/organizations", plaintext).status_code == 401
    User.objects.filter(pk=admin_user.pk).update(is_staff=True, is_active=False)
    assert call(client, "GET", "/organizations", plaintext).status_code == 401


def test_a_token_follows_its_users_role_at_each_call(client, admin_user, project):
    _, plaintext = make_token(admin_user)
    admin_user.groups.clear()  # no longer a console admin
    response = call(client, "POST", "/keys", plaintext, key_body(project, formats.generate()))
    assert response.status_code == 403
    assert ApiKey.objects.count() == 0


def test_revoking_a_token_in_the_admin_ends_it_and_is_audited(client, admin_client, reviewer, admin_user):
    token, plaintext = make_token(reviewer)
    assert call(client, "GET", "/keys", plaintext).status_code == 200
    response = admin_client.post(TOKENS, {"action": "revoke_selected", "_selected_action": [token.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert event.actor == admin_user and event.details["prefix"] == token.prefix
    client.logout()
    assert call(client, "GET", "/keys", plaintext).status_code == 401


def test_last_use_is_recorded_at_most_once_a_minute(client, admin_user, org):
    token, plaintext = make_token(admin_user)
    start = datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        call(client, "GET", "/organizations", plaintext)
        token.refresh_from_db()
        assert token.last_used_at == start
        clock.shift(30)
        with CaptureQueriesContext(connection) as ctx:
            call(client, "GET", "/organizations", plaintext)
        assert not [q for q in ctx.captured_queries if q["sql"].startswith('UPDATE "api_apitoken"')]
        clock.shift(40)
        call(client, "GET", "/organizations", plaintext)
        token.refresh_from_db()
        assert token.last_used_at == start + timedelta(seconds=70)


# --- the token admin, role by role ---------------------------------------------------------------
@pytest.mark.parametrize("role", ["admin", "reviewer"])
def test_each_staff_role_lists_tokens_and_makes_its_own(client, admin_user, reviewer, role):
    user = admin_user if role == "admin" else reviewer
    other = reviewer if role == "admin" else admin_user
    others_token, _ = make_token(other, name="someone else's")
    client.force_login(user)
    page = client.get(TOKENS)
    assert page.status_code == 200
    assert f"{others_token.prefix}…" in page.content.decode()
    response = client.post(reverse("admin:api_apitoken_add"), {"name": "mine", "expires_at_0": ""})
    assert response.status_code == 200
    assert ApiToken.objects.get(name="mine").user == user
    # Nobody deletes a token: the audit log keeps naming it.
    url = reverse("admin:api_apitoken_delete", args=[others_token.pk])
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert ApiToken.objects.filter(pk=others_token.pk).exists()


def test_a_reviewer_cannot_revoke_or_rename_someone_elses_token(reviewer_client, admin_user, reviewer):
    token, _ = make_token(admin_user, name="admin's")
    own, _ = make_token(reviewer, name="rita's")
    response = reviewer_client.post(TOKENS, {"action": "revoke_selected", "_selected_action": [token.pk, own.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    own.refresh_from_db()
    assert token.revoked_at is None  # not theirs
    assert own.revoked_at is not None  # their own
    change = reverse("admin:api_apitoken_change", args=[token.pk])
    assert reviewer_client.post(change, {"name": "renamed"}).status_code == 403
    token.refresh_from_db()
    assert token.name == "admin's"


def test_anonymous_visitors_get_the_login_page_for_tokens(client, db):
    for url in (TOKENS, reverse("admin:api_apitoken_add")):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    assert ApiToken.objects.count() == 0


def test_a_new_token_cannot_be_born_expired(admin_client):
    past = timezone.now() - timedelta(days=1)
    response = admin_client.post(
        reverse("admin:api_apitoken_add"),
        {"name": "late", "expires_at_0": past.strftime("%Y-%m-%d"), "expires_at_1": "00:00:00"},
    )
    assert response.status_code == 200
    assert "must expire in the future" in response.content.decode()
    assert ApiToken.objects.count() == 0


# --- reading ----------------------------------------------------------------------------------
def test_lists_show_organizations_projects_and_keys_with_hints_only(client, admin_token, make_key):
    key, secret = make_key(name="prod", owner="team-a")
    _, plaintext = admin_token
    orgs = call(client, "GET", "/organizations", plaintext).json()
    assert [o["slug"] for o in orgs["items"]] == ["acme"] and orgs["next_cursor"] is None
    projects = call(client, "GET", "/projects", plaintext, organization="acme").json()
    assert [p["name"] for p in projects["items"]] == ["Chatbot"]
    assert projects["items"][0]["tier"] == "Tier 1"
    keys = call(client, "GET", "/keys", plaintext).json()["items"]
    assert len(keys) == 1
    row = keys[0]
    assert row["id"] == str(key.pk) and row["hint"] == key.hint and row["owner"] == "team-a"
    assert row["organization"] == "acme" and row["project"] == "Chatbot"
    assert not {"secret", "secret_ciphertext", "fingerprint", "secret_key_version"} & set(row)
    text = json.dumps(keys)
    assert secret not in text and key.fingerprint not in text


def test_key_filters_by_organization_project_state_and_flag(client, admin_token, make_key, org, project):
    other_org = Organization.objects.create(name="Other", slug="other")
    other_project = Project.objects.create(organization=other_org, name="Elsewhere")
    old, _ = make_key(name="old", issued_at=timezone.now() - timedelta(days=400))
    fresh, _ = make_key(name="fresh")
    elsewhere, _ = make_key(name="elsewhere", project=other_project)
    _, plaintext = admin_token

    def ids(**params):
        response = call(client, "GET", "/keys", plaintext, **params)
        assert response.status_code == 200, response.content
        return {row["name"] for row in response.json()["items"]}

    assert ids() == {"old", "fresh", "elsewhere"}
    assert ids(organization="acme") == {"old", "fresh"}
    assert ids(project=other_project.pk) == {"elsewhere"}
    assert ids(state="overdue") == {"old"}
    assert ids(flag="overdue", organization="acme") == {"old"}
    response = call(client, "GET", "/keys", plaintext, organization="nope")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"organization": ["No organization has this slug."]}
    response = call(client, "GET", "/keys", plaintext, state="sideways")
    assert response.status_code == 400 and "state" in response.json()["error"]["fields"]


def test_a_cursor_walks_every_key_exactly_once_and_pages_are_bounded(client, admin_token, make_key):
    made = {str(make_key(name=f"k{i}")[0].pk) for i in range(7)}
    _, plaintext = admin_token
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = call(client, "GET", "/keys", plaintext, **params).json()
        assert len(page["items"]) <= 3
        seen += [row["id"] for row in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 7
    too_big = call(client, "GET", "/keys", plaintext, limit=settings.API_PAGE_SIZE_MAX + 1)
    assert too_big.status_code == 400
    assert too_big.json()["error"]["fields"] == {"limit": [f"At most {settings.API_PAGE_SIZE_MAX}."]}
    assert call(client, "GET", "/keys", plaintext, cursor="not-a-uuid").status_code == 400
    assert call(client, "GET", "/keys", plaintext, limit=0).status_code == 400


def test_a_keys_status_shows_its_last_probe_next_probe_rotation_state_and_flags(client, admin_token, make_key):
    now = timezone.now().replace(microsecond=0)  # JSON carries milliseconds
    key, _ = make_key(issued_at=now - timedelta(days=100))
    ApiKey.objects.filter(pk=key.pk).update(
        last_probe_outcome="invalid_key",
        last_probe_at=now - timedelta(minutes=5),
        consecutive_failures=4,
        next_probe_at=now + timedelta(minutes=55),
    )
    _, plaintext = admin_token
    response = call(client, "GET", f"/keys/{key.pk}/status", plaintext)
    assert response.status_code == 200
    body = response.json()
    assert body["status"]["last_probe_outcome"] == "invalid_key"
    assert body["status"]["consecutive_failures"] == 4
    assert datetime.fromisoformat(body["status"]["next_probe_at"]) == now + timedelta(minutes=55)
    assert body["rotation"]["state"] == "overdue"
    assert body["rotation"]["policy_days"] == 90
    assert body["rotation"]["days_overdue"] == 10
    flags = {f["name"]: f["reason"] for f in body["rotation"]["flags"]}
    assert set(flags) == {"overdue", "failing", "usage_unknown"}
    assert "invalid" in flags["failing"]
    assert call(client, "GET", f"/keys/{key.pk}", plaintext).json()["rotation"] == body["rotation"]
    missing = call(client, "GET", "/keys/00000000-0000-0000-0000-000000000000/status", plaintext)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_rotation_report_has_totals_filters_and_pages(client, admin_token, make_key):
    now = timezone.now()
    make_key(name="overdue", issued_at=now - timedelta(days=200))
    make_key(name="due soon", issued_at=now - timedelta(days=85))
    make_key(name="fine")
    _, plaintext = admin_token
    body = call(client, "GET", "/reports/rotation", plaintext, limit=2).json()
    assert body["count"] == 3 and len(body["rows"]) == 2 and body["next_page"] == 2
    assert body["totals"]["overdue"] == 1 and body["totals"]["due_soon"] == 1 and body["totals"]["compliant"] == 1
    assert body["flag_totals"]["overdue"] == 1
    rest = call(client, "GET", "/reports/rotation", plaintext, limit=2, page=2).json()
    assert len(rest["rows"]) == 1 and rest["next_page"] is None
    past_the_end = call(client, "GET", "/reports/rotation", plaintext, limit=2, page=3).json()
    assert past_the_end["rows"] == [] and past_the_end["count"] == 3
    only = call(client, "GET", "/reports/rotation", plaintext, state="overdue").json()
    assert [r["key_name"] for r in only["rows"]] == ["overdue"] and only["count"] == 1
    assert only["filters"] == {"state": "overdue"}
    assert AuditEvent.objects.filter(action="report.viewed", details__via="api").count() == 4
    bad = call(client, "GET", "/reports/rotation", plaintext, as_of="last tuesday")
    assert bad.status_code == 400 and "as_of" in bad.json()["error"]["fields"]
    future = call(client, "GET", "/reports/rotation", plaintext, as_of="2999-01-01")
    assert future.status_code == 400


def test_budgets_show_spend_percent_and_state_per_organization_and_project(client, admin_token, org, project):
    now = timezone.now()
    Organization.objects.filter(pk=org.pk).update(monthly_budget_usd=Decimal("100"))
    Project.objects.filter(pk=project.pk).update(monthly_budget_usd=Decimal("10"))
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    CostBucket.objects.create(
        organization=org,
        project=project,
        start_time=day,
        end_time=day + timedelta(days=1),
        upstream_project_id=project.openai_project_id,
        line_item="gpt-4o-mini, input",
        amount=Decimal("12.5"),
    )
    _, plaintext = admin_token
    orgs = call(client, "GET", "/budgets/organizations", plaintext).json()["items"]
    assert orgs[0]["scope"] == "organization" and orgs[0]["budget_usd"] == "100.00"
    assert Decimal(orgs[0]["spend"]["billed_usd"]) == Decimal("12.5")
    assert Decimal(orgs[0]["percent_used"]) == Decimal("12.5")
    projects = call(client, "GET", "/budgets/projects", plaintext, organization="acme").json()["items"]
    assert projects[0]["project"] == "Chatbot" and projects[0]["state"] == "over"
    assert projects[0]["thresholds_crossed"] == [50, 80, 100]


# --- writing ----------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # the first probe is queued on commit
def test_an_admin_token_registers_a_key_with_the_admins_validation_audit_and_first_probe(
    client, admin_token, admin_user, project, fresh_cache_and_broker
):
    secret = formats.generate()
    _, plaintext = admin_token
    response = call(client, "POST", "/keys", plaintext, key_body(project, secret, owner="ci"))
    assert response.status_code == 201, response.content
    text = response.content.decode()
    assert secret not in text
    key = ApiKey.objects.get()
    assert key.reveal_secret() == secret
    body = response.json()
    assert body["id"] == str(key.pk) and body["hint"] == formats.hint(secret) and body["first_probe_queued"] is True
    event = AuditEvent.objects.get(action="key.created")
    assert event.actor == admin_user and event.details["hint"] == key.hint
    messages = queued_probe_messages(fresh_cache_and_broker)
    assert len(messages) == 1 and str(key.pk) in messages[0] and secret not in messages[0]
    assert secret not in repr(list(AuditEvent.objects.values()))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"secret": "sk-proj-short"}, "secret"),
        ({"name": ""}, "name"),
        ({"kind": "admin"}, "project"),
        ({"project": 999999}, "project"),
        ({"project": None}, "project"),
        ({"organization": "nope"}, "organization"),
        ({"base_url": "http://10.0.0.1/v1"}, "base_url"),
        ({"expires_at": "2001-01-01T00:00:00Z", "issued_at": "2002-01-01T00:00:00Z"}, "expires_at"),
        ({"issued_at": "yesterday-ish"}, "issued_at"),
        ({"provider": "anthropic"}, "provider"),
    ],
)
def test_bad_input_gets_400_with_field_errors_and_writes_nothing(client, admin_token, project, change, field):
    secret = formats.generate()
    _, plaintext = admin_token
    before = world_snapshot()
    response = call(client, "POST", "/keys", plaintext, {**key_body(project, secret), **change})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert secret not in response.content.decode()
    assert world_snapshot() == before


def test_a_key_shaped_name_is_refused_and_never_echoed(client, admin_token, project):
    secret, other = formats.generate(), formats.generate()
    _, plaintext = admin_token
    response = call(client, "POST", "/keys", plaintext, key_body(project, secret, name=f"prod {other}"))
    assert response.status_code == 400 and "name" in response.json()["error"]["fields"]
    assert other not in response.content.decode() and secret not in response.content.decode()


def test_a_body_that_is_not_json_gets_400(client, admin_token, project):
    _, plaintext = admin_token
    response = client.post(
        API + "/keys", "{not json", content_type="application/json", headers={"Authorization": f"Bearer {plaintext}"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"
    assert ApiKey.objects.count() == 0


def test_a_duplicate_secret_is_refused_naming_the_project_that_holds_it(client, admin_token, make_key, project):
    existing, secret = make_key(name="the original")
    _, plaintext = admin_token
    other = Project.objects.create(organization=project.organization, name="Elsewhere", tier=Tier.objects.first())
    before = world_snapshot()
    response = call(client, "POST", "/keys", plaintext, key_body(other, secret, name="copy"))
    assert response.status_code == 400
    messages = response.json()["error"]["fields"]["secret"]
    assert messages == ["This key is already registered as “the original” in project “Acme / Chatbot”."]
    assert secret not in response.content.decode()
    assert world_snapshot() == before


def test_a_reviewer_token_reads_but_every_write_is_403_and_changes_nothing(
    client, reviewer_token, make_key, project, fresh_cache_and_broker
):
    key, _ = make_key()
    _, plaintext = reviewer_token
    assert call(client, "GET", "/keys", plaintext).status_code == 200
    assert call(client, "GET", f"/keys/{key.pk}/status", plaintext).status_code == 200
    assert call(client, "GET", "/reports/rotation", plaintext).status_code == 200
    assert call(client, "GET", "/budgets/projects", plaintext).status_code == 200
    before = world_snapshot()
    writes = [
        ("POST", "/keys", key_body(project, formats.generate())),
        ("POST", "/keys", {"garbage": True}),  # refused for the role before the body is read
        ("POST", f"/keys/{key.pk}/probe", None),
    ]
    for method, path, body in writes:
        response = call(client, method, path, plaintext, body)
        assert response.status_code == 403, (path, response.content)
        assert response.json()["error"]["code"] == "forbidden"
    assert world_snapshot() == before
    # Each refusal is recorded once, as in the admin.
    denied = AuditEvent.objects.filter(action="access.denied")
    assert [(e.details["method"], e.details["path"]) for e in denied.order_by("pk")] == [
        (method, f"/api/v1{path}") for method, path, _ in writes
    ]
    assert queued_probe_messages(fresh_cache_and_broker) == []


def test_an_admin_token_requests_a_probe_and_a_revoked_key_is_refused(
    client, admin_token, make_key, fresh_cache_and_broker
):
    key, secret = make_key()
    revoked, _ = make_key(revoked_at=timezone.now())
    _, plaintext = admin_token
    response = call(client, "POST", f"/keys/{key.pk}/probe", plaintext)
    assert response.status_code == 202
    assert response.json() == {"id": str(key.pk), "queued": True, "message": "Probe queued."}
    key.refresh_from_db()
    assert key.next_probe_at > timezone.now()  # leased to the queued batch
    messages = queued_probe_messages(fresh_cache_and_broker)
    assert len(messages) == 1 and str(key.pk) in messages[0] and secret not in messages[0]
    response = call(client, "POST", f"/keys/{revoked.pk}/probe", plaintext)
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    revoked.refresh_from_db()
    assert revoked.next_probe_at is None
    assert len(queued_probe_messages(fresh_cache_and_broker)) == 1


# --- audit, rate limit, query counts -------------------------------------------------------------
def test_every_call_is_audited_with_the_tokens_id_method_path_and_status(client, admin_token, admin_user, make_key):
    token, plaintext = admin_token
    key, _ = make_key()
    calls = [
        ("GET", "/keys", 200),
        ("GET", f"/keys/{key.pk}/status", 200),
        ("GET", "/keys/00000000-0000-0000-0000-000000000000", 404),
        ("GET", "/keys?limit=100000", 400),
        ("POST", f"/keys/{key.pk}/probe", 202),
    ]
    for method, path, status in calls:
        assert call(client, method, path, plaintext).status_code == status
    events = list(AuditEvent.objects.filter(action="api.call").order_by("pk"))
    assert [(e.details["method"], e.details["path"], e.details["status"]) for e in events] == [
        (m, API + p.split("?")[0], s) for m, p, s in calls
    ]
    assert {e.details["token"] for e in events} == {token.pk}
    assert {e.details["token_prefix"] for e in events} == {token.prefix}
    assert {e.actor for e in events} == {admin_user}
    assert {e.target_id for e in events} == {str(token.pk)}
    assert plaintext not in repr([e.details for e in events])


def test_a_key_pasted_into_a_url_stays_out_of_the_audit_log_and_the_log(client, admin_token, caplog):
    secret = formats.generate()
    _, plaintext = admin_token
    with caplog.at_level("DEBUG"):
        assert call(client, "GET", f"/keys/{secret}/status", plaintext).status_code == 404
        assert call(client, "GET", f"/nowhere/{secret}", plaintext).status_code == 404
        assert call(client, "GET", f"/keys/{secret}/status").status_code == 401
    assert secret not in repr(list(AuditEvent.objects.values()))
    lines = [r.getMessage() for r in caplog.records]
    assert any("Not Found: /api/v1/keys/" in line for line in lines)
    assert not [line for line in lines if secret in line or plaintext in line]


def test_a_500_is_the_error_shape_with_its_traceback_logged(client, admin_token, monkeypatch, caplog):
    from api import endpoints

    def broken(org):
        raise RuntimeError("a bug")

    monkeypatch.setattr(endpoints, "organization_out", broken)
    Organization.objects.create(name="Any", slug="any")
    _, plaintext = admin_token
    response = call(client, "GET", "/organizations", plaintext)
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "Internal error; it was logged."}}
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "django.request"]
    assert len(errors) == 1 and errors[0].exc_info and "a bug" in str(errors[0].exc_info[1])
    assert AuditEvent.objects.get(action="api.call").details["status"] == 500


def test_calls_with_a_revoked_token_are_audited_too(client, admin_user, org):
    token, plaintext = make_token(admin_user, revoked_at=timezone.now())
    assert call(client, "GET", "/organizations", plaintext).status_code == 401
    event = AuditEvent.objects.get(action="api.call")
    assert event.details["token"] == token.pk and event.details["status"] == 401


@override_settings(API_RATE_LIMIT_PER_MINUTE=3)
def test_a_token_over_its_rate_limit_gets_429_with_retry_after_until_the_next_minute(client, admin_user, org):
    token, plaintext = make_token(admin_user)
    _, other = make_token(admin_user, name="other")
    start = datetime(2026, 3, 2, 10, 0, 20, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        for _ in range(3):
            assert call(client, "GET", "/organizations", plaintext).status_code == 200
        for _ in range(3):
            refused = call(client, "GET", "/organizations", plaintext)
            assert refused.status_code == 429
        assert refused["Retry-After"] == "40"
        assert refused.json()["error"]["code"] == "rate_limited"
        assert call(client, "GET", "/organizations", other).status_code == 200  # per token
        clock.shift(40)
        assert call(client, "GET", "/organizations", plaintext).status_code == 200
    statuses = [e.details["status"] for e in AuditEvent.objects.filter(action="api.call", details__token=token.pk)]
    assert sorted(statuses) == [200, 200, 200, 200, 429]  # one 429 audited per window, not each


def queries_for(client, path, token, **params):
    with CaptureQueriesContext(connection) as ctx:
        response = call(client, "GET", path, token, **params)
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries)


def grow(n, org):
    tier = Tier.objects.get(name="Tier 2")
    for i in range(n):
        p = Project.objects.create(organization=org, name=f"grown {Project.objects.count()}", tier=tier)
        key = ApiKey(organization=org, project=p, name=f"g{i}", last_probe_outcome="invalid_key")
        key.set_secret(formats.generate())
        key.save()
        Organization.objects.create(name=f"grown org {Organization.objects.count()}", slug=f"g-{i}-{p.pk}")


@pytest.mark.parametrize(
    "path, params, most",
    [
        # The token, the user's permissions (user, groups), the rows, the audit event…
        ("/keys", {}, 5),
        ("/organizations", {}, 5),
        # … the organization filter …
        ("/keys", {"organization": "acme", "flag": "failing"}, 6),
        ("/projects", {"organization": "acme"}, 6),
        # … the report's totals, its rows and its report.viewed event, in the report's own
        # transaction with PostgreSQL's JIT off (savepoint, SET LOCAL, release).
        ("/reports/rotation", {}, 10),
    ],
)
def test_query_counts_stay_constant_as_rows_grow(client, admin_token, org, project, path, params, most):
    _, plaintext = admin_token
    grow(3, org)
    call(client, "GET", path, plaintext, **params)  # last_used_at written once
    few = queries_for(client, path, plaintext, **params)
    grow(40, org)
    many = queries_for(client, path, plaintext, **params)
    assert ApiKey.objects.count() == 43
    assert many == few
    assert few == most


def test_a_budget_page_costs_a_fixed_number_of_queries_per_row(client, admin_token, org):
    _, plaintext = admin_token
    call(client, "GET", "/organizations", plaintext)  # last_used_at written once
    one = queries_for(client, "/budgets/organizations", plaintext, limit=1)
    grow(10, org)
    five = queries_for(client, "/budgets/organizations", plaintext, limit=5)
    assert five - one == 4 * 2  # billed by day and usage by day per organization


# --- the schema and no secret anywhere ----------------------------------------------------------
def test_the_schema_and_docs_are_served_at_stable_urls(client, db):
    schema = client.get(API + "/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/keys", "/api/v1/keys/{key_id}/status", "/api/v1/reports/rotation"} <= set(paths)
    assert schema.json()["components"]["securitySchemes"]
    docs = client.get(API + "/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.content.decode()
    assert "cdn" not in docs.content.decode()  # served from our static files (CSP: 'self')


def test_no_secret_in_any_answer_after_registering_a_canary(client, admin_token, project, org):
    canary = formats.generate()
    _, plaintext = admin_token
    created = call(client, "POST", "/keys", plaintext, key_body(project, canary, name="canary"))
    assert created.status_code == 201
    key = ApiKey.objects.get(name="canary")
    admin_key_secret = formats.generate(formats.ADMIN)
    response = call(
        client,
        "POST",
        "/keys",
        plaintext,
        {"organization": org.slug, "kind": Kind.ADMIN, "name": "adm", "secret": admin_key_secret},
    )
    assert response.status_code == 201, response.content
    pages = [
        "/organizations",
        "/projects",
        "/keys",
        f"/keys/{key.pk}",
        f"/keys/{key.pk}/status",
        "/reports/rotation",
        "/budgets/organizations",
        "/budgets/projects",
    ]
    forbidden = [canary, admin_key_secret, key.fingerprint, key.secret_ciphertext.hex()]
    for path in pages:
        text = call(client, "GET", path, plaintext).content.decode()
        for value in forbidden:
            assert value not in text, path
    dump = repr(list(AuditEvent.objects.values())) + repr(list(ApiToken.objects.values()))
    assert canary not in dump and admin_key_secret not in dump and plaintext not in dump


def test_a_refused_value_is_never_echoed_in_a_400(client, admin_token, project):
    # pydantic's errors carry the input; the API's never do.
    too_long = formats.generate() + "A" * 600
    _, plaintext = admin_token
    response = call(client, "POST", "/keys", plaintext, key_body(project, too_long))
    assert response.status_code == 400 and "secret" in response.json()["error"]["fields"]
    assert too_long[:40] not in response.content.decode()
    assert ApiKey.objects.count() == 0


def test_a_malformed_key_id_or_an_unknown_api_path_is_a_json_404(client, admin_token):
    _, plaintext = admin_token
    for path in ("/keys/null,null/status", "/keys/123", "/no-such-thing", "/../v2/keys"):
        response = call(client, "GET", path, plaintext)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_the_export_command_prints_the_served_document_and_is_ours(client, db, tmp_path):
    from io import StringIO

    from django.core.management import call_command, get_commands

    assert get_commands()["export_openapi_schema"] == "api"  # not django-ninja's unguarded one
    out = StringIO()
    call_command("export_openapi_schema", stdout=out)
    assert json.loads(out.getvalue()) == client.get(API + "/openapi.json").json()
    call_command("export_openapi_schema", output=str(tmp_path / "openapi.json"), stdout=StringIO())
    assert json.loads((tmp_path / "openapi.json").read_text())["paths"]


# --- the role matrix of the API: status and effect -------------------------------------------------
API_ROLES = ["admin", "reviewer", "superuser", "outsider"]
API_CALLS = [("GET", "/keys"), ("GET", "/reports/rotation"), ("POST", "/keys"), ("POST", "/keys/KEY/probe")]


def expected_api_status(role, method, path):
    if role == "outsider":  # not staff: no API access at all
        return 401
    if method == "GET":
        return 200
    if role == "reviewer":
        return 403
    return 201 if path == "/keys" else 202


@pytest.mark.parametrize("role", API_ROLES)
@pytest.mark.parametrize("method, path", API_CALLS)
def test_each_role_gets_exactly_its_rights_on_each_api_call(
    client, admin_user, reviewer, outsider, make_key, project, fresh_cache_and_broker, role, method, path
):
    users = {"admin": admin_user, "reviewer": reviewer, "outsider": outsider}
    user = users.get(role) or User.objects.create_superuser("root", "root@example.com", "pw-root-123456")
    _, plaintext = make_token(user)
    key, _ = make_key()
    body = key_body(project, formats.generate(), name="matrix") if path == "/keys" else None
    before = world_snapshot()
    response = call(client, method, path.replace("KEY", str(key.pk)), plaintext, body)
    want = expected_api_status(role, method, path)
    assert response.status_code == want, response.content
    if want in (401, 403) or method == "GET":
        after = world_snapshot()
        # A read changes nothing but its own report.viewed event; a refusal changes nothing.
        if method == "GET" and want == 200 and path == "/reports/rotation":
            assert AuditEvent.objects.filter(action="report.viewed").count() == 1
            after["audit"] = [a for a in after["audit"] if "report.viewed" not in a]
        assert after == before
        assert AuditEvent.objects.filter(action="access.denied").count() == (1 if want == 403 else 0)
        assert queued_probe_messages(fresh_cache_and_broker) == []
    elif path == "/keys":
        assert ApiKey.objects.filter(name="matrix").exists()
    else:
        assert len(queued_probe_messages(fresh_cache_and_broker)) == 1


def test_a_duplicate_that_slips_past_validation_is_still_a_400(client, admin_token, make_key, project, monkeypatch):
    # Two calls registering one secret at once: both validate, the second insert hits the
    # unique fingerprint. Simulated by skipping the form's duplicate check.
    _, secret = make_key(name="first")
    monkeypatch.setattr(ApiKey, "validate_unique", lambda self, exclude=None: None)
    _, plaintext = admin_token
    response = call(client, "POST", "/keys", plaintext, key_body(project, secret, name="second"))
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"secret": ["This key is already registered."]}
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["first"]


def test_a_method_the_path_does_not_have_is_a_json_405(client, admin_token):
    _, plaintext = admin_token
    response = call(client, "DELETE", "/keys", plaintext)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert set(response["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}


def test_an_api_token_is_a_secret_to_the_leak_guard(admin_user, project):
    # Refused in plain fields, removed from error reports and command output, like a key.
    from console.leakguard import find_key_shaped, redact_key_shaped
    from keys.forms import ApiKeyForm

    _, plaintext = make_token(admin_user)
    assert find_key_shaped(f"Bearer {plaintext}") is not None
    assert plaintext not in redact_key_shaped(f"Authorization: Bearer {plaintext}.")
    assert find_key_shaped(f"{plaintext[:-1]}") is None  # a cut-off one is not a token
    form = ApiKeyForm(data={"project": project.pk, "name": plaintext, "secret": formats.generate()})
    assert not form.is_valid() and "name" in form.errors
    name_form = ApiTokenForm(data={"name": f"ci {plaintext}"})
    assert not name_form.is_valid() and "name" in name_form.errors
