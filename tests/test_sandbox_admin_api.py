"""The sandbox's OpenAI Administration API over real HTTP (the `sandbox` fixture's server
subprocess), driven through the official SDK (`client.admin.organization.*`): every body
checked against OpenAI's published spec, paging, refusals, secrets that live and die with
their owners upstream, the audit log, seeded state and faults."""

import time

import httpx2
import openai
import pytest

from keys import formats
from sandbox.admin_api import Collection
from tests import test_sandbox

HTTP = httpx2.Client(timeout=10)
ORG = "org-AdminApiTest01"
openai_spec = test_sandbox.openai_spec  # the session fixture: OpenAI's spec as a test_sandbox.Spec
ALERT = {
    "threshold_amount": 50_000,
    "currency": "USD",
    "interval": "month",
    "notification_channel": {"type": "email", "recipients": ["finance@example.com"]},
}


def client(sandbox, admin_secret, **options):
    return openai.OpenAI(
        api_key="unused", admin_api_key=admin_secret, base_url=sandbox.openai_url, max_retries=0, **options
    )


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


def models_status(sandbox, secret):
    return HTTP.get(sandbox.openai_url + "/models", headers=bearer(secret)).status_code


@pytest.fixture
def admin(sandbox):
    """A registered admin key of ORG; the organization seeded with two users, one project
    and its member."""
    secret = formats.generate(formats.ADMIN)
    sandbox.register(secret, organization=ORG)
    sandbox.seed_admin(
        ORG,
        users=[
            {"id": "user_owner", "name": "Olga Owner", "email": "olga@example.com", "role": "owner"},
            {"id": "user_dev", "name": "Dev Eloper", "email": "dev@example.com"},
        ],
        projects=[{"id": "proj_main", "name": "Main", "users": [{"id": "user_owner", "role": "owner"}]}],
        admin_keys=[{"id": "key_admin0001", "name": "Test admin", "key": secret, "owner": "user_owner"}],
    )
    return secret


@pytest.fixture
def sdk(sandbox, admin):
    return client(sandbox, admin).admin.organization


def checked(openai_spec, raw):
    """Check a with_raw_response result against the spec; returns its parsed body."""
    assert openai_spec.check(raw.http_response)
    return raw.http_response.json()


# --- Every endpoint, every body against the spec ------------------------------------------


def test_every_endpoint_answers_what_the_spec_documents(sandbox, sdk, openai_spec):
    raw = sdk.with_raw_response
    projects = sdk.projects.with_raw_response
    created = checked(openai_spec, projects.create(name="Checkout"))
    pid = created["id"]
    assert created["object"] == "organization.project" and created["status"] == "active"
    assert checked(openai_spec, projects.retrieve(pid))["name"] == "Checkout"
    assert checked(openai_spec, projects.update(pid, name="Checkout v2"))["name"] == "Checkout v2"
    listed = checked(openai_spec, projects.list(limit=100))
    assert [p["id"] for p in listed["data"]] == ["proj_main", pid]

    account = checked(openai_spec, sdk.projects.service_accounts.with_raw_response.create(pid, name="worker"))
    assert account["api_key"]["value"].startswith("sk-svcacct-") and account["role"] == "member"
    sa_id, key_id = account["id"], account["api_key"]["id"]
    accounts = sdk.projects.service_accounts.with_raw_response
    assert checked(openai_spec, accounts.retrieve(sa_id, project_id=pid))["id"] == sa_id
    assert [a["id"] for a in checked(openai_spec, accounts.list(pid))["data"]] == [sa_id]

    keys = sdk.projects.api_keys.with_raw_response
    key = checked(openai_spec, keys.retrieve(key_id, project_id=pid))
    assert key["owner"]["type"] == "service_account" and key["owner"]["service_account"]["id"] == sa_id
    assert key["redacted_value"] == formats.hint(account["api_key"]["value"])
    assert account["api_key"]["value"] not in str(key)
    assert [k["id"] for k in checked(openai_spec, keys.list(pid))["data"]] == [key_id]

    users = checked(openai_spec, sdk.projects.users.with_raw_response.list("proj_main"))
    assert [(u["id"], u["role"]) for u in users["data"]] == [("user_owner", "owner")]
    one = checked(openai_spec, sdk.projects.users.with_raw_response.retrieve("user_owner", project_id="proj_main"))
    assert one["email"] == "olga@example.com"
    org_users = checked(openai_spec, sdk.users.with_raw_response.list())
    assert [u["id"] for u in org_users["data"]] == ["user_owner", "user_dev"]
    assert checked(openai_spec, sdk.users.with_raw_response.retrieve("user_dev"))["object"] == "organization.user"

    limits = checked(openai_spec, sdk.projects.rate_limits.with_raw_response.list_rate_limits(pid))
    assert limits["data"] and all(limit["object"] == "project.rate_limit" for limit in limits["data"])
    first = limits["data"][0]
    updated = checked(
        openai_spec,
        sdk.projects.rate_limits.with_raw_response.update_rate_limit(
            first["id"], project_id=pid, max_requests_per_1_minute=42
        ),
    )
    assert updated["max_requests_per_1_minute"] == 42

    admin_keys = sdk.admin_api_keys.with_raw_response
    made = checked(openai_spec, admin_keys.create(name="Automation"))
    assert made["value"].startswith("sk-admin-") and made["redacted_value"] == formats.hint(made["value"])
    assert checked(openai_spec, admin_keys.retrieve(made["id"]))["name"] == "Automation"
    assert [k["id"] for k in checked(openai_spec, admin_keys.list())["data"]] == ["key_admin0001", made["id"]]
    assert checked(openai_spec, admin_keys.delete(made["id"]))["deleted"] is True

    project_alerts = sdk.projects.spend_alerts.with_raw_response
    for alerts, scope in ((sdk.spend_alerts.with_raw_response, {}), (project_alerts, {"project_id": pid})):
        alert = checked(openai_spec, alerts.create(*scope.values(), **ALERT))
        changed = checked(openai_spec, alerts.update(alert["id"], **scope, **{**ALERT, "threshold_amount": 7}))
        assert changed["threshold_amount"] == 7
        assert [a["id"] for a in checked(openai_spec, alerts.list(*scope.values()))["data"]] == [alert["id"]]
        assert alerts.retrieve(alert["id"], **scope).http_response.json()["threshold_amount"] == 7  # not in the spec
        assert checked(openai_spec, alerts.delete(alert["id"], **scope))["deleted"] is True

    assert checked(openai_spec, accounts.delete(sa_id, project_id=pid))["deleted"] is True
    archived = checked(openai_spec, projects.archive(pid))
    assert archived["status"] == "archived" and archived["archived_at"] is not None
    log = checked(openai_spec, raw.audit_logs.list(limit=100))
    assert log["data"][0]["type"] == "project.archived"


def test_a_seeded_user_key_is_listed_and_deleted_with_the_spec_shapes(sandbox, sdk, openai_spec):
    secret = formats.generate()
    sandbox.register(secret, project="proj_main", organization=ORG)
    sandbox.seed_admin(
        ORG,
        replace=False,
        projects=[
            {
                "id": "proj_main",
                "users": [{"id": "user_owner", "role": "owner"}],
                "api_keys": [{"id": "key_user0001", "name": "laptop", "owner": {"user": "user_owner"}, "key": secret}],
            }
        ],
    )
    key = checked(openai_spec, sdk.projects.api_keys.with_raw_response.retrieve("key_user0001", project_id="proj_main"))
    assert key["owner"] == {
        "type": "user",
        "user": {
            "id": "user_owner",
            "email": "olga@example.com",
            "name": "Olga Owner",
            "created_at": key["owner"]["user"]["created_at"],
            "role": "owner",
        },
    }
    assert key["redacted_value"] == formats.hint(secret) and key["owner_project_access"] == "active"
    assert key["last_used_at"] is None
    before = int(time.time())
    assert models_status(sandbox, secret) == 200
    used = sdk.projects.api_keys.retrieve("key_user0001", project_id="proj_main").last_used_at
    assert before <= used <= int(time.time())  # a successful request is a use
    deleted = checked(
        openai_spec, sdk.projects.api_keys.with_raw_response.delete("key_user0001", project_id="proj_main")
    )
    assert deleted == {"object": "organization.project.api_key.deleted", "id": "key_user0001", "deleted": True}
    refused = HTTP.get(sandbox.openai_url + "/models", headers=bearer(secret))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


# --- Secrets made upstream ----------------------------------------------------------------


def test_a_service_accounts_key_works_until_the_account_is_deleted(sandbox, sdk):
    account = sdk.projects.service_accounts.create("proj_main", name="ci")
    secret = account.api_key.value
    assert models_status(sandbox, secret) == 200
    assert sandbox.stats()["per_key"][formats.hint(secret)] == 1  # a live key, counted as any other
    # The spec: deleting a service account's key through the project's keys is an error.
    with pytest.raises(openai.BadRequestError):
        sdk.projects.api_keys.delete(account.api_key.id, project_id="proj_main")
    assert models_status(sandbox, secret) == 200
    sdk.projects.service_accounts.delete(account.id, project_id="proj_main")
    refused = HTTP.get(sandbox.openai_url + "/models", headers=bearer(secret))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert secret not in refused.text
    assert [k.id for k in sdk.projects.api_keys.list("proj_main", owner_project_access="any")] == []


def test_the_secret_is_shown_once_and_never_again(sandbox, sdk):
    account = sdk.projects.service_accounts.create("proj_main", name="once")
    secret = account.api_key.value
    bodies = [
        HTTP.get(sandbox.openai_url + path, headers=bearer(sdk._client.admin_api_key)).text
        for path in (
            "/organization/projects/proj_main/service_accounts",
            f"/organization/projects/proj_main/service_accounts/{account.id}",
            "/organization/projects/proj_main/api_keys?owner_project_access=any",
            f"/organization/projects/proj_main/api_keys/{account.api_key.id}",
            "/organization/audit_logs?limit=100",
        )
    ]
    bodies.append(str(sandbox.admin_state(ORG)))
    assert all(secret not in body and secret[-12:] not in body for body in bodies)


def test_an_admin_key_made_upstream_works_until_deleted(sandbox, sdk):
    made = sdk.admin_api_keys.create(name="rotation", expires_in_seconds=3600)
    new_admin = client(sandbox, made.value).admin.organization
    assert [p.id for p in new_admin.projects.list()] == ["proj_main"]  # the same organization
    new_admin.projects.create(name="made by the new key")
    assert {p.name for p in sdk.projects.list()} == {"Main", "made by the new key"}
    sdk.admin_api_keys.delete(made.id)
    with pytest.raises(openai.AuthenticationError) as refused:
        new_admin.projects.list()
    assert refused.value.code == "invalid_api_key"
    assert [k.id for k in sdk.admin_api_keys.list()] == ["key_admin0001"]


def test_an_admin_key_can_delete_itself(sandbox, sdk, admin):
    sdk.admin_api_keys.delete("key_admin0001")
    assert HTTP.get(sandbox.openai_url + "/organization/projects", headers=bearer(admin)).status_code == 401


# --- Refusals -----------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/organization/projects"),
    ("POST", "/organization/projects"),
    ("GET", "/organization/projects/proj_main"),
    ("POST", "/organization/projects/proj_main"),
    ("POST", "/organization/projects/proj_main/archive"),
    ("GET", "/organization/projects/proj_main/api_keys"),
    ("GET", "/organization/projects/proj_main/api_keys/key_x"),
    ("DELETE", "/organization/projects/proj_main/api_keys/key_x"),
    ("GET", "/organization/projects/proj_main/service_accounts"),
    ("POST", "/organization/projects/proj_main/service_accounts"),
    ("GET", "/organization/projects/proj_main/service_accounts/svc_acct_x"),
    ("DELETE", "/organization/projects/proj_main/service_accounts/svc_acct_x"),
    ("GET", "/organization/projects/proj_main/users"),
    ("DELETE", "/organization/projects/proj_main/users/user_owner"),
    ("GET", "/organization/projects/proj_main/rate_limits"),
    ("POST", "/organization/projects/proj_main/rate_limits/rl-gpt-4o"),
    ("GET", "/organization/projects/proj_main/spend_alerts"),
    ("POST", "/organization/projects/proj_main/spend_alerts"),
    ("POST", "/organization/projects/proj_main/spend_alerts/alert_x"),
    ("DELETE", "/organization/projects/proj_main/spend_alerts/alert_x"),
    ("GET", "/organization/users"),
    ("GET", "/organization/admin_api_keys"),
    ("POST", "/organization/admin_api_keys"),
    ("GET", "/organization/admin_api_keys/key_x"),
    ("DELETE", "/organization/admin_api_keys/key_x"),
    ("GET", "/organization/spend_alerts"),
    ("POST", "/organization/spend_alerts"),
    ("POST", "/organization/spend_alerts/alert_x"),
    ("DELETE", "/organization/spend_alerts/alert_x"),
    ("GET", "/organization/audit_logs"),
]


def test_project_and_service_account_keys_get_403_on_every_route_and_change_nothing(sandbox, admin, openai_spec):
    project_key = formats.generate()
    sandbox.register(project_key, project="proj_main", organization=ORG)
    account_key = formats.generate(formats.SERVICE_ACCOUNT)
    sandbox.register(account_key, project="proj_main", organization=ORG)
    before = sandbox.admin_state(ORG)
    for secret in (project_key, account_key):
        for method, path in ADMIN_ROUTES:
            response = HTTP.request(
                method,
                sandbox.openai_url + path,
                headers=bearer(secret),
                json={"name": "x"} if method == "POST" else None,
            )
            assert response.status_code == 403, (method, path)
            assert openai_spec.check(response)
            assert response.json()["error"]["type"] == "invalid_request_error"
    after = sandbox.admin_state(ORG)
    assert after == before  # nothing made, archived or deleted; no admin call served
    assert sandbox.stats()["per_key"][formats.hint(project_key)] == len(ADMIN_ROUTES)


def test_an_unknown_or_missing_key_gets_401(sandbox, admin, openai_spec):
    for headers in (bearer(formats.generate(formats.ADMIN)), {}):
        response = HTTP.get(sandbox.openai_url + "/organization/projects", headers=headers)
        assert response.status_code == 401 and openai_spec.check(response)


@pytest.mark.parametrize(
    "path",
    [
        "/organization/projects/proj_nope",
        "/organization/projects/proj_nope/api_keys",
        "/organization/projects/proj_main/api_keys/key_nope",
        "/organization/projects/proj_main/service_accounts/svc_acct_nope",
        "/organization/projects/proj_main/users/user_nope",
        "/organization/users/user_nope",
        "/organization/admin_api_keys/key_nope",
    ],
)
def test_unknown_ids_are_404_in_the_error_shape(sandbox, admin, openai_spec, path):
    response = HTTP.get(sandbox.openai_url + path, headers=bearer(admin))
    assert response.status_code == 404
    assert openai_spec.check(response)
    assert "nope" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "bad", "good"),
    [
        ("/organization/projects", (0, 101, "x"), (1, 100)),
        ("/organization/projects/proj_main/api_keys", (0, 101), (1, 100)),
        ("/organization/users", (0, 101), (1, 100)),
        ("/organization/admin_api_keys", (0, 101), (1, 100)),
        ("/organization/audit_logs", (0, 101), (1, 100)),
        ("/organization/projects/proj_main/rate_limits", (0, 101), (1, 100)),
        ("/organization/spend_alerts", (-1, 101), (0, 100)),
    ],
)
def test_limit_out_of_bounds_is_400_naming_limit(sandbox, admin, openai_spec, path, bad, good):
    for limit in good:
        assert HTTP.get(sandbox.openai_url + path, params={"limit": limit}, headers=bearer(admin)).status_code == 200
    for limit in bad:
        response = HTTP.get(sandbox.openai_url + path, params={"limit": limit}, headers=bearer(admin))
        assert response.status_code == 400
        assert openai_spec.check(response)
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["param"] == "limit"


def test_bad_bodies_are_400_and_change_nothing(sandbox, sdk, admin, openai_spec):
    url = sandbox.openai_url + "/organization"
    refusals = [
        HTTP.post(url + "/projects", json={}, headers=bearer(admin)),
        HTTP.post(url + "/projects", content=b"{nope", headers={**bearer(admin), "Content-Type": "application/json"}),
        HTTP.post(url + "/projects/proj_main/service_accounts", json={"name": 5}, headers=bearer(admin)),
        HTTP.post(url + "/spend_alerts", json={**ALERT, "currency": "EUR"}, headers=bearer(admin)),
        HTTP.post(url + "/spend_alerts", json={**ALERT, "threshold_amount": -1}, headers=bearer(admin)),
        HTTP.post(url + "/projects/proj_main/rate_limits/rl-gpt-4o", json={"max_nope": 1}, headers=bearer(admin)),
        HTTP.get(url + "/projects", params={"include_archived": "maybe"}, headers=bearer(admin)),
        HTTP.get(url + "/projects", params={"after": "proj_never"}, headers=bearer(admin)),
        HTTP.get(url + "/audit_logs", params={"event_types[]": "key.exploded"}, headers=bearer(admin)),
        HTTP.get(url + "/audit_logs", params={"effective_at[gte]": "yesterday"}, headers=bearer(admin)),
        HTTP.get(url + "/admin_api_keys", params={"order": "sideways"}, headers=bearer(admin)),
        HTTP.get(url + "/projects/proj_main/api_keys", params={"owner_project_access": "some"}, headers=bearer(admin)),
    ]
    for response in refusals:
        assert response.status_code == 400, response.text
        assert openai_spec.check(response)
    state = sandbox.admin_state(ORG)
    assert (state["projects"], state["api_keys"]) == (1, 0)
    assert [a.id for a in sdk.spend_alerts.list()] == []


def test_an_archived_project_cannot_be_updated_or_given_a_service_account(sandbox, sdk):
    sdk.projects.archive("proj_main")
    with pytest.raises(openai.BadRequestError):
        sdk.projects.update("proj_main", name="renamed")
    with pytest.raises(openai.BadRequestError):
        sdk.projects.service_accounts.create("proj_main", name="late")
    assert sdk.projects.retrieve("proj_main").name == "Main"
    assert sdk.projects.archive("proj_main").status == "archived"  # archiving again changes nothing


# --- Paging -------------------------------------------------------------------------------


def test_projects_page_by_after_and_limit_and_hide_archived_unless_asked(sandbox, sdk, admin):
    sandbox.seed_admin(
        ORG,
        projects=[{"id": f"proj_p{i:02d}", "name": f"P{i}", "archived": i % 5 == 0} for i in range(45)],
    )
    pages, after = [], None
    while True:
        params = {"limit": 10, **({"after": after} if after else {})}
        body = HTTP.get(sandbox.openai_url + "/organization/projects", params=params, headers=bearer(admin)).json()
        pages.append(body)
        assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
        if not body["has_more"]:
            break
        after = body["last_id"]
    active = [f"proj_p{i:02d}" for i in range(45) if i % 5]
    assert [p["id"] for page in pages for p in page["data"]] == active
    assert [len(page["data"]) for page in pages] == [10, 10, 10, 6]
    assert [p.id for p in sdk.projects.list(limit=7)] == active  # the SDK's auto-paging, 6 requests
    everything = [p.id for p in sdk.projects.list(limit=100, include_archived=True)]
    assert everything == [f"proj_p{i:02d}" for i in range(45)]
    calls = sandbox.admin_state(ORG)["calls"]
    assert calls["GET /v1/organization/projects"] == 4 + 6 + 1


def test_a_page_after_a_deleted_object_goes_on_from_where_it_was(sandbox, sdk):
    sandbox.seed_admin(
        ORG,
        replace=False,
        projects=[
            {
                "id": "proj_main",
                "users": [{"id": "user_owner", "role": "owner"}],
                "api_keys": [{"id": f"key_k{i}", "owner": {"user": "user_owner"}} for i in range(6)],
            }
        ],
    )
    first = sdk.projects.api_keys.list("proj_main", limit=3)
    assert [k.id for k in first.data] == ["key_k0", "key_k1", "key_k2"] and first.has_more
    sdk.projects.api_keys.delete("key_k2", project_id="proj_main")
    second = sdk.projects.api_keys.list("proj_main", limit=3, after="key_k2")
    assert [k.id for k in second.data] == ["key_k3", "key_k4", "key_k5"] and not second.has_more


def test_admin_keys_and_alerts_page_in_either_order_and_before(sandbox, sdk, admin):
    alerts = [sdk.spend_alerts.create(**{**ALERT, "threshold_amount": n}).id for n in range(5)]
    assert [a.id for a in sdk.spend_alerts.list(limit=2)] == alerts  # auto-paged ascending
    newest = HTTP.get(
        sandbox.openai_url + "/organization/spend_alerts", params={"order": "desc", "limit": 2}, headers=bearer(admin)
    ).json()
    assert [a["id"] for a in newest["data"]] == alerts[:-3:-1] and newest["has_more"]
    before = HTTP.get(
        sandbox.openai_url + "/organization/spend_alerts",
        params={"before": alerts[3], "limit": 2},
        headers=bearer(admin),
    ).json()
    assert [a["id"] for a in before["data"]] == alerts[1:3] and before["has_more"]
    made = [sdk.admin_api_keys.create(name=f"k{i}").id for i in range(3)]
    assert [k.id for k in sdk.admin_api_keys.list(order="desc", limit=2)] == [*made[::-1], "key_admin0001"]


def test_a_page_costs_its_limit_not_the_collections_size():
    collection = Collection()
    for i in range(50_000):
        collection.put(f"key_{i:05d}", {"id": f"key_{i:05d}"})
    looked_at = []

    def accept(obj):
        looked_at.append(obj["id"])
        return True

    page, more = collection.page(100, after="key_40000", accept=accept)
    assert [o["id"] for o in page] == [f"key_{i:05d}" for i in range(40001, 40101)] and more
    assert len(looked_at) == 101  # the page and one more to know has_more: no walk from the start


# --- Users and owners ---------------------------------------------------------------------


def test_a_key_whose_owner_left_the_project_is_inactive_and_hidden_by_default(sandbox, sdk):
    sandbox.seed_admin(
        ORG,
        replace=False,
        projects=[
            {
                "id": "proj_main",
                "users": [{"id": "user_owner", "role": "owner"}],
                "api_keys": [
                    {"id": "key_stays", "owner": {"user": "user_owner"}},
                    {"id": "key_orphan", "owner": {"user": "user_dev"}, "last_used_at": 1700000000},
                ],
            }
        ],
    )
    assert [k.id for k in sdk.projects.api_keys.list("proj_main")] == ["key_stays"]
    everything = {
        k.id: k.owner_project_access for k in sdk.projects.api_keys.list("proj_main", owner_project_access="any")
    }
    assert everything == {"key_stays": "active", "key_orphan": "inactive"}
    assert [k.id for k in sdk.projects.api_keys.list("proj_main", owner_project_access="inactive")] == ["key_orphan"]
    assert sdk.projects.api_keys.retrieve("key_orphan", project_id="proj_main").last_used_at == 1700000000


def test_removing_a_member_makes_their_keys_inactive(sandbox, sdk, openai_spec):
    sandbox.seed_admin(
        ORG,
        replace=False,
        projects=[
            {
                "id": "proj_main",
                "users": [{"id": "user_owner", "role": "owner"}, {"id": "user_dev"}],
                "api_keys": [{"id": "key_dev", "owner": {"user": "user_dev"}}],
            }
        ],
    )
    assert sdk.projects.api_keys.retrieve("key_dev", project_id="proj_main").owner_project_access == "active"
    removed = checked(openai_spec, sdk.projects.users.with_raw_response.delete("user_dev", project_id="proj_main"))
    assert removed == {"object": "organization.project.user.deleted", "id": "user_dev", "deleted": True}
    assert [u.id for u in sdk.projects.users.list("proj_main")] == ["user_owner"]
    assert sdk.projects.api_keys.retrieve("key_dev", project_id="proj_main").owner_project_access == "inactive"
    assert [k.id for k in sdk.projects.api_keys.list("proj_main")] == []
    with pytest.raises(openai.NotFoundError):
        sdk.projects.users.delete("user_dev", project_id="proj_main")


def test_users_filter_by_email(sandbox, sdk):
    assert [u.id for u in sdk.users.list(emails=["dev@example.com"])] == ["user_dev"]


# --- Audit log ----------------------------------------------------------------------------


def test_the_audit_log_records_the_admin_calls_newest_first(sandbox, sdk):
    project = sdk.projects.create(name="Audited")
    account = sdk.projects.service_accounts.create(project.id, name="bot")
    sdk.projects.service_accounts.delete(account.id, project_id=project.id)
    made = sdk.admin_api_keys.create(name="temp")
    sdk.admin_api_keys.delete(made.id)
    limit_id = sdk.projects.rate_limits.list_rate_limits(project.id).data[0].id
    sdk.projects.rate_limits.update_rate_limit(limit_id, project_id=project.id, max_tokens_per_1_minute=9)
    sdk.projects.update(project.id, name="Audited 2")
    sdk.projects.archive(project.id)
    events = list(sdk.audit_logs.list(limit=3))  # auto-paged
    assert [e.type for e in events] == [
        "project.archived",
        "project.updated",
        "rate_limit.updated",
        "api_key.deleted",
        "api_key.created",
        "service_account.deleted",
        "api_key.deleted",
        "api_key.created",
        "service_account.created",
        "project.created",
    ]
    body = events[-1].model_dump()
    assert body["project.created"] == {"id": project.id, "data": {"name": "Audited"}}
    assert body["actor"]["api_key"]["id"] == "key_admin0001"
    assert body["actor"]["api_key"]["user"] == {"id": "user_owner", "email": "olga@example.com"}
    assert events[2].model_dump()["rate_limit.updated"]["changes_requested"] == {"max_tokens_per_1_minute": 9}
    only = sdk.audit_logs.list(event_types=["service_account.created", "service_account.deleted"])
    assert [e.type for e in only] == ["service_account.deleted", "service_account.created"]
    assert [e.type for e in sdk.audit_logs.list(resource_ids=[made.id])] == ["api_key.deleted", "api_key.created"]
    assert len(list(sdk.audit_logs.list(project_ids=[project.id]))) == 8


def test_seeded_history_filters_by_effective_at_and_pages_both_ways(sandbox, sdk, admin, openai_spec):
    history = [
        {"id": f"audit_log-{day}", "type": "api_key.created", "effective_at": 1_700_000_000 + day * 86400,
         "project": {"id": "proj_main", "name": "Main"}, "api_key.created": {"id": f"key_day{day}"}}
        for day in range(10)
    ]  # fmt: skip
    sandbox.seed_admin(ORG, replace=False, audit_logs=list(reversed(history)))  # sorted by effective_at
    window = sdk.audit_logs.list(effective_at={"gte": 1_700_000_000 + 3 * 86400, "lt": 1_700_000_000 + 6 * 86400})
    assert [e.id for e in window] == ["audit_log-5", "audit_log-4", "audit_log-3"]
    response = HTTP.get(
        sandbox.openai_url + "/organization/audit_logs",
        params={"limit": 2, "before": "audit_log-5"},
        headers=bearer(admin),
    )
    assert openai_spec.check(response)
    assert [e["id"] for e in response.json()["data"]] == ["audit_log-7", "audit_log-6"]
    assert response.json()["has_more"] is True


# --- Seeding and faults -------------------------------------------------------------------


def test_an_unseeded_organization_shows_the_admin_keys_own_project(sandbox, openai_spec):
    admin = formats.generate(formats.ADMIN)
    sandbox.register(admin, project="proj_fresh01", organization="org-Fresh01")
    sdk = client(sandbox, admin).admin.organization
    raw = sdk.projects.with_raw_response.list()
    assert [p["id"] for p in checked(openai_spec, raw)["data"]] == ["proj_fresh01"]
    keys = checked(openai_spec, sdk.admin_api_keys.with_raw_response.list())["data"]
    assert [k["redacted_value"] for k in keys] == [formats.hint(admin)]


def test_organizations_are_separate(sandbox, sdk):
    other = formats.generate(formats.ADMIN)
    sandbox.register(other, organization="org-Other0001")
    client(sandbox, other).admin.organization.projects.create(name="elsewhere")
    assert [p.name for p in sdk.projects.list()] == ["Main"]


def test_ids_are_deterministic(sandbox, sdk, admin):
    def run():
        sandbox.seed_admin(ORG, users=[{"id": "user_owner", "role": "owner"}])
        return [sdk.projects.create(name=f"p{i}").id for i in range(3)]

    assert run() == run()


def test_redaction_can_take_the_spec_examples_ascii_shape(sandbox, sdk):
    secret = formats.generate()
    sandbox.seed_admin(
        ORG,
        redaction="ascii",
        users=[{"id": "user_owner", "role": "owner"}],
        projects=[
            {
                "id": "proj_main",
                "users": [{"id": "user_owner"}],
                "api_keys": [{"id": "key_a", "owner": {"user": "user_owner"}, "key": secret}],
            }  # fmt: skip
        ],
    )
    assert sdk.projects.api_keys.retrieve("key_a", project_id="proj_main").redacted_value == f"sk-proj-...{secret[-4:]}"


def test_a_bad_seed_is_refused_with_a_message(sandbox, admin):
    from sandbox.control import SandboxError

    for bad in (
        {"projects": [{"id": "p", "api_keys": [{"id": "k", "owner": {"user": "user_ghost"}}]}]},
        {"projects": [{"name": "no id"}]},
        {"faults": [{"path": "/v1/organization/projects", "fault": "explode"}]},
        {"audit_logs": [{"type": "key.exploded", "effective_at": 1}]},
        {"surprise": True},
    ):
        with pytest.raises(SandboxError, match="400"):
            sandbox.seed_admin(ORG, **bad)
    assert sandbox.admin_state(ORG)["projects"] == 1  # the fixture's state is untouched


def test_seeded_faults_answer_as_the_key_plans_do(sandbox, sdk, admin, openai_spec):
    sandbox.seed_admin(
        ORG,
        replace=False,
        faults=[
            {"path": "/v1/organization/projects", "method": "GET", "fault": "throttled", "retry_after": 3},
            {"path": "/v1/organization/users", "fault": "server_error", "skip": 1, "times": 2, "should_retry": False},
        ],
    )
    url = sandbox.openai_url + "/organization"
    throttled = HTTP.get(url + "/projects", headers=bearer(admin))
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "3"
    assert throttled.json()["error"]["code"] == "rate_limit_exceeded" and openai_spec.check(throttled)
    assert HTTP.get(url + "/projects", headers=bearer(admin)).status_code == 200  # times=1: once
    statuses = [HTTP.get(url + "/users", headers=bearer(admin)) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 500, 500, 200]
    assert statuses[1].headers["x-should-retry"] == "false" and openai_spec.check(statuses[1])
    assert sandbox.admin_state(ORG)["calls"]["GET /v1/organization/users"] == 4


def test_the_admin_keys_own_fault_plan_applies_first(sandbox):
    for fault, status in (("revoked", 401), ("throttled", 429), ("unavailable", 503)):
        secret = formats.generate(formats.ADMIN)
        sandbox.register(secret, organization=ORG, fault=fault)
        response = HTTP.get(sandbox.openai_url + "/organization/projects/proj_x/api_keys", headers=bearer(secret))
        assert response.status_code == status


def test_generated_organizations_seed_and_list_at_benchmark_size(sandbox, admin):
    counts = sandbox.seed_admin(ORG, generate={"projects": 500, "keys_per_project": 100})
    assert (counts["projects"], counts["api_keys"]) == (500, 50_000)
    sdk = client(sandbox, admin).admin.organization
    assert len(list(sdk.projects.list(limit=100))) == 500
    keys = list(sdk.projects.api_keys.list("proj_gen000499", limit=100))
    assert [k.id for k in keys][:2] == ["key_gen000499k0000", "key_gen000499k0001"] and len(keys) == 100
    calls = sandbox.admin_state(ORG)["calls"]
    assert calls["GET /v1/organization/projects"] == 5  # 500 projects, 100 a page: five pages
    assert calls["GET /v1/organization/projects/proj_gen000499/api_keys"] == 1
