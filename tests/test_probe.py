"""Probes against the sandbox API over real HTTP: every outcome, headers, retries,
limits, the circuit breaker. Batches run in-process here; tests/test_sweep_worker.py runs
them through a real Celery worker."""

import itertools
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
import redis
from django.conf import settings as django_settings
from django.core.management import CommandError
from django.utils import timezone

from accounts.models import Project, Tier
from console.upstream import Outcome
from keys import formats, probe, sweep
from keys.models import ApiKey, Circuit, CircuitState, Kind, ProbeResult, Provider


@pytest.fixture(autouse=True)
def probe_settings(settings, sandbox):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    settings.PROBE_BACKOFF_BASE_SECONDS = 0.01
    settings.PROBE_BACKOFF_MAX_SECONDS = 0.05
    settings.PROBE_MAX_ATTEMPTS = 3
    settings.UPSTREAM_READ_TIMEOUT = 1.0
    settings.CIRCUIT_FAILURE_THRESHOLD = 1000
    redis.from_url(django_settings.REDIS_URL).flushdb()
    return settings


@pytest.fixture
def key_with(make_key, sandbox, project):
    """A stored key registered in the sandbox with a fault plan."""

    def make(fault="healthy", fmt=formats.PROJECT, project=project, **plan):
        fields = {}
        if fmt == formats.AZURE:
            fields = {"provider": Provider.AZURE, "azure_endpoint": sandbox.root}
        key, secret = make_key(fmt=fmt, project=project, **fields)
        sandbox.register(
            secret,
            fault=fault,
            project=project.openai_project_id,
            provider="azure" if fmt == formats.AZURE else "openai",
            **plan,
        )
        return key, secret

    return make


_ticks = itertools.count()


def probe_now(*keys):
    """Probe these keys at once, each call in a new slot (as sweeps a second apart are)."""
    now = timezone.now() + timedelta(seconds=next(_ticks))
    claims = sweep.claim_now([k.pk for k in keys], now=now)
    summary = probe.Summary()
    for batch in sweep.batches(claims):
        summary.add(probe.run_batch(batch))
    return summary


def result_of(key):
    return ProbeResult.objects.get(key=key)


@pytest.mark.parametrize(
    "fault, outcome, status",
    [
        ("healthy", Outcome.OK, 200),
        ("revoked", Outcome.INVALID_KEY, 401),
        ("auth_other", Outcome.AUTH_UNKNOWN, 401),
        ("forbidden", Outcome.PERMISSION_DENIED, 403),
        ("not_found", Outcome.NOT_FOUND, 404),
        ("quota", Outcome.QUOTA_EXHAUSTED, 429),
        ("throttled", Outcome.RATE_LIMITED, 429),
        ("server_error", Outcome.SERVER_ERROR, 500),
        ("bad_gateway", Outcome.SERVER_ERROR, 502),
        ("unavailable", Outcome.SERVER_ERROR, 503),
        ("malformed", Outcome.MALFORMED_RESPONSE, 200),
        ("hanging", Outcome.TIMEOUT, None),
        ("reset", Outcome.NETWORK_ERROR, None),
    ],
)
def test_each_sandbox_fault_maps_to_its_outcome(key_with, fault, outcome, status):
    key, _ = key_with(fault)
    probe_now(key)
    result = result_of(key)
    assert (result.outcome, result.http_status) == (outcome, status)
    key.refresh_from_db()
    assert key.last_probe_outcome == outcome


@pytest.mark.parametrize(
    "fault, outcome, status",
    [
        ("healthy", Outcome.OK, 200),
        ("revoked", Outcome.INVALID_KEY, 401),
        ("forbidden", Outcome.PERMISSION_DENIED, 403),
        ("throttled", Outcome.RATE_LIMITED, 429),
        ("server_error", Outcome.SERVER_ERROR, 500),
        ("unavailable", Outcome.SERVER_ERROR, 503),
        ("malformed", Outcome.MALFORMED_RESPONSE, 200),
        ("hanging", Outcome.TIMEOUT, None),
        ("reset", Outcome.NETWORK_ERROR, None),
    ],
)
def test_each_azure_fault_maps_to_its_outcome(key_with, fault, outcome, status):
    key, _ = key_with(fault, fmt=formats.AZURE)
    probe_now(key)
    result = result_of(key)
    assert (result.outcome, result.http_status) == (outcome, status)


def test_an_unregistered_key_is_invalid(make_key):
    key, _ = make_key()
    probe_now(key)
    assert result_of(key).outcome == Outcome.INVALID_KEY
    assert result_of(key).error_code == "invalid_api_key"


def test_a_probe_records_the_response_headers(key_with):
    key, _ = key_with("healthy", rpm=500)
    probe_now(key)
    r = result_of(key)
    assert r.request_id.startswith("req_")
    assert len(r.client_request_id) == 36
    assert r.ratelimit_limit_requests == 500
    assert r.ratelimit_remaining_requests is not None and r.ratelimit_remaining_requests < 500
    assert r.ratelimit_limit_tokens is not None and r.ratelimit_remaining_tokens is not None
    assert r.ratelimit_reset_requests and r.ratelimit_reset_tokens
    assert r.processing_ms is not None
    assert r.openai_organization


def test_the_stored_message_has_no_fragment_of_the_key(key_with):
    key, secret = key_with("revoked")
    probe_now(key)
    message = result_of(key).message
    assert message and "Incorrect API key" in message
    for fragment in (secret, secret[-4:], secret[:12], secret[20:40]):
        assert fragment not in message


def test_transient_failures_are_retried_up_to_the_limit(key_with, sandbox):
    key, _ = key_with("server_error")
    probe_now(key)
    assert result_of(key).attempts == 3
    assert sandbox.stats()["total"] == 3


@pytest.mark.parametrize("fault", ["revoked", "quota"])
def test_dead_keys_and_empty_quota_are_never_retried(key_with, sandbox, fault):
    key, _ = key_with(fault)
    probe_now(key)
    assert result_of(key).attempts == 1
    assert sandbox.stats()["total"] == 1


def test_a_flaky_key_recovers_within_its_retries(key_with):
    key, _ = key_with("flaky", fail_rate=0.5)
    probe_now(key)
    # The sandbox fails a fraction of requests; three attempts almost always get through,
    # and whatever the outcome it must be one of the two the plan can produce.
    assert result_of(key).outcome in (Outcome.OK, Outcome.SERVER_ERROR)


def test_failures_count_up_and_success_resets_them(key_with, sandbox):
    key, secret = key_with("revoked")
    probe_now(key)
    probe_now(key)
    key.refresh_from_db()
    assert key.consecutive_failures == 2
    assert key.is_probe_failing()
    sandbox.register(secret, fault="healthy", project=key.project.openai_project_id)
    probe_now(key)
    key.refresh_from_db()
    assert (key.consecutive_failures, key.last_probe_outcome) == (0, Outcome.OK)
    assert key.last_success_at is not None


def test_a_hanging_key_times_out_without_stalling_the_batch(key_with, settings):
    hanging, _ = key_with("hanging")
    healthy = [key_with("healthy")[0] for _ in range(5)]
    settings.PROBE_MAX_ATTEMPTS = 1
    probe_now(hanging, *healthy)
    timeout_ms = settings.UPSTREAM_READ_TIMEOUT * 1000
    assert result_of(hanging).outcome == Outcome.TIMEOUT
    assert result_of(hanging).duration_ms >= timeout_ms
    for key in healthy:
        assert result_of(key).outcome == Outcome.OK
        assert result_of(key).duration_ms < timeout_ms


def test_a_project_tier_that_disagrees_with_the_api_is_flagged(key_with, project):
    assert project.tier.requests_per_minute == 500
    key, _ = key_with("healthy", rpm=5000)
    probe_now(key)
    project.refresh_from_db()
    assert project.observed_rpm == 5000
    assert project.tier_mismatch() == (500, 5000)


def test_probes_stay_within_the_projects_share_of_its_rpm(key_with, org, settings, sandbox):
    settings.PROBE_PROJECT_RPM_SHARE = 0.1  # 50 RPM tier → 5 probes a minute
    settings.PROBE_LIMITER_MAX_WAIT_SECONDS = 0.2
    tier = Tier.objects.create(name="Tiny", requests_per_minute=50, tokens_per_minute=1000, position=9)
    busy = Project.objects.create(organization=org, name="Busy", openai_project_id="proj_Busy00000001", tier=tier)
    calm = Project.objects.create(organization=org, name="Calm", openai_project_id="proj_Calm00000001", tier=tier)
    busy_keys = [key_with("healthy", project=busy)[0] for _ in range(50)]
    calm_keys = [key_with("healthy", project=calm)[0] for _ in range(3)]
    summary = probe_now(*busy_keys, *calm_keys)
    per_project = sandbox.stats()["per_project"]
    assert per_project["proj_Busy00000001"] == 5
    assert per_project["proj_Calm00000001"] == 3
    assert summary.deferred == 45
    # Deferred keys are not marked failing and come back soon.
    deferred = ApiKey.objects.filter(pk__in=[k.pk for k in busy_keys], last_probe_at__isnull=True)
    assert deferred.count() == 45
    assert all(k.next_probe_at is not None for k in deferred)


def test_the_circuit_opens_when_the_api_is_down_and_keys_are_not_marked_failing(make_key, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
    settings.CIRCUIT_FAILURE_THRESHOLD = 3
    settings.PROBE_CONCURRENCY = 1  # one at a time, so the breaker opens mid-batch
    keys = [make_key()[0] for _ in range(6)]
    summary = probe_now(*keys)
    circuit = Circuit.objects.get(host="127.0.0.1:9")
    assert circuit.state == CircuitState.OPEN
    assert summary.outcomes[Outcome.SKIPPED_CIRCUIT_OPEN] >= 1
    for key in ApiKey.objects.filter(pk__in=[k.pk for k in keys]):
        assert key.consecutive_failures == 0
        assert not key.is_probe_failing()


def test_the_circuit_half_opens_after_the_cool_down_and_closes_on_success(key_with, sandbox):
    key, _ = key_with("healthy")
    host = probe.host_of(key)
    Circuit.objects.create(
        host=host, state=CircuitState.OPEN, consecutive_failures=9, open_until=timezone.now() - timedelta(seconds=1)
    )
    probe_now(key)
    assert result_of(key).outcome == Outcome.OK
    circuit = Circuit.objects.get(host=host)
    assert (circuit.state, circuit.consecutive_failures) == (CircuitState.CLOSED, 0)


def test_a_redelivered_batch_writes_no_second_result(key_with, sandbox):
    key, _ = key_with("healthy")
    claims = sweep.claim_now([key.pk])
    probe.run_batch(claims)
    summary = probe.run_batch(claims)  # as if the worker died before acking
    assert summary.already_done == 1
    assert ProbeResult.objects.filter(key=key).count() == 1
    assert sandbox.stats()["total"] == 1


def test_revoked_keys_are_not_probed(key_with, sandbox):
    key, _ = key_with("healthy")
    claims = sweep.claim_now([key.pk])
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    probe.run_batch(claims)
    assert not ProbeResult.objects.filter(key=key).exists()
    assert sandbox.stats()["total"] == 0


def test_a_secret_that_cannot_be_decrypted_fails_closed(key_with, settings, sandbox):
    key, _ = key_with("healthy")
    from keys import crypto

    settings.CONSOLE_ENCRYPTION_KEYS = [crypto.generate_master_key(1)]
    probe_now(key)
    assert result_of(key).outcome == Outcome.DECRYPTION_FAILED
    assert sandbox.stats()["total"] == 0


def test_an_admin_key_is_probed_on_the_administration_api_not_the_models_list(make_key, org, sandbox):
    # Admin keys cannot call inference endpoints: a models-list probe would call a live
    # admin key broken. The sandbox refuses admin keys on /v1/models, as upstream does.
    key, secret = make_key(fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org)
    sandbox.register(secret, fault="healthy")
    probe_now(key)
    assert result_of(key).outcome == Outcome.OK
    assert sandbox.stats()["total"] == 1


def test_a_revoked_admin_key_is_invalid(make_key, org, sandbox):
    key, secret = make_key(fmt=formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org)
    sandbox.register(secret, fault="revoked")
    probe_now(key)
    assert result_of(key).outcome == Outcome.INVALID_KEY


def test_probe_now_in_the_admin_claims_the_selected_keys(admin_client, make_key):
    active, _ = make_key()
    revoked, _ = make_key(revoked_at=timezone.now())
    response = admin_client.post(
        "/admin/keys/apikey/",
        {"action": "probe_selected", "_selected_action": [str(active.pk), str(revoked.pk)]},
        follow=True,
    )
    assert "Queued a probe for 1 key(s)" in response.content.decode()
    active.refresh_from_db()
    revoked.refresh_from_db()
    assert active.next_probe_at > timezone.now()  # leased to the queued batch
    assert revoked.next_probe_at is None


def test_the_probe_keys_command_prints_a_summary_per_outcome(key_with):
    from django.core.management import call_command

    key_with("healthy")
    key_with("revoked")
    out = StringIO()
    with pytest.raises(CommandError, match="1 key\\(s\\) failed") as failed:
        call_command("probe_keys", "--no-progress", stdout=out)
    assert failed.value.returncode == 1
    summary = out.getvalue().split("\n\n")[0].splitlines()
    lines = dict(line.rsplit(None, 1) for line in summary[1:])
    assert lines == {"ok": "1", "invalid_key": "1", "total": "2"}


def test_the_probe_keys_command_lists_the_failing_keys_and_exits_1(key_with):
    from django.core.management import call_command

    from keys.models import ApiKey

    healthy, _ = key_with("healthy")
    revoked, secret = key_with("revoked")
    out = StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("probe_keys", "--no-progress", stdout=out)
    assert failed.value.returncode == 1
    failing = out.getvalue().split("Failing keys:\n")[1]
    key = ApiKey.objects.get(pk=revoked.pk)
    assert f"{key.name} ({key.hint})" in failing
    assert "Invalid key, HTTP 401" in failing
    assert str(key.pk) in failing
    assert healthy.name not in failing
    assert secret not in out.getvalue()


def test_the_probe_keys_command_exits_0_when_no_outcome_in_fail_on_happened(key_with):
    from django.core.management import call_command

    key_with("healthy")
    key_with("revoked")
    out = StringIO()
    call_command("probe_keys", "--no-progress", "--fail-on", "server_error,timeout", stdout=out)
    assert "Failing keys" not in out.getvalue()


def test_the_probe_keys_command_with_fail_on_none_always_exits_0(key_with):
    from django.core.management import call_command

    key_with("revoked")
    out = StringIO()
    call_command("probe_keys", "--no-progress", "--fail-on", "none", stdout=out)
    assert "invalid_key" in out.getvalue() and "Failing keys" not in out.getvalue()


def test_the_probe_keys_command_refuses_an_unknown_fail_on_outcome(db):
    from django.core.management import call_command

    with pytest.raises(CommandError, match="Unknown outcome\\(s\\) for --fail-on: nope"):
        call_command("probe_keys", "--fail-on", "invalid_key,nope")


def test_the_probe_keys_command_refuses_an_unknown_organization(db):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="No organization with slug"):
        call_command("probe_keys", "--org", "nope")


def test_when_the_api_goes_down_the_circuit_opens_and_recovers_when_it_returns(make_key, settings, tmp_path):
    """A sandbox of its own, stopped and started again on the same port."""
    from sandbox.control import SandboxControl

    from .conftest import _free_port

    port = _free_port()
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    settings.CONSOLE_ALLOWED_API_HOSTS = [*settings.CONSOLE_ALLOWED_API_HOSTS, f"127.0.0.1:{port}"]
    settings.CIRCUIT_FAILURE_THRESHOLD = 3
    settings.PROBE_CONCURRENCY = 1
    keys = [make_key() for _ in range(5)]

    processes = []

    def start():
        process = subprocess.Popen(
            [sys.executable, "manage.py", "sandbox_api", "--port", str(port)],
            cwd=django_settings.BASE_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        control = SandboxControl(f"http://127.0.0.1:{port}")
        assert control.wait_ready(timeout=15), "sandbox did not start"
        for key, secret in keys:
            control.register(secret, fault="healthy", project=key.project.openai_project_id)
        return process

    def stop(process):
        process.terminate()
        process.wait(10)

    try:
        api = start()
        probe_now(*(k for k, _ in keys))
        assert Circuit.objects.get(host=f"127.0.0.1:{port}").state == CircuitState.CLOSED

        stop(api)
        summary = probe_now(*(k for k, _ in keys))
        circuit = Circuit.objects.get(host=f"127.0.0.1:{port}")
        assert circuit.state == CircuitState.OPEN
        assert summary.outcomes[Outcome.NETWORK_ERROR] + summary.outcomes[Outcome.SKIPPED_CIRCUIT_OPEN] == 5
        assert not any(k.is_probe_failing() for k in ApiKey.objects.all())
        # While open, nothing is sent at all.
        assert probe_now(*(k for k, _ in keys)).outcomes == {Outcome.SKIPPED_CIRCUIT_OPEN: 5}

        start()
        Circuit.objects.filter(pk=circuit.pk).update(open_until=timezone.now())  # the cool-down is over
        summary = probe_now(*(k for k, _ in keys))
    finally:
        for process in processes:
            if process.poll() is None:
                stop(process)
    circuit.refresh_from_db()
    assert (circuit.state, circuit.consecutive_failures) == (CircuitState.CLOSED, 0)
    # The half-open trial went first; once it succeeded, the rest were let through.
    assert summary.outcomes[Outcome.OK] >= 1
    assert set(summary.outcomes) <= {Outcome.OK, Outcome.SKIPPED_CIRCUIT_OPEN}


# --- one key's trouble is that key's outcome ---------------------------------------------
def leased(key):
    key.refresh_from_db()
    return key.next_probe_at > timezone.now() + timedelta(seconds=django_settings.PROBE_INTERVAL_SECONDS)


def test_a_key_whose_url_cannot_be_sent_is_an_error_and_the_batch_goes_on(key_with, project):
    # A hostname no HTTP client accepts (stored before validation refused such URLs).
    bad = ApiKey(organization=project.organization, project=project, name="bad", base_url="https://\u202egnp.exe")
    bad.set_secret(formats.generate())
    bad.save()
    healthy = [key_with("healthy")[0] for _ in range(3)]
    summary = probe_now(bad, *healthy)
    assert summary.outcomes == {Outcome.ERROR: 1, Outcome.OK: 3}
    assert result_of(bad).outcome == Outcome.ERROR
    for key in [bad, *healthy]:
        assert not leased(key)
    bad.refresh_from_db()
    assert bad.last_probe_outcome == Outcome.ERROR


def test_an_unexpected_exception_in_one_probe_is_scrubbed_and_stored_as_its_outcome(key_with, monkeypatch):
    from console import upstream

    bad, bad_secret = key_with("healthy")
    good, _ = key_with("healthy")
    real_probe = upstream.Pool.probe

    async def probe_or_fail(self, target):
        if target.secret == bad_secret:
            raise ValueError(f"Illegal header value b'Bearer {target.secret}'")
        return await real_probe(self, target)

    monkeypatch.setattr(upstream.Pool, "probe", probe_or_fail)
    probe_now(bad, good)
    message = result_of(bad).message
    assert result_of(bad).outcome == Outcome.ERROR and message.startswith("ValueError")
    for fragment in (bad_secret, bad_secret[-8:], bad_secret[8:30]):
        assert fragment not in message
    assert result_of(good).outcome == Outcome.OK
    assert not leased(bad) and not leased(good)


def test_a_bug_outside_the_call_still_stores_every_other_key(key_with, monkeypatch):
    bad, _ = key_with("healthy")
    good, _ = key_with("healthy")
    real_target_for = probe.target_for

    def target_for(key, secret):
        if key.pk == bad.pk:
            raise RuntimeError("a bug")
        return real_target_for(key, secret)

    monkeypatch.setattr(probe, "target_for", target_for)
    probe_now(bad, good)
    assert (result_of(bad).outcome, result_of(good).outcome) == (Outcome.ERROR, Outcome.OK)
    assert not leased(bad)


def test_with_the_limiters_redis_down_the_batch_probes_under_a_local_window(key_with, settings, sandbox, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    keys = [key_with("healthy")[0] for _ in range(3)]
    summary = probe_now(*keys)
    assert summary.outcomes == {Outcome.OK: 3}
    assert sandbox.stats()["total"] == 3
    assert "probe limiter: Redis failed (ConnectionError)" in caplog.text


# --- retries: what the API says about them --------------------------------------------
def test_a_flaky_key_that_fails_first_recovers_on_its_retry(key_with, sandbox):
    key, secret = key_with("flaky", fail_times=1)
    probe_now(key)
    assert (result_of(key).outcome, result_of(key).attempts) == (Outcome.OK, 2)
    assert sandbox.stats()["per_key"] == {formats.hint(secret): 2}


def test_quota_named_only_in_the_error_type_is_quota_exhausted_and_not_retried(key_with, sandbox):
    key, _ = key_with("quota", quota_type_only=True)
    probe_now(key)
    assert (result_of(key).outcome, result_of(key).attempts) == (Outcome.QUOTA_EXHAUSTED, 1)
    assert result_of(key).error_code == "insufficient_quota"
    assert sandbox.stats()["total"] == 1


def test_a_server_error_that_says_x_should_retry_false_is_not_retried(key_with, sandbox):
    key, _ = key_with("server_error", should_retry=False)
    probe_now(key)
    assert (result_of(key).outcome, result_of(key).attempts) == (Outcome.SERVER_ERROR, 1)
    assert sandbox.stats()["total"] == 1


def test_a_retry_is_never_sooner_than_the_retry_after_the_api_asked_for(key_with, sandbox, settings):
    settings.PROBE_BACKOFF_MAX_SECONDS = 1.0
    settings.PROBE_MAX_ATTEMPTS = 2
    key, _ = key_with("throttled", retry_after=1, retry_after_ms=400)
    probe_now(key)
    assert (result_of(key).outcome, result_of(key).attempts) == (Outcome.RATE_LIMITED, 2)
    first, second = [t for t, _ in sandbox.stats()["recent"]]
    assert second - first >= 0.4


def test_a_retry_after_longer_than_a_batch_waits_is_recorded_and_scheduled_after_it(key_with, sandbox, settings):
    key, _ = key_with("throttled", retry_after=30)
    before = timezone.now()
    probe_now(key)
    assert (result_of(key).outcome, result_of(key).attempts) == (Outcome.RATE_LIMITED, 1)
    assert sandbox.stats()["total"] == 1
    key.refresh_from_db()
    assert before + timedelta(seconds=30) <= key.next_probe_at <= timezone.now() + timedelta(seconds=30)
    assert key.last_probe_outcome == Outcome.RATE_LIMITED


def test_a_retry_after_is_capped_at_the_probe_interval(key_with, settings):
    settings.PROBE_INTERVAL_SECONDS = 10
    key, _ = key_with("throttled", retry_after=3000)
    probe_now(key)
    key.refresh_from_db()
    assert key.next_probe_at <= timezone.now() + timedelta(seconds=10)


# --- scheduling --------------------------------------------------------------------------
def test_after_a_probe_the_key_is_next_due_one_interval_later(key_with, settings):
    key, _ = key_with("healthy")
    probe_now(key)
    key.refresh_from_db()
    assert key.next_probe_at == key.last_probe_at + timedelta(seconds=settings.PROBE_INTERVAL_SECONDS)


def test_a_deferred_key_is_due_again_soon(key_with, org, settings):
    settings.PROBE_PROJECT_RPM_SHARE = 0.1
    settings.PROBE_LIMITER_MAX_WAIT_SECONDS = 0.2
    tier = Tier.objects.create(name="Tiny", requests_per_minute=10, tokens_per_minute=1000, position=9)
    small = Project.objects.create(organization=org, name="Small", openai_project_id="proj_Small0000001", tier=tier)
    first, second = key_with("healthy", project=small)[0], key_with("healthy", project=small)[0]
    before = timezone.now()
    summary = probe_now(first, second)
    assert summary.deferred == 1
    deferred = ApiKey.objects.get(pk__in=[first.pk, second.pk], last_probe_at__isnull=True)
    assert before < deferred.next_probe_at <= timezone.now() + timedelta(seconds=0.4)


# --- during an outage ------------------------------------------------------------------
def test_a_call_sent_and_timed_out_is_a_timeout_even_once_the_circuit_opened(key_with, settings):
    settings.CIRCUIT_FAILURE_THRESHOLD = 1
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    settings.PROBE_CONCURRENCY = 3
    keys = [key_with("hanging")[0] for _ in range(3)]
    summary = probe_now(*keys)
    assert summary.outcomes == {Outcome.TIMEOUT: 3}
    for key in keys:
        assert result_of(key).duration_ms >= 500
    assert Circuit.objects.get(host=probe.host_of(keys[0])).state == CircuitState.OPEN


def test_no_more_than_probe_concurrency_calls_are_in_flight(key_with, sandbox, settings):
    settings.PROBE_CONCURRENCY = 3
    keys = [key_with("slow", delay_ms=200)[0] for _ in range(10)]
    probe_now(*keys)
    stats = sandbox.stats()
    assert stats["total"] == 10
    assert stats["max_in_flight"] == 3
