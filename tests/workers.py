"""A real Celery worker in a subprocess, for tests that need one.

The worker imports tests.settings like the suite, with DATABASE_URL pointed at the test
database pytest-django created, so it sees what the test committed (tests using it need
`django_db(transaction=True, serialized_rollback=True)`, so the flush after them
keeps the seeded tiers and groups).
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def worker_env(**overrides):
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL="postgres://{}@{}:{}/{}".format(
            db["USER"] or "postgres", db["HOST"] or "127.0.0.1", db["PORT"] or 5432, db["NAME"]
        ),
        REDIS_URL=settings.REDIS_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Worker:
    """`celery worker` as a subprocess; its log goes to `log_path`."""

    def __init__(self, tmp_path, concurrency=2, **env):
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.log_path = Path(tmp_path) / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.env = worker_env(**env)
        self.concurrency = concurrency
        self.proc = None

    def start(self, timeout=60):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "console",
                "worker",
                "-l",
                "info",
                "-P",
                "prefork",
                "-c",
                str(self.concurrency),
                "-n",
                self.name,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.read_log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited with {self.proc.returncode}:\n{self.read_log()[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"celery worker did not become ready:\n{self.read_log()[-3000:]}")

    def read_log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self):
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_for(predicate, timeout=60, interval=0.2, message="condition"):
    """Poll until predicate() is truthy; return its value or fail naming `message`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")
