"""Budget alerts (usage/alerts.py) raised once per scope, threshold and month — also
when two processes evaluate at once on PostgreSQL — and their delivery from the outbox
(accounts/notifications.py): email through Django's outbox, the webhook against a local
HTTP receiver, retries with backoff, giving up, refused webhook URLs."""

import json
import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.management import call_command

from accounts import notifications
from accounts.models import Notification, Organization, Project
from accounts.tasks import deliver_notifications
from usage import alerts, tasks
from usage.models import AlertKind, BudgetAlert, CostBucket, Endpoint, UsageBucket

from .workers import ROOT, worker_env

D = Decimal
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)  # 25.5 of 30 days elapsed
EARLY = datetime(2026, 11, 5, tzinfo=UTC)  # 4 days elapsed


def cost(org, amount, start=datetime(2026, 11, 3, tzinfo=UTC), project=None):
    CostBucket.objects.create(
        organization=org,
        project=project,
        upstream_project_id=project.openai_project_id if project else "",
        start_time=start,
        end_time=start + timedelta(days=1),
        line_item=f"completions {CostBucket.objects.count()}",
        amount=D(amount),
    )


@pytest.fixture
def budgeted(org):
    org.monthly_budget_usd = D("100")
    org.alert_emails = "ops@example.com, cfo@example.com"
    org.save()
    return org


def alerts_of(org, project=None):
    return sorted(
        (a.kind, a.threshold, f"{a.month:%Y-%m}") for a in BudgetAlert.objects.filter(organization=org, project=project)
    )


# --- Raising alerts ---------------------------------------------------------------------


@pytest.mark.django_db
def test_each_crossed_threshold_raises_one_alert_with_its_notification(budgeted):
    cost(budgeted, "55")
    summary = alerts.evaluate(NOW)
    assert alerts_of(budgeted) == [("threshold", 50, "2026-11")]
    alert = summary.raised[0]
    assert alert.spend_usd == D("55.00") and alert.budget_usd == D("100") and not alert.estimated
    n = alert.notification
    assert n.dedupe_key == f"budget:org:{budgeted.pk}:threshold:50:2026-11"
    assert n.email_to == "ops@example.com, cfo@example.com"
    assert n.subject == "[Budget] Organization Acme: 50% of its November 2026 budget reached"
    assert "Spent so far: $55.00 of $100.00 (55.0%), all billed." in n.text
    # 55 / 25.5 days × 30
    assert "Forecast for the month at the current daily rate: $64.71." in n.text

    # Evaluating again raises nothing new; crossing 80 raises only 80.
    assert alerts.evaluate(NOW).raised == []
    cost(budgeted, "30")
    assert [(a.kind, a.threshold) for a in alerts.evaluate(NOW).raised] == [("threshold", 80)]
    assert alerts_of(budgeted) == [("threshold", 50, "2026-11"), ("threshold", 80, "2026-11")]
    assert Notification.objects.count() == 2


@pytest.mark.django_db
def test_a_jump_past_several_thresholds_raises_each_once(budgeted):
    cost(budgeted, "130")
    alerts.evaluate(NOW)
    alerts.evaluate(NOW)
    assert alerts_of(budgeted) == [(AlertKind.THRESHOLD, t, "2026-11") for t in (50, 80, 100)]
    assert Notification.objects.count() == 3
    # Over budget: no forecast alert on top of the 100 % one.
    assert not BudgetAlert.objects.filter(kind=AlertKind.FORECAST).exists()


@pytest.mark.django_db
def test_forecast_to_exceed_raises_one_forecast_alert_per_month(budgeted):
    # $20 after 4 days of 30: heading for $150.
    cost(budgeted, "20", start=datetime(2026, 11, 2, tzinfo=UTC))
    alerts.evaluate(EARLY)
    alerts.evaluate(EARLY + timedelta(hours=1))
    assert alerts_of(budgeted) == [("forecast", 100, "2026-11")]
    n = BudgetAlert.objects.get().notification
    assert n.subject == "[Budget] Organization Acme: forecast to exceed its November 2026 budget"
    assert "forecast to spend $150.00 in November 2026, over its budget of $100.00" in n.text


@pytest.mark.django_db
def test_a_new_month_alerts_again(budgeted):
    cost(budgeted, "60", start=datetime(2026, 10, 20, tzinfo=UTC))
    alerts.evaluate(datetime(2026, 10, 31, 23, tzinfo=UTC))
    cost(budgeted, "60", start=datetime(2026, 11, 20, tzinfo=UTC))
    alerts.evaluate(NOW)
    assert alerts_of(budgeted) == [("threshold", 50, "2026-10"), ("threshold", 50, "2026-11")]


@pytest.mark.django_db
def test_projects_are_their_own_scope_with_the_organizations_thresholds(org, project):
    org.alert_thresholds = "90"
    org.save()
    project.monthly_budget_usd = D("10")
    project.save()
    archived = Project.objects.create(
        organization=org, name="Old", openai_project_id="proj_Old000000001", monthly_budget_usd=D("1"), archived_at=NOW
    )
    unbudgeted = Project.objects.create(organization=org, name="Free", openai_project_id="proj_Free00000001")
    cost(org, "9.50", project=project)
    cost(org, "5", project=archived)
    cost(org, "500", project=unbudgeted)
    summary = alerts.evaluate(datetime(2026, 11, 30, 23, tzinfo=UTC))  # on course: no forecast alert
    assert summary.scopes == 1  # the organization has no budget; only Chatbot has one
    assert alerts_of(org, project) == [("threshold", 90, "2026-11")]
    assert BudgetAlert.objects.count() == 1
    n = BudgetAlert.objects.get().notification
    assert n.dedupe_key == f"budget:project:{project.pk}:threshold:90:2026-11"
    assert n.subject.startswith("[Budget] Project Chatbot (organization Acme): 90%")


@pytest.mark.django_db
def test_estimated_spend_counts_and_is_labelled_estimated(budgeted, project):
    cost(budgeted, "40", project=project)
    # Today has no cost row: 10M gpt-4.1 input tokens = $20 estimated.
    UsageBucket.objects.create(
        organization=budgeted,
        project=project,
        endpoint=Endpoint.COMPLETIONS,
        start_time=datetime(2026, 11, 26, tzinfo=UTC),
        end_time=datetime(2026, 11, 27, tzinfo=UTC),
        upstream_project_id=project.openai_project_id,
        upstream_key_id="key_Est000000001",
        model="gpt-4.1-2025-04-14",
        input_tokens=10_000_000,
        output_tokens=0,
    )
    alert = alerts.evaluate(NOW).raised[0]
    assert (alert.threshold, alert.spend_usd, alert.estimated) == (50, D("60.00"), True)
    assert "$40.00 billed and $20.00 estimated from usage (days 2026-11-26)" in alert.notification.text


@pytest.mark.django_db
def test_the_task_and_the_command_evaluate(budgeted):
    # The task and the command use the real clock: spend over budget raises the same
    # alerts on any day of the month.
    cost(budgeted, "120", start=datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    tasks.evaluate_budgets()
    assert sorted(BudgetAlert.objects.values_list("kind", "threshold")) == [("threshold", t) for t in (50, 80, 100)]
    budgeted.alert_thresholds = "50,80,100,110"
    budgeted.save()
    out = StringIO()
    call_command("evaluate_budgets", "--deliver", stdout=out)
    assert "raised: [Budget] Organization Acme: 110% of its" in out.getvalue()
    assert "1 budgeted scope(s) evaluated, 1 alert(s) raised." in out.getvalue()
    assert "notifications: 4 delivered, 0 to retry, 0 given up." in out.getvalue()
    assert len(mail.outbox) == 4


# --- Delivery: email --------------------------------------------------------------------


@pytest.mark.django_db
def test_email_goes_through_djangos_outbox_once(budgeted, settings):
    cost(budgeted, "55")
    alerts.evaluate(NOW)
    assert notifications.deliver_due(NOW).delivered == 1
    assert notifications.deliver_due(NOW + timedelta(hours=1)).delivered == 0
    deliver_notifications()  # the beat task: nothing left
    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["ops@example.com", "cfo@example.com"]
    assert email.from_email == settings.DEFAULT_FROM_EMAIL
    assert email.subject.endswith("50% of its November 2026 budget reached")
    n = Notification.objects.get()
    assert n.email_sent_at is not None and n.attempts == 1 and n.next_attempt_at is None and n.gave_up_at is None


@pytest.mark.django_db
def test_a_failing_mail_server_is_retried_with_backoff(budgeted, settings, monkeypatch):
    settings.NOTIFICATION_BACKOFF_SECONDS = 60
    cost(budgeted, "55")
    alerts.evaluate(NOW)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(notifications, "send_mail", broken)
    assert notifications.deliver_due(NOW).retrying == 1
    n = Notification.objects.get()
    assert n.attempts == 1 and n.email_sent_at is None
    assert n.last_error == "email failed: ConnectionRefusedError: [Errno 111] Connection refused"
    assert n.next_attempt_at == NOW + timedelta(seconds=60)
    # Not due before its backoff ends; then 120 s after the second failure.
    assert notifications.deliver_due(NOW + timedelta(seconds=59)).retrying == 0
    notifications.deliver_due(NOW + timedelta(seconds=60))
    n.refresh_from_db()
    assert n.attempts == 2 and n.next_attempt_at == NOW + timedelta(seconds=180)
    assert len(calls) == 2
    monkeypatch.undo()
    assert notifications.deliver_due(NOW + timedelta(seconds=180)).delivered == 1
    assert len(mail.outbox) == 1


# --- Delivery: the webhook --------------------------------------------------------------


class Receiver:
    """A local HTTP receiver on 127.0.0.1 that answers `statuses` in turn (then 200) and
    records every request it gets."""

    def __init__(self, statuses=(), delay=0.0):
        self.statuses = list(statuses)
        self.delay = delay
        self.requests = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append({"path": self.path, "body": body, "status": status})
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook?token=hook-token-123"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self):
        return [r for r in self.requests if 200 <= r["status"] < 300]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    made = []

    def make(statuses=(), delay=0.0):
        r = Receiver(statuses, delay)
        settings.CONSOLE_ALLOWED_WEBHOOK_HOSTS = [f"127.0.0.1:{r.port}"]
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def with_webhook(org, url):
    org.alert_webhook_url = url
    org.full_clean()  # the URL passes the model's own webhook validator
    org.save()


@pytest.mark.django_db
def test_a_webhook_that_fails_twice_then_succeeds_gets_exactly_one_delivery(budgeted, receiver, settings):
    settings.NOTIFICATION_BACKOFF_SECONDS = 30
    hook = receiver(statuses=[500, 503])
    with_webhook(budgeted, hook.url)
    cost(budgeted, "55")
    alerts.evaluate(NOW)

    assert notifications.deliver_due(NOW).retrying == 1
    n = Notification.objects.get()
    assert n.email_sent_at is not None and n.webhook_sent_at is None
    assert n.last_error == "webhook answered HTTP 500 (127.0.0.1)"
    assert "hook-token-123" not in n.last_error
    assert notifications.deliver_due(NOW + timedelta(seconds=30)).retrying == 1
    n.refresh_from_db()
    assert n.attempts == 2 and n.last_error == "webhook answered HTTP 503 (127.0.0.1)"
    assert n.next_attempt_at == NOW + timedelta(seconds=30 + 60)
    assert notifications.deliver_due(NOW + timedelta(seconds=90)).delivered == 1
    assert notifications.deliver_due(NOW + timedelta(days=2)).delivered == 0

    # At the receiver: three requests, one delivered, each the Slack-compatible body.
    assert [r["status"] for r in hook.requests] == [500, 503, 200]
    assert len(hook.delivered()) == 1
    body = json.loads(hook.delivered()[0]["body"])
    assert set(body) == {"text"} and body["text"] == n.text
    assert hook.delivered()[0]["path"] == "/hook?token=hook-token-123"
    # The email went once, although the notification was attempted three times.
    assert len(mail.outbox) == 1
    n.refresh_from_db()
    assert n.attempts == 3 and n.webhook_sent_at is not None and n.next_attempt_at is None and n.gave_up_at is None


@pytest.mark.django_db
def test_delivery_gives_up_after_max_attempts_and_logs_a_warning(budgeted, receiver, settings, caplog):
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    settings.NOTIFICATION_BACKOFF_SECONDS = 1
    hook = receiver(statuses=[500] * 10)
    with_webhook(budgeted, hook.url)
    cost(budgeted, "55")
    alerts.evaluate(NOW)
    with caplog.at_level(logging.WARNING, logger="accounts.notifications"):
        outcomes = [notifications.deliver_due(NOW + timedelta(hours=h)) for h in range(5)]
    assert [(o.retrying, o.gave_up) for o in outcomes] == [(1, 0), (1, 0), (0, 1), (0, 0), (0, 0)]
    n = Notification.objects.get()
    assert n.gave_up_at == NOW + timedelta(hours=2) and n.next_attempt_at is None and n.attempts == 3
    assert len(hook.requests) == 3 and len(mail.outbox) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Gave up delivering notification" in warnings[0].getMessage()
    assert "hook-token-123" not in caplog.text


@pytest.mark.django_db
def test_a_webhook_that_does_not_answer_in_time_is_a_timeout(budgeted, receiver, settings):
    settings.NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS = 0.3
    hook = receiver(delay=1.0)
    with_webhook(budgeted, hook.url)
    cost(budgeted, "55")
    alerts.evaluate(NOW)
    assert notifications.deliver_due(NOW).retrying == 1
    assert Notification.objects.get().last_error == "webhook timed out after 0.3 s (127.0.0.1)"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/hook",  # private
        "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "https://[fe80::1]/hook",  # link-local IPv6
        "https://127.0.0.1/hook",  # loopback, not listed
        "http://hooks.example.com/services/T000/B000/XXXX",  # plain http to a public host
    ],
)
def test_a_refused_webhook_url_is_never_requested(budgeted, receiver, url):
    hook = receiver()  # listed: 127.0.0.1:<its port> only
    with pytest.raises(ValidationError):
        with_webhook(budgeted, url)
    cost(budgeted, "55")
    alerts.evaluate(NOW)
    # As if the URL had been stored before the allow-list changed: the transport refuses it.
    Notification.objects.update(webhook_url=url)
    assert notifications.deliver_due(NOW).retrying == 1
    n = Notification.objects.get()
    assert n.last_error.startswith("webhook refused:")
    assert "/hook" not in n.last_error and "XXXX" not in n.last_error and "meta-data" not in n.last_error
    assert n.webhook_sent_at is None and n.email_sent_at is not None
    assert hook.requests == []


@pytest.mark.django_db
def test_a_webhook_on_a_listed_loopback_origin_but_another_port_is_refused(budgeted, receiver):
    hook = receiver()
    other = receiver()
    budgeted_url = other.url
    # Only the last receiver's origin is listed now.
    from django.conf import settings as live

    assert live.CONSOLE_ALLOWED_WEBHOOK_HOSTS == [f"127.0.0.1:{other.port}"]
    cost(budgeted, "55")
    with_webhook(budgeted, budgeted_url)
    alerts.evaluate(NOW)
    Notification.objects.update(webhook_url=hook.url)
    notifications.deliver_due(NOW)
    assert hook.requests == [] and other.requests == []
    assert Notification.objects.get().last_error.startswith("webhook refused:")


# --- Two processes at once on PostgreSQL ------------------------------------------------

RACER = """
import os, sys, time
from datetime import datetime
import django; django.setup()
from accounts import notifications
from usage import alerts
go, now = sys.argv[1], datetime.fromisoformat(sys.argv[2])
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
summary = alerts.evaluate(now)
sent = notifications.deliver_due(now)
print(len(summary.raised), sent.delivered)
"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_processes_evaluating_at_once_raise_each_alert_once(tmp_path, receiver):
    hook = receiver()
    org = Organization.objects.create(
        name="Race", slug="race", alert_emails="ops@example.com", alert_webhook_url=hook.url
    )
    scopes = 20
    for i in range(scopes):
        project = Project.objects.create(
            organization=org, name=f"P{i}", openai_project_id=f"proj_Race{i:010d}", monthly_budget_usd=D("10")
        )
        cost(org, "12", project=project)  # over: 50, 80 and 100 % crossed
    expected = scopes * 3

    go = tmp_path / "go"
    mail_dir = tmp_path / "mail"
    env = worker_env(
        EMAIL_URL=f"filemail:///{mail_dir}",
        CONSOLE_ALLOWED_WEBHOOK_HOSTS=f"127.0.0.1:{hook.port}",
        NOTIFICATION_BACKOFF_SECONDS="3600",
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go), NOW.isoformat()],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for r in racers:  # both have set Django up and wait at the barrier
        assert r.stdout.readline().strip() == "ready"
    go.touch()
    results = [r.communicate(timeout=120) for r in racers]
    for r, (_, err) in zip(racers, results, strict=True):
        assert r.returncode == 0, err
    raised = [int(out.split()[0]) for out, _ in results]
    delivered = [int(out.split()[1]) for out, _ in results]

    # Counted where it happens: rows, notifications, emails written and webhook requests.
    assert BudgetAlert.objects.count() == expected
    assert Notification.objects.count() == expected
    assert sum(raised) == expected and sum(delivered) == expected
    emails = [p.read_text() for p in mail_dir.iterdir()]
    assert sum(text.count("\nSubject: ") for text in emails) == expected
    assert len(hook.requests) == expected
    assert len({r["body"] for r in hook.requests}) == expected  # no notification twice
    assert Notification.objects.filter(email_sent_at__isnull=True).count() == 0
    assert Notification.objects.filter(webhook_sent_at__isnull=True).count() == 0


# --- The Budget alerts list -------------------------------------------------------------


@pytest.mark.django_db
def test_the_budget_alerts_list_shows_each_delivery_state_in_constant_queries(
    budgeted, receiver, settings, reviewer_client, django_assert_max_num_queries
):
    from django.urls import reverse

    settings.NOTIFICATION_MAX_ATTEMPTS = 1
    hook = receiver(statuses=[500])
    with_webhook(budgeted, hook.url)
    cost(budgeted, "55")
    alerts.evaluate(NOW)
    notifications.deliver_due(NOW)  # 50 %: one attempt, webhook 500, given up
    cost(budgeted, "30")
    alerts.evaluate(NOW)  # 80 %: pending
    url = reverse("admin:usage_budgetalert_changelist")
    html = reviewer_client.get(url).content.decode()
    assert "Gave up after 1" in html and "Pending (0 attempts)" in html
    assert "webhook answered HTTP 500 (127.0.0.1)" in html
    assert "hook-token-123" not in html
    settings.NOTIFICATION_MAX_ATTEMPTS = 8
    notifications.deliver_due(NOW + timedelta(days=1))
    assert "Delivered" in reviewer_client.get(url).content.decode()

    with django_assert_max_num_queries(20) as few:
        reviewer_client.get(url)
    for i in range(15):
        project = Project.objects.create(
            organization=budgeted, name=f"P{i}", openai_project_id=f"proj_List{i:010d}", monthly_budget_usd=D("1")
        )
        cost(budgeted, "2", project=project)
    alerts.evaluate(NOW)
    assert BudgetAlert.objects.count() == 3 + 15 * 3  # the organization is over now too
    with django_assert_max_num_queries(len(few.captured_queries)):
        reviewer_client.get(url)


@pytest.mark.django_db
def test_an_evaluation_with_nothing_new_costs_two_queries_per_scope(budgeted, django_assert_num_queries):
    for i in range(10):
        project = Project.objects.create(
            organization=budgeted, name=f"P{i}", openai_project_id=f"proj_Calm{i:010d}", monthly_budget_usd=D("1")
        )
        cost(budgeted, "2", project=project)
    assert len(alerts.evaluate(NOW).raised) == 10 * 3  # the organization ($20 of $100) raises none
    # Prices, this month's alerts, the organizations, the projects; then spend (billed and
    # usage) per scope.
    with django_assert_num_queries(4 + 2 * 11):
        assert alerts.evaluate(NOW).raised == []
