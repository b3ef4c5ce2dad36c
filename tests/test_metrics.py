"""/metrics: off unless enabled, a bearer token when set, figures computed from the
database at scrape time in a fixed number of queries."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts import heartbeat
from accounts.models import Project, Tier
from console import metrics
from keys.models import ApiKey, Circuit, CircuitState, ProbeResult
from usage.models import CostBucket, IngestState

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-tests-only"


@pytest.fixture
def enabled(settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = ""
    return settings


def scrape(client, **headers):
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.status_code
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_are_off_unless_enabled(client, settings):
    settings.METRICS_ENABLED = False
    assert client.get("/metrics").status_code == 404


def test_metrics_are_on_by_default_only_with_debug():
    import subprocess
    import sys

    code = "import django; django.setup(); from django.conf import settings; print(settings.METRICS_ENABLED)"
    for debug, expected in (("true", "True"), ("false", "False")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**__import__("os").environ, "DEBUG": debug, "DJANGO_SETTINGS_MODULE": "console.settings"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out == expected


@pytest.mark.parametrize("role", ["anonymous", "admin", "reviewer"])
def test_a_token_is_required_when_set_whoever_is_logged_in(client, enabled, role, admin_user, reviewer):
    enabled.METRICS_TOKEN = TOKEN
    user = {"admin": admin_user, "reviewer": reviewer}.get(role)
    if user:
        client.force_login(user)
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": TOKEN}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 401
        assert b"console_" not in response.content
        assert response["WWW-Authenticate"].startswith("Bearer")
    samples = scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert ("console_probes_last_hour", (("outcome", "ok"),)) in samples
    # A scrape changes nothing, and a POST is refused.
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_probe_sweep_rotation_and_circuit_figures(client, enabled, make_key, project):
    from django.utils import timezone

    now = timezone.now()
    ok_key, _ = make_key()
    bad_key, _ = make_key(issued_at=now - timedelta(days=400))
    for i, (key, outcome) in enumerate([(ok_key, "ok"), (bad_key, "invalid_key"), (ok_key, "ok")]):
        ProbeResult.objects.create(key=key, slot=i, started_at=now - timedelta(minutes=10 + i), outcome=outcome)
    ProbeResult.objects.create(key=ok_key, slot=99, started_at=now - timedelta(hours=2), outcome="timeout")
    ApiKey.objects.filter(pk=ok_key.pk).update(next_probe_at=now - timedelta(seconds=300))
    ApiKey.objects.filter(pk=bad_key.pk).update(next_probe_at=now + timedelta(hours=1))
    Circuit.objects.create(host="api.example.test", state=CircuitState.OPEN, consecutive_failures=5)
    heartbeat.record_beat(now, sweep_seconds=1.5, claimed=40, queued=38)

    samples = scrape(client)

    assert value(samples, "console_probes_last_hour", outcome="ok") == 2
    assert value(samples, "console_probes_last_hour", outcome="invalid_key") == 1
    assert value(samples, "console_probes_last_hour", outcome="timeout") == 0  # two hours ago
    assert value(samples, "console_keys_due") == 1
    assert 300 <= value(samples, "console_sweep_lag_seconds") < 400
    assert value(samples, "console_sweep_duration_seconds") == 1.5
    assert (value(samples, "console_sweep_keys_claimed"), value(samples, "console_sweep_keys_queued")) == (40, 38)
    assert value(samples, "console_keys_by_rotation_state", state="overdue") == 1
    assert value(samples, "console_keys_by_rotation_state", state="compliant") == 1
    assert value(samples, "console_circuit_state", host="api.example.test", state="open") == 1
    assert value(samples, "console_circuit_state", host="api.example.test", state="closed") == 0
    assert value(samples, "console_circuit_consecutive_failures", host="api.example.test") == 5


def test_spend_vs_budget_and_ingestion_age(client, enabled, project):
    from django.utils import timezone

    now = timezone.now()
    project.monthly_budget_usd = Decimal("100.00")
    project.save()
    other = Project.objects.create(organization=project.organization, name="No budget", tier=Tier.objects.first())
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    for day, amount in ((0, "150.25"), (-40, "999")):  # last month's bucket does not count
        start = month + timedelta(days=day)
        CostBucket.objects.create(
            organization=project.organization,
            project=project,
            start_time=start,
            end_time=start + timedelta(days=1),
            upstream_project_id=project.openai_project_id,
            amount=Decimal(amount),
        )
    IngestState.objects.create(organization=project.organization, last_success_at=now - timedelta(hours=1))

    samples = scrape(client)

    labels = {"organization": "acme", "project": "Chatbot"}
    assert value(samples, "console_project_spend_usd", **labels) == 150.25
    assert value(samples, "console_project_budget_usd", **labels) == 100.0
    assert value(samples, "console_project_budget_state", state="over", **labels) == 1
    assert value(samples, "console_project_spend_usd", organization="acme", project=other.name) == 0
    assert ("console_project_budget_usd", (("organization", "acme"), ("project", other.name))) not in samples
    assert 3600 <= value(samples, "console_usage_ingest_age_seconds", organization="acme") < 3700


def test_the_sync_age_and_failures_are_scraped(client, enabled, project):
    from django.utils import timezone

    from sync.models import SyncState

    SyncState.objects.create(
        organization=project.organization,
        last_success_at=timezone.now() - timedelta(minutes=30),
        consecutive_failures=2,
    )
    samples = scrape(client)
    assert 1800 <= value(samples, "console_sync_age_seconds", organization="acme") < 1900
    assert value(samples, "console_sync_consecutive_failures", organization="acme") == 2


def test_a_failing_provider_is_counted_and_the_rest_still_answers(client, enabled, monkeypatch):
    def broken(now):
        raise RuntimeError("secret-ish detail that must not be shown")

    monkeypatch.setattr(metrics, "_providers", [*metrics._providers, ("broken", broken)])
    response = client.get("/metrics")
    assert b"secret-ish" not in response.content
    samples = scrape(client)
    assert value(samples, "console_metrics_provider_errors", provider="broken") == 1
    assert value(samples, "console_metrics_provider_errors", provider="keys") == 0
    assert ("console_keys_due", ()) in samples


@pytest.mark.parametrize("keys", [2, 50])
def test_a_scrape_costs_the_same_queries_at_2_and_50_keys(
    client, enabled, make_key, project, keys, django_assert_num_queries
):
    from django.utils import timezone

    now = timezone.now()
    for i in range(keys):
        key, _ = make_key()
        ProbeResult.objects.create(key=key, slot=i, started_at=now - timedelta(minutes=1), outcome="ok")
        Circuit.objects.get_or_create(host=f"host-{i % 5}.example.test")
    Project.objects.create(organization=project.organization, name=f"Other {keys}", monthly_budget_usd=Decimal(5))
    IngestState.objects.create(organization=project.organization, last_success_at=now)
    heartbeat.record_beat(now)
    # probes by outcome, heartbeats, due keys, rotation counts, circuits, spend, ingest
    # states, sync states
    with django_assert_num_queries(8):
        response = client.get("/metrics")
    assert response.status_code == 200
    assert f'console_probes_last_hour{{outcome="ok"}} {float(keys)}'.encode() in response.content


def test_check_deploy_warns_when_metrics_are_open(settings):
    from django.core.checks import run_checks

    settings.METRICS_ENABLED, settings.METRICS_TOKEN = True, ""
    assert "console.W010" in [m.id for m in run_checks(include_deployment_checks=True)]
    settings.METRICS_TOKEN = TOKEN
    assert "console.W010" not in [m.id for m in run_checks(include_deployment_checks=True)]
    settings.METRICS_ENABLED, settings.METRICS_TOKEN = False, ""
    assert "console.W010" not in [m.id for m in run_checks(include_deployment_checks=True)]
