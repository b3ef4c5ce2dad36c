"""The sweep through a real Celery worker subprocess on Redis, against the sandbox API
over real HTTP: exactly one result per key per slot, through overlapping sweeps and a
worker killed mid-sweep, and no secret anywhere in Redis, logs or results."""

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from console.upstream import Outcome
from keys import formats, tasks
from keys.models import ApiKey, ProbeResult

from .workers import Worker, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

FAST_RETRIES = {"PROBE_BACKOFF_BASE_SECONDS": 0.05, "PROBE_BACKOFF_MAX_SECONDS": 0.1, "PROBE_PROJECT_RPM_SHARE": 1}


@pytest.fixture
def broker():
    """An empty Redis database for the broker, the limiter and anything else."""
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def mixed_keys(make_key, sandbox, project):
    """Active keys with assorted sandbox plans, plus one revoked key. Returns (keys, secrets)."""
    plans = ["healthy"] * 6 + ["revoked", "quota", "throttled", "server_error", "auth_other", "malformed"]
    keys, secrets = [], []
    for plan in plans:
        key, secret = make_key()
        sandbox.register(secret, fault=plan, project=project.openai_project_id)
        keys.append(key)
        secrets.append(secret)
    revoked, secret = make_key(revoked_at=timezone.now())
    sandbox.register(secret, fault="healthy", project=project.openai_project_id)
    secrets.append(secret)
    ApiKey.objects.update(next_probe_at=timezone.now())
    return keys, revoked, secrets


def results_per_key():
    return {str(k): n for k, n in _counts()}


def _counts():
    from django.db.models import Count

    return ProbeResult.objects.values_list("key_id").annotate(n=Count("id"))


def test_a_worker_sweep_probes_every_active_key_exactly_once(tmp_path, broker, sandbox, mixed_keys):
    keys, revoked, _ = mixed_keys
    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, **FAST_RETRIES):
        tasks.sweep.delay()
        tasks.sweep.delay()  # an overlapping sweep must find nothing left to claim
        wait_for(lambda: ProbeResult.objects.count() >= len(keys), message="a result for every key")
        # Give a duplicate, if there were one, the time to land before counting.
        tasks.sweep.delay()
        wait_for(lambda: not broker.llen("celery"), message="an empty queue")
    counts = results_per_key()
    assert counts == {str(k.pk): 1 for k in keys}
    assert str(revoked.pk) not in counts
    outcomes = dict(ProbeResult.objects.values_list("key__name", "outcome"))
    assert Outcome.OK in outcomes.values() and Outcome.INVALID_KEY in outcomes.values()


def test_two_workers_and_repeated_sweeps_send_exactly_one_request_per_key(tmp_path, broker, sandbox, mixed_keys):
    keys, revoked, secrets = mixed_keys
    # The sweep runs in a worker, so the batch size must reach the workers' settings.
    # One attempt per probe: every request the sandbox counts is a probe.
    env = dict(OPENAI_BASE_URL=sandbox.openai_url, PROBE_BATCH_SIZE=2, **FAST_RETRIES, PROBE_MAX_ATTEMPTS=1)
    with Worker(tmp_path, **env) as one, Worker(tmp_path, **env) as two:
        for _ in range(4):
            tasks.sweep.delay()
        wait_for(lambda: ProbeResult.objects.count() >= len(keys), message="a result for every key")
        wait_for(lambda: not broker.llen("celery"), message="an empty queue")
        tasks.sweep.delay()  # nothing is due: a duplicate would show up now
        wait_for(lambda: not broker.llen("celery"), message="an empty queue")
        logs = one.read_log(), two.read_log()
    assert all("probe batch:" in log for log in logs), "both workers got batches"
    hints = [formats.hint(s) for s in secrets[: len(keys)]]
    assert sandbox.stats()["per_key"] == {hint: 1 for hint in hints}  # counted where it happens
    assert results_per_key() == {str(k.pk): 1 for k in keys}


def test_killing_the_worker_mid_sweep_still_gives_every_key_one_result(
    tmp_path, broker, sandbox, make_key, project, settings
):
    keys = []
    for _ in range(12):
        key, secret = make_key()
        sandbox.register(secret, fault="slow", delay_ms=800, project=project.openai_project_id)
        keys.append(key)
    ApiKey.objects.update(next_probe_at=timezone.now())
    settings.PROBE_BATCH_SIZE = 2
    # Unacked messages of a dead worker come back after the visibility timeout.
    env = dict(OPENAI_BASE_URL=sandbox.openai_url, CELERY_VISIBILITY_TIMEOUT=4, PROBE_CONCURRENCY=1, **FAST_RETRIES)
    first = Worker(tmp_path, concurrency=1, **env).start()
    try:
        tasks.sweep()
        wait_for(lambda: ProbeResult.objects.count() >= 1, message="the first results")
        assert ProbeResult.objects.count() < len(keys)
        first.kill()
    finally:
        first.stop()
    with Worker(tmp_path, **env):
        wait_for(lambda: ProbeResult.objects.count() >= len(keys), timeout=120, message="every key after restart")
    assert results_per_key() == {str(k.pk): 1 for k in keys}
    assert set(ProbeResult.objects.values_list("outcome", flat=True)) == {Outcome.OK}


def test_no_secret_reaches_redis_the_worker_log_or_the_results(tmp_path, broker, sandbox, mixed_keys):
    keys, _, secrets = mixed_keys
    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, **FAST_RETRIES) as worker:
        tasks.sweep.delay()
        wait_for(lambda: ProbeResult.objects.count() >= len(keys), message="a result for every key")
        # While the worker is up: queues, unacked messages, limiter windows, anything.
        redis_dump = dump_redis(broker)
        log = worker.read_log()
    assert ProbeResult.objects.filter(outcome=Outcome.INVALID_KEY).exists()  # the 401 echo was exercised
    assert not [k for k in broker.scan_iter("celery-task-meta-*")], "tasks must not store results"
    stored = "\n".join(str(v) for row in ProbeResult.objects.values() for v in row.values())
    for secret in secrets:
        for fragment in (secret, secret[8:40], secret[-30:]):
            assert fragment not in redis_dump
            assert fragment not in log
            assert fragment not in stored


def test_no_secret_is_in_redis_while_batches_are_queued_and_unacknowledged(tmp_path, broker, sandbox, mixed_keys):
    keys, _, secrets = mixed_keys
    sandbox.set_latency(3000)  # the worker holds its batch (unacked) while we look
    tasks.sweep()  # no worker yet: every batch waits in the queue
    queued = dump_redis(broker)
    assert broker.llen("celery") > 0
    with Worker(tmp_path, concurrency=1, OPENAI_BASE_URL=sandbox.openai_url, **FAST_RETRIES):
        wait_for(lambda: broker.hlen("unacked"), message="a delivered, unacknowledged batch")
        unacked = dump_redis(broker)
    sandbox.set_latency(0)
    assert str(keys[0].pk) in queued + unacked  # the dumps do hold the messages
    for secret in secrets:
        for fragment in (secret, secret[8:40], secret[-30:], secret[-8:]):
            assert fragment not in queued
            assert fragment not in unacked


def dump_redis(client):
    """Every key and value in the database, as text."""
    parts = []
    for key in client.scan_iter("*"):
        kind = client.type(key).decode()
        parts.append(key.decode(errors="replace"))
        if kind == "string":
            parts.append(client.get(key).decode(errors="replace"))
        elif kind == "list":
            parts.extend(v.decode(errors="replace") for v in client.lrange(key, 0, -1))
        elif kind == "hash":
            parts.extend(f"{k!r}={v!r}" for k, v in client.hgetall(key).items())
        elif kind == "set":
            parts.extend(v.decode(errors="replace") for v in client.smembers(key))
        elif kind == "zset":
            parts.extend(v.decode(errors="replace") for v, _ in client.zrange(key, 0, -1, withscores=True))
    return "\n".join(parts)


def test_new_keys_are_probed_by_the_worker_once_committed(tmp_path, broker, sandbox, make_key, project):
    with Worker(tmp_path, OPENAI_BASE_URL=sandbox.openai_url, **FAST_RETRIES):
        key, secret = make_key()
        sandbox.register(secret, fault="healthy", project=project.openai_project_id)
        key.make_due()
        tasks.enqueue_probes([str(key.pk)])
        wait_for(lambda: ProbeResult.objects.filter(key=key).exists(), message="the first probe")
    assert ProbeResult.objects.get(key=key).outcome == Outcome.OK
    assert formats.hint(secret) == ApiKey.objects.get(pk=key.pk).hint


def test_with_the_broker_down_enqueueing_fails_fast_and_the_key_stays_due(make_key, tmp_path):
    """Redis unreachable: publishing gives up after its retry policy instead of hanging,
    and the key is left due so the next sweep probes it."""
    import subprocess
    import sys

    from .workers import ROOT, worker_env

    key, _ = make_key()
    script = (
        f"import django; django.setup()\nfrom keys import tasks\nprint('queued', tasks.enqueue_probes(['{key.pk}']))\n"
    )
    env = worker_env(REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "queued 0" in done.stdout
    assert "broker unreachable" in done.stderr
    key.refresh_from_db()
    assert key.next_probe_at <= timezone.now()
    assert ApiKey.objects.due_for_probe(timezone.now()).filter(pk=key.pk).exists()


def test_on_a_fresh_clone_without_a_broker_folder_enqueueing_leaves_the_key_due(make_key, tmp_path):
    """The filesystem broker (`make run` without Redis) before var/broker/ exists."""
    import subprocess
    import sys

    from .workers import ROOT, worker_env

    key, _ = make_key()
    script = (
        f"import django; django.setup()\nfrom keys import tasks\nprint('queued', tasks.enqueue_probes(['{key.pk}']))\n"
    )
    env = worker_env(REDIS_URL="", CELERY_BROKER_URL="filesystem://", CELERY_BROKER_DIR=tmp_path / "missing")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "queued 0" in done.stdout
    assert "broker unreachable (FileNotFoundError)" in done.stderr
    assert ApiKey.objects.due_for_probe(timezone.now()).filter(pk=key.pk).exists()
