"""Model prices (seeded from usage/data/model_prices.csv), the estimator, the
estimate_cost command (no network call), the "Estimate cost" and "Reconciliation" admin
pages, and the price admin's rights."""

import csv
import socket
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts.models import AuditEvent, Organization, Project
from keys import formats
from usage import prices
from usage.models import CostBucket, Endpoint, ModelPrice, UsageBucket
from usage.reconcile import months_back, period_starts, reconcile

D = Decimal
PRICE_FILE = Path(prices.__file__).resolve().parent / "data" / "model_prices.csv"


def price_rows():
    with open(PRICE_FILE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- The seed ---------------------------------------------------------------------------


def test_the_price_file_names_a_source_for_every_row_and_covers_the_common_models():
    rows = price_rows()
    assert all(row["source"].strip() for row in rows)
    models = {row["model"] for row in rows}
    for model in [
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "o3",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
    ]:
        assert model in models
    assert len({(row["model"], row["effective_date"]) for row in rows}) == len(rows)


@pytest.mark.django_db
def test_the_data_migration_seeded_every_row_of_the_file():
    rows = price_rows()
    assert ModelPrice.objects.count() == len(rows)
    for row in rows:
        price = ModelPrice.objects.get(model=row["model"], effective_date=row["effective_date"])
        assert price.input_per_1m == D(row["input"])
        assert price.output_per_1m == D(row["output"])
        assert price.cached_input_per_1m == (D(row["cached_input"]) if row["cached_input"] else None)
        assert price.source == row["source"]


# --- price_on and estimate_cost ---------------------------------------------------------


@pytest.mark.django_db
def test_price_on_takes_the_newest_row_effective_on_or_before_the_day():
    # o3's price was cut on 2025-06-10 (the seed has both rows).
    assert prices.price_on("o3", date(2025, 6, 9)).input_per_1m == D("10")
    assert prices.price_on("o3", date(2025, 6, 10)).input_per_1m == D("2")
    with pytest.raises(prices.UnknownModel, match="o3.*on or before 2025-04-15"):
        prices.price_on("o3", date(2025, 4, 15))


@pytest.mark.django_db
def test_a_dated_snapshot_is_priced_as_its_base_model_unless_it_has_its_own_row():
    assert prices.price_on("gpt-4.1-mini-2025-04-14", date(2026, 1, 1)).model == "gpt-4.1-mini"
    assert prices.price_on("gpt-3.5-turbo-0125", date(2026, 1, 1)).model == "gpt-3.5-turbo"
    # gpt-4o-2024-05-13 kept its launch price: its own row wins over gpt-4o's.
    assert prices.price_on("gpt-4o-2024-05-13", date(2026, 1, 1)).input_per_1m == D("5")
    assert prices.price_on("gpt-4o-2024-08-06", date(2026, 1, 1)).input_per_1m == D("2.5")


@pytest.mark.django_db
def test_nothing_else_is_guessed_and_an_unknown_model_is_a_clear_error():
    with pytest.raises(prices.UnknownModel, match="“gpt-4.1-mega”.*Model prices"):
        prices.price_on("gpt-4.1-mega", date(2026, 1, 1))
    with pytest.raises(prices.UnknownModel):
        prices.estimate_cost("o3-pro-ultra", 1, 1)


@pytest.mark.django_db
def test_cached_tokens_are_part_of_the_input_and_priced_at_the_cached_rate():
    # gpt-4.1-mini: $0.40 input, $0.10 cached, $1.60 output per 1M.
    cost = prices.estimate_cost("gpt-4.1-mini", 1_000_000, 1_000_000, cached_input_tokens=400_000, on=date(2026, 1, 1))
    assert cost == D("0.24") + D("0.04") + D("1.60")


@pytest.mark.django_db
def test_requests_multiply_the_per_request_counts():
    one = prices.estimate_cost("gpt-4o-mini", 1200, 300, on=date(2026, 1, 1))
    assert one == D("1200") * D("0.15") / 1_000_000 + D("300") * D("0.60") / 1_000_000
    assert prices.estimate_cost("gpt-4o-mini", 1200, 300, requests=1000, on=date(2026, 1, 1)) == one * 1000


@pytest.mark.django_db
def test_a_model_without_a_cached_rate_prices_cached_tokens_at_the_input_rate():
    # gpt-4-turbo has no cached-input rate: $10 per 1M input.
    assert prices.estimate_cost("gpt-4-turbo", 1_000_000, 0, cached_input_tokens=500_000) == D("10")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_tokens": -1}, "input tokens"),
        ({"cached_input_tokens": 2000}, "cannot be more"),
        ({"requests": -3}, "requests"),
    ],
)
def test_bad_counts_are_refused(kwargs, message):
    args = {"model": "gpt-4.1", "input_tokens": 1000, "output_tokens": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        prices.estimate_cost(**args)


# --- The command ------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any outbound connection fails loudly (and is counted)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network call attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def run(*args):
    out = StringIO()
    call_command("estimate_cost", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_estimate_cost_prints_the_breakdown_and_total_without_any_network_call(no_network):
    ModelPrice.objects.count()  # the database connection is open before the network goes
    output = run(
        "--model",
        "gpt-4.1-mini-2025-04-14",
        "--input-tokens",
        "12000",
        "--cached-input-tokens",
        "2000",
        "--output-tokens",
        "800",
        "--requests",
        "1000",
        "--on",
        "2026-01-01",
    )
    assert "priced as “gpt-4.1-mini” effective 2025-04-14" in output
    assert "Input (uncached)" in output and "10,000,000" in output
    assert "Cached input" in output and "2,000,000" in output
    assert "Output" in output and "800,000" in output
    # 10M × $0.40 + 2M × $0.10 + 0.8M × $1.60
    assert "$5.480000" in output.splitlines()[-1]
    assert no_network == []
    # The guard works: a connection attempt would have been refused and recorded.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9))
    assert no_network


@pytest.mark.django_db
def test_estimate_cost_names_an_unknown_model(no_network):
    with pytest.raises(CommandError, match="No price for model “gpt-9”"):
        run("--model", "gpt-9", "--input-tokens", "1", "--output-tokens", "1")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["--cached-input-tokens", "5000"], "cannot be more"),
        (["--on", "yesterday"], "YYYY-MM-DD"),
        (["--requests", "-1"], "requests"),
    ],
)
def test_estimate_cost_refuses_bad_input_clearly(args, message):
    with pytest.raises(CommandError, match=message):
        run("--model", "gpt-4.1", "--input-tokens", "1000", "--output-tokens", "1", *args)


@pytest.mark.django_db
def test_estimate_cost_refuses_a_key_shaped_argument_without_echoing_it(capsys):
    secret = formats.generate(formats.PROJECT)
    with pytest.raises((CommandError, SystemExit)) as caught:
        run("--model", secret, "--input-tokens", "1", "--output-tokens", "1")
    captured = capsys.readouterr()
    assert secret not in str(caught.value) + captured.out + captured.err


# --- The Estimate cost page -------------------------------------------------------------

ESTIMATE = {"model": "gpt-4.1", "input_tokens": "1000000", "cached_input_tokens": "0", "output_tokens": "500000"}


@pytest.fixture
def superuser_client(client, db):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-123456"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["admin_client", "reviewer_client", "superuser_client"])
def test_admins_reviewers_and_superusers_can_estimate_and_nothing_is_written(request, who):
    client = request.getfixturevalue(who)
    before = (ModelPrice.objects.count(), AuditEvent.objects.count())
    response = client.get(reverse("admin:usage_estimate_cost"), {**ESTIMATE, "on": "2026-01-01"})
    assert response.status_code == 200
    # $2 + 0.5 × $8
    assert response.context["estimate"].total == D("6")
    assert 'id="estimate-total">6.000000<' in response.content.decode()
    assert (ModelPrice.objects.count(), AuditEvent.objects.count()) == before


@pytest.mark.django_db
def test_the_estimate_page_shows_the_form_and_errors(admin_client):
    response = admin_client.get(reverse("admin:usage_estimate_cost"))
    assert response.status_code == 200 and response.context["estimate"] is None
    response = admin_client.get(reverse("admin:usage_estimate_cost"), {**ESTIMATE, "model": "nope-1"})
    assert "No price for model “nope-1”" in response.content.decode()
    response = admin_client.get(reverse("admin:usage_estimate_cost"), {**ESTIMATE, "cached_input_tokens": "2000000"})
    assert "cannot be more" in response.content.decode()


@pytest.mark.django_db
def test_the_estimate_page_never_shows_a_key_pasted_as_the_model(admin_client):
    secret = formats.generate(formats.PROJECT)
    response = admin_client.get(reverse("admin:usage_estimate_cost"), {**ESTIMATE, "model": secret})
    assert response.status_code == 200
    assert response.context["estimate"] is None
    assert secret not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["admin:usage_estimate_cost", "admin:usage_reconciliation"])
def test_anonymous_and_outsiders_get_the_login_page(client, outsider, page):
    response = client.get(reverse(page), ESTIMATE)
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    client.force_login(outsider)
    response = client.get(reverse(page), ESTIMATE)
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))


@pytest.mark.django_db
def test_staff_without_the_view_permission_are_refused(client):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_user("sam", "sam@example.com", "pw-sam-123456", is_staff=True))
    assert client.get(reverse("admin:usage_estimate_cost"), ESTIMATE).status_code == 403
    assert client.get(reverse("admin:usage_reconciliation")).status_code == 403


# --- Prices in the admin: admins edit (audited), reviewers view ------------------------


def price_form(**overrides):
    return {
        "model": "gpt-test",
        "effective_date": "2026-11-01",
        "input_per_1m": "1.5",
        "cached_input_per_1m": "",
        "output_per_1m": "6",
        "source": "test",
        **overrides,
    }


@pytest.mark.django_db
def test_a_console_admin_adds_and_edits_a_price_and_each_change_is_audited(admin_client, admin_user):
    response = admin_client.post(reverse("admin:usage_modelprice_add"), price_form())
    assert response.status_code == 302
    price = ModelPrice.objects.get(model="gpt-test")
    event = AuditEvent.objects.get(action="modelprice.created")
    assert event.actor == admin_user and event.target_id == str(price.pk)
    response = admin_client.post(
        reverse("admin:usage_modelprice_change", args=[price.pk]), price_form(output_per_1m="7")
    )
    assert response.status_code == 302
    price.refresh_from_db()
    assert price.output_per_1m == D("7")
    changes = AuditEvent.objects.get(action="modelprice.updated").details["changes"]
    assert changes == {"output_per_1m": {"old": "6.0000", "new": "7"}}


@pytest.mark.django_db
def test_a_negative_price_is_refused(admin_client):
    response = admin_client.post(reverse("admin:usage_modelprice_add"), price_form(input_per_1m="-1"))
    assert response.status_code == 200
    assert "cannot be negative" in response.content.decode()
    assert not ModelPrice.objects.filter(model="gpt-test").exists()


@pytest.mark.django_db
def test_a_reviewer_views_prices_but_cannot_add_change_or_delete_them(reviewer_client):
    price = ModelPrice.objects.get(model="gpt-4.1")
    before = list(ModelPrice.objects.order_by("pk").values())
    assert reviewer_client.get(reverse("admin:usage_modelprice_changelist")).status_code == 200
    assert reviewer_client.get(reverse("admin:usage_modelprice_change", args=[price.pk])).status_code == 200
    assert reviewer_client.post(reverse("admin:usage_modelprice_add"), price_form()).status_code == 403
    change = reverse("admin:usage_modelprice_change", args=[price.pk])
    assert reviewer_client.post(change, price_form(model="gpt-4.1", input_per_1m="0")).status_code == 403
    delete = reverse("admin:usage_modelprice_delete", args=[price.pk])
    assert reviewer_client.post(delete, {"post": "yes"}).status_code == 403
    assert list(ModelPrice.objects.order_by("pk").values()) == before
    # The only events are the three refusals themselves.
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["access.denied"] * 3


@pytest.mark.django_db
def test_the_price_list_links_to_the_two_pages(reviewer_client):
    html = reviewer_client.get(reverse("admin:usage_modelprice_changelist")).content.decode()
    assert reverse("admin:usage_estimate_cost") in html
    assert reverse("admin:usage_reconciliation") in html


# --- Reconciliation ---------------------------------------------------------------------


def bucket_day(y, m, d):
    return datetime(y, m, d, tzinfo=UTC)


def add_cost(org, start, amount, upstream_project_id, project=None):
    CostBucket.objects.create(
        organization=org,
        project=project,
        upstream_project_id=upstream_project_id,
        start_time=start,
        end_time=start + timedelta(days=1),
        line_item="completions",
        amount=D(amount),
    )


def add_usage(org, start, model, input_tokens, output_tokens, upstream_project_id, project=None, key="key_R1"):
    UsageBucket.objects.create(
        organization=org,
        project=project,
        endpoint=Endpoint.COMPLETIONS,
        start_time=start,
        end_time=start + timedelta(days=1),
        upstream_project_id=upstream_project_id,
        upstream_key_id=key,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_cached_tokens=0,
    )


@pytest.fixture
def ledger(org, project):
    """Two months of one registered project, one unregistered project, another org."""
    pid = project.openai_project_id
    # October: billed $5.00; usage 1M in + 0.5M out of gpt-4.1 = $2 + $4 = $6.
    add_cost(org, bucket_day(2026, 10, 3), "3.00", pid, project)
    add_cost(org, bucket_day(2026, 10, 4), "2.00", pid, project)
    add_usage(org, bucket_day(2026, 10, 3), "gpt-4.1", 1_000_000, 500_000, pid, project)
    # A model without a price: left out of the estimate, and named.
    add_usage(org, bucket_day(2026, 10, 4), "mystery", 1_000_000, 0, pid, project)
    # November: billed $1.00, usage $0.40 (gpt-4.1-mini 1M input).
    add_cost(org, bucket_day(2026, 11, 2), "1.00", pid, project)
    add_usage(org, bucket_day(2026, 11, 2), "gpt-4.1-mini-2025-04-14", 1_000_000, 0, pid, project)
    # An unregistered project, billed only.
    add_cost(org, bucket_day(2026, 11, 5), "9.99", "proj_Unregistered01")
    other = Organization.objects.create(name="Beta", slug="beta")
    add_cost(other, bucket_day(2026, 11, 5), "4.00", "proj_Beta00000001")
    add_usage(other, bucket_day(2026, 11, 5), "gpt-4o-mini", 2_000_000, 0, "proj_Beta00000001")
    return other


NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def table(rows):
    return {
        (r.month, r.organization.slug, r.project_label): (r.estimated, r.billed, r.difference, r.unpriced) for r in rows
    }


@pytest.mark.django_db
def test_reconciliation_lists_estimated_billed_and_difference_per_project_and_month(ledger, project):
    rows = reconcile(NOW, months=3)
    assert table(rows) == {
        (date(2026, 10, 1), "acme", "Chatbot"): (D("6"), D("5.00"), D("1"), ["mystery"]),
        (date(2026, 11, 1), "acme", "Chatbot"): (D("0.4"), D("1.00"), D("-0.6"), []),
        (date(2026, 11, 1), "acme", "proj_Unregistered01 (unregistered)"): (D("0"), D("9.99"), D("-9.99"), []),
        (date(2026, 11, 1), "beta", "proj_Beta00000001 (unregistered)"): (D("0.3"), D("4.00"), D("-3.7"), []),
    }
    # Newest month first.
    assert [r.month for r in rows][0] == date(2026, 11, 1)
    assert rows[-1].difference_percent == D("20.0")


@pytest.mark.django_db
def test_reconciliation_limits_months_and_organization(ledger, org):
    assert {r.month for r in reconcile(NOW, months=1)} == {date(2026, 11, 1)}
    assert {r.organization.slug for r in reconcile(NOW, months=3, organization=ledger)} == {"beta"}


@pytest.mark.django_db
def test_reconciliation_queries_stay_constant_as_rows_grow(ledger, org, django_assert_num_queries):
    book = prices.PriceBook.load()
    with django_assert_num_queries(4):
        assert len(reconcile(NOW, months=3, prices=book)) == 4
    for i in range(20):
        p = Project.objects.create(organization=org, name=f"P{i}", openai_project_id=f"proj_Many{i:010d}")
        add_cost(org, bucket_day(2026, 11, 3), "1", p.openai_project_id, p)
        add_usage(org, bucket_day(2026, 11, 3), "gpt-4.1", 1000, 1000, p.openai_project_id, p)
        add_usage(org, bucket_day(2026, 10, 3 + i), "gpt-4.1", 1000, 1000, p.openai_project_id, p)
    with django_assert_num_queries(4):
        rows = reconcile(NOW, months=3, prices=book)
    assert len(rows) == 44
    # Without a price book, one more query reads the prices.
    with django_assert_num_queries(5):
        reconcile(NOW, months=3)


# A varied world for checking reconcile() against per-day pricing. Prices made up for it:
# gpt-step changes price in the middle of October (and loses its cached rate) and again on
# November 1st; gpt-late has a price only from October 20th; mystery has none.
STEP_PRICES = [
    ("gpt-step", date(2026, 8, 1), "1.0000", "0.2500", "4.0000"),
    ("gpt-step", date(2026, 10, 15), "3.0000", None, "6.0000"),
    ("gpt-step", date(2026, 11, 1), "0.7000", "0.0700", "2.1000"),
    ("gpt-late", date(2026, 10, 20), "0.3300", "0.1100", "1.3300"),
]
MODELS = [
    "gpt-4.1",  # priced by its own name
    "gpt-4.1-mini-2025-04-14",  # priced as its base model, gpt-4.1-mini
    "gpt-step",
    "gpt-step-2026-09-01",  # a snapshot of gpt-step: its base model's price change
    "gpt-late",
    "mystery",  # no price at all
    "",  # usage not grouped by model
]


def add_usage_row(org, start, model, upstream_project_id, key, input_tokens, cached, output_tokens, **fields):
    return UsageBucket(
        organization=org,
        endpoint=fields.pop("endpoint", Endpoint.COMPLETIONS),
        start_time=start,
        end_time=start + timedelta(days=1),
        upstream_project_id=upstream_project_id,
        upstream_key_id=key,
        model=model,
        input_tokens=input_tokens,
        input_cached_tokens=cached,
        output_tokens=output_tokens,
        **fields,
    )


@pytest.fixture
def varied_world(org, project):
    """Three organizations, registered and unregistered projects, every model of MODELS
    on most days from late August to after NOW, costs on some days, and the edge cases
    the per-day pricing has: NULL counts, more cached than input tokens in a day."""
    for model, effective, input_rate, cached_rate, output_rate in STEP_PRICES:
        ModelPrice.objects.create(
            model=model,
            effective_date=effective,
            input_per_1m=D(input_rate),
            cached_input_per_1m=D(cached_rate) if cached_rate else None,
            output_per_1m=D(output_rate),
        )
    search = Project.objects.create(organization=org, name="Search", openai_project_id="proj_Search123456")
    beta = Organization.objects.create(name="Beta", slug="beta")
    beta_app = Project.objects.create(organization=beta, name="Beta app", openai_project_id="proj_BetaApp12345")
    gamma = Organization.objects.create(name="Gamma", slug="gamma")
    # (organization, upstream project id, registered project): Chatbot's id also shows up
    # under Beta, where it is not registered; "" is usage not grouped by project.
    scopes = [
        (org, project.openai_project_id, project),
        (org, search.openai_project_id, search),
        (org, "proj_Unregistered01", None),
        (org, "", None),
        (beta, beta_app.openai_project_id, beta_app),
        (beta, project.openai_project_id, None),
    ]
    usage = []
    first = datetime(2026, 8, 25, tzinfo=UTC)
    for d in range(95):  # 2026-08-25 … 2026-11-27: before the window, three months, after NOW
        start = first + timedelta(days=d)
        for s, (o, upstream, registered) in enumerate(scopes):
            for m, model in enumerate(MODELS):
                n = d * 7 + s * 5 + m * 3
                if n % 4 == 0:  # not every model every day
                    continue
                usage.append(
                    add_usage_row(
                        o,
                        start,
                        model,
                        upstream,
                        "key_A",
                        1000 + n * 37,
                        300 + n % 500,
                        200 + n * 11,
                        project=registered,
                    )
                )
                if n % 3 == 0:  # a second key the same day: one group of two rows
                    usage.append(add_usage_row(o, start, model, upstream, "key_B", 50 + n, n % 40, 10 + n))
        if d % 3 == 0:  # the same upstream key under another endpoint: the same group
            usage.append(
                add_usage_row(
                    org, start, "gpt-step", project.openai_project_id, "key_A", 77, 5, 9, endpoint=Endpoint.EMBEDDINGS
                )
            )
    edge = [
        # More cached than input tokens in one row, but not in its day's group: the clamp
        # is per day, not per row.
        add_usage_row(org, datetime(2026, 10, 3, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 100, 900, 10),
        add_usage_row(org, datetime(2026, 10, 3, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_Y", 5000, 0, 10),
        # More cached than input tokens in a whole day's group (clamped to the input),
        # on both sides of the price change, and on the next day a normal one.
        add_usage_row(org, datetime(2026, 10, 14, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 100, 900, 10),
        add_usage_row(org, datetime(2026, 10, 14, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_Y", 100, 50, 10),
        add_usage_row(org, datetime(2026, 10, 16, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 10, 70, 0),
        add_usage_row(org, datetime(2026, 10, 17, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 700, 70, 0),
        # Cached tokens but no input count: clamped to 0.
        add_usage_row(org, datetime(2026, 11, 4, tzinfo=UTC), "gpt-4.1", "proj_Edge0000001", "key_X", None, 500, 40),
        # NULL counts: no cached count; no output count; neither input nor output (left out).
        add_usage_row(org, datetime(2026, 11, 4, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 400, None, 3),
        add_usage_row(org, datetime(2026, 11, 5, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 400, 4, None),
        add_usage_row(org, datetime(2026, 11, 6, tzinfo=UTC), "mystery-2", "proj_Edge0000001", "key_X", None, 9, None),
        # A bucket not starting at midnight: priced on its UTC day, grouped on its own.
        add_usage_row(
            org, datetime(2026, 10, 14, 23, 30, tzinfo=UTC), "gpt-step", "proj_Edge0000001", "key_X", 100, 900, 10
        ),
        # On the window's first instant, and on NOW itself (both in); just after (out).
        add_usage_row(gamma, datetime(2026, 9, 1, tzinfo=UTC), "gpt-step", "proj_Gamma0000001", "key_G", 3, 1, 3),
        add_usage_row(gamma, NOW, "gpt-step", "proj_Gamma0000001", "key_G", 5, 1, 5),
        add_usage_row(gamma, NOW + timedelta(seconds=1), "gpt-step", "proj_Gamma0000001", "key_G", 7, 1, 7),
    ]
    UsageBucket.objects.bulk_create(usage + edge)
    costs = []
    for d in range(0, 95, 2):
        start = first + timedelta(days=d)
        for s, (o, upstream, registered) in enumerate(scopes[:5]):
            costs.append(
                CostBucket(
                    organization=o,
                    project=registered,
                    upstream_project_id=upstream,
                    start_time=start,
                    end_time=start + timedelta(days=1),
                    line_item=f"line {s}",
                    amount=D(f"{d % 7}.{s}{d % 10}"),
                )
            )
    # Billed with no usage at all: Gamma's other project, and a project Beta never used.
    for d in (2, 40, 80):
        start = first + timedelta(days=d)
        costs.append(
            CostBucket(
                organization=gamma,
                upstream_project_id="proj_GammaBilled01",
                start_time=start,
                end_time=start + timedelta(days=1),
                amount=D("1.25"),
            )
        )
    costs.append(
        CostBucket(
            organization=beta,
            upstream_project_id="proj_BetaBilled001",
            start_time=datetime(2026, 10, 9, tzinfo=UTC),
            end_time=datetime(2026, 10, 10, tzinfo=UTC),
            amount=D("0.01"),
        )
    )
    CostBucket.objects.bulk_create(costs)
    return {"beta": beta, "gamma": gamma}


def per_day_reference(now, months=3, organization=None):
    """What reconcile() gives, the straightforward way: usage summed per organization,
    upstream project, bucket start and model in Python, each such day priced on its own
    day with min(cached, input), costs summed row by row. Rows as comparable tuples, in
    reconcile()'s order."""
    since = months_back(now, months)
    book = prices.PriceBook.load()
    usage = UsageBucket.objects.filter(start_time__gte=since, start_time__lte=now)
    costs = CostBucket.objects.filter(start_time__gte=since, start_time__lte=now)
    if organization is not None:
        usage, costs = usage.filter(organization=organization), costs.filter(organization=organization)
    days = {}
    for u in usage:
        if u.input_tokens is None and u.output_tokens is None:
            continue
        sums = days.setdefault((u.organization_id, u.upstream_project_id, u.start_time, u.model), [None] * 3)
        for i, count in enumerate((u.input_tokens, u.input_cached_tokens, u.output_tokens)):
            if count is not None:
                sums[i] = (sums[i] or 0) + count
    rows = {}

    def row(org_id, upstream_project_id, start_time):
        month = start_time.astimezone(UTC).date().replace(day=1)
        return rows.setdefault(
            (org_id, upstream_project_id, month), {"estimated": D(0), "billed": D(0), "unpriced": set()}
        )

    for c in costs:
        row(c.organization_id, c.upstream_project_id, c.start_time)["billed"] += c.amount
    for (org_id, upstream_project_id, start_time, model), (input_tokens, cached, output) in days.items():
        target = row(org_id, upstream_project_id, start_time)
        input_tokens, cached, output = input_tokens or 0, cached or 0, output or 0
        try:
            day = start_time.astimezone(UTC).date()
            target["estimated"] += book.estimate(model, input_tokens, output, min(cached, input_tokens), on=day).total
        except prices.UnknownModel:
            target["unpriced"].add(model or "(no model)")
    organizations = Organization.objects.in_bulk()
    projects = {p.openai_project_id: p for p in Project.objects.exclude(openai_project_id="")}
    result = []
    for (org_id, upstream_project_id, month), r in rows.items():
        project = projects.get(upstream_project_id)
        project = project if project is not None and project.organization_id == org_id else None
        if project is not None:
            label = project.name
        else:
            label = f"{upstream_project_id} (unregistered)" if upstream_project_id else "(no project)"
        result.append(
            (month, organizations[org_id].name, label, project, r["estimated"], r["billed"], sorted(r["unpriced"]))
        )
    result.sort(key=lambda r: (-r[0].toordinal(), r[1], r[2]))
    return result


def as_tuples(rows):
    return [(r.month, r.organization.name, r.project_label, r.project, r.estimated, r.billed, r.unpriced) for r in rows]


def test_reconciliation_periods_start_at_each_month_and_each_price_change_in_the_window():
    book = prices.PriceBook(
        ModelPrice(model=model, effective_date=day, input_per_1m=D(1), output_per_1m=D(1))
        for model, day in [
            ("a", date(2026, 1, 1)),  # before the window: in force throughout
            ("a", date(2026, 9, 1)),  # on the window's first day: already a period start
            ("b", date(2026, 10, 15)),
            ("a", date(2026, 11, 26)),  # NOW's day: from its first instant
            ("b", date(2026, 11, 27)),  # after NOW
        ]
    )
    assert book.effective_dates()[0] == date(2026, 1, 1)
    assert period_starts(NOW, 3, book) == [
        datetime(2026, 9, 1, tzinfo=UTC),
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 10, 15, tzinfo=UTC),
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 26, tzinfo=UTC),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("months", [1, 3, 6])
def test_reconciliation_gives_the_figures_of_pricing_each_day_on_its_own(varied_world, months):
    expected = per_day_reference(NOW, months)
    rows = reconcile(NOW, months=months)
    assert as_tuples(rows) == expected
    assert all(isinstance(r.estimated, Decimal) and isinstance(r.billed, Decimal) for r in rows)
    # The world has what it claims: several months and organizations, unregistered and
    # unpriced, billed without usage (nothing estimated) and usage without a cost.
    if months == 3:
        assert {r[0] for r in expected} == {date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)}
        assert {r[1] for r in expected} == {"Acme", "Beta", "Gamma"}
        assert any(r[3] is None and r[2].endswith("(unregistered)") for r in expected)
        assert ("(no project)" in {r[2] for r in expected}) and any(r[6] for r in expected)
        assert any(r[4] == 0 and r[5] for r in expected) and any(r[4] and r[5] == 0 for r in expected)
        october = {r[2]: r for r in expected if r[0] == date(2026, 10, 1) and r[1] == "Acme"}
        assert october["Chatbot"][6] == ["(no model)", "gpt-late", "mystery"]


@pytest.mark.django_db
def test_reconciliation_of_one_organization_gives_the_per_day_figures(varied_world):
    for organization in (varied_world["beta"], varied_world["gamma"]):
        assert as_tuples(reconcile(NOW, months=3, organization=organization)) == per_day_reference(NOW, 3, organization)


@pytest.mark.django_db
def test_the_clamp_of_cached_tokens_is_per_day_not_per_row_nor_per_month(varied_world):
    # proj_Edge0000001 in October, gpt-step: 3rd (before the change, 4 = 1 + 0.25 rates)
    # 5100 in, 900 cached: nothing clamped; 14th two groups, each 900 cached for 100 in:
    # clamped to 100 cached (and the midnight group's second row: 200 in, 950 cached → 200);
    # 16th (after the change, cached at the input rate) 10 in, 70 cached → 10; 17th 700 / 70.
    old = D(1) / 1_000_000, D("0.25") / 1_000_000, D(4) / 1_000_000
    new = D(3) / 1_000_000, D(3) / 1_000_000, D(6) / 1_000_000

    def cost(rates, uncached, cached, output):
        return uncached * rates[0] + cached * rates[1] + output * rates[2]

    expected = (
        cost(old, 5100 - 900, 900, 20)
        + cost(old, 0, 200, 20)  # the 14th at midnight: 200 in, 950 cached
        + cost(old, 0, 100, 10)  # the 14th at 23:30: 100 in, 900 cached
        + cost(new, 0, 10, 0)
        + cost(new, 700 - 70, 70, 0)
    )
    [row] = [
        r
        for r in reconcile(NOW, months=3)
        if r.month == date(2026, 10, 1) and r.upstream_project_id == "proj_Edge0000001"
    ]
    assert row.estimated == expected


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["admin_client", "reviewer_client", "superuser_client"])
def test_the_reconciliation_page_shows_the_rows_to_admins_and_reviewers(request, ledger, who, monkeypatch):
    import usage.price_admin

    monkeypatch.setattr(usage.price_admin, "current_time", lambda: NOW)
    client = request.getfixturevalue(who)
    before = AuditEvent.objects.count()
    response = client.get(reverse("admin:usage_reconciliation"), {"months": "3"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "proj_Unregistered01 (unregistered)" in html and "9.99" in html and "-9.99" in html
    assert len(response.context["rows"]) == 4
    response = client.get(reverse("admin:usage_reconciliation"), {"months": "3", "organization": ledger.pk})
    assert [r.organization for r in response.context["rows"]] == [ledger]
    assert AuditEvent.objects.count() == before
