"""The grace-period end through a real Celery worker subprocess on Redis, against the
sandbox's Administration API over real HTTP: the old key is deleted upstream exactly once
(counted at the sandbox) when the task runs twice, and when the worker is killed between
the upstream DELETE and the local update (its database session killed with it)."""

import time
from datetime import timedelta

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from keys import formats, rotation, tasks
from keys.models import ApiKey, KeyAction, KeyEvent, SupersededSecret

from .test_rotation import OLD_ID, live, new_live_secret, probe_status, upstream_org  # noqa: F401  fixtures
from .workers import Worker, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# Short upstream timeouts make a crashed run's claim expire in 2 × (1 + 3) + 10 = 18 s.
ENV = {"UPSTREAM_CONNECT_TIMEOUT": 1, "UPSTREAM_READ_TIMEOUT": 3, "CELERY_VISIBILITY_TIMEOUT": 4}


@pytest.fixture
def broker():
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def in_grace_end(sandbox, org, project, live, upstream_org):  # noqa: F811
    """The live key rotated, its old secret's grace over. Returns (key, old secret, superseded row)."""
    key, old = live
    done = rotation.rotate(key, new_live_secret(sandbox, project, org), "test")
    SupersededSecret.objects.filter(pk=done.superseded.pk).update(grace_until=timezone.now() - timedelta(seconds=1))
    return key, old, done.superseded


def delete_path(project):
    return f"/v1/organization/projects/{project.openai_project_id}/api_keys/{OLD_ID}"


def calls(sandbox, org, method, path):
    return sandbox.admin_state(org.openai_org_id)["calls"].get(f"{method} {path}", 0)


def assert_retired_once(sandbox, org, project, key, old, row):
    row.refresh_from_db()
    assert row.revoked_at is not None and row.deleted_upstream_at is not None
    assert row.secret_ciphertext is None and row.claimed_until is None
    assert calls(sandbox, org, "DELETE", delete_path(project)) == 1
    assert KeyEvent.objects.filter(key=key, action=KeyAction.SUPERSEDED_REVOKED).count() == 1
    assert probe_status(sandbox, old) == 401
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_the_scheduled_task_retires_the_old_secret_once_even_when_run_twice(
    tmp_path, broker, sandbox, org, project, in_grace_end
):
    key, old, row = in_grace_end
    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, **ENV) as worker:
        tasks.end_grace_periods.delay()
        tasks.end_grace_periods.delay()  # an overlapping run (beat twice, a redelivery)
        wait_for(
            lambda: SupersededSecret.objects.filter(pk=row.pk, revoked_at__isnull=False).exists(), message="revoked"
        )
        wait_for(lambda: not broker.llen("celery"), message="an empty queue")
        tasks.end_grace_periods.delay()  # and once more, after: nothing to do
        wait_for(lambda: not broker.llen("celery"), message="an empty queue")
        time.sleep(1)
        log = worker.read_log()
    assert_retired_once(sandbox, org, project, key, old, row)
    assert old not in log and old[-20:] not in log


def test_a_worker_killed_between_the_upstream_delete_and_the_local_update_never_deletes_twice(
    tmp_path, broker, sandbox, org, project, in_grace_end
):
    key, old, row = in_grace_end
    db = connection.settings_dict
    locker = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres", dbname=db["NAME"]
    )
    sandbox.set_latency(1500)  # the DELETE takes 1.5 s: time to lock the row behind it
    first = Worker(tmp_path, concurrency=1, OPENAI_BASE_URL=sandbox.openai_url, **ENV).start()
    try:
        tasks.end_grace_periods.delay()
        # The run marked the DELETE as sent (committed) and is sending it: hold the row so
        # that its local update after the DELETE waits, then kill the worker there.
        wait_for(
            lambda: SupersededSecret.objects.filter(pk=row.pk, upstream_delete_sent_at__isnull=False).exists(),
            message="the DELETE marked as sent",
            interval=0.05,
        )
        locker.execute("SELECT id FROM keys_supersededsecret WHERE id = %s FOR UPDATE", [row.pk])
        wait_for(lambda: calls(sandbox, org, "DELETE", delete_path(project)) == 1, message="the DELETE")
        wait_for(waiting_on_a_lock, message="the worker's update waiting for the row")
        first.kill()
        # Its database session dies with it (as when the machine goes down): the update
        # it was waiting to make never happens.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        locker.rollback()
    finally:
        first.stop()
        locker.close()
        sandbox.set_latency(0)
    row.refresh_from_db()
    assert row.revoked_at is None and row.deleted_upstream_at is None  # the crash lost the local update
    assert probe_status(sandbox, old) == 401  # but it was deleted upstream

    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, **ENV):
        # Beat keeps sending the task; the dead run's claim expires, the next run asks
        # upstream (GET: gone) instead of deleting again.
        def retired():
            tasks.end_grace_periods.delay()
            time.sleep(1)
            return SupersededSecret.objects.filter(pk=row.pk, revoked_at__isnull=False).exists()

        wait_for(retired, timeout=90, message="retired after the claim expired")
    assert_retired_once(sandbox, org, project, key, old, row)
    assert calls(sandbox, org, "GET", delete_path(project)) == 1
    assert formats.hint(old) == row.hint


def waiting_on_a_lock():
    """Is a session (the worker's) waiting for a row lock? Asked on the test's own
    autocommit connection, so each call sees fresh activity."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0
