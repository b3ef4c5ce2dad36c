"""Long work started from the admin runs as a Celery task and shows live progress
(accounts/jobs.py, accounts/job_admin.py): who may see a job's page and status, the
throttled progress writes (also from inside the sync's event loop), the summary table, a
stuck job's message; "Sync now" and "Ingest usage for a window…" run through the real
tasks against the sandbox API — in-process and in a real Celery worker — and end with
their summaries; a broker that does not answer fails the job with the command to run;
a redelivered finished job does nothing; and no secret reaches the job's row, its page,
its JSON, the Celery message or the audit trail."""

import asyncio
import json
import threading
import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError

from accounts import job_admin, jobs
from accounts.audit_phrases import phrase
from accounts.models import AuditEvent, Job, JobKind, JobState
from keys import formats
from keys.models import Kind
from sync import tasks as sync_tasks
from sync.models import SyncState
from usage import ingest
from usage import tasks as usage_tasks
from usage.models import IngestState, UsageBucket

from .conftest import join
from .workers import Worker, wait_for

NOW = int(time.time())
DAY = 86400
SYNC_LIST = "/admin/sync/syncedorganization/"
ORG_LIST = "/admin/accounts/organization/"


@pytest.fixture(autouse=True)
def upstream_settings(settings, sandbox):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.UPSTREAM_READ_TIMEOUT = 5.0
    settings.SYNC_MAX_PAGES = 1000
    settings.SYNC_CONCURRENCY = 4
    settings.CIRCUIT_FAILURE_THRESHOLD = 1000
    settings.USAGE_MAX_PAGES = 1000
    return settings


@pytest.fixture
def upstream(org, make_key, sandbox):
    """Acme's admin key, registered with the sandbox: three projects upstream (one
    known here as the `project` fixture, two new) and a usage plan. Returns the secret
    (in memory only)."""
    key, secret = make_key(fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name="acme admin")
    sandbox.register(secret, organization=org.openai_org_id, fault="healthy")
    projects = [
        {"id": "proj_Chatbot12345", "name": "Chatbot", "created_at": NOW - 90 * DAY},
        {"id": "proj_Fresh00000001", "name": "Fresh", "created_at": NOW - DAY},
        {"id": "proj_Second0000001", "name": "Second", "created_at": NOW - DAY},
    ]
    sandbox.seed_admin(org.openai_org_id, projects=projects)
    sandbox.set_usage(secret, keys=[("key_Chatbot0001", "proj_Chatbot12345")], models=["gpt-4o-mini"])
    return secret


@pytest.fixture
def other_admin(db):
    user = User.objects.create_user("bob", "bob@example.com", "pw-bob-123456", is_staff=True)
    join(user, "Console admins")
    return user


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root", "root@example.com", "pw-root-123456")


def make_job(user, org=None, **fields):
    job = jobs.create(JobKind.SYNC, user, org, {"command": ".venv/bin/python manage.py sync_org acme"})
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
        job.refresh_from_db()
    return job


def page_of(client, job):
    return client.get(reverse("admin:job", args=[job.pk]))


def status_of(client, job):
    return client.get(reverse("admin:job_status", args=[job.pk]))


def post_action(client, url, action, ids, **data):
    return client.post(url, {"action": action, "_selected_action": ids, **data})


def window(days=3):
    today = ingest.day_start(timezone.now()).date()
    return today - timedelta(days=days), today


# --- who sees a job ------------------------------------------------------------------
@pytest.mark.django_db
def test_a_job_is_seen_by_its_requester_and_superusers_and_is_404_for_anyone_else(
    client, admin_user, other_admin, reviewer, root, outsider, org
):
    job = make_job(admin_user, org)
    for user, want in ((admin_user, 200), (root, 200), (other_admin, 404), (reviewer, 404)):
        client.force_login(user)
        assert page_of(client, job).status_code == want, user
        assert status_of(client, job).status_code == want, user
        listed = client.get(reverse("admin:jobs")).content.decode()
        assert (reverse("admin:job", args=[job.pk]) in listed) == (want == 200), user
    client.force_login(outsider)
    assert page_of(client, job).url.startswith(reverse("admin:login"))
    assert status_of(client, job).url.startswith(reverse("admin:login"))
    client.logout()
    assert status_of(client, job).url.startswith(reverse("admin:login"))
    # The status endpoint only reads.
    client.force_login(admin_user)
    assert client.post(reverse("admin:job_status", args=[job.pk])).status_code == 405


@pytest.mark.django_db
def test_the_status_says_state_progress_and_step(admin_client, admin_user, org):
    job = make_job(admin_user, org, state=JobState.RUNNING, done=3, total=12, step="Reading projects")
    body = status_of(admin_client, job).json()
    assert body["state"] == "running" and body["finished"] is False and body["stale"] is False
    assert (body["done"], body["total"], body["progress_text"]) == (3, 12, "3 of 12 — Reading projects")
    html = page_of(admin_client, job).content.decode()
    assert 'max="12" value="3"' in html and "3 of 12 — Reading projects" in html
    assert 'data-url="{}"'.format(reverse("admin:job_status", args=[job.pk])) in html
    assert "<script>" not in html  # the polling is a static file: the CSP allows no inline script
    assert "accounts/job_progress.js" in html


@pytest.mark.django_db
def test_the_summary_is_shown_as_a_table_with_the_outcome(admin_client, admin_user, org):
    job = make_job(admin_user, org)
    jobs.claim(job.pk)
    summary = jobs.table(("section", "created"), [("projects", 2), ("total", 2)], [("requests", 7)])
    jobs.succeed(job.pk, summary, done=2)
    body = status_of(admin_client, job).json()
    assert body["finished"] and body["succeeded"] and body["outcome_text"].startswith("Done in ")
    assert body["summary"] == {
        "columns": ["section", "created"],
        "rows": [["projects", 2], ["total", 2]],
        "facts": [["requests", 7]],
    }
    html = page_of(admin_client, job).content.decode()
    assert "<th>section</th><th>created</th>" in html
    assert "<tr><td>projects</td><td>2</td></tr>" in html
    assert "<dt>requests</dt><dd>7</dd>" in html
    assert 'data-finished="1"' in html
    assert "Back to organization sync" in html


@pytest.mark.django_db
def test_a_job_without_progress_for_minutes_says_it_is_stuck(admin_client, admin_user, org, settings):
    settings.JOB_STALE_SECONDS = 180
    quiet = timezone.now() - timedelta(minutes=10)
    queued = make_job(admin_user, org, updated=quiet)
    body = status_of(admin_client, queued).json()
    assert body["stale"] is True
    assert "Still queued after 10" in body["stale_text"] and "Is the Celery worker running?" in body["stale_text"]
    assert ".venv/bin/python manage.py sync_org acme" in body["stale_text"]
    assert body["stale_text"] in page_of(admin_client, queued).content.decode()
    running = make_job(admin_user, org, state=JobState.RUNNING, updated=quiet)
    assert "No progress for 10" in status_of(admin_client, running).json()["stale_text"]
    # A job that showed progress recently, or one that finished, is not stuck.
    fresh = make_job(admin_user, org, state=JobState.RUNNING)
    assert status_of(admin_client, fresh).json()["stale"] is False
    done = make_job(admin_user, org, state=JobState.SUCCEEDED, updated=quiet)
    assert status_of(admin_client, done).json()["stale"] is False


# --- progress ---------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.django_db
def test_progress_writes_are_throttled(admin_user, org):
    job = make_job(admin_user, org)
    jobs.claim(job.pk)
    clock = Clock()
    progress = jobs.Progress(job, interval=0.5, clock=clock)
    progress(step="Reading projects")
    with CaptureQueriesContext(connection) as writes:
        progress(total=500)  # the total, once known, is written at once
        for _ in range(498):
            progress(done=1)  # then 498 projects in no time: no write
    assert progress.writes == 2 and len(writes) == 1
    job.refresh_from_db()
    assert (job.done, job.total) == (0, 500)
    clock.now = 0.6
    progress(done=1)  # half a second later: written
    assert progress.writes == 3
    job.refresh_from_db()
    assert job.done == 499
    progress(done=1)  # the last unit is always written
    assert progress.writes == 4
    job.refresh_from_db()
    assert (job.done, job.total) == (500, 500)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_progress_reported_from_inside_an_event_loop_reaches_the_database(admin_user, org):
    """The sync reads its projects with asyncio, where Django refuses database calls: the
    write goes through a helper thread, whose connection is closed afterwards."""
    job = make_job(admin_user, org)
    jobs.claim(job.pk)

    async def read_projects(progress):
        progress(total=3, step="Reading projects")
        await asyncio.sleep(0)
        progress(done=2)

    with jobs.Progress(job, interval=0) as progress:
        asyncio.run(read_projects(progress))
        job.refresh_from_db()
        assert (job.done, job.total, job.step) == (2, 3, "Reading projects")
        assert progress.helper is not None
    assert progress.helper is None
    connections.close_all()


@pytest.mark.django_db
def test_a_failed_jobs_error_is_scrubbed(admin_user, org):
    job = make_job(admin_user, org)
    secret = formats.generate(formats.ADMIN)
    jobs.fail(job.pk, f"upstream said: Incorrect API key provided: {secret}")
    job.refresh_from_db()
    assert job.state == JobState.FAILED and secret not in job.error and secret[-8:] not in job.error
    assert "[redacted]" in job.error


# --- claiming: idempotent tasks -------------------------------------------------------
@pytest.mark.django_db
def test_a_job_is_claimed_once_and_a_stale_running_job_is_taken_over(admin_user, org, settings):
    settings.JOB_STALE_SECONDS = 180
    job = make_job(admin_user, org)
    assert jobs.claim(job.pk).state == JobState.RUNNING
    assert jobs.claim(job.pk) is None  # running and alive elsewhere
    Job.objects.filter(pk=job.pk).update(updated=timezone.now() - timedelta(minutes=5))
    assert jobs.claim(job.pk) is not None  # its worker died: taken over
    jobs.succeed(job.pk, {})
    Job.objects.filter(pk=job.pk).update(updated=timezone.now() - timedelta(days=1))
    assert jobs.claim(job.pk) is None  # finished: never again


@pytest.mark.django_db
def test_a_redelivered_finished_job_does_nothing(admin_user, org, upstream, sandbox):
    job = make_job(admin_user, org)
    sync_tasks.sync_one(org.pk, job.pk)
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    sent, finished = sandbox.stats()["total"], job.finished
    sync_tasks.sync_one(org.pk, job.pk)  # acks_late: the same message once more
    assert sandbox.stats()["total"] == sent
    job.refresh_from_db()
    assert job.finished == finished and job.state == JobState.SUCCEEDED
    ingest_job = jobs.create(JobKind.INGEST, admin_user, org, {"since": "2026-01-01", "until": "2026-01-02"})
    Job.objects.filter(pk=ingest_job.pk).update(state=JobState.FAILED)
    usage_tasks.ingest_window(ingest_job.pk)
    assert sandbox.stats()["total"] == sent and not IngestState.objects.exists()


# --- Sync now ---------------------------------------------------------------------------
class InProcessWorker:
    """Stands in for a Celery worker: each task runs in a thread of its own, so the
    progress it writes can be read while it runs."""

    def __init__(self):
        self.threads, self.errors = [], []

    def run(self, function, *args):
        def target():
            try:
                function(*args)
            except Exception as e:  # reported in the test's thread
                self.errors.append(e)
            finally:
                connections.close_all()

        thread = threading.Thread(target=target)
        thread.start()
        self.threads.append(thread)

    def join(self):
        for thread in self.threads:
            thread.join(timeout=60)
        assert not self.errors, self.errors


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_sync_now_runs_the_task_as_a_job_and_ends_with_the_syncs_summary(
    client, admin_user, org, project, upstream, sandbox, monkeypatch
):
    worker = InProcessWorker()
    monkeypatch.setattr(sync_tasks.sync_one, "delay", lambda *args: worker.run(sync_tasks.sync_one, *args))
    sandbox.set_latency(150)  # slow enough to see it running
    client.force_login(admin_user)
    response = post_action(client, SYNC_LIST, "sync_now", [org.pk])
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("admin:job", args=[job.pk])
    seen = wait_for(
        lambda: status_of(client, job).json() if job_running_with_total(job) else None, message="a running job"
    )
    assert seen["state"] in ("running", "succeeded") and seen["total"] == 3
    worker.join()
    sandbox.set_latency(0)
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.kind, job.organization, job.requested_by, job.requested_by_label) == ("sync", org, admin_user, "alice")
    assert (job.done, job.total) == (3, 3)
    body = status_of(client, job).json()
    assert body["summary"]["columns"] == ["section", "created", "updated", "unchanged", "deleted"]
    rows = {row[0]: row[1:] for row in body["summary"]["rows"]}
    assert rows["projects"] == [2, 0, 1, 0]  # Fresh and Second created; Chatbot matched by id, as it was
    assert rows["total"] == [sum(r[i] for name, r in rows.items() if name != "total") for i in range(4)]
    facts = dict(body["summary"]["facts"])
    assert facts["outcome"] == "changes written" and facts["requests"] == SyncState.objects.get().requests
    assert {"unmanaged", "deleted upstream", "orphaned", "duration"} <= set(facts)
    assert SyncState.objects.get(organization=org).last_outcome == "ok"
    (event,) = AuditEvent.objects.filter(action="organization.sync_requested")
    assert event.actor == admin_user and event.details["job"] == job.pk and event.details["queued"] is True
    assert_no_secret(upstream, client, job)
    connections.close_all()


def job_running_with_total(job):
    return Job.objects.filter(pk=job.pk, total__isnull=False).exists()


@pytest.mark.django_db
def test_sync_now_on_several_organizations_starts_one_job_each_and_lists_them(
    client, admin_user, org, reviewer, monkeypatch
):
    from accounts.models import Organization

    other = Organization.objects.create(name="Beta", slug="beta", openai_org_id="org-BetaBeta1234")
    sent = []
    monkeypatch.setattr(sync_tasks.sync_one, "delay", lambda *args: sent.append(args))
    client.force_login(reviewer)
    assert post_action(client, SYNC_LIST, "sync_now", [org.pk, other.pk]).status_code == 403
    assert not Job.objects.exists() and sent == []
    client.force_login(admin_user)
    response = post_action(client, SYNC_LIST, "sync_now", [org.pk, other.pk])
    assert response.status_code == 302 and response.url == reverse("admin:jobs")
    made = list(Job.objects.order_by("organization__name"))
    assert [j.organization for j in made] == [org, other]
    assert sorted(sent) == sorted((j.organization_id, j.pk) for j in made)  # ids only
    listed = client.get(response.url).content.decode()
    assert all(reverse("admin:job", args=[j.pk]) in listed for j in made)


# --- Ingest usage for a window… --------------------------------------------------------
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_ingesting_a_window_from_the_admin_runs_the_task_and_ends_with_a_per_endpoint_summary(
    client, admin_user, org, project, upstream, sandbox, monkeypatch
):
    worker = InProcessWorker()
    monkeypatch.setattr(usage_tasks.ingest_window, "delay", lambda *args: worker.run(usage_tasks.ingest_window, *args))
    client.force_login(admin_user)
    form = post_action(client, ORG_LIST, "ingest_window", [org.pk])
    assert form.status_code == 200 and 'type="date"' in form.content.decode()
    assert not Job.objects.exists()  # the form starts nothing
    since, until = window(3)
    response = post_action(client, ORG_LIST, "ingest_window", [org.pk], since=since, until=until, apply="1")
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("admin:job", args=[job.pk])
    worker.join()
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.parameters["since"] == since.isoformat() and job.parameters["until"] == until.isoformat()
    assert job.total == 9 and job.done == 9  # eight usage endpoints and costs
    body = status_of(client, job).json()
    assert body["summary"]["columns"] == ["endpoint", "buckets", "results", "created", "updated", "unchanged"]
    rows = {row[0]: row[1:] for row in body["summary"]["rows"]}
    assert set(rows) == {*map(str, ingest.ENDPOINTS), "costs", "total"}
    stored = UsageBucket.objects.filter(organization=org, endpoint="completions").count()
    assert stored > 0 and rows["completions"][2] == stored  # created = the rows now stored
    assert rows["completions"][0] == 3  # three daily buckets
    facts = dict(body["summary"]["facts"])
    assert facts["outcome"] == "ingested" and "budgets evaluated" in facts
    assert IngestState.objects.get(organization=org).last_outcome == "ok"
    (event,) = AuditEvent.objects.filter(action="usage.ingest_requested")
    assert event.details == {
        "job": job.pk,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "queued": True,
        "ip": "127.0.0.1",
    }
    assert phrase("usage.ingest_requested") == "Asked for a usage ingest of a window"
    # The same window again: everything is unchanged.
    post_action(client, ORG_LIST, "ingest_window", [org.pk], since=since, until=until, apply="1")
    worker.join()
    again = Job.objects.order_by("-pk").first()
    rows = {row[0]: row[1:] for row in again.summary["rows"]}
    assert rows["completions"][2:] == [0, 0, stored]
    assert_no_secret(upstream, client, job)
    connections.close_all()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "since, until, message",
    [
        (0, 0, "“Since” must be before “until”"),
        (-1, -3, "“Since” must be before “until”"),
        (-3, 2, "can be tomorrow"),
        (-400, 0, "A window is at most 366 days (this one is 400)"),
    ],
)
def test_the_ingest_window_is_checked_with_a_clear_message(admin_client, org, upstream, since, until, message):
    today = ingest.day_start(timezone.now()).date()
    data = {"since": today + timedelta(days=since), "until": today + timedelta(days=until), "apply": "1"}
    response = post_action(admin_client, ORG_LIST, "ingest_window", [org.pk], **data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_ingesting_needs_an_admin_key_and_the_right_to_change_organizations(client, admin_user, reviewer, org):
    since, until = window(3)
    data = {"since": since, "until": until, "apply": "1"}
    client.force_login(reviewer)
    assert post_action(client, ORG_LIST, "ingest_window", [org.pk], **data).status_code == 403
    client.force_login(admin_user)
    response = post_action(client, ORG_LIST, "ingest_window", [org.pk], **data)
    assert response.status_code == 200
    assert "No active admin key for Acme" in response.content.decode()
    assert not Job.objects.exists()
    assert not AuditEvent.objects.filter(action="usage.ingest_requested").exists()


# --- broker down --------------------------------------------------------------------------
def broker_down(*args, **kwargs):
    raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


@pytest.mark.django_db
def test_with_no_broker_the_sync_job_fails_at_once_with_the_command_to_run(admin_client, org, monkeypatch):
    monkeypatch.setattr(sync_tasks.sync_one, "apply_async", broker_down)
    response = post_action(admin_client, SYNC_LIST, "sync_now", [org.pk])
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("admin:job", args=[job.pk])
    assert job.state == JobState.FAILED and job.finished is not None
    assert "No worker queue answered (OperationalError)" in job.error
    assert ".venv/bin/python manage.py sync_org acme" in job.error
    page = admin_client.get(response.url).content.decode()
    assert "No worker queue answered" in page and "sync_org acme" in page
    (event,) = AuditEvent.objects.filter(action="organization.sync_requested")
    assert event.details["queued"] is False


@pytest.mark.django_db
def test_with_no_broker_the_ingest_job_fails_at_once_with_the_command_to_run(admin_client, org, upstream, monkeypatch):
    monkeypatch.setattr(usage_tasks.ingest_window, "apply_async", broker_down)
    since, until = window(3)
    data = {"since": since, "until": until, "apply": "1"}
    response = post_action(admin_client, ORG_LIST, "ingest_window", [org.pk], **data)
    job = Job.objects.get()
    assert response.status_code == 302
    assert job.state == JobState.FAILED and "No worker queue answered" in job.error
    assert f".venv/bin/python manage.py ingest_usage --org acme --since {since} --until {until}" in job.error


# --- a real worker; no secret anywhere ----------------------------------------------------
def assert_no_secret(secret, client, job):
    job.refresh_from_db()
    row = json.dumps(list(Job.objects.filter(pk=job.pk).values()), default=str)
    assert secret not in row and secret[-8:] not in row
    assert secret not in status_of(client, job).content.decode()
    assert secret not in page_of(client, job).content.decode()
    events = json.dumps(list(AuditEvent.objects.values("details", "target_repr")), default=str)
    assert secret not in events


@pytest.fixture
def broker():
    """The Celery broker's Redis database, emptied before and after."""
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_real_worker_runs_both_jobs_from_messages_that_carry_ids_only(
    client, admin_user, org, project, upstream, sandbox, broker, tmp_path
):
    client.force_login(admin_user)
    post_action(client, SYNC_LIST, "sync_now", [org.pk])
    since, until = window(2)
    post_action(client, ORG_LIST, "ingest_window", [org.pk], since=since, until=until, apply="1")
    sync_job, ingest_job = Job.objects.order_by("pk")
    assert sync_job.kind == JobKind.SYNC and ingest_job.kind == JobKind.INGEST
    # Queued, not yet taken: the messages name the task and ids, never a secret.
    messages = [m.decode() for m in broker.lrange("celery", 0, -1)]
    assert len(messages) == 2
    bodies = {}
    for message in messages:
        assert upstream not in message and upstream[-8:] not in message
        envelope = json.loads(message)
        task = envelope["headers"]["task"]
        bodies[task] = envelope["headers"]["argsrepr"]
    assert bodies == {
        "sync.tasks.sync_one": repr((org.pk, sync_job.pk)),
        "usage.tasks.ingest_window": repr((ingest_job.pk,)),
    }
    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, CIRCUIT_FAILURE_THRESHOLD=1000) as worker:
        wait_for(
            lambda: not Job.objects.exclude(state__in=[JobState.SUCCEEDED, JobState.FAILED]).exists(),
            timeout=90,
            message="both jobs to finish",
        )
        log = worker.read_log()
    sync_job.refresh_from_db()
    ingest_job.refresh_from_db()
    assert sync_job.state == JobState.SUCCEEDED, sync_job.error
    assert ingest_job.state == JobState.SUCCEEDED, ingest_job.error
    assert (sync_job.done, sync_job.total) == (3, 3)
    assert ingest_job.summary["rows"][-1][0] == "total" and ingest_job.summary["rows"][-1][3] > 0
    assert upstream not in log and upstream[-8:] not in log
    assert_no_secret(upstream, client, sync_job)
    assert_no_secret(upstream, client, ingest_job)
    connections.close_all()


def test_the_job_status_of_an_unsaved_job_is_pure():
    """The status is computed from the row alone (no query): what the page polls."""
    now = timezone.now()
    job = Job(pk=7, kind=JobKind.INGEST, state=JobState.RUNNING, done=4, total=9, step="costs", updated=now)
    body = job_admin.status(job, now)
    assert body["progress_text"] == "4 of 9 — costs" and body["stale"] is False
    assert job_admin.status(job, now + timedelta(minutes=5))["stale"] is True
