"""Usage and costs ingestion against the sandbox's Usage and Costs APIs over real HTTP:
pagination, both array encodings, late data, idempotence, unregistered ids, a repeating
cursor and an endless list, one organization's failure, 429 and retry-after, the circuit
breaker, last_used_at, the command and the read-only admin lists.

Expected numbers come from the sandbox's own formula (sandbox/usage.py, pure Python)."""

from datetime import timedelta
from decimal import Decimal

import httpx2
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Organization, Project
from console.upstream import Outcome
from keys import formats
from keys.models import ApiKey, Circuit, CircuitState, Kind
from sandbox.usage import build_usage_plan, daily_cost_rows, daily_rows
from usage import ingest, tasks
from usage.models import CostBucket, Endpoint, IngestState, UsageBucket

REGISTERED = ("key_Chatbot0001", "proj_Chatbot12345")  # the `project` fixture's id
UNREGISTERED = ("key_Unregistered01", "proj_Unregistered01")
MODELS = ["gpt-4o-mini", "gpt-4o"]
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def usage_settings(settings, sandbox):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.UPSTREAM_READ_TIMEOUT = 2.0
    settings.CIRCUIT_FAILURE_THRESHOLD = 1000
    settings.USAGE_TRAILING_DAYS = 3
    settings.USAGE_BACKFILL_DAYS = 30
    settings.USAGE_MAX_PAGES = 1000
    return settings


@pytest.fixture
def project_key(make_key):
    """The Chatbot project's key, registered here under its upstream id."""
    key, _ = make_key(upstream_key_id=REGISTERED[0], name="Chatbot prod")
    return key


@pytest.fixture
def admin_key(make_key, sandbox):
    """An admin key for an organization, registered in the sandbox with a usage plan.
    Returns (key, hint)."""

    def make(org, keys=(REGISTERED, UNREGISTERED), fault="healthy", usage=True, **plan):
        key, secret = make_key(
            fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name=f"{org.slug} admin"
        )
        options = {k: plan.pop(k) for k in ("retry_after", "fail_times") if k in plan}
        hint = sandbox.register(secret, organization=org.openai_org_id, fault=fault, **options)
        if usage:
            sandbox.set_usage(secret, keys=keys, models=MODELS, **plan)
        key.sandbox_secret = secret  # for bump_usage; in memory only
        return key, hint

    return make


def today():
    return ingest.day_start(timezone.now())


def window(days):
    """The last `days` whole UTC days (today excluded: the sandbox's today is still growing)."""
    return today() - days * DAY, today()


def plan(keys=(REGISTERED, UNREGISTERED)):
    return build_usage_plan(keys=[{"id": k, "project": p} for k, p in keys], models=MODELS)


def expected_sum(endpoint, since, until, field, keys=(REGISTERED, UNREGISTERED), bumps=None):
    p = plan(keys)
    p.bumps.update(bumps or {})
    total, day = 0, since
    while day < until:
        total += sum(row.get(field) or 0 for row in daily_rows(p, endpoint, int(day.timestamp())))
        day += DAY
    return total


def expected_cost(since, until, keys=(REGISTERED, UNREGISTERED)):
    p = plan(keys)
    total, day = Decimal(0), since
    while day < until:
        # The sandbox sends each amount as a JSON float; ingest keeps the float as printed.
        total += sum(ingest.to_amount(float(row["amount"])) for row in daily_cost_rows(p, int(day.timestamp())))
        day += DAY
    return total


def requests_at_sandbox(sandbox, hint):
    return sandbox.stats()["per_key"].get(hint, 0)


def usage_total(field, **filters):
    return UsageBucket.objects.filter(**filters).aggregate(total=Sum(field))["total"]


# --- ingesting --------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_ingests_every_endpoint_across_several_pages_with_the_sandbox_totals(org, project_key, admin_key, sandbox):
    _, hint = admin_key(org)
    since, until = window(40)  # 40 daily buckets: two pages of at most 31 per endpoint

    summary = ingest.ingest_organization(org, since, until)

    assert summary.succeeded == ["acme"] and not summary.failed
    # 8 usage endpoints and costs, two pages each, counted where they arrive.
    assert requests_at_sandbox(sandbox, hint) == 9 * 2
    for endpoint in Endpoint.values:
        assert summary.endpoints[endpoint].buckets == 40
    assert usage_total("input_tokens", endpoint="completions") == expected_sum(
        "completions", since, until, "input_tokens"
    )
    assert usage_total("output_tokens", endpoint="completions") == expected_sum(
        "completions", since, until, "output_tokens"
    )
    assert usage_total("input_cached_tokens", endpoint="completions") == expected_sum(
        "completions", since, until, "input_cached_tokens"
    )
    assert usage_total("num_model_requests", endpoint="embeddings") == expected_sum(
        "embeddings", since, until, "num_model_requests"
    )
    assert usage_total("images", endpoint="images") == expected_sum("images", since, until, "images")
    assert usage_total("characters", endpoint="audio_speeches") == expected_sum(
        "audio_speeches", since, until, "characters"
    )
    assert usage_total("seconds", endpoint="audio_transcriptions") == expected_sum(
        "audio_transcriptions", since, until, "seconds"
    )
    assert usage_total("usage_bytes", endpoint="vector_stores") == expected_sum(
        "vector_stores", since, until, "usage_bytes"
    )
    assert usage_total("num_sessions", endpoint="code_interpreter_sessions") == expected_sum(
        "code_interpreter_sessions", since, until, "num_sessions"
    )
    # Grouped by project, key and model: one row per (day, key, model) for completions.
    assert UsageBucket.objects.filter(endpoint="completions").count() == 40 * 2 * 2
    assert set(UsageBucket.objects.filter(endpoint="completions").values_list("model", flat=True)) == set(MODELS)
    # Costs grouped by project, line item and key: input and output per model and key.
    assert CostBucket.objects.count() == 40 * 2 * 2 * 2
    assert CostBucket.objects.aggregate(total=Sum("amount"))["total"] == expected_cost(since, until)
    assert set(CostBucket.objects.values_list("currency", flat=True)) == {"usd"}
    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == Outcome.OK and state.consecutive_failures == 0 and state.synced_until == until


@pytest.mark.django_db
def test_a_second_run_of_the_same_window_writes_nothing(org, project_key, admin_key):
    admin_key(org)
    since, until = window(10)
    first = ingest.ingest_organization(org, since, until)
    counts = (UsageBucket.objects.count(), CostBucket.objects.count())
    sums = (usage_total("input_tokens"), CostBucket.objects.aggregate(s=Sum("amount"))["s"])
    assert first.total().created == counts[0] + counts[1]
    second_run_at = timezone.now() + timedelta(minutes=5)

    second = ingest.ingest_organization(org, since, until, now=second_run_at)

    assert (second.total().created, second.total().updated) == (0, 0)
    assert second.total().unchanged == counts[0] + counts[1]
    # The state keeps the last run's figures for the dashboard and the ingest state list.
    state = IngestState.objects.get(organization=org)
    assert state.last_counts == {
        "buckets": second.total().buckets,
        "results": second.total().results,
        "created": 0,
        "updated": 0,
        "unchanged": counts[0] + counts[1],
    }
    assert state.last_counts["results"] > 0 and state.last_duration_ms is not None
    assert (UsageBucket.objects.count(), CostBucket.objects.count()) == counts
    assert (usage_total("input_tokens"), CostBucket.objects.aggregate(s=Sum("amount"))["s"]) == sums
    # Counted at the database: no row was rewritten by the second run.
    assert not UsageBucket.objects.filter(ingested_at=second_run_at).exists()
    assert not CostBucket.objects.filter(ingested_at=second_run_at).exists()


@pytest.mark.django_db
def test_late_data_re_read_in_the_trailing_window_updates_its_rows(org, project_key, admin_key, sandbox):
    key, _ = admin_key(org)
    now = timezone.now()
    ingest.run_scheduled("daily", now=now)  # first run: the backfill
    yesterday = today() - DAY
    before = usage_total("input_tokens", endpoint="completions", start_time=yesterday)
    older = usage_total("input_tokens", endpoint="completions", start_time=yesterday - 5 * DAY)
    sandbox.bump_usage(key.sandbox_secret, day=int(yesterday.timestamp()), factor=1.5)

    summary = ingest.run_scheduled("daily", now=now + timedelta(hours=1))

    bumps = {int(yesterday.timestamp()): 1.5}
    after = usage_total("input_tokens", endpoint="completions", start_time=yesterday)
    assert after == expected_sum("completions", yesterday, yesterday + DAY, "input_tokens", bumps=bumps) > before
    assert summary.endpoints["completions"].updated == 2 * 2  # yesterday's rows: 2 keys × 2 models
    assert summary.endpoints["costs"].updated == 2 * 2 * 2
    # Outside the trailing window nothing was read again.
    assert usage_total("input_tokens", endpoint="completions", start_time=yesterday - 5 * DAY) == older
    assert summary.endpoints["completions"].buckets == settings_trailing_buckets()


def settings_trailing_buckets():
    from django.conf import settings

    return settings.USAGE_TRAILING_DAYS + 1  # the trailing days and today


@pytest.mark.django_db
def test_unknown_ids_are_kept_as_unregistered_rows(org, project, project_key, admin_key):
    admin_key(org)
    ingest.ingest_organization(org, *window(2))

    unregistered = UsageBucket.objects.filter(upstream_key_id=UNREGISTERED[0], endpoint="completions")
    assert unregistered.count() == 2 * 2
    assert set(unregistered.values_list("key", "project", "upstream_project_id").distinct()) == {
        (None, None, UNREGISTERED[1])
    }
    registered = UsageBucket.objects.filter(upstream_key_id=REGISTERED[0], endpoint="completions")
    assert set(registered.values_list("key", "project").distinct()) == {(project_key.pk, project.pk)}
    assert CostBucket.objects.filter(upstream_key_id=UNREGISTERED[0], key__isnull=True).count() == 2 * 2 * 2
    # Per-project endpoints link the project only.
    assert set(UsageBucket.objects.filter(endpoint="vector_stores").values_list("upstream_project_id", "project")) == {
        (REGISTERED[1], project.pk),
        (UNREGISTERED[1], None),
    }


@pytest.mark.django_db
def test_the_sdk_and_the_repeated_key_array_encodings_read_the_same_page(org, admin_key, sandbox):
    key, _ = admin_key(org)
    since, until = window(3)
    ingest.ingest_organization(org, since, until, endpoints=[Endpoint.COMPLETIONS])
    # What ingest sent (the SDK's group_by[]=…) grouped by key and model …
    assert UsageBucket.objects.exclude(upstream_key_id="").exclude(model="").count() == 3 * 2 * 2
    # … and a client repeating the key (group_by=a&group_by=b) reads the same page.
    base = f"{sandbox.openai_url}/organization/usage/completions"
    params = f"start_time={int(since.timestamp())}&end_time={int(until.timestamp())}&bucket_width=1d"
    headers = {"Authorization": f"Bearer {key.sandbox_secret}"}
    brackets = httpx2.get(f"{base}?{params}&group_by[]=api_key_id&group_by[]=model", headers=headers)
    repeated = httpx2.get(f"{base}?{params}&group_by=api_key_id&group_by=model", headers=headers)
    assert brackets.status_code == repeated.status_code == 200
    assert brackets.json() == repeated.json()
    assert len(brackets.json()["data"][0]["results"]) == 2 * 2


# --- failures ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_repeating_cursor_stops_with_a_clear_error_recorded_on_the_organization(org, admin_key, sandbox):
    _, hint = admin_key(org, repeat_cursor=True)
    now = timezone.now()

    summary = ingest.ingest_organization(org, *window(40), now=now)

    assert "acme" in summary.failed
    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == "pagination_error"
    assert "repeated the cursor" in state.last_error and state.last_error.startswith("completions")
    assert state.consecutive_failures == 1 and state.next_attempt_at > now
    # Page 1, then the page whose cursor came back again: nothing more was asked for.
    assert requests_at_sandbox(sandbox, hint) == 2


@pytest.mark.django_db
def test_an_endless_list_stops_at_the_page_cap(org, admin_key, sandbox, settings):
    settings.USAGE_MAX_PAGES = 3
    _, hint = admin_key(org, endless=True)

    ingest.ingest_organization(org, *window(2))

    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == "pagination_error"
    assert "Stopped after 3 pages" in state.last_error
    assert requests_at_sandbox(sandbox, hint) == 3


@pytest.mark.django_db
def test_one_organizations_401_does_not_affect_anothers_ingest(org, project_key, admin_key, sandbox):
    beta = Organization.objects.create(name="Beta", slug="beta", openai_org_id="org-BetaBeta1234")
    _, bad_hint = admin_key(org, fault="revoked")
    _, good_hint = admin_key(beta, keys=[("key_Beta00000001", "proj_Beta00000001")])
    now = timezone.now()

    summary = ingest.run_scheduled("daily", now=now)

    assert summary.succeeded == ["beta"] and list(summary.failed) == ["acme"]
    failed = IngestState.objects.get(organization=org)
    assert failed.last_outcome == Outcome.INVALID_KEY and failed.consecutive_failures == 1
    assert failed.next_attempt_at >= now + timedelta(seconds=ingest.RETRY_BASE_SECONDS)
    assert "sk-" not in failed.last_error
    assert not UsageBucket.objects.filter(organization=org).exists()
    assert requests_at_sandbox(sandbox, bad_hint) == 1  # the first 401 ends that organization's run
    assert UsageBucket.objects.filter(organization=beta).count() > 0
    assert IngestState.objects.get(organization=beta).last_outcome == Outcome.OK
    assert requests_at_sandbox(sandbox, good_hint) == 9 * 1  # 31 days backfill: one page each


@pytest.mark.django_db
def test_a_429_is_honoured_with_its_retry_after(org, admin_key, sandbox):
    _, hint = admin_key(org, fault="throttled", retry_after=7200)
    now = timezone.now()

    ingest.run_scheduled("daily", now=now)

    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == Outcome.RATE_LIMITED
    assert state.next_attempt_at >= now + timedelta(seconds=7200)  # longer than the backoff
    assert requests_at_sandbox(sandbox, hint) == 1
    # Scheduled runs before then leave it alone: nothing is sent.
    summary = ingest.run_scheduled("today", now=now + timedelta(hours=1))
    assert summary.skipped == ["acme"]
    assert requests_at_sandbox(sandbox, hint) == 1
    # After it, the next run tries again.
    ingest.run_scheduled("today", now=now + timedelta(hours=2, minutes=1))
    assert requests_at_sandbox(sandbox, hint) == 2
    assert IngestState.objects.get(organization=org).consecutive_failures == 2


@pytest.mark.django_db
def test_backoff_grows_with_failures_and_respects_retry_after():
    state = IngestState(consecutive_failures=1)
    assert state.backoff(None, 60, 3600) == timedelta(seconds=60)
    state.consecutive_failures = 3
    assert state.backoff(None, 60, 3600) == timedelta(seconds=240)
    state.consecutive_failures = 30
    assert state.backoff(None, 60, 3600) == timedelta(seconds=3600)
    assert state.backoff(7200, 60, 3600) == timedelta(seconds=7200)


@pytest.mark.django_db
def test_nothing_is_sent_while_the_hosts_circuit_is_open(org, admin_key, sandbox, settings):
    _, hint = admin_key(org)
    host = sandbox.openai_url.split("//")[1].split("/")[0]
    now = timezone.now()
    Circuit.objects.create(host=host, state=CircuitState.OPEN, open_until=now + timedelta(hours=3))

    ingest.run_scheduled("daily", now=now)

    assert requests_at_sandbox(sandbox, hint) == 0
    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == Outcome.SKIPPED_CIRCUIT_OPEN
    assert state.next_attempt_at >= now + timedelta(hours=3)


@pytest.mark.django_db
def test_server_errors_count_towards_the_hosts_circuit(org, admin_key, sandbox):
    admin_key(org, fault="server_error")
    host = sandbox.openai_url.split("//")[1].split("/")[0]

    ingest.run_scheduled("daily")

    assert IngestState.objects.get(organization=org).last_outcome == Outcome.SERVER_ERROR
    circuit = Circuit.objects.get(host=host)
    assert circuit.consecutive_failures == 1 and circuit.last_outcome == Outcome.SERVER_ERROR


@pytest.mark.django_db
def test_the_console_s_own_exception_is_that_organizations_failure(org, admin_key, monkeypatch):
    beta = Organization.objects.create(name="Beta", slug="beta", openai_org_id="org-BetaBeta1234")
    admin_key(org)
    admin_key(beta, keys=[("key_Beta00000001", "proj_Beta00000001")])
    real_store = ingest.store

    def broken_for_acme(organization, fetched, now):
        if organization.slug == "acme":
            raise RuntimeError("disk full")
        return real_store(organization, fetched, now)

    monkeypatch.setattr(ingest, "store", broken_for_acme)
    summary = ingest.run_scheduled("daily")

    assert summary.succeeded == ["beta"]
    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == Outcome.ERROR and "disk full" in state.last_error and state.next_attempt_at


# --- last used --------------------------------------------------------------------------
@pytest.mark.django_db
def test_last_used_at_is_the_newest_bucket_end_with_requests_and_never_moves_backwards(org, project_key, admin_key):
    admin_key(org)
    since, until = window(5)
    ingest.ingest_organization(org, since, until)
    project_key.refresh_from_db()
    assert project_key.last_used_at == until

    ingest.ingest_organization(org, since - 10 * DAY, since)  # an older window
    project_key.refresh_from_db()
    assert project_key.last_used_at == until

    later = until + 30 * DAY
    ApiKey.objects.filter(pk=project_key.pk).update(last_used_at=later)
    ingest.ingest_organization(org, since, until)
    project_key.refresh_from_db()
    assert project_key.last_used_at == later


# --- windows and tasks ------------------------------------------------------------------
def test_the_first_window_is_the_backfill_and_later_ones_the_trailing_days(settings):
    settings.USAGE_BACKFILL_DAYS, settings.USAGE_TRAILING_DAYS = 30, 3
    now = timezone.now()
    assert ingest.default_window(None, now) == (today() - 30 * DAY, today() + DAY)
    synced = IngestState(synced_until=today() - 6 * DAY)
    assert ingest.default_window(synced, now) == (today() - 9 * DAY, today() + DAY)
    synced = IngestState(synced_until=today() + DAY)
    assert ingest.default_window(synced, now) == (today() - 3 * DAY, today() + DAY)


def test_an_amount_is_kept_as_the_decimal_the_api_printed():
    assert ingest.to_amount(0.1) == Decimal("0.1")
    assert ingest.to_amount(1.23456789012345) == Decimal("1.2345678901")
    assert ingest.to_amount(None) == Decimal(0)
    assert ingest.to_amount(True) == Decimal(0)


@pytest.mark.django_db
def test_the_hourly_task_reads_only_today_once_an_organization_is_synced(org, admin_key, sandbox):
    _, hint = admin_key(org)
    tasks.ingest_all()  # the daily task: backfill
    assert IngestState.objects.get(organization=org).last_outcome == Outcome.OK
    first = requests_at_sandbox(sandbox, hint)
    before = UsageBucket.objects.count()

    tasks.refresh_today()

    assert requests_at_sandbox(sandbox, hint) == first + 9  # one page per endpoint
    assert UsageBucket.objects.count() == before
    assert ingest.run_scheduled("today").endpoints["completions"].buckets == 1


@pytest.mark.django_db
def test_revoked_admin_keys_are_not_used(org, admin_key, sandbox):
    key, hint = admin_key(org)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    summary = ingest.run_scheduled("daily")
    assert summary.succeeded == [] and summary.failed == {}
    assert requests_at_sandbox(sandbox, hint) == 0


# --- the command ------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_command_backfills_a_window_and_prints_a_summary(org, project_key, admin_key, capsys):
    admin_key(org)
    since, until = window(4)
    call_command(
        "ingest_usage", "--org", "acme", "--since", f"{since:%Y-%m-%d}", "--until", f"{until:%Y-%m-%d}", "--no-progress"
    )
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["endpoint"] == ["buckets", "results", "created", "updated", "unchanged"]
    assert lines["completions"] == ["4", "16", "16", "0", "0"]
    assert lines["costs"] == ["4", "32", "32", "0", "0"]
    assert "organizations: 1 ok, 0 failed" in out
    assert UsageBucket.objects.filter(endpoint="completions").count() == 16

    call_command(
        "ingest_usage", "--org", "acme", "--since", f"{since:%Y-%m-%d}", "--until", f"{until:%Y-%m-%d}", "--no-progress"
    )
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["completions"] == ["4", "16", "0", "0", "16"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["--since", "2026-13-01"], "--since takes a date as YYYY-MM-DD"),
        (["--until", "yesterday"], "--until takes a date as YYYY-MM-DD"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before --until"),
        (["--org", "nope"], "No organization with slug “nope”"),
        (["--org", "acme"], "has no active admin key"),
        ([], "No organization has an active admin key"),
    ],
)
def test_the_command_refuses_bad_input_with_a_clear_error(org, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("ingest_usage", *args, "--no-progress")
    assert not UsageBucket.objects.exists()


@pytest.mark.django_db
def test_the_command_exits_non_zero_when_an_organization_failed(org, admin_key, capsys):
    beta = Organization.objects.create(name="Beta", slug="beta", openai_org_id="org-BetaBeta1234")
    admin_key(org, fault="revoked")
    admin_key(beta, keys=[("key_Beta00000001", "proj_Beta00000001")])
    with pytest.raises(CommandError, match=r"1 organization\(s\) failed: acme") as raised:
        call_command("ingest_usage", "--no-progress")
    assert raised.value.returncode == 1
    captured = capsys.readouterr()
    assert "organizations: 1 ok, 1 failed" in captured.out
    assert "acme: invalid_key" in captured.err
    assert UsageBucket.objects.filter(organization=beta).exists()


# --- the admin --------------------------------------------------------------------------
def add_buckets(n, org, project, key, start):
    for i in range(n):
        day = start - i * DAY
        p = Project.objects.create(organization=org, name=f"P{Project.objects.count()}")
        UsageBucket.objects.create(
            organization=org,
            project=p,
            key=key,
            endpoint="completions",
            start_time=day,
            end_time=day + DAY,
            upstream_project_id=f"proj_X{i:010d}",
            upstream_key_id=REGISTERED[0],
            model=MODELS[i % 2],
            input_tokens=i,
            num_model_requests=1,
        )
        UsageBucket.objects.create(
            organization=org,
            endpoint="completions",
            start_time=day,
            end_time=day + DAY,
            upstream_project_id=UNREGISTERED[1],
            upstream_key_id=UNREGISTERED[0],
            model=MODELS[0],
            num_model_requests=1,
        )
        CostBucket.objects.create(
            organization=org,
            project=p,
            key=key,
            start_time=day,
            end_time=day + DAY,
            upstream_project_id=f"proj_X{i:010d}",
            upstream_key_id=REGISTERED[0],
            line_item=f"{MODELS[0]}, input",
            amount=Decimal("0.5"),
        )


LISTS = ["usage_usagebucket", "usage_costbucket", "usage_ingeststate"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", LISTS)
def test_admin_lists_keep_a_constant_query_count_as_rows_grow(client, admin_user, org, project, project_key, name):
    client.force_login(admin_user)
    url = reverse(f"admin:{name}_changelist")
    add_buckets(2, org, project, project_key, today())
    IngestState.objects.create(organization=org, last_outcome="ok")

    def queries():
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url)
        assert response.status_code == 200
        return len(ctx.captured_queries)

    few = queries()
    add_buckets(25, org, project, project_key, today() - 3 * DAY)
    for i in range(25):
        other = Organization.objects.create(name=f"Org {i}", slug=f"org-{i}")
        IngestState.objects.create(organization=other, last_outcome="invalid_key", consecutive_failures=1)
    assert queries() == few


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin_user", "reviewer"])
def test_each_role_may_view_the_usage_lists_but_not_change_them(client, request, org, project, project_key, role):
    client.force_login(request.getfixturevalue(role))
    add_buckets(1, org, project, project_key, today())
    for name in LISTS[:2]:
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200
        assert client.get(reverse(f"admin:{name}_add")).status_code == 403
    row = UsageBucket.objects.filter(key=project_key).first()
    change = reverse("admin:usage_usagebucket_change", args=[row.pk])
    assert client.get(change).status_code == 200
    assert client.post(change, {"input_tokens": 1}).status_code == 403
    row.refresh_from_db()
    assert row.input_tokens == 0


@pytest.mark.django_db
def test_the_unregistered_filter_shows_only_rows_of_unknown_ids(admin_client, org, project, project_key):
    add_buckets(3, org, project, project_key, today())
    url = reverse("admin:usage_usagebucket_changelist")
    unregistered = admin_client.get(url, {"registered": "no"}).context["cl"].queryset
    assert set(unregistered.values_list("upstream_key_id", flat=True)) == {UNREGISTERED[0]}
    registered = admin_client.get(url, {"registered": "yes"}).context["cl"].queryset
    assert set(registered.values_list("upstream_key_id", flat=True)) == {REGISTERED[0]}
    html = admin_client.get(url, {"registered": "no"}).content.decode()
    assert f"{UNREGISTERED[0]} (unregistered)" in html
    costs = reverse("admin:usage_costbucket_changelist")
    assert admin_client.get(costs, {"registered": "no"}).context["cl"].queryset.count() == 0


@pytest.mark.django_db
def test_a_page_larger_than_the_response_cap_is_asked_for_again_in_fewer_days(org, admin_key, sandbox, settings):
    settings.USAGE_MAX_BODY_BYTES = 256 * 1024
    many = [(f"key_Many{i:08d}", "proj_Many00000001") for i in range(40)]  # 80 rows a day
    _, hint = admin_key(org, keys=many)
    since, until = window(31)

    summary = ingest.ingest_organization(org, since, until, endpoints=[Endpoint.COMPLETIONS])

    assert summary.succeeded == ["acme"]
    assert UsageBucket.objects.count() == 31 * 80
    assert usage_total("input_tokens") == expected_sum("completions", since, until, "input_tokens", keys=many)
    # 31 days a page was cut short; 15, 15 and 1 a page fit (or took another halving).
    assert 4 <= requests_at_sandbox(sandbox, hint) <= 12


@pytest.mark.django_db
def test_a_day_larger_than_the_response_cap_is_a_clear_error_and_stores_nothing_partial(
    org, admin_key, sandbox, settings
):
    settings.USAGE_MAX_BODY_BYTES = 256 * 1024
    many = [(f"key_Many{i:08d}", "proj_Many00000001") for i in range(600)]  # 1,200 rows a day
    _, hint = admin_key(org, keys=many)

    ingest.ingest_organization(org, *window(3), endpoints=[Endpoint.COMPLETIONS])

    state = IngestState.objects.get(organization=org)
    assert state.last_outcome == Outcome.MALFORMED_RESPONSE
    assert "response size cap" in state.last_error
    assert not UsageBucket.objects.exists()
    assert requests_at_sandbox(sandbox, hint) == 2  # 3 days a page (the window), then 1


@pytest.mark.django_db
def test_an_admin_key_that_does_not_decrypt_is_that_organizations_failure(org, admin_key, sandbox):
    key, hint = admin_key(org)
    # Its destination changed without the secret being pasted again: it fails closed.
    ApiKey.objects.filter(pk=key.pk).update(base_url=sandbox.openai_url)

    summary = ingest.run_scheduled("daily")

    assert list(summary.failed) == ["acme"]
    assert IngestState.objects.get(organization=org).last_outcome == Outcome.DECRYPTION_FAILED
    assert requests_at_sandbox(sandbox, hint) == 0


@pytest.mark.django_db
def test_a_large_organization_fits_the_default_usage_page_cap(org, admin_key, sandbox):
    """1,200 key × model rows a day (over 256 KiB a day) ingest whole: usage pages have a
    cap of their own (USAGE_MAX_BODY_BYTES), not the probes' 256 KiB."""
    many = [(f"key_Many{i:08d}", "proj_Many00000001") for i in range(600)]
    _, hint = admin_key(org, keys=many)
    since, until = window(2)

    summary = ingest.ingest_organization(org, since, until, endpoints=[Endpoint.COMPLETIONS])

    assert summary.succeeded == ["acme"]
    assert UsageBucket.objects.count() == 2 * 1200
    assert requests_at_sandbox(sandbox, hint) == 1
