"""usage/ingest.py's performance changes: the bulk upsert on PostgreSQL (new rows COPYed
in, changed rows merged through a temporary table, unchanged rows never written, a row
stored by another run between the compare and the write merged — never duplicated nor an
error), and the fetch that runs ahead of the store (a failed store stops it)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from tests.test_usage_ingest import admin_key, requests_at_sandbox, window  # noqa: F401
from usage import ingest
from usage.models import CostBucket, Endpoint, UsageBucket

DAY = datetime(2026, 11, 2, tzinfo=UTC)


def page(amounts, day=DAY):
    """One costs page: a bucket of `day` with one result per (project id, amount)."""
    start = int(day.timestamp())
    return {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": start,
                "end_time": start + 86400,
                "results": [
                    {
                        "object": "organization.costs.result",
                        "amount": {"value": amount, "currency": "usd"},
                        "line_item": "gpt-4o-mini, input",
                        "project_id": project_id,
                        "api_key_id": None,
                    }
                    for project_id, amount in amounts
                ],
            }
        ],
        "has_more": False,
        "next_page": None,
    }


def rows(org, amounts, now):
    built, _ = ingest.cost_rows(org, [page(amounts)], ingest.Directory(org), now)
    return built


def stored(org):
    return dict(CostBucket.objects.filter(organization=org).values_list("upstream_project_id", "amount"))


@pytest.mark.django_db
def test_new_rows_are_created_unchanged_ones_never_written_changed_ones_updated(org, project):
    assert connection.vendor == "postgresql"
    first = datetime(2026, 11, 3, tzinfo=UTC)
    amounts = [(project.openai_project_id, 1.25), ("proj_Unknown000001", 0.5)]
    counts = ingest.upsert(CostBucket, org, rows(org, amounts, first))
    assert (counts.created, counts.updated, counts.unchanged) == (2, 0, 0)
    assert stored(org) == {project.openai_project_id: Decimal("1.25"), "proj_Unknown000001": Decimal("0.5")}
    assert CostBucket.objects.get(upstream_project_id=project.openai_project_id).project == project

    later = first + timedelta(hours=1)
    counts = ingest.upsert(CostBucket, org, rows(org, amounts, later))
    assert (counts.created, counts.updated, counts.unchanged) == (0, 0, 2)
    assert set(CostBucket.objects.values_list("ingested_at", flat=True)) == {first}  # nothing rewritten

    counts = ingest.upsert(CostBucket, org, rows(org, [(project.openai_project_id, 2.5)], later))
    assert (counts.created, counts.updated, counts.unchanged) == (0, 1, 0)
    assert stored(org)[project.openai_project_id] == Decimal("2.5")
    assert CostBucket.objects.get(upstream_project_id=project.openai_project_id).ingested_at == later
    assert CostBucket.objects.count() == 2


@pytest.mark.django_db
def test_a_row_stored_by_another_run_meanwhile_is_merged_not_duplicated(org, project):
    """The compare reads nothing (scoped to another endpoint: as if another run stored the
    rows after this one looked), so every row looks new; the COPY meets the unique key
    and the rows are merged instead."""
    start = int(DAY.timestamp())
    body = {
        "object": "page",
        "data": [
            {
                "start_time": start,
                "end_time": start + 86400,
                "results": [{"project_id": "proj_Race00000001", "api_key_id": "key_Race00000001", "model": "m"}],
            }
        ],
    }
    now = datetime(2026, 11, 3, tzinfo=UTC)

    def usage(requests):
        body["data"][0]["results"][0]["num_model_requests"] = requests
        built, _ = ingest.usage_rows(org, "completions", [body], ingest.Directory(org), now)
        return built

    ingest.upsert(UsageBucket, org, usage(5), scope={"endpoint": "completions"})
    counts = ingest.upsert(UsageBucket, org, usage(7), scope={"endpoint": "embeddings"})  # blind compare
    assert counts.created == 1  # what the compare saw …
    assert UsageBucket.objects.count() == 1  # … but no duplicate and no error
    assert UsageBucket.objects.get().num_model_requests == 7
    # And the same blind write of the same values changes nothing either.
    ingest.upsert(UsageBucket, org, usage(7), scope={"endpoint": "embeddings"})
    assert UsageBucket.objects.count() == 1


@pytest.mark.django_db
def test_a_failed_store_stops_the_fetch_before_the_next_endpoint(
    org,
    admin_key,  # noqa: F811
    sandbox,
    settings,
    monkeypatch,
):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    _, hint = admin_key(org)
    since, until = window(3)  # one page per endpoint
    stored = []

    def store_then_fail(organization, fetched, now):
        stored.extend(endpoint for endpoint, _ in fetched)
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest, "store", store_then_fail)
    endpoints = [Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.MODERATIONS, ingest.COSTS]
    with pytest.raises(RuntimeError, match="disk full"):
        ingest.ingest_organization(org, since, until, endpoints=endpoints)
    assert stored == [Endpoint.COMPLETIONS]
    # Counted at the sandbox: the completions page, at most the one page already on its way
    # when the store failed — never the rest.
    assert 1 <= requests_at_sandbox(sandbox, hint) <= 2
    assert UsageBucket.objects.count() == 0 and CostBucket.objects.count() == 0


@pytest.mark.django_db
def test_pages_stored_as_they_arrive_are_counted_once_even_when_the_walk_restarts(
    org,
    admin_key,  # noqa: F811
    sandbox,
    settings,
):
    """A 31-day page over the response cap makes the endpoint start over with fewer days a
    page; the pages stored one by one add up to each bucket and row exactly once."""
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.USAGE_MAX_BODY_BYTES = 256 * 1024
    many = [(f"key_Many{i:08d}", "proj_Many00000001") for i in range(40)]  # 80 rows a day
    admin_key(org, keys=many)
    since, until = window(31)
    summary = ingest.ingest_organization(org, since, until, endpoints=[Endpoint.COMPLETIONS, ingest.COSTS])
    completions, costs = summary.endpoints["completions"], summary.endpoints["costs"]
    assert (completions.buckets, completions.results, completions.created) == (31, 31 * 80, 31 * 80)
    assert (costs.buckets, costs.results, costs.created) == (31, 31 * 160, 31 * 160)
    assert UsageBucket.objects.count() == 31 * 80 and CostBucket.objects.count() == 31 * 160
    again = ingest.ingest_organization(org, since, until, endpoints=[Endpoint.COMPLETIONS, ingest.COSTS])
    assert again.endpoints["completions"].unchanged == 31 * 80 and again.total().created == 0
