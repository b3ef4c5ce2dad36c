"""The key list, the key page and the circuit list as people read them (issue 11 §2):
six combined columns, filters for every derived state that return exactly the right
keys, a constant query count, "Probe now" on the key page (queued, audited, refused to
reviewers) with a JSON status the page polls, probe history, "stored (hint)" for
read-only views, and circuits that can only be closed."""

import json
import logging
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Environment, Project, ProjectRateLimit, Tier
from console.upstream import Outcome
from keys import circuit as breaker
from keys import formats, probe, sweep, tasks
from keys.models import ApiKey, Circuit, CircuitState, Kind, ProbeResult, Provider
from usage.models import CostBucket

KEYS = reverse("admin:keys_apikey_changelist")
ADD_KEY = reverse("admin:keys_apikey_add")
# The key list's query count, pinned: session, user, permissions, the count, the page's
# rows (keys with organization and project), the organization filter's choices… It must
# not grow with the rows; a change here is a change of the page, to be looked at.
KEY_LIST_QUERIES = 12


def change_url(key):
    return reverse("admin:keys_apikey_change", args=[key.pk])


def probe_now_url(key):
    return reverse("admin:keys_apikey_probe_now", args=[key.pk])


def status_url(key):
    return reverse("admin:keys_apikey_probe_status", args=[key.pk])


def names(client, params=None):
    response = client.get(KEYS, params or {})
    assert response.status_code == 200
    return sorted(k.name for k in response.context["cl"].result_list)


@pytest.fixture
def reviewer_alone(reviewer):
    """A reviewer's own client, for tests that also use admin_client (they share `client`)."""
    from django.test import Client

    client = Client()
    client.force_login(reviewer)
    return client


@pytest.fixture
def sent(monkeypatch):
    """Probe batches queued to the broker: recorded here instead (a real worker is
    tests/test_sweep_worker.py's business)."""
    batches = []
    monkeypatch.setattr(tasks.probe_batch, "delay", lambda claims: batches.append(claims))
    return batches


def run_sent(batches):
    """Run the queued batches in-process, as a worker would."""
    for claims in batches:
        probe.run_batch([sweep.Claim.parse(c) for c in claims])
    batches.clear()


# --- the list ------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_list_has_six_combined_columns_with_the_health_in_them(admin_client, make_key):
    now = timezone.now()
    key, _ = make_key(
        name="web",
        last_probe_outcome=Outcome.INVALID_KEY,
        last_probe_at=now - timedelta(minutes=3),
        consecutive_failures=4,
    )
    response = admin_client.get(KEYS)
    headers = [h["text"] for h in response.context["result_headers"]][1:]  # after the action checkbox
    assert headers == ["key", "organization / project", "state", "last probe", "issued / rotated", "expires"]
    row = response.content.decode()
    assert key.hint in row and "Project key" in row  # the hint and kind under the name
    assert "Chatbot" in row and "Acme" in row
    assert '<span class="state failing">Invalid key</span>' in row
    assert f"{key.last_probe_at:%Y-%m-%d %H:%M:%S} UTC" in row  # seconds and the time zone
    assert "4 failed in a row" in row
    assert '<span class="state ok">Compliant</span>' in row


@pytest.mark.django_db
def test_expired_keys_show_as_expired_and_revoked_keys_never_as_failing(admin_client, make_key):
    now = timezone.now()
    make_key(name="expired", issued_at=now - timedelta(days=10), expires_at=now - timedelta(days=1))
    make_key(name="revoked", revoked_at=now, last_probe_outcome=Outcome.INVALID_KEY, last_probe_at=now)
    html = admin_client.get(KEYS).content.decode()
    assert html.count('<span class="state failing">Expired</span>') == 2  # state and expiry
    assert '<span class="state muted">Not probed</span>' in html
    assert "Invalid key" not in html
    assert names(admin_client, {"status": "active"}) == []
    assert names(admin_client, {"status": "expired"}) == ["expired"]
    assert names(admin_client, {"status": "revoked"}) == ["revoked"]
    assert names(admin_client, {"status": "not_revoked"}) == ["expired"]
    assert names(admin_client, {"probe": "failing"}) == []


@pytest.mark.django_db
def test_issued_or_rotated_sorts_by_the_date_it_shows(admin_client, make_key):
    now = timezone.now()
    make_key(name="rotated yesterday", issued_at=now - timedelta(days=10), rotated_at=now - timedelta(days=1))
    make_key(name="issued 5 days ago", issued_at=now - timedelta(days=5))
    make_key(name="issued 20 days ago", issued_at=now - timedelta(days=20))
    column = 5  # "issued / rotated", counted from 1 as the admin's ?o= does
    response = admin_client.get(KEYS, {"o": str(column)})
    assert [k.name for k in response.context["cl"].result_list] == [
        "issued 20 days ago",
        "issued 5 days ago",
        "rotated yesterday",
    ]
    response = admin_client.get(KEYS, {"o": f"-{column}"})
    assert [k.name for k in response.context["cl"].result_list][0] == "rotated yesterday"


@pytest.fixture
def assorted(make_key, org, project):
    """One key for each derived state a filter selects."""
    now = timezone.now()
    tier1 = Tier.objects.get(name="Tier 1")
    staging = Project.objects.create(
        organization=org, name="Staging", environment=Environment.STAGING, tier=tier1, monthly_budget_usd=10
    )
    mismatched = Project.objects.create(organization=org, name="Mismatched", tier=tier1, observed_rpm=123)
    synced = Project.objects.create(organization=org, name="Synced", tier=tier1, observed_rpm=tier1.requests_per_minute)
    # The synced limit (not the tier's) is what the console expects: 40 ≠ the observed.
    ProjectRateLimit.objects.create(
        project=synced, model="gpt-4o", max_requests_per_1_minute=40, max_tokens_per_1_minute=1
    )
    CostBucket.objects.create(
        organization=org, project=staging, start_time=now, end_time=now + timedelta(days=1), amount=Decimal("25")
    )
    keys = {
        "healthy": make_key(name="healthy", last_probe_outcome=Outcome.OK, last_used_at=now, owner="ana"),
        "overdue": make_key(name="overdue", issued_at=now - timedelta(days=200), last_probe_outcome=Outcome.OK),
        "due soon": make_key(name="due soon", issued_at=now - timedelta(days=85), last_probe_outcome=Outcome.OK),
        "failing": make_key(name="failing", last_probe_outcome=Outcome.QUOTA_EXHAUSTED, consecutive_failures=5),
        "leaked": make_key(name="leaked", leaked_at=now, upstream_key_id="key_Leaked000001"),
        "staging": make_key(name="staging", project=staging),
        "mismatched": make_key(name="mismatched", project=mismatched),
        "synced": make_key(name="synced", project=synced),
        "svc": make_key(fmt=formats.SERVICE_ACCOUNT, name="svc", kind=Kind.SERVICE_ACCOUNT),
        "azure": make_key(fmt=formats.AZURE, name="azure", provider=Provider.AZURE),
        "admin": make_key(fmt=formats.ADMIN, name="admin", project=None, kind=Kind.ADMIN, organization=org),
    }
    return {name: key for name, (key, _) in keys.items()}


EVERYONE = {
    "healthy", "overdue", "due soon", "failing", "leaked", "staging", "mismatched", "synced", "svc", "azure", "admin",
}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params, expected",
    [
        ({"rotation": "overdue"}, {"overdue"}),
        ({"rotation": "due_soon"}, {"due soon"}),
        ({"rotation": "compliant"}, EVERYONE - {"overdue", "due soon"}),
        ({"flag": "failing"}, {"failing"}),
        ({"flag": "leaked"}, {"leaked"}),
        ({"probe": "failing"}, {"failing"}),
        ({"probe": "ok"}, {"healthy", "overdue", "due soon"}),
        ({"leaked_at__isempty": "0"}, {"leaked"}),
        ({"tier_mismatch": "yes"}, {"mismatched", "synced"}),
        ({"budget_state": "over"}, {"staging"}),
        ({"budget_state": "none"}, EVERYONE - {"staging", "admin"}),
        ({"provider__exact": "azure"}, {"azure"}),
        ({"kind__exact": "service_account"}, {"svc"}),
        ({"kind__exact": "admin"}, {"admin"}),
        ({"project__environment__exact": "staging"}, {"staging"}),
        ({"q": "ana"}, {"healthy"}),  # owner
        ({"q": "key_Leaked000001"}, {"leaked"}),  # upstream id
        ({"q": "Mismatched"}, {"mismatched"}),  # project name
    ],
)
def test_each_filter_returns_exactly_the_right_keys(admin_client, assorted, params, expected):
    assert set(names(admin_client, params)) == expected


@pytest.mark.django_db
def test_search_by_hint_finds_the_key(admin_client, assorted):
    assert names(admin_client, {"q": assorted["svc"].hint}) == ["svc"]


@pytest.mark.django_db
def test_the_list_takes_a_constant_number_of_queries(admin_client, make_key, org):
    def count():
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(KEYS).status_code == 200
        return len(ctx.captured_queries)

    tier = Tier.objects.get(name="Tier 2")
    now = timezone.now()

    def add(n):
        for _ in range(n):
            p = Project.objects.create(organization=org, name=f"P{Project.objects.count()}", tier=tier)
            make_key(project=p, last_probe_outcome=Outcome.OK, last_probe_at=now, expires_at=now + timedelta(days=9))

    add(2)
    few = count()
    add(25)
    assert count() == few == KEY_LIST_QUERIES


# --- the key page --------------------------------------------------------------------
@pytest.mark.django_db
def test_probe_now_queues_the_probe_audits_it_and_the_page_polls(admin_client, admin_user, make_key, sent):
    key, secret = make_key()
    page = admin_client.get(change_url(key)).content.decode()
    assert f'action="{probe_now_url(key)}"' in page and "keys/key_page.js" in page
    assert 'data-waiting="0"' in page

    response = admin_client.post(probe_now_url(key))
    assert response.status_code == 302 and response.url == change_url(key)
    assert [claim[0] for batch in sent for claim in batch] == [str(key.pk)]  # queued, once
    (event,) = AuditEvent.objects.filter(action="key.probe_requested")
    assert (event.actor, event.target_id, event.details["queued"]) == (admin_user, str(key.pk), True)
    assert event.details["hint"] == key.hint

    page = admin_client.get(change_url(key)).content.decode()
    assert "Probe queued: its outcome appears below when it arrives." in page
    assert 'data-waiting="1"' in page and f'data-url="{status_url(key)}"' in page
    # Once: a later visit does not poll again.
    assert 'data-waiting="0"' in admin_client.get(change_url(key)).content.decode()
    assert secret not in page


def data_since(page):
    return re.search(r'id="probe-status"[^>]*data-since="([^"]*)"', page).group(1)


@pytest.mark.django_db
def test_a_probe_done_before_the_page_is_shown_still_ends_its_wait(
    admin_client, make_key, sandbox, settings, sent, django_capture_on_commit_callbacks
):
    """A worker can answer before the browser follows the redirect. The page then waits
    for a probe newer than the one before it was queued, not newer than the one it shows:
    that one is already there and nothing newer would ever come."""
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    earlier = timezone.now() - timedelta(hours=1)
    key, secret = make_key(last_probe_at=earlier, last_probe_outcome=Outcome.OK)
    sandbox.register(secret, fault="revoked", project=key.project.openai_project_id)

    admin_client.post(probe_now_url(key))
    run_sent(sent)  # the worker was quicker than the redirect
    page = admin_client.get(change_url(key)).content.decode()
    assert 'data-waiting="1"' in page
    assert data_since(page) == earlier.isoformat()
    assert admin_client.get(status_url(key)).json()["last_probe_at"] != data_since(page)

    # A new key: nothing was probed before it was queued.
    from tests.test_admin import key_data

    other = formats.generate(formats.PROJECT)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(ADD_KEY, key_data(other, project=key.project.pk, name="new key"))
    added = ApiKey.objects.get(name="new key")
    run_sent(sent)
    assert ApiKey.objects.get(pk=added.pk).last_probe_at is not None
    page = admin_client.get(response.url).content.decode()
    assert 'data-waiting="1"' in page and data_since(page) == ""


@pytest.mark.django_db
def test_probe_now_is_post_only(admin_client, make_key, sent):
    key, _ = make_key()
    assert admin_client.get(probe_now_url(key)).status_code == 405
    assert sent == [] and not AuditEvent.objects.filter(action="key.probe_requested").exists()


@pytest.mark.django_db
def test_a_reviewer_cannot_probe_now_and_sees_no_button(reviewer_client, make_key, sent):
    key, _ = make_key()
    before = ApiKey.objects.values("next_probe_at").get(pk=key.pk)
    page = reviewer_client.get(change_url(key)).content.decode()
    assert probe_now_url(key) not in page
    assert reviewer_client.post(probe_now_url(key)).status_code == 403
    assert sent == []
    assert ApiKey.objects.values("next_probe_at").get(pk=key.pk) == before
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["access.denied"]


@pytest.mark.django_db
def test_a_revoked_key_has_no_probe_now(admin_client, make_key, sent):
    key, _ = make_key(revoked_at=timezone.now())
    assert probe_now_url(key) not in admin_client.get(change_url(key)).content.decode()
    admin_client.post(probe_now_url(key))
    assert sent == []


@pytest.mark.django_db
def test_the_status_endpoint_shows_the_outcome_once_the_probe_ran_and_no_secret(
    admin_client, reviewer_alone, make_key, sandbox, settings, sent
):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    key, secret = make_key()
    sandbox.register(secret, fault="revoked", project=key.project.openai_project_id)
    before = admin_client.get(status_url(key)).json()
    assert (before["last_probe_at"], before["outcome"], before["outcome_label"]) == (None, "", "Never")

    admin_client.post(probe_now_url(key))
    run_sent(sent)  # the worker's part, in-process against the sandbox
    assert sandbox.stats()["total"] == 1

    for client in (admin_client, reviewer_alone):  # view permission is enough
        response = client.get(status_url(key))
        assert response.status_code == 200 and "no-store" in response["Cache-Control"]  # admin_view's never_cache
        status = response.json()
        assert (status["outcome"], status["outcome_label"], status["http_status"]) == (
            Outcome.INVALID_KEY,
            "Invalid key",
            401,
        )
        assert status["last_probe_at"] is not None and status["last_probe_at_display"].endswith(" UTC")
        body = response.content.decode()
        assert secret not in body and key.hint not in body and key.fingerprint not in body
        assert set(status) == {
            "last_probe_at",
            "last_probe_at_display",
            "outcome",
            "outcome_label",
            "http_status",
            "consecutive_failures",
            "revoked",
        }


@pytest.mark.django_db
def test_the_status_endpoint_is_for_staff_who_may_view_keys(client, outsider, make_key):
    key, _ = make_key()
    response = client.get(status_url(key))
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    client.force_login(outsider)
    assert client.get(status_url(key)).status_code == 302


@pytest.mark.django_db
def test_the_key_page_shows_probe_history_with_human_labels(admin_client, make_key):
    key, _ = make_key()
    now = timezone.now()
    for i in range(25):
        ProbeResult.objects.create(
            key=key,
            slot=i,
            started_at=now - timedelta(minutes=i),
            outcome=Outcome.RATE_LIMITED if i == 0 else Outcome.OK,
            http_status=429 if i == 0 else 200,
            request_id=f"req_history_{i:02d}",
            ratelimit_limit_requests=500,
            ratelimit_remaining_requests=499,
            ratelimit_reset_requests="120ms",
            secret_hint="sk-proj-…Old1",
        )
    page = admin_client.get(change_url(key)).content.decode()
    history = page[page.index('id="probe-history"') :]
    history = history[: history.index("</table>")]
    for label in ("HTTP status", "Request id", "Rate limit: requests", "Rate limit: tokens", "Secret probed"):
        assert label in history
    assert history.count("<tr>") == 21  # the header and the last 20
    assert "req_history_00" in history and "req_history_19" in history and "req_history_20" not in history
    assert "Rate limited (alive)" in history and "429" in history
    assert "499 of 500 left, resets in 120ms" in history
    assert "sk-proj-…Old1" in history
    assert f"{now:%Y-%m-%d %H:%M:%S} UTC" in history


@pytest.mark.django_db
def test_read_only_views_say_the_secret_is_stored_with_its_hint(reviewer_alone, admin_client, make_key):
    key, secret = make_key()
    page = reviewer_alone.get(change_url(key)).content.decode()
    assert f"stored ({key.hint})" in page
    assert 'name="secret"' not in page and secret not in page
    # Those who may change the key get the write-only field instead.
    page = admin_client.get(change_url(key)).content.decode()
    assert 'name="secret"' in page and f"stored ({key.hint})" not in page


@pytest.mark.django_db
def test_the_add_page_fits_adding_and_saving_shows_the_key_page_polling(
    admin_client, project, sent, django_capture_on_commit_callbacks
):
    page = admin_client.get(ADD_KEY).content.decode()
    assert "Leave blank to keep the current secret" not in page
    assert "Its first probe is queued when you save." in page
    assert "keys/key_page.js" in page
    for field in ("last_probe", "probe_history", "key_history", "rotation_state_display"):
        assert f"field-{field}" not in page  # nothing of a key's life before it exists
    secret = formats.generate(formats.PROJECT)
    from tests.test_admin import key_data

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(ADD_KEY, key_data(secret, project=project.pk))
    key = ApiKey.objects.get()
    assert response.status_code == 302 and response.url == change_url(key)
    assert [claim[0] for batch in sent for claim in batch] == [str(key.pk)]
    page = admin_client.get(response.url).content.decode()
    assert 'data-waiting="1"' in page and secret not in page


# --- circuits --------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin_client", "reviewer_client"])
def test_a_circuit_cannot_be_added_edited_or_deleted(request, role):
    client = request.getfixturevalue(role)
    circuit = Circuit.objects.create(host="api.openai.com", state=CircuitState.OPEN, consecutive_failures=5)
    assert client.get(reverse("admin:keys_circuit_add")).status_code == 403
    page = client.get(reverse("admin:keys_circuit_change", args=[circuit.pk]))
    assert page.status_code == 200
    assert 'name="state"' not in page.content.decode() and 'name="_save"' not in page.content.decode()
    assert client.post(reverse("admin:keys_circuit_change", args=[circuit.pk]), {"state": "closed"}).status_code == 403
    assert client.post(reverse("admin:keys_circuit_delete", args=[circuit.pk]), {"post": "yes"}).status_code == 403
    circuit.refresh_from_db()
    assert (circuit.state, circuit.consecutive_failures) == (CircuitState.OPEN, 5)
    listing = client.get(reverse("admin:keys_circuit_changelist")).content.decode()
    assert "delete_selected" not in listing


@pytest.mark.django_db
def test_close_circuit_is_the_one_action_audited_and_logged(admin_client, reviewer_alone, admin_user, caplog):
    circuit = Circuit.objects.create(
        host="api.openai.com",
        state=CircuitState.OPEN,
        consecutive_failures=5,
        open_until=timezone.now() + timedelta(minutes=1),
        last_outcome=Outcome.SERVER_ERROR,
    )
    listing = admin_client.get(reverse("admin:keys_circuit_changelist"))
    assert list(listing.context["action_form"].fields["action"].choices)[1:] == [("close_selected", "Close circuit")]
    assert "Server error" in listing.content.decode()  # the outcome's name, not its code
    data = {"action": "close_selected", "_selected_action": [circuit.pk], "index": "0"}
    assert reviewer_alone.post(reverse("admin:keys_circuit_changelist"), data).status_code == 403
    circuit.refresh_from_db()
    assert circuit.state == CircuitState.OPEN
    with caplog.at_level(logging.WARNING, logger="keys.admin"):
        admin_client.post(reverse("admin:keys_circuit_changelist"), data)
    circuit.refresh_from_db()
    assert circuit.state == CircuitState.CLOSED
    (event,) = AuditEvent.objects.filter(action="circuit.closed")
    assert (event.actor, event.details["host"], event.details["was"]) == (admin_user, "api.openai.com", "open")
    assert [r.levelno for r in caplog.records if "api.openai.com" in r.getMessage()] == [logging.WARNING]


@pytest.mark.django_db
def test_the_breaker_logs_opening_and_closing_at_warning_with_the_host(settings, caplog):
    settings.CIRCUIT_FAILURE_THRESHOLD = 2
    settings.CIRCUIT_COOLDOWN_SECONDS = 60
    now = timezone.now()
    with caplog.at_level(logging.WARNING, logger="keys.circuit"):
        breakers = breaker.Breakers.load(["api.example.test"], now)
        breakers["api.example.test"].record(Outcome.SERVER_ERROR, now)
        breakers["api.example.test"].record(Outcome.TIMEOUT, now)
        breakers.save(now)
    assert Circuit.objects.get().state == CircuitState.OPEN
    (opened,) = caplog.records
    assert opened.levelno == logging.WARNING
    assert "circuit for api.example.test opened" in opened.getMessage() and "Timeout" in opened.getMessage()
    caplog.clear()
    later = now + timedelta(seconds=61)
    with caplog.at_level(logging.WARNING, logger="keys.circuit"):
        breakers = breaker.Breakers.load(["api.example.test"], later)
        assert breakers["api.example.test"].allow()  # the half-open trial
        breakers["api.example.test"].record(Outcome.OK, later)
        breakers.save(later)
    assert Circuit.objects.get().state == CircuitState.CLOSED
    (closed,) = caplog.records
    assert closed.levelno == logging.WARNING and "circuit for api.example.test closed" in closed.getMessage()


def test_the_status_json_is_what_the_page_script_reads():
    # key_page.js reads these names; keep them in step.
    script = open("keys/static/keys/key_page.js").read()
    for name in ("last_probe_at", "last_probe_at_display", "outcome_label", "http_status"):
        assert f"status.{name}" in script
    assert json.dumps  # noqa: B018 (json is used by the browser test's twin)


@pytest.mark.django_db
def test_probe_results_read_with_human_labels(reviewer_client, make_key):
    key, _ = make_key()
    result = ProbeResult.objects.create(
        key=key,
        slot=1_764_115_200,
        outcome=Outcome.QUOTA_EXHAUSTED,
        http_status=429,
        request_id="req_labels_1",
        ratelimit_limit_requests=500,
        ratelimit_remaining_requests=12,
        ratelimit_reset_requests="3s",
        openai_organization="org-labels",
        secret_hint="sk-proj-…Lab1",
    )
    listing = reviewer_client.get(reverse("admin:keys_proberesult_changelist"))
    headers = [h["text"] for h in listing.context["result_headers"]]
    assert {"HTTP status", "request id", "Rate limit: requests", "secret probed"} <= set(headers)
    html = listing.content.decode()
    assert "Quota exhausted" in html and "12 of 500 left, resets in 3s" in html
    assert f"{result.started_at:%Y-%m-%d %H:%M:%S} UTC" in html
    page = reviewer_client.get(reverse("admin:keys_proberesult_change", args=[result.pk])).content.decode()
    assert "OpenAI organization" in page and "org-labels" in page and "Rate limit: tokens" in page
    assert "2025-11-26 00:00:00 UTC" in page  # the slot, as a date and time


# --- Probe now on selected keys: live progress ----------------------------------------------
@pytest.mark.django_db
def test_probing_selected_keys_shows_live_progress_until_done(
    admin_client, reviewer_alone, make_key, sandbox, settings, sent
):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    healthy, healthy_secret = make_key(name="healthy")
    revoked_upstream, revoked_secret = make_key(name="revoked upstream")
    sandbox.register(healthy_secret, fault="healthy", project=healthy.project.openai_project_id)
    sandbox.register(revoked_secret, fault="revoked", project=healthy.project.openai_project_id)
    response = admin_client.post(
        KEYS, {"action": "probe_selected", "_selected_action": [healthy.pk, revoked_upstream.pk], "index": "0"}
    )
    assert response.status_code == 302 and "/probe-runs/" in response.url
    page = admin_client.get(response.url)
    html = page.content.decode()
    assert "Queued a probe for 2 key(s)" in html and "0 of 2 probed" in html and "keys/key_page.js" in html
    status_url = page.context["status_url"]
    assert admin_client.get(status_url).json() == {"total": 2, "probed": 0, "finished": False, "outcomes": []}

    run_sent(sent)
    progress = admin_client.get(status_url).json()
    assert (progress["total"], progress["probed"], progress["finished"]) == (2, 2, True)
    assert sorted(progress["outcomes"]) == [["Invalid key", 1], ["OK", 1]]
    assert healthy_secret not in json.dumps(progress) and healthy.hint not in json.dumps(progress)
    # A run lives in its requester's session: nobody else can read it.
    assert reviewer_alone.get(status_url).status_code == 404


@pytest.mark.django_db
def test_nothing_queued_stays_on_the_list_without_a_progress_page(admin_client, make_key, monkeypatch):
    def broker_down(*args, **kwargs):
        raise ConnectionError("down")

    monkeypatch.setattr(tasks.probe_batch, "delay", broker_down)
    key, _ = make_key()
    response = admin_client.post(KEYS, {"action": "probe_selected", "_selected_action": [key.pk], "index": "0"})
    assert response.status_code == 302 and "/probe-runs/" not in response.url


@pytest.mark.django_db
def test_the_audit_log_reads_actions_as_phrases_and_keeps_the_codes(reviewer_client, admin_user, make_key):
    from accounts.audit_phrases import phrase

    key, _ = make_key()
    AuditEvent.record(admin_user, "key.probe_requested", key, hint=key.hint, queued=True)
    AuditEvent.record(admin_user, "key.updated", key, changes={"owner": {"old": "", "new": "ml"}})
    AuditEvent.record(admin_user, "circuit.closed", None, host="api.openai.com", was="open")
    html = reviewer_client.get(reverse("admin:accounts_auditevent_changelist")).content.decode()
    for text in ("Asked for a probe (Probe now)", "Changed a key", "Closed a circuit", "owner: (empty) → ml"):
        assert text in html
    assert "key.probe_requested" in html  # the code, as the filter and the CSV name it
    assert phrase("tier.created") == "Created a tier" and phrase("x.y_z") == "X: y z"
