"""Claimers racing on the same due keys never both win one: threads on PostgreSQL, and
processes on SQLite with the filesystem broker (the embedded `make run` mode), counted
in the messages the broker actually holds."""

import base64
import json
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from keys import sweep
from keys.models import ApiKey

from .workers import ROOT, worker_env

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_threads_racing_on_postgresql_never_win_a_key_twice(make_key):
    keys = [make_key()[0] for _ in range(40)]
    now = timezone.now()
    ApiKey.objects.update(next_probe_at=now - timedelta(seconds=5))
    racers, start, won = 6, threading.Barrier(6), []

    def race():
        try:
            start.wait(10)
            won.append(sweep.claim_due(now))
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [c.key_id for claims in won for c in claims]
    assert len(won) == racers
    assert sorted(claimed) == sorted(str(k.pk) for k in keys)  # each key once, none twice


SEED = """
import django; django.setup()
from django.utils import timezone
from accounts.models import Organization, Project, Tier
from keys import formats
from keys.models import ApiKey
org = Organization.objects.create(name="Race", slug="race", openai_org_id="org-Race00000001")
project = Project.objects.create(organization=org, name="Race", openai_project_id="proj_Race00000001",
                                 tier=Tier.objects.get(name="Tier 1"))
for i in range(30):
    key = ApiKey(organization=org, project=project, name=f"race {i}")
    key.set_secret(formats.generate())
    key.save()
ApiKey.objects.update(next_probe_at=timezone.now())
print(",".join(str(pk) for pk in ApiKey.objects.values_list("pk", flat=True)))
"""

RACER = """
import os, sys, time
import django; django.setup()
from keys import tasks
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
print("queued", tasks.sweep())
"""


def broker_messages(folder):
    """The probe_batch claims in every message the filesystem broker holds."""
    batches = []
    for path in folder.iterdir():
        message = json.loads(path.read_text())
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        batches.append(args[0])
    return batches


def test_processes_racing_on_sqlite_with_the_filesystem_broker_never_queue_a_key_twice(tmp_path):
    broker = tmp_path / "broker"
    (broker / "out").mkdir(parents=True)
    (broker / "processed").mkdir()
    env = worker_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL="",
        CELERY_BROKER_URL="filesystem://",
        CELERY_BROKER_DIR=broker,
        PROBE_BATCH_SIZE=4,
    )

    def run(*args, **kw):
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, **kw)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run(sys.executable, "manage.py", "migrate", "--no-input")
    keys = set(run(sys.executable, "-c", SEED).strip().splitlines()[-1].split(","))
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        go.touch()
        outputs = [r.communicate(timeout=120) for r in racers]
    finally:
        for r in racers:
            if r.poll() is None:
                r.kill()
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in outputs]
    queued = sum(int(out.split("queued")[-1]) for out, _ in outputs)
    claimed = [key_id for batch in broker_messages(broker / "out") for key_id, _slot, _lease in batch]
    assert len(claimed) == queued == len(keys) == 30
    assert set(claimed) == keys
