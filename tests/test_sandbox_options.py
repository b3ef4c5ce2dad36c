"""The fault-plan options the probe tests need: flaky keys that fail first, throttling with
chosen retry headers, both shapes of insufficient_quota, x-should-retry on 5xx, and a
per-key request count that includes every answer. Over real HTTP against the sandbox."""

import asyncio

import httpx2
import openai
import pytest

from keys import formats
from sandbox.control import SandboxError

HTTP = httpx2.Client(timeout=10)


def get_models(sandbox, secret):
    return HTTP.get(sandbox.openai_url + "/models", headers={"Authorization": f"Bearer {secret}"})


def new_key(sandbox, fmt=formats.PROJECT, **plan):
    secret = formats.generate(fmt)
    sandbox.register(secret, **plan)
    return secret


def test_a_flaky_key_with_fail_times_fails_its_first_calls_then_succeeds(sandbox):
    secret = new_key(sandbox, fault="flaky", fail_times=2)
    assert [get_models(sandbox, secret).status_code for _ in range(5)] == [500, 500, 200, 200, 200]


def test_a_flaky_key_with_fail_times_one_fails_only_the_first_call(sandbox):
    secret = new_key(sandbox, fault="flaky", fail_times=1)
    assert [get_models(sandbox, secret).status_code for _ in range(3)] == [500, 200, 200]


@pytest.mark.parametrize(
    "plan,message",
    [
        ({"fault": "flaky", "fail_times": 1, "fail_rate": 0.5}, "not both"),
        ({"fault": "healthy", "fail_times": 1}, "'flaky' plan only"),
        ({"fault": "flaky", "fail_times": -1}, "fail_times must be an integer"),
        ({"fault": "throttled", "retry_after": "soon"}, "retry_after must be an integer"),
        ({"fault": "throttled", "retry_after_ms": 1.5}, "retry_after_ms must be an integer"),
        ({"fault": "healthy", "quota_type_only": True}, "'quota' plan only"),
        ({"fault": "server_error", "should_retry": "no"}, "should_retry must be true or false"),
    ],
)
def test_registration_refuses_option_values_it_cannot_honour(sandbox, plan, message):
    with pytest.raises(SandboxError, match=message):
        sandbox.register(formats.generate(), **plan)


def test_the_throttled_plan_sends_the_chosen_retry_after_and_retry_after_ms(sandbox):
    secret = new_key(sandbox, fault="throttled", retry_after=7, retry_after_ms=6500)
    response = get_models(sandbox, secret)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "7"
    assert response.headers["retry-after-ms"] == "6500"
    assert "try again in 7s" in response.json()["error"]["message"]


def test_retry_after_zero_is_sent_as_zero(sandbox):
    secret = new_key(sandbox, fault="throttled", retry_after=0)
    assert get_models(sandbox, secret).headers["retry-after"] == "0"


def test_the_throttled_plan_sends_no_retry_after_ms_unless_asked(sandbox):
    response = get_models(sandbox, new_key(sandbox, fault="throttled"))
    assert int(response.headers["retry-after"]) >= 1
    assert "retry-after-ms" not in response.headers


def test_the_chosen_retry_after_also_applies_when_the_projects_rpm_runs_out(sandbox):
    secret = new_key(sandbox, project="proj_retry", rpm=1, retry_after=3)
    assert get_models(sandbox, secret).status_code == 200
    refused = get_models(sandbox, secret)
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "3")


def test_the_quota_plan_can_put_insufficient_quota_in_the_type_only(sandbox):
    both = get_models(sandbox, new_key(sandbox, fault="quota")).json()["error"]
    type_only = get_models(sandbox, new_key(sandbox, fault="quota", quota_type_only=True)).json()["error"]
    assert (both["type"], both["code"]) == ("insufficient_quota", "insufficient_quota")
    assert (type_only["type"], type_only["code"]) == ("insufficient_quota", None)


@pytest.mark.parametrize("fault,status", [("server_error", 500), ("bad_gateway", 502), ("unavailable", 503)])
def test_server_error_plans_can_send_x_should_retry_false(sandbox, fault, status):
    told = get_models(sandbox, new_key(sandbox, fault=fault, should_retry=False))
    plain = get_models(sandbox, new_key(sandbox, fault=fault))
    assert (told.status_code, told.headers["x-should-retry"]) == (status, "false")
    assert plain.status_code == status and "x-should-retry" not in plain.headers


def test_a_flaky_keys_failures_carry_x_should_retry_too(sandbox):
    secret = new_key(sandbox, fault="flaky", fail_times=1, should_retry=False)
    assert get_models(sandbox, secret).headers["x-should-retry"] == "false"


def test_the_sdk_does_not_retry_a_500_marked_x_should_retry_false(sandbox):
    # The point of the option: the SDK would retry a plain 500 twice; told not to, it stops.
    secret = new_key(sandbox, fault="server_error", should_retry=False)

    async def call():
        async with openai.AsyncOpenAI(api_key=secret, base_url=sandbox.openai_url, max_retries=2) as client:
            with pytest.raises(openai.InternalServerError):
                await client.models.list()

    asyncio.run(call())
    assert sandbox.stats()["per_key"] == {formats.hint(secret): 1}


FAULTS = ["healthy", "revoked", "auth_other", "forbidden", "not_found", "quota", "throttled", "flaky"]
FAULTS += ["malformed", "reset", "server_error", "bad_gateway", "unavailable"]


@pytest.mark.parametrize("fault", FAULTS)
def test_every_request_is_counted_once_for_its_key_whatever_the_answer(sandbox, fault):
    secret = new_key(sandbox, fault=fault)
    for _ in range(2):
        try:
            get_models(sandbox, secret)
        except httpx2.TransportError:
            pass  # the reset plan drops the connection
    assert sandbox.stats()["per_key"] == {formats.hint(secret): 2}


def test_requests_refused_for_the_wrong_surface_or_path_still_count_for_their_key(sandbox):
    secret = new_key(sandbox)
    HTTP.get(sandbox.root + "/openai/models", params={"api-version": "2024-10-21"}, headers={"api-key": secret})
    HTTP.get(sandbox.openai_url + "/no-such-endpoint", headers={"Authorization": f"Bearer {secret}"})
    admin = new_key(sandbox, formats.ADMIN)
    get_models(sandbox, admin)  # 403: admin keys cannot list models
    assert sandbox.stats()["per_key"] == {formats.hint(secret): 2, formats.hint(admin): 1}


def test_a_request_whose_client_leaves_during_the_latency_is_still_counted(sandbox):
    secret = new_key(sandbox)
    sandbox.set_latency(2000)
    with pytest.raises(httpx2.TimeoutException):
        HTTP.get(sandbox.openai_url + "/models", headers={"Authorization": f"Bearer {secret}"}, timeout=0.2)
    assert sandbox.stats()["per_key"] == {formats.hint(secret): 1}
