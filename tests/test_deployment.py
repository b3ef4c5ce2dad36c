"""The production deployment of docs/DEPLOY.md, run for real on loopback.

gunicorn (console.wsgi) + two Celery workers with different node names (as on two hosts)
+ one Celery beat, all on `console.settings` (not tests.settings) with production-like
values: DEBUG=false, freshly generated SECRET_KEY, encryption and fingerprint keys, TLS
settings as behind a TLS-terminating proxy (the test speaks plain HTTP to gunicorn and
sends `X-Forwarded-Proto: https`, as the proxy of docs/DEPLOY.md does), WhiteNoise serving
collected static files, PostgreSQL (the test database) and Redis (the suite's Redis db).

Keys are registered through the REST API. Registration queues each key's first probe;
those are allowed to finish and are counted apart. Then the keys fall due again
(PROBE_INTERVAL_SECONDS is short) and beat's scheduled sweep — run by whichever worker
takes it — claims them and spreads the batches over both workers. At the sandbox, where
requests really arrive, every key's request count equals its number of distinct probe
slots: one request per key per slot, across both workers and every overlapping sweep.
"""

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx2
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db.models import Count

from accounts.models import Organization, Project, Tier
from api.models import ApiToken
from keys import formats
from keys.models import ApiKey, ProbeResult

from .workers import ROOT, wait_for, worker_env

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

HOST = "console.example.test"
KEYS = 20
SWEEP_EVERY = 5
INTERVAL = 20  # the keys fall due again this long after their first probe


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def production_env(tmp_path, sandbox, **overrides):
    """The environment of every process: what /etc/console/env would hold (docs/DEPLOY.md),
    plus the test's database and Redis and the sandbox as the only upstream."""
    env = worker_env()  # the test database and Redis, PYTHONUNBUFFERED
    sandbox_host = sandbox.root.split("://", 1)[1].rstrip("/")
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        CONSOLE_ENV_FILE=os.devnull,
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        CONSOLE_ENCRYPTION_KEYS="v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        CONSOLE_FINGERPRINT_KEY=secrets.token_urlsafe(32),
        ALLOWED_HOSTS=HOST,
        CSRF_TRUSTED_ORIGINS=f"https://{HOST}",
        SECURE_SSL_REDIRECT="true",
        SECURE_PROXY_SSL_HEADER="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true",
        SESSION_COOKIE_SECURE="true",
        CSRF_COOKIE_SECURE="true",
        STATIC_ROOT=str(tmp_path / "static"),
        METRICS_ENABLED="true",
        METRICS_TOKEN=secrets.token_urlsafe(32),
        OPENAI_BASE_URL=sandbox.openai_url,
        CONSOLE_ALLOWED_API_HOSTS=f"api.openai.com,{sandbox_host}",
        PROBE_SWEEP_EVERY_SECONDS=str(SWEEP_EVERY),
        PROBE_INTERVAL_SECONDS=str(INTERVAL),
        PROBE_BATCH_SIZE="3",  # several batches per sweep, so both workers get some
        PROBE_MAX_ATTEMPTS="1",  # one request per probe: the sandbox's count is the probe count
        PROBE_PROJECT_RPM_SHARE="1",
        LOG_LEVEL="INFO",
    )
    for name in ("SANDBOX_TEST_PORT", "CELERY_BROKER_URL", "CACHE_URL"):
        env.pop(name, None)
    env.update(overrides)
    return env


class Service:
    """One long-running process of the deployment; its output goes to a log file."""

    def __init__(self, name, argv, env, tmp_path):
        self.name = name
        self.log_path = Path(tmp_path) / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def read_log(self):
        return self.log_path.read_text(errors="replace")

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.read_log()[-3000:]}")
        return True

    def stop(self, timeout=30):
        """SIGTERM, as systemd's stop does; returns the exit code (None if it had to be killed)."""
        code = self.proc.poll()
        if code is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                code = None
        self.log.close()
        return code


def manage(env, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def broker():
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_gunicorn_two_workers_and_beat_probe_each_key_once_per_slot(tmp_path, broker, sandbox):
    env = production_env(tmp_path, sandbox)

    # The release steps of docs/DEPLOY.md (migrate: pytest-django already did it).
    check = manage(env, "check", "--deploy", "--fail-level", "WARNING", "--database", "default")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout
    static = manage(env, "collectstatic", "--noinput", "-v", "0")
    assert static.returncode == 0, static.stdout + static.stderr

    tier = Tier.objects.get(name="Tier 1")
    org = Organization.objects.create(name="Deploy", slug="deploy", openai_org_id="org-Deploy00001")
    project = Project.objects.create(organization=org, name="Web", openai_project_id="proj_Deploy00001", tier=tier)
    user = User.objects.create_user("ci", "ci@example.com", secrets.token_urlsafe(16), is_staff=True)
    User.groups.through.objects.create(user=user, group=Group.objects.get(name="Console admins"))
    token = ApiToken(user=user, name="deploy test")
    plaintext = token.issue()
    token.save()

    port = free_port()
    node = uuid.uuid4().hex[:6]
    python = sys.executable
    services, registered = [], []
    try:
        services.append(
            Service(
                "web",
                [python, "-m", "gunicorn", "console.wsgi", "-w", "2", "-b", f"127.0.0.1:{port}"]
                + ["--graceful-timeout", "10", "--access-logfile", "-", "--error-logfile", "-"],
                env,
                tmp_path,
            )
        )
        celery = [python, "-m", "celery", "-A", "console"]
        for name in ("w1", "w2"):
            services.append(
                Service(
                    name,
                    celery + ["worker", "-l", "info", "-c", "2", "-n", f"{name}@deploy-{node}"],
                    env,
                    tmp_path,
                )
            )
        services.append(
            Service(
                "beat",
                celery + ["beat", "-l", "info", "-s", str(tmp_path / "celerybeat-schedule"), "--pidfile="],
                env,
                tmp_path,
            )
        )
        web, w1, w2, beat = services
        proxy = {"Host": HOST, "X-Forwarded-Proto": "https"}  # what the proxy adds
        http = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=15)

        def healthz():
            web.alive()
            try:
                return http.get("/healthz", headers={"Host": HOST}).status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(healthz, timeout=60, message="gunicorn's /healthz")
        for worker in (w1, w2):
            wait_for(lambda w=worker: w.alive() and " ready." in w.read_log(), timeout=60, message=f"{worker.name}")

        # Behind the proxy: plain HTTP is redirected (the health checks are exempt); HSTS is sent.
        plain = http.get("/api/v1/keys", headers={"Host": HOST})
        assert plain.status_code == 301 and plain.headers["location"].startswith(f"https://{HOST}/")
        assert http.get("/healthz", headers={"Host": HOST}).text == "ok"
        login = http.get("/admin/login/", headers=proxy)
        assert login.status_code == 200
        assert "max-age=31536000" in login.headers["strict-transport-security"]
        # WhiteNoise serves the collected, hashed static files.
        css = [w for w in login.text.split('"') if w.startswith("/static/") and w.endswith(".css")]
        assert css and all(len(Path(href).suffixes) >= 2 for href in css)  # base.<hash>.css
        asset = http.get(css[0], headers=proxy)
        assert asset.status_code == 200 and "max-age=315360000" in asset.headers["cache-control"]
        assert http.get("/static/../console/settings.py", headers=proxy).status_code == 404
        assert http.get("/metrics", headers=proxy).status_code in (401, 403)
        metrics = http.get("/metrics", headers={**proxy, "Authorization": f"Bearer {env['METRICS_TOKEN']}"})
        assert metrics.status_code == 200

        # Register the keys through the REST API, as CI would.
        api = {**proxy, "Authorization": f"Bearer {plaintext}"}
        hints, registered = {}, []
        for i in range(KEYS):
            secret = formats.generate()
            registered.append(secret)
            hint = sandbox.register(secret, fault="healthy", project=project.openai_project_id)
            body = {"project": project.pk, "name": f"deploy {i}", "secret": secret}
            response = http.post("/api/v1/keys", json=body, headers=api)
            assert response.status_code == 201, response.text
            assert secret not in response.text
            assert response.json()["first_probe_queued"] is True
            hints[response.json()["id"]] = hint
        assert ApiKey.objects.count() == KEYS

        # The first probes (queued at registration) land; they are not what this test is about.
        wait_for(lambda: w1.alive() and ProbeResult.objects.count() >= KEYS, timeout=60, message="first probes")
        first_slot = dict(ProbeResult.objects.values_list("key_id", "slot"))
        assert len(first_slot) == KEYS

        def swept_twice():
            beat.alive()
            later = ProbeResult.objects.exclude(slot__in=set(first_slot.values()))
            return later.values("key_id").distinct().count() == KEYS

        # Beat's sweep claims each key when it falls due again (INTERVAL after its first probe).
        wait_for(swept_twice, timeout=INTERVAL + 30, message="a scheduled probe of every key")
        ready = wait_for(
            lambda: http.get("/readyz", headers={"Host": HOST}).status_code == 200, timeout=30, message="/readyz 200"
        )
        assert ready
        checks = http.get("/readyz", headers={"Host": HOST}).json()["checks"]
        assert checks["beat"]["status"] == "ok" and checks["workers"]["count"] == 2

        # Stop scheduling, let the queue drain (acks_late: a batch leaves `unacked` once its
        # results are stored), then count.
        assert beat.stop() == 0
        wait_for(
            lambda: not broker.llen("celery") and not broker.hlen("unacked"), timeout=30, message="a drained queue"
        )
        per_key_requests = sandbox.stats()["per_key"]
        slots = {
            str(row["key_id"]): (row["n"], row["slots"])
            for row in ProbeResult.objects.values("key_id").annotate(n=Count("id"), slots=Count("slot", distinct=True))
        }
        assert set(slots) == set(hints)
        for key_id, hint in hints.items():
            results, distinct_slots = slots[key_id]
            assert results == distinct_slots >= 2  # the first probe and at least one scheduled one
            assert per_key_requests[hint] == distinct_slots, (hint, per_key_requests[hint], distinct_slots)

        logs = {s.name: s.read_log() for s in services}
        assert "Scheduler: Sending due task probe sweep (keys.tasks.sweep)" in logs["beat"]
        batches = Counter(name for name in ("w1", "w2") for _ in range(logs[name].count("probe batch:")))
        assert batches["w1"] and batches["w2"], "both workers probed batches"
    finally:
        codes = {s.name: s.stop() for s in reversed(services)}
    assert codes == {s.name: 0 for s in services}, codes
    for service in services:
        log = service.read_log()
        assert "ERROR" not in log and "Traceback" not in log, f"{service.name}:\n{log[-3000:]}"
        for secret in registered:
            assert secret not in log and secret[-30:] not in log
