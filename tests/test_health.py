"""/healthz and /readyz: unauthenticated, cheap, JSON per check, 503 when a check fails,
and nothing sensitive in the answer."""

import socket
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from accounts import heartbeat
from accounts.models import Heartbeat
from console import health
from keys import tasks

pytestmark = pytest.mark.django_db


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alive(db):
    """Beat ran a sweep and a worker was seen just now."""
    now = timezone.now()
    heartbeat.record_beat(now, sweep_seconds=0.25)
    heartbeat.record_worker("celery@host-a", now, force=True)
    return now


def assert_reveals_nothing(response):
    text = response.content.decode()
    db = settings.DATABASES["default"]
    for secret_ish in ("127.0.0.1", "redis://", "postgres", "6379", str(db["NAME"]), "host-a", "Error", "Traceback"):
        assert secret_ish not in text, secret_ish


def test_healthz_is_ok_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_readyz_is_ready_when_every_check_passes(client, alive):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ready"
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "ok",
        "redis": "ok",
        "beat": "ok",
        "workers": "ok",
    }
    assert body["checks"]["workers"]["count"] == 1
    assert 0 <= body["checks"]["beat"]["age_seconds"] < 60
    assert_reveals_nothing(response)


def test_readyz_fails_when_redis_is_down(client, alive, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{unused_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["redis"] == {"status": "fail"}
    assert body["checks"]["database"]["status"] == "ok"
    assert_reveals_nothing(response)


def test_readyz_says_redis_is_not_configured_in_the_embedded_default(client, alive, settings):
    settings.REDIS_URL = ""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["redis"] == {"status": "not_configured"}


def test_readyz_fails_when_the_database_is_unreachable(client, alive, monkeypatch):
    class Down:
        def cursor(self):
            raise health_error("connection to server at 10.1.2.3 failed: password authentication failed")

    from django.db import OperationalError as health_error

    monkeypatch.setattr(health, "connection", Down())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {"status": "fail"}
    assert "10.1.2.3" not in response.content.decode()
    assert "password" not in response.content.decode()


def test_readyz_fails_when_the_beat_heartbeat_is_older_than_two_sweep_intervals(client, alive, settings):
    settings.PROBE_SWEEP_EVERY_SECONDS = 60
    now = timezone.now()
    heartbeat.record_beat(now - timedelta(seconds=121))
    response = client.get("/readyz")
    assert response.status_code == 503
    beat = response.json()["checks"]["beat"]
    assert beat["status"] == "fail"
    assert beat["age_seconds"] >= 121
    # Within two intervals it is fresh again.
    heartbeat.record_beat(now - timedelta(seconds=100))
    assert client.get("/readyz").status_code == 200


def test_the_heartbeat_rules_take_now():
    start = timezone.now()
    heartbeat.record_beat(start)
    heartbeat.record_worker("celery@host-a", start, force=True)
    interval = settings.PROBE_SWEEP_EVERY_SECONDS
    assert heartbeat.readiness(start + timedelta(seconds=2 * interval))["beat"]["status"] == "ok"
    assert heartbeat.readiness(start + timedelta(seconds=2 * interval + 1))["beat"]["status"] == "fail"
    window = heartbeat.worker_window()
    assert heartbeat.readiness(start + timedelta(seconds=window))["workers"]["count"] == 1
    later = heartbeat.readiness(start + timedelta(seconds=window + 1))["workers"]
    assert later["status"] == "fail"
    assert later["count"] == 0
    assert later["age_seconds"] == window + 1


def test_readyz_fails_without_a_worker_and_without_a_beat(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["beat"] == {"status": "fail", "age_seconds": None}
    assert checks["workers"] == {"status": "fail", "age_seconds": None, "count": 0}


def test_workers_are_counted_never_named():
    now = timezone.now()
    assert heartbeat.record_worker("celery@host-a.corp.example", now, force=True)
    assert heartbeat.record_worker("celery@host-b.corp.example", now, force=True)
    # Again within WORKER_BEAT_SECONDS in this process: no write.
    assert not heartbeat.record_worker("celery@host-a.corp.example", now)
    names = list(Heartbeat.objects.values_list("name", flat=True))
    assert len(names) == 2
    assert not [n for n in names if "host" in n or "corp" in n]
    assert heartbeat.readiness(now)["workers"]["count"] == 2


def test_the_sweep_records_the_beat_heartbeat_with_its_duration():
    assert not Heartbeat.objects.filter(name=heartbeat.BEAT).exists()
    tasks.sweep()
    beat = Heartbeat.objects.get(name=heartbeat.BEAT)
    assert (timezone.now() - beat.seen_at).total_seconds() < 60
    assert beat.value is not None and beat.value >= 0


def test_readyz_is_cheap(client, alive, django_assert_num_queries):
    with django_assert_num_queries(2):  # SELECT 1, one heartbeat aggregate
        client.get("/readyz")


@pytest.mark.parametrize("role", ["anonymous", "admin", "reviewer", "outsider"])
def test_every_role_gets_the_same_answers_without_login_2fa_or_redirects(
    client, role, admin_user, reviewer, outsider, alive, settings
):
    """No login page, no 2FA enrolment redirect (even when 2FA is required), no HTTPS
    redirect for a load balancer's plain-HTTP check."""
    settings.CONSOLE_REQUIRE_2FA = True
    settings.SECURE_SSL_REDIRECT = True
    user = {"admin": admin_user, "reviewer": reviewer, "outsider": outsider}.get(role)
    if user:
        client.force_login(user)
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    # A write is refused for everyone: these endpoints change nothing.
    assert client.post("/readyz").status_code == 405
    assert Heartbeat.objects.count() == 2


def test_a_worker_records_its_heartbeat_when_it_starts_a_task_not_when_eager():
    from types import SimpleNamespace

    now = timezone.now()
    heartbeat._last_worker_write.clear()
    eager = SimpleNamespace(request=SimpleNamespace(is_eager=True, hostname="celery@eager"))
    heartbeat.worker_heartbeat_per_task(sender=eager)
    assert heartbeat.readiness(now)["workers"]["count"] == 0
    task = SimpleNamespace(request=SimpleNamespace(is_eager=False, hostname="celery@host-c"))
    heartbeat.worker_heartbeat_per_task(sender=task)
    assert Heartbeat.objects.get().name == heartbeat.worker_name("celery@host-c")
    assert heartbeat.readiness(timezone.now())["workers"]["count"] == 1


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_real_workers_and_a_sweep_make_readyz_ready(client, tmp_path):
    """Two Celery workers with different node names (as on two hosts) are counted, not
    named; the sweep a worker runs refreshes the beat heartbeat."""
    import redis

    from .workers import Worker, wait_for

    redis.from_url(settings.REDIS_URL).flushdb()
    assert client.get("/readyz").status_code == 503
    with Worker(tmp_path, concurrency=1) as first, Worker(tmp_path, concurrency=1) as second:
        wait_for(lambda: client.get("/readyz").json()["checks"]["workers"]["count"] == 2, 30, message="two workers")
        body = client.get("/readyz").json()
        assert body["checks"]["beat"]["status"] == "fail"  # no sweep yet
        tasks.sweep.delay()
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, message="a sweep's beat heartbeat")
        text = client.get("/readyz").content.decode()
        for worker in (first, second):
            assert worker.name.split("@")[0] not in text
        assert socket.gethostname() not in text
    names = list(Heartbeat.objects.values_list("name", flat=True))
    assert not [n for n in names if socket.gethostname() in n or "test-" in n]
