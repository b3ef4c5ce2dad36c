"""Pure rules of the probe: classification, scrubbing, backoff, breaker, claims, limiter."""

import asyncio
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from console.upstream import Outcome, classify_status, scrub
from keys import formats, limiter, probe, sweep
from keys.circuit import Breaker, Breakers
from keys.models import ApiKey, Circuit, CircuitState, ProbeResult


@pytest.mark.parametrize(
    "status, code, outcome",
    [
        (401, "invalid_api_key", Outcome.INVALID_KEY),
        (401, "invalid_organization", Outcome.AUTH_UNKNOWN),
        (401, "", Outcome.AUTH_UNKNOWN),
        (403, "unsupported_country_region_territory", Outcome.PERMISSION_DENIED),
        (404, "model_not_found", Outcome.NOT_FOUND),
        (408, "", Outcome.TIMEOUT),
        (429, "rate_limit_exceeded", Outcome.RATE_LIMITED),
        (429, "insufficient_quota", Outcome.QUOTA_EXHAUSTED),
        (500, "", Outcome.SERVER_ERROR),
        (502, "", Outcome.SERVER_ERROR),
        (503, "", Outcome.SERVER_ERROR),
        (400, "invalid_request", Outcome.UNEXPECTED_STATUS),
    ],
)
def test_it_classifies_each_status_and_code(status, code, outcome):
    assert classify_status(status, code) == outcome


def test_only_a_401_with_invalid_api_key_means_the_key_is_dead():
    dead = {classify_status(401, c) for c in ["invalid_api_key", "invalid_organization", "", "mfa_required"]}
    assert dead == {Outcome.INVALID_KEY, Outcome.AUTH_UNKNOWN}


def test_scrub_removes_the_masked_key_echo_and_the_secret():
    secret = formats.generate()
    masked = f"Incorrect API key provided: sk-proj-{'*' * 40}{secret[-4:]}. You can find your API key at …"
    cleaned = scrub(masked + " " + secret, secret)
    assert secret not in cleaned
    assert secret[-4:] not in cleaned
    assert "sk-proj-" not in cleaned
    assert cleaned.startswith("Incorrect API key provided: [redacted]")


def test_scrub_removes_an_azure_hex_key():
    secret = formats.generate(formats.AZURE)
    assert secret not in scrub(f"key {secret} denied")


def test_backoff_stays_within_the_ceiling_and_honours_retry_after(settings):
    settings.PROBE_BACKOFF_BASE_SECONDS = 0.5
    settings.PROBE_BACKOFF_MAX_SECONDS = 4
    for attempt in range(1, 8):
        for _ in range(50):
            delay = probe.backoff(attempt)
            assert 0 <= delay <= min(4, 0.5 * 2 ** (attempt - 1))
    assert probe.backoff(1, retry_after=3) >= 3
    assert probe.backoff(1, retry_after=60) == 60  # retry-after is a minimum, never shortened


def test_failure_sets_exclude_alive_and_skipped_outcomes():
    assert Outcome.RATE_LIMITED not in Outcome.failures()
    assert Outcome.SKIPPED_CIRCUIT_OPEN not in Outcome.failures()
    assert Outcome.INVALID_KEY in Outcome.failures()
    assert not (Outcome.transient() & {Outcome.INVALID_KEY, Outcome.QUOTA_EXHAUSTED})


class TestBreaker:
    def test_it_opens_after_the_threshold_of_host_failures(self, settings):
        settings.CIRCUIT_FAILURE_THRESHOLD = 3
        now = timezone.now()
        b = Breaker(host="api", state=CircuitState.CLOSED, failures=0)
        for _ in range(2):
            b.record(Outcome.SERVER_ERROR, now)
        assert b.state == CircuitState.CLOSED
        b.record(Outcome.NETWORK_ERROR, now)
        assert b.state == CircuitState.OPEN
        assert not b.allow()

    def test_any_real_answer_resets_the_count(self, settings):
        settings.CIRCUIT_FAILURE_THRESHOLD = 3
        now = timezone.now()
        b = Breaker(host="api", state=CircuitState.CLOSED, failures=2)
        b.record(Outcome.INVALID_KEY, now)  # the host answered: it is up
        assert b.failures == 0
        b.record(Outcome.TIMEOUT, now)
        assert b.state == CircuitState.CLOSED

    def test_half_open_lets_exactly_one_trial_through(self):
        b = Breaker(host="api", state=CircuitState.HALF_OPEN, failures=5)
        assert b.allow()
        assert not b.allow()

    def test_a_failed_trial_reopens_and_a_good_one_closes(self, settings):
        now = timezone.now()
        b = Breaker(host="api", state=CircuitState.HALF_OPEN, failures=5)
        b.allow()
        b.record(Outcome.SERVER_ERROR, now)
        assert b.state == CircuitState.OPEN
        assert b.open_until == now + timedelta(seconds=settings.CIRCUIT_COOLDOWN_SECONDS)
        b = Breaker(host="api", state=CircuitState.HALF_OPEN, failures=5)
        b.allow()
        b.record(Outcome.OK, now)
        assert (b.state, b.failures) == (CircuitState.CLOSED, 0)

    def test_only_one_batch_wins_the_half_open_trial(self, db):
        now = timezone.now()
        Circuit.objects.create(host="api", state=CircuitState.OPEN, open_until=now - timedelta(seconds=1))
        first = Breakers.load({"api"}, now=now)
        second = Breakers.load({"api"}, now=now)
        assert first["api"].state == CircuitState.HALF_OPEN
        assert second["api"].state == CircuitState.OPEN

    def test_an_open_circuit_stays_open_until_its_cool_down_ends(self, db):
        now = timezone.now()
        Circuit.objects.create(host="api", state=CircuitState.OPEN, open_until=now + timedelta(seconds=30))
        assert Breakers.load({"api"}, now=now)["api"].state == CircuitState.OPEN


class TestClaims:
    def test_due_keys_are_claimed_once_even_by_overlapping_sweeps(self, make_key):
        keys = [make_key()[0] for _ in range(5)]
        now = timezone.now()
        ApiKey.objects.update(next_probe_at=now - timedelta(minutes=1))
        first = sweep.claim_due(now)
        second = sweep.claim_due(now)
        assert sorted(c.key_id for c in first) == sorted(str(k.pk) for k in keys)
        assert second == []

    def test_a_claim_moves_next_probe_at_forward_by_the_lease(self, make_key):
        key, _ = make_key()
        now = timezone.now()
        ApiKey.objects.filter(pk=key.pk).update(next_probe_at=now)
        [(key_id, slot, lease)] = sweep.claim_due(now)
        key.refresh_from_db()
        assert key.next_probe_at == now + timedelta(seconds=settings.PROBE_LEASE_SECONDS)
        assert lease == key.next_probe_at.isoformat()
        assert slot == int(now.timestamp())

    def test_revoked_and_future_keys_are_not_claimed(self, make_key):
        revoked, _ = make_key(revoked_at=timezone.now())
        later, _ = make_key()
        now = timezone.now()
        ApiKey.objects.filter(pk=revoked.pk).update(next_probe_at=now)
        ApiKey.objects.filter(pk=later.pk).update(next_probe_at=now + timedelta(hours=1))
        assert sweep.claim_due(now) == []

    def test_keys_never_scheduled_are_due(self, make_key):
        key, _ = make_key()
        ApiKey.objects.filter(pk=key.pk).update(next_probe_at=None)
        assert [c.key_id for c in sweep.claim_due(timezone.now())] == [str(key.pk)]

    def test_an_expired_lease_is_claimed_again_in_a_new_slot(self, make_key):
        key, _ = make_key()
        now = timezone.now()
        ApiKey.objects.filter(pk=key.pk).update(next_probe_at=now)
        [(_, first_slot, _)] = sweep.claim_due(now)
        later = now + timedelta(seconds=settings.PROBE_LEASE_SECONDS + 1)
        [(_, second_slot, _)] = sweep.claim_due(later)
        assert second_slot > first_slot


@pytest.fixture
def redis_db():
    client = redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_the_redis_limiter_never_grants_more_than_the_budget_per_window(redis_db):
    async def burst():
        a, b = limiter.RedisLimiter(settings.REDIS_URL), limiter.RedisLimiter(settings.REDIS_URL)
        try:
            # Two limiters stand for two workers sharing one Redis.
            grants = [await (a if i % 2 else b).try_acquire("project-a", 10) for i in range(50)]
            other = await a.try_acquire("project-b", 10)
        finally:
            await a.aclose()
            await b.aclose()
        return grants, other

    grants, other = asyncio.run(burst())
    assert sum(1 for w in grants if w == 0) == 10
    assert all(0 < w <= limiter.WINDOW_SECONDS for w in grants if w)
    assert other == 0  # another project is unaffected


def test_acquire_gives_up_instead_of_waiting_past_the_limit():
    async def run():
        local = limiter.LocalLimiter()
        assert await limiter.acquire(local, "p", 1, max_wait=0.1)
        return await limiter.acquire(local, "p", 1, max_wait=0.1)

    assert asyncio.run(run()) is False


def test_azure_says_a_key_is_dead_with_its_own_401_message():
    message = "Access denied due to invalid subscription key or wrong API endpoint."
    assert classify_status(401, "401", message, provider="azure") == Outcome.INVALID_KEY
    assert classify_status(401, "401", "Principal does not have access", provider="azure") == Outcome.AUTH_UNKNOWN
    assert classify_status(401, "401", message, provider="openai") == Outcome.AUTH_UNKNOWN


def test_pruning_drops_only_results_older_than_the_retention(make_key):
    key, _ = make_key()
    now = timezone.now()
    for days, slot in [(40, 1), (31, 2), (29, 3), (0, 4)]:
        ProbeResult.objects.create(key=key, slot=slot, started_at=now - timedelta(days=days), outcome=Outcome.OK)
    assert ProbeResult.prune(now, keep_days=30, batch_size=1) == 2
    assert sorted(ProbeResult.objects.values_list("slot", flat=True)) == [3, 4]


def test_acquire_waits_for_a_slot_that_frees_up_within_the_limit():
    class Scripted:
        """Says: wait 0.05 s, then go."""

        def __init__(self):
            self.answers, self.calls = [0.05, 0.0], 0

        async def try_acquire(self, project_id, per_minute):
            self.calls += 1
            return self.answers.pop(0)

    scripted = Scripted()
    assert asyncio.run(limiter.acquire(scripted, "p", 1, max_wait=1.0)) is True
    assert scripted.calls == 2


def test_the_fallback_limiter_keeps_limiting_locally_once_redis_fails():
    async def run():
        fallback = limiter.FallbackLimiter(limiter.RedisLimiter("redis://127.0.0.1:1/0"))
        try:
            waits = [await fallback.try_acquire("p", 2) for _ in range(3)]
            return waits + [await fallback.try_acquire("other project", 2)], fallback.failed
        finally:
            await fallback.aclose()

    waits, failed = asyncio.run(run())
    assert failed
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0
    assert waits[3] == 0.0  # each project keeps its own window


def test_the_fallback_limiter_uses_the_shared_window_while_redis_answers(redis_db):
    async def run():
        fallback = limiter.FallbackLimiter(limiter.RedisLimiter(settings.REDIS_URL))
        try:
            return [await fallback.try_acquire("shared", 1) for _ in range(2)], fallback.failed
        finally:
            await fallback.aclose()

    waits, failed = asyncio.run(run())
    assert not failed
    assert redis_db.zcard("console:probe-window:shared") == 1
    assert waits[0] == 0 and 59 < waits[1] <= limiter.WINDOW_SECONDS


def test_the_local_limiter_says_how_long_until_the_oldest_request_leaves_the_window():
    async def run():
        local = limiter.LocalLimiter()
        return [await local.try_acquire("p", 1) for _ in range(2)]

    first, second = asyncio.run(run())
    assert first == 0 and 59 < second <= limiter.WINDOW_SECONDS


class Scripted:
    """A limiter that answers with the waits it was given, then 0."""

    def __init__(self, *waits):
        self.answers, self.calls = list(waits), 0

    async def try_acquire(self, project_id, per_minute):
        self.calls += 1
        return self.answers.pop(0) if self.answers else 0.0


def test_acquire_counts_every_wait_against_the_limit():
    scripted = Scripted(0.04, 0.04, 0.04)
    assert asyncio.run(limiter.acquire(scripted, "p", 1, max_wait=0.1)) is False
    assert scripted.calls == 3


def test_the_probe_limiter_is_shared_in_redis_when_there_is_redis(redis_db):
    async def run():
        shared = limiter.make_limiter()
        try:
            return await shared.try_acquire("made", 5)
        finally:
            await shared.aclose()

    assert asyncio.run(run()) == 0
    assert redis_db.zcard("console:probe-window:made") == 1


def test_without_redis_the_probe_limiter_is_local(settings):
    settings.REDIS_URL = ""
    assert isinstance(limiter.make_limiter(), limiter.LocalLimiter)
