"""The sandbox's Usage and Costs APIs over real HTTP (the `sandbox` fixture's server
subprocess): bodies checked against OpenAI's official spec, paging, both array encodings,
the synthetic data's formula, late data, and the fault options ingestion is tested with."""

import hashlib
import time
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest

from keys import formats
from sandbox.control import SandboxError
from sandbox.usage import ENDPOINTS, build_usage_plan, daily_rows
from tests import test_sandbox
from tests.test_sandbox_isolation import console_imports

HTTP = httpx2.Client(timeout=10)
DAY = 86400
TODAY = int(time.time()) // DAY * DAY
START = TODAY - 9 * DAY  # a ten-day window ending with today
END = TODAY + DAY
KEYS = [("key_alpha", "proj_alpha"), ("key_beta", "proj_alpha"), ("key_gamma", "proj_beta")]
MODELS = ["gpt-4o-mini", "gpt-4o"]
USAGE_PATHS = [f"/organization/usage/{name}" for name in ENDPOINTS]
COSTS_PATH = "/organization/costs"
openai_spec = test_sandbox.openai_spec  # the session fixture: OpenAI's spec as a test_sandbox.Spec


@pytest.fixture
def admin(sandbox):
    """A registered admin key with a usage plan of three keys in two projects."""
    secret = formats.generate(formats.ADMIN)
    sandbox.register(secret, organization="org-Usage0001")
    sandbox.set_usage(secret, keys=KEYS, projects=["proj_empty"], models=MODELS, seed="test")
    return secret


def get(sandbox, secret, path, params=None):
    return HTTP.get(sandbox.openai_url + path, params=params, headers={"Authorization": f"Bearer {secret}"})


def read(sandbox, secret, path, **params):
    response = get(sandbox, secret, path, {"start_time": START, "end_time": END, "limit": 31, **params})
    assert response.status_code == 200, response.text
    return response.json()


def read_all(sandbox, secret, path, **params):
    """Follow next_page to the end; returns the pages."""
    pages, cursor = [], None
    while True:
        query = dict(params, **({"page": cursor} if cursor else {}))
        pages.append(read(sandbox, secret, path, **query))
        if not pages[-1]["has_more"]:
            return pages
        cursor = pages[-1]["next_page"]
        assert len(pages) < 50, "paging did not end"


def results(body):
    return [r for bucket in body["data"] for r in bucket["results"]]


def expected_metrics(day, project, key, model):
    """The formula of docs/sandbox.md, written out independently of sandbox/usage.py."""
    h = int.from_bytes(hashlib.sha256(f"test|completions|{day}|{project}|{key}|{model}".encode()).digest()[:16], "big")
    requests = 1 + h % 100
    input_tokens = requests * (100 + (h >> 8) % 900)
    return requests, input_tokens, requests * (20 + (h >> 20) % 300)


# --- The spec -------------------------------------------------------------------------


@pytest.mark.parametrize("path", USAGE_PATHS + [COSTS_PATH])
def test_every_usage_endpoint_and_costs_answer_bodies_that_match_the_spec(sandbox, admin, openai_spec, path):
    operation = openai_spec.operation("/v1" + path)
    allowed = operation_group_by(operation)
    for group_by in ([], allowed):
        response = get(sandbox, admin, path, {"start_time": START, "limit": 31, "group_by": group_by})
        assert response.status_code == 200, response.text
        assert openai_spec.check(response)
        body = response.json()
        assert body["object"] == "page" and len(body["data"]) == 10
        assert all(bucket["results"] for bucket in body["data"])


def operation_group_by(operation):
    parameter = next(p for p in operation["parameters"] if p["name"] == "group_by")
    return parameter["schema"]["items"]["enum"]


def test_the_refusals_are_openai_error_bodies(sandbox, admin, openai_spec):
    for params in ({}, {"start_time": "yesterday"}, {"start_time": START, "limit": 0}):
        response = get(sandbox, admin, "/organization/usage/completions", params)
        assert response.status_code == 400
        assert openai_spec.check(response)
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_missing_start_time_is_named_in_the_error(sandbox, admin):
    response = get(sandbox, admin, COSTS_PATH, {"end_time": END})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "start_time"


# --- Query parameters -----------------------------------------------------------------


def test_both_array_encodings_give_the_same_data(sandbox, admin):
    path = "/organization/usage/completions"
    repeated = f"{path}?start_time={START}&group_by=project_id&group_by=model&models=gpt-4o"
    brackets = f"{path}?start_time={START}&group_by[]=project_id&group_by[]=model&models[]=gpt-4o"
    one, other = (get(sandbox, admin, url).json() for url in (repeated, brackets))
    assert one == other
    assert {(r["model"], r["project_id"] is not None) for r in results(one)} == {("gpt-4o", True)}


@pytest.mark.parametrize(
    ("path", "width", "too_many"),
    [
        ("/organization/usage/completions", "1d", 32),
        ("/organization/usage/completions", "1h", 169),
        ("/organization/usage/embeddings", "1m", 1441),
        (COSTS_PATH, "1d", 181),
    ],
)
def test_limit_out_of_bounds_is_refused(sandbox, admin, path, width, too_many):
    base = {"start_time": START, "bucket_width": width}
    assert get(sandbox, admin, path, {**base, "limit": too_many - 1}).status_code == 200
    for limit in (0, too_many):
        response = get(sandbox, admin, path, {**base, "limit": limit})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "limit"


def test_the_default_limit_is_seven_days(sandbox, admin):
    body = get(sandbox, admin, COSTS_PATH, {"start_time": START}).json()
    assert len(body["data"]) == 7 and body["has_more"]


def test_costs_take_daily_buckets_only(sandbox, admin):
    assert get(sandbox, admin, COSTS_PATH, {"start_time": START, "bucket_width": "1h"}).status_code == 400
    assert (
        get(sandbox, admin, "/organization/usage/completions", {"start_time": START, "bucket_width": "1h"}).status_code
        == 200
    )


def test_a_group_by_field_the_endpoint_does_not_have_is_refused(sandbox, admin):
    response = get(sandbox, admin, "/organization/usage/vector_stores", {"start_time": START, "group_by": "model"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "group_by"
    assert get(sandbox, admin, COSTS_PATH, {"start_time": START, "group_by": "model"}).status_code == 400


def test_group_by_fields_are_null_unless_grouped(sandbox, admin):
    ungrouped = results(read(sandbox, admin, "/organization/usage/completions"))
    assert len(ungrouped) == 10  # one result per day
    for field in ("project_id", "api_key_id", "model", "user_id", "batch", "service_tier"):
        assert {r[field] for r in ungrouped} == {None}
    grouped = results(read(sandbox, admin, "/organization/usage/completions", group_by=["api_key_id", "model"]))
    assert {(r["api_key_id"], r["model"]) for r in grouped} == {(k, m) for k, _ in KEYS for m in MODELS}
    assert {r["project_id"] for r in grouped} == {None}
    costs = results(read(sandbox, admin, COSTS_PATH, group_by=["line_item"]))
    assert {r["line_item"] for r in costs} == {f"{m}, {kind}" for m in MODELS for kind in ("input", "output")}
    assert {(r["project_id"], r["api_key_id"]) for r in costs} == {(None, None)}


def test_filters_keep_only_the_named_projects_keys_and_models(sandbox, admin):
    body = read(
        sandbox,
        admin,
        "/organization/usage/completions",
        group_by=["project_id", "api_key_id", "model"],
        project_ids=["proj_alpha"],
        api_key_ids=["key_beta", "key_gamma"],
        models=["gpt-4o"],
    )
    assert {(r["project_id"], r["api_key_id"], r["model"]) for r in results(body)} == {
        ("proj_alpha", "key_beta", "gpt-4o")
    }


def test_hourly_buckets_sum_to_the_daily_numbers(sandbox, admin):
    day = TODAY - DAY
    daily = get(sandbox, admin, "/organization/usage/completions", {"start_time": day, "end_time": day + DAY})
    hourly = get(
        sandbox,
        admin,
        "/organization/usage/completions",
        {"start_time": day, "end_time": day + DAY, "bucket_width": "1h", "limit": 24},
    )
    assert len(hourly.json()["data"]) == 24
    assert [r["input_tokens"] for r in results(hourly.json())] == [r["input_tokens"] for r in results(daily.json())]


# --- Paging ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/organization/usage/completions", COSTS_PATH])
def test_paging_with_a_small_limit_yields_every_bucket_once_and_equals_one_big_read(sandbox, admin, path):
    group_by = ["project_id", "api_key_id"]
    pages = read_all(sandbox, admin, path, limit=3, group_by=group_by)
    assert len(pages) == 4
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    assert pages[-1]["next_page"] is None
    buckets = [bucket for p in pages for bucket in p["data"]]
    assert [b["start_time"] for b in buckets] == list(range(START, END, DAY))
    assert buckets == read(sandbox, admin, path, group_by=group_by)["data"]


def test_a_cursor_reads_the_same_page_twice(sandbox, admin):
    first = read(sandbox, admin, COSTS_PATH, limit=4)
    again = [read(sandbox, admin, COSTS_PATH, limit=4, page=first["next_page"]) for _ in range(2)]
    assert again[0] == again[1]
    assert again[0]["data"][0]["start_time"] == START + 4 * DAY


def test_a_cursor_outside_the_window_is_refused(sandbox, admin):
    cursor = read(sandbox, admin, COSTS_PATH, limit=4)["next_page"]
    later = {"start_time": START + 5 * DAY, "page": cursor}
    response = get(sandbox, admin, COSTS_PATH, later)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "page"
    assert get(sandbox, admin, COSTS_PATH, {"start_time": START, "page": "nonsense"}).status_code == 400


def test_a_repeat_cursor_plan_hands_back_the_cursor_it_was_given(sandbox, admin):
    sandbox.set_usage(admin, keys=KEYS, models=MODELS, seed="test", repeat_cursor=True)
    first = read(sandbox, admin, "/organization/usage/completions", limit=3)
    second = read(sandbox, admin, "/organization/usage/completions", limit=3, page=first["next_page"])
    assert second["has_more"] is True
    assert second["next_page"] == first["next_page"]


def test_an_endless_plan_never_ends_and_gives_fresh_cursors(sandbox, admin):
    sandbox.set_usage(admin, keys=KEYS, models=MODELS, seed="test", endless=True)
    cursors, cursor = [], None
    for _ in range(8):  # 10 days in pages of 3: past the end after four pages
        body = read(sandbox, admin, COSTS_PATH, limit=3, **({"page": cursor} if cursor else {}))
        assert body["has_more"] is True
        cursor = body["next_page"]
        cursors.append(cursor)
    assert len(set(cursors)) == 8
    assert body["data"] == []


# --- The data -------------------------------------------------------------------------


def test_two_reads_are_identical(sandbox, admin):
    for path in USAGE_PATHS + [COSTS_PATH]:
        assert read(sandbox, admin, path, group_by=["project_id"]) == read(
            sandbox, admin, path, group_by=["project_id"]
        )


def test_completions_follow_the_documented_formula(sandbox, admin):
    body = read(sandbox, admin, "/organization/usage/completions", group_by=["project_id", "api_key_id", "model"])
    got = {(b["start_time"], r["api_key_id"], r["model"]): r for b in body["data"] for r in b["results"]}
    assert len(got) == 10 * len(KEYS) * len(MODELS)
    for day in range(START, END, DAY):
        for key, project in KEYS:
            for model in MODELS:
                requests, input_tokens, output_tokens = expected_metrics(day, project, key, model)
                row = got[(day, key, model)]
                assert row["project_id"] == project
                assert (row["num_model_requests"], row["input_tokens"], row["output_tokens"]) == (
                    requests,
                    input_tokens,
                    output_tokens,
                )


def test_costs_price_the_completions_tokens(sandbox, admin):
    prices = {"gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")), "gpt-4o": (Decimal("2.50"), Decimal("10.00"))}
    body = read(sandbox, admin, COSTS_PATH, group_by=["project_id"])
    for bucket in body["data"]:
        for r in bucket["results"]:
            expected = Decimal(0)
            for key, project in KEYS:
                if project != r["project_id"]:
                    continue
                for model in MODELS:
                    _, input_tokens, output_tokens = expected_metrics(bucket["start_time"], project, key, model)
                    expected += (input_tokens * prices[model][0] + output_tokens * prices[model][1]) / 1_000_000
            assert r["amount"] == {"value": pytest.approx(float(expected), abs=1e-9), "currency": "usd"}


def test_the_plan_helpers_compute_what_the_server_serves(sandbox, admin):
    plan = build_usage_plan(keys=[{"id": k, "project": p} for k, p in KEYS], models=MODELS, seed="test")
    body = read(sandbox, admin, "/organization/usage/embeddings")
    for bucket in body["data"]:
        rows = daily_rows(plan, "embeddings", bucket["start_time"])
        assert bucket["results"][0]["input_tokens"] == sum(row["input_tokens"] for row in rows)


def test_unregistered_ids_are_served_like_any_other(sandbox, admin):
    sandbox.set_usage(admin, keys=KEYS + [("key_nobody", "proj_nowhere")], models=MODELS, seed="test")
    body = read(sandbox, admin, COSTS_PATH, group_by=["project_id", "api_key_id"])
    assert ("proj_nowhere", "key_nobody") in {(r["project_id"], r["api_key_id"]) for r in results(body)}


def test_per_project_endpoints_have_a_row_per_project(sandbox, admin):
    body = read(sandbox, admin, "/organization/usage/vector_stores", group_by=["project_id"])
    assert {r["project_id"] for r in results(body)} == {"proj_alpha", "proj_beta", "proj_empty"}


def test_a_late_bump_changes_only_that_day(sandbox, admin):
    before = [
        read(sandbox, admin, path, group_by=["project_id"]) for path in ("/organization/usage/completions", COSTS_PATH)
    ]
    assert sandbox.bump_usage(admin, TODAY + 3600, factor=2) == TODAY
    after = [
        read(sandbox, admin, path, group_by=["project_id"]) for path in ("/organization/usage/completions", COSTS_PATH)
    ]
    for old, new in zip(before, after, strict=True):
        assert old["data"][:-1] == new["data"][:-1]
        assert old["data"][-1] != new["data"][-1]
    old_tokens = sum(r["input_tokens"] for r in before[0]["data"][-1]["results"])
    new_tokens = sum(r["input_tokens"] for r in after[0]["data"][-1]["results"])
    assert new_tokens == pytest.approx(2 * old_tokens, abs=len(KEYS) * len(MODELS))


def test_days_after_now_and_an_admin_key_without_a_plan_have_empty_buckets(sandbox, admin):
    future = read(sandbox, admin, COSTS_PATH, start_time=TODAY + DAY, end_time=TODAY + 3 * DAY)
    assert [b["results"] for b in future["data"]] == [[], []]
    other = formats.generate(formats.ADMIN)
    sandbox.register(other)
    body = read(sandbox, other, "/organization/usage/completions")
    assert len(body["data"]) == 10 and results(body) == []


# --- Keys and faults ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [formats.PROJECT, formats.SERVICE_ACCOUNT])
def test_project_keys_are_refused(sandbox, admin, fmt):
    secret = formats.generate(fmt)
    sandbox.register(secret)
    for path in ("/organization/usage/completions", COSTS_PATH):
        response = get(sandbox, secret, path, {"start_time": START})
        assert response.status_code == 403
        assert "api.management.read" in response.json()["error"]["message"]


def test_a_usage_plan_needs_a_registered_admin_key(sandbox):
    project_key = formats.generate(formats.PROJECT)
    sandbox.register(project_key)
    for secret in (project_key, formats.generate(formats.ADMIN)):
        with pytest.raises(SandboxError, match="admin key"):
            sandbox.set_usage(secret, keys=KEYS)


def test_a_bump_needs_a_usage_plan_and_a_positive_factor(sandbox, admin):
    with pytest.raises(SandboxError, match="no usage plan"):
        sandbox.bump_usage(formats.generate(formats.ADMIN), TODAY)
    with pytest.raises(SandboxError, match="positive"):
        sandbox.bump_usage(admin, TODAY, factor=0)


def test_a_bad_usage_plan_is_refused(sandbox):
    secret = formats.generate(formats.ADMIN)
    sandbox.register(secret)
    with pytest.raises(SandboxError, match="Each key"):
        sandbox.set_usage(secret, keys=[{"id": "key_a"}])
    with pytest.raises(SandboxError, match="Unknown field"):
        sandbox.set_usage(secret, keys=KEYS, colour="blue")


@pytest.mark.parametrize(
    ("fault", "options", "status"),
    [("revoked", {}, 401), ("throttled", {"retry_after": 7}, 429), ("server_error", {}, 500), ("unavailable", {}, 503)],
)
def test_the_key_fault_plans_apply_to_the_usage_routes(sandbox, fault, options, status):
    secret = formats.generate(formats.ADMIN)
    sandbox.register(secret, fault=fault, **options)
    sandbox.set_usage(secret, keys=KEYS)
    for path in ("/organization/usage/completions", COSTS_PATH):
        response = get(sandbox, secret, path, {"start_time": START})
        assert response.status_code == status
        if fault == "throttled":
            assert response.headers["retry-after"] == "7"


def test_usage_requests_are_counted_per_key(sandbox, admin):
    read_all(sandbox, admin, COSTS_PATH, limit=5)
    get(sandbox, admin, "/organization/usage/completions", {})  # a refused one counts too
    assert sandbox.stats()["per_key"][f"sk-admin-…{admin[-4:]}"] == 3


# --- The official SDK -----------------------------------------------------------------


def test_the_sdk_reads_usage_and_costs_with_its_own_encoding(sandbox, admin):
    client = openai.OpenAI(admin_api_key=admin, base_url=sandbox.openai_url, max_retries=0)
    usage = client.admin.organization.usage
    page = usage.completions(start_time=START, end_time=END, limit=31, group_by=["project_id", "model"])
    assert {(r.project_id, r.model) for b in page.data for r in b.results} == {
        (p, m) for p in ("proj_alpha", "proj_beta") for m in MODELS
    }
    assert page.has_more is False
    costs = usage.costs(start_time=START, end_time=END, limit=4, group_by=["line_item", "api_key_id"])
    assert costs.has_more is True
    following = usage.costs(start_time=START, end_time=END, limit=4, page=costs.next_page)
    assert following.data[0].start_time == START + 4 * DAY
    assert {r.api_key_id for b in costs.data for r in b.results} == {k for k, _ in KEYS}
    assert costs.data[0].results[0].amount.currency == "usd"
    embeddings = usage.embeddings(start_time=START, end_time=END, group_by=["api_key_id"])
    assert {r.api_key_id for b in embeddings.data for r in b.results} == {k for k, _ in KEYS}


def test_the_usage_module_imports_nothing_from_the_console():
    source = (Path(__file__).resolve().parent.parent / "sandbox" / "usage.py").read_text()
    assert console_imports(source) == []
