"""Structured JSON logs (LOG_FORMAT=json, console/log_format.py), the request id
(console/request_id.py), the upstream request ids in log lines, and the proof that no
secret reaches any log line with every logger at DEBUG."""

import json
import logging

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.urls import reverse

from console import log_format, request_id
from keys import formats, probe, sweep, tasks
from keys.models import ApiKey, ProbeResult
from tests.test_admin import key_change_data, key_data

pytestmark = pytest.mark.django_db


class Capture(logging.Handler):
    """Keeps every record, formatted both ways, plus its whole __dict__ (extras included)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []
        self.lines = []
        self.json = log_format.JsonFormatter()
        self.plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")

    def emit(self, record):
        self.records.append(record)
        self.lines.append(self.json.format(record))
        self.lines.append(self.plain.format(record))
        self.lines.append(repr(record.__dict__))

    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def everything_at_debug():
    """Every logger — ours, django.db.backends (SQL), django.request, httpx, httpcore,
    openai, urllib3, celery… — at DEBUG, into one capturing handler on the root."""
    for name in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "celery", "kombu", "django.db.backends"):
        logging.getLogger(name)
    handler = Capture()
    root = logging.getLogger()
    saved = {
        name: (lg.level, lg.propagate, lg.disabled)
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    root_level = root.level
    for lg in logging.root.manager.loggerDict.values():
        if isinstance(lg, logging.Logger):
            lg.setLevel(logging.DEBUG)
            lg.propagate = True
            lg.disabled = False
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    connection.force_debug_cursor = True  # django.db.backends logs every query
    yield handler
    connection.force_debug_cursor = False
    root.removeHandler(handler)
    root.setLevel(root_level)
    for name, (level, propagate, disabled) in saved.items():
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


def canary_parts(secret):
    """The secret, its body and distinctive middle pieces."""
    body = secret.split("-", 2)[-1]
    middle = len(body) // 2
    return [secret, body, body[middle - 12 : middle + 12], body[10:34]]


def test_a_json_line_carries_the_fields():
    record = logging.LogRecord("console.upstream", logging.DEBUG, __file__, 1, "upstream %s", ("x",), None)
    record.upstream_request_id = "req_123"
    record.client_request_id = "c0ffee"
    record.http_status = 200
    token = request_id.current.set("rid-1")
    try:
        line = json.loads(log_format.JsonFormatter().format(record))
    finally:
        request_id.current.reset(token)
    assert line["message"] == "upstream x"
    assert line["level"] == "DEBUG"
    assert line["logger"] == "console.upstream"
    assert line["request_id"] == "rid-1"
    assert line["upstream_request_id"] == "req_123"
    assert line["client_request_id"] == "c0ffee"
    assert line["http_status"] == 200
    assert line["time"].endswith("+00:00")


def test_log_format_json_selects_the_json_formatter():
    import subprocess
    import sys

    code = "import django, logging; django.setup(); logging.getLogger('console.test').warning('hello %s', 'world')"
    import os

    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert line["message"] == "hello world"
    assert line["logger"] == "console.test"
    bad = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**os.environ, "LOG_FORMAT": "xml", "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "LOG_FORMAT must be plain or json" in bad.stderr


def test_every_response_has_a_request_id_and_its_log_lines_carry_it(client, everything_at_debug):
    response = client.get("/nowhere-at-all/")
    assert response.status_code == 404
    rid = response["X-Request-ID"]
    assert len(rid) == 36
    lines = [json.loads(line) for line in everything_at_debug.lines if line.startswith('{"time"')]
    [warning] = [line for line in lines if line["logger"] == "django.request"]
    assert warning["request_id"] == rid
    assert client.get("/healthz")["X-Request-ID"] != rid


def test_a_safe_incoming_request_id_is_kept_and_anything_else_replaced(client):
    for safe in ("lb-7f3a.9_x", "3F2504E0-4F89-41D3-9A0C-0305E82C3301"):
        assert client.get("/healthz", HTTP_X_REQUEST_ID=safe)["X-Request-ID"] == safe
    key_shaped = formats.generate(formats.PROJECT)
    body = key_shaped.split("-", 2)[-1]
    unsafe_ids = ("a b", "x\ny", "é", "a" * 21, "", key_shaped, body[:60], body[20:44], "0123456789abcdef" * 2)
    for unsafe in unsafe_ids:
        echoed = client.get("/healthz", HTTP_X_REQUEST_ID=unsafe)["X-Request-ID"]
        assert echoed != unsafe
        assert len(echoed) == 36


@pytest.fixture
def probing(settings, sandbox):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    settings.PROBE_BACKOFF_BASE_SECONDS = 0.01
    settings.PROBE_BACKOFF_MAX_SECONDS = 0.05
    settings.CIRCUIT_FAILURE_THRESHOLD = 1000
    redis.from_url(django_settings.REDIS_URL).flushdb()
    return sandbox


def probe_in_a_task(*keys):
    """Claim and probe through the Celery task (run in-process), so celery logs too."""
    for batch in sweep.batches(sweep.claim_now([k.pk for k in keys])):
        tasks.probe_batch.apply(args=[[list(c) for c in batch]])


def test_upstream_log_lines_carry_openais_and_our_request_ids(make_key, probing, everything_at_debug):
    key, secret = make_key()
    probing.register(secret, fault="healthy", project=key.project.openai_project_id)
    for batch in sweep.batches(sweep.claim_now([key.pk])):
        probe.run_batch(batch)
    result = ProbeResult.objects.get(key=key)
    [record] = [r for r in everything_at_debug.records if r.name == "console.upstream"]
    assert record.upstream_request_id == result.request_id != ""
    assert record.client_request_id == result.client_request_id != ""
    assert record.outcome == "ok"
    assert record.http_status == 200


def test_no_secret_reaches_any_log_line_at_debug(admin_client, project, probing, everything_at_debug):
    """Register a key in the admin, probe it, probe an invalid key, re-save it in the admin,
    save a new secret over the first (what a rotation does underneath) and probe again —
    every logger at DEBUG."""
    first = formats.generate(formats.PROJECT)
    revoked = formats.generate(formats.PROJECT)
    replacement = formats.generate(formats.PROJECT)
    # The sandbox learns the secrets before capture starts: that is the test's harness talking.
    handler = everything_at_debug
    logging.getLogger().removeHandler(handler)
    probing.register(first, fault="healthy", project=project.openai_project_id)
    probing.register(revoked, fault="revoked", project=project.openai_project_id)
    probing.register(replacement, fault="healthy", project=project.openai_project_id)
    logging.getLogger().addHandler(handler)

    response = admin_client.post(reverse("admin:keys_apikey_add"), key_data(first, project=project.pk))
    assert response.status_code == 302
    key = ApiKey.objects.get(name="Chatbot production")
    response = admin_client.post(
        reverse("admin:keys_apikey_add"), key_data(revoked, project=project.pk, name="Revoked key")
    )
    assert response.status_code == 302
    dead = ApiKey.objects.get(name="Revoked key")
    probe_in_a_task(key, dead)
    assert ProbeResult.objects.get(key=dead).outcome == "invalid_key"

    # A re-save on the key page (no secret pasted: the page keeps the stored one) …
    response = admin_client.post(
        reverse("admin:keys_apikey_change", args=[key.pk]), key_change_data(key, owner="platform team B")
    )
    assert response.status_code == 302
    # … and a new secret saved over the old one, as a rotation does underneath.
    key.refresh_from_db()
    key.set_secret(replacement)
    key.full_clean()
    key.save()
    assert key.hint == formats.hint(replacement)
    probe_in_a_task(key)
    assert list(ProbeResult.objects.filter(key=key).values_list("outcome", flat=True)) == ["ok", "ok"]

    names = {r.name for r in handler.records}
    # The capture really saw the noisy loggers: SQL, the HTTP client, the SDK, celery.
    assert "django.db.backends" in names
    assert "console.upstream" in names
    assert {n for n in names if n.startswith(("httpx", "httpcore", "openai", "celery"))}
    text = handler.text()
    for secret in (first, revoked, replacement):
        for part in canary_parts(secret):
            assert part not in text, "a secret (or a piece of it) reached a log line"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_logs_json_with_log_format_json(tmp_path):
    """Celery replaces the root handlers in a worker: its lines are JSON all the same."""
    from .workers import Worker, wait_for

    redis.from_url(django_settings.REDIS_URL).flushdb()
    with Worker(tmp_path, concurrency=1, LOG_FORMAT="json") as worker:
        tasks.sweep.delay()
        wait_for(lambda: "keys.tasks.sweep" in worker.read_log() and "succeeded" in worker.read_log(), 30)
        lines = [json.loads(line) for line in worker.read_log().splitlines() if line.startswith("{")]
    assert [line for line in lines if "ready." in line["message"]]
    assert [line for line in lines if "succeeded" in line["message"]]
