"""Rotation reminders (keys/reminders.py): each threshold once per key and due date, the
overdue one once, a fresh cycle after a rotation, nothing for revoked or expired keys,
no secret in what is sent, a bounded number of queries, and two workers at once."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from accounts.models import Notification
from keys import reminders, tasks
from keys.models import ApiKey

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def due_in(days):
    """issued_at for a key (90-day policy) due `days` days after NOW."""
    return NOW - (90 - days) * DAY


# --- the pure rule -----------------------------------------------------------------------
def test_the_latest_threshold_reached_is_the_one_due():
    days = [14, 7, 1]
    due = NOW + 20 * DAY
    assert reminders.reminder_for(due, NOW, days) is None
    assert reminders.reminder_for(due, due - 14 * DAY - timedelta(seconds=1), days) is None
    assert reminders.reminder_for(due, due - 14 * DAY, days) == 14
    assert reminders.reminder_for(due, due - 8 * DAY, days) == 14
    assert reminders.reminder_for(due, due - 7 * DAY, days) == 7
    assert reminders.reminder_for(due, due - 3 * DAY, days) == 7
    assert reminders.reminder_for(due, due - DAY, days) == 1
    assert reminders.reminder_for(due, due - timedelta(seconds=1), days) == 1
    assert reminders.reminder_for(due, due, days) == 0
    assert reminders.reminder_for(due, due + 30 * DAY, days) == 0


def test_the_setting_is_read(settings):
    settings.ROTATION_REMINDER_DAYS = [3, 30]
    assert reminders.reminder_days() == [30, 3]


# --- raising them ------------------------------------------------------------------------
def rotation_notes():
    return {n.dedupe_key: n for n in Notification.objects.filter(kind="rotation")}


@pytest.mark.django_db
def test_each_reminder_once_over_a_keys_countdown(make_key, org):
    org.alert_emails = "sec@example.com"
    org.save()
    key, secret = make_key(name="Billing bot", owner="team-billing", issued_at=due_in(20))
    due = key.issued_at + 90 * DAY
    raised = []
    for day in range(0, 40):
        now = NOW + day * DAY
        raised.append(reminders.send_reminders(now))
        assert reminders.send_reminders(now) == 0  # the same day again: nothing
    notes = rotation_notes()
    assert sorted(notes) == sorted(f"rotation:{key.pk}:{due:%Y-%m-%d}:{d}" for d in (14, 7, 1, 0))
    assert sum(raised) == 4
    # The 14-day reminder came on day 6 (due in 14 days), the overdue one on day 20.
    assert raised[6] == 1 and raised[13] == 1 and raised[19] == 1 and raised[20] == 1
    overdue = notes[f"rotation:{key.pk}:{due:%Y-%m-%d}:0"]
    assert "overdue" in overdue.subject and "Billing bot" in overdue.subject and key.hint in overdue.subject
    assert "Chatbot" in overdue.text and "team-billing" in overdue.text
    assert overdue.email_to == "sec@example.com"
    for note in notes.values():
        assert secret not in note.subject + note.text
        assert secret[8:40] not in note.subject + note.text


@pytest.mark.django_db
def test_a_missed_run_sends_only_the_latest_threshold(make_key):
    key, _ = make_key(issued_at=due_in(3))
    assert reminders.send_reminders(NOW) == 1
    assert [k.rsplit(":", 1)[1] for k in rotation_notes()] == ["7"]


@pytest.mark.django_db
def test_a_rotated_key_starts_a_fresh_cycle(make_key):
    key, _ = make_key(issued_at=due_in(-5))
    assert reminders.send_reminders(NOW) == 1  # overdue
    ApiKey.objects.filter(pk=key.pk).update(rotated_at=NOW - 80 * DAY)  # now due in 10 days
    assert reminders.send_reminders(NOW) == 1
    new_due = NOW + 10 * DAY
    assert f"rotation:{key.pk}:{new_due:%Y-%m-%d}:14" in rotation_notes()
    assert reminders.send_reminders(NOW) == 0


@pytest.mark.django_db
def test_revoked_expired_deleted_and_compliant_keys_get_none(make_key):
    make_key(issued_at=due_in(-5), revoked_at=NOW - DAY)
    make_key(issued_at=due_in(-5), deleted_upstream_at=NOW - DAY)
    make_key(issued_at=due_in(-5), expires_at=NOW - DAY)
    make_key(issued_at=due_in(30))
    assert reminders.send_reminders(NOW) == 0
    assert Notification.objects.count() == 0


@pytest.mark.django_db
def test_queries_do_not_grow_with_keys(make_key, project):
    def run_twice(n):
        for _ in range(n):
            make_key(issued_at=due_in(-5))
        reminders.send_reminders(NOW)
        with CaptureQueriesContext(connection) as ctx:
            assert reminders.send_reminders(NOW) == 0
        return len(ctx.captured_queries)

    assert run_twice(3) == run_twice(30) == 2
    assert Notification.objects.filter(kind="rotation").count() == 33


@pytest.mark.django_db
def test_the_daily_task_runs_it_and_is_on_beat(make_key):
    from console.celery import app

    make_key(issued_at=datetime.now(UTC) - 100 * DAY)
    tasks.send_rotation_reminders()
    tasks.send_rotation_reminders()
    assert Notification.objects.filter(kind="rotation").count() == 1
    app.loader.import_default_modules()
    app.on_after_configure.send(sender=app)
    schedule = {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}
    assert schedule["keys.tasks.send_rotation_reminders"] == 24 * 3600


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_workers_at_once_raise_each_reminder_once(make_key):
    if connection.vendor != "postgresql":
        pytest.skip("concurrency is tested on PostgreSQL")
    for _ in range(20):
        make_key(issued_at=due_in(-5))
    barrier = threading.Barrier(2)
    results, errors = [], []

    def worker():
        try:
            barrier.wait()
            results.append(reminders.send_reminders(NOW))
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(results) == 20
    assert Notification.objects.filter(kind="rotation").count() == 20
