"""The sandbox API over real HTTP: a real server subprocess (the `sandbox_server` fixture),
real clients (httpx2 and the official openai SDK), bodies checked against OpenAI's spec."""

import asyncio
import re
import time
from pathlib import Path

import httpx2
import openai
import pytest
import yaml
from django.conf import settings
from openapi_schema_validator import OAS31Validator

from keys import formats
from sandbox.control import SandboxError, openai_base_url
from sandbox.errors import mask_key
from sandbox.ratelimit import go_duration

SPEC_PATH = Path(settings.BASE_DIR).parent / "shared/reference/openai-openapi/openapi.yaml"
AZURE_VERSION = {"api-version": "2024-10-21"}
HTTP = httpx2.Client(timeout=10)  # one pool for the module: a new client per call costs an SSL context


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


def get_models(sandbox, secret, **kwargs):
    return HTTP.get(sandbox.openai_url + "/models", headers=bearer(secret), **kwargs)


def new_key(sandbox, fmt=formats.PROJECT, **plan):
    secret = formats.generate(fmt)
    sandbox.register(secret, **plan)
    return secret


def seconds(duration):
    """Parse a Go-style duration such as `1m0s`, `59.9s` or `12ms` into seconds."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


# --- Spec -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def openai_spec():
    if not SPEC_PATH.exists():
        pytest.fail(f"OpenAI's OpenAPI spec is missing: expected it at {SPEC_PATH}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SPEC_PATH) as f:
        return yaml.load(f, Loader=loader)


@pytest.fixture(scope="session")
def conforms(openai_spec):
    """conforms(body, "ListModelsResponse") raises unless the body matches that schema of
    the spec; $refs resolve against the spec's own components."""

    def check(body, schema_name):
        schema = {"$ref": f"#/components/schemas/{schema_name}", "components": openai_spec["components"]}
        OAS31Validator(schema).validate(body)
        return True

    return check


# --- Healthy keys, headers ------------------------------------------------------------


def test_a_healthy_key_lists_models_with_the_real_headers(sandbox):
    secret = new_key(sandbox, project="proj_alpha", organization="org-Alpha123")
    response = get_models(sandbox, secret)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert {"id": "gpt-4o-mini", "object": "model", "owned_by": "system"}.items() <= body["data"][0].items()
    assert isinstance(body["data"][0]["created"], int)
    headers = response.headers
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    assert headers["openai-organization"] == "org-Alpha123"
    assert headers["openai-version"] == "2020-10-01"
    assert int(headers["openai-processing-ms"]) >= 0
    assert headers["x-ratelimit-limit-requests"] == "500"
    assert headers["x-ratelimit-limit-tokens"] == "200000"
    assert headers["x-ratelimit-remaining-requests"] == "499"
    assert headers["x-ratelimit-remaining-tokens"] == "200000"
    assert re.fullmatch(r"(\d+m)?[\d.]+m?s", headers["x-ratelimit-reset-requests"])
    assert headers["x-ratelimit-reset-tokens"] == "0s"  # listing models costs no tokens


def test_each_request_gets_its_own_request_id(sandbox):
    secret = new_key(sandbox)
    ids = {get_models(sandbox, secret).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_a_key_without_an_organization_reports_a_personal_user_organization(sandbox):
    secret = new_key(sandbox)
    assert get_models(sandbox, secret).headers["openai-organization"].startswith("user-")


def test_it_retrieves_one_model_and_says_model_not_found_for_another(sandbox):
    secret = new_key(sandbox)
    found = HTTP.get(sandbox.openai_url + "/models/gpt-4o", headers=bearer(secret))
    missing = HTTP.get(sandbox.openai_url + "/models/gpt-nope", headers=bearer(secret))
    assert found.status_code == 200 and found.json()["id"] == "gpt-4o"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_me_returns_a_user_with_its_organizations(sandbox):
    secret = new_key(sandbox, project="proj_me", organization="org-MeMeMe")
    response = HTTP.get(sandbox.openai_url + "/me", headers=bearer(secret))
    assert response.status_code == 200
    user = response.json()
    assert user["object"] == "user" and user["id"].startswith("user-") and "@" in user["email"]
    org = user["orgs"]["data"][0]
    assert user["orgs"]["object"] == "list"
    assert org["id"] == "org-MeMeMe" and org["object"] == "organization" and org["personal"] is False
    assert org["title"] and org["role"] == "owner"


def test_an_unknown_path_is_a_404_invalid_url(sandbox):
    response = HTTP.get(sandbox.openai_url + "/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"


# --- Fault plans ----------------------------------------------------------------------

ERROR_PLANS = [
    ("revoked", 401, "invalid_api_key", "invalid_request_error"),
    ("auth_other", 401, "no_organization", "invalid_request_error"),
    ("forbidden", 403, "unsupported_country_region_territory", "request_forbidden"),
    ("not_found", 404, None, "invalid_request_error"),
    ("quota", 429, "insufficient_quota", "insufficient_quota"),
    ("throttled", 429, "rate_limit_exceeded", "requests"),
    ("server_error", 500, None, "server_error"),
    ("bad_gateway", 502, None, "cf_bad_gateway"),
    ("unavailable", 503, None, "server_error"),
]


@pytest.mark.parametrize("fault,status,code,type_", ERROR_PLANS)
def test_each_error_plan_answers_with_its_status_code_and_type(sandbox, fault, status, code, type_):
    secret = new_key(sandbox, fault=fault, organization="org-Faults")
    response = get_models(sandbox, secret)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["type"], error["param"]) == (code, type_, None)
    assert error["message"]
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["openai-organization"] == "org-Faults"
    assert response.headers["openai-version"] == "2020-10-01"


def test_the_throttled_plan_says_when_to_retry(sandbox):
    secret = new_key(sandbox, fault="throttled")
    response = get_models(sandbox, secret)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_an_unregistered_key_is_an_invalid_api_key(sandbox):
    response = get_models(sandbox, formats.generate())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "openai-organization" not in response.headers  # no key, no organization to name


def test_a_request_without_a_key_is_told_to_send_one(sandbox):
    response = HTTP.get(sandbox.openai_url + "/models")
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert response.json()["error"]["code"] is None


@pytest.mark.parametrize("registered", [True, False], ids=["revoked", "unregistered"])
def test_the_401_message_echoes_the_key_masked_never_whole(sandbox, registered):
    secret = formats.generate()
    if registered:
        sandbox.register(secret, fault="revoked")
    response = get_models(sandbox, secret)
    message = response.json()["error"]["message"]
    masked = "sk-proj-" + "*" * (len(secret) - 12) + secret[-4:]
    assert message == (
        f"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert secret not in response.text
    assert secret[8:-4] not in response.text
    assert all(secret not in value for value in response.headers.values())


def test_masking_hides_all_of_a_short_value():
    assert mask_key("short-secret") == "************"
    assert mask_key("sk-proj-abcdefghijkl-wxyz") == "sk-proj-*************wxyz"


def test_the_flaky_plan_fails_exactly_its_fail_rate_in_a_fixed_pattern(sandbox):
    secret = new_key(sandbox, fault="flaky", fail_rate=0.5)
    statuses = [get_models(sandbox, secret).status_code for _ in range(6)]
    assert statuses == [200, 500, 200, 500, 200, 500]
    quarter = new_key(sandbox, fault="flaky", fail_rate=0.25)
    assert [get_models(sandbox, quarter).status_code for _ in range(8)].count(500) == 2


def test_the_malformed_plan_answers_200_with_a_body_that_is_not_the_models_json(sandbox):
    secret = new_key(sandbox, fault="malformed")
    response = get_models(sandbox, secret)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_the_reset_plan_drops_the_connection_without_any_http_status(sandbox):
    secret = new_key(sandbox, fault="reset")
    with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
        get_models(sandbox, secret)
    assert get_models(sandbox, new_key(sandbox)).status_code == 200  # the server lives on


async def race(sandbox, slow_secret, fast_secret, slow_timeout):
    """Fire the slow key first, then the fast one; return (which finished first, the slow task)."""
    async with httpx2.AsyncClient(base_url=sandbox.openai_url, timeout=10) as client:
        slow = asyncio.ensure_future(client.get("/models", headers=bearer(slow_secret), timeout=slow_timeout))
        await asyncio.sleep(0.05)  # let the slow request reach the server first
        fast = asyncio.ensure_future(client.get("/models", headers=bearer(fast_secret)))
        done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
        first = "fast" if fast in done else "slow"
        fast_status = (await fast).status_code
        slow_done_when_fast_was = slow.done()
        if not slow.done():
            slow.cancel()  # the client gives up: the server must notice and let go
        try:
            slow_result = await slow
        except (asyncio.CancelledError, httpx2.TimeoutException):
            slow_result = None
        return first, fast_status, slow_done_when_fast_was, slow_result


def test_a_hanging_key_does_not_block_a_healthy_key(sandbox):
    hanging, healthy = new_key(sandbox, fault="hanging"), new_key(sandbox)
    first, fast_status, hanging_done, _ = asyncio.run(race(sandbox, hanging, healthy, slow_timeout=30))
    assert (first, fast_status, hanging_done) == ("fast", 200, False)
    for _ in range(100):  # the server sees the client go and ends the hanging request
        if sandbox.stats()["in_flight"] == 0:
            break
        time.sleep(0.02)
    assert sandbox.stats()["in_flight"] == 0


def test_a_slow_key_answers_200_after_a_healthy_key_sent_later(sandbox):
    slow, healthy = new_key(sandbox, fault="slow", delay_ms=300), new_key(sandbox)

    async def both():
        async with httpx2.AsyncClient(base_url=sandbox.openai_url, timeout=10) as client:
            order = []

            async def get(name, secret):
                response = await client.get("/models", headers=bearer(secret))
                order.append((name, response.status_code))

            slow_task = asyncio.ensure_future(get("slow", slow))
            await asyncio.sleep(0.05)
            await asyncio.gather(get("healthy", healthy), slow_task)
            return order

    assert asyncio.run(both()) == [("healthy", 200), ("slow", 200)]


def test_re_registering_a_key_replaces_its_plan(sandbox):
    secret = new_key(sandbox, fault="revoked")
    assert get_models(sandbox, secret).status_code == 401
    sandbox.register(secret, fault="healthy")
    assert get_models(sandbox, secret).status_code == 200


def test_registration_refuses_an_unknown_plan_and_never_echoes_the_secret(sandbox):
    secret = formats.generate()
    with pytest.raises(SandboxError, match="Unknown fault plan 'melting'"):
        sandbox.register(secret, fault="melting")
    response = HTTP.post(sandbox.root + "/_sandbox/keys", json={"key": secret, "fault": "healthy"})
    assert response.status_code == 201
    assert response.json()["hint"] == formats.hint(secret)
    assert secret not in response.text


def test_reset_forgets_keys_and_stats(sandbox):
    secret = new_key(sandbox)
    get_models(sandbox, secret)
    sandbox.reset()
    assert sandbox.stats()["total"] == 0
    assert get_models(sandbox, secret).status_code == 401


# --- Rate limits per project ----------------------------------------------------------


def test_remaining_requests_fall_per_project_and_other_projects_are_unaffected(sandbox):
    first, second = new_key(sandbox, project="proj_one"), new_key(sandbox, project="proj_one")
    other = new_key(sandbox, project="proj_two")
    remaining = [
        int(get_models(sandbox, key).headers["x-ratelimit-remaining-requests"]) for key in (first, second, first)
    ]
    assert remaining == [499, 498, 497]  # two keys, one project, one counter
    assert get_models(sandbox, other).headers["x-ratelimit-remaining-requests"] == "499"


def test_the_reset_header_counts_down_to_the_end_of_the_window(sandbox):
    secret = new_key(sandbox)
    resets = [seconds(get_models(sandbox, secret).headers["x-ratelimit-reset-requests"]) for _ in range(3)]
    assert 0 < resets[-1] <= resets[0] <= 60
    assert resets == sorted(resets, reverse=True)


def test_exhausting_rpm_gives_429_rate_limit_exceeded_with_retry_after(sandbox):
    secret = new_key(sandbox, project="proj_small", rpm=3)
    other = new_key(sandbox, project="proj_big", rpm=3)
    statuses = [get_models(sandbox, secret).status_code for _ in range(3)]
    refused = get_models(sandbox, secret)
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "Limit 3" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert get_models(sandbox, other).status_code == 200


@pytest.mark.parametrize(
    "value,expected", [(0, "0s"), (0.012, "12ms"), (1, "1s"), (1.5, "1.5s"), (59.987, "59.987s"), (360, "6m0s")]
)
def test_durations_are_formatted_like_go(value, expected):
    assert go_duration(value) == expected


# --- Azure ----------------------------------------------------------------------------


def test_azure_lists_models_with_the_api_key_header(sandbox):
    secret = new_key(sandbox, formats.AZURE, provider="azure")
    response = HTTP.get(sandbox.root + "/openai/models", params=AZURE_VERSION, headers={"api-key": secret})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "model"
    assert "x-ratelimit-remaining-requests" in response.headers
    v1 = HTTP.get(sandbox.root + "/openai/v1/models", headers={"api-key": secret})
    assert v1.status_code == 200 and v1.json()["object"] == "list"


def test_azure_without_an_api_version_is_not_found(sandbox):
    secret = new_key(sandbox, formats.AZURE, provider="azure")
    response = HTTP.get(sandbox.root + "/openai/models", headers={"api-key": secret})
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_azure_refuses_an_unknown_key_with_its_own_error_body(sandbox):
    openai_key = new_key(sandbox)  # registered, but for OpenAI
    for secret in (formats.generate(formats.AZURE), openai_key):
        response = HTTP.get(sandbox.root + "/openai/models", params=AZURE_VERSION, headers={"api-key": secret})
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "401"
        assert error["message"].startswith("Access denied due to invalid subscription key or wrong API endpoint.")
        assert secret not in response.text


def test_azure_fault_plans_answer_in_azure_shape(sandbox):
    secret = new_key(sandbox, formats.AZURE, provider="azure", fault="throttled")
    response = HTTP.get(sandbox.root + "/openai/models", params=AZURE_VERSION, headers={"api-key": secret})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "429"
    assert int(response.headers["retry-after"]) >= 1


def test_an_azure_key_is_unknown_on_the_openai_surface(sandbox):
    secret = new_key(sandbox, formats.AZURE, provider="azure")
    assert get_models(sandbox, secret).status_code == 401


# --- The official SDK ------------------------------------------------------------------


def test_the_openai_sdk_lists_models_and_reports_a_revoked_key(sandbox):
    healthy, revoked = new_key(sandbox), new_key(sandbox, fault="revoked")

    async def run():
        ok = openai.AsyncOpenAI(api_key=healthy, base_url=sandbox.openai_url, max_retries=0)
        dead = openai.AsyncOpenAI(api_key=revoked, base_url=sandbox.openai_url, max_retries=0)
        async with ok, dead:
            page = await ok.models.list()
            with pytest.raises(openai.AuthenticationError) as caught:
                await dead.models.list()
        return [model.id for model in page.data], caught.value

    ids, error = asyncio.run(run())
    assert "gpt-4o-mini" in ids
    assert error.code == "invalid_api_key"
    assert error.request_id.startswith("req_")


def test_the_openai_sdk_sees_the_reset_plan_as_a_connection_error(sandbox):
    secret = new_key(sandbox, fault="reset")

    async def run():
        async with openai.AsyncOpenAI(api_key=secret, base_url=sandbox.openai_url, max_retries=0) as client:
            with pytest.raises(openai.APIConnectionError) as caught:
                await client.models.list()
        return caught.value

    error = asyncio.run(run())
    assert not isinstance(error, openai.APITimeoutError)
    assert isinstance(error.__cause__, (httpx2.RemoteProtocolError, httpx2.ReadError))


def test_the_azure_sdk_lists_models(sandbox):
    secret = new_key(sandbox, formats.AZURE, provider="azure")

    async def run():
        async with openai.AsyncAzureOpenAI(
            api_key=secret, azure_endpoint=sandbox.azure_endpoint, api_version="2024-10-21", max_retries=0
        ) as client:
            return await client.models.list()

    assert "gpt-4o-mini" in [model.id for model in asyncio.run(run()).data]


# --- Stats, latency, logs -------------------------------------------------------------


def test_stats_count_requests_per_project_and_key_with_timestamps(sandbox):
    a = new_key(sandbox, project="proj_a")
    b = new_key(sandbox, project="proj_b")
    for secret in (a, a, b):
        get_models(sandbox, secret)
    get_models(sandbox, formats.generate())  # unknown key: counted in total only
    stats = sandbox.stats()
    assert stats["total"] == 4
    assert stats["per_project"] == {"proj_a": 2, "proj_b": 1}
    assert stats["per_key"] == {formats.hint(a): 2, formats.hint(b): 1}
    assert [project for _, project in stats["recent"]] == ["proj_a", "proj_a", "proj_b", None]
    times = [at for at, _ in stats["recent"]]
    assert times == sorted(times) and times[-1] <= stats["now"]


def test_global_latency_keeps_concurrent_requests_in_flight_together(sandbox):
    secret = new_key(sandbox)
    sandbox.set_latency(200)

    async def burst():
        async with httpx2.AsyncClient(base_url=sandbox.openai_url, timeout=10) as client:
            return await asyncio.gather(*(client.get("/models", headers=bearer(secret)) for _ in range(5)))

    assert [r.status_code for r in asyncio.run(burst())] == [200] * 5
    assert sandbox.stats()["max_in_flight"] == 5


def test_settings_refuse_a_negative_latency(sandbox):
    with pytest.raises(SandboxError, match="latency_ms"):
        sandbox.set_latency(-1)


def test_the_control_object_knows_its_urls(sandbox):
    assert sandbox.openai_url == sandbox.root + "/v1" == openai_base_url(sandbox.root + "/")
    assert HTTP.get(sandbox.root + "/_sandbox/health").status_code == 200


# --- Every JSON body against OpenAI's published spec -------------------------------------


def test_the_models_list_and_model_match_openais_spec(sandbox, conforms):
    secret = new_key(sandbox)
    assert conforms(get_models(sandbox, secret).json(), "ListModelsResponse")
    assert conforms(HTTP.get(sandbox.openai_url + "/models/gpt-4o", headers=bearer(secret)).json(), "Model")
    azure = new_key(sandbox, formats.AZURE, provider="azure")
    v1 = HTTP.get(sandbox.root + "/openai/v1/models", headers={"api-key": azure})
    assert conforms(v1.json(), "ListModelsResponse")


def test_every_openai_error_body_matches_openais_error_response_schema(sandbox, conforms):
    bodies = []
    for fault, *_ in ERROR_PLANS:
        bodies.append(get_models(sandbox, new_key(sandbox, fault=fault)).json())
    limited = new_key(sandbox, project="proj_tiny", rpm=1)
    get_models(sandbox, limited)
    bodies.append(get_models(sandbox, limited).json())  # rpm exhausted
    bodies.append(get_models(sandbox, formats.generate()).json())  # unknown key
    bodies.append(HTTP.get(sandbox.openai_url + "/models").json())  # no key
    bodies.append(HTTP.get(sandbox.openai_url + "/models/gpt-nope", headers=bearer(limited)).json())
    bodies.append(HTTP.get(sandbox.openai_url + "/nope").json())
    assert len(bodies) == len(ERROR_PLANS) + 5
    for body in bodies:
        assert conforms(body, "ErrorResponse")


def test_the_spec_check_rejects_a_body_that_breaks_the_schema(conforms):
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        conforms({"object": "list", "data": 5}, "ListModelsResponse")
    with pytest.raises(jsonschema.ValidationError):
        conforms({"error": {"message": "x", "type": "y", "param": None, "code": 502}}, "ErrorResponse")


def test_me_is_not_in_openais_spec_so_its_shape_is_checked_here(sandbox, openai_spec):
    # GET /v1/me is undocumented (secret scanners use it): the published spec has no path
    # or schema for it, so this test checks the fields those scanners read.
    assert "/me" not in openai_spec["paths"]
    secret = new_key(sandbox)
    user = HTTP.get(sandbox.openai_url + "/me", headers=bearer(secret)).json()
    assert {"object", "id", "email", "name", "orgs"} <= user.keys()
    org = user["orgs"]["data"][0]
    assert {"id", "object", "title", "personal", "role"} <= org.keys()
    assert org["id"].startswith("org-")


def test_the_server_logs_no_secret(sandbox):
    secrets_used = []
    for fault in ("healthy", "revoked", "server_error", "reset", "malformed"):
        secret = new_key(sandbox, fault=fault)
        secrets_used.append(secret)
        try:
            get_models(sandbox, secret)
        except httpx2.TransportError:
            pass
    logged = "".join(path.read_text() for path in sandbox.log_paths)
    assert "Sandbox API on http://127.0.0.1" in logged  # the logs are the server's
    for secret in secrets_used:
        assert secret not in logged and secret[-12:] not in logged


def test_admin_keys_are_refused_on_the_models_list_and_served_on_the_admin_api(sandbox):
    admin_key = formats.generate(formats.ADMIN)
    project_key = formats.generate(formats.PROJECT)
    sandbox.register(admin_key, project="proj_admintest01")
    sandbox.register(project_key, project="proj_admintest01")
    with httpx2.Client(base_url=sandbox.openai_url, timeout=10) as http:
        assert http.get("/models", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 403
        projects = http.get("/organization/projects?limit=1", headers={"Authorization": f"Bearer {admin_key}"})
        refused = http.get("/organization/projects", headers={"Authorization": f"Bearer {project_key}"})
    assert projects.status_code == 200
    body = projects.json()
    assert body["object"] == "list" and body["data"][0]["id"] == "proj_admintest01"
    assert refused.status_code == 403
    assert admin_key not in projects.text + refused.text


def test_the_admin_projects_list_matches_openais_schema(sandbox, conforms):
    admin_key = formats.generate(formats.ADMIN)
    sandbox.register(admin_key, project="proj_admintest02")
    with httpx2.Client(base_url=sandbox.openai_url, timeout=10) as http:
        body = http.get("/organization/projects?limit=1", headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert conforms(body, "ProjectListResponse")
